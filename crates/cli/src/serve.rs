//! `ticklake serve`: the lake over HTTP (see the `ticklake-serve` crate).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use ticklake_serve::{LiveTopic, ServeConfig, Server};

use crate::options::{runtime, stop_flag, Global};
use crate::query::Limits;

/// Options of `ticklake serve`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The address to listen on. Anything but a loopback address needs --token.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// The bearer token every request but /health must carry (Authorization: Bearer <token>); at
    /// least 16 characters, required off loopback. Keep it out of the command line: set
    /// TICKLAKE_SERVE_TOKEN instead.
    #[arg(
        long,
        env = "TICKLAKE_SERVE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// The table /api/symbols, /api/bars and /api/latest read when a request names none [default:
    /// the topic's table].
    #[arg(long)]
    pub table: Option<String>,

    /// The most rows one answer holds; a query with more is cut there and marked truncated.
    #[arg(long, default_value_t = 10_000, value_name = "ROWS")]
    pub max_rows: usize,

    /// Queries that run at once; more wait for a turn.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub max_queries: usize,

    /// Memory the server's queries may hold together for sorts, joins and aggregations.
    #[arg(long, default_value = "1GiB", value_name = "SIZE")]
    pub memory_limit: bytesize::ByteSize,

    /// Stop a query that runs longer than this.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: std::time::Duration,

    /// Re-read the catalog this often, so new tables answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub refresh_every: std::time::Duration,

    /// Do not read the topic for GET /api/live (the live tail reads it from its end, in no group).
    #[arg(long)]
    pub no_live: bool,

    /// Also read catalog tables in this local folder (file:// URL or path). Repeatable.
    #[arg(long, value_name = "FOLDER")]
    pub allow_location: Vec<String>,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot record metrics")?;
    let bus = g.bus()?;
    let stop = stop_flag()?;
    let io = runtime()?;
    let limits = Limits {
        memory_limit: args.memory_limit,
        timeout: args.timeout,
        allow_location: args.allow_location.clone(),
    };
    let engine = Arc::new(crate::query::engine(g, &io, &limits)?);
    let config = ServeConfig {
        listen: args.listen,
        token: args.token,
        max_rows: args.max_rows,
        max_concurrent_queries: args.max_queries,
        table: args
            .table
            .unwrap_or_else(|| ticklake_sink::default_table(&g.topic)),
        refresh_every: args.refresh_every,
        metrics: Some(metrics),
        live: (!args.no_live).then(|| LiveTopic {
            bus,
            topic: g.topic.clone(),
        }),
    };
    io.block_on(async {
        let server = Server::bind(engine, config).await?;
        // Tests and scripts read the address from this line (with --listen 127.0.0.1:0 the port is
        // the system's choice).
        eprintln!(
            "serving the lake on http://{} (the API: /api/openapi.json; stop with Ctrl-C)",
            server.local_addr()
        );
        server.run(stopped(stop)).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Completes when the process's stop flag is raised (Ctrl-C or SIGTERM, the handler every command
/// shares; a second Ctrl-C ends the process at once).
async fn stopped(flag: Arc<AtomicBool>) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
