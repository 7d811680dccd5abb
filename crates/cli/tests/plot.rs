//! `ticklake plot`: charts of the lake's bars, checked against DuckDB's bars on the same files.

mod common;

use common::*;

/// A lake of six simulated symbols, 1,000 rounds of 30 s from 2024-01-02 14:30 (about 8 hours).
fn simulated_lake() -> Env {
    let env = Env::embedded();
    produce_six_symbols(&env, 6_000, "2024-01-02T14:30:00Z");
    env.ok(&["sink", "--once", "-q"]);
    env
}

/// DuckDB's answer to `sql` over the view `t` of the lake's Parquet files.
fn duckdb(env: &Env, sql: &str) -> Vec<serde_json::Value> {
    let glob = format!(
        "{}/stock_topic/*/*/*.parquet",
        path_str(&env.dir.path().join("lake"))
    );
    let answers = reference(
        &["duckdb", &glob],
        &serde_json::to_string(&[sql]).unwrap(),
        &[],
    );
    answers[0].as_array().unwrap().clone()
}

/// The first of the lake's symbols.
fn first_symbol(env: &Env) -> String {
    duckdb(env, "SELECT min(symbol) FROM t")[0][0]
        .as_str()
        .unwrap()
        .to_owned()
}

/// DuckDB's hourly bars of `symbol` from the lake's files: (Unix seconds, rising) per bar.
fn duckdb_hourly_bars(env: &Env, symbol: &str) -> Vec<(i64, bool)> {
    let sql = format!(
        "SELECT epoch(time_bucket(INTERVAL '1 hour', ts))::BIGINT, arg_max(close, ts) >= arg_min(open, ts) \
         FROM t WHERE symbol = '{symbol}' GROUP BY 1 ORDER BY 1"
    );
    duckdb(env, &sql)
        .iter()
        .map(|row| (row[0].as_i64().unwrap(), row[1].as_bool().unwrap()))
        .collect()
}

/// The candle bodies of an SVG chart by colour: (rising, falling).
fn svg_bodies(svg: &str) -> (usize, usize) {
    let count = |fill: &str| {
        svg.lines()
            .filter(|l| l.starts_with("<rect") && l.contains(fill) && l.contains("opacity=\"1\""))
            .count()
    };
    (count("fill=\"#26A69A\""), count("fill=\"#EF5350\""))
}

#[test]
fn a_chart_has_duckdbs_bars() {
    let env = simulated_lake();
    let symbol = &first_symbol(&env);
    let expected = duckdb_hourly_bars(&env, symbol);
    assert!(expected.len() >= 8, "{} hourly bars", expected.len());
    let rising = expected.iter().filter(|(_, up)| *up).count();

    let svg = env.dir.path().join("chart.svg");
    let (_, stderr) = env.ok(&[
        "plot",
        "--symbol",
        symbol,
        "--interval",
        "1h",
        "--output",
        path_str(&svg),
    ]);
    assert!(
        stderr.contains(&format!("{} bars of {symbol} written", expected.len())),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(svg_bodies(&text), (rising, expected.len() - rising));
    assert!(
        text.contains(&format!("{symbol}, 1h bars, 2024-01-02 14:00 to")),
        "the title names the symbol, interval and span"
    );

    // --from and --to: the bars from the third (inclusive) to the sixth (exclusive).
    let (from, to) = (expected[2].0.to_string(), expected[5].0.to_string());
    let (_, stderr) = env.ok(&[
        "plot",
        "--symbol",
        symbol,
        "--interval",
        "60m",
        "--from",
        &from,
        "--to",
        &to,
        "-o",
        path_str(&svg),
    ]);
    assert!(stderr.contains(&format!("3 bars of {symbol}")), "{stderr}");
    let wanted = &expected[2..5];
    let up = wanted.iter().filter(|(_, up)| *up).count();
    assert_eq!(
        svg_bodies(&std::fs::read_to_string(&svg).unwrap()),
        (up, 3 - up)
    );

    // More bars than --max-bars: the newest, and a note saying so.
    let png = env.dir.path().join("chart.png");
    let (_, stderr) = env.ok(&[
        "plot",
        "--symbol",
        symbol,
        "--interval",
        "1h",
        "--max-bars",
        "4",
        "--width",
        "640",
        "--height",
        "360",
        "--output",
        path_str(&png),
    ]);
    assert!(stderr.contains(&format!("4 bars of {symbol}")), "{stderr}");
    assert!(stderr.contains("the newest 4"), "{stderr}");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let side = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!((side(16), side(20)), (640, 360));
}

#[test]
fn bad_arguments_are_named_and_write_nothing() {
    let env = simulated_lake();
    let symbol = &first_symbol(&env);
    let out = env.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let o = |name: &str| path_str(&out.join(name)).to_owned();
    let fails = |args: &[&str], says: &str| {
        let result = env.run(args);
        let (_, stderr) = text(&result);
        assert!(!result.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr:?} lacks {says:?}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    fails(
        &["plot", "--symbol", "NOPE", "-o", &o("a.png")],
        "no bars of NOPE in table stock_topic",
    );
    fails(
        &["plot", "--symbol", symbol, "-o", &o("a.gif")],
        "written as .png or .svg, not .gif",
    );
    fails(
        &["plot", "--symbol", &"X".repeat(300), "-o", &o("a.png")],
        "--symbol",
    );
    fails(
        &[
            "plot",
            "--symbol",
            symbol,
            "--interval",
            "2fortnights",
            "-o",
            &o("a.png"),
        ],
        "interval \"2fortnights\"",
    );
    fails(
        &[
            "plot",
            "--symbol",
            symbol,
            "--from",
            "2024-01-03",
            "--to",
            "2024-01-02",
            "-o",
            &o("a.png"),
        ],
        "--from must be before --to",
    );
    fails(
        &[
            "plot",
            "--symbol",
            symbol,
            "--from",
            "yesterday",
            "-o",
            &o("a.png"),
        ],
        "time \"yesterday\"",
    );
    fails(
        &[
            "plot",
            "--symbol",
            symbol,
            "--width",
            "5",
            "-o",
            &o("a.png"),
        ],
        "each side must be from 200 to 8000",
    );
    fails(
        &[
            "plot",
            "--symbol",
            symbol,
            "--table",
            "no_such",
            "-o",
            &o("a.png"),
        ],
        "no_such",
    );
    fails(
        &["plot", "--symbol", symbol, "-o", &o("missing/a.svg")],
        "cannot write",
    );
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "files were left"
    );
}
