//! Compaction of an Iceberg table: the small data files of each partition merged into large files
//! sorted by `symbol, ts`, committed as one `replace` snapshot (readers see either the old files or
//! the new ones, never both); then old snapshots are expired and files no snapshot references are
//! deleted once they are older than the retention.
//!
//! The Iceberg library (0.10) has no rewrite action and its commits cannot be built outside it, so the
//! replace is written with its lower-level parts: a manifest that keeps every untouched file
//! (`EXISTING`), marks each merged file `DELETED` and adds the new ones, a manifest list, the snapshot,
//! and a compare-and-set commit of the snapshot in the catalog (see [`crate::raw_catalog`]). A sink appending
//! meanwhile makes the swap fail; compaction then rebuilds the commit on the fresh table (the files it
//! merged are still there: appends only add) and tries again.
//!
//! Offsets: the replace snapshot records the end of every partition of every topic the table holds
//! (and says so), so the sink still resumes at the right place after older snapshots are expired.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arrow_array::RecordBatch;
use futures::future::BoxFuture;
use iceberg::spec::{
    DataFile, FormatVersion, ManifestListWriter, ManifestWriterBuilder, Operation, Snapshot,
    Summary,
};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};

use crate::lake::{all_recorded_offsets, live_entries, write_sorted, LiveEntry, COMPLETE_OFFSETS};
use crate::{IcebergError, IcebergLake};

/// How to compact.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// The size merged files aim at; files of at least three quarters of it are left alone.
    pub target_size: u64,
    /// Only files committed at least this long ago are merged (the newest stay as the sink wrote
    /// them for a while, e.g. for readers that follow the table).
    pub older_than: Duration,
    /// Snapshots older than this are expired (a reader still on an old snapshot has this long to
    /// finish), and the files only they referenced are deleted.
    pub retention: Duration,
    /// Files in the table's folder that no snapshot has ever referenced (left by a writer that died
    /// or was refused before its commit) are deleted once they are this old; younger ones may belong
    /// to a commit in progress.
    pub orphan_age: Duration,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            target_size: 128 << 20,
            older_than: Duration::ZERO,
            retention: Duration::from_secs(3600),
            orphan_age: Duration::from_secs(86_400),
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Partitions whose files were merged.
    pub partitions: usize,
    /// Files merged away.
    pub files_removed: usize,
    /// Files written instead.
    pub files_added: usize,
    /// Bytes of the files merged away.
    pub bytes_read: u64,
    /// Bytes of the files written.
    pub bytes_written: u64,
    /// Rows rewritten.
    pub records: u64,
    /// The replace snapshot, if files were merged.
    pub snapshot_id: Option<i64>,
    /// Snapshots expired.
    pub snapshots_expired: usize,
    /// Files deleted because no snapshot references them any more.
    pub files_deleted: usize,
    /// Another compaction merged some of the same files first: this one committed nothing (and
    /// deleted what it had written).
    pub superseded: bool,
}

impl IcebergLake {
    /// Merges the small files of each partition of `table`, expires snapshots older than the
    /// retention and deletes the files nothing references any more.
    pub fn compact<'a>(
        &'a self,
        table: &'a str,
        options: &'a CompactOptions,
    ) -> BoxFuture<'a, Result<Compacted, IcebergError>> {
        Box::pin(async move {
            let mut done = Compacted::default();
            let Some(t) = self.load(table).await? else {
                return Ok(done);
            };
            let now_ms = now_ms();
            let older_than_ms = i64::try_from(options.older_than.as_millis()).unwrap_or(i64::MAX);
            let entries = mergeable_entries(&t).await?;
            // Per partition, the files worth merging: small and old enough.
            let mut groups: BTreeMap<String, Vec<LiveEntry>> = BTreeMap::new();
            for e in entries {
                if e.file.file_size_in_bytes() * 4 < options.target_size * 3
                    && now_ms.saturating_sub(e.committed_ms) >= older_than_ms
                {
                    groups.entry(e.partition.clone()).or_default().push(e);
                }
            }
            groups.retain(|_, files| files.len() >= 2);
            if !groups.is_empty() {
                let mut removed = Vec::new();
                let mut added = Vec::new();
                for files in groups.values() {
                    // Bins of about the target size, each read and written at once.
                    for bin in bins(files, options.target_size) {
                        if bin.len() < 2 {
                            continue;
                        }
                        let batches = read_files(&t, &bin).await?;
                        done.records += bin.iter().map(|e| e.file.record_count()).sum::<u64>();
                        let target = usize::try_from(options.target_size).unwrap_or(usize::MAX);
                        let written = write_sorted(&t, "compacted", &batches, target).await?;
                        done.bytes_read +=
                            bin.iter().map(|e| e.file.file_size_in_bytes()).sum::<u64>();
                        done.bytes_written +=
                            written.iter().map(|f| f.file_size_in_bytes()).sum::<u64>();
                        removed.extend(bin.iter().map(|e| e.file.file_path().to_owned()));
                        added.extend(written);
                    }
                }
                if !removed.is_empty() {
                    match self.replace(table, &removed, &added).await? {
                        Some(id) => {
                            done.partitions = groups.len();
                            done.files_removed = removed.len();
                            done.files_added = added.len();
                            done.snapshot_id = Some(id);
                        }
                        None => {
                            done.superseded = true;
                            done.records = 0;
                            done.bytes_read = 0;
                            done.bytes_written = 0;
                            for f in &added {
                                let _ = t.file_io().delete(f.file_path()).await;
                            }
                        }
                    }
                }
            }
            let (expired, deleted) = self
                .expire_and_clean(table, options.retention, options.orphan_age)
                .await?;
            done.snapshots_expired = expired;
            done.files_deleted = deleted;
            Ok(done)
        })
    }

    /// Commits a `replace` snapshot: `removed` (paths of live files) out, `added` in. Retried on the
    /// fresh table when another commit lands first; `None` when another compaction replaced some of
    /// the files first (nothing is committed then).
    async fn replace(
        &self,
        table: &str,
        removed: &[String],
        added: &[DataFile],
    ) -> Result<Option<i64>, IcebergError> {
        let err = Self::error(table);
        let removed: HashSet<&str> = removed.iter().map(String::as_str).collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let t = self
                .load(table)
                .await?
                .ok_or_else(|| IcebergError::Invalid {
                    table: table.to_owned(),
                    message: "the table disappeared during compaction".into(),
                })?;
            let metadata = t.metadata();
            if metadata.format_version() != FormatVersion::V2 {
                return Err(IcebergError::Invalid {
                    table: table.to_owned(),
                    message: format!(
                        "compaction writes format version 2 tables; this one is {}",
                        metadata.format_version()
                    ),
                });
            }
            let parent = metadata
                .current_snapshot()
                .ok_or_else(|| IcebergError::Invalid {
                    table: table.to_owned(),
                    message: "the table lost its snapshot during compaction".into(),
                })?;
            let entries = mergeable_entries(&t).await?;
            let live: HashSet<&str> = entries.iter().map(|e| e.file.file_path()).collect();
            if let Some(gone) = removed.iter().find(|p| !live.contains(**p)) {
                tracing::info!(
                    "table {table}: another compaction merged {gone} meanwhile; this one commits nothing"
                );
                return Ok(None);
            }
            let snapshot_id = new_snapshot_id(&t);
            let sequence_number = metadata.next_sequence_number();
            let location = metadata.location().trim_end_matches('/').to_owned();
            let unique = uuid::Uuid::now_v7();
            let manifest_path = format!("{location}/metadata/{unique}-m0.avro");
            let spec = metadata.default_partition_spec().as_ref().clone();
            let schema = metadata.current_schema().clone();
            let mut writer = ManifestWriterBuilder::new(
                t.file_io().new_output(&manifest_path).map_err(&err)?,
                Some(snapshot_id),
                schema.clone(),
                spec,
            )
            .build_v2_data();
            let (mut deleted_records, mut deleted_bytes) = (0u64, 0u64);
            for e in &entries {
                if removed.contains(e.file.file_path()) {
                    deleted_records += e.file.record_count();
                    deleted_bytes += e.file.file_size_in_bytes();
                    writer
                        .add_delete_file(e.file.clone(), e.sequence_number, e.file_sequence_number)
                        .map_err(&err)?;
                } else {
                    writer
                        .add_existing_file(
                            e.file.clone(),
                            e.snapshot_id,
                            e.sequence_number,
                            e.file_sequence_number,
                        )
                        .map_err(&err)?;
                }
            }
            for f in added {
                writer.add_file(f.clone(), sequence_number).map_err(&err)?;
            }
            let manifest = writer.write_manifest_file().await.map_err(&err)?;
            let list_path = format!("{location}/metadata/snap-{snapshot_id}-{unique}.avro");
            let mut list = ManifestListWriter::v2(
                t.file_io()
                    .new_output(&list_path)
                    .map_err(&err)?
                    .writer()
                    .await
                    .map_err(&err)?,
                snapshot_id,
                Some(parent.snapshot_id()),
                sequence_number,
            );
            list.add_manifests(std::iter::once(manifest))
                .map_err(&err)?;
            list.close().await.map_err(&err)?;

            let added_records: u64 = added.iter().map(DataFile::record_count).sum();
            let added_bytes: u64 = added.iter().map(DataFile::file_size_in_bytes).sum();
            let total = |key: &str| {
                parent
                    .summary()
                    .additional_properties
                    .get(key)
                    .and_then(|v| v.parse::<u64>().ok())
            };
            let mut properties = HashMap::from([
                ("added-data-files".to_owned(), added.len().to_string()),
                ("deleted-data-files".to_owned(), removed.len().to_string()),
                ("added-records".to_owned(), added_records.to_string()),
                ("deleted-records".to_owned(), deleted_records.to_string()),
                ("added-files-size".to_owned(), added_bytes.to_string()),
                ("removed-files-size".to_owned(), deleted_bytes.to_string()),
                (
                    "total-data-files".to_owned(),
                    (entries.len() - removed.len() + added.len()).to_string(),
                ),
                (
                    "total-records".to_owned(),
                    entries
                        .iter()
                        .map(|e| e.file.record_count())
                        .sum::<u64>()
                        .to_string(),
                ),
                ("total-delete-files".to_owned(), "0".to_owned()),
                (COMPLETE_OFFSETS.to_owned(), "true".to_owned()),
            ]);
            if let Some(size) = total("total-files-size") {
                properties.insert(
                    "total-files-size".to_owned(),
                    (size + added_bytes)
                        .saturating_sub(deleted_bytes)
                        .to_string(),
                );
            }
            for ((topic, partition), end) in all_recorded_offsets(t.metadata_ref()) {
                properties.insert(
                    format!("ticklake.kafka.{topic}.{partition}"),
                    format!("{end}..{end}"),
                );
            }
            let snapshot = Snapshot::builder()
                .with_snapshot_id(snapshot_id)
                .with_parent_snapshot_id(Some(parent.snapshot_id()))
                .with_sequence_number(sequence_number)
                .with_timestamp_ms(now_ms().max(parent.timestamp_ms() + 1))
                .with_manifest_list(list_path.clone())
                .with_summary(Summary {
                    operation: Operation::Replace,
                    additional_properties: properties,
                })
                .with_schema_id(metadata.current_schema_id())
                .build();
            if self
                .raw
                .commit_snapshot(&t, &self.namespace_name(), snapshot)
                .await?
            {
                return Ok(Some(snapshot_id));
            }
            // Another commit landed first: the files written for this attempt are orphans.
            for path in [manifest_path, list_path] {
                let _ = t.file_io().delete(&path).await;
            }
            if attempt >= 20 {
                return Err(IcebergError::Invalid {
                    table: table.to_owned(),
                    message: "compaction's commit conflicted 20 times in a row; try again later"
                        .into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
        }
    }

    /// Expires the snapshots older than `retention` that the offsets no longer need (those before the
    /// newest snapshot recording every partition's end) and deletes the files only they referenced;
    /// then deletes the files under the table's folder that nothing references and that are older
    /// than `orphan_age`.
    async fn expire_and_clean(
        &self,
        table: &str,
        retention: Duration,
        orphan_age: Duration,
    ) -> Result<(usize, usize), IcebergError> {
        let err = Self::error(table);
        let Some(t) = self.load(table).await? else {
            return Ok((0, 0));
        };
        let age =
            |d: Duration| now_ms().saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let cutoff = age(retention);
        let metadata = t.metadata_ref();
        let mut expired = Vec::new();
        if let Some(current) = metadata.current_snapshot_id() {
            let mut complete_seen = false;
            for s in iceberg::util::snapshot::ancestors_of(&metadata, current) {
                if complete_seen && s.timestamp_ms() < cutoff {
                    expired.push(s.snapshot_id());
                }
                if s.summary()
                    .additional_properties
                    .contains_key(COMPLETE_OFFSETS)
                {
                    complete_seen = true;
                }
            }
        }
        let (t, expired_files) = if expired.is_empty() {
            (t, HashSet::new())
        } else {
            let files = referenced(&t, &expired, false).await?;
            let tx = Transaction::new(&t);
            let tx = tx
                .expire_snapshots()
                .expire_older_than_ms(0)
                .expire_snapshot_ids(expired.iter().copied())
                .apply(tx)
                .map_err(&err)?;
            (tx.commit(self.catalog.as_ref()).await.map_err(&err)?, files)
        };
        let ids: Vec<i64> = t.metadata().snapshots().map(|s| s.snapshot_id()).collect();
        let mut keep = referenced(&t, &ids, true).await?;
        if let Some(l) = t.metadata_location() {
            keep.insert(l.to_owned());
        }
        for log in t.metadata().metadata_log() {
            keep.insert(log.metadata_file.clone());
        }
        let mut deleted = 0;
        for url in expired_files.difference(&keep) {
            if t.file_io().delete(url).await.is_ok() {
                tracing::debug!("deleted {url}: only expired snapshots referenced it");
                deleted += 1;
            }
        }
        if let Some(root) = t.metadata().location().strip_prefix("file://") {
            let orphan_cutoff = age(orphan_age);
            for folder in ["data", "metadata"] {
                for path in files_under(&Path::new(root).join(folder)) {
                    let url = format!("file://{}", path.display());
                    if keep.contains(&url) {
                        continue;
                    }
                    let old = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .is_some_and(|d| (d.as_millis() as i64) < orphan_cutoff);
                    if old && std::fs::remove_file(&path).is_ok() {
                        tracing::debug!("deleted {url}: no snapshot references it");
                        deleted += 1;
                    }
                }
            }
        }
        Ok((expired.len(), deleted))
    }
}

/// The files the given snapshots reference: their manifest lists, manifests and data files (only
/// the live ones if `alive`: a `DELETED` entry is a tombstone, only older snapshots need its file).
async fn referenced(
    t: &Table,
    snapshot_ids: &[i64],
    alive: bool,
) -> Result<HashSet<String>, IcebergError> {
    let name = t.identifier().name().to_owned();
    let err = IcebergLake::error(&name);
    let mut files = HashSet::new();
    for id in snapshot_ids {
        let Some(snapshot) = t.metadata().snapshot_by_id(*id) else {
            continue;
        };
        files.insert(snapshot.manifest_list().to_owned());
        let list = t
            .manifest_list_reader(snapshot)
            .load()
            .await
            .map_err(&err)?;
        for manifest_file in list.entries() {
            // Manifests are immutable and each snapshot's list carries its parent's forward: one
            // read per manifest, not one per snapshot that lists it.
            if !files.insert(manifest_file.manifest_path.clone()) {
                continue;
            }
            let manifest = manifest_file
                .load_manifest(t.file_io())
                .await
                .map_err(&err)?;
            for e in manifest.entries() {
                if !alive || e.is_alive() {
                    files.insert(e.file_path().to_owned());
                }
            }
        }
    }
    Ok(files)
}

/// Every regular file under `dir`, recursively (none if it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in read.flatten() {
            match entry.file_type() {
                Ok(ft) if ft.is_dir() => stack.push(entry.path()),
                Ok(ft) if ft.is_file() => out.push(entry.path()),
                _ => {}
            }
        }
    }
    out
}

/// The live data files of the table's current snapshot, checked for what compaction can merge: all
/// in the current partition spec, no row-level deletes.
async fn mergeable_entries(table: &Table) -> Result<Vec<LiveEntry>, IcebergError> {
    let entries = live_entries(table).await?;
    let invalid = |message: &str| IcebergError::Invalid {
        table: table.identifier().name().to_owned(),
        message: message.to_owned(),
    };
    let default_spec = table.metadata().default_partition_spec_id();
    if entries.iter().any(|e| e.spec_id != default_spec) {
        return Err(invalid(
            "compaction needs every data file in the table's current partition spec; this table's \
             spec changed",
        ));
    }
    if entries
        .iter()
        .any(|e| e.file.content_type() != iceberg::spec::DataContentType::Data)
    {
        return Err(invalid(
            "the table has row-level delete files; compaction merges data files of tables without \
             deletes",
        ));
    }
    Ok(entries)
}

/// Files split into bins of about `target` bytes, smallest first.
fn bins(files: &[LiveEntry], target: u64) -> Vec<Vec<LiveEntry>> {
    let mut sorted: Vec<&LiveEntry> = files.iter().collect();
    sorted.sort_by_key(|e| (e.committed_ms, e.file.file_path().to_owned()));
    let mut out: Vec<Vec<LiveEntry>> = vec![Vec::new()];
    let mut size = 0;
    for e in sorted {
        if size > 0 && size + e.file.file_size_in_bytes() > target {
            out.push(Vec::new());
            size = 0;
        }
        size += e.file.file_size_in_bytes();
        out.last_mut().expect("a bin").push(e.clone());
    }
    out
}

/// The rows of the files.
async fn read_files(table: &Table, files: &[LiveEntry]) -> Result<Vec<RecordBatch>, IcebergError> {
    let name = table.identifier().name().to_owned();
    let err = IcebergLake::error(&name);
    let mut batches = Vec::new();
    for e in files {
        let bytes = table
            .file_io()
            .new_input(e.file.file_path())
            .map_err(&err)?
            .read()
            .await
            .map_err(&err)?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.with_batch_size(64 * 1024).build())
            .map_err(|e2| IcebergError::Invalid {
                table: name.clone(),
                message: format!("reading {}: {e2}", e.file.file_path()),
            })?;
        for batch in reader {
            batches.push(batch.map_err(|e2| IcebergError::Invalid {
                table: name.clone(),
                message: format!("reading {}: {e2}", e.file.file_path()),
            })?);
        }
    }
    Ok(batches)
}

/// A snapshot id the table does not have yet.
fn new_snapshot_id(table: &Table) -> i64 {
    loop {
        let (hi, lo) = uuid::Uuid::now_v7().as_u64_pair();
        let id = ((hi ^ lo) & (i64::MAX as u64)) as i64;
        if id != 0 && table.metadata().snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
