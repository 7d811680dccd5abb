//! `ticklake`: stream a market feed through Kafka (or an embedded log) into a queryable Parquet lake.
//!
//! This crate only parses commands and wires the library crates together.

mod consume;
mod options;
mod produce;
mod sink;

use clap::{Parser, Subcommand};

/// Stream market data (CSV replays or a simulated market) through Kafka or an embedded durable log into
/// a partitioned Parquet lake on local disk or S3, exactly once.
///
/// Without --brokers everything runs embedded: the topic is a durable log on local disk under the lake
/// folder, so `ticklake produce` then `ticklake sink` in the same folder just work. With --brokers the
/// same commands use any Kafka-protocol broker; with --lake s3://bucket/prefix the lake is on S3.
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
    /// Consume the topic into a partitioned Parquet lake (local folder or S3), exactly once.
    Sink(sink::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    options::init_logging(&cli.global);
    let result = match cli.command {
        Command::Produce(args) => produce::run(&cli.global, args),
        Command::Consume(args) => consume::run(&cli.global, args),
        Command::Sink(args) => sink::run(&cli.global, args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
