//! The sink's path into an Iceberg table: resume where the table's snapshots say each partition ends,
//! flush a checkpoint as one atomic append that carries its offset ranges (refused if another writer
//! got there first). The lake's ledger is not used: the table is the source of truth.

use std::collections::HashMap;

use ticklake_iceberg::{Appended, IcebergConfig, IcebergLake, OffsetRange};

use super::{lock, Flushed, Sink};
use crate::checkpoint::{Checkpoint, Job, Plan, Position};
use crate::format::FileFormat;
use crate::patience::patiently;
use crate::SinkError;

/// The Iceberg side of a sink.
pub(super) struct IcebergState {
    tables: IcebergLake,
    /// Per assigned partition, the end of its records in the table (none: the table holds none).
    /// A checkpoint of dead letters only commits nothing, so the next append starts here, not at the
    /// checkpoint's own start.
    ends: HashMap<i32, i64>,
}

impl IcebergState {
    /// The Iceberg catalog `config` names.
    pub(super) async fn open(config: &IcebergConfig) -> Result<IcebergState, SinkError> {
        Ok(IcebergState {
            tables: IcebergLake::open(config).await?,
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

    /// Writes the checkpoint as one append to the table (dead letters as files beside it first: named
    /// by their range, a replay writes the same ones), then mirrors the offsets to the group.
    pub(super) fn flush_to_table(&mut self, taken: Checkpoint) -> Result<(), SinkError> {
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
        let mut batches = Vec::new();
        let mut dead_files = Vec::new();
        for (rel, job) in files {
            match job {
                Job::Data(batch) => batches.push(batch),
                Job::Raw(bytes) => dead_files.push((rel, bytes)),
            }
        }
        let lake = &self.lake;
        let mut bytes_written = 0u64;
        for (rel, bytes) in &dead_files {
            bytes_written += bytes.len() as u64;
            self.runtime
                .block_on(patiently("the lake", || lake.put(rel, bytes.clone())))?;
        }
        let Some(state) = &mut self.iceberg else {
            return Ok(());
        };
        let mut data_files = 0;
        if !batches.is_empty() {
            let append: Vec<OffsetRange> = ranges
                .iter()
                .map(|(p, e, _)| OffsetRange {
                    partition: *p,
                    from: state.ends.get(p).copied().unwrap_or(e.from),
                    to: e.to,
                })
                .collect();
            let (table, topic) = (&cfg.table, &cfg.topic);
            let tables = &state.tables;
            let started = std::time::Instant::now();
            let outcome = self.runtime.block_on(patiently("the Iceberg table", || {
                tables.append(table, topic, &append, &batches)
            }))?;
            tracing::debug!(
                "Iceberg checkpoint of {records} records written and committed in {:.1} ms: {outcome:?}",
                started.elapsed().as_secs_f64() * 1000.0
            );
            match outcome {
                Appended::Committed { files, bytes, .. } => {
                    data_files = files;
                    bytes_written += bytes;
                    for r in &append {
                        state.ends.insert(r.partition, r.to);
                    }
                }
                Appended::Taken {
                    partition,
                    recorded,
                } => {
                    tracing::warn!(
                        "partition {partition}: the table already holds its offsets up to {}; \
                         another writer committed this checkpoint's range: dropping this sink's \
                         copy and resuming from the table",
                        recorded.unwrap_or_default()
                    );
                    let parts: Vec<i32> = ranges.iter().map(|(p, ..)| *p).collect();
                    let assigned = self.consumer.assignment();
                    let mut b = lock(&self.buffer);
                    b.revoke(&parts);
                    b.assigned
                        .extend(parts.into_iter().filter(|p| assigned.contains(p)));
                    return Ok(());
                }
            }
        }
        let offsets: Vec<(i32, i64)> = ranges.iter().map(|(p, e, _)| (*p, e.to)).collect();
        if let Err(e) = self.consumer.commit(&offsets) {
            tracing::warn!("committing offsets to the consumer group: {e} (the table has them)");
        }
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
        self.count_flush(
            &stamps,
            Flushed {
                records,
                rewritten: 0,
                dead,
                files: (data_files + dead_files.len()) as u64,
                bytes: bytes_written,
            },
        );
        Ok(())
    }
}
