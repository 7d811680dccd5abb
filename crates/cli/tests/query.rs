//! Catalog and SQL, end to end through the real binary: answers checked against DuckDB reading the same
//! Parquet files, the sink's own partition registration, partition pruning, read-only refusals and SQL
//! error positions, output formats and the shell.

mod common;

use common::{path_str, produce_six_symbols, reference, text, Env};

/// A simulated lake: 6 symbols, 30 s bars over about a week, partitioned by date and symbol.
fn simulated_lake(records: u64) -> Env {
    let env = Env::embedded();
    produce_six_symbols(&env, records, "2024-01-02T14:30:00Z");
    env.ok(&["sink", "--once", "-q"]);
    env
}

/// The rows of a `--format csv` result.
fn csv_rows(stdout: &str) -> Vec<Vec<String>> {
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(stdout.as_bytes());
    rd.records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

fn query_rows(env: &Env, sql: &str) -> Vec<Vec<String>> {
    let (stdout, _) = env.ok(&["query", "--format", "csv", sql]);
    csv_rows(&stdout)
}

/// Compares a cell: numbers to a relative 1e-9, text exactly, NULL as the empty field.
fn same(ours: &str, theirs: &serde_json::Value) -> bool {
    match theirs {
        serde_json::Value::Null => ours.is_empty(),
        serde_json::Value::Number(n) => ours.parse::<f64>().is_ok_and(|x| {
            let y = n.as_f64().unwrap();
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }),
        serde_json::Value::String(s) => ours == s,
        serde_json::Value::Bool(b) => ours == b.to_string(),
        other => panic!("unexpected reference value {other}"),
    }
}

/// Asserts that ticklake's rows for query `i` (`sql`) are `engine`'s: the same rows, numbers to a
/// relative 1e-9 (see [`same`]); the other engine must have found rows.
fn assert_same_answers(
    engine: &str,
    i: usize,
    sql: &str,
    ours: &[Vec<String>],
    theirs: &serde_json::Value,
) {
    let expected = theirs.as_array().unwrap();
    assert!(!expected.is_empty(), "query {i} has rows in {engine}");
    assert_eq!(
        ours.len(),
        expected.len(),
        "query {i}: row count in {engine}\n{sql}"
    );
    for (r, (a, b)) in ours.iter().zip(expected).enumerate() {
        let b = b.as_array().unwrap();
        assert_eq!(a.len(), b.len(), "query {i} row {r}: columns");
        for (c, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                same(x, y),
                "query {i} row {r} column {c}: ticklake {x:?}, {engine} {y}\n{sql}"
            );
        }
    }
}

/// Pairs of (ticklake SQL over `stock_topic`, DuckDB SQL over the view `t`) that must agree.
const PAIRS: &[(&str, &str)] = &[
    (
        "SELECT symbol, count(*) AS n FROM stock_topic GROUP BY symbol ORDER BY symbol",
        "SELECT symbol, count(*) AS n FROM t GROUP BY symbol ORDER BY symbol",
    ),
    (
        "SELECT date, symbol, min(low), max(high), sum(volume), avg(close) FROM stock_topic GROUP BY date, symbol ORDER BY date, symbol",
        "SELECT date, symbol, min(low), max(high), sum(volume), avg(close) FROM t GROUP BY date, symbol ORDER BY date, symbol",
    ),
    (
        "SELECT symbol, vwap(close, volume) FROM stock_topic GROUP BY symbol ORDER BY symbol",
        "SELECT symbol, sum(close * volume) / sum(volume) FROM t GROUP BY symbol ORDER BY symbol",
    ),
    (
        "SELECT symbol, CAST(extract(epoch FROM bar) AS BIGINT), open, high, low, close, volume, rows FROM ohlcv('stock_topic', '15 minutes') ORDER BY symbol, bar",
        "SELECT symbol, CAST(epoch(time_bucket(INTERVAL '15 minutes', ts)) AS BIGINT) AS bar, arg_min(open, ts), max(high), min(low), arg_max(close, ts), sum(volume), count(*) FROM t GROUP BY 1, 2 ORDER BY 1, 2",
    ),
    (
        "SELECT symbol, CAST(extract(epoch FROM bar) AS BIGINT), open, close, vwap FROM ohlcv('stock_topic', '1 day') ORDER BY symbol, bar",
        "SELECT symbol, CAST(epoch(date_trunc('day', ts)) AS BIGINT) AS bar, arg_min(open, ts), arg_max(close, ts), sum(close * volume) / sum(volume) FROM t GROUP BY 1, 2 ORDER BY 1, 2",
    ),
    (
        "SELECT symbol, CAST(extract(epoch FROM ts) AS BIGINT) AS s, avg(close) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 19 PRECEDING AND CURRENT ROW) AS ma FROM stock_topic WHERE date = (SELECT max(date) FROM stock_topic) ORDER BY symbol, ts",
        "SELECT symbol, CAST(epoch(ts) AS BIGINT) AS s, avg(close) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 19 PRECEDING AND CURRENT ROW) AS ma FROM t WHERE date = (SELECT max(date) FROM t) ORDER BY symbol, ts",
    ),
    (
        "WITH r AS (SELECT symbol, close / lag(close) OVER (PARTITION BY symbol ORDER BY ts) - 1 AS ret FROM stock_topic) SELECT symbol, max(ret), min(ret), stddev_samp(ret) FROM r GROUP BY symbol ORDER BY symbol",
        "WITH r AS (SELECT symbol, close / lag(close) OVER (PARTITION BY symbol ORDER BY ts) - 1 AS ret FROM t) SELECT symbol, max(ret), min(ret), stddev_samp(ret) FROM r GROUP BY symbol ORDER BY symbol",
    ),
    (
        "WITH d AS (SELECT date, symbol, max(close) AS hi FROM stock_topic GROUP BY date, symbol), m AS (SELECT date, avg(hi) AS avg_hi FROM d GROUP BY date) SELECT d.date, d.symbol, d.hi - m.avg_hi FROM d JOIN m ON d.date = m.date ORDER BY d.date, d.symbol",
        "WITH d AS (SELECT date, symbol, max(close) AS hi FROM t GROUP BY date, symbol), m AS (SELECT date, avg(hi) AS avg_hi FROM d GROUP BY date) SELECT d.date, d.symbol, d.hi - m.avg_hi FROM d JOIN m ON d.date = m.date ORDER BY d.date, d.symbol",
    ),
    (
        "SELECT symbol, CAST(extract(epoch FROM ts) AS BIGINT), volume FROM (SELECT symbol, ts, volume, row_number() OVER (PARTITION BY symbol ORDER BY volume DESC, ts) AS rn FROM stock_topic) WHERE rn <= 3 ORDER BY symbol, rn",
        "SELECT symbol, CAST(epoch(ts) AS BIGINT), volume FROM (SELECT symbol, ts, volume, row_number() OVER (PARTITION BY symbol ORDER BY volume DESC, ts) AS rn FROM t) WHERE rn <= 3 ORDER BY symbol, rn",
    ),
    (
        "SELECT count(*), sum(volume), min(close) FROM stock_topic WHERE date = (SELECT min(date) FROM stock_topic) AND symbol IN (SELECT min(symbol) FROM stock_topic)",
        "SELECT count(*), sum(volume), min(close) FROM t WHERE date = (SELECT min(date) FROM t) AND symbol IN (SELECT min(symbol) FROM t)",
    ),
    (
        "SELECT symbol, count(DISTINCT date) AS days, first_value(close ORDER BY ts DESC) AS last_close FROM stock_topic GROUP BY symbol HAVING count(*) > 100 ORDER BY symbol",
        "SELECT symbol, count(DISTINCT date) AS days, arg_max(close, ts) AS last_close FROM t GROUP BY symbol HAVING count(*) > 100 ORDER BY symbol",
    ),
    (
        "SELECT date, count(*), CAST(extract(epoch FROM min(ts)) AS BIGINT), CAST(extract(epoch FROM max(ts)) AS BIGINT) FROM stock_topic GROUP BY date ORDER BY date",
        "SELECT date, count(*), CAST(epoch(min(ts)) AS BIGINT), CAST(epoch(max(ts)) AS BIGINT) FROM t GROUP BY date ORDER BY date",
    ),
    // Distinct counts grouped by partition columns keep a set per group (no rewrite into a group by
    // the counted column), a run of files at a time; grouped by anything else they are rewritten.
    (
        "SELECT date, count(DISTINCT close) FROM stock_topic GROUP BY date ORDER BY date",
        "SELECT date, count(DISTINCT close) FROM t GROUP BY date ORDER BY date",
    ),
    (
        "SELECT symbol, date, count(DISTINCT close), max(high), sum(volume) FROM stock_topic WHERE close > 100 GROUP BY symbol, date ORDER BY symbol, date",
        "SELECT symbol, date, count(DISTINCT close), max(high), sum(volume) FROM t WHERE close > 100 GROUP BY symbol, date ORDER BY symbol, date",
    ),
    (
        "SELECT symbol, count(DISTINCT date), count(DISTINCT close), count(*) FROM stock_topic GROUP BY symbol ORDER BY symbol",
        "SELECT symbol, count(DISTINCT date), count(DISTINCT close), count(*) FROM t GROUP BY symbol ORDER BY symbol",
    ),
    (
        "SELECT floor(close / 10) AS b, count(DISTINCT symbol) FROM stock_topic GROUP BY 1 ORDER BY 1",
        "SELECT floor(close / 10) AS b, count(DISTINCT symbol) FROM t GROUP BY 1 ORDER BY 1",
    ),
];

/// Asserts that every pair's ticklake answer on `env`'s lake is DuckDB's on the same files.
fn assert_pairs_match_duckdb(env: &Env, pairs: &[(&str, &str)]) {
    let lake = env.dir.path().join("lake");
    let glob = format!("{}/stock_topic/*/*/*.parquet", path_str(&lake));
    let theirs = reference(
        &["duckdb", &glob],
        &serde_json::to_string(&pairs.iter().map(|p| p.1).collect::<Vec<_>>()).unwrap(),
        &[],
    );
    for (i, (ours_sql, _)) in pairs.iter().enumerate() {
        let ours = query_rows(env, ours_sql);
        assert_same_answers("DuckDB", i, ours_sql, &ours, &theirs[i]);
    }
}

#[test]
fn answers_match_duckdb_on_the_same_files() {
    let env = simulated_lake(120_000);
    assert_pairs_match_duckdb(&env, PAIRS);
    // A distinct count grouped by a partition column is not rewritten into a group by the counted
    // column (`alias1`): each date keeps a set of its closes, filled a run of files at a time.
    let explain = |sql: &str| {
        env.ok(&["query", "--format", "csv", &format!("EXPLAIN {sql}")])
            .0
    };
    let plan = explain("SELECT date, count(DISTINCT close) FROM stock_topic GROUP BY date");
    assert!(plan.contains("RunAggregateExec: gby=[date]"), "{plan}");
    assert!(!plan.contains("alias1"), "{plan}");
    let plan =
        explain("SELECT floor(close) AS b, count(DISTINCT symbol) FROM stock_topic GROUP BY 1");
    assert!(plan.contains("alias1"), "{plan}");
}

/// `files(table)` lists the files a query of the table reads. After compactions (merged folders, late
/// files copied into them, the sink's own files deleted) DuckDB reading that list answers as ticklake
/// does; a glob over the sink's folders would find none of the rows at the end.
#[test]
fn duckdb_reads_a_compacted_table_through_its_file_list() {
    let env = Env::embedded();
    produce_six_symbols(&env, 20_000, "2024-01-02T14:30:00Z");
    env.ok(&["sink", "--once", "-q", "--flush-records", "4000"]);
    env.ok(&["compact", "--older-than", "0s", "--retention", "0s"]);
    // The same records again, late: the sink copies its new files into the merged folders.
    produce_six_symbols(&env, 20_000, "2024-01-02T14:30:00Z");
    env.ok(&["sink", "--once", "-q"]);
    let pairs: &[(&str, &str)] = &[
        (
            "SELECT count(*), sum(volume), min(low), max(high) FROM stock_topic",
            "SELECT count(*), sum(volume), min(low), max(high) FROM t",
        ),
        (
            "SELECT date, symbol, count(*), sum(close) FROM stock_topic GROUP BY 1, 2 ORDER BY 1, 2",
            "SELECT date, symbol, count(*), sum(close) FROM t GROUP BY 1, 2 ORDER BY 1, 2",
        ),
    ];
    let list = env.dir.path().join("files.txt");
    let check = |stage: &str| {
        let files: Vec<String> = query_rows(
            &env,
            "SELECT file, bytes FROM files('stock_topic') ORDER BY file",
        )
        .into_iter()
        .map(|row| {
            let size = std::fs::metadata(&row[0])
                .unwrap_or_else(|e| panic!("{stage}: {}: {e}", row[0]))
                .len();
            assert_eq!(row[1], size.to_string(), "{stage}: {}", row[0]);
            row[0].clone()
        })
        .collect();
        std::fs::write(&list, files.join("\n")).unwrap();
        let theirs = reference(
            &["duckdb", path_str(&list)],
            &serde_json::to_string(&pairs.iter().map(|p| p.1).collect::<Vec<_>>()).unwrap(),
            &[],
        );
        for (i, (ours_sql, _)) in pairs.iter().enumerate() {
            let ours = query_rows(&env, ours_sql);
            assert_same_answers("DuckDB", i, ours_sql, &ours, &theirs[i]);
        }
        files
    };
    let files = check("late files copied");
    assert!(files.iter().any(|f| f.contains("/stock_topic/_compacted/")));
    assert_eq!(
        query_rows(&env, "SELECT count(*) FROM stock_topic"),
        [["40000"]]
    );
    env.ok(&["compact", "--older-than", "0s", "--retention", "0s"]);
    env.ok(&["compact", "--older-than", "0s", "--retention", "0s"]);
    let files = check("compacted again, the sink's files deleted");
    assert!(
        files.iter().all(|f| f.contains("/stock_topic/_compacted/")),
        "{files:?}"
    );

    // Filters on partition keys list only those partitions.
    let rows = query_rows(
        &env,
        "SELECT DISTINCT date FROM files('stock_topic') WHERE date = '2024-01-03'",
    );
    assert_eq!(rows, [["2024-01-03"]]);
    for (sql, says) in [
        ("SELECT * FROM files()", "takes one argument"),
        ("SELECT * FROM files(1)", "takes one argument"),
        ("SELECT * FROM files('nope')", "no table \"nope\""),
    ] {
        let out = env.run(&["query", sql]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{sql}");
        assert!(stderr.contains(says), "{sql}: {stderr}");
    }
}

/// Window queries by symbol and time, for [`windows_use_the_files_order_and_stay_right_when_files_overlap`].
const WINDOW_PAIRS: &[(&str, &str)] = &[
    (
        "SELECT symbol, count(r), max(r), min(r), stddev_samp(r) FROM (SELECT symbol, close / lag(close) OVER (PARTITION BY symbol ORDER BY ts) - 1 AS r FROM stock_topic) GROUP BY symbol ORDER BY symbol",
        "SELECT symbol, count(r), max(r), min(r), stddev_samp(r) FROM (SELECT symbol, close / lag(close) OVER (PARTITION BY symbol ORDER BY ts) - 1 AS r FROM t) GROUP BY symbol ORDER BY symbol",
    ),
    (
        "SELECT symbol, date, stddev_samp(r) FROM (SELECT symbol, date, ln(close / lag(close) OVER (PARTITION BY symbol, date ORDER BY ts)) AS r FROM stock_topic) GROUP BY symbol, date ORDER BY symbol, date",
        "SELECT symbol, date, stddev_samp(r) FROM (SELECT symbol, date, ln(close / lag(close) OVER (PARTITION BY symbol, date ORDER BY ts)) AS r FROM t) GROUP BY symbol, date ORDER BY symbol, date",
    ),
    (
        "SELECT symbol, CAST(extract(epoch FROM ts) AS BIGINT), close FROM (SELECT symbol, ts, close, row_number() OVER (PARTITION BY symbol ORDER BY ts DESC) AS rn FROM stock_topic) WHERE rn = 1 ORDER BY symbol",
        "SELECT symbol, CAST(epoch(ts) AS BIGINT), close FROM (SELECT symbol, ts, close, row_number() OVER (PARTITION BY symbol ORDER BY ts DESC) AS rn FROM t) WHERE rn = 1 ORDER BY symbol",
    ),
    // A window joined with the table again: its scans are hashed as usual.
    (
        "SELECT a.symbol, count(*), sum(a.r) FROM (SELECT symbol, close / lag(close) OVER (PARTITION BY symbol ORDER BY ts) AS r FROM stock_topic) a JOIN (SELECT DISTINCT symbol FROM stock_topic) b ON a.symbol = b.symbol GROUP BY a.symbol ORDER BY 1",
        "SELECT a.symbol, count(*), sum(a.r) FROM (SELECT symbol, close / lag(close) OVER (PARTITION BY symbol ORDER BY ts) AS r FROM t) a JOIN (SELECT DISTINCT symbol FROM t) b ON a.symbol = b.symbol GROUP BY a.symbol ORDER BY 1",
    ),
    // A window by date over a scan kept by symbol.
    (
        "SELECT date, count(*), max(rn) FROM (SELECT date, symbol, row_number() OVER (PARTITION BY date ORDER BY ts, symbol) AS rn FROM stock_topic) GROUP BY date ORDER BY date",
        "SELECT date, count(*), max(rn) FROM (SELECT date, symbol, row_number() OVER (PARTITION BY date ORDER BY ts, symbol) AS rn FROM t) GROUP BY date ORDER BY date",
    ),
    // A window by symbol and date, reading both partition columns.
    (
        "SELECT symbol, date, count(*), max(rn) FROM (SELECT symbol, date, row_number() OVER (PARTITION BY symbol, date ORDER BY ts) AS rn FROM stock_topic) GROUP BY symbol, date ORDER BY 1, 2",
        "SELECT symbol, date, count(*), max(rn) FROM (SELECT symbol, date, row_number() OVER (PARTITION BY symbol, date ORDER BY ts) AS rn FROM t) GROUP BY symbol, date ORDER BY 1, 2",
    ),
];

/// A window that sorts more rows than the memory limit holds spills and answers, again and again. With
/// DataFusion's default greedy pool it failed at random ("Resources exhausted" for the sort's merge: one
/// partition's sorter kept what the other needed; 2 of 3 runs at this size and limit, and a 100 M-row lake
/// under the default 4 GiB). The window is `rank()`, which sorts every row; the same query with
/// `row_number()` keeps one row per symbol instead (`PartitionedTopKExec`), and answers too.
#[test]
fn a_window_sort_spills_within_a_small_memory_limit() {
    let env = Env::embedded();
    env.ok(&[
        "produce",
        "--simulate",
        "--symbols",
        "10",
        "--count",
        "2000000",
        "-q",
    ]);
    env.ok(&["sink", "--once", "-q"]);
    // 20 MiB per engine partition (one per core), 40 MiB on the standard two cores: a third of the
    // rows' size in memory.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let limit = format!("{}MiB", 20 * cores.max(2));
    let latest = &WINDOW_PAIRS[2];
    let ranked = latest.0.replace("row_number()", "rank()");
    let lake = env.dir.path().join("lake");
    let glob = format!("{}/stock_topic/*/*/*.parquet", path_str(&lake));
    let theirs = reference(
        &["duckdb", &glob],
        &serde_json::to_string(&[latest.1]).unwrap(),
        &[],
    );
    let (plan, _) = env.ok(&["query", "--format", "csv", &format!("EXPLAIN {ranked}")]);
    assert!(plan.contains("SortExec"), "rank() sorts every row:\n{plan}");
    for (run, sql) in [ranked.as_str(), &ranked, &ranked, latest.0]
        .into_iter()
        .enumerate()
    {
        let (stdout, _) = env.ok(&["query", "--memory-limit", &limit, "--format", "csv", sql]);
        let ours = csv_rows(&stdout);
        assert_eq!(ours.len(), 10, "run {run}: {stdout}");
        assert_same_answers("DuckDB", 0, sql, &ours, &theirs[0]);
    }
}

#[test]
fn windows_use_the_files_order_and_stay_right_when_files_overlap() {
    let env = simulated_lake(30_000);
    // The sink's files record their order (symbol, ts) in the Parquet footer, and the engine uses it:
    // a window by symbol over time merges ordered streams and sorts nothing.
    let window = "EXPLAIN SELECT symbol, max(r) FROM (SELECT symbol, close / lag(close) OVER (PARTITION BY symbol ORDER BY ts) - 1 AS r FROM stock_topic) GROUP BY symbol";
    let (plan, _) = env.ok(&["query", "--format", "csv", window]);
    assert!(plan.contains("BoundedWindowAggExec"), "{plan}");
    assert!(
        !plan.contains("SortExec"),
        "no sort for an ordered lake:\n{plan}"
    );
    // Each symbol's files stay in one partition of the scan, which says so (hash-partitioned by
    // symbol), so nothing is repartitioned by symbol before the window.
    assert!(!plan.contains("RepartitionExec"), "{plan}");
    // The latest row per symbol is a newest-first window: the files' order does not serve it, and
    // the top row of each symbol is kept as the files stream by instead of sorting them all.
    let (plan, _) = env.ok(&[
        "query",
        "--format",
        "csv",
        &format!("EXPLAIN {}", WINDOW_PAIRS[2].0),
    ]);
    assert!(plan.contains("PartitionedTopKExec: k=1"), "{plan}");
    assert!(!plan.contains("SortExec"), "{plan}");
    assert_pairs_match_duckdb(&env, WINDOW_PAIRS);

    // The same symbols again over the same days, starting `start`: every partition gets one more file
    // whose times interleave with the others', so files may only follow each other where their
    // statistics prove it.
    let feed = |start: &str| {
        produce_six_symbols(&env, 30_000, start);
        env.ok(&["sink", "--once", "-q"]);
    };
    // Two interleaved feeds still fit two ordered groups of files (one per feed)...
    feed("2024-01-02T14:30:15Z");
    let count = query_rows(&env, "SELECT count(*) FROM stock_topic");
    assert_eq!(count, [["60000"]]);
    // The count is the sum of the footers' row counts: no file is read for it.
    let (plan, _) = env.ok(&[
        "query",
        "--format",
        "csv",
        "EXPLAIN SELECT count(*) FROM stock_topic",
    ]);
    assert!(!plan.contains("DataSourceExec"), "{plan}");
    assert_pairs_match_duckdb(&env, WINDOW_PAIRS);
    // ...a third needs more groups than a small machine's engine has partitions: the order is then
    // not declared and the window sorts.
    feed("2024-01-02T14:30:07Z");
    assert_pairs_match_duckdb(&env, WINDOW_PAIRS);
}

#[test]
fn sink_registers_partitions_and_filters_prune_them() {
    let env = simulated_lake(24_000);
    // Queryable with no crawl: the sink registered the table and its partitions.
    let (tables, _) = env.ok(&["query", "--format", "csv", "SHOW TABLES"]);
    assert_eq!(tables, "tab_name\nstock_topic\n");
    let (desc, _) = env.ok(&["query", "--format", "csv", "DESCRIBE stock_topic"]);
    assert!(
        desc.starts_with("col_name,data_type,comment\nts,timestamp,\nopen,double,"),
        "{desc}"
    );
    assert!(
        desc.ends_with("date,string,partition key\nsymbol,string,partition key\n"),
        "{desc}"
    );
    let parts = query_rows(&env, "SHOW PARTITIONS stock_topic");
    let folders = env.lake_files("stock_topic");
    let mut expected: Vec<String> = folders
        .iter()
        .map(|f| f.split('/').skip(1).take(2).collect::<Vec<_>>().join("/"))
        .collect();
    expected.dedup();
    let got: Vec<String> = parts.into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(got, expected);
    assert!(got.len() > 6, "several dates and symbols: {got:?}");

    // A filter on both keys reads exactly one partition's files.
    let (date, symbol) = {
        let first = &got[0];
        let (d, s) = first.split_once('/').unwrap();
        (
            d.trim_start_matches("date=").to_owned(),
            s.trim_start_matches("symbol=").to_owned(),
        )
    };
    let sql = format!(
        "EXPLAIN SELECT sum(volume) FROM stock_topic WHERE date = '{date}' AND symbol = '{symbol}'"
    );
    let (plan, _) = env.ok(&["query", "--format", "csv", &sql]);
    assert!(
        plan.contains(&format!("date={date}/symbol={symbol}/")),
        "{plan}"
    );
    let other_files = folders
        .iter()
        .filter(|f| !f.contains(&format!("date={date}/symbol={symbol}/")))
        .count();
    assert!(other_files > 0);
    assert_eq!(
        plan.matches(".parquet").count(),
        folders.len() - other_files,
        "only the matching partition's files are in the plan:\n{plan}"
    );
    // And the count agrees with the files' contents.
    let n = query_rows(
        &env,
        &format!("SELECT count(*) FROM stock_topic WHERE date = '{date}' AND symbol = '{symbol}'"),
    );
    let in_files = env
        .lake_records()
        .iter()
        .filter(|(folder, _)| folder.ends_with(&format!("date={date}/symbol={symbol}")))
        .count();
    assert_eq!(n[0][0], in_files.to_string());

    // New data becomes queryable after the next sink run, still without a crawl.
    let before: u64 = query_rows(&env, "SELECT count(*) FROM stock_topic")[0][0]
        .parse()
        .unwrap();
    env.ok(&[
        "produce",
        "--simulate",
        "--count",
        "600",
        "--symbols",
        "2",
        "--seed",
        "7",
        "--start",
        "2025-06-01",
        "-q",
    ]);
    env.ok(&["sink", "--once", "-q"]);
    let after: u64 = query_rows(&env, "SELECT count(*) FROM stock_topic")[0][0]
        .parse()
        .unwrap();
    assert_eq!(after, before + 600);
    let new_days = query_rows(
        &env,
        "SELECT count(*) FROM stock_topic WHERE date >= '2025-06-01'",
    );
    assert_eq!(new_days[0][0], "600");
}

#[test]
fn writes_are_refused_and_bad_sql_is_located() {
    let env = simulated_lake(2_000);
    for sql in [
        "DROP TABLE stock_topic",
        "INSERT INTO stock_topic (symbol) VALUES ('X')",
        "CREATE TABLE x AS SELECT 1",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/tmp/x.csv'",
        "COPY (SELECT 1) TO 'x.csv'",
        "DELETE FROM stock_topic",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let out = env.run(&["query", sql]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{sql} must fail");
        assert!(stderr.contains("read-only"), "{sql}: {stderr}");
    }
    assert!(!env.dir.path().join("x.csv").exists());

    let out = env.run(&[
        "query",
        "SELECT symbol,\n  count(*) FROM stock_topic GROUP BY",
    ]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("at line 2, column"), "{stderr}");

    let out = env.run(&["query", "SELECT no_such_column FROM stock_topic"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("no_such_column"), "{stderr}");
    assert!(stderr.contains("at line 1, column 8"), "{stderr}");

    let out = env.run(&["query", "SELECT * FROM no_such_table"]);
    let (_, stderr) = text(&out);
    assert!(stderr.contains("no_such_table"), "{stderr}");

    let out = env.run(&["query", "SHOW PARTITIONS nope"]);
    let (_, stderr) = text(&out);
    assert!(stderr.contains("\"nope\" does not exist"), "{stderr}");

    let out = env.run(&["query", "SELECT * FROM ohlcv('stock_topic', 'fortnightly')"]);
    let (_, stderr) = text(&out);
    assert!(stderr.contains("fortnightly"), "{stderr}");
}

#[test]
fn bad_queries_end_with_a_clear_error() {
    let env = simulated_lake(100);
    // A statement that would run for hours stops at its time limit.
    let started = std::time::Instant::now();
    let out = env.run(&[
        "query",
        "--timeout",
        "2s",
        "SELECT count(*) FROM generate_series(1, 1000000000000)",
    ]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("time limit (2s)"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // So does one whose joins emit 10^10 rows from the 500 rows they read, without reading more.
    let started = std::time::Instant::now();
    let out = env.run(&[
        "query",
        "--timeout",
        "2s",
        "SELECT sum(a.close * b.close * c.close * d.close * e.close) \
         FROM stock_topic a, stock_topic b, stock_topic c, stock_topic d, stock_topic e",
    ]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("time limit (2s)"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // A query that needs more memory than allowed fails and says so.
    let out = env.run(&[
        "query",
        "--memory-limit",
        "1MiB",
        "SELECT x, count(*) FROM generate_series(1, 5000000) t(x) GROUP BY x ORDER BY 2 DESC, 1 LIMIT 1",
    ]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    // It names the option to raise, not DataFusion's settings, which ticklake's users do not set.
    assert!(
        stderr.contains("needs more memory than its limit (1 MiB) allows; raise --memory-limit"),
        "{stderr}"
    );
    assert!(stderr.contains("Resources exhausted"), "{stderr}");
    assert!(!stderr.contains("datafusion.runtime"), "{stderr}");
    // `;` in comments and quotes does not end a statement.
    let rows = query_rows(&env, "select 1 /* ; */ + 1 as two; -- ; \n");
    assert_eq!(rows, [["2"]]);
    let out = env.run(&["query", "select 1;\nselect 'open"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("at line 2"), "{stderr}");
}

#[test]
fn output_formats_and_files() {
    let env = simulated_lake(3_000);
    let sql = "SELECT symbol, count(*) AS n FROM stock_topic GROUP BY symbol ORDER BY symbol";
    let (table, _) = env.ok(&["query", sql]);
    assert!(table.contains("| symbol | n "), "{table}");
    assert!(table.trim_end().ends_with("(6 rows)"), "{table}");
    let rows = query_rows(&env, sql);
    assert_eq!(rows.len(), 6);
    let total: u64 = rows.iter().map(|r| r[1].parse::<u64>().unwrap()).sum();
    assert_eq!(total, 3_000);

    let (json, _) = env.ok(&["query", "--format", "json", sql]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0]["symbol"], rows[0][0].as_str());
    assert_eq!(lines[0]["n"].as_u64().unwrap().to_string(), rows[0][1]);

    let out_file = env.dir.path().join("result.parquet");
    env.ok(&[
        "query",
        "--format",
        "parquet",
        "--output",
        path_str(&out_file),
        sql,
    ]);
    let bytes = bytes::Bytes::from(std::fs::read(&out_file).unwrap());
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 6);

    let csv_file = env.dir.path().join("result.csv");
    env.ok(&[
        "query",
        "--format",
        "csv",
        "-o",
        path_str(&csv_file),
        "SELECT 1 AS a; SELECT 2 AS b",
    ]);
    assert_eq!(std::fs::read_to_string(&csv_file).unwrap(), "a\n1\nb\n2\n");
}

#[test]
fn the_shell_runs_statements_over_lines_and_keeps_history() {
    let env = simulated_lake(1_000);
    let history = env.dir.path().join("history");
    let out = common::run_with_input(
        env.command(&["sql", "--history", path_str(&history)]),
        b"SHOW TABLES;\n\\format csv\nSELECT count(*)\n  AS n FROM stock_topic;\nSELECT nope;\nSELECT 41 + 1 AS answer;\n",
    );
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "a failed statement fails a piped script"
    );
    assert!(stdout.contains("stock_topic"), "{stdout}");
    assert!(stdout.contains("n\n1000\n"), "{stdout}");
    assert!(stdout.contains("answer\n42\n"), "{stdout}");
    assert!(stderr.contains("nope"), "{stderr}");
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.contains("SELECT 41 + 1 AS answer;"), "{saved}");
}

/// A running shell keeps each file's statistics between statements and across a refresh of the
/// catalog (`count(*)` is answered from them), and reads a file again once it changed: here one file
/// is overwritten in place by another.
#[test]
fn a_running_shell_reads_a_file_again_once_it_changed() {
    use std::io::{BufRead, BufReader, Write};
    let env = simulated_lake(1_000);
    let history = env.dir.path().join("history");
    let lake = env.dir.path().join("lake");
    let mut files: Vec<_> = env
        .lake_files("stock_topic")
        .iter()
        .filter(|f| f.ends_with(".parquet"))
        .map(|f| lake.join(f))
        .collect();
    files.sort_by_key(|f| std::fs::metadata(f).unwrap().len());
    let (smallest, largest) = (files[0].clone(), files[files.len() - 1].clone());
    let mut shell = env
        .command(&["sql", "--format", "csv", "--history", path_str(&history)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = shell.stdin.take().unwrap();
    let mut output = BufReader::new(shell.stdout.take().unwrap());
    // Sends `before` (shell commands), then the count, and reads the count's answer.
    let mut count = |before: &[u8]| {
        input.write_all(before).unwrap();
        input
            .write_all(b"SELECT count(*) AS n FROM stock_topic;\n")
            .unwrap();
        input.flush().unwrap();
        let mut line = String::new();
        while line.trim() != "n" {
            line.clear();
            assert!(
                output.read_line(&mut line).unwrap() > 0,
                "the shell stopped"
            );
        }
        line.clear();
        output.read_line(&mut line).unwrap();
        line.trim().parse::<u64>().unwrap()
    };
    assert_eq!(count(b""), 1_000);
    assert_eq!(
        count(b""),
        1_000,
        "the second time, from the kept statistics"
    );
    // A refresh re-reads the catalog; the table, unchanged, keeps its files' statistics.
    assert_eq!(count(b"\\refresh\n"), 1_000);
    std::fs::copy(&smallest, &largest).unwrap();
    let now = count(b"");
    let fresh = query_rows(&env, "SELECT count(*) FROM stock_topic")[0][0].clone();
    assert_ne!(
        fresh, "1000",
        "the two files hold different numbers of rows"
    );
    assert_eq!(
        now.to_string(),
        fresh,
        "the running shell sees the file as a new process does"
    );
    drop(input);
    let out = shell.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn demo_prints_answers_computed_from_the_sample() {
    let env = Env::embedded();
    let out = env.command(&["demo"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");

    // The same answers, computed here from the CSV without ticklake.
    let mut rows = common::seed_csv_records(&common::shared_data("indexProcessed-HSI.csv"));
    rows.sort_by_key(|r| r.ts);
    let day = |ts: i64| ticklake_model::time::format_rfc3339(ts)[..10].to_owned();
    let shown = |x: f64| ((x * 100.0).round() / 100.0).to_string();
    // The last year's high.
    let last_year = &day(rows.last().unwrap().ts)[..4];
    let high = rows
        .iter()
        .filter(|r| day(r.ts).starts_with(last_year))
        .map(|r| r.high.unwrap())
        .fold(f64::MIN, f64::max);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("| HSI    | {last_year} |")))
        .unwrap_or_else(|| panic!("no {last_year} bar in\n{stdout}"));
    assert!(
        line.contains(&format!(" {high} ")),
        "{line} has high {high}"
    );
    // The best day.
    let (best_day, best) = rows
        .windows(2)
        .map(|w| {
            (
                day(w[1].ts),
                100.0 * (w[1].close.unwrap() / w[0].close.unwrap() - 1.0),
            )
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    assert!(
        stdout.contains(&format!("| best  | {best_day} |")) && stdout.contains(&shown(best)),
        "best day {best_day} {best:.2} in\n{stdout}"
    );
    // The 20-day moving average of the last day.
    let last20: f64 = rows[rows.len() - 20..]
        .iter()
        .map(|r| r.close.unwrap())
        .sum::<f64>()
        / 20.0;
    let last_day = day(rows.last().unwrap().ts);
    let ma_line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("| {last_day} |")))
        .unwrap();
    assert!(
        ma_line.contains(&format!(" {} ", shown(last20))),
        "{ma_line}"
    );
    assert!(stdout.contains("ticklake sql"), "it tells how to go on");

    // A second run reuses the lake and gives the same answers.
    let again = env.command(&["demo"]).output().unwrap();
    let (stdout2, _) = text(&again);
    assert!(again.status.success());
    assert!(stdout2.contains("already holds the sample"), "{stdout2}");
    let answers = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.starts_with('|'))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(answers(&stdout), answers(&stdout2));
}

/// `ticklake … | head -1`: the reader goes away after one line; the command ends quietly and well,
/// without a panic or an error (as a Unix tool does).
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::BufRead;
    let env = simulated_lake(50_000);
    let table = env.table();
    let all = format!("SELECT * FROM {table}");
    for args in [
        vec!["query", all.as_str()],
        vec!["query", "--format", "csv", all.as_str()],
        vec!["query", "--format", "json", all.as_str()],
        vec!["consume", "--values"],
    ] {
        let mut child = env
            .command(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty(), "{args:?}");
        let out = child.wait_with_output().unwrap();
        let (_, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("error"), "{args:?}: {stderr}");
    }
}

/// Pairs of (ticklake SQL over the Iceberg table `ice`, DuckDB SQL over pyiceberg's reading `t`).
/// The Hive table `stock_topic` of the same records must give ticklake the same answers too.
const ICEBERG_PAIRS: &[(&str, &str)] = &[
    (
        "SELECT symbol, count(*), min(low), max(high), sum(volume), avg(close) FROM ice GROUP BY symbol ORDER BY symbol",
        "SELECT symbol, count(*), min(low), max(high), sum(volume), avg(close) FROM t GROUP BY symbol ORDER BY symbol",
    ),
    (
        "SELECT symbol, vwap(close, volume) FROM ice GROUP BY symbol ORDER BY symbol",
        "SELECT symbol, sum(close * volume) / sum(volume) FROM t GROUP BY symbol ORDER BY symbol",
    ),
    (
        "SELECT symbol, CAST(extract(epoch FROM bar) AS BIGINT), open, high, low, close, volume FROM ohlcv('ice', '1 hour') ORDER BY symbol, bar",
        "SELECT symbol, CAST(epoch(time_bucket(INTERVAL '1 hour', ts)) AS BIGINT) AS bar, arg_min(open, ts), max(high), min(low), arg_max(close, ts), sum(volume) FROM t GROUP BY 1, 2 ORDER BY 1, 2",
    ),
    (
        "SELECT count(*), sum(volume), min(close) FROM ice WHERE symbol = (SELECT min(symbol) FROM ice) AND ts >= '2024-01-04' AND ts < '2024-01-05'",
        "SELECT count(*), sum(volume), min(close) FROM t WHERE symbol = (SELECT min(symbol) FROM t) AND ts >= '2024-01-04' AND ts < '2024-01-05'",
    ),
    (
        "SELECT symbol, CAST(extract(epoch FROM ts) AS BIGINT), close FROM (SELECT symbol, ts, close, row_number() OVER (PARTITION BY symbol ORDER BY ts DESC) AS rn FROM ice) WHERE rn = 1 ORDER BY symbol",
        "SELECT symbol, CAST(epoch(ts) AS BIGINT), close FROM (SELECT symbol, ts, close, row_number() OVER (PARTITION BY symbol ORDER BY ts DESC) AS rn FROM t) WHERE rn = 1 ORDER BY symbol",
    ),
    (
        "WITH r AS (SELECT symbol, close / lag(close) OVER (PARTITION BY symbol ORDER BY ts) - 1 AS ret FROM ice) SELECT symbol, max(ret), min(ret), stddev_samp(ret) FROM r GROUP BY symbol ORDER BY symbol",
        "WITH r AS (SELECT symbol, close / lag(close) OVER (PARTITION BY symbol ORDER BY ts) - 1 AS ret FROM t) SELECT symbol, max(ret), min(ret), stddev_samp(ret) FROM r GROUP BY symbol ORDER BY symbol",
    ),
    (
        "SELECT count(DISTINCT symbol), count(*) FROM ice WHERE close BETWEEN 50 AND 150",
        "SELECT count(DISTINCT symbol), count(*) FROM t WHERE close BETWEEN 50 AND 150",
    ),
];

/// The number of data files a plan reads (`EXPLAIN` lists them).
fn planned_files(env: &Env, sql: &str) -> usize {
    let (stdout, _) = env.ok(&["query", "--format", "csv", &format!("EXPLAIN {sql}")]);
    stdout.matches(".parquet").count()
}

/// An Iceberg table written by the sink in three checkpoints: ticklake's answers equal pyiceberg's
/// (an Iceberg reader nobody here wrote) and those over the Hive table of the same records; filters
/// prune files by the manifests; the Athena statements, the snapshot list and time travel work.
#[test]
fn iceberg_tables_answer_like_pyiceberg_and_travel_in_time() {
    let env = simulated_lake(60_000);
    let out = env.sink_into_iceberg("ice", &["--flush-records", "20000"]);
    assert!(out.contains("Iceberg table ticklake.ice"), "{out}");
    let lake = env.dir.path().join("lake");
    let sql: Vec<&str> = ICEBERG_PAIRS.iter().map(|p| p.1).collect();
    let theirs = reference(
        &["pyiceberg", path_str(&lake), "ice"],
        &serde_json::to_string(&sql).unwrap(),
        &[],
    );
    for (i, (ours_sql, _)) in ICEBERG_PAIRS.iter().enumerate() {
        let ours = query_rows(&env, ours_sql);
        let hive = query_rows(&env, &ours_sql.replace("ice", "stock_topic"));
        assert_eq!(
            ours.len(),
            hive.len(),
            "query {i}: rows of the Hive table\n{ours_sql}"
        );
        for (a, b) in ours.iter().zip(&hive) {
            for (x, y) in a.iter().zip(b) {
                // Sums may add up in another order: numbers are compared to a relative 1e-9.
                let y = y.parse::<f64>().map_or_else(
                    |_| serde_json::Value::String(y.clone()),
                    |n| serde_json::json!(n),
                );
                assert!(
                    same(x, &y),
                    "query {i}: Iceberg {a:?}, Hive {b:?}\n{ours_sql}"
                );
            }
        }
        assert_same_answers("pyiceberg", i, ours_sql, &ours, &theirs["answers"][i]);
    }

    // pyiceberg sees the checkpoints as appends carrying their offset ranges.
    let snapshots = theirs["snapshots"].as_array().unwrap();
    assert!(snapshots.len() >= 2, "{snapshots:?}");
    for s in snapshots {
        assert_eq!(s["summary"]["operation"], "append");
        assert!(s["summary"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("ticklake.kafka.stock-topic.")));
    }

    // Filters on ts prune whole days (partitions), and those on symbol prune by file statistics.
    let all = planned_files(&env, "SELECT count(*) FROM ice");
    let one_day = planned_files(
        &env,
        "SELECT count(*) FROM ice WHERE ts >= '2024-01-04' AND ts < '2024-01-05'",
    );
    assert!(all >= 3, "{all} files");
    assert!(one_day > 0 && one_day < all, "{one_day} of {all} files");

    // Athena's statements.
    let tables = query_rows(&env, "SHOW TABLES");
    assert_eq!(tables, [["ice"], ["stock_topic"]]);
    let columns = query_rows(&env, "DESCRIBE ice");
    assert!(columns.iter().any(|c| c[0] == "symbol" && c[1] == "string"));
    assert!(columns
        .iter()
        .any(|c| c[0] == "ts_day" && c[1] == "day(ts)"));
    let partitions = query_rows(&env, "SHOW PARTITIONS ice");
    assert!(partitions.len() >= 3, "{partitions:?}");
    assert!(partitions
        .iter()
        .all(|p| p[0].starts_with("ts_day=2024-01-")));
    let records: u64 = partitions
        .iter()
        .map(|p| p[2].parse::<u64>().unwrap())
        .sum();
    assert_eq!(records, 60_000);

    // The snapshot list, and time travel by snapshot id and by time.
    let listed = query_rows(
        &env,
        "SELECT snapshot_id, total_records, is_current, kafka_offsets, \
         CAST(committed_at AS VARCHAR) FROM snapshots('ice')",
    );
    // A flush every 20,000 records or so (a poll may bring a few more): growing totals up to all.
    let totals: Vec<u64> = listed.iter().map(|s| s[1].parse().unwrap()).collect();
    assert!(
        totals.len() >= 2 && totals.windows(2).all(|w| w[0] < w[1]),
        "{totals:?}"
    );
    assert_eq!(totals.last(), Some(&60_000));
    assert_eq!(
        listed.len(),
        snapshots.len(),
        "pyiceberg sees the same snapshots"
    );
    assert_eq!(listed.last().unwrap()[2], "true");
    assert!(listed.iter().all(|s| s[3].contains("stock-topic.")));
    for (i, snapshot) in listed.iter().enumerate() {
        let by_id = query_rows(
            &env,
            &format!("SELECT count(*) FROM as_of('ice', {})", snapshot[0]),
        );
        assert_eq!(by_id[0][0], snapshot[1], "snapshot {i} by id");
        let by_time = query_rows(
            &env,
            &format!("SELECT count(*) FROM as_of('ice', '{}')", snapshot[4]),
        );
        assert_eq!(by_time[0][0], snapshot[1], "snapshot {i} by time");
    }
    let before = env.run(&["query", "SELECT count(*) FROM as_of('ice', '2001-01-01')"]);
    assert!(!before.status.success());
    assert!(
        text(&before)
            .1
            .contains("table ice had no snapshot at 2001-01-01"),
        "{:?}",
        text(&before).1
    );
    let unknown = env.run(&["query", "SELECT count(*) FROM as_of('ice', 42)"]);
    assert!(
        text(&unknown).1.contains("has no snapshot 42"),
        "{:?}",
        text(&unknown).1
    );
    let hive = env.run(&["query", "SELECT * FROM snapshots('stock_topic')"]);
    assert!(
        text(&hive).1.contains("no Iceberg table \"stock_topic\""),
        "{:?}",
        text(&hive).1
    );
}

/// A missing or corrupt metadata file is a clear error naming the file, never an empty table, and
/// the lake's other tables still answer.
#[test]
fn a_broken_iceberg_table_is_named_and_the_others_still_answer() {
    let env = simulated_lake(2_000);
    env.sink_into_iceberg("ice", &[]);
    let metadata = env.dir.path().join("lake/ice/metadata");
    let newest = std::fs::read_dir(&metadata)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".metadata.json"))
        .max()
        .unwrap();
    for broken in ["{", ""] {
        if broken.is_empty() {
            std::fs::remove_file(&newest).unwrap();
        } else {
            std::fs::write(&newest, broken).unwrap();
        }
        let (out, err) = env.ok(&[
            "query",
            "--format",
            "csv",
            "SELECT count(*) FROM stock_topic",
        ]);
        assert_eq!(out, "count(*)\n2000\n");
        assert!(
            err.contains("Iceberg table ice (metadata file file://"),
            "{err}"
        );
        assert!(err.contains(&*newest.to_string_lossy()), "{err}");
        let gone = env.run(&["query", "SELECT count(*) FROM ice"]);
        assert!(!gone.status.success());
        let compact = env.run(&["compact", "--table", "ice"]);
        assert!(!compact.status.success());
        assert!(
            text(&compact).1.contains(&*newest.to_string_lossy()),
            "{:?}",
            text(&compact)
        );
    }
}

/// Queries (with `{t}` for the table) that ticklake and Spark both run, over the Iceberg table and the
/// Hive table of the same records.
const SPARK_QUERIES: &[&str] = &[
    "SELECT count(*), sum(volume), min(low), max(high) FROM {t}",
    "SELECT symbol, count(*), min(low), max(high), sum(volume) FROM {t} GROUP BY symbol ORDER BY symbol",
    "SELECT symbol, CAST(CAST(ts AS DATE) AS VARCHAR(10)) AS d, count(*), max(close) FROM {t} GROUP BY symbol, CAST(CAST(ts AS DATE) AS VARCHAR(10)) ORDER BY symbol, d",
    "SELECT count(*), sum(volume) FROM {t} WHERE symbol = (SELECT min(symbol) FROM {t}) AND ts >= TIMESTAMP '2024-01-04 00:00:00' AND ts < TIMESTAMP '2024-01-05 00:00:00'",
    "SELECT symbol, close FROM (SELECT symbol, close, row_number() OVER (PARTITION BY symbol ORDER BY ts DESC) AS rn FROM {t}) x WHERE rn = 1 ORDER BY symbol",
    "SELECT count(DISTINCT symbol), count(*) FROM {t} WHERE close BETWEEN 50 AND 150",
];

/// A JVM engine nobody here wrote, Spark (with Apache Iceberg's Spark runtime, reading the lake's
/// embedded Iceberg catalog through Iceberg's JDBC catalog), reads the Iceberg table and the Hive
/// table's files with ticklake's answers.
#[test]
fn spark_reads_both_table_formats_with_ticklakes_answers() {
    let jars = std::env::var("TICKLAKE_TEST_SPARK_JARS").expect(
        "TICKLAKE_TEST_SPARK_JARS is not set: run scripts/test.sh, which fetches Iceberg's Spark runtime",
    );
    let env = simulated_lake(30_000);
    env.sink_into_iceberg("ice", &["--flush-records", "10000"]);
    let lake = env.dir.path().join("lake");
    let theirs = reference(
        &["spark", path_str(&lake), "ice", "stock_topic", &jars],
        &serde_json::to_string(SPARK_QUERIES).unwrap(),
        &[],
    );
    for (kind, table) in [("iceberg", "ice"), ("hive", "stock_topic")] {
        for (i, sql) in SPARK_QUERIES.iter().enumerate() {
            let ours_sql = sql.replace("{t}", table);
            let ours = query_rows(&env, &ours_sql);
            assert_same_answers(
                &format!("Spark ({kind})"),
                i,
                &ours_sql,
                &ours,
                &theirs[kind][i],
            );
        }
    }
}

/// ticklake's answers to [`ICEBERG_PAIRS`] over the Iceberg table `ice`, checked against the Hive
/// table `stock_topic` of the same records.
fn iceberg_answers_like_hive(env: &Env, catalog: &[&str]) -> Vec<Vec<Vec<String>>> {
    let rows = |sql: &str| {
        let (stdout, _) = env.ok(&[catalog, &["query", "--format", "csv", sql]].concat());
        csv_rows(&stdout)
    };
    let mut all = Vec::new();
    for (i, (sql, _)) in ICEBERG_PAIRS.iter().enumerate() {
        let ours = rows(sql);
        assert!(!ours.is_empty(), "query {i} has rows\n{sql}");
        let hive = rows(&sql.replace("ice", "stock_topic"));
        assert_rows_agree(&format!("query {i}, Iceberg and Hive\n{sql}"), &ours, &hive);
        all.push(ours);
    }
    all
}

/// Asserts that two results of ticklake agree: the same rows, numbers to a relative 1e-9 (sums may
/// add up in another order).
fn assert_rows_agree(what: &str, a: &[Vec<String>], b: &[Vec<String>]) {
    assert_eq!(a.len(), b.len(), "{what}: rows");
    for (ra, rb) in a.iter().zip(b) {
        assert_eq!(ra.len(), rb.len(), "{what}: columns");
        for (x, y) in ra.iter().zip(rb) {
            let y = y.parse::<f64>().map_or_else(
                |_| serde_json::Value::String(y.clone()),
                |n| serde_json::json!(n),
            );
            assert!(same(x, &y), "{what}: {ra:?} and {rb:?}");
        }
    }
}

/// An Iceberg table in a catalog other than the embedded one (`catalog`: the options that select it),
/// read by pyiceberg through the same catalog (`reference_args` of reference.py): the sink's
/// checkpoints, ticklake's answers against the Hive table's and pyiceberg's, a compaction that changes
/// no answer and leaves fewer files, and a second sink that resumes where the table ends.
fn iceberg_catalog_round_trip(env: &Env, catalog: &[&str], reference_args: &[&str]) {
    produce_six_symbols(env, 60_000, "2024-01-02T14:30:00Z");
    env.ok(&[catalog, &["sink", "--once", "-q"]].concat());
    let out = env.sink_into_iceberg("ice", &[catalog, &["--flush-records", "20000"]].concat());
    assert!(out.contains("Iceberg table"), "{out}");

    let tables = {
        let (stdout, _) = env.ok(&[catalog, &["query", "--format", "csv", "SHOW TABLES"]].concat());
        csv_rows(&stdout)
    };
    assert_eq!(tables, [["ice"], ["stock_topic"]]);
    let sql: Vec<&str> = ICEBERG_PAIRS.iter().map(|p| p.1).collect();
    let sql = serde_json::to_string(&sql).unwrap();
    let ours = iceberg_answers_like_hive(env, catalog);
    let theirs = reference(reference_args, &sql, &env.vars);
    for (i, (q, _)) in ICEBERG_PAIRS.iter().enumerate() {
        assert_same_answers("pyiceberg", i, q, &ours[i], &theirs["answers"][i]);
    }
    let snapshots = theirs["snapshots"].as_array().unwrap();
    assert!(snapshots.len() >= 3, "{snapshots:?}");
    assert!(snapshots
        .iter()
        .all(|s| s["summary"]["operation"] == "append"));
    let files_before = theirs["files"].as_u64().unwrap();

    // Compaction: one replace commit through the catalog; the same answers from fewer files.
    let (out, _) = env.ok(&[
        catalog,
        &[
            "compact",
            "--table",
            "ice",
            "--older-than",
            "0s",
            "--retention",
            "0s",
        ],
    ]
    .concat());
    assert!(out.contains("table ice (Iceberg)"), "{out}");
    let compacted = iceberg_answers_like_hive(env, catalog);
    for (i, (q, _)) in ICEBERG_PAIRS.iter().enumerate() {
        assert_rows_agree(
            &format!("query {i} after compaction\n{q}"),
            &compacted[i],
            &ours[i],
        );
    }
    let after = reference(reference_args, &sql, &env.vars);
    for (i, (q, _)) in ICEBERG_PAIRS.iter().enumerate() {
        assert_same_answers("pyiceberg", i, q, &ours[i], &after["answers"][i]);
    }
    let files_after = after["files"].as_u64().unwrap();
    assert!(
        files_after < files_before,
        "{files_before} files before compaction, {files_after} after:\n{out}"
    );
    assert!(after["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["summary"]["operation"] == "replace"));

    // More records: a new sink resumes where the table's snapshots say the topic ends.
    produce_six_symbols(env, 6_000, "2024-02-01T00:00:00Z");
    env.sink_into_iceberg("ice", catalog);
    let (stdout, _) = env.ok(&[
        catalog,
        &[
            "query",
            "--format",
            "csv",
            "SELECT count(*), count(DISTINCT ts) FROM ice",
        ],
    ]
    .concat());
    assert_eq!(csv_rows(&stdout), [["66000", "11000"]]);
}

/// Iceberg tables in AWS Glue (moto) with their files on S3 (moto): registered as Athena reads Iceberg
/// tables, beside a Hive table of the same database, read by pyiceberg's Glue catalog.
#[test]
fn iceberg_tables_in_glue_on_s3_answer_like_pyiceberg_and_compact() {
    let env = Env::embedded().with_s3_lake();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let db = format!("icedb_{nanos}");
    let catalog = ["--catalog", "glue", "--database", db.as_str()];
    iceberg_catalog_round_trip(&env, &catalog, &["pyiceberg-glue", &db, "ice"]);

    let glue = reference(&["glue", &db], "", &env.vars);
    let ice = &glue["ice"];
    assert_eq!(ice["parameters"]["table_type"], "ICEBERG", "{ice}");
    let lake = env.lake.clone().unwrap();
    let metadata = ice["parameters"]["metadata_location"].as_str().unwrap();
    assert!(
        metadata.starts_with(&format!("{lake}/ice/metadata/"))
            && metadata.ends_with(".metadata.json"),
        "{metadata}"
    );
    assert!(ice["parameters"]["previous_metadata_location"].is_string());
    assert_eq!(glue["stock_topic"]["table_type"], "EXTERNAL_TABLE");

    // A local lake cannot be an Iceberg table in Glue: the engines reading Glue could not reach it.
    let local = env.run(&[
        "sink",
        "--once",
        "--table-format",
        "iceberg",
        "--catalog",
        "glue",
        "--lake",
        "local-lake",
    ]);
    assert!(!local.status.success());
    assert!(
        text(&local).1.contains("need an S3 lake"),
        "{}",
        text(&local).1
    );
}

/// Iceberg tables in an Iceberg REST catalog (Apache Iceberg's own REST server), read by pyiceberg's
/// REST catalog.
#[test]
fn iceberg_tables_in_a_rest_catalog_answer_like_pyiceberg_and_compact() {
    let uri = std::env::var("TICKLAKE_TEST_ICEBERG_REST").expect(
        "TICKLAKE_TEST_ICEBERG_REST is not set: run scripts/test.sh, which starts the REST catalog",
    );
    let env = Env::embedded();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let namespace = format!("rest_{nanos}");
    let catalog = [
        "--catalog",
        "rest",
        "--catalog-uri",
        uri.as_str(),
        "--database",
        namespace.as_str(),
    ];
    iceberg_catalog_round_trip(&env, &catalog, &["pyiceberg-rest", &uri, &namespace, "ice"]);

    let missing = env.run(&["query", "--catalog", "rest", "SELECT 1"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing)
            .1
            .contains("--catalog rest needs --catalog-uri"),
        "{}",
        text(&missing).1
    );
}
