//! `FolderDistinct`: DataFusion's `single_distinct_aggregation_to_group_by`, except where the groups
//! are a table's partition folders.
//!
//! DataFusion rewrites `SELECT date, count(DISTINCT close) FROM t GROUP BY date` into a group by
//! `(date, close)` and a count over it: every distinct close of each date becomes a group of a hash
//! aggregation (1.38 M groups for 10 M rows of 13 dates), and finding their group ids is nearly all of
//! the query's time. Without the rewrite, each date keeps one hash set of its closes (DataFusion's
//! distinct accumulators), which the scan's partitions fill side by side and the final aggregate
//! merges. That wins when the groups are few, and a table's partition columns make few groups: at
//! most one per partition folder. So the rewrite is skipped when every grouping column is a partition
//! column of the one lake table read, and kept for every other grouping, where groups may be many and
//! a set for each would cost more (and for a global `count(DISTINCT …)`, whose one set the final
//! aggregate would merge on one thread).

use datafusion::common::tree_node::Transformed;
use datafusion::datasource::source_as_provider;
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::single_distinct_to_groupby::SingleDistinctToGroupBy;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use crate::provider::LakeTable;

/// DataFusion's single-distinct rewrite, skipped for aggregates grouped by partition columns only;
/// see the module's documentation. It takes the rewrite's place in the optimizer's rules.
#[derive(Debug, Default)]
pub(crate) struct FolderDistinct(SingleDistinctToGroupBy);

impl FolderDistinct {
    /// The name of the DataFusion rule this one replaces.
    pub(crate) const REPLACES: &'static str = "single_distinct_aggregation_to_group_by";
}

impl OptimizerRule for FolderDistinct {
    fn name(&self) -> &str {
        "folder_distinct"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        self.0.apply_order()
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        if grouped_by_folders(&plan) {
            return Ok(Transformed::no(plan));
        }
        self.0.rewrite(plan, config)
    }
}

/// True for an aggregate grouped by one or more columns that are all partition columns of the lake
/// table it reads, through filters and plain column projections only.
fn grouped_by_folders(plan: &LogicalPlan) -> bool {
    let LogicalPlan::Aggregate(aggregate) = plan else {
        return false;
    };
    let mut names = Vec::with_capacity(aggregate.group_expr.len());
    for e in &aggregate.group_expr {
        match e {
            Expr::Column(c) => names.push(c.name.as_str()),
            _ => return false,
        }
    }
    if names.is_empty() {
        return false;
    }
    let mut node = aggregate.input.as_ref();
    loop {
        match node {
            LogicalPlan::Filter(filter) => node = filter.input.as_ref(),
            LogicalPlan::Projection(projection) => {
                // Each grouping column must pass through unchanged (not an expression named like it).
                let passes = |name: &str| {
                    projection
                        .expr
                        .iter()
                        .any(|e| matches!(e, Expr::Column(c) if c.name == name))
                };
                if !names.iter().all(|n| passes(n)) {
                    return false;
                }
                node = projection.input.as_ref();
            }
            LogicalPlan::TableScan(scan) => {
                let Ok(provider) = source_as_provider(&scan.source) else {
                    return false;
                };
                let Some(table) = provider.as_any().downcast_ref::<LakeTable>() else {
                    return false;
                };
                let keys = &table.definition().partition_keys;
                return names.iter().all(|n| keys.iter().any(|k| k.name == *n));
            }
            _ => return false,
        }
    }
}
