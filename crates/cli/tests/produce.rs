//! `ticklake produce` / `consume` end to end, through the real binary, on both buses.

mod common;

use std::time::{Duration, Instant};

use common::{path_str, shared_data, text, Env};
use ticklake_model::json;

/// Both real CSVs through a bus: exact sent/rejected counts, rejects file, and the records on the topic.
fn replay_real_files(env: &Env) {
    let gsptse = shared_data("indexProcessed-GSPTSE-raw.csv");
    let (stdout, stderr) = env.ok(&["produce", "--source", path_str(&gsptse)]);
    assert!(
        stdout.contains("10526 sent, 27670 rejected: blank row (27670)"),
        "{stdout}"
    );
    assert!(stdout.contains("10526 acknowledged"), "{stdout}");
    assert!(stderr.contains("ts<-Date (dd/mm/yyyy)"), "{stderr}");
    let rejects = env
        .dir
        .path()
        .join("indexProcessed-GSPTSE-raw.csv.rejects.csv");
    let mut rd = csv::Reader::from_path(&rejects).unwrap();
    let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 27670);
    // Line 1 is the header and lines 2..=10527 the good rows: the blank rows start at line 10528.
    assert_eq!((&rows[0][0], &rows[0][1]), ("10528", "blank row"));
    assert_eq!(&rows[27669][0], "38197");

    let hsi = shared_data("indexProcessed-HSI.csv");
    let (stdout, _) = env.ok(&["produce", "--source", path_str(&hsi)]);
    assert!(stdout.contains("5693 sent, 0 rejected"), "{stdout}");

    let values = env.values();
    assert_eq!(values.len(), 10526 + 5693);
    let records: Vec<_> = values
        .iter()
        .map(|v| json::decode(v.as_bytes()).unwrap())
        .collect();
    let gs = records.iter().filter(|r| r.symbol == "GSPTSE").count();
    assert_eq!(gs, 10526);
    let first_gs = records.iter().find(|r| r.symbol == "GSPTSE").unwrap();
    // GSPTSE,29/06/1979,1614.699951,1619.800049,1614.699951,1618.400024,1614.290039,0,1343.27202
    assert_eq!(
        first_gs.ts,
        ticklake_model::time::parse_iso("1979-06-29").unwrap()
    );
    assert_eq!(first_gs.close, Some(1618.400024));
    assert_eq!(
        first_gs.extra[1].1,
        ticklake_model::Value::Number(1343.27202)
    );
    let sum_close: f64 = records.iter().filter_map(|r| r.close).sum();
    let expected: f64 = [&gsptse, &hsi]
        .iter()
        .flat_map(|p| {
            let mut rd = csv::Reader::from_path(p).unwrap();
            rd.records()
                .map(Result::unwrap)
                .filter_map(|r| r[5].trim().parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    assert!(
        (sum_close - expected).abs() < 1e-6 * expected,
        "{sum_close} vs {expected}"
    );
}

#[test]
fn real_files_through_the_embedded_log() {
    replay_real_files(&Env::embedded());
}

#[test]
fn real_files_through_kafka() {
    replay_real_files(&Env::kafka());
}

/// The Kafka producer's transaction span: a long one still delivers every message exactly once (the
/// last transaction commits at the end of the run), and one past the broker's transaction timeout is
/// refused before anything is sent.
#[test]
fn transaction_span_on_kafka() {
    let env = Env::kafka();
    let args = ["produce", "--simulate", "--count", "20000"];
    let (stdout, _) = env.ok(&[&args[..], &["--transaction-span", "2s"]].concat());
    assert!(stdout.contains("20000 acknowledged"), "{stdout}");
    let values = env.values();
    assert_eq!(values.len(), 20000);
    let distinct: std::collections::HashSet<&String> = values.iter().collect();
    assert_eq!(distinct.len(), 20000, "no message twice");

    let out = env.run(&[&args[..], &["--transaction-span", "1h"]].concat());
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("out of range: use 10ms to 5s"), "{stderr}");
    assert_eq!(env.values().len(), 20000, "nothing more was sent");
}

#[test]
fn simulator_is_deterministic_and_counts() {
    let a = Env::embedded();
    let b = Env::embedded();
    for env in [&a, &b] {
        let (stdout, _) = env.ok(&[
            "produce",
            "--simulate",
            "--symbols",
            "25",
            "--seed",
            "7",
            "--count",
            "5000",
        ]);
        assert!(stdout.contains("5000 sent"), "{stdout}");
    }
    let (va, vb) = (a.values(), b.values());
    assert_eq!(va.len(), 5000);
    // Each symbol's messages in order: the topic's partitions are read back interleaved as they
    // arrive, so only the order within a key is the stream's.
    let by_symbol = |values: &[String]| {
        let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for v in values {
            let symbol = json::decode(v.as_bytes()).unwrap().symbol;
            out.entry(symbol).or_default().push(v.clone());
        }
        out
    };
    assert_eq!(by_symbol(&va), by_symbol(&vb), "same seed, same stream");
    let symbols: std::collections::HashSet<String> = va
        .iter()
        .map(|v| json::decode(v.as_bytes()).unwrap().symbol)
        .collect();
    assert_eq!(symbols.len(), 25);
}

#[test]
fn pacing_by_rate_and_by_event_time() {
    let env = Env::embedded();
    let started = Instant::now();
    env.ok(&["produce", "--simulate", "--count", "300", "--rate", "1000"]);
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "300 records at 1000/s take 0.3 s"
    );

    // HSI's first three rows are 1986-12-31, 1987-01-02 and 1987-01-05: five days of event time,
    // replayed at 10 days per second = 0.5 s.
    let hsi = shared_data("indexProcessed-HSI.csv");
    let started = Instant::now();
    let (stdout, _) = env.ok(&[
        "produce",
        "--source",
        path_str(&hsi),
        "--count",
        "3",
        "--realtime",
        "--speed",
        "864000",
    ]);
    assert!(stdout.contains("3 sent"), "{stdout}");
    assert!(
        started.elapsed() >= Duration::from_millis(490),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn clock_pacing_catches_up_on_the_past_then_follows_the_clock() {
    let env = Env::embedded();
    // Two symbols, a record each second from 10 s ago: 20 records at once, then 2 a second.
    let started = Instant::now();
    let (stdout, _) = env.ok(&[
        "produce",
        "--simulate",
        "--symbols",
        "2",
        "--interval",
        "1s",
        "--start",
        "now-10s",
        "--clock",
        "--count",
        "28",
    ]);
    let finished_us = chrono::Utc::now().timestamp_micros();
    assert!(stdout.contains("28 sent"), "{stdout}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the last 8 records are 4 s in the future: {:?}",
        started.elapsed()
    );
    let ts: Vec<i64> = env
        .values()
        .iter()
        .map(|v| json::decode(v.as_bytes()).unwrap().ts)
        .collect();
    assert_eq!(ts.len(), 28);
    let first = *ts.iter().min().unwrap();
    let started_us = finished_us - started.elapsed().as_micros() as i64;
    assert!(
        (started_us - 11_000_000..=started_us - 9_000_000).contains(&first),
        "the first record is 10 s before the start"
    );
    // Nothing went out before its time.
    assert!(
        ts.iter().all(|&t| t <= finished_us),
        "{ts:?} after {finished_us}"
    );
}

#[test]
fn loop_replays_past_the_end() {
    let env = Env::embedded();
    let hsi = shared_data("indexProcessed-HSI.csv");
    let (stdout, _) = env.ok(&[
        "produce",
        "--source",
        path_str(&hsi),
        "--loop",
        "--count",
        "12000",
    ]);
    assert!(stdout.contains("12000 sent"), "{stdout}");
    assert_eq!(env.values().len(), 12000);
}

#[test]
fn a_file_with_nothing_sendable_fails_and_says_why() {
    let env = Env::embedded();
    let f = env.dir.path().join("blank.csv");
    std::fs::write(
        &f,
        "Index,Date,Open,High,Low,Close,Adj Close,Volume,CloseUSD\n,,,,,,,,\n,,,,,,,,\n",
    )
    .unwrap();
    let out = env.run(&["produce", "--source", path_str(&f)]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stdout.contains("0 sent, 2 rejected: blank row (2)"),
        "{stdout}"
    );
    assert!(stderr.contains("nothing could be sent"), "{stderr}");
}

#[test]
fn user_errors_are_clear_and_do_not_panic() {
    let env = Env::embedded();
    let f = env.dir.path().join("amb.csv");
    std::fs::write(&f, "Ticker,Date,Close\nA,01/02/2020,1\nA,03/04/2020,2\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["produce", "--source", path_str(&f)],
            "dates are ambiguous",
        ),
        (
            vec!["produce", "--source", "/nonexistent.csv"],
            "/nonexistent.csv: No such file",
        ),
        (
            vec!["produce", "--source", path_str(&f), "--map", "symbol=Nope"],
            "--map symbol=Nope: no such column",
        ),
        (
            vec![
                "produce",
                "--source",
                path_str(&f),
                "--date-format",
                "sometimes",
            ],
            "--date-format",
        ),
        (
            vec!["produce", "--simulate", "--rate", "0"],
            "--rate must be a positive number",
        ),
        (
            vec!["produce", "--simulate", "-X", "acks=all"],
            "pass --brokers too",
        ),
        (
            vec![
                "--topic",
                "../../etc",
                "produce",
                "--simulate",
                "--count",
                "1",
            ],
            "invalid topic name",
        ),
        (vec!["--topic", "missing", "consume"], "does not exist"),
        (
            vec!["produce", "--simulate", "--start", "now+3h"],
            "--start \"now+3h\" is not an RFC 3339 time, a date, `now` or `now-3h`",
        ),
        (
            vec!["produce", "--simulate", "--start", "now-soon"],
            "--start \"now-soon\"",
        ),
        (
            vec![
                "produce",
                "--simulate",
                "--count",
                "1",
                "--transaction-span",
                "2s",
            ],
            "--transaction-span is for Kafka",
        ),
    ];
    for (args, want) in cases {
        let out = env.run(&args);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            stderr.contains(want),
            "{args:?}: {stderr:?} should mention {want:?} ({stdout})"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
    // With a day format, the same file replays.
    let (stdout, _) = env.ok(&["produce", "--source", path_str(&f), "--date-format", "mdy"]);
    assert!(stdout.contains("2 sent"), "{stdout}");
}

#[test]
fn consume_in_a_group_resumes_where_it_committed() {
    let env = Env::embedded();
    env.ok(&["produce", "--simulate", "--count", "1000"]);
    let (first, _) = env.ok(&["consume", "--group", "g", "--limit", "300", "--values"]);
    let (rest, _) = env.ok(&["consume", "--group", "g", "--values"]);
    let all = env.values();
    let first: Vec<&str> = first.lines().collect();
    let rest: Vec<&str> = rest.lines().collect();
    assert_eq!(first.len(), 300);
    assert_eq!(first.len() + rest.len(), all.len());
    let mut joined: Vec<&str> = first.iter().chain(&rest).copied().collect();
    let mut everything: Vec<&str> = all.iter().map(String::as_str).collect();
    joined.sort_unstable();
    everything.sort_unstable();
    assert_eq!(joined, everything, "nothing lost or repeated");
}
