//! `YieldingJoins`: operators that can emit many batches for each batch they read yield to the
//! runtime now and then, so that a statement's time limit (and every other task of the runtime:
//! `serve`'s requests, the catalog's clients) still gets its turn while they run.
//!
//! A time limit is a timer of the async runtime, and a task is only ever stopped where it yields.
//! DataFusion's own `EnsureCooperative` makes the plan's leaves (scans) spend the runtime's task
//! budget for each batch, which is enough while every batch comes from a scan. A join emits batches
//! from the rows it already holds: `SELECT sum(a.x * b.x * c.x) FROM t a, t b, t c` over 1,000 rows
//! reads 3,000 rows once and then emits 10^9 rows without reading more, never spending budget and
//! never yielding; its time limit never fired, and it ran on both cores until killed. This rule puts
//! DataFusion's `CooperativeExec` above every operator that may emit more rows than it reads (joins,
//! unnest, and any operator that does not say it emits at most as many), so each of their batches
//! spends budget too. It wraps only the output, so the plan and its answers do not change.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{CardinalityEffect, SchedulingType};
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::ExecutionPlan;

/// Wraps every operator that may emit more rows than it reads in a `CooperativeExec`; see the
/// module's documentation.
#[derive(Debug, Default)]
pub(crate) struct YieldingJoins;

impl YieldingJoins {
    fn needs_budget(plan: &Arc<dyn ExecutionPlan>) -> bool {
        // Windows emit one row for each row they read, though they do not declare it: a budget
        // spent there again would only make window queries yield more often than their scans do.
        let window =
            plan.as_any().is::<BoundedWindowAggExec>() || plan.as_any().is::<WindowAggExec>();
        !plan.children().is_empty()
            && !window
            && plan.properties().scheduling_type != SchedulingType::Cooperative
            && matches!(
                plan.cardinality_effect(),
                CardinalityEffect::Unknown | CardinalityEffect::GreaterEqual
            )
    }
}

impl PhysicalOptimizerRule for YieldingJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            Ok(if YieldingJoins::needs_budget(&node) {
                Transformed::yes(Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>)
            } else {
                Transformed::no(node)
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "YieldingJoins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use datafusion::execution::context::SessionContext;

    use super::*;
    use crate::test_support::{run, session};

    /// Runs `sql` on a runtime of its own under a 200 ms time limit, then shuts the runtime down,
    /// on a thread: whether that thread is done within `within`.
    fn stops_within(ctx: SessionContext, sql: &'static str, within: Duration) -> bool {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let stopped = runtime.block_on(async {
                let df = ctx.sql(sql).await.unwrap();
                tokio::time::timeout(Duration::from_millis(200), df.collect()).await
            });
            // Dropping the runtime waits for its workers, so this is only reached when the
            // statement's tasks have stopped too.
            drop(runtime);
            let _ = done.send(stopped.is_err());
        });
        finished.recv_timeout(within).unwrap_or(false)
    }

    /// A join of joins that emits 8.1 G rows from the 1,200 it reads: without the rule no task of
    /// the statement ever yields, so its time limit never stops it (it would run for minutes).
    #[test]
    fn a_cross_join_stops_at_its_time_limit() {
        let sql = "SELECT sum(a.price * b.price * c.price * d.price) FROM \
                   (SELECT price FROM t LIMIT 300) a, (SELECT price FROM t LIMIT 300) b, \
                   (SELECT price FROM t LIMIT 300) c, (SELECT price FROM t LIMIT 300) d";
        let ctx = session(Some(Arc::new(YieldingJoins)));
        let started = Instant::now();
        assert!(
            stops_within(ctx.clone(), sql, Duration::from_secs(10)),
            "the statement did not stop within 10 s of its 200 ms limit"
        );
        assert!(started.elapsed() < Duration::from_secs(10));

        let plan = tokio::runtime::Runtime::new().unwrap().block_on(async {
            let plan = ctx
                .sql(sql)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let text = datafusion::physical_plan::displayable(plan.as_ref())
                .indent(false)
                .to_string();
            text
        });
        let lines: Vec<&str> = plan.lines().map(str::trim).collect();
        let joins = lines
            .iter()
            .filter(|l| l.starts_with("CrossJoinExec"))
            .count();
        let wrapped = lines
            .windows(2)
            .filter(|w| w[0] == "CooperativeExec" && w[1].starts_with("CrossJoinExec"))
            .count();
        assert_eq!((joins, wrapped), (3, 3), "{plan}");
    }

    /// The answers are the same with the rule as without it.
    #[tokio::test]
    async fn answers_do_not_change() {
        for sql in [
            "SELECT a.sym, count(*) FROM t a JOIN t b ON a.id = b.id GROUP BY a.sym ORDER BY 1",
            "SELECT count(*), sum(a.price - b.price) FROM t a JOIN t b ON a.id < b.id AND a.day = b.day",
            "SELECT sym, id, row_number() OVER (PARTITION BY sym ORDER BY id) FROM t ORDER BY id LIMIT 20",
        ] {
            let (with, plan) = run(&session(Some(Arc::new(YieldingJoins))), sql).await;
            let (without, _) = run(&session(None), sql).await;
            assert_eq!(with, without, "{sql}");
            let wrapped = plan.contains("CooperativeExec");
            assert_eq!(wrapped, sql.contains("JOIN"), "{sql}: {plan}");
        }
    }
}
