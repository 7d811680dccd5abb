//! Options shared by every command, and the wiring they imply.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context, Result};
use clap::Args;
use ticklake_bus::BusConfig;
use ticklake_catalog::{Catalog, CatalogConfig};

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
    /// Secrets are better kept out of the command line: see -F and TICKLAKE_KAFKA_*.
    #[arg(short = 'X', global = true, value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub settings: Vec<Setting>,

    /// A file of librdkafka settings, one key=value per line (# comments), as kcat's -F; applied
    /// before TICKLAKE_KAFKA_* variables (TICKLAKE_KAFKA_SASL_PASSWORD sets sasl.password) and -X.
    #[arg(
        short = 'F',
        long = "kafka-config",
        global = true,
        env = "TICKLAKE_KAFKA_CONFIG",
        value_name = "FILE"
    )]
    pub kafka_config: Option<PathBuf>,

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

    /// The catalog: embedded (SQLite files, no server), glue (the AWS Glue Data Catalog; region,
    /// endpoint and credentials from the standard AWS settings) or rest (an Iceberg REST catalog at
    /// --catalog-uri, for Iceberg tables; Hive tables then stay in the embedded catalog).
    #[arg(long, global = true, env = "TICKLAKE_CATALOG", default_value = "embedded", value_parser = ["embedded", "glue", "rest"])]
    pub catalog: String,

    /// The Iceberg REST catalog's URL, with --catalog rest (a bearer token, if it wants one, in
    /// TICKLAKE_CATALOG_TOKEN).
    #[arg(long, global = true, env = "TICKLAKE_CATALOG_URI", value_name = "URL")]
    pub catalog_uri: Option<String>,

    /// The catalog database (Glue's group of tables; the default schema of queries).
    #[arg(long, global = true, env = "TICKLAKE_DATABASE", default_value = ticklake_catalog::DEFAULT_DATABASE)]
    pub database: String,

    /// The embedded catalog's file [default: <lake>/_ticklake/catalog.sqlite for a local lake,
    /// ./_ticklake/catalog.sqlite for an S3 lake].
    #[arg(
        long,
        global = true,
        env = "TICKLAKE_CATALOG_FILE",
        value_name = "FILE"
    )]
    pub catalog_file: Option<PathBuf>,

    /// No progress bar.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// One librdkafka setting; its `Debug` form hides the value of secrets.
#[derive(Clone)]
pub struct Setting(pub String, pub String);

impl std::fmt::Debug for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pair = [(self.0.clone(), self.1.clone())];
        write!(f, "{:?}", ticklake_bus::Redacted(&pair))
    }
}

fn parse_setting(s: &str) -> Result<Setting, String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok(Setting(k.trim().to_owned(), v.to_owned())),
        // Never echo the argument: it may be a secret.
        _ => Err("-X takes key=value".into()),
    }
}

/// Reads a kcat-style properties file: `key=value` lines, blank lines and `#` comments ignored.
fn read_kafka_config(path: &std::path::Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the Kafka settings file {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.push((k.trim().to_owned(), v.trim().to_owned()))
            }
            _ => bail!("{} line {}: expected key=value", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// librdkafka settings from `TICKLAKE_KAFKA_*` variables: `TICKLAKE_KAFKA_SASL_PASSWORD` -> `sasl.password`.
fn kafka_env_settings() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::env::vars()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("TICKLAKE_KAFKA_")?;
            (key != "CONFIG" && !key.is_empty())
                .then(|| (key.to_ascii_lowercase().replace('_', "."), v))
        })
        .collect();
    out.sort();
    out
}

impl Global {
    /// The bus these options select.
    pub fn bus(&self) -> Result<BusConfig> {
        if (!self.settings.is_empty() || self.kafka_config.is_some()) && self.brokers.is_none() {
            bail!("-X and -F settings are for Kafka; pass --brokers too (without it the embedded log is used)");
        }
        Ok(match &self.brokers {
            Some(b) if b.trim().is_empty() => bail!("--brokers is empty"),
            Some(b) => {
                let mut settings = match &self.kafka_config {
                    Some(path) => read_kafka_config(path)?,
                    None => Vec::new(),
                };
                settings.extend(kafka_env_settings());
                settings.extend(self.settings.iter().map(|s| (s.0.clone(), s.1.clone())));
                BusConfig::Kafka {
                    brokers: b.trim().to_owned(),
                    settings,
                }
            }
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
        self.meta_dir().join("log")
    }

    /// Whether the lake is in an object store (`s3://…`) rather than a local folder.
    fn remote_lake(&self) -> bool {
        self.lake.contains("://") && !self.lake.starts_with("file://")
    }

    /// The metadata folder: `<lake>/_ticklake` for a local lake, `./_ticklake` for an S3 lake.
    fn meta_dir(&self) -> PathBuf {
        let base = if self.remote_lake() {
            PathBuf::from(".")
        } else {
            PathBuf::from(self.lake.trim_start_matches("file://"))
        };
        base.join("_ticklake")
    }

    /// The catalog these options select.
    pub fn catalog_config(&self) -> CatalogConfig {
        match self.catalog.as_str() {
            "glue" => CatalogConfig::Glue {
                database: self.database.clone(),
            },
            _ => CatalogConfig::Embedded {
                path: self
                    .catalog_file
                    .clone()
                    .unwrap_or_else(|| self.meta_dir().join("catalog.sqlite")),
                database: self.database.clone(),
            },
        }
    }

    /// Where the lake's Iceberg tables are and which catalog keeps them: the embedded SQL catalog
    /// (`<lake>/_ticklake/iceberg.sqlite`, or `./_ticklake/iceberg.sqlite` for an S3 lake), Glue, or
    /// the REST catalog at --catalog-uri; the namespace is the catalog database.
    pub fn iceberg_config(&self) -> Result<ticklake_iceberg::IcebergConfig> {
        use ticklake_iceberg::{IcebergCatalog, IcebergConfig};
        let remote = self.remote_lake();
        let warehouse = if remote {
            self.lake.trim_end_matches('/').to_owned()
        } else {
            ticklake_iceberg::local_warehouse(std::path::Path::new(
                self.lake.trim_start_matches("file://"),
            ))?
        };
        let catalog = match self.catalog.as_str() {
            "glue" => {
                if !remote {
                    bail!(
                        "Iceberg tables in Glue need an S3 lake (--lake s3://bucket/prefix): \
                         Athena and the other engines could not read a local folder"
                    );
                }
                IcebergCatalog::Glue
            }
            "rest" => IcebergCatalog::Rest {
                uri: match &self.catalog_uri {
                    Some(u) if !u.trim().is_empty() => u.trim().to_owned(),
                    _ => bail!("--catalog rest needs --catalog-uri (e.g. http://localhost:8181)"),
                },
                token: std::env::var("TICKLAKE_CATALOG_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
            },
            _ => IcebergCatalog::Sql {
                file: self.meta_dir().join("iceberg.sqlite"),
            },
        };
        if self.catalog != "rest" && self.catalog_uri.is_some() {
            bail!("--catalog-uri is for --catalog rest");
        }
        ticklake_catalog::validate_name("database", &self.database)?;
        Ok(IcebergConfig {
            warehouse,
            namespace: self.database.clone(),
            catalog,
        })
    }

    /// The Iceberg catalog to read tables from, if the options can have one: a local lake with Glue
    /// (Hive tables in Glue, files on this machine) has no Iceberg tables.
    pub fn iceberg_config_to_read(&self) -> Result<Option<ticklake_iceberg::IcebergConfig>> {
        if self.catalog == "glue" && !self.remote_lake() {
            return Ok(None);
        }
        self.iceberg_config().map(Some)
    }

    /// Opens the catalog on `runtime` (which must outlive it: Glue's connections live there).
    pub fn open_catalog(&self, runtime: &tokio::runtime::Runtime) -> Result<Arc<dyn Catalog>> {
        let config = self.catalog_config();
        runtime
            .block_on(ticklake_catalog::open(&config))
            .with_context(|| format!("cannot open the {} catalog", self.catalog))
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
    // OpenDAL (Iceberg's S3 client) warns of each retry it makes inside a call, with a backtrace when
    // RUST_BACKTRACE is set (slow to resolve, and noise); the sink reports what it waits for itself.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},opendal=error")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A flag raised by Ctrl-C / SIGTERM, so long runs stop cleanly (flush, summary) instead of dying.
/// Installed once per process: `ticklake demo` runs several commands in a row.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    if let Some(stop) = STOP.get() {
        return Ok(stop.clone());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || {
        if s.swap(true, Ordering::SeqCst) {
            // A second Ctrl-C: the user wants out now.
            std::process::exit(130);
        }
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(STOP.get_or_init(|| stop).clone())
}

/// A small multi-threaded runtime for the async catalog, query and storage clients.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ticklake-io")
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
