//! Functions whose output size is an argument (`range(1, 10000000000)`, `repeat(s, n)`,
//! `array_repeat(x, n)`, `lpad(s, n)`, ...) refuse a call that would build more than a set amount
//! at once, with an error naming the function and the size, before they allocate it.
//!
//! DataFusion builds such a function's whole output for a batch of rows in one step, outside the
//! statement's memory pool and without yielding. `SELECT range(1, 10000000000)` asked the allocator
//! for 80 GB at once: the allocation failed and the process aborted, `serve` with it. Even when the
//! memory is there, the step cannot be stopped by the statement's time limit, and a constant list
//! is formatted into the plan's column names while planning (10 M elements: 3.6 s). So each of
//! these functions is registered wrapped: before calling DataFusion's own, the wrapper adds up what
//! the call would build over its batch (list elements times their width, or bytes of text) and
//! refuses it past [`FUNCTION_OUTPUT_LIMIT`] (or the statement's memory limit, if lower), and a
//! list of constant arguments past [`CONSTANT_LIST_LIMIT`], since planning formats it. Tables of
//! numbers or times belong in `FROM range(...)` / `FROM generate_series(...)`, which stream their
//! rows a batch at a time, and the error says so.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::kernels::length::length;
use arrow::datatypes::FieldRef;
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Int32Type, Int64Type, IntervalMonthDayNanoType, IntervalUnit,
    TimeUnit,
};
use bytesize::ByteSize;
use datafusion::common::config::ConfigOptions;
use datafusion::common::{exec_err, ExprSchema, Result};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature,
};

/// The most one call of a size-taking function may build at once (over the rows of its batch):
/// 256 MiB, 32 M elements of a list of numbers or times. A lower memory limit lowers it.
pub const FUNCTION_OUTPUT_LIMIT: usize = 256 << 20;

/// The most a call with constant arguments may build as a list: 8 MiB, 1 M numbers or times.
/// DataFusion evaluates such a call while planning and writes the list out into the plan's names.
pub const CONSTANT_LIST_LIMIT: usize = 8 << 20;

/// What a wrapped function builds, and so how its output is sized from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Output {
    /// `range` and `generate_series` (`inclusive`): a list of numbers, dates or timestamps.
    Series { inclusive: bool },
    /// `array_repeat(element, count)`: `count` copies of `element`.
    Repeated,
    /// `array_resize(list, size[, value])`: a list of `size` elements.
    Resized,
    /// `repeat(text, count)`: `count` copies of `text`.
    RepeatedText,
    /// `lpad`/`rpad(text, length[, fill])`: text of `length` characters.
    Padded,
}

/// The functions wrapped, with what each builds.
const BOUNDED: [(&str, Output); 7] = [
    ("range", Output::Series { inclusive: false }),
    ("generate_series", Output::Series { inclusive: true }),
    ("array_repeat", Output::Repeated),
    ("array_resize", Output::Resized),
    ("repeat", Output::RepeatedText),
    ("lpad", Output::Padded),
    ("rpad", Output::Padded),
];

/// Registers in `ctx`, in place of DataFusion's, the size-taking functions wrapped so that one call
/// builds at most [`FUNCTION_OUTPUT_LIMIT`] bytes, or `memory_limit` if that is lower.
pub(crate) fn bound_function_outputs(ctx: &SessionContext, memory_limit: Option<usize>) {
    let limit = memory_limit.map_or(FUNCTION_OUTPUT_LIMIT, |m| m.min(FUNCTION_OUTPUT_LIMIT));
    // `state()` is a copy of the session's state: taken once, before the wrapped functions replace
    // DataFusion's in the session.
    let state = ctx.state();
    for (name, output) in BOUNDED {
        if let Some(inner) = state.scalar_functions().get(name).cloned() {
            ctx.register_udf(ScalarUDF::new_from_impl(BoundedOutput {
                inner: inner.as_ref().clone(),
                output,
                limit,
            }));
        }
    }
}

/// One argument's values row by row; a scalar stands for every row.
enum Rows<T> {
    Same(T),
    Each(Vec<T>),
}

impl<T: Copy + Default> Rows<T> {
    fn get(&self, row: usize) -> T {
        match self {
            Rows::Same(v) => *v,
            Rows::Each(values) => values.get(row).copied().unwrap_or_default(),
        }
    }
}

const NANOS_PER_DAY: i128 = 86_400 * 1_000_000_000;

/// An argument as whole numbers: integers as they are, dates and timestamps in nanoseconds, intervals
/// as their shortest length in nanoseconds (a month as 28 days). `None` for a type not sized here,
/// and for a null.
fn numbers(arg: &ColumnarValue) -> Option<Rows<Option<i128>>> {
    let array = match arg {
        ColumnarValue::Scalar(s) => s.to_array().ok()?,
        ColumnarValue::Array(a) => Arc::clone(a),
    };
    let values: Vec<Option<i128>> = match array.data_type() {
        DataType::Int64 => array
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.map(i128::from))
            .collect(),
        DataType::Int32 => array
            .as_primitive::<Int32Type>()
            .iter()
            .map(|v| v.map(i128::from))
            .collect(),
        DataType::Date32 => array
            .as_primitive::<Date32Type>()
            .iter()
            .map(|v| v.map(|d| i128::from(d) * NANOS_PER_DAY))
            .collect(),
        DataType::Date64 => array
            .as_primitive::<Date64Type>()
            .iter()
            .map(|v| v.map(|ms| i128::from(ms) * 1_000_000))
            .collect(),
        DataType::Timestamp(unit, _) => {
            let per_unit: i128 = match unit {
                TimeUnit::Second => 1_000_000_000,
                TimeUnit::Millisecond => 1_000_000,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1,
            };
            let raw = arrow::compute::cast(&array, &DataType::Int64).ok()?;
            raw.as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.map(|t| i128::from(t) * per_unit))
                .collect()
        }
        DataType::Interval(IntervalUnit::MonthDayNano) => array
            .as_primitive::<IntervalMonthDayNanoType>()
            .iter()
            .map(|v| {
                v.map(|i| {
                    i128::from(i.months) * 28 * NANOS_PER_DAY
                        + i128::from(i.days) * NANOS_PER_DAY
                        + i128::from(i.nanoseconds)
                })
            })
            .collect(),
        _ => return None,
    };
    Some(match arg {
        ColumnarValue::Scalar(_) => Rows::Same(values.first().copied().flatten()),
        ColumnarValue::Array(_) => Rows::Each(values),
    })
}

/// The bytes of one value of `arg` in each row: a fixed width, or what the row's slice of the
/// array holds.
fn value_bytes(arg: &ColumnarValue) -> Rows<u128> {
    if let Some(width) = arg.data_type().primitive_width() {
        return Rows::Same(width as u128);
    }
    let slice_bytes = |array: &ArrayRef, row: usize| {
        array
            .slice(row, 1)
            .to_data()
            .get_slice_memory_size()
            .map_or(16, |b| b as u128)
    };
    match arg {
        ColumnarValue::Scalar(s) => Rows::Same(s.to_array().map_or(16, |a| slice_bytes(&a, 0))),
        ColumnarValue::Array(a) => Rows::Each((0..a.len()).map(|r| slice_bytes(a, r)).collect()),
    }
}

/// The bytes of text in each row of `arg` (a string or binary argument).
fn text_bytes(arg: &ColumnarValue) -> Rows<u128> {
    let lengths = |array: &ArrayRef| -> Vec<u128> {
        let Ok(lengths) = length(array) else {
            return vec![16; array.len()];
        };
        let lengths = arrow::compute::cast(&lengths, &DataType::Int64)
            .unwrap_or_else(|_| Arc::new(arrow::array::Int64Array::from(vec![16; array.len()])));
        lengths
            .as_primitive::<Int64Type>()
            .iter()
            .map(|l| l.unwrap_or(0).max(0) as u128)
            .collect()
    };
    match arg {
        ColumnarValue::Scalar(s) => Rows::Same(
            s.to_array()
                .map_or(16, |a| lengths(&a).first().copied().unwrap_or(0)),
        ),
        ColumnarValue::Array(a) => Rows::Each(lengths(a)),
    }
}

/// How many values `range`/`generate_series` makes from `start` to `stop` by `step`, at most
/// (it may be one over: an upper bound is enough here).
fn series_length(start: i128, stop: i128, step: i128) -> u128 {
    let span = stop - start;
    if step == 0 || (span != 0 && span.signum() != step.signum()) {
        return 0;
    }
    span.unsigned_abs() / step.unsigned_abs() + 1
}

/// A size, for a person ("74.5 GiB"); past 16 EiB, 16 EiB.
fn size(bytes: u128) -> ByteSize {
    ByteSize(u64::try_from(bytes).unwrap_or(u64::MAX))
}

/// A size-taking function of DataFusion's, called only when its output fits under `limit` bytes.
#[derive(Debug, PartialEq, Eq, Hash)]
struct BoundedOutput {
    inner: ScalarUDF,
    output: Output,
    limit: usize,
}

impl BoundedOutput {
    /// The bytes the call would build over its batch (`None`: arguments of types not sized here,
    /// left to the function itself).
    /// `rows` is 1 when every argument is a scalar (the function then builds one value).
    fn output_bytes(&self, args: &ScalarFunctionArgs, rows: usize) -> Option<u128> {
        let a = &args.args;
        let total = |per_row: &dyn Fn(usize) -> u128| -> u128 {
            (0..rows).fold(0u128, |sum, row| sum.saturating_add(per_row(row)))
        };
        let count = |n: Option<i128>| n.map_or(0, |n| n.max(0) as u128);
        match self.output {
            Output::Series { .. } => {
                let (start, stop, step) = match a.as_slice() {
                    [stop] => (Rows::Same(Some(0)), numbers(stop)?, Rows::Same(Some(1))),
                    [start, stop] => (numbers(start)?, numbers(stop)?, Rows::Same(Some(1))),
                    [start, stop, step] => (numbers(start)?, numbers(stop)?, numbers(step)?),
                    _ => return None,
                };
                Some(total(
                    &|row| match (start.get(row), stop.get(row), step.get(row)) {
                        (Some(start), Some(stop), Some(step)) => {
                            series_length(start, stop, step).saturating_mul(8)
                        }
                        _ => 0,
                    },
                ))
            }
            Output::Repeated | Output::RepeatedText => {
                let [value, times] = a.as_slice() else {
                    return None;
                };
                let bytes = if self.output == Output::RepeatedText {
                    text_bytes(value)
                } else {
                    value_bytes(value)
                };
                let times = numbers(times)?;
                Some(total(&|row| {
                    count(times.get(row)).saturating_mul(bytes.get(row))
                }))
            }
            Output::Resized => {
                let (list, size, fill) = match a.as_slice() {
                    [list, size] => (list, size, None),
                    [list, size, fill] => (list, size, Some(value_bytes(fill))),
                    _ => return None,
                };
                let width = match list.data_type() {
                    DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                        f.data_type().primitive_width().unwrap_or(8) as u128
                    }
                    _ => 8,
                };
                let size = numbers(size)?;
                Some(total(&|row| {
                    let width = fill.as_ref().map_or(width, |f| f.get(row).max(width));
                    count(size.get(row)).saturating_mul(width)
                }))
            }
            Output::Padded => {
                let length = numbers(a.get(1)?)?;
                Some(total(&|row| count(length.get(row))))
            }
        }
    }
}

#[warn(clippy::missing_trait_methods)] // Delegates, so it should implement every trait method.
impl ScalarUDFImpl for BoundedOutput {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        #[expect(deprecated)]
        self.inner.inner().display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.inner().return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        #[expect(deprecated)]
        self.inner.inner().is_nullable(args, schema)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let constant = args
            .args
            .iter()
            .all(|v| matches!(v, ColumnarValue::Scalar(_)));
        // A list of constant arguments is built while planning, and then written out into the
        // plan's names, element by element (33 M numbers: 16 s, which no time limit can stop).
        let constant_list =
            constant && !matches!(self.output, Output::RepeatedText | Output::Padded);
        let limit = if constant_list {
            self.limit.min(CONSTANT_LIST_LIMIT)
        } else {
            self.limit
        };
        let rows = if constant { 1 } else { args.number_rows };
        if let Some(bytes) = self.output_bytes(&args, rows) {
            if bytes > limit as u128 {
                let (rows, what) = if constant_list {
                    (
                        String::new(),
                        "a call with constant arguments may build as a list",
                    )
                } else if constant {
                    (String::new(), "one call of a function may build at once")
                } else {
                    (
                        format!(" for a batch of {} rows", args.number_rows),
                        "one call of a function may build at once",
                    )
                };
                let hint = match self.output {
                    Output::Series { .. } => format!(
                        "; ask for fewer values, or make them rows with `FROM {}(...)`, which \
                         streams them a batch at a time",
                        self.name()
                    ),
                    _ => "; ask for less".to_owned(),
                };
                return exec_err!(
                    "{}(...) would build {}{rows} in one step, over the {} {what}{hint}",
                    self.name(),
                    size(bytes),
                    size(limit as u128)
                );
            }
        }
        self.inner.invoke_with_args(args)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(BoundedOutput {
            inner,
            output: self.output,
            limit: self.limit,
        }))
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.inner().simplify(args, info)
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.inner.inner().preimage(args, lit_expr, info)
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.inner().conditional_arguments(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.inner().evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.inner().propagate_constraints(interval, inputs)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.inner().output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().preserves_lex_ordering(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.inner().placement(args)
    }
}

#[cfg(test)]
mod tests {
    use arrow::util::pretty::pretty_format_batches;

    use super::*;

    fn session(memory_limit: Option<usize>) -> SessionContext {
        let ctx = SessionContext::new();
        bound_function_outputs(&ctx, memory_limit);
        ctx
    }

    /// `sql`'s answer as a table, or its error's text.
    async fn answer(ctx: &SessionContext, sql: &str) -> std::result::Result<String, String> {
        let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
        let batches = df.collect().await.map_err(|e| e.to_string())?;
        Ok(pretty_format_batches(&batches).unwrap().to_string())
    }

    fn single(table: &str) -> String {
        table
            .lines()
            .nth(3)
            .unwrap()
            .trim_matches('|')
            .trim()
            .to_owned()
    }

    /// Each of these asked for tens of GB in one step, and the process aborted (`range`, the
    /// `generate_series` of integers, `array_repeat` and `array_resize`; `repeat` and `lpad` over
    /// a batch). Now each is refused with an error naming the function and the size.
    #[tokio::test]
    async fn calls_past_the_limit_are_refused_before_they_allocate() {
        let ctx = session(None);
        for (sql, function, built) in [
            ("SELECT range(1, 10000000000)", "range", "74.5 GiB"),
            (
                "SELECT generate_series(1, 10000000000)",
                "generate_series",
                "74.5 GiB",
            ),
            (
                "SELECT generate_series(10000000000, 1, -1)",
                "generate_series",
                "74.5 GiB",
            ),
            (
                "SELECT range(TIMESTAMP '2000-01-01', TIMESTAMP '2200-01-01', INTERVAL '1 second')",
                "range",
                "47.0 GiB",
            ),
            (
                "SELECT range(d, DATE '9999-01-01', INTERVAL '1 day') FROM (VALUES \
                 (DATE '0001-01-01'), (DATE '0002-01-01'), (DATE '0003-01-01'), \
                 (DATE '0004-01-01'), (DATE '0005-01-01'), (DATE '0006-01-01'), \
                 (DATE '0007-01-01'), (DATE '0008-01-01'), (DATE '0009-01-01'), \
                 (DATE '0010-01-01')) v(d)",
                "range",
                "for a batch of 10 rows",
            ),
            (
                "SELECT array_repeat(1, 5000000000)",
                "array_repeat",
                "37.3 GiB",
            ),
            (
                "SELECT array_resize([1], 5000000000)",
                "array_resize",
                "37.3 GiB",
            ),
            (
                "SELECT max(substr(repeat('ab', 1000000 + value), 3, 2)) FROM range(10000)",
                "repeat",
                "for a batch of 8192 rows",
            ),
            (
                "SELECT max(lpad('a', 100000 + value)) FROM range(10000)",
                "lpad",
                "for a batch of 8192 rows",
            ),
        ] {
            let error = answer(&ctx, sql).await.unwrap_err();
            let limit = if built.starts_with("for a batch") {
                "over the 256.0 MiB one call of a function may build"
            } else {
                "over the 8.0 MiB a call with constant arguments may build as a list"
            };
            assert!(
                error.contains(&format!("{function}(...) would build"))
                    && error.contains(built)
                    && error.contains(limit),
                "{sql}: {error}"
            );
        }
        // A list of constants is bounded lower: DataFusion writes it out while planning.
        let error = answer(&ctx, "SELECT range(2000000)").await.unwrap_err();
        assert!(
            error.contains("range(...) would build 15.3 MiB in one step"),
            "{error}"
        );
        let table = answer(&ctx, "SELECT length(repeat('ab', 10000000))")
            .await
            .unwrap();
        assert_eq!(single(&table), "20000000");
        let error = answer(&ctx, "SELECT range(1, 10000000000)")
            .await
            .unwrap_err();
        assert!(
            error.contains("`FROM range(...)`, which streams"),
            "{error}"
        );
    }

    /// Calls under the limit answer as DataFusion's own functions do, a batch of many rows at a
    /// time included (20,000 rows of 1,999 values: 16 M values a batch).
    #[tokio::test]
    async fn calls_under_the_limit_answer_as_before() {
        let ctx = session(None);
        for (sql, expected) in [
            ("SELECT range(2, 10, 3)", "[2, 5, 8]"),
            ("SELECT generate_series(3)", "[0, 1, 2, 3]"),
            ("SELECT range(5, 1, -2)", "[5, 3]"),
            (
                "SELECT range(DATE '1992-09-01', DATE '1993-01-01', INTERVAL '1' MONTH)",
                "[1992-09-01, 1992-10-01, 1992-11-01, 1992-12-01]",
            ),
            ("SELECT array_repeat('ab', 3)", "[ab, ab, ab]"),
            ("SELECT array_resize([1, 2], 4, 7)", "[1, 2, 7, 7]"),
            ("SELECT repeat('ab', 3)", "ababab"),
            ("SELECT lpad('7', 3, '0')", "007"),
            ("SELECT rpad('7', 3, '0')", "700"),
            (
                "SELECT sum(cardinality(range(1, 2000 + value * 0))) FROM range(20000)",
                "39980000",
            ),
            (
                "SELECT count(*) FROM (SELECT unnest(range(1, 1000001)))",
                "1000000",
            ),
            ("SELECT range(1, NULL)", ""),
        ] {
            let table = answer(&ctx, sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(single(&table), expected, "{sql}");
        }
        // The wrapper keeps the function's other names.
        let table = answer(&ctx, "SELECT list_repeat(1, 2)").await.unwrap();
        assert_eq!(single(&table), "[1, 1]");
    }

    /// A statement's memory limit under 256 MiB lowers the bound to it.
    #[tokio::test]
    async fn a_lower_memory_limit_lowers_the_bound() {
        let ctx = session(Some(1 << 20));
        let error = answer(&ctx, "SELECT range(200000)").await.unwrap_err();
        assert!(
            error.contains("range(...) would build 1.5 MiB") && error.contains("over the 1.0 MiB"),
            "{error}"
        );
        let table = answer(&ctx, "SELECT cardinality(range(100000))")
            .await
            .unwrap();
        assert_eq!(single(&table), "100000");
    }
}
