//! `ticklake compact`: merge the small files of the lake's tables (Iceberg and Hive).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use clap::Args as ClapArgs;
use ticklake_catalog::{compact_hive, HiveCompactOptions, StorageFormat};
use ticklake_iceberg::{CompactOptions, IcebergLake};
use ticklake_lake::Lake;

use crate::options::{runtime, Global};

/// Options of `ticklake compact`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The table to compact [default: every table of the lake: its Iceberg tables and the catalog's
    /// partitioned Parquet tables].
    #[arg(long)]
    pub table: Option<String>,

    /// The size merged files aim at; files of at least three quarters of it are left alone.
    #[arg(long, default_value = "128MiB", value_name = "SIZE")]
    pub target_size: ByteSize,

    /// Only merge files written at least this long ago. Partitions a sink is still filling are
    /// compacted too: Iceberg commits are atomic, and a Hive sink copies the files it writes into a
    /// partition's current merged folder.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub older_than: Duration,

    /// How long the replaced state stays readable: Iceberg snapshots older than this are expired and
    /// the files only they referenced deleted (time travel reaches back this far); a Hive
    /// partition's replaced files are deleted this long after the switch.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub retention: Duration,

    /// Iceberg: delete files in a table's folder that no snapshot ever referenced (left by a writer
    /// that died before its commit) once they are this old.
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub orphan_age: Duration,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let lake = Lake::open(&g.lake)?;
    let io = runtime()?;
    let iceberg = match g.iceberg_config_to_read()? {
        Some(config) => io
            .block_on(IcebergLake::open_if_present(&config))
            .context("cannot open the lake's Iceberg catalog")?,
        None => None,
    };
    let catalog = g.open_catalog(&io)?;
    let iceberg_tables = match &iceberg {
        Some(l) => io.block_on(l.tables())?,
        None => Vec::new(),
    };
    let hive_tables: Vec<_> = io
        .block_on(catalog.list_tables())?
        .into_iter()
        .filter(|t| !iceberg_tables.contains(&t.name))
        .collect();
    let target_size = args.target_size.as_u64().max(1 << 20);
    let mut found = false;
    for table in &iceberg_tables {
        if args.table.as_ref().is_some_and(|t| t != table) {
            continue;
        }
        found = true;
        let lake = iceberg
            .as_ref()
            .expect("Iceberg tables come from the Iceberg catalog");
        let options = CompactOptions {
            target_size,
            older_than: args.older_than,
            retention: args.retention,
            orphan_age: args.orphan_age,
        };
        let started = Instant::now();
        let done = io
            .block_on(lake.compact(table, &options))
            .with_context(|| format!("compacting {table}"))?;
        if done.superseded {
            outln!("table {table} (Iceberg): another compaction merged the same files meanwhile");
        } else if done.files_removed == 0 {
            outln!("table {table} (Iceberg): no small files to merge");
        } else {
            report(table, "Iceberg", (&done).into(), started);
        }
        if done.snapshots_expired > 0 || done.files_deleted > 0 {
            outln!(
                "table {table} (Iceberg): {} snapshots expired, {} unreferenced files deleted",
                done.snapshots_expired,
                done.files_deleted
            );
        }
    }
    for def in &hive_tables {
        let table = &def.name;
        let chosen = args.table.as_ref().is_some_and(|t| t == table);
        if args.table.is_some() && !chosen {
            continue;
        }
        found = true;
        if def.format != StorageFormat::Parquet || def.partition_keys.is_empty() {
            let why = format!(
                "table {table}: not compacted (compaction merges partitioned Parquet tables; it is {}{})",
                def.format.classification(),
                if def.partition_keys.is_empty() { ", unpartitioned" } else { "" }
            );
            if chosen {
                bail!(why);
            }
            outln!("{why}");
            continue;
        }
        let options = HiveCompactOptions {
            target_size,
            older_than: args.older_than,
            grace: args.retention,
        };
        let started = Instant::now();
        let done = io
            .block_on(compact_hive(&lake, catalog.as_ref(), table, &options))
            .with_context(|| format!("compacting {table}"))?;
        if done.files_removed == 0 {
            outln!("table {table} (Hive): no partition to merge");
        } else {
            report(table, "Hive", (&done).into(), started);
        }
        if done.hot > 0 {
            outln!(
                "table {table} (Hive): {} partitions whose small files were written in the last {} left as they are",
                done.hot,
                humantime::format_duration(options.older_than)
            );
        }
        if done.files_deleted > 0 {
            outln!(
                "table {table} (Hive): {} replaced files deleted",
                done.files_deleted
            );
        }
    }
    if !found {
        match &args.table {
            Some(t) => bail!(
                "no table {t:?} in the lake's Iceberg catalog or in the {}",
                catalog.describe()
            ),
            None => bail!("the lake has no tables to compact (write some with `ticklake sink`)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What a compaction merged, in either format.
struct Merged {
    removed: usize,
    added: usize,
    partitions: usize,
    bytes_read: u64,
    bytes_written: u64,
    records: u64,
}

impl From<&ticklake_iceberg::Compacted> for Merged {
    fn from(d: &ticklake_iceberg::Compacted) -> Self {
        Merged {
            removed: d.files_removed,
            added: d.files_added,
            partitions: d.partitions,
            bytes_read: d.bytes_read,
            bytes_written: d.bytes_written,
            records: d.records,
        }
    }
}

impl From<&ticklake_catalog::HiveCompacted> for Merged {
    fn from(d: &ticklake_catalog::HiveCompacted) -> Self {
        Merged {
            removed: d.files_removed,
            added: d.files_added,
            partitions: d.partitions,
            bytes_read: d.bytes_read,
            bytes_written: d.bytes_written,
            records: d.records,
        }
    }
}

fn report(table: &str, kind: &str, m: Merged, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    outln!(
        "table {table} ({kind}): {} files merged into {} in {} partitions ({} -> {}, {} records) in {secs:.2}s ({}/s)",
        m.removed,
        m.added,
        m.partitions,
        ByteSize(m.bytes_read),
        ByteSize(m.bytes_written),
        m.records,
        ByteSize((m.bytes_read as f64 / secs) as u64)
    );
}
