//! Compaction of a Hive table: the files of each partition merged into large Parquet files sorted by
//! `symbol, ts`, in a new folder, and the partition switched to it in the catalog in one step.
//!
//! Readers go through the catalog, so a query sees either the partition's old files or the merged
//! ones, never both. The layout:
//!
//! * the sink writes into the partition's own folder, `<table>/date=…/symbol=…/`;
//! * a compaction writes `<table>/_compacted/date=…/symbol=…/<generation>/part-<ms>-NNNNN.parquet`
//!   (the small files merged, sorted), the files it does not merge (large ones, and those younger than
//!   [`HiveCompactOptions::older_than`]) as they are (a hard link, or an S3 server-side copy), and a
//!   `_sources.json` naming every file of the own folder it holds, then points the partition there (a
//!   compare-and-set on the old location). Files that landed in the own folder meanwhile are copied
//!   into the generation before the switch, and once more after it;
//! * a sink that writes into a partition switched to a generation copies its new files into that
//!   generation before its offsets move ([`CompactedPartitions`]), so a partition being filled can be
//!   compacted and still shows each file as soon as it is committed;
//! * files named in `_sources.json` are never merged twice (a sink that replays its last range writes
//!   the same names again, and does not copy a file the generation holds);
//! * once a generation has been current for the grace period, the own folder's files it holds and
//!   the older generations are deleted (a query still reading them has had that long).
//!
//! Path-based readers (a DuckDB glob over the folders) do not know the catalog's locations: they
//! should read through the catalog (Glue) once a table is compacted.

use std::collections::{BTreeMap, BTreeSet};
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
    /// Files younger than this are not merged yet; they go into the new generation as they are.
    pub older_than: Duration,
    /// How long replaced files stay after the switch (queries that listed them may still read them).
    pub grace: Duration,
}

impl Default for HiveCompactOptions {
    fn default() -> Self {
        HiveCompactOptions {
            target_size: 128 << 20,
            older_than: Duration::ZERO,
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
    /// Partitions whose small files were left as they are because they were written recently.
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
    /// When the partition first left its own folder (ms; absent in generations written before
    /// this was kept: their `created_ms` stands in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    own_replaced_ms: Option<i64>,
    /// The generations this one and its predecessors replaced that are not deleted yet, with when
    /// each was replaced: one is deleted once it has been replaced for the grace period, while the
    /// partition goes on being compacted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    replaced: Vec<ReplacedGeneration>,
    /// Where the rows of each merged file of this generation were written, when they came from one
    /// partition of one topic (see [`Span`]): a later compaction then merges only neighbours.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    spans: BTreeMap<String, Span>,
}

/// Where a file's rows are in the order a sink wrote them: the Kafka partition of one topic they came
/// from, and the first offsets of the first and the last sink file among them. A sink's file carries
/// it in its name (`<topic>+<partition>+<first offset>`); a merged file's is in `_sources.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Span {
    topic: String,
    partition: i32,
    first: i64,
    last: i64,
}

/// A sink's file name as (topic, partition, first offset), or None for any other name.
fn sink_file_key(name: &str) -> Option<(String, i32, i64)> {
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    let mut parts = stem.rsplitn(3, '+');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    Some((parts.next()?.to_owned(), partition, offset))
}

/// The span of the file named `name`: from its name for a sink's file, else from `spans`.
fn span_of(name: &str, spans: &BTreeMap<String, Span>) -> Option<Span> {
    match sink_file_key(name) {
        Some((topic, partition, offset)) => Some(Span {
            topic,
            partition,
            first: offset,
            last: offset,
        }),
        None => spans.get(name).cloned(),
    }
}

/// The span of the files together, when each has one and all are of one partition of one topic.
fn joint_span(files: &[&FileInfo], spans: &BTreeMap<String, Span>) -> Option<Span> {
    let each: Vec<Span> = files
        .iter()
        .map(|f| span_of(name_of(f), spans))
        .collect::<Option<_>>()?;
    joint(&each)
}

/// The spans together, when all are of one partition of one topic (None for none).
fn joint<'a>(spans: impl IntoIterator<Item = &'a Span>) -> Option<Span> {
    let mut all = spans.into_iter();
    let mut joint = all.next()?.clone();
    for span in all {
        if span.topic != joint.topic || span.partition != joint.partition {
            return None;
        }
        joint.first = joint.first.min(span.first);
        joint.last = joint.last.max(span.last);
    }
    Some(joint)
}

/// A generation folder (relative to the lake) and when it stopped being the partition's location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ReplacedGeneration {
    folder: String,
    at_ms: i64,
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
    compact_hive_partitions(lake, catalog, table, None, options)
}

/// Compacts the partitions of the Hive table `table` with the values `only` (all of them with `None`),
/// as [`compact_hive`]. A sink's background compaction passes the partitions it wrote to, so a round
/// costs what the sink wrote, not what the table holds.
pub fn compact_hive_partitions<'a>(
    lake: &'a Lake,
    catalog: &'a dyn Catalog,
    table: &'a str,
    only: Option<&'a [Vec<String>]>,
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
        let partitions = match only {
            None => catalog.list_partitions(table).await?,
            Some(values) => catalog.get_partitions(table, values).await?,
        };
        for p in partitions {
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
        Some(g) => read_sources(lake, table, g).await?,
        None => Sources::default(),
    };
    let own_files = data_files(lake, &own).await?;

    // Replaced files whose grace period is over.
    let mut replaced = sources.replaced.clone();
    let mut own_deleted = BTreeSet::new();
    if let Some(g) = &current {
        let cutoff = now - ms(options.grace);
        if sources.own_replaced_ms.unwrap_or(sources.created_ms) <= cutoff {
            for f in own_files
                .iter()
                .filter(|f| sources.sources.contains(name_of(f)))
            {
                lake.delete(&f.path).await?;
                own_deleted.insert(name_of(f).to_owned());
                done.files_deleted += 1;
            }
        }
        let generations = format!(
            "{table_rel}/{COMPACTED_FOLDER}/{}",
            own.strip_prefix(&format!("{table_rel}/")).unwrap_or(&own)
        );
        let expired: BTreeSet<&str> = replaced
            .iter()
            .filter(|r| r.at_ms <= cutoff)
            .map(|r| r.folder.as_str())
            .collect();
        let listed: BTreeSet<&str> = replaced.iter().map(|r| r.folder.as_str()).collect();
        let mut emptied = BTreeSet::new();
        for f in lake.list_files(&generations).await? {
            let Some(folder) = f.path.rsplit_once('/').map(|(folder, _)| folder) else {
                continue;
            };
            if folder == g {
                continue;
            }
            let created = folder
                .strip_prefix(&format!("{generations}/"))
                .and_then(|rest| rest.get(..13))
                .and_then(|t| t.parse::<i64>().ok());
            // Replaced for the grace period; or, not in the list (written before it was kept, or
            // by a compaction that died before its switch), made before the current generation
            // when that has been current for the grace period. A younger one may be another
            // compaction's, about to be switched to.
            let delete = expired.contains(folder)
                || (!listed.contains(folder)
                    && created.is_some_and(|c| c < sources.created_ms)
                    && sources.created_ms <= cutoff);
            if delete {
                lake.delete(&f.path).await?;
                emptied.insert(folder.to_owned());
                done.files_deleted += 1;
            }
        }
        for folder in &emptied {
            lake.remove_empty_folder(folder).await?;
        }
        replaced.retain(|r| r.at_ms > cutoff);
    }

    let generation_files = match &current {
        Some(g) => data_files(lake, g).await?,
        None => Vec::new(),
    };
    // A sink copies the files it writes into the current generation, so they are visible at once;
    // "fresh" files are the own folder's that are neither merged nor copied (late files written
    // before a switch the sink did not see, or by a sink that died before its copy).
    let in_generation: BTreeSet<&str> = generation_files.iter().map(name_of).collect();
    let fresh: Vec<&FileInfo> = own_files
        .iter()
        .filter(|f| {
            let name = name_of(f);
            !sources.sources.contains(name) && !in_generation.contains(name)
        })
        .collect();
    let (merge, keep) = choose_merge(
        generation_files
            .iter()
            .chain(fresh.iter().copied())
            .collect(),
        now,
        options,
        &sources.spans,
    );
    let worth = merge.len() >= 2 || (current.is_some() && !fresh.is_empty());
    if !worth {
        if keep
            .iter()
            .any(|f| small(f, options) && now - f.modified_ms < ms(options.older_than))
        {
            done.hot += 1;
        }
        return Ok(());
    }

    let generation = format!(
        "{table_rel}/{COMPACTED_FOLDER}/{}/{}",
        own.strip_prefix(&format!("{table_rel}/")).unwrap_or(&own),
        generation_name(now)
    );
    let mut batches = Vec::new();
    for f in &merge {
        let bytes = lake.get(&f.path).await?;
        batches.extend(read_parquet(bytes, &f.path)?);
    }
    let records: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    let bytes_in: u64 = merge.iter().map(|f| f.size).sum();
    let stem = format!("part-{now:013}");
    let written = if merge.is_empty() {
        Vec::new()
    } else {
        let merged = concat_union(&batches).map_err(|e| CatalogError::Invalid(e.to_string()))?;
        let merged = ticklake_lake::sort_by_symbol_ts(&merged)
            .map_err(|e| CatalogError::Invalid(e.to_string()))?;
        write_parquet(
            lake,
            &generation,
            &stem,
            &merged,
            bytes_in,
            options.target_size,
        )
        .await?
    };
    for f in &keep {
        lake.copy(&f.path, &format!("{generation}/{}", name_of(f)))
            .await?;
    }
    // The own folder's files the new generation holds, merged or as they are, and those its
    // predecessors held (not the merged parts: a sink's file names have a `+`, parts none).
    let mut held = sources.sources.clone();
    held.extend(fresh.iter().map(|f| name_of(f).to_owned()));
    held.extend(
        merge
            .iter()
            .map(|f| name_of(f))
            .filter(|name| !is_merged_part(name))
            .map(str::to_owned),
    );
    let in_own: BTreeSet<&str> = own_files
        .iter()
        .map(name_of)
        .filter(|n| !own_deleted.contains(*n))
        .collect();
    forget_unrepeatable(&mut held, &in_own);
    if let Some(g) = &current {
        replaced.push(ReplacedGeneration {
            folder: g.clone(),
            at_ms: now,
        });
    }
    // Where the rows of the merged files are: the kept ones' as before, the new ones' from what they
    // merged (the same for each of a merge's files, which follow one another in their names).
    let mut spans: BTreeMap<String, Span> = keep
        .iter()
        .filter_map(|f| {
            let name = name_of(f);
            sources
                .spans
                .get(name)
                .map(|s| (name.to_owned(), s.clone()))
        })
        .collect();
    if let Some(span) = joint_span(&merge, &sources.spans) {
        for n in 0..written.len() {
            spans.insert(format!("{stem}-{n:05}.parquet"), span.clone());
        }
    }
    let manifest = Sources {
        created_ms: now,
        sources: held,
        own_replaced_ms: Some(match &current {
            Some(_) => sources.own_replaced_ms.unwrap_or(sources.created_ms),
            None => now,
        }),
        replaced,
        spans,
    };
    lake.put(
        &format!("{generation}/{SOURCES_FILE}"),
        Bytes::from(serde_json::to_vec_pretty(&manifest).map_err(|e| {
            CatalogError::Invalid(format!("writing {generation}/{SOURCES_FILE}: {e}"))
        })?),
    )
    .await?;
    let copied: BTreeSet<String> = keep.iter().map(|f| name_of(f).to_owned()).collect();

    // Files that landed in the own folder meanwhile go into the new generation before the switch.
    let mut carried = copied.clone();
    carry_landed(lake, &own, &generation, &manifest, &mut carried).await?;
    let switched = catalog
        .set_partition_location(table, &p.values, &p.location, &lake.url_of(&generation))
        .await?;
    if !switched {
        for f in lake.list_files(&generation).await? {
            lake.delete(&f.path).await?;
        }
        lake.remove_empty_folder(&generation).await?;
        tracing::info!(
            "table {table}: partition {:?} was switched by another compaction meanwhile; left to it",
            p.values
        );
        return Ok(());
    }
    // A sink that read the old location just before the switch copied its file into the old
    // generation: carry what landed since the last look too.
    carry_landed(lake, &own, &generation, &manifest, &mut carried).await?;
    done.partitions += 1;
    done.files_removed += merge.len();
    done.files_added += written.len();
    done.bytes_read += bytes_in;
    done.bytes_written += written.iter().sum::<u64>();
    done.records += records;
    Ok(())
}

/// A partition not written to for this long is merged whole (its small files, whatever their sizes).
pub const MERGED_WHOLE_AFTER: Duration = Duration::from_secs(3600);

/// Files under this fraction of the target size (1 MiB of 128 MiB) are cheap to rewrite: they are
/// merged whatever their sizes, also in a partition being written to.
const TIER_FLOOR: u64 = 128;

/// Whether a file is below three quarters of the target size (so worth merging).
fn small(f: &FileInfo, options: &HiveCompactOptions) -> bool {
    f.size * 4 < options.target_size * 3
}

/// Splits a partition's files into those to merge and those that go into the new generation as they
/// are: large files, files younger than `older_than`, and, in a partition still being written to,
/// small files much larger than the smaller ones together. There, the smallest files are merged as
/// long as the largest of them is under 1 MiB (at the default target) or at most twice the others
/// together, so each merge beyond 1 MiB at least multiplies a row's file size by 1.5: a partition
/// that grows all day has its rows rewritten a few times (logarithmically in the target size), not
/// its growing file at every compaction.
///
/// Where the order the files' rows were written in is known (`spans`: all of them from one partition
/// of one topic, the usual case of a feed keyed by symbol), a partition being written to merges only
/// neighbours in that order: the newest files the same rule allows, back from the newest one that may
/// be merged. Merging by size alone can merge the first and the last of three files and leave the
/// middle one: the merged file's time range then covers its neighbour's, which costs every reader
/// its pruning by time and the query engine its proof that each symbol's files are in order.
fn choose_merge<'a>(
    files: Vec<&'a FileInfo>,
    now: i64,
    options: &HiveCompactOptions,
    spans: &BTreeMap<String, Span>,
) -> (Vec<&'a FileInfo>, Vec<&'a FileInfo>) {
    let cold = files
        .iter()
        .all(|f| now - f.modified_ms >= ms(MERGED_WHOLE_AFTER));
    let eligible =
        |f: &FileInfo| small(f, options) && now - f.modified_ms >= ms(options.older_than);
    if !cold {
        if let Some(ordered) = in_write_order(&files, spans) {
            return merge_newest_run(ordered, eligible, options);
        }
    }
    let (mut merge, mut keep): (Vec<&FileInfo>, Vec<&FileInfo>) =
        files.into_iter().partition(|f| eligible(f));
    if !cold {
        merge.sort_by_key(|f| (f.size, f.path.clone()));
        let floor = options.target_size / TIER_FLOOR;
        let mut sum = 0u64;
        let mut n = 0;
        for (i, f) in merge.iter().enumerate() {
            if i > 0 && f.size <= (2 * sum).max(floor) {
                n = i + 1;
            }
            sum += f.size;
        }
        keep.extend(merge.drain(n..));
    }
    if merge.len() < 2 {
        keep.append(&mut merge);
    }
    (merge, keep)
}

/// The files in the order their rows were written, when every one has a span and all are of one
/// partition of one topic; None otherwise (or for no files).
fn in_write_order<'a>(
    files: &[&'a FileInfo],
    spans: &BTreeMap<String, Span>,
) -> Option<Vec<&'a FileInfo>> {
    let mut keyed: Vec<(Span, &'a FileInfo)> = files
        .iter()
        .map(|f| span_of(name_of(f), spans).map(|s| (s, *f)))
        .collect::<Option<_>>()?;
    joint(keyed.iter().map(|(s, _)| s))?;
    keyed.sort_by(|(a, fa), (b, fb)| (a.first, a.last, &fa.path).cmp(&(b.first, b.last, &fb.path)));
    Some(keyed.into_iter().map(|(_, f)| f).collect())
}

/// Of `files` in write order: the newest run of files that may be merged, and of it the longest
/// newest part whose largest file is under the tier floor or at most twice the others together.
fn merge_newest_run<'a>(
    files: Vec<&'a FileInfo>,
    eligible: impl Fn(&FileInfo) -> bool,
    options: &HiveCompactOptions,
) -> (Vec<&'a FileInfo>, Vec<&'a FileInfo>) {
    let mut end = files.len();
    while end > 0 && !eligible(files[end - 1]) {
        end -= 1;
    }
    let mut start = end;
    while start > 0 && eligible(files[start - 1]) {
        start -= 1;
    }
    let floor = options.target_size / TIER_FLOOR;
    let (mut sum, mut largest, mut from) = (0u64, 0u64, end);
    for i in (start..end).rev() {
        sum += files[i].size;
        largest = largest.max(files[i].size);
        if i + 1 < end && largest <= (2 * (sum - largest)).max(floor) {
            from = i;
        }
    }
    let merge = files[from..end].to_vec();
    let keep = files[..from].iter().chain(&files[end..]).copied().collect();
    (merge, keep)
}

/// Copies into `generation` the own folder's files that it neither holds (`manifest`) nor has a copy
/// of (`carried`, updated).
async fn carry_landed(
    lake: &Lake,
    own: &str,
    generation: &str,
    manifest: &Sources,
    carried: &mut BTreeSet<String>,
) -> Result<(), CatalogError> {
    for f in data_files(lake, own).await? {
        let name = name_of(&f).to_owned();
        if !manifest.sources.contains(&name) && !carried.contains(&name) {
            lake.copy(&f.path, &format!("{generation}/{name}")).await?;
            carried.insert(name);
        }
    }
    Ok(())
}

/// The writer's half of Hive compaction: a file written into a partition's own folder after a
/// compaction switched the partition to a generation folder is copied into that generation, so it is
/// visible as soon as it is written, whether or not the partition is still being filled.
///
/// Keeps the generations' `_sources.json` read so far (a generation's never changes).
#[derive(Debug, Default)]
pub struct CompactedPartitions {
    sources: std::collections::HashMap<String, std::sync::Arc<BTreeSet<String>>>,
    /// Locations already warned about (once each, not at every flush).
    warned: std::collections::HashSet<String>,
}

impl CompactedPartitions {
    /// How many generations' sources are kept before the cache starts again.
    const MAX_CACHED: usize = 4096;

    /// Makes the data files `written` visible through the catalog. Each item is a partition as the
    /// writer registered it (values, and its own folder as location) and the names of the files
    /// written into that folder. Where the catalog has the partition at a generation that does not
    /// hold a file (its `_sources.json` does not name it), the file is copied into it; the locations
    /// are read again after copying until none has moved (a compaction that switches between the
    /// copy and that read carries the file itself). Returns how many files were copied.
    pub fn make_visible<'a>(
        &'a mut self,
        lake: &'a Lake,
        catalog: &'a dyn Catalog,
        table: &'a str,
        written: &'a [(Partition, Vec<String>)],
    ) -> BoxFuture<'a, Result<usize, CatalogError>> {
        Box::pin(async move {
            let root = lake.url_of("");
            let rel_of = |url: &str| -> Option<String> {
                url.strip_prefix(&root)
                    .map(|r| r.trim_end_matches('/').to_owned())
            };
            let mut copies = 0;
            let mut copied_into: Vec<Option<String>> = vec![None; written.len()];
            let mut pending: Vec<usize> = (0..written.len()).collect();
            for _ in 0..MAX_SWITCHES {
                if pending.is_empty() {
                    return Ok(copies);
                }
                let values: Vec<Vec<String>> = pending
                    .iter()
                    .map(|&i| written[i].0.values.clone())
                    .collect();
                let at: std::collections::HashMap<Vec<String>, String> = catalog
                    .get_partitions(table, &values)
                    .await?
                    .into_iter()
                    .map(|p| (p.values, p.location))
                    .collect();
                let mut next = Vec::new();
                for i in pending {
                    let (own, names) = &written[i];
                    let Some(location) = at.get(&own.values) else {
                        continue;
                    };
                    let location = location.trim_end_matches('/');
                    if location == own.location.trim_end_matches('/')
                        || copied_into[i].as_deref() == Some(location)
                    {
                        continue;
                    }
                    let (Some(own_rel), Some(generation)) =
                        (rel_of(&own.location), rel_of(location))
                    else {
                        tracing::warn!(
                            "table {table}: partition {:?} is at {location}, outside the lake; \
                             its new files stay in {}",
                            own.values,
                            own.location
                        );
                        continue;
                    };
                    // Only a compaction's generation is followed: a partition pointed elsewhere
                    // (by hand, or by another tool) keeps the sink's files in its own folder.
                    let compacted = format!("{table}/{COMPACTED_FOLDER}/");
                    if !generation.contains(&compacted) {
                        if !self.warned.insert(location.to_owned()) {
                            continue;
                        }
                        tracing::warn!(
                            "table {table}: partition {:?} is at {location}, not a folder of \
                             ticklake compact; its new files stay in {}",
                            own.values,
                            own.location
                        );
                        continue;
                    }
                    let Some(held) = self.sources_of(lake, &generation).await? else {
                        if !self.warned.insert(location.to_owned()) {
                            continue;
                        }
                        tracing::warn!(
                            "table {table}: the merged folder {generation} has no {SOURCES_FILE}; \
                             the new files of partition {:?} stay in {} until a compaction \
                             merges them",
                            own.values,
                            own.location
                        );
                        continue;
                    };
                    for name in names.iter().filter(|n| !held.contains(*n)) {
                        let from = format!("{own_rel}/{name}");
                        match lake.copy(&from, &format!("{generation}/{name}")).await {
                            Ok(()) => copies += 1,
                            // A compaction deletes an own file only once a newer generation holds
                            // it (this one was read just before that switch).
                            Err(_) if !lake.exists(&from).await? => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    copied_into[i] = Some(location.to_owned());
                    next.push(i);
                }
                pending = next;
            }
            Err(CatalogError::Invalid(format!(
                "table {table}: {} partitions were switched to new files {MAX_SWITCHES} times while \
                 a flush made its files visible; is a compaction running in a loop?",
                pending.len()
            )))
        })
    }

    /// The names a generation holds; `None` if it has no `_sources.json`.
    async fn sources_of(
        &mut self,
        lake: &Lake,
        generation: &str,
    ) -> Result<Option<std::sync::Arc<BTreeSet<String>>>, CatalogError> {
        if let Some(held) = self.sources.get(generation) {
            return Ok(Some(held.clone()));
        }
        let path = format!("{generation}/{SOURCES_FILE}");
        if !lake.exists(&path).await? {
            return Ok(None);
        }
        let held = std::sync::Arc::new(parse_sources(&lake.get(&path).await?, generation)?.sources);
        if self.sources.len() >= Self::MAX_CACHED {
            self.sources.clear();
        }
        self.sources.insert(generation.to_owned(), held.clone());
        Ok(Some(held))
    }
}

/// How many times in a row a flush follows partitions being switched before it gives up.
const MAX_SWITCHES: usize = 20;

/// A generation's `_sources.json`.
async fn read_sources(lake: &Lake, table: &str, generation: &str) -> Result<Sources, CatalogError> {
    match lake.get(&format!("{generation}/{SOURCES_FILE}")).await {
        Ok(bytes) => parse_sources(&bytes, generation),
        Err(e) => Err(CatalogError::Invalid(format!(
            "table {table}: the compacted partition {generation} has no readable {SOURCES_FILE} \
             ({e}); it was not written by ticklake compact"
        ))),
    }
}

/// The contents of `generation`'s `_sources.json`.
fn parse_sources(bytes: &[u8], generation: &str) -> Result<Sources, CatalogError> {
    serde_json::from_slice::<Sources>(bytes).map_err(|e| {
        CatalogError::Invalid(format!("{generation}/{SOURCES_FILE} is not readable: {e}"))
    })
}

/// Drops from `held` the names that no file of the own folder can take again, so `_sources.json` does
/// not grow for the life of a partition: names no longer in the own folder (`in_own`) whose sink
/// range is not the last of its Kafka partition here (a name of the same topic and partition with a
/// higher first offset is held). A sink replays only the last range of each partition (the ledger's
/// last entry), so only those names can be written again; a writer fenced out before its write drops
/// it.
fn forget_unrepeatable(held: &mut BTreeSet<String>, in_own: &BTreeSet<&str>) {
    // (topic, partition) -> the highest first offset held.
    let mut last: std::collections::HashMap<(String, i32), i64> = std::collections::HashMap::new();
    for (topic, partition, offset) in held.iter().filter_map(|n| sink_file_key(n)) {
        let at = last.entry((topic, partition)).or_insert(offset);
        *at = (*at).max(offset);
    }
    held.retain(|name| {
        in_own.contains(name.as_str())
            || match sink_file_key(name) {
                Some((topic, partition, offset)) => last[&(topic, partition)] == offset,
                None => true,
            }
    });
}

/// Whether a generation's file is one a compaction wrote (`part-…`), not a sink's file
/// (`<topic>+<partition>+<offset>`: Kafka topic names have no `+`).
fn is_merged_part(name: &str) -> bool {
    name.starts_with("part-") && !name.contains('+')
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

/// Writes the batch as Parquet files of about `target` bytes into `folder`, named
/// `<stem>-NNNNN.parquet`; returns their sizes.
async fn write_parquet(
    lake: &Lake,
    folder: &str,
    stem: &str,
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
            &format!("{folder}/{stem}-{n:05}.parquet"),
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

    fn file(name: &str, size: u64, age_s: i64) -> FileInfo {
        FileInfo {
            path: format!("t/d/{name}"),
            size,
            modified_ms: 10_000_000 - age_s * 1000,
        }
    }

    fn names(files: &[&FileInfo]) -> Vec<String> {
        let mut n: Vec<String> = files.iter().map(|f| name_of(f).to_owned()).collect();
        n.sort();
        n
    }

    #[test]
    fn a_growing_partition_merges_its_small_files_in_tiers() {
        let options = HiveCompactOptions {
            target_size: 1000,
            older_than: Duration::from_secs(10),
            grace: Duration::ZERO,
        };
        let now = 10_000_000;
        // A partition being written to: the new small files are merged; the merged file of 300,
        // larger than twice their sum (3 x 40), stays; a large file and a young one stay too.
        let files = [
            file("a", 40, 60),
            file("b", 40, 60),
            file("c", 40, 60),
            file("part", 300, 60),
            file("large", 800, 60),
            file("young", 10, 1),
        ];
        let (merge, keep) = choose_merge(files.iter().collect(), now, &options, &BTreeMap::new());
        assert_eq!(names(&merge), ["a", "b", "c"]);
        assert_eq!(names(&keep), ["large", "part", "young"]);
        // Once the small ones add up to half of it, the merged file is merged again.
        let files = [
            file("a", 50, 60),
            file("b", 50, 60),
            file("c", 50, 60),
            file("part", 300, 60),
        ];
        let (merge, keep) = choose_merge(files.iter().collect(), now, &options, &BTreeMap::new());
        assert_eq!(names(&merge), ["a", "b", "c", "part"]);
        assert!(keep.is_empty());
        // One small file alone is not merged.
        let files = [file("a", 5, 60), file("part", 300, 60)];
        let (merge, keep) = choose_merge(files.iter().collect(), now, &options, &BTreeMap::new());
        assert!(merge.is_empty());
        assert_eq!(keep.len(), 2);
        // A partition not written to for an hour is merged whole.
        let files = [
            file("a", 5, 4000),
            file("part", 300, 4000),
            file("large", 800, 4000),
        ];
        let (merge, keep) = choose_merge(files.iter().collect(), now, &options, &BTreeMap::new());
        assert_eq!(names(&merge), ["a", "part"]);
        assert_eq!(names(&keep), ["large"]);
    }

    /// A sink's files in a partition being filled, from one Kafka partition: only neighbours are
    /// merged. By size alone the first and the last of these three would be.
    #[test]
    fn a_growing_partition_merges_only_neighbours_in_write_order() {
        let options = HiveCompactOptions {
            target_size: 128 << 20,
            older_than: Duration::ZERO,
            grace: Duration::ZERO,
        };
        let now = 10_000_000;
        let sink = |offset: i64, size: u64| file(&format!("t+3+{offset:020}.parquet"), size, 60);
        let files = [sink(100, 53_000), sink(200, 1_580_000), sink(300, 39_000)];
        let (merge, keep) = choose_merge(files.iter().collect(), now, &options, &BTreeMap::new());
        assert!(merge.is_empty(), "{:?}", names(&merge));
        assert_eq!(keep.len(), 3);
        // The next file: the newest two are merged, the middle one stays between them and the first.
        let files = [
            sink(100, 53_000),
            sink(200, 1_580_000),
            sink(300, 39_000),
            sink(400, 20_000),
        ];
        let (merge, keep) = choose_merge(files.iter().collect(), now, &options, &BTreeMap::new());
        assert_eq!(
            names(&merge),
            [
                "t+3+00000000000000000300.parquet",
                "t+3+00000000000000000400.parquet"
            ]
        );
        assert_eq!(keep.len(), 2);
        // A merged file with its span sits in its place: after the middle one, before newer files;
        // once the new ones add up to half of the files before them, all are merged.
        let spans = BTreeMap::from([(
            "part-1-00000.parquet".to_owned(),
            Span {
                topic: "t".to_owned(),
                partition: 3,
                first: 300,
                last: 400,
            },
        )]);
        let files = [
            sink(100, 53_000),
            sink(200, 1_580_000),
            file("part-1-00000.parquet", 59_000, 60),
            sink(500, 900_000),
            sink(600, 900_000),
        ];
        let (merge, keep) = choose_merge(files.iter().collect(), now, &options, &spans);
        assert_eq!(
            merge.len(),
            5,
            "{:?} kept {:?}",
            names(&merge),
            names(&keep)
        );
        let (merge, keep) = choose_merge(files[1..].iter().collect(), now, &options, &spans);
        assert_eq!(
            merge.len(),
            4,
            "{:?} kept {:?}",
            names(&merge),
            names(&keep)
        );
        // Without the merged file's span the order is unknown: by size, as before.
        let (merge, _) = choose_merge(files.iter().collect(), now, &options, &BTreeMap::new());
        assert!(merge.iter().any(|f| name_of(f) == "part-1-00000.parquet"));
        // A young file at the end stays; the run before it is merged.
        let files = [
            sink(100, 10_000),
            sink(200, 10_000),
            file("t+3+00000000000000000300.parquet", 10, 0),
        ];
        let young = HiveCompactOptions {
            older_than: Duration::from_secs(10),
            ..options
        };
        let (merge, keep) = choose_merge(files.iter().collect(), now, &young, &BTreeMap::new());
        assert_eq!(merge.len(), 2);
        assert_eq!(names(&keep), ["t+3+00000000000000000300.parquet"]);
    }

    #[test]
    fn held_names_are_forgotten_once_no_file_can_take_them_again() {
        let mut held: BTreeSet<String> = [
            "t+0+00000000000000000000.parquet",
            "t+0+00000000000000000100.parquet",
            "t+0+00000000000000000200.parquet",
            "t+1+00000000000000000050.parquet",
            "other-topic+0+00000000000000000010.parquet",
            "other-topic+0+00000000000000000020.parquet",
            "not-a-sink-file.parquet",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        // Still in the own folder: kept whatever its offset.
        let in_own = BTreeSet::from(["t+0+00000000000000000000.parquet"]);
        forget_unrepeatable(&mut held, &in_own);
        let left: Vec<&str> = held.iter().map(String::as_str).collect();
        assert_eq!(
            left,
            [
                "not-a-sink-file.parquet",
                "other-topic+0+00000000000000000020.parquet",
                "t+0+00000000000000000000.parquet",
                "t+0+00000000000000000200.parquet",
                "t+1+00000000000000000050.parquet",
            ]
        );
    }

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
