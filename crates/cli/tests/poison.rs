//! Poison never stalls the sink: every message ends in the lake or in the dead letters with its reason,
//! on both buses, through the real binary. Messages are sent as they are with `produce --source
//! FILE.jsonl`, the way a user would try a sink with bad input.

mod common;

use std::collections::BTreeMap;

use common::{path_str, text, written, Env};

/// Every dead-letter line of the lake, in file order.
fn dead_letters(env: &Env) -> Vec<serde_json::Value> {
    let lake = env.open_lake();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for f in env.lake_files("_ticklake/dlq") {
        let bytes = rt.block_on(lake.get(&f)).unwrap();
        for line in std::str::from_utf8(&bytes).unwrap().lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

/// The long-symbol case of the issue: a CSV whose second row has a 300-character symbol. The sink
/// exits 0, the message is a dead letter with its reason, the good row is in the lake, and a second
/// run adds nothing.
fn long_symbol(env: &Env) {
    let csv = env.dir.path().join("long.csv");
    std::fs::write(
        &csv,
        format!(
            "Index,Date,Open,High,Low,Close,Adj Close,Volume,CloseUSD\n\
             GOOD,2020-01-02,1,2,0.5,1.5,1.5,10,1.5\n\
             {},2020-01-02,1,2,0.5,1.5,1.5,10,1.5\n",
            "X".repeat(300)
        ),
    )
    .unwrap();
    env.ok(&["-q", "produce", "--source", path_str(&csv)]);
    let (stdout, _) = env.ok(&["-q", "sink", "--once"]);
    assert_eq!(written(&stdout), 1, "{stdout}");
    assert!(stdout.contains(", 1 dead-lettered"), "{stdout}");
    let lake = env.lake_records();
    assert_eq!(lake.len(), 1);
    assert_eq!(lake[0].1.symbol, "GOOD");
    assert_eq!(lake[0].1.extra[0].0.as_ref(), "adj_close");
    let dead = dead_letters(env);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("field `symbol`: is too long: 300 bytes"),
        "{reason}"
    );
    assert!(dead[0]["value"]
        .as_str()
        .unwrap()
        .contains(&"X".repeat(300)));
    assert!(dead[0]["offset"].is_i64() && dead[0]["partition"].is_i64());

    let (stdout, _) = env.ok(&["-q", "sink", "--once"]);
    assert_eq!(written(&stdout), 0, "a second run adds nothing: {stdout}");
    assert_eq!(env.lake_records().len(), 1);
    assert_eq!(dead_letters(env).len(), 1);
}

#[test]
fn long_symbol_embedded() {
    long_symbol(&Env::embedded());
}

#[test]
fn long_symbol_kafka() {
    long_symbol(&Env::kafka());
}

/// Poison of every kind, sent as it is, between good messages: the good ones are in the lake, each bad
/// one is a dead letter whose reason names the problem, and the sink never stops.
fn poison(env: &Env, extra_produce: &[&str]) {
    let good = |sym: &str, close: f64| {
        format!(r#"{{"symbol":"{sym}","ts":"2024-01-02T10:00:00Z","close":{close}}}"#).into_bytes()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            br#"{"symbol":"A","ts":0,"close":1,"Close":2}"#.to_vec(),
            "field `close`: is given twice",
        ),
        (
            br#"{"symbol":1e300,"ts":0}"#.to_vec(),
            "field `symbol`: expected a string, got a number",
        ),
        (
            br#"{"symbol":"A","ts":"0000-12-31"}"#.to_vec(),
            "field `ts`: is outside the years 0001-9999",
        ),
        (
            br#"{"symbol":"A","ts":1e300}"#.to_vec(),
            "field `ts`: is outside the years 0001-9999",
        ),
        (
            br#"{"symbol":"A","ts":0,"close":NaN}"#.to_vec(),
            "not valid JSON",
        ),
        (
            br#"{"symbol":"A","ts":0,"close":"Infinity"}"#.to_vec(),
            "field `close`: expected a number",
        ),
        (
            br#"{"symbol":"A","ts":[0]}"#.to_vec(),
            "field `ts`: expected a timestamp, got an array",
        ),
        (
            b"{\"symbol\":\"A\xff\",\"ts\":0}".to_vec(),
            "not valid JSON",
        ),
        (
            br#"{"symbol":"","ts":0}"#.to_vec(),
            "field `symbol`: is empty",
        ),
        (
            br#"{"symbol":"A","symbol":"B","ts":0}"#.to_vec(),
            "field `symbol`: appears twice",
        ),
        (
            format!(
                r#"{{"symbol":"A","ts":0,"note":"{}"}}"#,
                "x".repeat(10 << 20)
            )
            .into_bytes(),
            "the message is 10485",
        ),
        (b"[1,2,3]".to_vec(), "expected a JSON object, got an array"),
    ];
    let mut file = Vec::new();
    let mut want_good = BTreeMap::new();
    for (i, (bad, _)) in cases.iter().enumerate() {
        let sym = format!("G{i}");
        file.extend_from_slice(&good(&sym, i as f64));
        file.push(b'\n');
        want_good.insert(sym, i as f64);
        file.extend_from_slice(bad);
        file.push(b'\n');
    }
    let path = env.dir.path().join("poison.jsonl");
    std::fs::write(&path, &file).unwrap();
    let mut args = vec!["-q"];
    args.extend_from_slice(extra_produce);
    args.extend_from_slice(&["produce", "--source", path_str(&path)]);
    let (stdout, _) = env.ok(&args);
    assert!(
        stdout.starts_with(&format!("{} sent", 2 * cases.len())),
        "{stdout}"
    );
    let (stdout, _) = env.ok(&["-q", "sink", "--once"]);
    assert_eq!(written(&stdout), cases.len() as u64, "{stdout}");

    let got: BTreeMap<String, f64> = env
        .lake_records()
        .into_iter()
        .map(|(_, r)| (r.symbol, r.close.unwrap()))
        .collect();
    assert_eq!(got, want_good, "every good message is in the lake");
    let dead = dead_letters(env);
    assert_eq!(
        dead.len(),
        cases.len(),
        "every bad message is a dead letter"
    );
    for (_, want) in &cases {
        assert!(
            dead.iter()
                .any(|d| d["reason"].as_str().unwrap().starts_with(want)),
            "no dead letter says {want:?}"
        );
    }
    // The non-UTF-8 message is kept byte for byte.
    let raw = dead
        .iter()
        .find(|d| d.get("value_base64").is_some())
        .expect("the non-UTF-8 message as base64");
    assert_eq!(raw["value_base64"], "eyJzeW1ib2wiOiJB/yIsInRzIjowfQ==");
    let (stdout, _) = env.ok(&["-q", "sink", "--once"]);
    assert_eq!(written(&stdout), 0);
}

#[test]
fn poison_embedded() {
    poison(&Env::embedded(), &[]);
}

#[test]
fn poison_kafka() {
    // The broker of the tests accepts messages up to 16 MiB (so the 10 MiB one reaches the sink).
    poison(&Env::kafka(), &["-X", "message.max.bytes=16777216"]);
}

/// Dead letters also go to a topic with --dlq-topic (Kafka Connect's dead-letter queue).
#[test]
fn dead_letters_go_to_a_topic_too() {
    let env = Env::kafka();
    let path = env.dir.path().join("m.jsonl");
    std::fs::write(
        &path,
        "{\"symbol\":\"A\",\"ts\":0,\"close\":1}\nnot json\n{\"ts\":0}\n",
    )
    .unwrap();
    env.ok(&["-q", "produce", "--source", path_str(&path)]);
    let dlq = format!("{}-dlq", env.topic);
    let (stdout, _) = env.ok(&["-q", "sink", "--once", "--dlq-topic", &dlq]);
    assert_eq!(written(&stdout), 1);
    let (stdout, _) = env.ok(&["--topic", &dlq, "consume", "--values"]);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["value"], "not json");
    assert!(lines[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("not valid JSON"));
    assert_eq!(lines[1]["reason"], "missing required field `symbol`");
    assert_eq!(lines[0]["topic"], env.topic.as_str());
    assert_eq!(lines[1]["offset"], lines[0]["offset"].as_i64().unwrap() + 1);
}

/// An extra column's type is the table's: a first batch with blank `adj_close` values does not make
/// it text, later numbers (also as numeric strings) are numbers, a value that is neither is a dead
/// letter, and `sum(adj_close)` works over all of it.
#[test]
fn blank_values_do_not_decide_a_column_type() {
    let env = Env::embedded();
    let write = |name: &str, lines: &[String]| {
        let path = env.dir.path().join(name);
        std::fs::write(&path, lines.join("\n")).unwrap();
        env.ok(&["-q", "produce", "--source", path_str(&path)]);
    };
    let day = |i: usize| format!("2024-01-{:02}", i + 1);
    let blank: Vec<String> = (0..3)
        .map(|i| {
            format!(
                r#"{{"symbol":"A","ts":"{}","close":1,"adj_close":""}}"#,
                day(i)
            )
        })
        .collect();
    write("blank.jsonl", &blank);
    env.ok(&["-q", "sink", "--once"]);
    let numbers: Vec<String> = (3..6)
        .map(|i| {
            let v = if i == 4 {
                format!("\"{i}.5\"")
            } else {
                format!("{i}.5")
            };
            format!(
                r#"{{"symbol":"A","ts":"{}","close":1,"adj_close":{v}}}"#,
                day(i)
            )
        })
        .chain([format!(
            r#"{{"symbol":"A","ts":"{}","close":1,"adj_close":"n/a"}}"#,
            day(7)
        )])
        .collect();
    write("numbers.jsonl", &numbers);
    let (stdout, _) = env.ok(&["-q", "sink", "--once"]);
    assert!(stdout.contains(", 1 dead-lettered"), "{stdout}");
    let (stdout, _) = env.ok(&[
        "query",
        "--format",
        "csv",
        "SELECT sum(adj_close) AS s, count(adj_close) AS n, count(*) AS rows FROM stock_topic",
    ]);
    assert_eq!(stdout.trim(), "s,n,rows\n13.5,3,6", "{stdout}");
    let (stdout, _) = env.ok(&["query", "--format", "csv", "DESCRIBE stock_topic"]);
    assert!(stdout.contains("adj_close,double"), "{stdout}");
    let dead = dead_letters(&env);
    assert_eq!(
        dead[0]["reason"],
        "column `adj_close` is double in this table; the text \"n/a\" is not"
    );
    let out = env.run(&[
        "query",
        "SELECT sum(adj_close) FROM stock_topic WHERE adj_close > 4",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
}
