//! Top rows per group without sorting everything: the plan of
//! `SELECT … FROM (SELECT …, row_number() OVER (PARTITION BY symbol ORDER BY ts DESC) AS rn …) WHERE rn = 1`.
//!
//! DataFusion plans that query as a sort of every row by `(symbol, ts)`, the window, then the filter.
//! On a lake of 10 M rows the sort is nearly all of the time (1.1 s against DuckDB's 0.14 s). The rule
//! [`WindowTopN`] finds a filter that keeps only `rn <= K` (`rn = K`, `rn < K`, either way round,
//! and as one conjunct of several) over a window whose only function is `row_number()`, and replaces
//! the sort under the window with [`PartitionedTopKExec`]: it keeps the first `K` rows of each group
//! in the sort's order as the input streams by, and hands the window just those rows, sorted as the
//! sort would have. The window and the filter stay as they were, so the answer is the same. When a
//! hash repartition by the window's keys feeds the sort, a second [`PartitionedTopKExec`] goes under
//! it, so each scan partition's own first `K` rows per group are all that is hashed and moved.
//!
//! Memory is `K` rows per group (tracked in the query's memory pool); the rule only fires for
//! `K <= 1000`. When the kept rows outgrow the memory limit, the operator hands its kept rows and the
//! rest of its input to a [`SortExec`], which spills, as the plan would have without the rule.
//! DataFusion 55 has the same optimisation (`enable_window_topn`), but ticklake is on DataFusion 53,
//! the newest that shares its Arrow with the `iceberg` crate.

use std::any::Any;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use crate::key_runs::key_runs;
use arrow::array::{
    downcast_primitive_array, Array, ArrayRef, ArrowPrimitiveType, PrimitiveArray, RecordBatch,
    UInt32Array,
};
use arrow::compute::SortOptions;
use arrow::compute::{
    interleave_record_batch, lexsort_to_indices, take, take_record_batch, SortColumn,
};
use arrow::datatypes::ArrowNativeTypeOp;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{HashMap, Result, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_expr::utils::split_conjunction;
use datafusion::physical_expr::{
    EquivalenceProperties, LexOrdering, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, CardinalityEffect, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::windows::{
    BoundedWindowAggExec, StandardWindowExpr, WindowAggExec, WindowExpr, WindowUDFExpr,
};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

use crate::handover::rest_as_plan;

/// The largest `K` the rule rewrites for: beyond it, keeping `K` rows per group costs about what
/// the sort does.
const MAX_K: u64 = 1000;

/// The physical optimizer rule (see the module's documentation). Runs after DataFusion's own rules.
#[derive(Debug, Default)]
pub struct WindowTopN;

impl PhysicalOptimizerRule for WindowTopN {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| {
            Ok(match rewrite(&node)? {
                Some(new) => Transformed::yes(new),
                None => Transformed::no(node),
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "window_topn"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The row format's fields of sort expressions over `schema`: rows in this format compare as the
/// expressions order them.
fn sort_fields(exprs: &[PhysicalSortExpr], schema: &Schema) -> Result<Vec<SortField>> {
    exprs
        .iter()
        .map(|s| {
            Ok(SortField::new_with_options(
                s.expr.data_type(schema)?,
                s.options,
            ))
        })
        .collect()
}

/// `Filter(rn <= K) [→ Projection] → Window(row_number) → Sort` with the sort replaced, or None.
fn rewrite(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(filter) = node.as_any().downcast_ref::<FilterExec>() else {
        return Ok(None);
    };
    // The window, and where its row number is in the filter's input.
    let (projection, window) = match filter.input().as_any().downcast_ref::<ProjectionExec>() {
        Some(p) => (Some(p), p.input()),
        None => (None, filter.input()),
    };
    let Some((window_exprs, window_input)) = window_parts(window) else {
        return Ok(None);
    };
    let [window_expr] = window_exprs else {
        return Ok(None);
    };
    if !is_row_number(window_expr) || window_expr.partition_by().is_empty() {
        return Ok(None);
    }
    let rn_in_window = window_input.schema().fields().len();
    let rn_indices: Vec<usize> = match projection {
        None => vec![rn_in_window],
        Some(p) => p
            .expr()
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.expr
                    .as_any()
                    .downcast_ref::<Column>()
                    .is_some_and(|c| c.index() == rn_in_window)
            })
            .map(|(i, _)| i)
            .collect(),
    };
    let Some(k) = row_limit(filter.predicate(), &rn_indices) else {
        return Ok(None);
    };
    if k == 0 || k > MAX_K {
        return Ok(None);
    }
    let Some(sort) = window_input.as_any().downcast_ref::<SortExec>() else {
        return Ok(None);
    };
    // An unbounded input would never end, and this operator emits at the end.
    if sort.fetch().is_some()
        || sort.input().boundedness().is_unbounded()
        || !sort_is_window_order(sort.expr(), window_expr.as_ref())
    {
        return Ok(None);
    }
    // Keys and order are compared in Arrow's row format, which takes most types, not all.
    if !RowConverter::supports_fields(&sort_fields(sort.expr(), &sort.input().schema())?) {
        return Ok(None);
    }
    let top_k = |input| -> Arc<dyn ExecutionPlan> {
        Arc::new(PartitionedTopKExec::new(
            input,
            sort.expr().clone(),
            window_expr.partition_by().len(),
            k as usize,
        ))
    };
    let mut input = Arc::clone(sort.input());
    if !sort.preserve_partitioning() && input.output_partitioning().partition_count() > 1 {
        input = Arc::new(CoalescePartitionsExec::new(input));
    }
    // Below the hash repartition by the window's keys, each partition's own first `k` rows per
    // group are all that can win: keep only them before hashing and moving every row.
    if let Some(repartition) = input.as_any().downcast_ref::<RepartitionExec>() {
        if !repartition.preserve_order() {
            let partial = top_k(Arc::clone(repartition.input()));
            input = Arc::clone(&input).with_new_children(vec![partial])?;
        }
    }
    let window = Arc::clone(window).with_new_children(vec![top_k(input)])?;
    let filter_input = match projection {
        Some(_) => Arc::clone(filter.input()).with_new_children(vec![window])?,
        None => window,
    };
    Ok(Some(
        Arc::clone(node).with_new_children(vec![filter_input])?,
    ))
}

/// A window plan's functions and input.
type WindowParts<'a> = (&'a [Arc<dyn WindowExpr>], &'a Arc<dyn ExecutionPlan>);

fn window_parts(plan: &Arc<dyn ExecutionPlan>) -> Option<WindowParts<'_>> {
    if let Some(w) = plan.as_any().downcast_ref::<BoundedWindowAggExec>() {
        return Some((w.window_expr(), w.input()));
    }
    let w = plan.as_any().downcast_ref::<WindowAggExec>()?;
    Some((w.window_expr(), w.input()))
}

fn is_row_number(expr: &Arc<dyn WindowExpr>) -> bool {
    expr.as_any()
        .downcast_ref::<StandardWindowExpr>()
        .and_then(|e| {
            e.get_standard_func_expr()
                .as_any()
                .downcast_ref::<WindowUDFExpr>()
        })
        .is_some_and(|f| f.fun().name() == "row_number")
}

/// True when `sort` is the window's partition keys (in any order and direction) followed by
/// exactly its `ORDER BY`: then the first `K` rows of a group in the sort's order are the rows the
/// window numbers 1 to `K`.
fn sort_is_window_order(sort: &LexOrdering, window: &dyn WindowExpr) -> bool {
    let partition_by = window.partition_by();
    let order_by = window.order_by();
    if sort.len() != partition_by.len() + order_by.len() {
        return false;
    }
    let (keys, order) = sort.split_at(partition_by.len());
    keys.iter()
        .all(|s| partition_by.iter().any(|p| p.eq(&s.expr)))
        && order.iter().zip(order_by).all(|(s, o)| s == o)
}

/// The `K` of a predicate that only passes rows numbered `K` or less, where the row number is any
/// of the columns `rn`.
fn row_limit(predicate: &Arc<dyn PhysicalExpr>, rn: &[usize]) -> Option<u64> {
    split_conjunction(predicate)
        .into_iter()
        .filter_map(|conjunct| {
            let b = conjunct.as_any().downcast_ref::<BinaryExpr>()?;
            let (op, value) = match (column_index(b.left()), literal(b.right())) {
                (Some(c), Some(v)) if rn.contains(&c) => (*b.op(), v),
                _ => match (literal(b.left()), column_index(b.right())) {
                    (Some(v), Some(c)) if rn.contains(&c) => (b.op().swap()?, v),
                    _ => return None,
                },
            };
            match op {
                Operator::Eq | Operator::LtEq => Some(value),
                Operator::Lt => Some(value.saturating_sub(1)),
                _ => None,
            }
        })
        .min()
}

fn column_index(e: &Arc<dyn PhysicalExpr>) -> Option<usize> {
    e.as_any().downcast_ref::<Column>().map(Column::index)
}

fn literal(e: &Arc<dyn PhysicalExpr>) -> Option<u64> {
    match e.as_any().downcast_ref::<Literal>()?.value() {
        ScalarValue::UInt64(Some(v)) => Some(*v),
        ScalarValue::Int64(Some(v)) => u64::try_from(*v).ok(),
        ScalarValue::UInt32(Some(v)) => Some(u64::from(*v)),
        ScalarValue::Int32(Some(v)) => u64::try_from(*v).ok(),
        _ => None,
    }
}

/// The first `k` rows of each group of its input, in `ordering`, whose first `keys` expressions
/// are the group's key; emitted once the input ends, sorted by `ordering`. It stands where a
/// [`SortExec`] by `ordering` stood, with the same partitioning.
#[derive(Debug)]
pub struct PartitionedTopKExec {
    input: Arc<dyn ExecutionPlan>,
    ordering: LexOrdering,
    keys: usize,
    k: usize,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl PartitionedTopKExec {
    /// Keeps the first `k` rows of each group of `input` (grouped by the first `keys` expressions
    /// of `ordering`), each partition on its own.
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        ordering: LexOrdering,
        keys: usize,
        k: usize,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new_with_orderings(input.schema(), [ordering.clone()]),
            input.output_partitioning().clone(),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        PartitionedTopKExec {
            input,
            ordering,
            keys,
            k,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for PartitionedTopKExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "PartitionedTopKExec: k={}, keys={}, expr=[{}]",
            self.k, self.keys, self.ordering
        )
    }
}

impl ExecutionPlan for PartitionedTopKExec {
    fn name(&self) -> &str {
        "PartitionedTopKExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children.pop().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal(
                "PartitionedTopKExec needs its input".into(),
            )
        })?;
        Ok(Arc::new(PartitionedTopKExec::new(
            input,
            self.ordering.clone(),
            self.keys,
            self.k,
        )))
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
        let mut input = self.input.execute(partition, Arc::clone(&context))?;
        let schema = self.schema();
        let batch_size = context.session_config().batch_size();
        let reservation = MemoryConsumer::new(format!("PartitionedTopKExec[{partition}]"))
            .register(context.memory_pool());
        let mut state = TopK::new(&schema, &self.ordering, self.keys, self.k, reservation)?;
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let sorted_instead = MetricBuilder::new(&self.metrics).counter("sorted_instead", partition);
        let out_schema = Arc::clone(&schema);
        let ordering = self.ordering.clone();
        let result = futures::stream::once(async move {
            let mut out_of_memory = false;
            while let Some(batch) = input.next().await {
                let batch = batch?;
                let _timer = metrics.elapsed_compute().timer();
                match state.insert(&batch) {
                    Ok(()) => {}
                    Err(e) if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) => {
                        out_of_memory = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            let batches = {
                let _timer = metrics.elapsed_compute().timer();
                state.finish(&out_schema, batch_size)?
            };
            if out_of_memory {
                // More groups than the memory limit holds K rows of: sort the kept rows and the
                // rest of the input, as the plan did before the rule, since a sort spills. A dropped
                // row was behind K kept rows of its group, so the window still numbers the first K
                // of every group as it would have.
                tracing::debug!("PartitionedTopKExec[{partition}]: out of memory, sorting instead");
                sorted_instead.add(1);
                let rest = futures::stream::iter(batches.into_iter().map(Ok)).chain(input);
                let sort = SortExec::new(ordering, rest_as_plan(Arc::clone(&out_schema), rest)?);
                return Ok(sort.execute(0, context)?.boxed());
            }
            metrics.record_output(batches.iter().map(RecordBatch::num_rows).sum());
            Ok(futures::stream::iter(batches.into_iter().map(Ok)).boxed())
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, result)))
    }
}

/// A kept row: its order key (the row format of the order expressions, which compares as the
/// ordering does) and where it is in [`TopK::held`].
struct Kept {
    order: Box<[u8]>,
    batch: usize,
    row: usize,
}

/// The state of one partition: for each group (by the row format of its key, which sorts as the
/// ordering's key expressions do), its best rows so far, best first.
struct TopK {
    ordering: LexOrdering,
    keys: usize,
    k: usize,
    key_rows: RowConverter,
    order_rows: RowConverter,
    groups: HashMap<Box<[u8]>, Vec<Kept>>,
    /// The batches kept rows point into; rows no longer kept are dropped when these are compacted.
    held: Vec<RecordBatch>,
    held_rows: usize,
    kept_rows: usize,
    reservation: MemoryReservation,
}

impl TopK {
    fn new(
        schema: &SchemaRef,
        ordering: &LexOrdering,
        keys: usize,
        k: usize,
        reservation: MemoryReservation,
    ) -> Result<Self> {
        let (key_exprs, order_exprs) = ordering.split_at(keys);
        Ok(TopK {
            ordering: ordering.clone(),
            keys,
            k,
            key_rows: RowConverter::new(sort_fields(key_exprs, schema)?)?,
            order_rows: RowConverter::new(sort_fields(order_exprs, schema)?)?,
            groups: HashMap::default(),
            held: Vec::new(),
            held_rows: 0,
            kept_rows: 0,
            reservation,
        })
    }

    fn insert(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let (key_exprs, order_exprs) = self.ordering.split_at(self.keys);
        let evaluate = |exprs: &[PhysicalSortExpr]| {
            exprs
                .iter()
                .map(|s| s.expr.evaluate(batch)?.into_array(n))
                .collect::<Result<Vec<ArrayRef>>>()
        };
        let (key_columns, order_columns) = (evaluate(key_exprs)?, evaluate(order_exprs)?);
        // The candidates: within each run of rows with the same key (rows of a group come
        // together, as files are sorted by symbol), its first `k` rows in the order, found by
        // Arrow's sort with a limit. When runs are short, every row.
        let candidates = match key_runs(&key_columns) {
            Ok(runs) if runs.len() * 8 <= n => {
                let mut candidates = Vec::with_capacity(runs.len() * self.k);
                for run in runs {
                    if run.len() <= self.k {
                        candidates.extend(run.map(|r| r as u32));
                        continue;
                    }
                    // The latest row of each group: one pass for the best value.
                    if let ([column], [expr], 1) = (&order_columns[..], order_exprs, self.k) {
                        let values = column.slice(run.start, run.len());
                        if let Some(best) = first_in_order(values.as_ref(), expr.options) {
                            candidates.push((run.start + best) as u32);
                            continue;
                        }
                    }
                    let columns: Vec<SortColumn> = order_columns
                        .iter()
                        .zip(order_exprs)
                        .map(|(c, s)| SortColumn {
                            values: c.slice(run.start, run.len()),
                            options: Some(s.options),
                        })
                        .collect();
                    let top = lexsort_to_indices(&columns, Some(self.k))?;
                    candidates.extend(top.values().iter().map(|&i| run.start as u32 + i));
                }
                Some(UInt32Array::from(candidates))
            }
            _ => None,
        };
        let pick = |columns: &[ArrayRef]| match &candidates {
            Some(rows) => columns
                .iter()
                .map(|c| Ok(take(c.as_ref(), rows, None)?))
                .collect::<Result<Vec<ArrayRef>>>(),
            None => Ok(columns.to_vec()),
        };
        let keys = self.key_rows.convert_columns(&pick(&key_columns)?)?;
        let orders = self.order_rows.convert_columns(&pick(&order_columns)?)?;
        let row_of = |i: usize| candidates.as_ref().map_or(i, |c| c.value(i) as usize);
        // The candidates' best rows per group first, comparing rows in place: most rows lose here
        // and cost no allocation. The previous row's group is tried before the hash table.
        let mut slots: HashMap<&[u8], usize> = HashMap::default();
        let mut local: Vec<(&[u8], Vec<usize>)> = Vec::new();
        let mut last: Option<usize> = None;
        for row in 0..keys.num_rows() {
            let key = keys.row(row).data();
            let slot = match last {
                Some(slot) if local[slot].0 == key => slot,
                _ => *slots.entry(key).or_insert_with(|| {
                    local.push((key, Vec::with_capacity(self.k)));
                    local.len() - 1
                }),
            };
            last = Some(slot);
            let best = &mut local[slot].1;
            let order = orders.row(row);
            let at = best.partition_point(|&r| orders.row(r) <= order);
            if at < self.k {
                if best.len() == self.k {
                    best.pop();
                }
                best.insert(at, row);
            }
        }
        // Then each candidate against the group's kept rows.
        let batch_index = self.held.len();
        let mut taken: Vec<u32> = Vec::new();
        for (key, candidates) in local {
            let kept = self.groups.entry_ref(key).or_default();
            for row in candidates {
                let order = orders.row(row).data();
                let at = kept.partition_point(|x| &*x.order <= order);
                if at >= self.k {
                    break; // the candidates are best first, so the rest lose too
                }
                if kept.len() == self.k {
                    kept.pop();
                } else {
                    self.kept_rows += 1;
                }
                kept.insert(
                    at,
                    Kept {
                        order: order.into(),
                        batch: batch_index,
                        row: taken.len(),
                    },
                );
                taken.push(row_of(row) as u32);
            }
        }
        if !taken.is_empty() {
            let rows = take_record_batch(batch, &UInt32Array::from(taken))?;
            self.held_rows += rows.num_rows();
            self.held.push(rows);
        }
        if self.held_rows > 2 * self.kept_rows + 8192 || self.held.len() > 256 {
            self.compact()?;
        }
        let size: usize = self
            .held
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        self.reservation.try_resize(size + self.kept_rows * 32)?;
        Ok(())
    }

    /// Copies the kept rows into one batch and drops the rest.
    fn compact(&mut self) -> Result<()> {
        let mut indices = Vec::with_capacity(self.kept_rows);
        for kept in self.groups.values_mut().flatten() {
            indices.push((kept.batch, kept.row));
            kept.batch = 0;
            kept.row = indices.len() - 1;
        }
        let batch = interleave_record_batch(&self.held.iter().collect::<Vec<_>>(), &indices)?;
        self.held_rows = batch.num_rows();
        self.held = vec![batch];
        Ok(())
    }

    /// The kept rows in the ordering: groups by key, each group's rows best first.
    fn finish(mut self, schema: &SchemaRef, batch_size: usize) -> Result<Vec<RecordBatch>> {
        let mut groups: Vec<_> = std::mem::take(&mut self.groups).into_iter().collect();
        groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let indices: Vec<(usize, usize)> = groups
            .iter()
            .flat_map(|(_, kept)| kept.iter().map(|x| (x.batch, x.row)))
            .collect();
        let held: Vec<&RecordBatch> = self.held.iter().collect();
        let mut out = Vec::new();
        for chunk in indices.chunks(batch_size.max(1)) {
            out.push(interleave_record_batch(&held, chunk)?);
        }
        if out.is_empty() {
            out.push(RecordBatch::new_empty(Arc::clone(schema)));
        }
        Ok(out)
    }
}

/// The row of `values` that sorts first under `options` (the first of equal rows), for primitive
/// arrays: what Arrow's `sort_to_indices` with a limit of one finds, in one pass over the values
/// instead of collecting and partially sorting (index, value) pairs. Floats compare in total order,
/// as Arrow's sort does. `None` for other types and for no rows.
fn first_in_order(values: &dyn Array, options: SortOptions) -> Option<usize> {
    downcast_primitive_array! {
        values => first_primitive(values, options),
        _ => None,
    }
}

fn first_primitive<T: ArrowPrimitiveType>(
    values: &PrimitiveArray<T>,
    options: SortOptions,
) -> Option<usize> {
    if values.is_empty() {
        return None;
    }
    // The wanted end of the order: the greatest value when descending, else the least.
    let wanted = if options.descending {
        Ordering::Greater
    } else {
        Ordering::Less
    };
    let raw = values.values();
    let better = |i: usize, best: usize| raw[i].compare(raw[best]) == wanted;
    match values.nulls().filter(|nulls| nulls.null_count() > 0) {
        None => Some((1..raw.len()).fold(0, |best, i| if better(i, best) { i } else { best })),
        Some(nulls) if options.nulls_first || nulls.null_count() == values.len() => {
            nulls.iter().position(|valid| !valid)
        }
        Some(nulls) => nulls
            .valid_indices()
            .reduce(|best, i| if better(i, best) { i } else { best }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{run, session};
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::context::{SessionConfig, SessionContext};
    use datafusion::execution::SessionStateBuilder;

    /// Each query answers the same with the rule as without it, and the rule replaced the sort
    /// exactly where it should.
    #[tokio::test]
    async fn top_rows_per_group_match_the_full_sort() {
        let with_rule = session(Some(Arc::new(WindowTopN)));
        let without = session(None);
        let numbered =
            |window: &str| format!("(SELECT sym, day, ts, id, price, {window} AS rn FROM t)");
        let by_sym_ts = numbered("row_number() OVER (PARTITION BY sym ORDER BY ts DESC, id)");
        let cases = [
            // (SQL, whether the rule fires)
            (format!("SELECT * FROM {by_sym_ts} WHERE rn = 1 ORDER BY sym"), true),
            (format!("SELECT * FROM {by_sym_ts} WHERE rn <= 3 ORDER BY sym, rn"), true),
            (format!("SELECT * FROM {by_sym_ts} WHERE 3 >= rn ORDER BY sym, rn"), true),
            (format!("SELECT * FROM {by_sym_ts} WHERE rn < 3 AND price > 20 ORDER BY sym, rn"), true),
            (format!("SELECT sym, id FROM {by_sym_ts} WHERE rn = 2 ORDER BY sym"), true),
            (
                format!(
                    "SELECT * FROM {} WHERE rn <= 2 ORDER BY sym, day, rn",
                    numbered("row_number() OVER (PARTITION BY day, sym ORDER BY ts ASC NULLS FIRST, price DESC, id)")
                ),
                true,
            ),
            (
                "SELECT sym, id, price FROM t QUALIFY row_number() OVER (PARTITION BY sym ORDER BY price DESC, id) = 1 ORDER BY sym".to_owned(),
                true,
            ),
            // One order column and K = 1, each way and with nulls either end (ts repeats, so only
            // the order column is selected: which of equal rows is first is not defined).
            (
                "SELECT sym, id, ts FROM t QUALIFY row_number() OVER (PARTITION BY sym ORDER BY id DESC) = 1 ORDER BY sym".to_owned(),
                true,
            ),
            (
                "SELECT sym, id, price FROM t QUALIFY row_number() OVER (PARTITION BY sym ORDER BY id) = 1 ORDER BY sym".to_owned(),
                true,
            ),
            (
                "SELECT sym, ts FROM t QUALIFY row_number() OVER (PARTITION BY sym ORDER BY ts DESC NULLS FIRST) = 1 ORDER BY sym".to_owned(),
                true,
            ),
            (
                "SELECT sym, ts FROM t QUALIFY row_number() OVER (PARTITION BY sym ORDER BY ts DESC NULLS LAST) = 1 ORDER BY sym".to_owned(),
                true,
            ),
            (
                "SELECT day, price FROM t QUALIFY row_number() OVER (PARTITION BY day ORDER BY price) = 1 ORDER BY day".to_owned(),
                true,
            ),
            // Not rewritten: no bound on the number, no rows, ranks, several windows, no groups.
            (format!("SELECT * FROM {by_sym_ts} WHERE rn > 2 ORDER BY id"), false),
            (format!("SELECT * FROM {by_sym_ts} WHERE rn < 1 ORDER BY id"), false),
            (format!("SELECT * FROM {by_sym_ts} WHERE rn <= 1001 ORDER BY id"), false),
            (
                format!(
                    "SELECT * FROM {} WHERE rn = 1 ORDER BY id",
                    numbered("rank() OVER (PARTITION BY sym ORDER BY ts DESC)")
                ),
                false,
            ),
            (
                "SELECT * FROM (SELECT id, row_number() OVER (PARTITION BY sym ORDER BY id) AS rn, \
                 lag(id) OVER (PARTITION BY sym ORDER BY id) AS prev FROM t) WHERE rn = 1 ORDER BY id"
                    .to_owned(),
                false,
            ),
            (
                format!(
                    "SELECT * FROM {} WHERE rn <= 5 ORDER BY rn",
                    numbered("row_number() OVER (ORDER BY ts DESC, id)")
                ),
                false,
            ),
        ];
        for (sql, fires) in cases {
            let (expected, plain) = run(&without, &sql).await;
            let (got, plan) = run(&with_rule, &sql).await;
            assert!(!plain.contains("PartitionedTopKExec"), "{plain}");
            assert_eq!(plan.contains("PartitionedTopKExec"), fires, "{sql}\n{plan}");
            assert_eq!(got, expected, "{sql}\n{plan}");
            assert!(
                expected.lines().count() > 4 || sql.contains("rn < 1"),
                "{sql}: {expected}"
            );
        }
    }

    /// The one-pass search finds a row with the value Arrow's sort puts first, for every direction,
    /// nulls either end, floats with NaN and signed zeros, all nulls, and slices.
    #[test]
    fn first_in_order_finds_what_the_sort_puts_first() {
        use arrow::array::{Float64Array, StringArray};
        use arrow::compute::sort_to_indices;
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![
            Some(1.5),
            None,
            Some(f64::NAN),
            Some(-0.0),
            Some(0.0),
            Some(-7.25),
            None,
            Some(f64::INFINITY),
            Some(-7.25),
        ]));
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(3),
            Some(9),
            None,
            Some(-4),
            Some(9),
        ]));
        let no_nulls: ArrayRef = Arc::new(Int64Array::from(vec![5, 2, 8, 2, 8, 1]));
        let all_null: ArrayRef = Arc::new(Int64Array::from(vec![None, None, None]));
        let arrays = [
            floats.clone(),
            floats.slice(2, 5),
            ints.clone(),
            ints.slice(3, 2),
            no_nulls.clone(),
            no_nulls.slice(1, 4),
            all_null,
        ];
        for values in &arrays {
            for (descending, nulls_first) in
                [(false, false), (false, true), (true, false), (true, true)]
            {
                let options = SortOptions {
                    descending,
                    nulls_first,
                };
                let ours = first_in_order(values.as_ref(), options).unwrap();
                let theirs = sort_to_indices(values.as_ref(), Some(options), Some(1))
                    .unwrap()
                    .value(0) as usize;
                let (a, b) = (values.slice(ours, 1), values.slice(theirs, 1));
                let same = match (
                    a.as_any().downcast_ref::<Float64Array>(),
                    b.as_any().downcast_ref::<Float64Array>(),
                ) {
                    (Some(a), Some(b)) => {
                        a.is_null(0) == b.is_null(0) && a.value(0).total_cmp(&b.value(0)).is_eq()
                    }
                    _ => a.to_data() == b.to_data(),
                };
                assert!(
                    same,
                    "{values:?} {options:?}: row {ours}, the sort's {theirs}"
                );
            }
        }
        // Other types are left to the sort.
        let text = StringArray::from(vec!["b", "a"]);
        assert_eq!(first_in_order(&text, SortOptions::default()), None);
        assert_eq!(
            first_in_order(&no_nulls.slice(0, 0), SortOptions::default()),
            None
        );
    }

    /// With more groups than the memory limit holds, the operator hands over to a sort (which
    /// spills) and the answer stays right.
    #[tokio::test]
    async fn more_groups_than_memory_sort_instead() {
        use datafusion::execution::memory_pool::FairSpillPool;
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        // 200,000 groups of two rows each, in 4 partitions.
        let partitions: Vec<Vec<RecordBatch>> = (0..4)
            .map(|p| {
                (0..25)
                    .map(|b| {
                        let start = (p * 25 + b) * 2000;
                        RecordBatch::try_new(
                            Arc::clone(&schema),
                            vec![
                                Arc::new(StringArray::from_iter_values(
                                    (start..start + 2000).map(|i| format!("group-{:08}", i / 2)),
                                )),
                                Arc::new(Int64Array::from_iter_values(
                                    (start..start + 2000).map(|i| i as i64),
                                )),
                            ],
                        )
                        .unwrap()
                    })
                    .collect()
            })
            .collect();
        let sql = "SELECT count(*), sum(v), min(v), max(v) FROM (SELECT g, v, row_number() \
                   OVER (PARTITION BY g ORDER BY v DESC) AS rn FROM t) WHERE rn = 1";
        let mut answers = Vec::new();
        for limit in [None, Some(4 << 20)] {
            let mut config = SessionConfig::new()
                .with_target_partitions(2)
                .with_batch_size(1024);
            config.options_mut().execution.sort_spill_reservation_bytes = 64 << 10;
            let mut runtime = RuntimeEnvBuilder::new();
            if let Some(limit) = limit {
                runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
            }
            let state = SessionStateBuilder::new()
                .with_config(config)
                .with_runtime_env(runtime.build_arc().unwrap())
                .with_default_features()
                .with_physical_optimizer_rule(Arc::new(WindowTopN))
                .build();
            let ctx = SessionContext::new_with_state(state);
            let table = MemTable::try_new(Arc::clone(&schema), partitions.clone()).unwrap();
            ctx.register_table("t", Arc::new(table)).unwrap();
            let plan = ctx
                .sql(sql)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let batches = datafusion::physical_plan::collect(Arc::clone(&plan), ctx.task_ctx())
                .await
                .unwrap();
            answers.push(pretty_format_batches(&batches).unwrap().to_string());
            // How many partitions handed over to a sort.
            fn sorted_instead(plan: &Arc<dyn ExecutionPlan>) -> usize {
                let own = if plan.name() == "PartitionedTopKExec" {
                    let metrics = plan.metrics().unwrap();
                    metrics
                        .sum_by_name("sorted_instead")
                        .map_or(0, |m| m.as_usize())
                } else {
                    0
                };
                own + plan
                    .children()
                    .into_iter()
                    .map(sorted_instead)
                    .sum::<usize>()
            }
            let handed_over = sorted_instead(&plan);
            assert_eq!(handed_over > 0, limit.is_some(), "{handed_over}");
        }
        // 100,000 groups; each one's larger value is odd: 1 + 3 + ... + 199,999 = 100,000².
        assert!(
            answers[0].contains("| 100000   | 10000000000 | 1        | 199999   |"),
            "{}",
            answers[0]
        );
        assert_eq!(answers[0], answers[1]);
    }

    /// When every batch beats the rows kept so far (a feed read oldest first, newest wanted), the
    /// rows no longer kept are dropped: memory stays near K rows per group.
    #[test]
    fn held_rows_stay_bounded() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sym", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
        ]));
        let ordering = LexOrdering::new([
            datafusion::physical_expr::PhysicalSortExpr::new_default(Arc::new(Column::new(
                "sym", 0,
            ))),
            datafusion::physical_expr::PhysicalSortExpr::new(
                Arc::new(Column::new("ts", 1)),
                arrow::compute::SortOptions::new(true, false),
            ),
        ])
        .unwrap();
        let pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool> =
            Arc::new(datafusion::execution::memory_pool::UnboundedMemoryPool::default());
        let reservation = MemoryConsumer::new("test").register(&pool);
        let mut topk = TopK::new(&schema, &ordering, 1, 2, reservation).unwrap();
        let batches = 100;
        for b in 0..batches {
            let start = b * 1000;
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        (start..start + 1000).map(|i| format!("S{:03}", i % 500)),
                    )),
                    Arc::new(Int64Array::from_iter_values(start..start + 1000)),
                ],
            )
            .unwrap();
            topk.insert(&batch).unwrap();
            assert_eq!(topk.kept_rows, 1000);
            assert!(
                topk.held_rows <= 2 * topk.kept_rows + 8192,
                "{}",
                topk.held_rows
            );
        }
        assert!(
            topk.held.len() < batches as usize / 5,
            "{}",
            topk.held.len()
        );
        let out = topk.finish(&schema, 300).unwrap();
        assert_eq!(out.len(), 4);
        let all = arrow::compute::concat_batches(&schema, &out).unwrap();
        let ts = all.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let sym = all
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        // S000 first with its newest two rows, then S001, ...
        assert_eq!(
            (sym.value(0), ts.value(0), ts.value(1)),
            ("S000", 99_500, 99_000)
        );
        assert_eq!(
            (sym.value(999), ts.value(998), ts.value(999)),
            ("S499", 99_999, 99_499)
        );
    }
}
