//! The sink's path into an Iceberg table: resume where the table's snapshots say each partition ends,
//! flush a checkpoint as one atomic append that carries its offset ranges (refused if another writer
//! got there first). The lake's ledger is not used: the table is the source of truth.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::Bytes;
use ticklake_iceberg::{Appended, IcebergConfig, IcebergLake, OffsetRange};
use ticklake_lake::Lake;

use super::{lock, Flushed, PendingFlush, Sink};
use crate::checkpoint::{Checkpoint, Job, Plan, Position};
use crate::format::FileFormat;
use crate::patience::patiently;
use crate::SinkError;

/// The Iceberg side of a sink.
pub(super) struct IcebergState {
    tables: Arc<IcebergLake>,
    /// Per assigned partition, the end of its records in the table (none: the table holds none).
    /// A checkpoint of dead letters only commits nothing, so the next append starts here, not at the
    /// checkpoint's own start.
    ends: HashMap<i32, i64>,
}

impl IcebergState {
    /// The Iceberg catalog `config` names.
    pub(super) async fn open(config: &IcebergConfig) -> Result<IcebergState, SinkError> {
        Ok(IcebergState {
            tables: Arc::new(IcebergLake::open(config).await?),
            ends: HashMap::new(),
        })
    }
}

impl Sink {
    /// Resumes newly assigned partitions where the table says they end; the first message taken must
    /// be the one at that offset (see [`Position::resync`]).
    pub(super) fn resume_from_table(&mut self, assigned: Vec<i32>) -> Result<(), SinkError> {
        if assigned.is_empty() {
            return Ok(());
        }
        let Some(state) = &mut self.iceberg else {
            return Ok(());
        };
        let (table, topic) = (&self.config.table, &self.config.topic);
        let tables = &state.tables;
        let ends = self.runtime.block_on(patiently("the Iceberg catalog", || {
            tables.offsets(table, topic)
        }))?;
        for p in assigned {
            let end = ends.get(&p).copied();
            match end {
                Some(end) => {
                    state.ends.insert(p, end);
                    let committed = self.consumer.committed(p).unwrap_or_else(|e| {
                        tracing::warn!("partition {p}: cannot read the group's offset: {e}");
                        None
                    });
                    if committed != Some(end) {
                        if let Err(e) = self.consumer.seek(p, end) {
                            tracing::warn!("partition {p}: {e}; moving it on its first message");
                        }
                    }
                }
                None => {
                    state.ends.remove(&p);
                }
            }
            lock(&self.buffer).positions.insert(
                p,
                Position {
                    from: end,
                    replay_to: None,
                    entries: Vec::new(),
                    resync: end.is_some(),
                    after_seek: None,
                },
            );
        }
        Ok(())
    }

    /// Starts writing the checkpoint as one append to the table (dead letters as files beside it
    /// first: named by their range, a replay writes the same ones). The partitions' positions move
    /// past the ranges at once; [`Sink::complete_append`] mirrors the offsets to the group once the
    /// append is committed.
    pub(super) fn start_append(&mut self, taken: Checkpoint) -> Result<(), SinkError> {
        let cfg = &self.config;
        let Plan {
            files,
            ranges,
            stamps,
            records,
            dead,
            ..
        } = taken.plan(
            &cfg.topic,
            &cfg.table,
            &self.layout.clone().unwrap_or_default(),
            // Iceberg data files are Parquet whatever --format says (the CLI refuses other formats).
            FileFormat::Parquet,
            &self.types,
        )?;
        let Some(state) = &self.iceberg else {
            return Ok(());
        };
        let mut batches = Vec::new();
        let mut dead_files = Vec::new();
        for (rel, job) in files {
            match job {
                Job::Data(batch) => batches.push(batch),
                Job::Raw(bytes) => dead_files.push((rel, bytes)),
            }
        }
        let append: Vec<OffsetRange> = ranges
            .iter()
            .map(|(p, e, _)| OffsetRange {
                partition: *p,
                from: state.ends.get(p).copied().unwrap_or(e.from),
                to: e.to,
            })
            .collect();
        let dead_file_count = dead_files.len();
        let writes = self.runtime.spawn(write_append(
            self.lake.clone(),
            state.tables.clone(),
            cfg.table.clone(),
            cfg.topic.clone(),
            append.clone(),
            batches,
            dead_files,
        ));
        {
            let mut b = lock(&self.buffer);
            for (p, e, _) in &ranges {
                if let Some(pos) = b.positions.get_mut(p) {
                    pos.from = Some(e.to);
                    pos.replay_to = None;
                }
            }
        }
        self.absorb_held();
        self.pending = Some(PendingFlush::Iceberg(PendingAppend {
            writes,
            append,
            stamps,
            records,
            dead,
            dead_files: dead_file_count,
        }));
        Ok(())
    }

    /// Completes an append once it is committed: the table's ends move, and the group's offsets
    /// follow for the partitions still assigned. An append refused because another writer committed
    /// the range first drops this sink's later records of those partitions and resumes them from
    /// the table.
    pub(super) fn complete_append(&mut self, pending: PendingAppend) -> Result<(), SinkError> {
        let PendingAppend {
            writes,
            append,
            stamps,
            records,
            dead,
            dead_files,
        } = pending;
        let (outcome, mut bytes_written) = self
            .runtime
            .block_on(writes)
            .map_err(|e| SinkError::Encode(format!("the task writing an Iceberg append: {e}")))??;
        let Some(state) = &mut self.iceberg else {
            return Ok(());
        };
        let mut data_files = 0;
        match outcome {
            None => {}
            Some(Appended::Committed { files, bytes, .. }) => {
                data_files = files;
                bytes_written += bytes;
                for r in &append {
                    state.ends.insert(r.partition, r.to);
                }
            }
            Some(Appended::Taken {
                partition,
                recorded,
            }) => {
                tracing::warn!(
                    "partition {partition}: the table already holds its offsets up to {}; \
                     another writer committed this checkpoint's range: dropping this sink's \
                     copy and resuming from the table",
                    recorded.unwrap_or_default()
                );
                let parts: Vec<i32> = append.iter().map(|r| r.partition).collect();
                let assigned = self.consumer.assignment();
                let mut b = lock(&self.buffer);
                b.revoke(&parts);
                b.assigned
                    .extend(parts.into_iter().filter(|p| assigned.contains(p)));
                return Ok(());
            }
        }
        let assigned = self.consumer.assignment();
        let offsets: Vec<(i32, i64)> = append
            .iter()
            .filter(|r| assigned.contains(&r.partition))
            .map(|r| (r.partition, r.to))
            .collect();
        if !offsets.is_empty() {
            if let Err(e) = self.consumer.commit(&offsets) {
                tracing::warn!(
                    "committing offsets to the consumer group: {e} (the table has them)"
                );
            }
        }
        self.count_flush(
            &stamps,
            Flushed {
                records,
                rewritten: 0,
                dead,
                files: (data_files + dead_files) as u64,
                bytes: bytes_written,
            },
        );
        Ok(())
    }
}

/// An Iceberg append being written.
pub(super) struct PendingAppend {
    /// The dead-letter files, then the append (none without records): what it did, and the bytes of
    /// the dead-letter files.
    writes: tokio::task::JoinHandle<Result<(Option<Appended>, u64), SinkError>>,
    /// The offset range of each partition the append covers.
    append: Vec<OffsetRange>,
    /// Message timestamps of the records (ms).
    stamps: Vec<i64>,
    records: u64,
    dead: u64,
    /// Dead-letter files written.
    dead_files: usize,
}

impl PendingAppend {
    pub(super) fn is_finished(&self) -> bool {
        self.writes.is_finished()
    }
}

/// Writes the dead-letter files, then appends the batches as one snapshot covering `append`, waiting
/// out outages of the lake and of the table's catalog.
async fn write_append(
    lake: Lake,
    tables: Arc<IcebergLake>,
    table: String,
    topic: String,
    append: Vec<OffsetRange>,
    batches: Vec<RecordBatch>,
    dead_files: Vec<(String, Bytes)>,
) -> Result<(Option<Appended>, u64), SinkError> {
    let mut bytes_written = 0u64;
    for (rel, bytes) in &dead_files {
        bytes_written += bytes.len() as u64;
        patiently("the lake", || lake.put(rel, bytes.clone())).await?;
    }
    if batches.is_empty() {
        return Ok((None, bytes_written));
    }
    let started = std::time::Instant::now();
    let outcome = patiently("the Iceberg table", || {
        tables.append(&table, &topic, &append, &batches)
    })
    .await?;
    tracing::debug!(
        "Iceberg checkpoint written and committed in {:.1} ms: {outcome:?}",
        started.elapsed().as_secs_f64() * 1000.0
    );
    drop(batches);
    release_free_memory();
    Ok((Some(outcome), bytes_written))
}

/// Gives the pages freed in every allocator arena back to the system. An append is encoded on a
/// runtime thread, in that thread's glibc arena, while the next checkpoint grows in the sink's: without
/// this, the peak memory is the sum of both arenas' high waters.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}
