//! For the query operators' unit tests: a table, a session with or without an operator's rule, and a
//! query's answer beside its plan.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_optimizer::PhysicalOptimizerRule;

use crate::helpers::vwap_udaf;

/// A session of 3 partitions and batches of 64 rows, with `rule` after DataFusion's own, [`table`]
/// as `t`, and `vwap`.
pub(crate) fn session(
    rule: Option<Arc<dyn PhysicalOptimizerRule + Send + Sync>>,
) -> SessionContext {
    let config = SessionConfig::new()
        .with_target_partitions(3)
        .with_batch_size(64);
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features();
    if let Some(rule) = rule {
        state = state.with_physical_optimizer_rule(rule);
    }
    let ctx = SessionContext::new_with_state(state.build());
    ctx.register_table("t", Arc::new(table())).unwrap();
    ctx.register_udaf(vwap_udaf());
    ctx
}

/// `sql`'s answer as a table, and its physical plan.
pub(crate) async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
    let df = ctx.sql(sql).await.unwrap();
    let plan = df.clone().create_physical_plan().await.unwrap();
    let plan = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(false)
        .to_string();
    let batches = df.collect().await.unwrap();
    (pretty_format_batches(&batches).unwrap().to_string(), plan)
}

/// 3,000 rows in 4 partitions of uneven batches: symbols (some null), days, a timestamp that
/// repeats and is sometimes null, and a unique id that breaks every tie (so row numbers are
/// the same whichever plan runs).
pub(crate) fn table() -> MemTable {
    let schema = Arc::new(Schema::new(vec![
        Field::new("sym", DataType::Utf8, true),
        Field::new("day", DataType::Int64, false),
        Field::new("ts", DataType::Int64, true),
        Field::new("id", DataType::Int64, false),
        Field::new("price", DataType::Float64, false),
    ]));
    let mut seed: u64 = 42;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut partitions = vec![Vec::new(); 4];
    let mut id = 0;
    for (p, batch_rows) in [(0, 7), (1, 100), (2, 333), (3, 1)]
        .into_iter()
        .cycle()
        .take(40)
    {
        let rows = batch_rows.min(3000 - id);
        let mut rows: Vec<_> = (0..rows)
            .map(|_| {
                let s = next(25);
                id += 1;
                (
                    (s != 0).then(|| format!("S{s}")),
                    next(3) as i64,
                    (next(20) != 0).then(|| next(500) as i64),
                    id as i64,
                    next(10_000) as f64 / 100.0,
                )
            })
            .collect();
        // Partition 2's batches are sorted by symbol, as a lake's files are: long runs of
        // one group. The others are in no order.
        if p == 2 {
            rows.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let sym: Vec<_> = rows.iter().map(|r| r.0.clone()).collect();
        let day: Vec<_> = rows.iter().map(|r| r.1).collect();
        let ts: Vec<_> = rows.iter().map(|r| r.2).collect();
        let ids: Vec<_> = rows.iter().map(|r| r.3).collect();
        let price: Vec<_> = rows.iter().map(|r| r.4).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(sym)),
                Arc::new(Int64Array::from(day)),
                Arc::new(Int64Array::from(ts)),
                Arc::new(Int64Array::from(ids)),
                Arc::new(Float64Array::from(price)),
            ],
        )
        .unwrap();
        partitions[p].push(batch);
    }
    MemTable::try_new(schema, partitions).unwrap()
}
