//! `ticklake sink`: the topic -> a partitioned lake, exactly once.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use bytesize::ByteSize;
use clap::Args as ClapArgs;
use indicatif::HumanCount;
use ticklake_sink::{
    BackgroundCompaction, CompactionTarget, FileFormat, FlushPolicy, Lake, PartitionBy, Sink,
    SinkConfig, Stats, TableFormat, WrittenPartitions,
};

use crate::options::{runtime, stop_flag, Global};

/// Options of `ticklake sink`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Drain what is on the topic, write it, and exit (for batch jobs and tests).
    #[arg(long)]
    pub once: bool,

    /// Consumer group: sinks with the same group split the topic's partitions between them.
    #[arg(long, default_value = "ticklake-sink")]
    pub group: String,

    /// Table folder in the lake [default: the topic name in snake_case, e.g. stock_topic].
    #[arg(long)]
    pub table: Option<String>,

    /// Partition folders: auto | date,symbol | date | date,hour | date,hour,symbol | symbol | none.
    /// auto: a table that exists keeps its own; a new one gets date,symbol unless its first flush
    /// would write 1,000+ files of under 1,000 records on average, then date (thousands of symbols) or
    /// symbol (daily bars over years), whichever makes fewer folders.
    #[arg(long, default_value = "auto", value_name = "KEYS")]
    pub partition_by: PartitionBy,

    /// File format: parquet (zstd, sorted by symbol and time), json (one object per line) or csv.
    #[arg(long, default_value = "parquet")]
    pub format: FileFormat,

    /// Table format: hive (Parquet/JSON/CSV files in Hive folders, registered in the catalog) or
    /// iceberg (an Apache Iceberg table, one atomic commit per flush carrying the Kafka offsets, in
    /// the --catalog: embedded = Iceberg's SQL catalog in _ticklake/iceberg.sqlite, glue (S3 lakes),
    /// or rest).
    #[arg(long, default_value = "hive", value_name = "FORMAT")]
    pub table_format: TableFormat,

    /// Compact the table in the background this often, as `ticklake compact` with its defaults
    /// (Iceberg: the table's small files; Hive: the partitions this sink wrote to, also those it is
    /// still filling), so no cron is needed; 0s turns it off [default: 1m for Hive Parquet tables in
    /// the embedded catalog; off otherwise: Glue cannot switch a partition atomically, so run one
    /// compaction per table there, and Iceberg tables are compacted by choice].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub compact_every: Option<Duration>,

    /// Flush once this many records are buffered.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub flush_records: usize,

    /// Flush once this much message data is buffered, e.g. 256MiB. This bounds memory: the sink holds
    /// the checkpoint filling and, while its files are written, the one before it.
    #[arg(long, default_value = "256MiB", value_name = "SIZE")]
    pub flush_bytes: ByteSize,

    /// Flush at least this often, also when the topic goes quiet (how fresh the lake is) [default:
    /// 1s where the sink compacts a Hive table in the background (by default, Hive Parquet tables in
    /// the embedded catalog), so data is queryable within about a second and files still end up
    /// large; 5s otherwise, where each flush stays a file per partition (Hive) or a snapshot
    /// (Iceberg)].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub flush_interval: Option<Duration>,

    /// Dead-letter messages larger than this (a record is a few hundred bytes), e.g. 1MiB.
    #[arg(long, default_value = "1MiB", value_name = "SIZE")]
    pub max_message_bytes: ByteSize,

    /// Also send every dead letter to this topic (created if missing), as Kafka Connect's
    /// errors.deadletterqueue.topic.name: one JSON object per message with the reason, the partition
    /// and offset, and the message (value, or value_base64 when it is not UTF-8).
    #[arg(long, value_name = "TOPIC")]
    pub dlq_topic: Option<String>,

    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9898 (GET /metrics).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

/// How often a sink that compacts by default does.
const DEFAULT_COMPACT_EVERY: Duration = Duration::from_secs(60);
/// The flush interval of a sink that compacts (Hive): data queryable within about a second.
const FRESH_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let bus = g.bus()?;
    let lake = Lake::open(&g.lake)?;
    if let Some(addr) = args.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    // The catalog's clients run on this runtime, which lives as long as the sink.
    let io = runtime()?;
    let catalog = io
        .block_on(ticklake_sink::open_catalog(&g.catalog_config()))
        .with_context(|| format!("cannot open the {} catalog", g.catalog))?;
    let table = args
        .table
        .clone()
        .unwrap_or_else(|| ticklake_sink::default_table(&g.topic));
    let iceberg = match args.table_format {
        TableFormat::Iceberg => Some(g.iceberg_config()?),
        TableFormat::Hive => None,
    };
    // A fresh lake by default where compaction keeps its files large: Hive Parquet tables whose
    // partitions the catalog switches atomically.
    let compacts_by_default = args.table_format == TableFormat::Hive
        && args.format == FileFormat::Parquet
        && g.catalog == "embedded";
    let compact_every = match args.compact_every {
        Some(every) if every.is_zero() => None,
        Some(every) => Some(every),
        None if compacts_by_default => Some(DEFAULT_COMPACT_EVERY),
        None => None,
    };
    let flush_interval = args.flush_interval.unwrap_or(match compact_every {
        Some(_) if args.table_format == TableFormat::Hive => FRESH_FLUSH_INTERVAL,
        _ => FlushPolicy::default().interval,
    });
    let written = (compact_every.is_some() && args.table_format == TableFormat::Hive)
        .then(WrittenPartitions::default);
    let config = SinkConfig {
        topic: g.topic.clone(),
        group: args.group.clone(),
        table: table.clone(),
        partition_by: args.partition_by.clone(),
        format: args.format,
        flush: FlushPolicy {
            records: args.flush_records,
            bytes: usize::try_from(args.flush_bytes.as_u64()).unwrap_or(usize::MAX),
            interval: flush_interval,
        },
        once: args.once,
        catalog: Some(catalog.clone()),
        max_message_bytes: usize::try_from(args.max_message_bytes.as_u64()).unwrap_or(usize::MAX),
        dlq_topic: args.dlq_topic.clone(),
        table_format: args.table_format,
        iceberg: iceberg.clone(),
        written: written.clone(),
    };
    if args.table_format == TableFormat::Iceberg && args.format != FileFormat::Parquet {
        anyhow::bail!("--table-format iceberg writes Parquet data files: drop --format");
    }
    let compaction = match compact_every {
        None => None,
        Some(every) => {
            let target = match &iceberg {
                Some(config) => CompactionTarget::Iceberg {
                    config: config.clone(),
                    options: ticklake_iceberg::CompactOptions::default(),
                },
                None => {
                    if args.format != FileFormat::Parquet {
                        anyhow::bail!("--compact-every merges Parquet files: drop --format");
                    }
                    CompactionTarget::Hive {
                        lake: lake.clone(),
                        catalog: catalog.clone(),
                        options: ticklake_catalog::HiveCompactOptions::default(),
                        written,
                    }
                }
            };
            Some(
                BackgroundCompaction::spawn(target, table.clone(), every)
                    .context("cannot start the background compaction")?,
            )
        }
    };
    let stop = stop_flag()?;
    // A long-running sink may start before anything was produced: wait for the topic to appear.
    if !args.once {
        let mut told = false;
        while ticklake_bus::partition_count(&bus, &g.topic)?.is_none() {
            if !told {
                eprintln!(
                    "waiting for topic {:?} to be created ({})",
                    g.topic,
                    g.describe_bus()
                );
                told = true;
            }
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(ExitCode::SUCCESS);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let mut sink = Sink::new(&bus, lake.clone(), config).with_context(|| {
        format!(
            "cannot start the sink on topic {:?} ({})",
            g.topic,
            g.describe_bus()
        )
    })?;
    let quiet = g.quiet;
    let mut last = (0u64, Duration::ZERO);
    let stats = sink.run(&stop, &mut |s: &Stats| {
        if !quiet {
            let dt = (s.elapsed - last.1).as_secs_f64().max(1e-9);
            let rate = (s.records - last.0) as f64 / dt;
            eprintln!(
                "sink: {} records ({}/s), {} files, {}, lag {}, dead letters {}",
                HumanCount(s.records),
                HumanCount(rate as u64),
                HumanCount(s.files),
                ByteSize(s.bytes),
                s.total_lag(),
                s.dead_letters
            );
        }
        last = (s.records, s.elapsed);
    })?;
    if let Some(c) = compaction {
        c.stop();
    }
    let secs = stats.elapsed.as_secs_f64().max(1e-9);
    outln!(
        "{} records written to {}/{} in {} files ({}), {} dead-lettered, in {:.2}s ({:.0} records/s)",
        stats.records,
        lake.describe().trim_end_matches('/'),
        table,
        stats.files,
        ByteSize(stats.bytes),
        stats.dead_letters,
        secs,
        stats.records as f64 / secs
    );
    if stats.rewritten > 0 {
        outln!(
            "{} records of the lake's last checkpoint written again into the same files (resuming \
             from the lake's ledger)",
            stats.rewritten
        );
    }
    match &iceberg {
        None => outln!(
            "table {} registered with its partitions in the {}",
            table,
            catalog.describe()
        ),
        Some(config) => outln!(
            "Iceberg table {}.{table} in the {}",
            config.namespace,
            config.describe()
        ),
    }
    // A replay of history has ages of years: the figure only means something for a live feed.
    if !stats.freshness.is_empty() && stats.freshness.value_at_quantile(0.5) < 86_400_000 {
        outln!(
            "record age when committed (record timestamp -> its file committed): p50 {:.3}s, p99 {:.3}s, max {:.3}s",
            stats.freshness.value_at_quantile(0.5) as f64 / 1000.0,
            stats.freshness.value_at_quantile(0.99) as f64 / 1000.0,
            stats.freshness.max() as f64 / 1000.0
        );
    }
    if let Some(kb) = peak_rss_kib() {
        outln!("peak memory (RSS): {}", ByteSize(kb * 1024));
    }
    Ok(ExitCode::SUCCESS)
}

/// The process's peak resident set size (Linux), KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
