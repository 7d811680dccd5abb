//! Aggregates grouped by a lake's partition columns, a run of rows at a time: the plan of
//! `SELECT symbol, vwap(close, volume) FROM t GROUP BY symbol`.
//!
//! DataFusion plans a grouped aggregate in two steps: a partial aggregate in each scan partition,
//! a hash repartition by the keys, and a final aggregate that merges the partial states. The partial
//! step hashes every row's keys to find its group, then updates that group's state one row at a
//! time. When the keys are partition columns (`symbol`, `date`), every row of a file has the same
//! keys, and the scan never mixes files in a batch: the hashing finds the same group for thousands
//! of rows in a row, and the per-row updates cannot use Arrow's vectorised kernels. On a lake of
//! 10 M rows and 10 symbols that was a fifth of `vwap` per symbol, and left it at twice DuckDB's
//! time.
//!
//! The rule [`RunAggregate`] finds an aggregate whose keys come in runs: keys its input is sorted by
//! (bars by symbol and time, a window's output partitioned by them), or a file scan's partition
//! columns (passed up unchanged by projections, filters and repartitions).
//! It runs the aggregate as [`RunAggregateExec`]: each batch is split into runs of equal keys (one
//! run for a batch of one file), one ungrouped accumulator per run is updated over the whole run with
//! Arrow's kernels, and a row of partial state is emitted each time the keys change. The final
//! aggregate above merges partial states as before, so the answer is the same: a key seen again
//! later is one more partial row for its group, as a spilling partial aggregate would give. Over
//! sorted input each key is one run of its partition, so a single-step aggregate (DataFusion's plan
//! above a window partitioned by the keys: returns with `lag`) runs the same way and emits each
//! run's final values. Runs can be short (1-minute bars of 1 s data are 60 rows), and each starts
//! its own accumulators: a partial aggregate whose runs average under `HAND_OVER_BELOW` rows hands
//! the rest of its input to the hash aggregate it replaced. The rule leaves alone aggregates with
//! `ORDER BY` inside the call or `FILTER`, grouping sets, and other keys. A `DISTINCT` aggregate
//! keeps a set of the run's values as its partial state, which the final aggregate unites.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Result, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::CardinalityEffect;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

use crate::handover::rest_as_plan;
use crate::key_runs::key_runs;

/// The average run, in rows, below which a partial aggregate hands the rest of its input to the hash
/// aggregate, judged after its first eight batches. Runs of 60 rows (1-minute bars of 1 s data)
/// took 75 ms run by run against 57 ms hashed; runs of 3,600 (1-hour bars) 296 ms against 399 ms.
const HAND_OVER_BELOW: usize = 512;

/// The partial states, in bytes, a partial aggregate holds before it hands the rest of its input to
/// the hash aggregate. The run operator emits its rows at the end, and the state of a `DISTINCT` (or
/// `median`) is every value of a run: on a large lake those would add up outside the session's
/// memory pool, where the hash aggregate accounts its memory and emits early when it runs short.
/// The 10 M-row benchmark lake's distinct closes per date are about 35 MB per partition.
const HOLD_AT_MOST: usize = 256 << 20;

/// The physical optimizer rule (see the module's documentation). Runs after DataFusion's own rules.
#[derive(Debug)]
pub struct RunAggregate {
    keys: KeysMustBe,
    hand_over_below: usize,
    hold_at_most: usize,
}

impl Default for RunAggregate {
    fn default() -> Self {
        RunAggregate {
            keys: KeysMustBe::InRuns,
            hand_over_below: HAND_OVER_BELOW,
            hold_at_most: HOLD_AT_MOST,
        }
    }
}

impl PhysicalOptimizerRule for RunAggregate {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            Ok(match rewrite(&node, self.keys, self.hand_over_below)? {
                Some(new) => {
                    Transformed::yes(Arc::new(new.with_hold_at_most(self.hold_at_most))
                        as Arc<dyn ExecutionPlan>)
                }
                None => Transformed::no(node),
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "run_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Which group keys [`rewrite`] takes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum KeysMustBe {
    /// Keys in runs: sorted, or filled from a file scan's partition values.
    InRuns,
    /// Any keys: the answer is still right, however many runs (for tests of the operator).
    #[cfg(test)]
    Any,
}

/// An aggregate the operator can run with `keys`, as a [`RunAggregateExec`], or None.
fn rewrite(
    node: &Arc<dyn ExecutionPlan>,
    keys: KeysMustBe,
    hand_over_below: usize,
) -> Result<Option<RunAggregateExec>> {
    let Some(agg) = node.as_any().downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    let group_by = agg.group_expr();
    // Sorted by its keys, each partition holds a key in one run.
    let sorted = matches!(agg.input_order_mode(), InputOrderMode::Sorted);
    // A partial aggregate's runs are merged above it; a single one must see each key in one run.
    let runnable = match agg.mode() {
        AggregateMode::Partial => true,
        AggregateMode::Single | AggregateMode::SinglePartitioned => sorted,
        _ => false,
    } && group_by.is_single()
        && !group_by.is_empty()
        && agg.limit_options().is_none()
        && agg.filter_expr().iter().all(Option::is_none)
        && agg.aggr_expr().iter().all(|a| a.order_bys().is_empty());
    if !runnable {
        return Ok(None);
    }
    // Keys in runs: keys the input is sorted by (bars by symbol and time, a window's output
    // partitioned by them), or plain columns filled from partition values (a run per file). Runs may
    // still be short (1-minute bars of 1 s data are 60 rows, and a run starts its own accumulators):
    // a partial aggregate then hands over to the hash aggregate (see `HAND_OVER_BELOW`).
    let in_runs = sorted
        || group_by.expr().iter().all(|(e, _)| {
            e.as_any()
                .downcast_ref::<Column>()
                .is_some_and(|c| from_partition_column(agg.input(), c.index()))
        });
    if keys == KeysMustBe::InRuns && !in_runs {
        return Ok(None);
    }
    Ok(Some(RunAggregateExec::new(
        Arc::new(agg.clone()),
        hand_over_below,
    )))
}

/// Whether column `index` of `plan`'s output is a partition column of a file scan, passed up
/// unchanged: then it holds one value in each of the scan's batches (a batch never mixes files),
/// and at most a few in a batch a filter gathered from several.
fn from_partition_column(plan: &Arc<dyn ExecutionPlan>, index: usize) -> bool {
    let any = plan.as_any();
    if let Some(scan) = any.downcast_ref::<DataSourceExec>() {
        let Some(config) = scan.data_source().as_any().downcast_ref::<FileScanConfig>() else {
            return false;
        };
        // The scan's own projection, if one was pushed into it, picks its outputs from the table's
        // columns: the files' columns, then the partition columns.
        let table_index = match config.file_source.projection() {
            Some(projection) => match projection
                .as_ref()
                .get(index)
                .and_then(|e| e.expr.as_any().downcast_ref::<Column>())
            {
                Some(c) => c.index(),
                None => return false,
            },
            None => index,
        };
        return table_index >= config.file_schema().fields().len()
            && table_index - config.file_schema().fields().len()
                < config.table_partition_cols().len();
    }
    if let Some(projection) = any.downcast_ref::<ProjectionExec>() {
        return projection
            .expr()
            .get(index)
            .and_then(|e| e.expr.as_any().downcast_ref::<Column>())
            .is_some_and(|c| from_partition_column(projection.input(), c.index()));
    }
    if let Some(filter) = any.downcast_ref::<FilterExec>() {
        let index = match filter.projection() {
            Some(p) => match p.get(index) {
                Some(i) => *i,
                None => return false,
            },
            None => index,
        };
        return from_partition_column(filter.input(), index);
    }
    if let Some(repartition) = any.downcast_ref::<RepartitionExec>() {
        return from_partition_column(repartition.input(), index);
    }
    false
}

/// A partial [`AggregateExec`], or a single one over input sorted by its keys, run a run of equal
/// keys at a time (see the module's documentation): its schema, partitioning and answer are the
/// aggregate's.
#[derive(Debug)]
pub struct RunAggregateExec {
    /// The partial aggregate this runs: its keys, aggregates, input and properties.
    agg: Arc<AggregateExec>,
    /// Each aggregate's argument expressions over the input.
    args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// For a partial aggregate, the average run below which it hands over to the hash aggregate
    /// (0: never).
    hand_over_below: usize,
    /// For a partial aggregate, the partial states it holds before it hands over (see
    /// [`HOLD_AT_MOST`]).
    hold_at_most: usize,
    metrics: ExecutionPlanMetricsSet,
}

impl RunAggregateExec {
    /// Runs `agg`: a partial aggregate, or a single one whose input is sorted by its keys, without
    /// filters or `ORDER BY` in its calls.
    /// A partial aggregate whose runs average fewer than `hand_over_below` rows (0: never) over its
    /// first eight batches hands the rest of its input to `agg` itself, the hash aggregate.
    pub fn new(agg: Arc<AggregateExec>, hand_over_below: usize) -> Self {
        let args = agg.aggr_expr().iter().map(|a| a.expressions()).collect();
        let hand_over_below = if matches!(agg.mode(), AggregateMode::Partial) {
            hand_over_below
        } else {
            0
        };
        RunAggregateExec {
            agg,
            args,
            hand_over_below,
            hold_at_most: HOLD_AT_MOST,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The partial states a partial aggregate holds before it hands the rest of its input to the
    /// hash aggregate (default [`HOLD_AT_MOST`]).
    pub fn with_hold_at_most(mut self, bytes: usize) -> Self {
        self.hold_at_most = bytes;
        self
    }
}

impl DisplayAs for RunAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<&str> = self
            .agg
            .group_expr()
            .expr()
            .iter()
            .map(|(_, name)| name.as_str())
            .collect();
        let aggregates: Vec<&str> = self.agg.aggr_expr().iter().map(|a| a.name()).collect();
        write!(
            f,
            "RunAggregateExec: gby=[{}], aggr=[{}]",
            keys.join(", "),
            aggregates.join(", ")
        )
    }
}

impl ExecutionPlan for RunAggregateExec {
    fn name(&self) -> &str {
        "RunAggregateExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.agg.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.agg.input()]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let agg = Arc::clone(&self.agg).with_new_children(children)?;
        let agg = agg
            .as_any()
            .downcast_ref::<AggregateExec>()
            .ok_or_else(|| {
                DataFusionError::Internal("RunAggregateExec's aggregate changed type".into())
            })?
            .clone();
        Ok(Arc::new(
            RunAggregateExec::new(Arc::new(agg), self.hand_over_below)
                .with_hold_at_most(self.hold_at_most),
        ))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::LowerEqual
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let mut input = self.agg.input().execute(partition, Arc::clone(&context))?;
        let schema = self.schema();
        let batch_size = context.session_config().batch_size().max(1);
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let hashed_instead = MetricBuilder::new(&self.metrics).counter("hashed_instead", partition);
        let hand_over_below = self.hand_over_below;
        let hold_at_most = if matches!(self.agg.mode(), AggregateMode::Partial) {
            self.hold_at_most
        } else {
            usize::MAX
        };
        let decide_after = 8 * batch_size;
        let agg = Arc::clone(&self.agg);
        let mut runs = Runs {
            keys: self
                .agg
                .group_expr()
                .expr()
                .iter()
                .map(|(e, _)| Arc::clone(e))
                .collect(),
            args: self.args.clone(),
            aggregates: self.agg.aggr_expr().to_vec(),
            final_values: !matches!(self.agg.mode(), AggregateMode::Partial),
            current: None,
            finished: vec![Vec::new(); schema.fields().len()],
            rows_seen: 0,
            runs_started: 0,
            held_bytes: 0,
        };
        let out_schema = Arc::clone(&schema);
        let result = futures::stream::once(async move {
            let mut hand_over = None;
            while let Some(batch) = input.next().await {
                let batch = batch?;
                let _timer = metrics.elapsed_compute().timer();
                runs.update(&batch)?;
                if hand_over_below > 0
                    && runs.rows_seen >= decide_after
                    && runs.rows_seen < runs.runs_started * hand_over_below
                {
                    hand_over = Some("short runs");
                    break;
                }
                if runs.held_bytes > hold_at_most {
                    hand_over = Some("large partial states");
                    break;
                }
            }
            let batches = {
                let _timer = metrics.elapsed_compute().timer();
                runs.finish(&out_schema, batch_size)?
            };
            metrics.record_output(batches.iter().map(RecordBatch::num_rows).sum());
            let done = futures::stream::iter(batches.into_iter().map(Ok));
            if let Some(why) = hand_over {
                // The runs' partial rows so far, then the hash aggregate's of the rest: the final
                // aggregate merges both, as it merges every partition's.
                tracing::debug!("RunAggregateExec[{partition}]: {why}, hashing instead");
                hashed_instead.add(1);
                let rest = rest_as_plan(agg.input().schema(), input)?;
                let hashed = agg.with_new_children(vec![rest])?.execute(0, context)?;
                return Ok(done.chain(hashed).boxed());
            }
            Ok::<_, DataFusionError>(done.boxed())
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, result)))
    }
}

/// The run being aggregated: its keys and one accumulator per aggregate.
struct Run {
    keys: Vec<ScalarValue>,
    accumulators: Vec<Box<dyn Accumulator>>,
}

/// One partition's aggregation: the current run, and the partial-state rows of the runs before it
/// (one per run, so a few per file at most; the operator is only chosen where keys change per file).
struct Runs {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// Whether a run's row holds the aggregates' values (a single aggregate, whose runs are whole
    /// groups) rather than their partial states.
    final_values: bool,
    current: Option<Run>,
    /// The finished rows, column by column: keys, then each aggregate's state fields.
    finished: Vec<Vec<ScalarValue>>,
    /// Rows read and runs started so far.
    rows_seen: usize,
    runs_started: usize,
    /// The size of the finished rows' values, in bytes.
    held_bytes: usize,
}

impl Runs {
    fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        self.rows_seen += n;
        let keys = evaluate(&self.keys, batch)?;
        let args = self
            .args
            .iter()
            .map(|exprs| evaluate(exprs, batch))
            .collect::<Result<Vec<_>>>()?;
        for range in key_runs(&keys)? {
            let run_keys = keys
                .iter()
                .map(|k| ScalarValue::try_from_array(k, range.start))
                .collect::<Result<Vec<_>>>()?;
            if self.current.as_ref().is_some_and(|r| r.keys != run_keys) {
                self.finish_run()?;
            }
            let run = match &mut self.current {
                Some(run) => run,
                none => {
                    self.runs_started += 1;
                    none.insert(Run {
                        keys: run_keys,
                        accumulators: self
                            .aggregates
                            .iter()
                            .map(|a| a.create_accumulator())
                            .collect::<Result<_>>()?,
                    })
                }
            };
            for (accumulator, values) in run.accumulators.iter_mut().zip(&args) {
                if range.len() == n {
                    accumulator.update_batch(values)?;
                } else {
                    let slices: Vec<ArrayRef> = values
                        .iter()
                        .map(|v| v.slice(range.start, range.len()))
                        .collect();
                    accumulator.update_batch(&slices)?;
                }
            }
        }
        Ok(())
    }

    /// Moves the current run, if any, to the finished rows.
    fn finish_run(&mut self) -> Result<()> {
        let Some(mut run) = self.current.take() else {
            return Ok(());
        };
        let mut values = run.keys;
        for accumulator in &mut run.accumulators {
            if self.final_values {
                values.push(accumulator.evaluate()?);
            } else {
                values.extend(accumulator.state()?);
            }
        }
        if values.len() != self.finished.len() {
            return Err(DataFusionError::Internal(format!(
                "RunAggregateExec: a run has {} values for {} columns",
                values.len(),
                self.finished.len()
            )));
        }
        for (column, value) in self.finished.iter_mut().zip(values) {
            self.held_bytes += value.size();
            column.push(value);
        }
        Ok(())
    }

    /// The finished rows as batches of `schema`, at most `batch_size` rows each.
    fn finish(
        &mut self,
        schema: &arrow::datatypes::SchemaRef,
        batch_size: usize,
    ) -> Result<Vec<RecordBatch>> {
        self.finish_run()?;
        let count = self.finished.first().map_or(0, Vec::len);
        if count == 0 {
            return Ok(Vec::new());
        }
        let columns = std::mem::take(&mut self.finished)
            .into_iter()
            .zip(schema.fields())
            .map(|(values, field)| {
                let array = ScalarValue::iter_to_array(values)?;
                Ok(if array.data_type() == field.data_type() {
                    array
                } else {
                    cast(&array, field.data_type())?
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new(Arc::clone(schema), columns)?;
        Ok((0..count)
            .step_by(batch_size)
            .map(|start| batch.slice(start, batch_size.min(count - start)))
            .collect())
    }
}

/// `exprs` over `batch`, as arrays of its length.
fn evaluate(exprs: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    exprs
        .iter()
        .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{run, session};
    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::ListingOptions;
    use datafusion::prelude::SessionContext;

    /// The rule for every aggregate the operator can run, whatever its keys, handing over below
    /// runs of `hand_over_below` rows (0: never).
    fn any_keys(hand_over_below: usize) -> Arc<dyn PhysicalOptimizerRule + Send + Sync> {
        holding(hand_over_below, HOLD_AT_MOST)
    }

    /// As [`any_keys`], handing over also once the partial states pass `hold_at_most` bytes.
    fn holding(
        hand_over_below: usize,
        hold_at_most: usize,
    ) -> Arc<dyn PhysicalOptimizerRule + Send + Sync> {
        Arc::new(RunAggregate {
            keys: KeysMustBe::Any,
            hand_over_below,
            hold_at_most,
        })
    }

    /// Each query answers the same run by run as hashed, on batches of many runs (unsorted keys,
    /// null keys, runs across batch boundaries), and the operator runs exactly where it can.
    #[tokio::test]
    async fn runs_of_any_keys_answer_as_the_hash_aggregate() {
        // Runs all the way, and runs that hand over to hashing when short (as these mostly are).
        let with_runs = session(Some(any_keys(0)));
        let handing_over = session(Some(any_keys(HAND_OVER_BELOW)));
        // Long runs, but partial states over a byte: every partial aggregate hands over.
        let holding_little = session(Some(holding(0, 1)));
        let hashed = session(None);
        let cases = [
            // (SQL, whether the operator runs it)
            (
                "SELECT sym, count(*), count(ts), sum(ts), min(price), max(price), \
                 round(avg(price), 6) FROM t GROUP BY sym ORDER BY sym",
                true,
            ),
            (
                "SELECT sym, day, round(stddev(price), 6), round(vwap(price, id), 6), \
                 min(sym), median(price) FROM t GROUP BY sym, day ORDER BY sym, day",
                true,
            ),
            (
                "SELECT day, count(*), bool_and(price > 50), max(ts) FROM t \
                 WHERE price > 10 GROUP BY day ORDER BY day",
                true,
            ),
            (
                "SELECT sym || '!' AS s, count(*) FROM t GROUP BY sym || '!' ORDER BY s",
                true,
            ),
            // One aggregate step over a window's output, sorted by its keys.
            (
                "SELECT sym, count(r), round(avg(r), 6), max(r) FROM (SELECT sym, price - lag(price) \
                 OVER (PARTITION BY sym ORDER BY id) AS r FROM t) GROUP BY sym ORDER BY sym",
                true,
            ),
            // DataFusion plans one DISTINCT as two aggregates without it: both run.
            (
                "SELECT sym, count(DISTINCT day) FROM t GROUP BY sym ORDER BY sym",
                true,
            ),
            // DISTINCT beside other aggregates: a set of each run's values, united above.
            (
                "SELECT sym, count(DISTINCT day), count(DISTINCT ts), count(*) FROM t \
                 GROUP BY sym ORDER BY sym",
                true,
            ),
            // Not run: FILTER, ORDER BY in the call, no keys, grouping sets.
            (
                "SELECT sym, count(*) FILTER (WHERE day = 1) FROM t GROUP BY sym ORDER BY sym",
                false,
            ),
            (
                "SELECT sym, first_value(id ORDER BY id) FROM t GROUP BY sym ORDER BY sym",
                false,
            ),
            ("SELECT count(*), sum(id) FROM t", false),
            (
                "SELECT sym, day, count(*) FROM t GROUP BY ROLLUP (sym, day) ORDER BY sym, day",
                false,
            ),
        ];
        for (sql, runs) in cases {
            let (answer, plan) = run(&with_runs, sql).await;
            let (expected, hashed_plan) = run(&hashed, sql).await;
            assert_eq!(answer, expected, "{sql}\n{plan}");
            assert_eq!(plan.contains("RunAggregateExec"), runs, "{sql}\n{plan}");
            assert!(!hashed_plan.contains("RunAggregateExec"));
            let (handed_over, plan) = run(&handing_over, sql).await;
            assert_eq!(handed_over, expected, "{sql}\n{plan}");
            let (held_little, plan) = run(&holding_little, sql).await;
            assert_eq!(held_little, expected, "{sql}\n{plan}");
        }
        // The symbols' runs are short, and the partitions of more than eight batches handed over.
        let sql = "EXPLAIN ANALYZE SELECT sym, count(*), sum(id) FROM t GROUP BY sym";
        let (handovers, analyzed) = count_handovers(&handing_over, sql).await;
        assert!(handovers >= 1, "{analyzed}");
        // Distinct values held past the limit hand over too.
        let sql = "EXPLAIN ANALYZE SELECT sym, count(DISTINCT ts), count(DISTINCT day) FROM t GROUP BY sym";
        let (handovers, analyzed) = count_handovers(&holding_little, sql).await;
        assert!(handovers >= 1, "{analyzed}");
    }

    /// How many partitions of an `EXPLAIN ANALYZE` handed over to the hash aggregate, and the plan.
    async fn count_handovers(ctx: &SessionContext, sql: &str) -> (usize, String) {
        let analyzed = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let analyzed = pretty_format_batches(&analyzed).unwrap().to_string();
        let handovers = analyzed
            .split("hashed_instead=")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        (handovers, analyzed)
    }

    /// A Hive-partitioned folder of Parquet files: `sym=S0` … `sym=S3`, three files each, of `day`,
    /// `id` and `price`.
    fn partitioned_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("day", DataType::Int64, false),
            Field::new("id", DataType::Int64, false),
            Field::new("price", DataType::Float64, false),
        ]));
        let mut id = 0i64;
        for s in 0..4 {
            let folder = dir.path().join(format!("sym=S{s}"));
            std::fs::create_dir_all(&folder).unwrap();
            for f in 0..3 {
                let rows: Vec<i64> = (0..500).map(|i| id + i).collect();
                id += 500;
                let batch = RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(Int64Array::from_iter_values(rows.iter().map(|i| i % 3))),
                        Arc::new(Int64Array::from_iter_values(rows.iter().copied())),
                        Arc::new(Float64Array::from_iter_values(
                            rows.iter().map(|i| (i % 97) as f64 / 4.0),
                        )),
                    ],
                )
                .unwrap();
                let file = std::fs::File::create(folder.join(format!("{f}.parquet"))).unwrap();
                let mut writer =
                    parquet::arrow::ArrowWriter::try_new(file, Arc::clone(&schema), None).unwrap();
                writer.write(&batch).unwrap();
                writer.close().unwrap();
            }
        }
        dir
    }

    /// The rule runs aggregates grouped by a file scan's partition columns, through a filter and a
    /// projection, and no other; the answers are the hash aggregate's.
    #[tokio::test]
    async fn the_rule_takes_keys_from_partition_columns_only() {
        let dir = partitioned_folder();
        let with_rule = session(Some(Arc::new(RunAggregate::default())));
        let hashed = session(None);
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![("sym".to_owned(), DataType::Utf8)]);
        for ctx in [&with_rule, &hashed] {
            ctx.register_listing_table(
                "p",
                dir.path().to_str().unwrap(),
                options.clone(),
                None,
                None,
            )
            .await
            .unwrap();
        }
        let cases = [
            (
                "SELECT sym, count(*), sum(id), round(vwap(price, id), 6) FROM p \
                 GROUP BY sym ORDER BY sym",
                true,
            ),
            (
                "SELECT sym, count(*), max(price) FROM p WHERE price > 10 GROUP BY sym ORDER BY sym",
                true,
            ),
            (
                "SELECT s, count(*) FROM (SELECT sym AS s, price FROM p) GROUP BY s ORDER BY s",
                true,
            ),
            // An input sorted by the keys: a window's output.
            (
                "SELECT sym, count(r), round(avg(r), 6) FROM (SELECT sym, price - lag(price) \
                 OVER (PARTITION BY sym ORDER BY id) AS r FROM p) GROUP BY sym ORDER BY sym",
                true,
            ),
            // Distinct counts: a set per run, merged above.
            (
                "SELECT sym, count(DISTINCT price), count(DISTINCT day), count(*) FROM p \
                 GROUP BY sym ORDER BY sym",
                true,
            ),
            // Keys from the files' columns, or computed: hashed.
            (
                "SELECT day, count(*) FROM p GROUP BY day ORDER BY day",
                false,
            ),
            (
                "SELECT sym, day, count(*) FROM p GROUP BY sym, day ORDER BY sym, day",
                false,
            ),
            (
                "SELECT lower(sym) AS s, count(*) FROM p GROUP BY lower(sym) ORDER BY s",
                false,
            ),
        ];
        for (sql, runs) in cases {
            let (answer, plan) = run(&with_rule, sql).await;
            let (expected, _) = run(&hashed, sql).await;
            assert_eq!(answer, expected, "{sql}\n{plan}");
            assert_eq!(plan.contains("RunAggregateExec"), runs, "{sql}\n{plan}");
        }
        // Every symbol's rows were counted.
        let counted = with_rule
            .sql("SELECT count(*) AS n FROM p GROUP BY sym")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let counts: Vec<i64> = counted
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(counts, [1500; 4]);
    }
}
