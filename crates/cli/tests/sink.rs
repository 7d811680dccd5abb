//! `ticklake sink` end to end: real CSVs through both buses into a local and an S3 lake, hostile symbols,
//! poison messages, SIGKILL crash loops, and a two-sink consumer group with rebalances.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use rand::Rng;
use ticklake_bus::{producer, BusConfig};
use ticklake_feed::sim::{SimOptions, Simulator};
use ticklake_model::Record;

/// Replays both real files, drains with `--once` (with `--partition-by`, or without it: `auto`), and
/// checks the lake holds exactly the accepted rows, each in its folder of `layout`; a second `--once`
/// adds nothing.
fn real_files_into_the_lake(env: &Env, partition_by: &str, layout: &str) {
    let gsptse = shared_data("indexProcessed-GSPTSE-raw.csv");
    let hsi = shared_data("indexProcessed-HSI.csv");
    env.ok(&["-q", "produce", "--source", path_str(&gsptse)]);
    env.ok(&["-q", "produce", "--source", path_str(&hsi)]);
    let sink = ["-q", "sink", "--once", "--partition-by", partition_by];
    let sink = if partition_by == "auto" {
        &sink[..3]
    } else {
        &sink[..]
    };
    let (stdout, stderr) = env.ok(sink);
    assert_eq!(written(&stdout), 10526 + 5693, "{stdout}");
    // Daily bars in date folders: one file per row, which the sink points out (once) with the fix.
    let warned = stderr
        .matches("files of 1.0 records on average into `date,symbol`")
        .count();
    let want = usize::from(layout == "date,symbol");
    assert_eq!(warned, want, "small-files warnings:\n{stderr}");
    if want == 1 {
        assert!(stderr.contains("--partition-by symbol"), "{stderr}");
    }

    let table = env.table();
    let lake = env.lake_records();
    let partitioning: ticklake_sink::Partitioning = layout.parse().unwrap();
    for (folder, r) in &lake {
        let want = format!("{table}/{}", partitioning.path_for(&r.symbol, r.ts));
        assert_eq!(folder, &want, "{r:?} in the wrong folder");
    }
    let got: Vec<Record> = lake.into_iter().map(|(_, r)| r).collect();
    let mut source = seed_csv_records(&gsptse);
    source.extend(seed_csv_records(&hsi));
    assert_eq!(source.len(), 16219);
    assert_eq!(
        multiset(&got),
        multiset(&source),
        "the lake holds exactly the source rows"
    );
    let sum = |rs: &[Record]| rs.iter().map(|r| r.close.unwrap()).sum::<f64>();
    let (a, b) = (sum(&got), sum(&source));
    assert!(
        (a - b).abs() <= 1e-9 * b.abs(),
        "checksum of close: {a} vs {b}"
    );
    // Extra columns travel too.
    assert!(got
        .iter()
        .all(|r| r.extra.iter().any(|(n, _)| &**n == "close_usd")));

    let files = env.lake_files(&table).len();
    let (stdout, _) = env.ok(sink);
    assert_eq!(written(&stdout), 0, "nothing new: {stdout}");
    assert_eq!(env.lake_files(&table).len(), files);
    // The table keeps its layout: the catalog has it, and another one is refused before anything is
    // consumed; without --partition-by a sink takes the table's.
    let (out, _) = env.ok(&[
        "query",
        "--format",
        "csv",
        &format!("SHOW PARTITIONS {table}"),
    ]);
    let first = out.lines().nth(1).unwrap_or_default();
    let keys: Vec<&str> = first
        .split('/')
        .map(|seg| seg.split('=').next().unwrap_or_default())
        .collect();
    assert_eq!(keys.join(","), layout, "SHOW PARTITIONS:\n{out}");
    let other = if layout == "symbol" {
        "date,symbol"
    } else {
        "symbol"
    };
    let refused = env.run(&["sink", "--once", "--partition-by", other]);
    let (_, stderr) = text(&refused);
    assert!(!refused.status.success());
    assert!(
        stderr.contains(&format!(
            "is partitioned by ({layout}), not ({other}); leave --partition-by out"
        )),
        "{stderr}"
    );
    let (stdout, _) = env.ok(&["-q", "sink", "--once"]);
    assert_eq!(written(&stdout), 0, "{stdout}");
}

// Daily bars partitioned by date make one file per row (16,219 files): fine on local disk, but far too
// slow against moto's S3, so the S3 runs partition by symbol (the folder check adapts).

#[test]
fn real_files_embedded_log_to_local_lake() {
    real_files_into_the_lake(&Env::embedded(), "date,symbol", "date,symbol");
}

#[test]
fn real_files_kafka_to_local_lake() {
    real_files_into_the_lake(&Env::kafka(), "date,symbol", "date,symbol");
}

// Without --partition-by, a new table's layout comes from its first flush: daily bars of two indexes
// over decades would be 16,219 date,symbol folders of one row, so the sink picks symbol folders.

#[test]
fn real_files_choose_their_layout() {
    real_files_into_the_lake(&Env::embedded(), "auto", "symbol");
}

#[test]
fn real_files_embedded_log_to_s3_lake() {
    real_files_into_the_lake(&Env::embedded().with_s3_lake(), "auto", "symbol");
}

#[test]
fn real_files_kafka_to_s3_lake() {
    real_files_into_the_lake(&Env::kafka().with_s3_lake(), "symbol", "symbol");
}

fn bus_of(env: &Env) -> BusConfig {
    match &env.brokers {
        Some(b) => BusConfig::Kafka {
            brokers: b.clone(),
            settings: vec![],
        },
        None => BusConfig::Embedded {
            dir: env.dir.path().join("lake/_ticklake/log"),
        },
    }
}

/// A first flush of dead letters only shows nothing of the feed: the new table's layout stays open until
/// records come, and is then chosen from them.
#[test]
fn a_flush_of_dead_letters_only_leaves_the_layout_open() {
    let env = Env::embedded();
    ticklake_bus::ensure_topic(&bus_of(&env), &env.topic, 1, 1).unwrap();
    let mut p = producer(&bus_of(&env), &env.topic).unwrap();
    for m in [&b"not json"[..], br#"{"symbol":"A"}"#] {
        p.send(b"P", m, 0).unwrap();
    }
    p.flush().unwrap();
    drop(p);
    let (stdout, _) = env.ok(&["-q", "sink", "--once"]);
    assert_eq!(written(&stdout), 0, "{stdout}");
    let (tables, _) = env.ok(&["query", "--format", "csv", "SHOW TABLES"]);
    assert!(!tables.contains(&env.table()), "no table yet: {tables}");

    // Then 35 years of daily bars of one index: symbol folders, not one file per row.
    let hsi = shared_data("indexProcessed-HSI.csv");
    env.ok(&["-q", "produce", "--source", path_str(&hsi)]);
    let (stdout, stderr) = env.ok(&["-q", "sink", "--once"]);
    assert_eq!(written(&stdout), 5693, "{stdout}");
    assert!(!stderr.contains("small files"), "{stderr}");
    let files = env.lake_files(&env.table());
    assert!(
        !files.is_empty()
            && files
                .iter()
                .all(|f| f.contains("/symbol=") && !f.contains("date=")),
        "{files:?}"
    );
    let (parts, _) = env.ok(&[
        "query",
        "--format",
        "csv",
        &format!("SHOW PARTITIONS {}", env.table()),
    ]);
    assert_eq!(
        parts.lines().skip(1).collect::<Vec<_>>(),
        ["symbol=HSI"],
        "{parts}"
    );
}

#[test]
fn hostile_symbols_stay_in_the_table_and_poison_goes_to_dead_letters() {
    let env = Env::embedded();
    let csv = env.dir.path().join("hostile.csv");
    let symbols = ["../../x", "A/B", "BRK:B", "=%", "..", "a b"];
    let mut text = String::from("Symbol,Date,Close\n");
    for (i, s) in symbols.iter().enumerate() {
        text.push_str(&format!("\"{s}\",2024-01-0{},{}.5\n", i + 1, i + 1));
    }
    std::fs::write(&csv, text).unwrap();
    env.ok(&[
        "-q",
        "produce",
        "--source",
        path_str(&csv),
        "--partitions",
        "1",
    ]);

    let mut p = producer(&bus_of(&env), &env.topic).unwrap();
    let poison: [&[u8]; 4] = [
        b"not json at all",
        br#"{"symbol":"A"}"#,
        br#"{"symbol":"A","ts":"2024-01-02","open":"abc"}"#,
        br#"[1,2,3]"#,
    ];
    for m in poison {
        p.send(b"P", m, 0).unwrap();
    }
    // A message from the seed's own producer: CSV column names and a float Volume.
    p.send(
        b"HSI",
        br#"{"Index": "HSI", "Date": "1986-12-31", "Open": 2568.300049, "High": 2568.300049, "Low": 2568.300049, "Close": 2568.300049, "Adj Close": 2568.300049, "Volume": 0.0, "CloseUSD": 333.87900637}"#,
        0,
    )
    .unwrap();
    assert_eq!(p.flush().unwrap().acked, 5);
    drop(p);

    let (stdout, _) = env.ok(&["-q", "sink", "--once"]);
    assert!(stdout.contains(", 4 dead-lettered"), "{stdout}");
    assert_eq!(written(&stdout), symbols.len() as u64 + 1);

    let table = env.table();
    let lake = env.lake_records();
    let mut found: BTreeSet<String> = BTreeSet::new();
    for (folder, r) in &lake {
        assert_eq!(folder, &expected_folder(&table, r));
        found.insert(r.symbol.clone());
    }
    let mut want: BTreeSet<String> = symbols.iter().map(|s| s.to_string()).collect();
    want.insert("HSI".into());
    assert_eq!(found, want, "every symbol reads back as the same string");
    let hsi = lake.iter().find(|(_, r)| r.symbol == "HSI").unwrap();
    assert_eq!(hsi.1.close, Some(2568.300049));

    // Nothing escaped the lake: every file is under the table or _ticklake.
    let lake_dir = env.dir.path().join("lake");
    let all = env.lake_files("");
    assert!(
        all.iter()
            .all(|f| f.starts_with(&format!("{table}/")) || f.starts_with("_ticklake/")),
        "{all:?}"
    );
    assert!(!env.dir.path().join("x").exists() && !lake_dir.join("x").exists());

    let dlq = env.lake_files("_ticklake/dlq");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert!(dlq[0].starts_with(&format!("_ticklake/dlq/{}/{}+0+", env.topic, env.topic)));
    let text = std::fs::read_to_string(lake_dir.join(&dlq[0])).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    let reasons: Vec<&str> = lines
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert!(reasons[0].starts_with("not valid JSON"), "{reasons:?}");
    assert_eq!(reasons[1], "missing required field `ts`");
    assert!(
        reasons[2].starts_with("field `open`: expected a number"),
        "{reasons:?}"
    );
    assert!(reasons[3].starts_with("expected a JSON object, got an array"));
    assert_eq!(lines[0]["value"], "not json at all");
    assert_eq!(lines[0]["partition"], 0);
    let offsets: Vec<i64> = lines
        .iter()
        .map(|l| l["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(
        offsets,
        vec![6, 7, 8, 9],
        "partition and offset of each poison message"
    );
}

/// The simulator stream the crash tests produce (the same seed gives the same records).
fn simulated(count: usize) -> Vec<Record> {
    simulated_records(50, 9, count)
}

/// Starts a sink and returns once it reports a partition assignment (its `-v` log), so that a kill
/// lands on a sink that is really consuming.
fn start_consuming_sink(env: &Env, args: &[&str]) -> std::process::Child {
    let mut cmd = env.command(args);
    // The ledger's claims and deletions too, for a failure's diagnosis.
    cmd.env("RUST_LOG", "info,ticklake_sink::ledger=debug");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Each sink's log is kept in the test folder, for a failure's diagnosis.
    let log_path = env.dir.path().join(format!("sink-{}.log", child.id()));
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let mut log = std::fs::File::create(log_path).ok();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(f) = log.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if line.contains("partitions assigned") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(90))
        .expect("the sink got no partitions within 90 s");
    child
}

/// The lake's records: every data file of a Hive table.
fn hive_records(env: &Env) -> Vec<Record> {
    env.lake_records().into_iter().map(|(_, r)| r).collect()
}

/// While the simulator streams `count` records, a consuming sink (with `extra` options) is killed
/// with SIGKILL at random moments `kills` times and restarted; then a last sink drains the topic.
/// The caller checks the lake ([`assert_exactly_once`]).
fn crash_loop(env: &Env, count: usize, rate: &str, kills: usize, extra: &[&str]) {
    let n = count.to_string();
    let mut producer = env.spawn(&[
        "-q",
        "produce",
        "--simulate",
        "--symbols",
        "50",
        "--seed",
        "9",
        "--count",
        &n,
        "--rate",
        rate,
    ]);
    let mut rng = rand::rng();
    let mut sink_args = vec![
        "-v",
        "sink",
        "--flush-interval",
        "300ms",
        "--flush-records",
        "50000",
    ];
    sink_args.extend_from_slice(extra);
    let started = Instant::now();
    for _ in 0..kills {
        let mut sink = start_consuming_sink(env, &sink_args);
        std::thread::sleep(Duration::from_millis(rng.random_range(100..2000)));
        sink.kill().unwrap(); // SIGKILL: no flush, no commit, no goodbye to the group
        sink.wait().unwrap();
    }
    let status = producer.wait().unwrap();
    assert!(status.success(), "producer failed");
    let mut once = vec!["-q", "sink", "--once"];
    once.extend_from_slice(extra);
    let out = env.run(&once);
    assert!(out.status.success(), "{:?}", text(&out));
    eprintln!("crash loop of {kills} kills took {:?}", started.elapsed());
}

/// Asserts that the lake holds the `count` simulated records of the crash loop, each exactly once.
fn assert_exactly_once(lake: &[Record], count: usize) {
    assert_eq!(lake.len(), count, "every record exactly once (count)");
    assert_eq!(
        multiset(lake),
        multiset(&simulated(count)),
        "every record exactly once (multiset)"
    );
}

#[test]
fn crash_loop_embedded() {
    let env = Env::embedded();
    crash_loop(&env, 1_000_000, "200000", 12, &[]);
    assert_exactly_once(&hive_records(&env), 1_000_000);
}

#[test]
fn crash_loop_kafka() {
    // A killed member holds its partitions until its session times out: keep it short (the test broker
    // allows 1 s sessions), so each restarted sink is assigned its partitions within seconds.
    let env = Env::kafka();
    crash_loop(
        &env,
        1_000_000,
        "100000",
        10,
        &[
            "-X",
            "session.timeout.ms=3000",
            "-X",
            "max.poll.interval.ms=10000",
        ],
    );
    assert_exactly_once(&hive_records(&env), 1_000_000);
}

/// The crash loop into an Iceberg table, read back through the table's snapshots (files written by a
/// killed sink but never committed are not part of the table).
#[test]
fn crash_loop_iceberg() {
    let env = Env::embedded();
    crash_loop(&env, 400_000, "100000", 8, &["--table-format", "iceberg"]);
    assert_exactly_once(&iceberg_records(&env), 400_000);
}

/// The crash loop into an Iceberg table compacted all the while: by the sinks themselves
/// (`--compact-every`) and by `ticklake compact` runs that expire every older snapshot and delete the
/// files only they referenced. Still every record exactly once; at the end a last compaction leaves
/// one file per partition, and the lake still reads exactly.
#[test]
fn crash_loop_iceberg_with_compaction() {
    let env = Env::embedded();
    let done = std::sync::atomic::AtomicBool::new(false);
    let compactions = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let out = env.run(&["compact", "--retention", "0s"]);
                // Before the sink's first commit there is no table yet.
                if out.status.success() {
                    if text(&out).0.contains("merged into") {
                        compactions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                } else {
                    assert!(
                        text(&out).1.contains("has no tables to compact"),
                        "{:?}",
                        text(&out)
                    );
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        crash_loop(
            &env,
            400_000,
            "100000",
            8,
            &["--table-format", "iceberg", "--compact-every", "500ms"],
        );
        assert_exactly_once(&iceberg_records(&env), 400_000);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(
        compactions.into_inner() >= 2,
        "compactions merged files while the sinks ran"
    );
    let (out, _) = env.ok(&["compact", "--retention", "0s"]);
    let (partitions, _) = env.ok(&[
        "query",
        "--format",
        "csv",
        &format!("SHOW PARTITIONS {}", env.table()),
    ]);
    for line in partitions.lines().skip(1) {
        let files: usize = line.split(',').nth(1).unwrap().parse().unwrap();
        assert_eq!(
            files, 1,
            "one file per partition after compaction: {line}\n{out}"
        );
    }
    assert_exactly_once(&iceberg_records(&env), 400_000);
}

/// The crash loop into a Hive table while `ticklake compact` merges every partition it can, also
/// those being written, and deletes replaced files at once: readers through the catalog see every
/// record exactly once, with no compaction after the last sink (each sink copies the files it writes
/// into its partitions' merged folders; a killed sink's replay of files already merged is recognized
/// and neither copied nor merged twice).
#[test]
fn crash_loop_hive_with_compaction() {
    let env = Env::embedded();
    let done = std::sync::atomic::AtomicBool::new(false);
    let merged = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let out = env.run(&["compact", "--older-than", "0s", "--retention", "0s"]);
                if out.status.success() && text(&out).0.contains("files merged into") {
                    merged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        crash_loop(&env, 400_000, "100000", 8, &[]);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(
        merged.into_inner() >= 2,
        "compactions merged files while the sinks ran"
    );
    assert_exactly_once(&env.catalog_records(), 400_000);
    // And after one more compaction (which merges the copies and deletes what was replaced).
    env.ok(&["compact", "--older-than", "0s", "--retention", "0s"]);
    assert_exactly_once(&env.catalog_records(), 400_000);
}

/// A sink that compacts in the background (its default for a Hive Parquet table in the embedded
/// catalog, here every second) while a feed streams: its compaction thread merges the partitions it
/// wrote, also while it fills them, and each file it writes after a switch is copied into the merged
/// folder. Through the catalog, with no compaction after the sink stops, every record is there once.
#[test]
fn a_sink_compacting_in_the_background_keeps_every_record_once() {
    let env = Env::embedded();
    let count = 300_000;
    let mut producer = env.spawn(&[
        "-q",
        "produce",
        "--simulate",
        "--symbols",
        "50",
        "--seed",
        "9",
        "--count",
        &count.to_string(),
        "--rate",
        "60000",
    ]);
    let sink = start_consuming_sink(
        &env,
        &[
            "-v",
            "sink",
            "--flush-interval",
            "200ms",
            "--compact-every",
            "1s",
        ],
    );
    assert!(producer.wait().unwrap().success(), "producer failed");
    // The sink catches up; a compaction round or two pass meanwhile.
    let started = Instant::now();
    loop {
        let seen = query_count(&env);
        if seen == count as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{seen} of {count} records visible after 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_millis(2500));
    terminate(&sink);
    let out = sink.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let table = env.dir.path().join("lake").join(env.table());
    let merged = walk_files(&table.join("_compacted"));
    assert!(
        merged.iter().any(|f| f.contains("/part-")),
        "the sink's compaction merged files: {merged:?}"
    );
    assert!(
        merged
            .iter()
            .any(|f| f.rsplit('/').next().unwrap().contains('+')),
        "files written after a switch went into the merged folders: {merged:?}"
    );
    assert_exactly_once(&env.catalog_records(), count);
}

/// The paths of the files below a folder (none if it does not exist).
fn walk_files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// `count(*)` of the sinks' table through the catalog.
fn query_count(env: &Env) -> u64 {
    let sql = format!("SELECT count(*) FROM {}", env.table());
    let out = env.run(&["-q", "query", "--format", "csv", &sql]);
    let (stdout, stderr) = text(&out);
    if !out.status.success() {
        // No table until the sink's first flush creates it (late on a busy machine).
        assert!(stderr.contains("not found"), "{sql}: {stderr}");
        return 0;
    }
    stdout
        .lines()
        .nth(1)
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// An Iceberg table's records, read with the Iceberg library's scan of its current snapshot.
/// The records of the sinks' table: the Iceberg table's with `--table-format iceberg` in `table`, the
/// lake's files otherwise.
fn table_records(env: &Env, table: &[&str]) -> Vec<Record> {
    if table.contains(&"iceberg") {
        iceberg_records(env)
    } else {
        hive_records(env)
    }
}

fn iceberg_records(env: &Env) -> Vec<Record> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let batches = rt.block_on(async {
        let lake = ticklake_iceberg::IcebergLake::embedded(&env.dir.path().join("lake"))
            .await
            .unwrap();
        lake.read(&env.table()).await.unwrap()
    });
    assert!(!batches.is_empty(), "the table exists and holds records");
    batches
        .iter()
        .flat_map(|b| ticklake_model::arrow::batch_to_records(b).unwrap())
        .collect()
}

/// A sink into an Iceberg table resumes where the table says, whatever the consumer group: a new group
/// adds nothing, new records are added once; a flush is one snapshot carrying the offsets.
#[test]
fn iceberg_table_resumes_from_its_own_offsets() {
    let env = Env::embedded();
    let produce = |count: &str| {
        env.ok(&[
            "-q",
            "produce",
            "--simulate",
            "--symbols",
            "5",
            "--seed",
            "9",
            "--count",
            count,
        ]);
    };
    produce("20000");
    let iceberg = ["--table-format", "iceberg"];
    let sink = |group: &str| {
        let mut args = vec![
            "-q",
            "sink",
            "--once",
            "--flush-records",
            "3000",
            "--group",
            group,
        ];
        args.extend_from_slice(&iceberg);
        written(&env.ok(&args).0)
    };
    assert_eq!(sink("first"), 20_000);
    assert_eq!(sink("second"), 0, "a new group resumes where the table is");
    produce("7000");
    assert_eq!(sink("third"), 7_000);
    let lake = iceberg_records(&env);
    let mut want = simulated_records(5, 9, 20_000);
    want.extend(simulated_records(5, 9, 7_000));
    assert_eq!(lake.len(), want.len());
    assert_eq!(multiset(&lake), multiset(&want));
    // Not a Hive table: no files appear in the catalog's table list of Hive folders, and other
    // formats are refused.
    let out = env.run(&[
        "sink",
        "--once",
        "--table-format",
        "iceberg",
        "--format",
        "json",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("writes Parquet"), "{:?}", text(&out));
}

/// Two sinks in one group while the feed streams: A consumes alone, B joins and gets partitions (a
/// rebalance), A stops (another) and B takes over. At the end nothing is lost or duplicated and both
/// sinks wrote part of the data. `rate` makes the stream (200,000 records) outlast the choreography;
/// `table` holds the sinks' table-format options.
fn two_sinks(env: &Env, rate: &str, table: &[&str]) {
    let count = 200_000;
    let mut producer = env.spawn(&[
        "-q",
        "produce",
        "--simulate",
        "--symbols",
        "50",
        "--seed",
        "9",
        "--count",
        "200000",
        "--rate",
        rate,
    ]);
    let sink_args = [&["-v", "sink", "--flush-interval", "300ms"], table].concat();
    let a = start_consuming_sink(env, &sink_args);
    std::thread::sleep(Duration::from_secs(1));
    // Returns once B owns partitions, i.e. once the group has rebalanced around it.
    let b = start_consuming_sink(env, &sink_args);
    std::thread::sleep(Duration::from_secs(1));
    terminate(&a);
    let out_a = a.wait_with_output().unwrap();
    assert!(out_a.status.success(), "{:?}", text(&out_a));
    let producer_done = producer.wait().unwrap();
    assert!(producer_done.success());
    std::thread::sleep(Duration::from_secs(2));
    terminate(&b);
    let out_b = b.wait_with_output().unwrap();
    assert!(out_b.status.success(), "{:?}", text(&out_b));
    let (wa, wb) = (written(&text(&out_a).0), written(&text(&out_b).0));
    assert!(wa > 0 && wb > 0, "both members wrote: a {wa}, b {wb}");
    let out = env.run(&[&["-q", "sink", "--once"], table].concat());
    let rest = written(&text(&out).0);

    let lake = table_records(env, table);
    assert_eq!(lake.len(), count, "a {wa} + b {wb} + rest {rest}");
    assert_eq!(multiset(&lake), multiset(&simulated(count)));
}

#[test]
fn two_sinks_embedded() {
    two_sinks(&Env::embedded(), "20000", &[]);
}

/// The same rebalances under an Iceberg table: the table's offset fence, not the ledger, keeps it exact.
#[test]
fn two_sinks_iceberg_kafka() {
    two_sinks(&Env::kafka(), "5000", &["--table-format", "iceberg"]);
}

#[test]
fn two_sinks_kafka() {
    // Group joins through the broker take seconds: a longer stream.
    two_sinks(&Env::kafka(), "5000", &[]);
}

/// A sink started with a new consumer group (or after the group's offsets expired) resumes where the
/// lake is, from its ledger, with flush boundaries of its own: nothing is written twice.
fn new_group_resumes_where_the_lake_is(env: &Env) {
    let produce = |count: &str, start: &str| {
        env.ok(&[
            "-q",
            "produce",
            "--simulate",
            "--symbols",
            "5",
            "--seed",
            "3",
            "--count",
            count,
            "--start",
            start,
        ]);
    };
    produce("30000", "2024-01-02T00:00:00Z");
    env.ok(&[
        "-q",
        "sink",
        "--once",
        "--group",
        "first",
        "--flush-records",
        "7000",
    ]);
    produce("20000", "2024-03-02T00:00:00Z");
    let (stdout, _) = env.ok(&["-q", "sink", "--once", "--group", "second"]);
    assert_eq!(written(&stdout), 20_000, "only the new records: {stdout}");
    let (stdout, _) = env.ok(&["-q", "sink", "--once", "--group", "third"]);
    assert_eq!(written(&stdout), 0, "{stdout}");
    let lake: Vec<Record> = env.lake_records().into_iter().map(|(_, r)| r).collect();
    let sim = |start: &str, n: usize| -> Vec<Record> {
        Simulator::new(&SimOptions {
            symbols: 5,
            seed: 3,
            start_ts: ticklake_model::time::parse_iso(start).unwrap(),
            ..Default::default()
        })
        .take(n)
        .collect()
    };
    let mut want = sim("2024-01-02T00:00:00Z", 30_000);
    want.extend(sim("2024-03-02T00:00:00Z", 20_000));
    assert_eq!(lake.len(), want.len());
    assert_eq!(multiset(&lake), multiset(&want));
}

#[test]
fn new_group_resumes_where_the_lake_is_embedded() {
    new_group_resumes_where_the_lake_is(&Env::embedded());
}

#[test]
fn new_group_resumes_where_the_lake_is_kafka() {
    new_group_resumes_where_the_lake_is(&Env::kafka());
}

/// A member paused past its session (SIGSTOP), while another takes its partitions over, then resumed
/// (SIGCONT) with a flush in hand: its late files and commits add nothing and lose nothing. Members
/// also join and leave (SIGTERM, SIGKILL) while the feed streams. The lake is compared as a multiset.
/// `table` holds the sinks' table-format options.
fn stalled_and_churning_members(churn_rounds: usize, table: &[&str]) {
    let env = Env::kafka();
    let count = 300_000;
    let mut producer = env.spawn(&[
        "-q",
        "produce",
        "--simulate",
        "--symbols",
        "50",
        "--seed",
        "9",
        "--count",
        "300000",
        "--rate",
        "20000",
    ]);
    let args = [
        "-v",
        "sink",
        "--flush-interval",
        "500ms",
        "--flush-records",
        "20000",
        "-X",
        "session.timeout.ms=3000",
        "-X",
        "max.poll.interval.ms=10000",
    ];
    let args = [&args[..], table].concat();
    let stopped = start_consuming_sink(&env, &args);
    std::thread::sleep(Duration::from_millis(700));
    let pid = stopped.id().to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    // Its session runs out; the new member gets every partition and writes them.
    let mut taker = start_consuming_sink(&env, &args);
    std::thread::sleep(Duration::from_secs(4));
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // Churn: members come and go while the stream goes on.
    let mut rng = rand::rng();
    let mut members = vec![stopped];
    for round in 0..churn_rounds {
        members.push(start_consuming_sink(&env, &args));
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
        let mut victim = members.remove(rng.random_range(0..members.len()));
        if round % 2 == 0 {
            terminate(&victim);
            victim.wait_with_output().unwrap();
        } else {
            victim.kill().unwrap(); // SIGKILL
            victim.wait().unwrap();
        }
    }
    assert!(producer.wait().unwrap().success());
    for m in members {
        terminate(&m);
        m.wait_with_output().unwrap();
    }
    terminate(&taker);
    taker.wait().unwrap();
    let out = env.run(&[&["-q", "sink", "--once"], table].concat());
    assert!(out.status.success(), "{:?}", text(&out));

    let lake = table_records(&env, table);
    if lake.len() != count {
        // Keep what a diagnosis needs: the logs, the ledger and the lake.
        let keep = std::env::temp_dir().join(format!("ticklake-failed-{}", std::process::id()));
        let _ = std::process::Command::new("cp")
            .args(["-r", path_str(env.dir.path()), path_str(&keep)])
            .status();
        eprintln!("test folder kept in {}", keep.display());
    }
    assert_eq!(lake.len(), count, "every record exactly once (count)");
    assert_eq!(multiset(&lake), multiset(&simulated(count)));
}

#[test]
fn stalled_member_kafka() {
    stalled_and_churning_members(0, &[]);
}

// Members joining and leaving by SIGTERM and SIGKILL after the SIGSTOP. This once lost one range in
// about one run of ten: stale claims at trimmed offsets went unchecked (see docs/architecture.md).
#[test]
fn stalled_and_churning_members_kafka() {
    stalled_and_churning_members(6, &[]);
}

/// A stalled member that wakes up with a flush in hand, and churn, over an Iceberg table: the stale
/// append is refused by the table's offsets.
#[test]
fn stalled_and_churning_members_iceberg_kafka() {
    stalled_and_churning_members(6, &["--table-format", "iceberg"]);
}

#[test]
fn json_and_csv_formats_and_other_partitionings() {
    let env = Env::embedded();
    env.ok(&[
        "-q",
        "produce",
        "--simulate",
        "--symbols",
        "3",
        "--count",
        "90",
        "--interval",
        "1h",
    ]);
    env.ok(&[
        "-q",
        "sink",
        "--once",
        "--format",
        "json",
        "--partition-by",
        "date,hour",
        "--table",
        "hourly",
    ]);
    let files = env.lake_files("hourly");
    // 30 hourly bars of 3 symbols: 30 hour folders (a file per Kafka partition in each).
    let hours: BTreeSet<&str> = files
        .iter()
        .map(|f| f.rsplit_once('/').unwrap().0)
        .collect();
    assert_eq!(hours.len(), 30, "{hours:?}");
    assert!(hours.contains("hourly/date=2024-01-02/hour=14"));
    assert!(hours.contains("hourly/date=2024-01-03/hour=19"));
    assert!(files.iter().all(|f| f.ends_with(".json")));
    let lines: usize = files
        .iter()
        .map(|f| {
            std::fs::read_to_string(env.dir.path().join("lake").join(f))
                .unwrap()
                .lines()
                .count()
        })
        .sum();
    assert_eq!(lines, 90);
    env.ok(&[
        "-q",
        "sink",
        "--once",
        "--group",
        "g2",
        "--format",
        "csv",
        "--partition-by",
        "symbol",
        "--table",
        "by_symbol",
    ]);
    let files = env.lake_files("by_symbol");
    assert_eq!(files.len(), 3);
    let text = std::fs::read_to_string(env.dir.path().join("lake").join(&files[0])).unwrap();
    // The symbol is in the folder, not in the rows (Hive's convention for text formats).
    assert!(
        text.starts_with("ts,open,high,low,close,volume\n"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 31);
    // Both tables are registered and read back the same records as SQL.
    let answer = |table: &str| {
        env.ok(&[
            "query",
            "--format",
            "csv",
            &format!("SELECT symbol, count(*) AS n, round(sum(close), 6) AS c, max(ts) AS t FROM {table} GROUP BY symbol ORDER BY symbol"),
        ])
        .0
    };
    let by_symbol = answer("by_symbol");
    assert_eq!(by_symbol.lines().count(), 4, "{by_symbol}");
    assert!(
        by_symbol
            .lines()
            .skip(1)
            .all(|l| l.split(',').nth(1) == Some("30")),
        "{by_symbol}"
    );
    assert_eq!(answer("hourly"), by_symbol);
}

#[test]
fn sink_configuration_errors_are_clear() {
    let env = Env::embedded();
    env.ok(&["-q", "produce", "--simulate", "--count", "1"]);
    for (args, want) in [
        (
            vec!["sink", "--once", "--partition-by", "month"],
            "unknown key \"month\"",
        ),
        (vec!["sink", "--once", "--format", "avro"], "unknown format"),
        (vec!["sink", "--once", "--table", "../x"], "table name"),
        (
            vec!["sink", "--once", "--lake", "gs://b/x"],
            "only local folders and s3://",
        ),
        (
            vec!["sink", "--once", "--flush-records", "0"],
            "greater than zero",
        ),
        (vec!["--topic", "nope", "sink", "--once"], "does not exist"),
    ] {
        let out = env.run(&args);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(want), "{args:?}: {stderr} {stdout}");
        assert!(!stderr.contains("panicked"));
    }
}

#[test]
fn metrics_endpoint_reports_what_was_written() {
    let env = Env::embedded();
    env.ok(&[
        "-q",
        "produce",
        "--simulate",
        "--symbols",
        "5",
        "--count",
        "5000",
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let sink = env.spawn(&[
        "-q",
        "sink",
        "--flush-interval",
        "200ms",
        "--metrics",
        &addr,
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut body = String::new();
    while Instant::now() < deadline {
        if let Ok(mut r) = ureq::get(&format!("http://{addr}/metrics")).call() {
            body = r.body_mut().read_to_string().unwrap();
            if body.contains("ticklake_sink_records_total 5000")
                && body.contains("ticklake_sink_consumer_lag")
            {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    terminate(&sink);
    let out = sink.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(body.contains("ticklake_sink_records_total 5000"), "{body}");
    assert!(
        body.contains("ticklake_sink_dead_letters_total 0"),
        "{body}"
    );
    assert!(
        body.contains("ticklake_sink_consumer_lag{partition=\"0\"} 0"),
        "{body}"
    );
    assert!(body.contains("ticklake_sink_files_total"), "{body}");
}
