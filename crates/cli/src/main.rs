//! `ticklake`: stream a market feed through Kafka (or an embedded log) into a queryable Parquet lake.
//!
//! This crate only parses commands and wires the library crates together.

/// `println!` for the command's output that ends the process quietly when stdout is a closed pipe
/// (`ticklake … | head`), as a Unix tool does, instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            crate::stdout_failed(e)
        }
    }};
}

mod compact;
mod consume;
mod crawl;
mod demo;
mod options;
mod plot;
mod produce;
mod query;
mod serve;
mod sink;

use clap::{Parser, Subcommand};

/// Stream market data (CSV replays or a simulated market) through Kafka or an embedded durable log into
/// a partitioned Parquet lake on local disk or S3, exactly once, catalog it, and query it with SQL.
///
/// Without --brokers everything runs embedded: the topic is a durable log on local disk under the lake
/// folder and the catalog a SQLite file beside it, so `ticklake produce`, `ticklake sink` and
/// `ticklake query` in the same folder just work (`ticklake demo` shows it). With --brokers the same
/// commands use any Kafka-protocol broker; with --lake s3://bucket/prefix the lake is on S3; with
/// --catalog glue tables are registered in the AWS Glue Data Catalog, for Athena, Trino or Spark.
#[derive(Parser, Debug)]
#[command(
    name = "ticklake",
    version,
    propagate_version = true,
    max_term_width = 110
)]
struct Cli {
    #[command(flatten)]
    global: options::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replay a CSV file or simulate a market, and publish each record to the topic.
    Produce(produce::Args),
    /// Print the messages on the topic (or consume them as a member of a consumer group).
    Consume(consume::Args),
    /// Consume the topic into a partitioned Parquet lake (local folder or S3) or an Iceberg table,
    /// exactly once, and register its partitions in the catalog.
    Sink(sink::Args),
    /// Catalog the tables and partitions of a lake from its files, like a Glue crawler (Iceberg
    /// tables are registered in the lake's Iceberg catalog).
    Crawl(crawl::Args),
    /// Merge the small files of the lake's Iceberg tables into large sorted ones, expire old
    /// snapshots and delete the files nothing references any more.
    Compact(compact::Args),
    /// Run SQL over the lake's tables (the catalog's, and the Iceberg tables) and print the result.
    Query(query::QueryArgs),
    /// An SQL shell over the lake's tables, with history.
    Sql(query::ShellArgs),
    /// Serve the lake over HTTP: a read-only JSON API (SQL, tables, symbols, bars, latest prices)
    /// for dashboards, notebooks and scripts, with Prometheus metrics.
    Serve(serve::Args),
    /// Draw a candlestick chart with volume of one symbol from the lake, as PNG or SVG.
    Plot(plot::Args),
    /// The whole pipeline on the bundled sample, embedded, then a few answers from SQL.
    Demo(demo::Args),
}

/// Runs a parsed command line.
fn dispatch(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Produce(args) => produce::run(g, args),
        Command::Consume(args) => consume::run(g, args),
        Command::Sink(args) => sink::run(g, args),
        Command::Crawl(args) => crawl::run(g, args),
        Command::Compact(args) => compact::run(g, args),
        Command::Query(args) => query::query(g, args),
        Command::Sql(args) => query::shell(g, args),
        Command::Serve(args) => serve::run(g, args),
        Command::Plot(args) => plot::run(g, args),
        Command::Demo(args) => demo::run(g, args),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    options::init_logging(&cli.global);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) if is_closed_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// True when the error is a write to a closed pipe (the reader of our output went away).
fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Ends the process after a failed write to stdout: quietly for a closed pipe.
fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing the output: {e}");
    std::process::exit(1)
}
