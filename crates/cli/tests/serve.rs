//! `ticklake serve`, end to end through the real binary over HTTP: every route's answers checked
//! against DuckDB reading the same Parquet files, the limits (rows, time), read-only refusals, bad
//! requests answered with JSON errors and the right status, and the token a server off loopback needs.

mod common;

use std::io::{BufRead, BufReader};

use common::{path_str, produce_six_symbols, reference, Env, Served};
use serde_json::{json, Value};

/// Six symbols, a record every 30 s from 2024-01-02 14:30 UTC, sunk into the local lake.
fn simulated_lake(records: u64) -> Env {
    simulated_lake_on(Env::embedded(), records)
}

/// The same on the bus of `env` (the embedded log, or Apache Kafka).
fn simulated_lake_on(env: Env, records: u64) -> Env {
    produce_six_symbols(&env, records, "2024-01-02T14:30:00Z");
    env.ok(&["sink", "--once", "-q"]);
    env
}

/// DuckDB's answers to `queries` over the view `t` of the lake's Parquet files.
fn duckdb(env: &Env, queries: &[&str]) -> Vec<Value> {
    let glob = format!(
        "{}/stock_topic/*/*/*.parquet",
        path_str(&env.dir.path().join("lake"))
    );
    let answers = reference(
        &["duckdb", &glob],
        &serde_json::to_string(queries).unwrap(),
        &[],
    );
    answers.as_array().unwrap().clone()
}

/// An HTTP client that returns error statuses as responses.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
}

/// A response: status, content type, body.
struct Answer {
    status: u16,
    content_type: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an error answer: the status, a JSON body of that kind whose message contains `says`.
    fn assert_error(&self, status: u16, kind: &str, says: &str) -> Value {
        let body = self.json();
        assert_eq!(self.status, status, "{body}");
        assert_eq!(self.content_type, "application/json", "{body}");
        assert_eq!(body["kind"], kind, "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(says), "{message:?} lacks {says:?}");
        assert!(!message.contains("panicked"), "{message}");
        body
    }
}

/// Sends `POST /api/query` declaring a text body of `declared` bytes but sending only 1 KiB of it;
/// the answer's status and body (the server closes the connection after answering).
fn declare_big_body(addr: &str, declared: usize) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /api/query HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\n\
         Content-Length: {declared}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    stream.write_all(&[b'x'; 1024]).unwrap();
    let mut answer = Vec::new();
    // The server answers and closes; what came before a reset is the answer.
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut r = r.unwrap();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Answer {
        status: r.status().as_u16(),
        content_type,
        headers,
        body: r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .unwrap(),
    }
}

fn get(url: &str) -> Answer {
    answer(agent().get(url).call())
}

fn post_sql(url: &str, sql: &str, accept: &str) -> Answer {
    answer(
        agent()
            .post(url)
            .header("Accept", accept)
            .header("Content-Type", "application/json")
            .send(json!({ "sql": sql }).to_string()),
    )
}

/// Numbers equal to a relative 1e-9.
fn close_to(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

#[test]
fn every_route_answers_like_duckdb_on_the_same_files() {
    let env = simulated_lake(6_000);
    let served = Served::start(&env, &["--max-rows", "500"], &[]);

    let health = get(&served.url("/health"));
    assert_eq!(
        (health.status, health.json()["status"].clone()),
        (200, json!("ok"))
    );

    // The tables, with their columns.
    let tables = get(&served.url("/api/tables")).json();
    let table = tables["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "stock_topic")
        .unwrap_or_else(|| panic!("no stock_topic in {tables}"));
    let columns: Vec<&str> = table["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for c in [
        "symbol", "ts", "open", "high", "low", "close", "volume", "date",
    ] {
        assert!(columns.contains(&c), "{c} in {columns:?}");
    }

    let reference = duckdb(
        &env,
        &[
            "SELECT DISTINCT symbol FROM t ORDER BY symbol",
            "SELECT symbol, count(*), sum(volume) FROM t GROUP BY symbol ORDER BY symbol",
            "SELECT symbol, strftime(max(ts), '%Y-%m-%dT%H:%M:%S'), arg_max(close, ts), arg_max(volume, ts) \
             FROM t GROUP BY symbol ORDER BY symbol",
            "SELECT symbol, close FROM (SELECT symbol, close, row_number() OVER (PARTITION BY symbol ORDER BY ts DESC) AS n FROM t) \
             WHERE n = 2 ORDER BY symbol",
        ],
    );
    let symbols: Vec<Value> = reference[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(symbols.len(), 6);

    // The symbols.
    let ours = get(&served.url("/api/symbols")).json();
    assert_eq!(ours["symbols"], Value::Array(symbols.clone()), "{ours}");
    assert_eq!(ours["truncated"], false);

    // SQL, as JSON.
    let sql = "SELECT symbol, count(*) AS n, sum(volume) AS v FROM stock_topic GROUP BY symbol ORDER BY symbol";
    let a = post_sql(&served.url("/api/query"), sql, "application/json");
    assert_eq!(a.status, 200);
    let body = a.json();
    assert_eq!(body["row_count"], 6);
    assert_eq!(body["truncated"], false);
    assert_eq!(body["columns"][0]["name"], "symbol");
    for (row, expected) in body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(reference[1].as_array().unwrap())
    {
        assert_eq!(row["symbol"], expected[0]);
        assert_eq!(row["n"], expected[1]);
        assert!(close_to(&row["v"], &expected[2]), "{row} {expected}");
    }
    // The same as CSV, and as an Arrow IPC stream.
    let csv = post_sql(&served.url("/api/query"), sql, "text/csv");
    assert_eq!(csv.content_type, "text/csv; charset=utf-8");
    let text = String::from_utf8(csv.body.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "symbol,n,v");
    assert_eq!(lines.len(), 7, "{text}");
    assert!(lines[1].starts_with(&format!("{},", symbols[0].as_str().unwrap())));
    assert_eq!(csv.header("x-ticklake-rows"), Some("6"));
    let ipc = post_sql(
        &served.url("/api/query"),
        sql,
        "application/vnd.apache.arrow.stream",
    );
    assert_eq!(ipc.content_type, "application/vnd.apache.arrow.stream");
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc.body), None).unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 6);
    // A plain-text body is the SQL itself.
    let plain = answer(
        agent()
            .post(&served.url("/api/query"))
            .header("Content-Type", "text/plain")
            .send("SELECT count(*) AS n FROM stock_topic"),
    );
    assert_eq!(plain.json()["rows"], json!([{"n": 6000}]));

    // The row limit: the server's (500), and a request's own below it.
    let all = post_sql(
        &served.url("/api/query"),
        "SELECT * FROM stock_topic",
        "*/*",
    )
    .json();
    assert_eq!(
        (all["row_count"].clone(), all["truncated"].clone()),
        (json!(500), json!(true))
    );
    assert_eq!(all["rows"].as_array().unwrap().len(), 500);
    let few = answer(
        agent()
            .post(&served.url("/api/query"))
            .header("Content-Type", "application/json")
            .send(json!({"sql": "SELECT * FROM stock_topic", "max_rows": 7}).to_string()),
    )
    .json();
    assert_eq!(
        (few["row_count"].clone(), few["truncated"].clone()),
        (json!(7), json!(true))
    );
    let exact = post_sql(
        &served.url("/api/query"),
        "SELECT * FROM stock_topic LIMIT 500",
        "application/json",
    )
    .json();
    assert_eq!(
        (exact["row_count"].clone(), exact["truncated"].clone()),
        (json!(500), json!(false))
    );

    // The latest price of each symbol, its change from the record before, and its volume.
    let latest = get(&served.url("/api/latest")).json();
    let latest = latest["latest"].as_array().unwrap();
    assert_eq!(latest.len(), 6);
    let previous = reference[3].as_array().unwrap();
    for ((ours, theirs), prev) in latest
        .iter()
        .zip(reference[2].as_array().unwrap())
        .zip(previous)
    {
        assert_eq!(ours["symbol"], theirs[0]);
        assert!(
            ours["ts"]
                .as_str()
                .unwrap()
                .starts_with(theirs[1].as_str().unwrap()),
            "{ours} {theirs}"
        );
        assert!(close_to(&ours["price"], &theirs[2]), "{ours} {theirs}");
        assert!(close_to(&ours["volume"], &theirs[3]), "{ours} {theirs}");
        let change = theirs[2].as_f64().unwrap() - prev[1].as_f64().unwrap();
        assert!(close_to(&ours["change"], &json!(change)), "{ours} {prev}");
    }
    let one = get(&served.url(&format!(
        "/api/latest?symbol={}",
        symbols[2].as_str().unwrap()
    )))
    .json();
    assert_eq!(one["latest"].as_array().unwrap().len(), 1);
    assert_eq!(one["latest"][0]["symbol"], symbols[2]);
}

#[test]
fn bars_are_duckdbs_and_the_newest_are_kept() {
    // 5,000 rounds of 30 s: from 2024-01-02 14:30 to 2024-01-04 08:10.
    let env = simulated_lake(30_000);
    let served = Served::start(&env, &[], &[]);
    let symbol = duckdb(&env, &["SELECT min(symbol) FROM t"])[0][0][0]
        .as_str()
        .unwrap()
        .to_owned();
    let reference = duckdb(
        &env,
        &[&format!(
            "SELECT epoch(time_bucket(INTERVAL '1 hour', ts))::BIGINT, arg_min(open, ts), max(high), min(low), \
             arg_max(close, ts), sum(volume), count(*) FROM t WHERE symbol = '{symbol}' GROUP BY 1 ORDER BY 1"
        )],
    );
    let expected = reference[0].as_array().unwrap();
    assert!(expected.len() > 10, "{} hourly bars", expected.len());

    let bars = get(&served.url(&format!("/api/bars?symbol={symbol}&interval=1h"))).json();
    assert_eq!(bars["interval"], "1h");
    assert_eq!(bars["truncated"], false);
    let ours = bars["bars"].as_array().unwrap();
    assert_eq!(ours.len(), expected.len());
    for (bar, e) in ours.iter().zip(expected) {
        assert_eq!(bar["time"], e[0], "{bar} {e}");
        for (k, i) in [
            ("open", 1),
            ("high", 2),
            ("low", 3),
            ("close", 4),
            ("volume", 5),
        ] {
            assert!(close_to(&bar[k], &e[i]), "{k}: {bar} {e}");
        }
        assert_eq!(bar["rows"], e[6]);
    }

    // A limit keeps the newest bars, oldest first.
    let newest =
        get(&served.url(&format!("/api/bars?symbol={symbol}&interval=60m&limit=3"))).json();
    assert_eq!(newest["truncated"], true);
    let times: Vec<&Value> = newest["bars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["time"])
        .collect();
    let last: Vec<&Value> = expected[expected.len() - 3..]
        .iter()
        .map(|e| &e[0])
        .collect();
    assert_eq!(times, last);

    // From (inclusive) and to (exclusive), in any of the forms.
    let from = expected[2][0].as_i64().unwrap();
    let to = expected[5][0].as_i64().unwrap();
    let ranged = get(&served.url(&format!(
        "/api/bars?symbol={symbol}&interval=1h&from={from}&to={to}"
    )))
    .json();
    let times: Vec<i64> = ranged["bars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["time"].as_i64().unwrap())
        .collect();
    assert_eq!(times, vec![from, from + 3600, from + 7200]);
    let days = get(&served.url(&format!(
        "/api/bars?symbol={symbol}&interval=1d&from=2024-01-03&to=2024-01-04T00:00:00Z"
    )))
    .json();
    assert_eq!(days["bars"].as_array().unwrap().len(), 1, "{days}");
    assert_eq!(
        days["bars"][0]["bar"].as_str().unwrap().get(..10),
        Some("2024-01-03")
    );

    // A symbol without records has no bars; a strange one is only a literal.
    let none = get(&served.url("/api/bars?symbol=..%2F..%2Fetc&interval=1m"));
    assert_eq!(none.status, 200);
    assert_eq!(none.json()["bars"], json!([]));
    let quote = get(&served.url("/api/bars?symbol=x%27%3B%20DROP%20TABLE%20t%3B--"));
    assert_eq!(quote.status, 200);
}

#[test]
fn bad_requests_get_json_errors_naming_the_problem() {
    let env = simulated_lake(20_000);
    let served = Served::start(&env, &["--timeout", "1s"], &[]);
    let query = served.url("/api/query");

    for sql in [
        "DROP TABLE stock_topic",
        "DELETE FROM stock_topic WHERE symbol = 'A'",
        "CREATE TABLE x AS SELECT 1",
        "COPY stock_topic TO '/tmp/x.parquet'",
    ] {
        post_sql(&query, sql, "application/json").assert_error(
            403,
            "read_only",
            "queries are read-only",
        );
    }
    let located = post_sql(
        &query,
        "SELECT symbol\nFROM stock_topic WHERE",
        "application/json",
    )
    .assert_error(400, "sql", "");
    assert_eq!(located["line"], 2, "{located}");
    post_sql(&query, "SELECT * FROM nowhere", "application/json")
        .assert_error(400, "sql", "nowhere");
    post_sql(&query, "SELECT 1; SELECT 2", "application/json").assert_error(
        400,
        "bad_request",
        "one statement per request, this has 2",
    );
    post_sql(&query, "  ", "application/json").assert_error(400, "bad_request", "no SQL statement");
    post_sql(&query, "SELECT 'unterminated", "application/json").assert_error(400, "sql", "");
    // The time limit, also for joins that emit rows without reading more (8 * 10^12 here).
    let started = std::time::Instant::now();
    post_sql(
        &query,
        "SELECT sum(sqrt(a.close) * ln(b.close) + cos(a.open * b.high)) FROM stock_topic a CROSS JOIN stock_topic b",
        "application/json",
    )
    .assert_error(422, "timeout", "ran longer than its time limit (1s)");
    post_sql(
        &query,
        "SELECT sum(a.close * b.close * c.close) FROM stock_topic a, stock_topic b, stock_topic c",
        "application/json",
    )
    .assert_error(422, "timeout", "ran longer than its time limit (1s)");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // A function asked to build 75 GiB at once: it aborted the server; now the request is refused
    // and the server answers the next one.
    post_sql(
        &query,
        "SELECT cardinality(range(1, 10000000000))",
        "application/json",
    )
    .assert_error(
        422,
        "execution",
        "range(...) would build 74.5 GiB in one step",
    );
    post_sql(
        &query,
        "SELECT max(array_max(array_repeat(close, 100000000))) FROM stock_topic",
        "application/json",
    )
    .assert_error(422, "execution", "array_repeat(...) would build");

    // Bodies and formats.
    let raw = |content_type: &str, body: &[u8]| {
        answer(
            agent()
                .post(&query)
                .header("Content-Type", content_type)
                .send(body),
        )
    };
    raw("application/json", b"{\"sql\": 1}").assert_error(
        400,
        "bad_request",
        "the body is not a query request",
    );
    raw("application/json", b"{\"sql\": \"SELECT 1\", \"rows\": 1}").assert_error(
        400,
        "bad_request",
        "unknown field `rows`",
    );
    raw("application/json", &[0xff, 0xfe, 0x00]).assert_error(
        400,
        "bad_request",
        "not a query request",
    );
    raw("text/plain", &[0xff, 0xfe, 0x00]).assert_error(400, "bad_request", "not UTF-8");
    raw("image/png", b"SELECT 1").assert_error(415, "unsupported_media_type", "application/json");
    // A body over the limit is refused from its declared length, before it is sent: the request
    // declares 2 MiB and sends only its first KiB. (Sending all of it races the server's close: the
    // client can get a broken pipe instead of the answer.)
    let (status, body) = declare_big_body(served.base.trim_start_matches("http://"), 2 << 20);
    assert_eq!(status, 413, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["kind"], "payload_too_large", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("at most 1048576 bytes"),
        "{body}"
    );
    post_sql(&query, "SELECT 1", "text/html").assert_error(406, "not_acceptable", "text/csv");

    // Market routes.
    let bad = |path: &str, says: &str| {
        get(&served.url(path)).assert_error(400, "bad_request", says);
    };
    bad("/api/bars", "the symbol is missing");
    bad(
        "/api/bars?symbol=A&interval=1fortnight",
        "interval \"1fortnight\"",
    );
    bad("/api/bars?symbol=A&interval=0m", "the count must be from 1");
    bad("/api/bars?symbol=A&from=yesterday", "time \"yesterday\"");
    bad(
        "/api/bars?symbol=A&from=2024-01-03&to=2024-01-02",
        "from must be before to",
    );
    bad("/api/bars?symbol=A&limit=-1", "bad query parameters");
    bad("/api/bars?symbol=A&colour=red", "unknown field `colour`");
    bad(
        &format!("/api/bars?symbol={}", "A".repeat(300)),
        "symbol: is too long",
    );
    bad(
        &format!("/api/latest?table={}", "t".repeat(300)),
        "longer than 255",
    );
    // A table queries do not see is not there: 404, naming it and where the tables are listed.
    for route in ["/api/bars?symbol=A&", "/api/symbols?", "/api/latest?"] {
        get(&served.url(&format!("{route}table=nowhere"))).assert_error(
            404,
            "not_found",
            "no table \"nowhere\" in database ticklake: GET /api/tables lists the tables",
        );
    }

    // Routes and methods.
    get(&served.url("/api/nothing")).assert_error(404, "not_found", "no route /api/nothing");
    answer(agent().delete(&query).call()).assert_error(
        405,
        "method_not_allowed",
        "DELETE is not allowed on /api/query",
    );

    // The OpenAPI description lists every route; metrics count the requests above.
    let openapi = get(&served.url("/api/openapi.json")).json();
    for route in [
        "/api/query",
        "/api/tables",
        "/api/symbols",
        "/api/bars",
        "/api/latest",
        "/metrics",
        "/health",
    ] {
        assert!(openapi["paths"].get(route).is_some(), "{route}");
    }
    let metrics = String::from_utf8(get(&served.url("/metrics")).body).unwrap();
    assert!(
        metrics.contains("ticklake_http_requests_total{route=\"/api/query\",status=\"403\"} 4"),
        "{metrics}"
    );
    assert!(!served.stderr.lock().unwrap().contains("panicked"));
}

#[test]
fn off_loopback_a_token_is_required_and_kept_secret() {
    let env = simulated_lake(100);
    let refused = env.run(&["serve", "--listen", "0.0.0.0:0"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without a token"),
        "{stderr}"
    );
    let short = env.run(&["serve", "--listen", "0.0.0.0:0", "--token", "abc"]);
    assert!(String::from_utf8_lossy(&short.stderr).contains("the token is too short"));

    let token = "s3cr3t-t0ken-0123456789abcdef";
    let served = Served::start(
        &env,
        &["--listen", "0.0.0.0:0"],
        &[("TICKLAKE_SERVE_TOKEN", token)],
    );
    assert_eq!(get(&served.url("/health")).status, 200);
    get(&served.url("/api/tables")).assert_error(401, "unauthorized", "Authorization: Bearer");
    let wrong = answer(
        agent()
            .get(&served.url("/api/tables"))
            .header("Authorization", "Bearer not-the-token-at-all")
            .call(),
    );
    wrong.assert_error(401, "unauthorized", "not this server's");
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
    let right = answer(
        agent()
            .get(&served.url("/api/tables"))
            .header("Authorization", format!("Bearer {token}"))
            .call(),
    );
    assert_eq!(right.status, 200);
    assert_eq!(right.json()["tables"][0]["name"], "stock_topic");
    let sql = answer(
        agent()
            .post(&served.url("/api/query"))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .send(json!({"sql": "SELECT count(*) AS n FROM stock_topic"}).to_string()),
    );
    assert_eq!(sql.json()["rows"], json!([{"n": 100}]));
    assert!(!served.stderr.lock().unwrap().contains(token));
    // Nor does --help show the variable's value.
    let help = env
        .command(&["serve", "--help"])
        .env("TICKLAKE_SERVE_TOKEN", token)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains(token));
}

/// Reads server-sent events from `url` until `done` says so (or 60 s pass): each event's name and data.
fn read_events(
    url: &str,
    mut done: impl FnMut(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into();
    let response = agent.get(url).call().unwrap();
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let reader = BufReader::new(response.into_body().into_reader());
    let mut events = Vec::new();
    let (mut name, mut data) = (String::new(), String::new());
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_owned();
        } else if let Some(d) = line.strip_prefix("data: ") {
            data.push_str(d);
        } else if line.is_empty() && !name.is_empty() {
            events.push((std::mem::take(&mut name), std::mem::take(&mut data)));
            if done(&events) {
                break;
            }
        }
    }
    events
}

/// How many records the `bars` events carry.
fn pushed_rows(events: &[(String, String)]) -> u64 {
    events
        .iter()
        .filter(|(n, _)| n == "bars")
        .flat_map(|(_, d)| serde_json::from_str::<Vec<Value>>(d).unwrap())
        .map(|b| b["rows"].as_u64().unwrap())
        .sum()
}

/// The records on the topic, by (symbol, ts): (close, volume).
fn records_on_topic(env: &Env) -> std::collections::HashMap<(String, i64), (f64, f64)> {
    let (stdout, _) = env.ok(&["consume", "--values"]);
    stdout
        .lines()
        .map(|l| {
            let r = ticklake_model::json::decode(l.as_bytes()).unwrap();
            ((r.symbol, r.ts), (r.close.unwrap(), r.volume.unwrap()))
        })
        .collect()
}

/// 2025-03-03T10:00:00Z in µs since the epoch.
const START_US: i64 = 1_740_996_000_000_000;

/// Half a second from now (once a subscriber of `/api/live` is in), `count` records of six
/// symbols, one per symbol per second from `start`, produced in a thread; join it for the
/// producer's output.
fn produce_live_soon(
    env: &Env,
    count: u64,
    start: &str,
) -> std::thread::JoinHandle<std::process::Output> {
    let mut produce = env.command(&[
        "produce",
        "--simulate",
        "--count",
        &count.to_string(),
        "--symbols",
        "6",
        "--interval",
        "1s",
        "--start",
        start,
        "-q",
    ]);
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        produce.output().unwrap()
    })
}

/// Asserts the producer of [`produce_live_soon`] succeeded.
fn produced(producer: std::thread::JoinHandle<std::process::Output>) {
    let out = producer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_live_tail_pushes_records_as_they_stream() {
    live_tail_pushes(Env::embedded());
}

#[test]
fn the_live_tail_pushes_records_as_they_stream_on_kafka() {
    live_tail_pushes(Env::kafka());
}

fn live_tail_pushes(env: Env) {
    let env = simulated_lake_on(env, 60);
    let served = Served::start(&env, &[], &[]);
    let url = served.url("/api/live");
    // Once the page is subscribed: 600 records, 6 symbols, one record per symbol per second.
    let producer = produce_live_soon(&env, 600, "2025-03-03T10:00:00Z");
    let events = read_events(&url, |e| pushed_rows(e) >= 600);
    produced(producer);
    assert_eq!(events[0].0, "ready");
    assert_eq!(pushed_rows(&events), 600, "{events:?}");
    // Every bar is one record (one per symbol per second), with the record's close and volume; the
    // records sent before the subscription (the lake's 60) are not pushed.
    let sent = records_on_topic(&env);
    let mut seen = std::collections::HashSet::new();
    for (_, data) in events.iter().filter(|(n, _)| n == "bars") {
        for bar in serde_json::from_str::<Vec<Value>>(data).unwrap() {
            let key = (
                bar["symbol"].as_str().unwrap().to_owned(),
                bar["ts"].as_i64().unwrap(),
            );
            let (close, volume) = sent[&key];
            assert_eq!(bar["rows"], 1, "{bar}");
            assert_eq!(bar["time"].as_i64().unwrap(), key.1 / 1_000_000);
            assert!(close_to(&bar["close"], &json!(close)), "{bar}");
            assert!(close_to(&bar["volume"], &json!(volume)), "{bar}");
            assert!(key.1 >= START_US, "{bar}");
            seen.insert(key);
        }
    }
    assert_eq!(seen.len(), 600);

    // One symbol only.
    let symbol = seen.iter().next().unwrap().0.clone();
    let producer = produce_live_soon(&env, 60, "2025-03-04T10:00:00Z");
    let events = read_events(&format!("{url}?symbol={symbol}"), |e| pushed_rows(e) >= 10);
    produced(producer);
    for (_, data) in events.iter().filter(|(n, _)| n == "bars") {
        for bar in serde_json::from_str::<Vec<Value>>(data).unwrap() {
            assert_eq!(bar["symbol"].as_str().unwrap(), symbol);
        }
    }
    assert_eq!(pushed_rows(&events), 10);
    get(&format!("{url}?colour=red")).assert_error(400, "bad_request", "unknown field `colour`");
}

/// Seconds since the Unix epoch, now.
fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The seconds since the epoch of an RFC 3339 time in an answer.
fn epoch_s(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap_or_else(|e| panic!("{v}: {e}"))
        .timestamp()
}

#[test]
fn demo_serve_streams_a_live_market_until_stopped() {
    let env = Env::embedded();
    let started = now_s();
    let served = Served::spawn(&env, &["demo", "--serve", "--listen", "127.0.0.1:0"], &[]);
    // The board fills with the simulator's 8 symbols, each with a price from the last seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let board = loop {
        let answer = get(&served.url("/api/latest"));
        if answer.status == 200 {
            let board = answer.json();
            let rows = board["latest"].as_array().unwrap().clone();
            if rows.len() == 8 && rows.iter().all(|r| epoch_s(&r["ts"]) >= now_s() - 15) {
                assert_eq!(board["table"], "stock_topic", "{board}");
                break rows;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no live board of 8 symbols within 180 s: {}\n{}",
            String::from_utf8_lossy(&answer.body),
            served.stderr.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    // Three hours of history went into the lake first: about 180 one-minute bars per symbol, the
    // oldest three hours before the demo started, the newest now.
    let symbol = board[0]["symbol"].as_str().unwrap().to_owned();
    let bars = get(&served.url(&format!("/api/bars?symbol={symbol}&interval=1m"))).json();
    let bars = bars["bars"].as_array().unwrap();
    assert!((178..=200).contains(&bars.len()), "{} bars", bars.len());
    let oldest = bars[0]["time"].as_i64().unwrap();
    assert!(
        (started - 3 * 3600 - 120..=started - 3 * 3600 + 60).contains(&oldest),
        "the oldest bar is at {oldest}, the demo started at {started}"
    );
    assert!(bars.last().unwrap()["time"].as_i64().unwrap() >= now_s() - 180);
    // The feed goes on as the clock does: the symbol's price moves on.
    let first_seen = epoch_s(&board[0]["ts"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let rows = get(&served.url("/api/latest")).json()["latest"].clone();
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["symbol"] == symbol.as_str())
            .unwrap()
            .clone();
        if epoch_s(&row["ts"]) >= first_seen + 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{row} did not move on"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // SIGTERM stops the feed, the sink (which commits what it holds) and the server cleanly.
    let stderr = served.stderr.clone();
    let status = served.stop();
    assert!(status.success(), "{status}: {}", stderr.lock().unwrap());
    let glob = format!(
        "{}/stock_topic/*/*/*.parquet",
        path_str(&env.dir.path().join("lake"))
    );
    let answers = reference(
        &["duckdb", &glob],
        &serde_json::to_string(&[
            "SELECT count(DISTINCT symbol) AS symbols, count(*) AS records, \
             (SELECT count(*) FROM (SELECT DISTINCT symbol, ts FROM t)) AS distinct_records, \
             epoch(min(ts))::BIGINT AS oldest, epoch(max(ts))::BIGINT AS newest FROM t",
        ])
        .unwrap(),
        &[],
    );
    // symbols, records, distinct records, oldest, newest
    let lake: Vec<i64> = answers[0][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let [symbols, records, distinct, oldest, newest] = lake[..] else {
        panic!("{lake:?}")
    };
    assert_eq!(symbols, 8, "{lake:?}");
    assert_eq!(records, distinct, "no record twice: {lake:?}");
    // One record a second per symbol from three hours back to the stop, all of them in the lake (but
    // for the last second or two: the feed may send a few more as the sink stops; they stay on the
    // topic for the next run).
    let span = newest - oldest + 1;
    assert!((8 * (span - 2)..=8 * span).contains(&records), "{lake:?}");
    assert!(newest >= first_seen + 3, "{lake:?}");
}

/// Runs schemathesis (every check, a fixed seed) against a server; its report on failure.
fn schemathesis(served: &Served, extra: &[&str]) {
    let schemathesis = std::env::var("TICKLAKE_TEST_SCHEMATHESIS").expect(
        "TICKLAKE_TEST_SCHEMATHESIS is not set: run scripts/test.sh, which installs schemathesis",
    );
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/schemathesis/schemathesis.toml");
    // Hypothesis keeps a folder of its own where it runs: not in the source tree.
    let scratch = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(schemathesis)
        .current_dir(scratch.path())
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .args(["run", &served.url("/api/openapi.json")])
        .args(["--checks", "all", "--max-examples", "40", "--seed", "42"])
        .args(["--request-timeout", "20", "--workers", "1"])
        .args(extra)
        .output()
        .unwrap();
    let (stdout, stderr) = common::text(&out);
    assert!(
        out.status.success(),
        "schemathesis found answers that differ from /api/openapi.json:\n{stdout}\n{stderr}\nserver:\n{}",
        served.stderr.lock().unwrap()
    );
    // It ran every route.
    assert!(stdout.contains("Tested: 8"), "{stdout}");
}

#[test]
fn the_api_answers_as_its_openapi_description_says() {
    let env = simulated_lake(600);
    let served = Served::start(&env, &[], &[]);
    schemathesis(&served, &[]);
    drop(served);

    // Off loopback, with a token: schemathesis also checks that a request without it, or with a
    // wrong one, is refused.
    let token = "schemathesis-token-0123456789";
    let served = Served::start(
        &env,
        &["--listen", "0.0.0.0:0"],
        &[("TICKLAKE_SERVE_TOKEN", token)],
    );
    schemathesis(
        &served,
        &["--header", &format!("Authorization: Bearer {token}")],
    );
}

#[test]
fn a_table_sunk_after_the_server_started_answers_at_once() {
    let env = simulated_lake(60);
    // Refreshing only every hour: the table is found because a miss re-reads the catalog.
    let served = Served::start(&env, &["--refresh-every", "1h"], &[]);
    get(&served.url("/api/symbols?table=later_topic")).assert_error(
        404,
        "not_found",
        "later_topic",
    );
    env.ok(&[
        "--topic",
        "later-topic",
        "produce",
        "--simulate",
        "--count",
        "30",
        "--symbols",
        "3",
        "-q",
    ]);
    env.ok(&["--topic", "later-topic", "sink", "--once", "-q"]);
    let answer = get(&served.url("/api/symbols?table=later_topic"));
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["symbols"].as_array().unwrap().len(), 3);
}

#[test]
fn serves_a_lake_on_s3_registered_in_glue_fed_through_kafka() {
    let env = Env::kafka().with_s3_lake();
    let db = format!("serve_{}", env.topic.replace('-', "_"));
    let glue = ["--catalog", "glue", "--database", db.as_str()];
    produce_six_symbols(&env, 600, "2024-01-02T14:30:00Z");
    env.ok(&[&glue[..], &["sink", "--once", "-q"]].concat());
    let served = Served::spawn(
        &env,
        &[&glue[..], &["serve", "--listen", "127.0.0.1:0"]].concat(),
        &[],
    );
    let table = env.table();
    let count = |symbol: Option<&str>| -> i64 {
        let filter = symbol.map_or(String::new(), |s| format!(" WHERE symbol = '{s}'"));
        let answer = post_sql(
            &served.url("/api/query"),
            &format!("SELECT count(*) AS n FROM {table}{filter}"),
            "application/json",
        );
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        answer.json()["rows"][0]["n"].as_i64().unwrap()
    };
    assert_eq!(count(None), 600);
    let latest = get(&served.url("/api/latest")).json();
    let board = latest["latest"].as_array().unwrap();
    assert_eq!(board.len(), 6, "{latest}");
    let symbol = board[0]["symbol"].as_str().unwrap().to_owned();
    let bars = get(&served.url(&format!("/api/bars?symbol={symbol}&interval=1h"))).json();
    let rows: i64 = bars["bars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["rows"].as_i64().unwrap())
        .sum();
    assert_eq!(rows, count(Some(&symbol)), "{bars}");

    // The live tail reads Kafka; a later sink's files answer at once (partitions are read per query).
    let producer = produce_live_soon(&env, 60, "2025-03-03T10:00:00Z");
    let events = read_events(&served.url("/api/live"), |e| pushed_rows(e) >= 60);
    produced(producer);
    assert_eq!(pushed_rows(&events), 60);
    env.ok(&[&glue[..], &["sink", "--once", "-q"]].concat());
    assert_eq!(count(None), 660);
}

/// Sinks daily closes into `env`'s lake: for each `(symbol, month, days, base)`, one record on each of
/// days 1 to `days` of `month` (`YYYY-MM`), every price `base + day`, volume `day`.
fn sink_daily_closes(env: &Env, series: &[(&str, &str, u32, u32)]) {
    let mut csv = String::from("Index,Date,Open,High,Low,Close,Adj Close,Volume,CloseUSD\n");
    for (symbol, month, days, base) in series {
        for day in 1..=*days {
            let close = base + day;
            csv.push_str(&format!(
                "{symbol},{month}-{day:02},{close},{close},{close},{close},{close},{day},{close}\n"
            ));
        }
    }
    let file = env.dir.path().join("daily.csv");
    std::fs::write(&file, csv).unwrap();
    env.ok(&["-q", "produce", "--source", file.to_str().unwrap()]);
    env.ok(&["-q", "sink", "--once"]);
}

#[test]
fn latest_and_symbols_read_only_what_they_need() {
    // Daily closes: A and B for ten days of 2024 (close 100 + day, 200 + day), C for five days of
    // 2023-06 (50 + day), then C stopped trading.
    let env = Env::embedded();
    sink_daily_closes(
        &env,
        &[
            ("A", "2024-01", 10, 100),
            ("B", "2024-01", 10, 200),
            ("C", "2023-06", 5, 50),
        ],
    );

    // Every file a symbol's latest record and the one before it cannot be in is made unreadable:
    // A's and B's first eight days, C's first three.
    let table_dir = env.dir.path().join("lake").join(env.table());
    let mut spoiled = 0;
    for (symbol, month, days) in [
        ("A", "2024-01", 8),
        ("B", "2024-01", 8),
        ("C", "2023-06", 3),
    ] {
        for day in 1..=days {
            let folder = table_dir.join(format!("date={month}-{day:02}/symbol={symbol}"));
            for file in std::fs::read_dir(&folder).unwrap() {
                std::fs::write(file.unwrap().path(), b"not parquet").unwrap();
                spoiled += 1;
            }
        }
    }
    assert_eq!(spoiled, 19);

    let served = Served::start(&env, &[], &[]);
    let full_scan = post_sql(
        &served.url("/api/query"),
        "SELECT sum(volume) FROM stock_topic",
        "application/json",
    );
    assert_ne!(
        full_scan.status, 200,
        "the spoiled files are read by a full scan"
    );
    let latest = get(&served.url("/api/latest")).json();
    let board: Vec<(String, f64, f64, String)> = latest["latest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["symbol"].as_str().unwrap().to_owned(),
                r["price"].as_f64().unwrap(),
                r["change"].as_f64().unwrap(),
                r["ts"].as_str().unwrap()[..10].to_owned(),
            )
        })
        .collect();
    let row = |s: &str, p: f64, d: &str| (s.to_owned(), p, 1.0, d.to_owned());
    assert_eq!(
        board,
        [
            row("A", 110.0, "2024-01-10"),
            row("B", 210.0, "2024-01-10"),
            row("C", 55.0, "2023-06-05")
        ],
        "{latest}"
    );
    let c = get(&served.url("/api/latest?symbol=C")).json();
    assert_eq!(c["latest"][0]["price"].as_f64(), Some(55.0), "{c}");
    assert_eq!(c["latest"][0]["change"].as_f64(), Some(1.0), "{c}");

    // The symbols are the partitions': no file is read.
    let symbols = get(&served.url("/api/symbols")).json();
    assert_eq!(
        (&symbols["symbols"], &symbols["truncated"]),
        (&json!(["A", "B", "C"]), &json!(false))
    );
    let two = Served::start(&env, &["--max-rows", "2"], &[]);
    let symbols = get(&two.url("/api/symbols")).json();
    assert_eq!(
        (&symbols["symbols"], &symbols["truncated"]),
        (&json!(["A", "B"]), &json!(true))
    );
}

#[test]
fn hive_default_partitions_are_null_on_every_route() {
    // Daily closes of A and B for three days of 2024-01 (close 100 + day, 200 + day).
    let env = Env::embedded();
    sink_daily_closes(&env, &[("A", "2024-01", 3, 100), ("B", "2024-01", 3, 200)]);

    // Another writer's folders in Hive's default partition, which queries read as NULL: a copy of
    // A's 2024-01-02 file with no symbol, and a copy of B's 2024-01-03 file, moved a day later, with
    // no date.
    let table_dir = env.dir.path().join("lake").join(env.table());
    let copy = |from: &str, to: &str| {
        let to = table_dir.join(to);
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(table_dir.join(from)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    };
    copy(
        "date=2024-01-02/symbol=A",
        "date=2024-01-02/symbol=__HIVE_DEFAULT_PARTITION__",
    );
    copy(
        "date=2024-01-03/symbol=B",
        "date=__HIVE_DEFAULT_PARTITION__/symbol=B",
    );
    let (out, _) = env.ok(&["crawl"]);
    assert!(out.contains("2 new partitions"), "{out}");

    let served = Served::start(&env, &[], &[]);
    let sql = |q: &str| {
        let a = post_sql(&served.url("/api/query"), q, "application/json");
        assert_eq!(a.status, 200, "{q}: {}", String::from_utf8_lossy(&a.body));
        a.json()["rows"].clone()
    };
    // The symbols are those SQL sees, without the marker.
    assert_eq!(
        sql("SELECT DISTINCT symbol FROM stock_topic WHERE symbol IS NOT NULL ORDER BY symbol"),
        json!([{"symbol": "A"}, {"symbol": "B"}])
    );
    let symbols = get(&served.url("/api/symbols")).json();
    assert_eq!(symbols["symbols"], json!(["A", "B"]), "{symbols}");

    // B's rows of no date may be its newest, so they are read: its latest price is its newest day's
    // close either way, and the board matches the SQL of it over the whole table.
    let latest = get(&served.url("/api/latest")).json();
    let board: Vec<(Value, Value)> = latest["latest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["symbol"].clone(), r["price"].clone()))
        .collect();
    assert_eq!(
        board,
        [
            (json!("A"), json!(103.0)),
            (json!("B"), json!(203.0)),
            (Value::Null, json!(102.0))
        ],
        "{latest}"
    );
    let b = get(&served.url("/api/latest?symbol=B")).json();
    assert_eq!(b["latest"][0]["price"], json!(203.0), "{b}");
    assert_eq!(b["latest"][0]["change"], json!(0.0), "{b}");
}
