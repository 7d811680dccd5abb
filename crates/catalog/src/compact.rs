//! Compaction of a Hive table: the files of each partition merged into large Parquet files sorted by
//! `symbol, ts`, in a new folder, and the partition switched to it in the catalog in one step.
//!
//! Readers go through the catalog, so a query sees either the partition's old files or the merged
//! ones, never both and never neither. The layout:
//!
//! * the sink writes into the partition's own folder, `<table>/date=…/symbol=…/`;
//! * a compaction writes `<table>/_compacted/date=…/symbol=…/<generation>/part-NNNNN.parquet` and a
//!   `_sources.json` naming every file of the own folder it holds (with its time), then points the
//!   partition there (a compare-and-set on the old location);
//! * files arriving in the own folder later (late records) are merged, with the current generation,
//!   into the next generation at the next compaction; files named in `_sources.json` are never merged
//!   twice (a sink that replays its last range writes the same names again);
//! * once a generation has been current for the grace period, the own folder's files it holds and
//!   the older generations are deleted (a query still reading them has had that long).
//!
//! Only "cold" partitions are compacted: those whose newest own file is older than
//! [`HiveCompactOptions::older_than`], so a partition the sink is filling stays as the sink writes it
//! (and fresh). Path-based readers (a DuckDB glob over the folders) do not know the catalog's
//! locations: they should read through the catalog (Glue) once a table is compacted.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};
use ticklake_lake::{FileInfo, Lake};
use ticklake_model::arrow::concat_union;

use crate::{Catalog, CatalogError, Partition, StorageFormat};

/// The folder (inside a table's folder) holding compacted generations.
pub const COMPACTED_FOLDER: &str = "_compacted";
/// How a compacted partition's location is recognized.
pub(crate) const COMPACTED_FOLDER_SEGMENT: &str = "/_compacted/";
const SOURCES_FILE: &str = "_sources.json";

/// How to compact a Hive table.
#[derive(Debug, Clone)]
pub struct HiveCompactOptions {
    /// The size merged files aim at.
    pub target_size: u64,
    /// Partitions whose newest file is younger than this are left alone (the sink is filling them).
    pub older_than: Duration,
    /// How long replaced files stay after the switch (queries that listed them may still read them).
    pub grace: Duration,
}

impl Default for HiveCompactOptions {
    fn default() -> Self {
        HiveCompactOptions {
            target_size: 128 << 20,
            older_than: Duration::from_secs(3600),
            grace: Duration::from_secs(3600),
        }
    }
}

/// What a compaction of a Hive table did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HiveCompacted {
    /// Partitions switched to merged files.
    pub partitions: usize,
    /// Files merged (the partition's files before the switch).
    pub files_removed: usize,
    /// Files written.
    pub files_added: usize,
    /// Bytes of the files merged.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Rows rewritten.
    pub records: u64,
    /// Partitions left alone because they were written to recently.
    pub hot: usize,
    /// Replaced files deleted after their grace period.
    pub files_deleted: usize,
}

/// What a generation folder holds, kept in its `_sources.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Sources {
    /// When the generation was written (ms since 1970).
    created_ms: i64,
    /// The names of the own folder's files merged into it (or into its predecessors).
    sources: BTreeSet<String>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Compacts the partitions of the Hive table `table` of `lake` registered in `catalog`.
pub fn compact_hive<'a>(
    lake: &'a Lake,
    catalog: &'a dyn Catalog,
    table: &'a str,
    options: &'a HiveCompactOptions,
) -> BoxFuture<'a, Result<HiveCompacted, CatalogError>> {
    Box::pin(async move {
        let def = catalog
            .get_table(table)
            .await?
            .ok_or_else(|| CatalogError::NoSuchTable(table.to_owned()))?;
        if def.format != StorageFormat::Parquet {
            return Err(CatalogError::Invalid(format!(
                "table {table} is {}: compaction merges Parquet tables",
                def.format.classification()
            )));
        }
        if def.partition_keys.is_empty() {
            return Err(CatalogError::Invalid(format!(
                "table {table} is not partitioned: compaction switches partitions to merged files"
            )));
        }
        let root = lake.url_of("");
        let table_url = format!("{}/", def.location.trim_end_matches('/'));
        let table_rel = table_url
            .strip_prefix(&root)
            .map(|r| r.trim_end_matches('/').to_owned())
            .ok_or_else(|| {
                CatalogError::Invalid(format!(
                    "table {table} is at {}, outside the lake {root}",
                    def.location
                ))
            })?;
        let mut done = HiveCompacted::default();
        for p in catalog.list_partitions(table).await? {
            compact_partition(
                lake, catalog, table, &table_rel, &root, &p, options, &mut done,
            )
            .await?;
        }
        Ok(done)
    })
}

/// The own folder (relative to the lake) and the current generation folder, if compacted, of a
/// partition.
fn folders(table_rel: &str, root: &str, p: &Partition) -> Option<(String, Option<String>)> {
    let rel = p.location.strip_prefix(root)?.trim_end_matches('/');
    let compacted = format!("{table_rel}/{COMPACTED_FOLDER}/");
    match rel.strip_prefix(&compacted) {
        Some(rest) => {
            let (part, _generation) = rest.rsplit_once('/')?;
            Some((format!("{table_rel}/{part}"), Some(rel.to_owned())))
        }
        None => Some((rel.to_owned(), None)),
    }
}

/// The data files directly in a folder (not in subfolders; no `_`/`.` files).
async fn data_files(lake: &Lake, folder: &str) -> Result<Vec<FileInfo>, CatalogError> {
    let prefix = format!("{folder}/");
    Ok(lake
        .list_files(folder)
        .await?
        .into_iter()
        .filter(|f| {
            f.path
                .strip_prefix(&prefix)
                .is_some_and(|name| !name.contains('/') && !name.starts_with(['_', '.']))
        })
        .collect())
}

fn name_of(f: &FileInfo) -> &str {
    f.path.rsplit('/').next().unwrap_or(&f.path)
}

#[allow(clippy::too_many_arguments)]
async fn compact_partition(
    lake: &Lake,
    catalog: &dyn Catalog,
    table: &str,
    table_rel: &str,
    root: &str,
    p: &Partition,
    options: &HiveCompactOptions,
    done: &mut HiveCompacted,
) -> Result<(), CatalogError> {
    let Some((own, current)) = folders(table_rel, root, p) else {
        tracing::warn!(
            "table {table}: partition at {} is outside the table's folder; not compacted",
            p.location
        );
        return Ok(());
    };
    let now = now_ms();
    let sources = match &current {
        Some(g) => match lake.get(&format!("{g}/{SOURCES_FILE}")).await {
            Ok(bytes) => serde_json::from_slice::<Sources>(&bytes).map_err(|e| {
                CatalogError::Invalid(format!("{g}/{SOURCES_FILE} is not readable: {e}"))
            })?,
            Err(e) => {
                return Err(CatalogError::Invalid(format!(
                "table {table}: the compacted partition {g} has no readable {SOURCES_FILE} ({e}); \
                     it was not written by ticklake compact"
            )))
            }
        },
        None => Sources::default(),
    };
    let own_files = data_files(lake, &own).await?;

    // Replaced files whose grace period is over.
    if let Some(g) = &current {
        if now - sources.created_ms >= ms(options.grace) {
            for f in own_files
                .iter()
                .filter(|f| sources.sources.contains(name_of(f)))
            {
                lake.delete(&f.path).await?;
                done.files_deleted += 1;
            }
            let generations = format!(
                "{table_rel}/{COMPACTED_FOLDER}/{}",
                own.strip_prefix(&format!("{table_rel}/")).unwrap_or(&own)
            );
            // Only generations made before the current one: a younger one may be another
            // compaction's, about to be switched to.
            for f in lake.list_files(&generations).await? {
                let created = f
                    .path
                    .strip_prefix(&format!("{generations}/"))
                    .and_then(|rest| rest.get(..13))
                    .and_then(|t| t.parse::<i64>().ok());
                if !f.path.starts_with(&format!("{g}/"))
                    && created.is_some_and(|c| c < sources.created_ms)
                {
                    lake.delete(&f.path).await?;
                    done.files_deleted += 1;
                }
            }
        }
    }

    let fresh: Vec<&FileInfo> = own_files
        .iter()
        .filter(|f| !sources.sources.contains(name_of(f)))
        .collect();
    let generation_files = match &current {
        Some(g) => data_files(lake, g).await?,
        None => Vec::new(),
    };
    // Worth it: late files for a compacted partition, or several files (some small) otherwise.
    let small = |f: &FileInfo| f.size * 4 < options.target_size * 3;
    let worth = if current.is_some() {
        !fresh.is_empty()
    } else {
        fresh.len() >= 2 && fresh.iter().filter(|f| small(f)).count() >= 2
    };
    if !worth {
        return Ok(());
    }
    if fresh
        .iter()
        .any(|f| now - f.modified_ms < ms(options.older_than))
    {
        done.hot += 1;
        return Ok(());
    }

    let inputs: Vec<&FileInfo> = generation_files
        .iter()
        .chain(fresh.iter().copied())
        .collect();
    let mut batches = Vec::new();
    for f in &inputs {
        let bytes = lake.get(&f.path).await?;
        batches.extend(read_parquet(bytes, &f.path)?);
    }
    let records: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    let merged = concat_union(&batches).map_err(|e| CatalogError::Invalid(e.to_string()))?;
    let merged = ticklake_lake::sort_by_symbol_ts(&merged)
        .map_err(|e| CatalogError::Invalid(e.to_string()))?;
    let generation = format!(
        "{table_rel}/{COMPACTED_FOLDER}/{}/{}",
        own.strip_prefix(&format!("{table_rel}/")).unwrap_or(&own),
        generation_name(now)
    );
    let bytes_in: u64 = inputs.iter().map(|f| f.size).sum();
    let written = write_parquet(lake, &generation, &merged, bytes_in, options.target_size).await?;
    let mut held = sources.sources.clone();
    held.extend(fresh.iter().map(|f| name_of(f).to_owned()));
    let manifest = Sources {
        created_ms: now,
        sources: held,
    };
    lake.put(
        &format!("{generation}/{SOURCES_FILE}"),
        Bytes::from(serde_json::to_vec_pretty(&manifest).map_err(|e| {
            CatalogError::Invalid(format!("writing {generation}/{SOURCES_FILE}: {e}"))
        })?),
    )
    .await?;

    // A file that landed in the own folder meanwhile would be hidden by the switch: not now.
    let again = data_files(lake, &own).await?;
    let landed = again.iter().any(|f| !manifest.sources.contains(name_of(f)));
    let switched = !landed
        && catalog
            .set_partition_location(table, &p.values, &p.location, &lake.url_of(&generation))
            .await?;
    if !switched {
        for f in lake.list_files(&generation).await? {
            lake.delete(&f.path).await?;
        }
        done.hot += 1;
        return Ok(());
    }
    done.partitions += 1;
    done.files_removed += inputs.len();
    done.files_added += written.len();
    done.bytes_read += bytes_in;
    done.bytes_written += written.iter().sum::<u64>();
    done.records += records;
    Ok(())
}

/// A generation's folder name: its creation time (ms, 13 digits), then the time's nanoseconds and the
/// process (sorted by time, unique).
fn generation_name(now: i64) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{now:013}-{:09}-{}", nanos, std::process::id())
}

fn read_parquet(bytes: Bytes, path: &str) -> Result<Vec<RecordBatch>, CatalogError> {
    let bad = |e: &dyn std::fmt::Display| CatalogError::Invalid(format!("reading {path}: {e}"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(64 * 1024).build())
        .map_err(|e| bad(&e))?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e))
}

/// Writes the batch as Parquet files of about `target` bytes into `folder`; returns their sizes.
async fn write_parquet(
    lake: &Lake,
    folder: &str,
    batch: &RecordBatch,
    bytes_in: u64,
    target: u64,
) -> Result<Vec<u64>, CatalogError> {
    let rows = batch.num_rows();
    let parts = bytes_in.div_ceil(target.max(1)).max(1) as usize;
    let per_file = rows.div_ceil(parts).max(1);
    let mut sizes = Vec::new();
    let properties = ticklake_lake::parquet_properties(&batch.schema());
    let mut offset = 0;
    let mut n = 0;
    while offset < rows || (rows == 0 && n == 0) {
        let len = per_file.min(rows - offset);
        let slice = batch.slice(offset, len);
        let mut buffer = Vec::new();
        let mut writer =
            ArrowWriter::try_new(&mut buffer, batch.schema(), Some(properties.clone()))
                .map_err(|e| CatalogError::Invalid(format!("writing {folder}: {e}")))?;
        writer
            .write(&slice)
            .and_then(|_| writer.close().map(|_| ()))
            .map_err(|e| CatalogError::Invalid(format!("writing {folder}: {e}")))?;
        sizes.push(buffer.len() as u64);
        lake.put(
            &format!("{folder}/part-{n:05}.parquet"),
            Bytes::from(buffer),
        )
        .await?;
        offset += len;
        n += 1;
        if rows == 0 {
            break;
        }
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_knows_its_own_and_its_generation_folder() {
        let root = "file:///lake/";
        let plain = Partition {
            values: vec!["2024-01-02".into(), "AAPL".into()],
            location: "file:///lake/t/date=2024-01-02/symbol=AAPL/".into(),
        };
        assert_eq!(
            folders("t", root, &plain),
            Some(("t/date=2024-01-02/symbol=AAPL".into(), None))
        );
        let compacted = Partition {
            location: "file:///lake/t/_compacted/date=2024-01-02/symbol=AAPL/0001-x/".into(),
            ..plain
        };
        assert_eq!(
            folders("t", root, &compacted),
            Some((
                "t/date=2024-01-02/symbol=AAPL".into(),
                Some("t/_compacted/date=2024-01-02/symbol=AAPL/0001-x".into())
            ))
        );
        let elsewhere = Partition {
            location: "file:///other/x/".into(),
            values: vec![],
        };
        assert_eq!(folders("t", root, &elsewhere), None);
    }
}
