//! `ticklake compact`: merge the small files of the lake's Iceberg tables.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use clap::Args as ClapArgs;
use ticklake_iceberg::{CompactOptions, IcebergLake};
use ticklake_lake::Lake;

use crate::options::{runtime, Global};

/// Options of `ticklake compact`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The table to compact [default: every Iceberg table of the lake].
    #[arg(long)]
    pub table: Option<String>,

    /// The size merged files aim at; files of at least three quarters of it are left alone.
    #[arg(long, default_value = "128MiB", value_name = "SIZE")]
    pub target_size: ByteSize,

    /// Only merge files committed at least this long ago, e.g. 1h.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub older_than: Duration,

    /// Expire snapshots older than this and delete the files only they referenced (time travel
    /// reaches back this far; a query still reading an old snapshot has this long to finish).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub retention: Duration,

    /// Delete files in a table's folder that no snapshot ever referenced (left by a writer that died
    /// before its commit) once they are this old.
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub orphan_age: Duration,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let Lake::Local { root } = Lake::open(&g.lake)? else {
        bail!("compaction works on Iceberg tables of local lakes for now (S3 lakes are not supported yet)");
    };
    let io = runtime()?;
    let Some(lake) = io
        .block_on(IcebergLake::embedded_if_present(&root))
        .context("cannot open the lake's Iceberg catalog")?
    else {
        bail!(
            "the lake {} has no Iceberg tables (write them with `ticklake sink --table-format iceberg`); \
             Hive tables are not compacted yet",
            root.display()
        );
    };
    let tables = match &args.table {
        Some(t) => {
            if io.block_on(lake.load(t))?.is_none() {
                bail!(
                    "no Iceberg table {t:?} in the lake (its Iceberg tables: {})",
                    io.block_on(lake.tables())?.join(", ")
                );
            }
            vec![t.clone()]
        }
        None => io.block_on(lake.tables())?,
    };
    let options = CompactOptions {
        target_size: args.target_size.as_u64().max(1 << 20),
        older_than: args.older_than,
        retention: args.retention,
        orphan_age: args.orphan_age,
    };
    for table in tables {
        let started = Instant::now();
        let done = io
            .block_on(lake.compact(&table, &options))
            .with_context(|| format!("compacting {table}"))?;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        if done.superseded {
            outln!(
                "table {table}: another compaction merged the same files meanwhile; nothing to add"
            );
        } else if done.files_removed == 0 {
            outln!("table {table}: no small files to merge");
        } else {
            outln!(
                "table {table}: {} files merged into {} in {} partitions ({} -> {}, {} records) in {:.2}s ({}/s)",
                done.files_removed,
                done.files_added,
                done.partitions,
                ByteSize(done.bytes_read),
                ByteSize(done.bytes_written),
                done.records,
                secs,
                ByteSize((done.bytes_read as f64 / secs) as u64)
            );
        }
        if done.snapshots_expired > 0 || done.files_deleted > 0 {
            outln!(
                "table {table}: {} snapshots expired, {} unreferenced files deleted",
                done.snapshots_expired,
                done.files_deleted
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
