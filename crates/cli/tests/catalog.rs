//! The crawler and the catalogs through the real binary: lakes ticklake did not write (the seed's JSON
//! folder, a folder of CSVs), incremental crawls and schema conflicts, and the AWS Glue catalog on the
//! moto server (what the Glue API returns, and the same answers as the embedded catalog).

mod common;

use std::path::Path;

use common::{path_str, shared_data, text, Env};

/// The seed CSV's good rows as (header, fields).
fn seed_rows() -> (Vec<String>, Vec<Vec<String>>) {
    let mut rd = csv::Reader::from_path(shared_data("indexProcessed-HSI.csv")).unwrap();
    let header = rd.headers().unwrap().iter().map(str::to_owned).collect();
    let rows = rd
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect::<Vec<_>>())
        .filter(|r| r.iter().any(|f| !f.trim().is_empty()))
        .collect();
    (header, rows)
}

/// A query's CSV answer. The crawled folders of these tests are beside the lake, not in it: the user
/// allows them, as `--allow-location` lets them.
fn query_csv(env: &Env, extra: &[&str], sql: &str) -> String {
    let mut args = extra.to_vec();
    let dir = path_str(env.dir.path()).to_owned();
    args.extend_from_slice(&["query", "--allow-location", &dir, "--format", "csv", sql]);
    env.ok(&args).0
}

fn num(s: &str) -> f64 {
    s.parse().unwrap()
}

#[test]
fn crawls_the_seed_json_folder() {
    let env = Env::embedded();
    let (header, rows) = seed_rows();
    let dir = env.dir.path().join("seed_out");
    std::fs::create_dir_all(&dir).unwrap();
    let rows = &rows[..400];
    for (i, r) in rows.iter().enumerate() {
        // The seed's consumer wrote one JSON object per file, named stock_market_<n>.json.
        let mut obj = serde_json::Map::new();
        for (k, v) in header.iter().zip(r) {
            let value = match v.parse::<f64>() {
                Ok(x) if k != "Index" && k != "Date" => serde_json::json!(x),
                _ => serde_json::json!(v),
            };
            obj.insert(k.clone(), value);
        }
        std::fs::write(
            dir.join(format!("stock_market_{i}.json")),
            serde_json::to_string(&obj).unwrap(),
        )
        .unwrap();
    }
    let (out, _) = env.ok(&["crawl", "seed_out"]);
    assert!(
        out.contains("table seed_out (json): created, 400 files read"),
        "{out}"
    );
    // A table on local disk outside the lake is refused until the user allows its folder.
    let out = env.run(&["query", "SELECT count(*) FROM seed_out"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("seed_out"), "{stderr}");
    let out = env.run(&["query", "DESCRIBE seed_out"]);
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("outside the lake") && stderr.contains("--allow-location"),
        "{stderr}"
    );
    let desc = query_csv(&env, &[], "DESCRIBE seed_out");
    assert_eq!(
        desc,
        "col_name,data_type,comment\nindex,string,\ndate,string,\nopen,double,\nhigh,double,\n\
         low,double,\nclose,double,\nadj_close,double,\nvolume,double,\nclose_usd,double,\n"
    );
    let got = query_csv(
        &env,
        &[],
        "SELECT count(*), max(high), min(adj_close), sum(close_usd), min(date) FROM seed_out",
    );
    let line = got.lines().nth(1).unwrap().to_owned();
    let f: Vec<&str> = line.split(',').collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let max_high = rows
        .iter()
        .map(|r| num(&r[col("High")]))
        .fold(f64::MIN, f64::max);
    let min_adj = rows
        .iter()
        .map(|r| num(&r[col("Adj Close")]))
        .fold(f64::MAX, f64::min);
    let sum_usd: f64 = rows.iter().map(|r| num(&r[col("CloseUSD")])).sum();
    assert_eq!(f[0], "400");
    assert!((num(f[1]) - max_high).abs() < 1e-9, "{line}");
    assert!((num(f[2]) - min_adj).abs() < 1e-9, "{line}");
    assert!((num(f[3]) - sum_usd).abs() < 1e-6 * sum_usd, "{line}");
    assert_eq!(
        f[4],
        rows.iter().map(|r| r[col("Date")].clone()).min().unwrap()
    );
}

#[test]
fn crawls_a_csv_folder_and_a_partitioned_folder_incrementally() {
    let env = Env::embedded();
    let (header, rows) = seed_rows();
    let prices = env.dir.path().join("landing/prices");
    std::fs::create_dir_all(&prices).unwrap();
    for (i, chunk) in rows.chunks(2_000).enumerate() {
        let mut w = csv::Writer::from_path(prices.join(format!("part-{i}.csv"))).unwrap();
        w.write_record(&header).unwrap();
        for r in chunk {
            w.write_record(r).unwrap();
        }
        w.flush().unwrap();
    }
    let (out, _) = env.ok(&["crawl", "landing"]);
    assert!(out.contains("table prices (csv): created"), "{out}");
    let got = query_csv(
        &env,
        &[],
        "SELECT count(*), max(high), sum(volume) FROM prices",
    );
    let f: Vec<String> = got
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(f[0], rows.len().to_string());
    let max_high = rows.iter().map(|r| num(&r[3])).fold(f64::MIN, f64::max);
    let volume: f64 = rows.iter().map(|r| num(&r[7])).sum();
    assert!((num(&f[1]) - max_high).abs() < 1e-9);
    assert!((num(&f[2]) - volume).abs() <= 1e-9 * volume.max(1.0));

    // A partitioned folder of JSON lines, crawled as it grows.
    let events = env.dir.path().join("raw/events");
    let write = |folder: &str, name: &str, lines: &[&str]| {
        let d = events.join(folder);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), lines.join("\n") + "\n").unwrap();
    };
    write(
        "date=2024-01-01",
        "a.json",
        &[r#"{"sym":"A","px":1.5}"#, r#"{"sym":"B","px":2.5}"#],
    );
    let (out, _) = env.ok(&["crawl", "raw"]);
    assert!(
        out.contains("table events (json): created, 1 files read, 1 new partitions"),
        "{out}"
    );
    write(
        "date=2024-01-02",
        "b.json",
        &[r#"{"sym":"A","px":3,"venue":"X"}"#],
    );
    let (out, _) = env.ok(&["crawl", "raw"]);
    assert!(
        out.contains(
            "table events (json): updated, 1 files read, 1 new partitions, new columns: venue"
        ),
        "only the new partition is read: {out}"
    );
    assert_eq!(
        query_csv(
            &env,
            &[],
            "SELECT date, sym, px, venue FROM events ORDER BY date, sym"
        ),
        "date,sym,px,venue\n2024-01-01,A,1.5,\n2024-01-01,B,2.5,\n2024-01-02,A,3.0,X\n"
    );
    // A type conflict is reported with the file, and its partition stays out.
    write("date=2024-01-03", "c.json", &[r#"{"sym":"C","px":"n/a"}"#]);
    let out = env.run(&["crawl", "raw"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("column \"px\" is double, but string in events/date=2024-01-03/c.json"),
        "{stderr}"
    );
    assert_eq!(
        query_csv(&env, &[], "SHOW PARTITIONS events"),
        "partition\ndate=2024-01-01\ndate=2024-01-02\n"
    );
    assert_eq!(
        query_csv(
            &env,
            &[],
            "SELECT count(*) AS n, sum(px) AS total FROM events"
        ),
        "n,total\n3,7.0\n"
    );
    // --full re-reads everything and drops partitions whose folders are gone.
    std::fs::remove_dir_all(events.join("date=2024-01-03")).unwrap();
    std::fs::remove_dir_all(events.join("date=2024-01-01")).unwrap();
    let (out, _) = env.ok(&["crawl", "raw", "--full"]);
    assert!(out.contains("1 partitions dropped"), "{out}");
    assert_eq!(
        query_csv(&env, &[], "SHOW PARTITIONS events"),
        "partition\ndate=2024-01-02\n"
    );
}

#[test]
fn crawling_the_sinks_lake_gives_the_sinks_definition() {
    let env = Env::embedded();
    env.ok(&[
        "produce",
        "--simulate",
        "--count",
        "3000",
        "--symbols",
        "3",
        "--interval",
        "1m",
        "-q",
    ]);
    env.ok(&["sink", "--once", "-q"]);
    let other = ["--catalog-file", "crawled.sqlite"];
    env.ok(&[&other[..], &["crawl"]].concat());
    for sql in [
        "DESCRIBE stock_topic",
        "SHOW PARTITIONS stock_topic",
        "SELECT symbol, count(*), sum(volume), max(ts) FROM stock_topic GROUP BY symbol ORDER BY symbol",
    ] {
        assert_eq!(query_csv(&env, &[], sql), query_csv(&env, &other, sql), "{sql}");
    }
    // Crawling again finds nothing new to read.
    let (out, _) = env.ok(&[&other[..], &["crawl"]].concat());
    assert!(
        out.contains("updated, 0 files read, 0 new partitions"),
        "{out}"
    );
}

fn glue_dump(env: &Env, database: &str) -> serde_json::Value {
    common::reference(&["glue", database], "", &env.vars)
}

#[test]
fn glue_catalog_on_moto_matches_the_embedded_catalog() {
    let env = Env::embedded().with_s3_lake();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let db = format!("sinkdb_{nanos}");
    let crawled_db = format!("crawldb_{nanos}");
    let glue = ["--catalog", "glue", "--database", db.as_str()];
    env.ok(&[
        "produce",
        "--simulate",
        "--count",
        "2400",
        "--symbols",
        "2",
        "--interval",
        "1m",
        "-q",
    ]);
    env.ok(&[&glue[..], &["sink", "--once", "-q"]].concat());

    let lake = env.lake.clone().unwrap();
    let tables = glue_dump(&env, &db);
    let t = &tables["stock_topic"];
    let location = format!("{lake}/stock_topic/");
    assert_eq!(t["location"], location.as_str());
    assert_eq!(t["table_type"], "EXTERNAL_TABLE");
    assert_eq!(
        t["serde"],
        "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
    );
    assert_eq!(
        t["input_format"],
        "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
    );
    assert_eq!(t["parameters"]["classification"], "parquet");
    assert_eq!(
        t["partition_keys"],
        serde_json::json!([["date", "string"], ["symbol", "string"]])
    );
    let columns = t["columns"].as_array().unwrap();
    for (name, ty) in [
        ("ts", "timestamp"),
        ("open", "double"),
        ("high", "double"),
        ("low", "double"),
        ("close", "double"),
        ("volume", "double"),
    ] {
        assert!(
            columns.contains(&serde_json::json!([name, ty])),
            "{name} {ty} in {columns:?}"
        );
    }
    assert!(
        !columns.iter().any(|c| c[0] == "symbol"),
        "symbol is a partition key only"
    );
    // One partition per folder the sink wrote, each at its folder.
    let mut folders: Vec<String> = env
        .lake_files("stock_topic")
        .iter()
        .map(|f| f.rsplit_once('/').unwrap().0.to_owned())
        .collect();
    folders.dedup();
    let partitions = t["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), folders.len());
    for (p, folder) in partitions.iter().zip(&folders) {
        assert_eq!(p["location"], format!("{lake}/{folder}/").as_str());
        let values: Vec<String> = folder
            .split('/')
            .skip(1)
            .map(|kv| kv.split_once('=').unwrap().1.to_owned())
            .collect();
        assert_eq!(p["values"], serde_json::json!(values));
    }

    // The table's layout is Glue's to keep: a sink asking for another is refused before it consumes.
    let refused = env.run(&[&glue[..], &["sink", "--once", "--partition-by", "symbol"]].concat());
    assert!(!refused.status.success());
    let (_, stderr) = text(&refused);
    assert!(
        stderr.contains("is partitioned by (date,symbol), not (symbol)"),
        "{stderr}"
    );

    // A crawl into another Glue database catalogs the same table.
    let crawled = ["--catalog", "glue", "--database", crawled_db.as_str()];
    env.ok(&[&crawled[..], &["crawl"]].concat());
    let again = glue_dump(&env, &crawled_db);
    let c = &again["stock_topic"];
    for field in [
        "location",
        "serde",
        "input_format",
        "output_format",
        "partition_keys",
        "columns",
        "partitions",
    ] {
        assert_eq!(c[field], t[field], "{field}");
    }

    // The same answers through Glue and through the embedded catalog (crawled from the same S3 lake).
    env.ok(&["crawl"]);
    for sql in [
        "SELECT symbol, count(*), sum(volume), min(low), max(high) FROM stock_topic GROUP BY symbol ORDER BY symbol",
        "SELECT * FROM ohlcv('stock_topic', '1 hour') ORDER BY symbol, bar LIMIT 20",
        "SHOW PARTITIONS stock_topic",
        "SELECT count(*) FROM stock_topic WHERE date = (SELECT min(date) FROM stock_topic)",
    ] {
        let through_glue = query_csv(&env, &glue, sql);
        assert_eq!(through_glue, query_csv(&env, &[], sql), "{sql}");
        assert!(through_glue.lines().count() > 1, "{sql}: {through_glue}");
    }
    assert!(Path::new(path_str(env.dir.path()))
        .join("_ticklake/catalog.sqlite")
        .exists());

    // Compaction through Glue on the S3 lake: a second file per partition, merged; Glue's partitions
    // move to the merged folders, and the answers stay those of the embedded catalog, whose
    // partitions still point at the sink's folders (the replaced files stay for the grace period).
    env.ok(&[
        "produce",
        "--simulate",
        "--count",
        "2400",
        "--symbols",
        "2",
        "--interval",
        "1m",
        "-q",
    ]);
    env.ok(&[&glue[..], &["sink", "--once", "-q"]].concat());
    let (out, _) = env.ok(&[&glue[..], &["compact", "--older-than", "0s"]].concat());
    assert!(
        out.contains("table stock_topic (Hive): 8 files merged into 4 in 4 partitions"),
        "{out}"
    );
    let moved = glue_dump(&env, &db);
    for p in moved["stock_topic"]["partitions"].as_array().unwrap() {
        let at = p["location"].as_str().unwrap();
        assert!(
            at.starts_with(&format!("{lake}/stock_topic/_compacted/date=")),
            "{at}"
        );
    }
    // files() names the merged files, by their S3 URLs, and only those.
    let listed = query_csv(&env, &glue, "SELECT file FROM files('stock_topic')");
    let listed: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert!(
        listed.iter().all(
            |f| f.starts_with(&format!("{lake}/stock_topic/_compacted/date="))
                && f.ends_with(".parquet")
        ),
        "{listed:?}"
    );
    for sql in [
        "SELECT symbol, count(*), sum(volume), min(low), max(high) FROM stock_topic GROUP BY symbol ORDER BY symbol",
        // (No vwap: its sums add up in another order over other files.)
        "SELECT symbol, bar, open, high, low, close, volume, rows FROM ohlcv('stock_topic', '1 hour') ORDER BY symbol, bar",
    ] {
        assert_eq!(query_csv(&env, &glue, sql), query_csv(&env, &[], sql), "{sql}");
    }

    // Records for those partitions after the switch: the sink copies its new files into the merged
    // folders (an S3 server-side copy), so Glue's answers hold them at once, with no compaction.
    env.ok(&[
        "produce",
        "--simulate",
        "--count",
        "2400",
        "--symbols",
        "2",
        "--interval",
        "1m",
        "-q",
    ]);
    env.ok(&[&glue[..], &["sink", "--once", "-q"]].concat());
    // (The embedded catalog's partitions are the sink's folders, which hold every file.)
    let count = "SELECT count(*) FROM stock_topic";
    assert_eq!(query_csv(&env, &glue, count), query_csv(&env, &[], count));
}

/// An Iceberg table folder is registered by the crawler in the lake's Iceberg catalog (here after the
/// catalog file was lost), not cataloged as Hive partitions; crawling again, or crawling the table's
/// own folder, finds it registered.
#[test]
fn crawling_an_iceberg_table_registers_it() {
    let env = Env::embedded();
    env.ok(&[
        "-q",
        "produce",
        "--simulate",
        "--symbols",
        "4",
        "--count",
        "5000",
    ]);
    env.ok(&["-q", "sink", "--once"]);
    env.sink_into_iceberg("ice", &[]);
    let lake = env.dir.path().join("lake");
    std::fs::remove_file(lake.join("_ticklake/iceberg.sqlite")).unwrap();
    let gone = env.run(&["query", "SELECT count(*) FROM ice"]);
    assert!(!gone.status.success());

    let (out, _) = env.ok(&["crawl"]);
    assert!(
        out.contains("table ice (Iceberg): registered in the Iceberg SQL catalog")
            && out.contains("iceberg.sqlite (namespace ticklake, lake file://")
            && out.contains(" at file://"),
        "{out}"
    );
    assert!(out.contains("table stock_topic (parquet)"), "{out}");
    assert!(!out.contains("table ice (parquet)"), "{out}");
    assert_eq!(
        query_csv(&env, &[], "SELECT count(*) FROM ice"),
        "count(*)\n5000\n"
    );
    // Its history came back with it.
    let (snapshots, _) = env.ok(&[
        "query",
        "--format",
        "csv",
        "SELECT max(total_records) AS n FROM snapshots('ice')",
    ]);
    assert_eq!(snapshots, "n\n5000\n");

    let (again, _) = env.ok(&["crawl"]);
    assert!(
        again.contains("table ice (Iceberg): already registered"),
        "{again}"
    );
    let (own, _) = env.ok(&["crawl", path_str(&lake.join("ice"))]);
    assert!(
        own.contains("table ice (Iceberg): already registered"),
        "{own}"
    );
}

/// The parquet files under a folder, relative to it.
fn parquet_files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Hive compaction on the embedded catalog: each partition's files merged into one sorted file in a
/// new folder, the partition switched to it, answers unchanged (no row twice, none lost); late
/// records in a compacted partition are visible at once (the sink copies them into its merged
/// folder) and merged by the next compaction; replaced files are deleted after the grace period;
/// files younger than `--older-than` are left as they are; `crawl --full` keeps the compacted
/// partitions.
#[test]
fn hive_compaction_switches_partitions_to_merged_files() {
    let env = Env::embedded();
    let produce = || {
        env.ok(&[
            "-q",
            "produce",
            "--simulate",
            "--symbols",
            "3",
            "--count",
            "30000",
            "--interval",
            "1m",
            "--seed",
            "5",
        ]);
    };
    produce();
    // Small flushes: each day's partitions get several files.
    env.ok(&["-q", "sink", "--once", "--flush-records", "5000"]);
    let answers = |env: &Env| {
        query_csv(
            env,
            &[],
            "SELECT date, symbol, count(*), sum(volume), min(low), max(high), \
             CAST(extract(epoch FROM max(ts)) AS BIGINT) FROM stock_topic \
             GROUP BY date, symbol ORDER BY date, symbol",
        )
    };
    let before = answers(&env);
    let table = env.dir.path().join("lake/stock_topic");
    let files_before = parquet_files(&table);

    // Written just now: too young for an hour's --older-than.
    let (out, _) = env.ok(&["compact", "--older-than", "1h"]);
    assert!(
        out.contains("partitions whose small files were written in the last 1h left as they are"),
        "{out}"
    );
    assert_eq!(parquet_files(&table), files_before);

    let (out, _) = env.ok(&["compact", "--older-than", "0s", "--retention", "0s"]);
    let partitions = query_csv(&env, &[], "SHOW PARTITIONS stock_topic")
        .lines()
        .count()
        - 1;
    // The partitions with more than one file are merged.
    let mut per_folder = std::collections::BTreeMap::<String, usize>::new();
    for f in &files_before {
        *per_folder
            .entry(f.rsplit_once('/').unwrap().0.to_owned())
            .or_default() += 1;
    }
    let several: Vec<usize> = per_folder.values().copied().filter(|n| *n > 1).collect();
    assert!(!several.is_empty(), "{files_before:?}");
    assert!(
        out.contains(&format!(
            "{} files merged into {} in {} partitions",
            several.iter().sum::<usize>(),
            several.len(),
            several.len()
        )),
        "{out}"
    );
    assert_eq!(answers(&env), before);
    let merged: Vec<String> = parquet_files(&table)
        .into_iter()
        .filter(|f| f.starts_with("_compacted/"))
        .collect();
    assert_eq!(merged.len(), several.len(), "{merged:?}");

    // Late records: the same records produced again land in the sink's folders, and the sink copies
    // them into the compacted partitions' merged folders: visible at once. The next compaction
    // merges them in and deletes the files the first one replaced.
    produce();
    env.ok(&["-q", "sink", "--once"]);
    let doubled = query_csv(&env, &[], "SELECT count(*) FROM stock_topic");
    assert_eq!(doubled, "count(*)\n60000\n");
    let copies = parquet_files(&table)
        .into_iter()
        .filter(|f| {
            f.starts_with("_compacted/") && !f.rsplit('/').next().unwrap().starts_with("part-")
        })
        .count();
    assert!(
        copies > 0,
        "the late files were copied into the merged folders"
    );
    let (out, _) = env.ok(&["compact", "--older-than", "0s", "--retention", "0s"]);
    assert!(out.contains("replaced files deleted"), "{out}");
    assert_eq!(
        query_csv(&env, &[], "SELECT count(*) FROM stock_topic"),
        doubled
    );
    let (out, _) = env.ok(&["compact", "--older-than", "0s", "--retention", "0s"]);
    assert!(out.contains("no partition to merge"), "{out}");
    let left = parquet_files(&table);
    assert_eq!(
        left.len(),
        partitions,
        "only the newest generation is left: {left:?}"
    );
    assert!(left.iter().all(|f| f.starts_with("_compacted/")));

    // Merged files are sorted by symbol and ts.
    let sorted = query_csv(
        &env,
        &[],
        "SELECT count(*) FROM (SELECT ts < lag(ts) OVER (PARTITION BY symbol ORDER BY ts) AS back \
         FROM stock_topic) WHERE back",
    );
    assert_eq!(sorted, "count(*)\n0\n");

    // A full crawl keeps the compacted partitions (their files are not in the sink's folders).
    env.ok(&["crawl", "--full"]);
    assert_eq!(
        query_csv(&env, &[], "SELECT count(*) FROM stock_topic"),
        doubled
    );
}

/// A partition compacted again and again while a sink goes on writing to it (a new generation every
/// round, each younger than the grace period): every answer stays exact, and the generations replaced
/// longer than the grace period ago are deleted (with the sink's own files they hold), although the
/// current one never gets that old.
#[test]
fn hive_compaction_of_a_partition_being_filled_deletes_what_it_replaced() {
    let env = Env::embedded();
    let table = env.dir.path().join("lake/stock_topic");
    let generations = || {
        let mut folders = std::collections::BTreeSet::new();
        for f in parquet_files(&table) {
            if let Some(rest) = f.strip_prefix("_compacted/") {
                folders.insert(rest.rsplit_once('/').unwrap().0.to_owned());
            }
        }
        folders.len()
    };
    let rounds = 8;
    for round in 1..=rounds {
        // One symbol (the seed's), one day: every round writes into the same partition.
        env.ok(&[
            "-q",
            "produce",
            "--simulate",
            "--symbols",
            "1",
            "--count",
            "1000",
            "--interval",
            "1s",
            "--seed",
            "5",
            "--start",
            &format!("2024-01-02T{round:02}:00:00Z"),
        ]);
        env.ok(&["-q", "sink", "--once", "--partition-by", "date,symbol"]);
        assert_eq!(
            query_csv(&env, &[], "SELECT count(*) FROM stock_topic"),
            format!("count(*)\n{}\n", round * 1000),
            "round {round}, before its compaction"
        );
        env.ok(&["compact", "--retention", "3s"]);
        assert_eq!(
            query_csv(&env, &[], "SELECT count(*) FROM stock_topic"),
            format!("count(*)\n{}\n", round * 1000),
            "round {round}, after its compaction"
        );
        std::thread::sleep(std::time::Duration::from_millis(1000));
    }
    assert_eq!(
        query_csv(&env, &[], "SELECT count(DISTINCT symbol) FROM stock_topic"),
        "count(DISTINCT stock_topic.symbol)\n1\n"
    );
    let left = generations();
    assert!(
        (1..rounds - 2).contains(&left),
        "{left} generations of {} are left: those replaced over 3 s ago are deleted",
        rounds - 1
    );
    let own = parquet_files(&table)
        .into_iter()
        .filter(|f| !f.starts_with("_compacted/"))
        .count();
    assert!(own < rounds, "{own} of the sink's {rounds} files are left");
}
