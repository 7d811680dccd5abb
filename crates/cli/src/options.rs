//! Options shared by every command, and the wiring they imply.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use ticklake_bus::BusConfig;

/// Options every command takes (also from `TICKLAKE_*` environment variables).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Kafka bootstrap servers (host:port,...). Without it, the embedded log is used.
    #[arg(
        long,
        global = true,
        env = "TICKLAKE_BROKERS",
        value_name = "HOST:PORT"
    )]
    pub brokers: Option<String>,

    /// A librdkafka setting passed through as-is, e.g. -X security.protocol=SASL_SSL (repeatable).
    #[arg(short = 'X', global = true, value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub settings: Vec<(String, String)>,

    /// The topic.
    #[arg(
        long,
        global = true,
        env = "TICKLAKE_TOPIC",
        default_value = "stock-topic"
    )]
    pub topic: String,

    /// The lake: a folder, or s3://bucket/prefix (endpoint, region and credentials from the standard
    /// AWS_* variables).
    #[arg(long, global = true, env = "TICKLAKE_LAKE", default_value = "./lake")]
    pub lake: String,

    /// Where the embedded log keeps its topics [default: <lake>/_ticklake/log for a local lake,
    /// ./_ticklake/log for an S3 lake].
    #[arg(long, global = true, env = "TICKLAKE_LOG_DIR", value_name = "DIR")]
    pub log_dir: Option<PathBuf>,

    /// No progress bar.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("-X takes key=value, got {s:?}")),
    }
}

impl Global {
    /// The bus these options select.
    pub fn bus(&self) -> Result<BusConfig> {
        if !self.settings.is_empty() && self.brokers.is_none() {
            bail!("-X settings are for Kafka; pass --brokers too (without it the embedded log is used)");
        }
        Ok(match &self.brokers {
            Some(b) if b.trim().is_empty() => bail!("--brokers is empty"),
            Some(b) => BusConfig::Kafka {
                brokers: b.trim().to_owned(),
                settings: self.settings.clone(),
            },
            None => BusConfig::Embedded {
                dir: self.log_dir(),
            },
        })
    }

    /// The embedded log's directory.
    pub fn log_dir(&self) -> PathBuf {
        if let Some(d) = &self.log_dir {
            return d.clone();
        }
        let base = if self.lake.contains("://") {
            PathBuf::from(".")
        } else {
            PathBuf::from(&self.lake)
        };
        base.join("_ticklake").join("log")
    }

    /// Where the bus is, for messages: `embedded log at lake/_ticklake/log` or `kafka at host:9092`.
    pub fn describe_bus(&self) -> String {
        match &self.brokers {
            Some(b) => format!("kafka at {b}"),
            None => format!("embedded log at {}", self.log_dir().display()),
        }
    }
}

/// Logs to stderr; `-v` raises the level, `RUST_LOG` overrides it.
pub fn init_logging(g: &Global) {
    let level = match g.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A flag raised by Ctrl-C / SIGTERM, so long runs stop cleanly (flush, summary) instead of dying.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || {
        if s.swap(true, Ordering::SeqCst) {
            // A second Ctrl-C: the user wants out now.
            std::process::exit(130);
        }
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}
