//! `ticklake crawl`: catalog a lake's tables and partitions from its files, like a Glue crawler.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use ticklake_catalog::{crawl, CrawlOptions};
use ticklake_lake::Lake;

use crate::options::{runtime, Global};

/// Options of `ticklake crawl`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// What to crawl: a folder or s3://bucket/prefix [default: the lake]. Each top-level folder is a
    /// table; a location holding data files itself is one table.
    pub location: Option<String>,

    /// Re-read every file (not only new partitions) and drop partitions whose folders are gone.
    #[arg(long)]
    pub full: bool,

    /// The table name when the location is a single table [default: its folder name].
    #[arg(long)]
    pub table: Option<String>,
}

/// Registers an Iceberg table found by the crawl in the lake's Iceberg catalog.
fn register_iceberg(
    g: &Global,
    io: &tokio::runtime::Runtime,
    found: &ticklake_catalog::IcebergFound,
) -> Result<()> {
    let config = g.iceberg_config()?;
    let lake = io
        .block_on(ticklake_iceberg::IcebergLake::open(&config))
        .context("cannot open the lake's Iceberg catalog")?;
    let done = io
        .block_on(lake.register(&found.name, &found.metadata))
        .with_context(|| format!("registering the Iceberg table at {}", found.location))?;
    match done {
        ticklake_iceberg::Registered::New => outln!(
            "table {} (Iceberg): registered in the {} at {}",
            found.name,
            lake.describe(),
            found.metadata
        ),
        ticklake_iceberg::Registered::Same => outln!(
            "table {} (Iceberg): already registered at {}",
            found.name,
            found.metadata
        ),
        ticklake_iceberg::Registered::Other(current) => outln!(
            "table {} (Iceberg): already registered at {current}; left as it is (the newest file \
             found is {})",
            found.name,
            found.metadata
        ),
    }
    Ok(())
}

/// Exit status when a type conflict was found (the rest was cataloged).
const CONFLICT: u8 = 2;

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let location = args.location.clone().unwrap_or_else(|| g.lake.clone());
    let lake = Lake::open(&location)?;
    let io = runtime()?;
    let catalog = g.open_catalog(&io)?;
    let options = CrawlOptions {
        full: args.full,
        table: args.table.clone(),
    };
    let report = io
        .block_on(crawl(&lake, catalog.as_ref(), &options))
        .with_context(|| format!("crawling {location}"))?;
    if report.tables.is_empty() && report.iceberg.is_empty() {
        outln!("no data files found in {location}");
    }
    for t in &report.iceberg {
        register_iceberg(g, &io, t)?;
    }
    for t in &report.tables {
        outln!(
            "table {} ({}): {}, {} files read, {} new partitions{}{}{}",
            t.name,
            if t.format.is_empty() {
                "no readable files"
            } else {
                &t.format
            },
            if t.created { "created" } else { "updated" },
            t.files_read,
            t.partitions_added,
            if t.partitions_dropped > 0 {
                format!(
                    ", {} partitions dropped (folders gone)",
                    t.partitions_dropped
                )
            } else {
                String::new()
            },
            if t.added_columns.is_empty() || t.created {
                String::new()
            } else {
                format!(", new columns: {}", t.added_columns.join(", "))
            },
            if t.widened_columns.is_empty() {
                String::new()
            } else {
                format!(", widened to double: {}", t.widened_columns.join(", "))
            },
        );
        for c in &t.conflicts {
            eprintln!("  type conflict in {}: {c}", t.name);
        }
    }
    for (file, reason) in report.skipped.iter().take(20) {
        eprintln!("  skipped {file}: {reason}");
    }
    if report.skipped.len() > 20 {
        eprintln!("  … and {} more files skipped", report.skipped.len() - 20);
    }
    outln!("catalog: {}", catalog.describe());
    if let (Lake::Local { .. }, Lake::Local { .. }) = (&lake, Lake::open(&g.lake)?) {
        let (here, home) = (lake.url_of(""), Lake::open(&g.lake)?.url_of(""));
        if !report.tables.is_empty() && !here.starts_with(&home) {
            outln!(
                "{location} is outside the lake ({home}): queries read it with --allow-location {location}"
            );
        }
    }
    if report.has_conflicts() {
        eprintln!("error: type conflicts found (see above); the other partitions were cataloged");
        return Ok(ExitCode::from(CONFLICT));
    }
    Ok(ExitCode::SUCCESS)
}
