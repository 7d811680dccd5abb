//! Market helpers, as SQL functions:
//!
//! * `vwap(price, volume)` — an aggregate: the volume-weighted average price, `sum(price * volume) /
//!   sum(volume)` over the rows with both values (NULL when their volume sums to zero).
//!   `SELECT symbol, vwap(close, volume) FROM prices GROUP BY symbol`
//! * `ohlcv(table, interval [, symbol])` — a table function: OHLCV bars of any table with `symbol`,
//!   `ts`, `open`, `high`, `low`, `close` and `volume` columns, one row per symbol and bar, sorted:
//!   `symbol, bar` (the bar's start), `open` (of the first row), `high`, `low`, `close` (of the last
//!   row), `volume` (sum), `vwap` (of `close`), `rows`. The interval is any SQL interval
//!   (`'5 minutes'`, `'1 hour'`, `'1 day'`, `'7 days'`) or `'1 month'`, `'3 months'`, `'1 year'`
//!   (calendar bars). `SELECT * FROM ohlcv('prices', '1 day', 'AAPL') WHERE bar >= '2024-01-01'`

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::kernels::cast_utils::parse_interval_month_day_nano;
use arrow::datatypes::{DataType, Float64Type, IntervalMonthDayNano};
use datafusion::catalog::{TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::{provider_as_source, ViewTable};
use datafusion::error::{DataFusionError, Result};
use datafusion::functions::datetime::{date_bin, date_trunc};
use datafusion::functions_aggregate::expr_fn::{count, first_value, last_value, max, min, sum};
use datafusion::logical_expr::{
    col, create_udaf, lit, Accumulator, AggregateUDF, Expr, LogicalPlanBuilder, Volatility,
};

/// The tables the `ohlcv` function can read, by name (kept up to date by the engine).
pub(crate) type Tables = Arc<RwLock<HashMap<String, Arc<dyn TableProvider>>>>;

/// The `vwap(price, volume)` aggregate.
pub(crate) fn vwap_udaf() -> AggregateUDF {
    create_udaf(
        "vwap",
        vec![DataType::Float64, DataType::Float64],
        Arc::new(DataType::Float64),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(Vwap::default()))),
        Arc::new(vec![DataType::Float64, DataType::Float64]),
    )
}

#[derive(Debug, Default)]
struct Vwap {
    price_volume: f64,
    volume: f64,
}

impl Vwap {
    fn add(&mut self, a: &ArrayRef, b: &ArrayRef) {
        let (a, b) = (
            a.as_primitive::<Float64Type>(),
            b.as_primitive::<Float64Type>(),
        );
        for i in 0..a.len().min(b.len()) {
            if a.is_valid(i) && b.is_valid(i) {
                self.price_volume += a.value(i);
                self.volume += b.value(i);
            }
        }
    }
}

impl Accumulator for Vwap {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let (price, volume) = (
            values[0].as_primitive::<Float64Type>(),
            values[1].as_primitive::<Float64Type>(),
        );
        for i in 0..price.len() {
            if price.is_valid(i) && volume.is_valid(i) {
                self.price_volume += price.value(i) * volume.value(i);
                self.volume += volume.value(i);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(
            (self.volume != 0.0).then(|| self.price_volume / self.volume),
        ))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            ScalarValue::Float64(Some(self.price_volume)),
            ScalarValue::Float64(Some(self.volume)),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.add(&states[0], &states[1]);
        Ok(())
    }
}

/// The `ohlcv(table, interval [, symbol])` table function.
#[derive(Debug)]
pub(crate) struct Ohlcv {
    pub(crate) tables: Tables,
}

/// The text of a string literal (of any of Arrow's string types), if the expression is one.
pub(crate) fn string_literal(e: &Expr) -> Option<&str> {
    match e {
        Expr::Literal(v, _) => v.try_as_str().flatten(),
        _ => None,
    }
}

fn string_arg(args: &[Expr], i: usize, what: &str) -> Result<Option<String>> {
    match args.get(i) {
        None => Ok(None),
        Some(e) => string_literal(e)
            .map(|s| Some(s.to_owned()))
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "ohlcv: the {what} must be a string literal, not {e}"
                ))
            }),
    }
}

fn interval_arg(args: &[Expr]) -> Result<IntervalMonthDayNano> {
    match args.get(1) {
        Some(Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(i)), _)) => Ok(*i),
        Some(Expr::Literal(ScalarValue::IntervalDayTime(Some(i)), _)) => Ok(
            IntervalMonthDayNano::new(0, i.days, i.milliseconds as i64 * 1_000_000),
        ),
        Some(Expr::Literal(ScalarValue::IntervalYearMonth(Some(m)), _)) => {
            Ok(IntervalMonthDayNano::new(*m, 0, 0))
        }
        _ => {
            let text = string_arg(args, 1, "interval")?.ok_or_else(|| {
                DataFusionError::Plan(
                    "ohlcv(table, interval [, symbol]): the interval is missing, e.g. '5 minutes'"
                        .into(),
                )
            })?;
            parse_interval_month_day_nano(&text).map_err(|e| {
                DataFusionError::Plan(format!(
                    "ohlcv: interval {text:?}: {e}; use e.g. '5 minutes', '1 hour', '1 day', '1 month'"
                ))
            })
        }
    }
}

impl TableFunctionImpl for Ohlcv {
    fn call(&self, args: &[Expr]) -> Result<Arc<dyn TableProvider>> {
        if args.is_empty() || args.len() > 3 {
            return Err(DataFusionError::Plan(
                "ohlcv(table, interval [, symbol]) takes two or three arguments".into(),
            ));
        }
        let name = string_arg(args, 0, "table name")?.unwrap_or_default();
        let table = self
            .tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .cloned()
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "ohlcv: no table {name:?} in the catalog (SHOW TABLES lists them)"
                ))
            })?;
        let schema = table.schema();
        for needed in ["symbol", "ts", "open", "high", "low", "close", "volume"] {
            if schema.field_with_name(needed).is_err() {
                return Err(DataFusionError::Plan(format!(
                    "ohlcv: table {name:?} has no {needed:?} column; bars need symbol, ts, open, high, low, close and volume"
                )));
            }
        }
        let interval = interval_arg(args)?;
        let bar = if interval.months > 0 && interval.days == 0 && interval.nanoseconds == 0 {
            let unit = match interval.months {
                1 => "month",
                3 => "quarter",
                12 => "year",
                m => {
                    return Err(DataFusionError::Plan(format!(
                        "ohlcv: calendar bars of {m} months are not supported; use 1 month, 3 months or 1 year"
                    )))
                }
            };
            date_trunc().call(vec![lit(unit), col("ts")])
        } else if interval.months == 0 && (interval.days > 0 || interval.nanoseconds > 0) {
            date_bin().call(vec![
                lit(ScalarValue::IntervalMonthDayNano(Some(interval))),
                col("ts"),
            ])
        } else {
            return Err(DataFusionError::Plan(
                "ohlcv: the interval must be positive, and either days/hours/minutes/seconds or months/years".into(),
            ));
        };
        let source = provider_as_source(table);
        let mut plan = LogicalPlanBuilder::scan(name.as_str(), source, None)?;
        if let Some(symbol) = string_arg(args, 2, "symbol")? {
            plan = plan.filter(col("symbol").eq(lit(symbol)))?;
        }
        let by_ts = || vec![col("ts").sort(true, false)];
        let vwap = Arc::new(vwap_udaf());
        let plan = plan
            .aggregate(
                vec![col("symbol"), bar.alias("bar")],
                vec![
                    first_value(col("open"), by_ts()).alias("open"),
                    max(col("high")).alias("high"),
                    min(col("low")).alias("low"),
                    last_value(col("close"), by_ts()).alias("close"),
                    sum(col("volume")).alias("volume"),
                    vwap.call(vec![col("close"), col("volume")]).alias("vwap"),
                    count(lit(1)).alias("rows"),
                ],
            )?
            .sort(vec![
                col("symbol").sort(true, false),
                col("bar").sort(true, false),
            ])?
            .build()?;
        Ok(Arc::new(ViewTable::new(plan, None)))
    }
}
