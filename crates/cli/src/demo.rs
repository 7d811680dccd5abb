//! `ticklake demo`: the whole pipeline on the bundled sample, embedded, with no configuration.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Parser};
use ticklake_query::{write_output, OutputFormat};

use crate::options::{runtime, Global};
use crate::Cli;

/// The bundled sample: the Hang Seng index's daily bars from the seed's indexProcessed.csv.
const SAMPLE: &[u8] = include_bytes!("../../../data/indexProcessed-HSI.csv");
const SAMPLE_NAME: &str = "indexProcessed-HSI.csv";
const TOPIC: &str = "index-prices";
const TABLE: &str = "index_prices";

/// The live part of `demo --serve` uses every command's default topic (and so table), so `ticklake
/// query`, `serve` and `plot` read it with no options afterwards.
const LIVE_TOPIC: &str = "stock-topic";
const LIVE_SYMBOLS: &str = "8";
/// How far back the live feed's history starts (it catches up at full speed, then runs live).
const LIVE_HISTORY: &str = "now-3h";

/// Options of `ticklake demo`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Then keep going: a simulated market (8 symbols, one bar a second each, from 3 hours ago to
    /// now and on) streams into topic stock-topic, a sink writes it to the lake, and the dashboard
    /// and API serve it, until Ctrl-C.
    #[arg(long)]
    pub serve: bool,

    /// With --serve: the address to serve on (off loopback, set TICKLAKE_SERVE_TOKEN).
    #[arg(
        long,
        default_value = "127.0.0.1:8080",
        value_name = "ADDR",
        requires = "serve"
    )]
    pub listen: std::net::SocketAddr,
}

const QUERIES: &[(&str, &str)] = &[
    (
        "Yearly high, low and close (the ohlcv() helper makes bars of any interval)",
        "SELECT symbol, CAST(date_part('year', bar) AS INT) AS year, open, high, low, close
FROM ohlcv('index_prices', '1 year')
ORDER BY year DESC
LIMIT 10",
    ),
    (
        "The best and the worst days (a window function over the previous close)",
        "WITH daily AS (
  SELECT CAST(ts AS DATE) AS day, close,
         100 * (close / lag(close) OVER (PARTITION BY symbol ORDER BY ts) - 1) AS change_pct
  FROM index_prices
)
SELECT * FROM (
  (SELECT 'best' AS kind, day, close, round(change_pct, 2) AS change_pct
   FROM daily WHERE change_pct IS NOT NULL ORDER BY change_pct DESC LIMIT 5)
  UNION ALL
  (SELECT 'worst' AS kind, day, close, round(change_pct, 2) AS change_pct
   FROM daily WHERE change_pct IS NOT NULL ORDER BY change_pct ASC LIMIT 5)
) ORDER BY change_pct DESC",
    ),
    (
        "The 20-day moving average over the last 10 trading days",
        "SELECT CAST(ts AS DATE) AS day, close,
       round(avg(close) OVER (PARTITION BY symbol ORDER BY ts
                              ROWS BETWEEN 19 PRECEDING AND CURRENT ROW), 2) AS ma_20
FROM index_prices
ORDER BY ts DESC
LIMIT 10",
    ),
    (
        "Volume-weighted average price per year (the vwap() aggregate)",
        "SELECT CAST(date_part('year', ts) AS INT) AS year, round(vwap(close, volume), 2) AS vwap,
       sum(volume) AS volume
FROM index_prices
WHERE volume > 0
GROUP BY 1
ORDER BY 1 DESC
LIMIT 5",
    ),
];

/// Runs one `ticklake` command line as the user would type it, and shows it.
fn step(g: &Global, words: &[&str]) -> Result<()> {
    outln!("\n$ ticklake {}", words.join(" "));
    let mut argv = vec![
        "ticklake",
        "--lake",
        &g.lake,
        "--database",
        &g.database,
        "-q",
    ];
    let log_dir = g.log_dir().to_string_lossy().into_owned();
    argv.extend_from_slice(&["--log-dir", &log_dir]);
    let catalog_file = g
        .catalog_file
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    if let Some(f) = &catalog_file {
        argv.extend_from_slice(&["--catalog-file", f]);
    }
    argv.extend_from_slice(words);
    let cli = Cli::try_parse_from(&argv).context("the demo's own command line")?;
    let code = crate::dispatch(cli)?;
    if code != ExitCode::SUCCESS {
        bail!("`ticklake {}` failed", words.join(" "));
    }
    Ok(())
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    if g.brokers.is_some() || g.lake.contains("://") || g.catalog != "embedded" {
        bail!("the demo runs embedded: no --brokers, a local --lake and the embedded catalog");
    }
    let meta = Path::new(&g.lake).join("_ticklake").join("demo");
    std::fs::create_dir_all(&meta).with_context(|| format!("cannot create {}", meta.display()))?;
    let sample = meta.join(SAMPLE_NAME);
    std::fs::write(&sample, SAMPLE)
        .with_context(|| format!("cannot write the sample to {}", sample.display()))?;
    let sample = sample.to_string_lossy().into_owned();
    let rejects = meta.join("rejects.csv").to_string_lossy().into_owned();
    outln!(
        "ticklake demo: {SAMPLE_NAME} (the Hang Seng index, daily, {} KiB) -> embedded log -> lake {} -> embedded catalog -> SQL",
        SAMPLE.len() / 1024,
        g.lake
    );
    let bus = g.bus()?;
    if ticklake_bus::partition_count(&bus, TOPIC)?.is_some() {
        outln!("\n(topic {TOPIC} already holds the sample from an earlier demo: not producing it again)");
    } else {
        step(
            g,
            &[
                "produce",
                "--topic",
                TOPIC,
                "--source",
                &sample,
                "--rejects",
                &rejects,
            ],
        )?;
    }
    // Daily bars of one index: one folder per symbol (date folders would hold one row each).
    step(
        g,
        &[
            "sink",
            "--topic",
            TOPIC,
            "--table",
            TABLE,
            "--group",
            "ticklake-demo",
            "--partition-by",
            "symbol",
            "--once",
        ],
    )?;
    let io = runtime()?;
    let engine = crate::query::engine(
        g,
        &io,
        &crate::query::Limits {
            memory_limit: bytesize::ByteSize(ticklake_query::DEFAULT_MEMORY_LIMIT as u64),
            timeout: ticklake_query::DEFAULT_TIMEOUT,
            allow_location: Vec::new(),
        },
    )?;
    for (title, sql) in QUERIES {
        outln!("\n-- {title}\n{sql};");
        let result = io
            .block_on(engine.execute(sql))
            .map_err(|e| anyhow::anyhow!(e.render(sql)))?;
        write_output(&result, OutputFormat::Table, &mut std::io::stdout().lock())?;
    }
    outln!(
        "\nYour turn (the lake is in {lake}, its catalog in {lake}/_ticklake/catalog.sqlite):
  ticklake query \"SELECT * FROM ohlcv('{TABLE}', '1 month') ORDER BY bar DESC LIMIT 12\"
  ticklake query \"SHOW PARTITIONS {TABLE}\"
  ticklake sql          (an SQL shell with history; \\help shows examples)
DuckDB reads the same files: SELECT * FROM read_parquet('{lake}/{TABLE}/*/*.parquet', hive_partitioning = true);",
        lake = g.lake.trim_end_matches('/'),
    );
    if args.serve {
        serve_live(g, &args)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `demo --serve`: a simulated feed, a sink and the server, each a command on its own thread, until
/// Ctrl-C (or until one of them fails, which stops the others).
fn serve_live(g: &Global, args: &Args) -> Result<()> {
    let bus = g.bus()?;
    let start = if ticklake_bus::partition_count(&bus, LIVE_TOPIC)?.is_some() {
        outln!("\n(topic {LIVE_TOPIC} holds an earlier demo's feed: the feed goes on from now)");
        "now"
    } else {
        // Created here, so the server's live tail finds it from its first look.
        ticklake_bus::ensure_topic(&bus, LIVE_TOPIC, 4, 1)?;
        LIVE_HISTORY
    };
    outln!(
        "\nA live market: {LIVE_SYMBOLS} simulated symbols stream into topic {LIVE_TOPIC} (3 hours of history \
         first), a sink writes them to table {}, and the dashboard shows them. Ctrl-C stops it all.",
        ticklake_sink::default_table(LIVE_TOPIC)
    );
    let stop = crate::options::stop_flag()?;
    let listen = args.listen.to_string();
    let until_stopped = |words: &[&str]| {
        let result = step(g, words);
        // Whatever ends first (Ctrl-C, or a failure) ends the others.
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        result
    };
    std::thread::scope(|s| {
        let feed = s.spawn(|| {
            until_stopped(&[
                "produce",
                "--topic",
                LIVE_TOPIC,
                "--simulate",
                "--symbols",
                LIVE_SYMBOLS,
                "--interval",
                "1s",
                "--start",
                start,
                "--clock",
            ])
        });
        let sink = s.spawn(|| {
            until_stopped(&[
                "sink",
                "--topic",
                LIVE_TOPIC,
                "--group",
                "ticklake-demo-live",
            ])
        });
        let served = until_stopped(&["serve", "--topic", LIVE_TOPIC, "--listen", &listen]);
        let joined = |h: std::thread::ScopedJoinHandle<'_, Result<()>>| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a demo thread failed")))
        };
        let (feed, sink) = (joined(feed), joined(sink));
        served.and(feed).and(sink)
    })
}
