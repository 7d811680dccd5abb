//! The sink's path into a Hive table: each checkpoint's ranges are claimed in the lake's ledger, its
//! files are encoded and written while the sink reads on, and once they are all durable they are
//! registered in the catalog and the consumer group's offsets follow (see [`crate::ledger`]).
//!
//! At most one flush is being written at a time: the next one claims its ranges only after the one
//! before it is complete, so the ledger's chain keeps its rule (every entry but the last is complete).

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use ticklake_lake::{Lake, Partitioning};

use super::{lock, now_ms, Flushed, PendingFlush, Sink, WRITE_CONCURRENCY};
use crate::checkpoint::{Checkpoint, Job, Plan};
use crate::format::{encode, FileFormat};
use crate::ledger::Claim;
use crate::patience::{patiently, Patience};
use crate::register;
use crate::SinkError;

/// A flush whose ranges are claimed and whose files are being written.
pub(super) struct PendingHiveFlush {
    /// The writing of the files: per file, its bytes, its records that became dead letters because
    /// they could not be encoded, and its path when it is a data file.
    writes: tokio::task::JoinHandle<Result<Vec<WrittenFile>, SinkError>>,
    layout: Partitioning,
    /// What to register and commit once the files are written (its files are taken).
    plan: Plan,
    /// Partitions whose range was claimed before (a replay): their records are not counted again.
    replayed: Vec<i32>,
}

impl PendingHiveFlush {
    pub(super) fn is_finished(&self) -> bool {
        self.writes.is_finished()
    }
}

/// One file of a flush, once durable.
struct WrittenFile {
    bytes: u64,
    /// Records of the file's group that could not be encoded (they went to a dead-letter file).
    unwritable: u64,
    /// The data file's path in the lake (none for a dead-letter file).
    data: Option<String>,
}

impl Sink {
    /// Claims the checkpoint's ranges, plans its files and starts writing them. The partitions'
    /// positions move past the ranges at once, so the next checkpoint fills while these files are
    /// written; [`Sink::complete_hive_flush`] registers and commits them.
    pub(super) fn start_hive_flush(&mut self, mut taken: Checkpoint) -> Result<(), SinkError> {
        // Step 0: claim each partition's range in the ledger before writing any of its files.
        let mut replayed = Vec::new();
        for (p, entry) in taken.ranges() {
            let ledger = &self.ledger;
            let (claim, listed) = self
                .runtime
                .block_on(patiently("the lake's ledger", || ledger.claim(p, entry)))?;
            if let Some(pos) = lock(&self.buffer).positions.get_mut(&p) {
                pos.entries = listed;
            }
            match claim {
                Claim::Won => {}
                Claim::Same => replayed.push(p),
                Claim::Taken(other) => {
                    // Another writer decided this range (we were stalled, or it took the partition
                    // over): drop ours and write what the lake says, if the partition is still ours.
                    tracing::warn!(
                        "partition {p}: offsets {}..{} are another writer's (the lake's ledger goes \
                         on with {}..{}); dropping this sink's copy and resuming from the ledger",
                        entry.from,
                        entry.to,
                        other.from,
                        other.to
                    );
                    taken.revoke(&[p]);
                    let mut b = lock(&self.buffer);
                    b.revoke(&[p]);
                    if self.consumer.assignment().contains(&p) {
                        b.assigned.push(p);
                    }
                }
            }
        }
        if taken.is_empty() {
            return Ok(());
        }
        let layout = match self.layout.clone() {
            Some(layout) => layout,
            // Only dead letters: no evidence of the feed's shape yet, and no folder to place.
            None if taken.records == 0 => Partitioning::default(),
            None => self.choose_layout(&taken)?,
        };
        let cfg = &self.config;
        let mut plan = taken.plan(&cfg.topic, &cfg.table, &layout, cfg.format, &self.types)?;
        let writes = self.runtime.spawn(write_files(
            self.lake.clone(),
            std::mem::take(&mut plan.files),
            cfg.format,
            cfg.topic.clone(),
        ));
        // The next checkpoint of each partition starts where this one ends.
        {
            let mut b = lock(&self.buffer);
            for (p, e, _) in &plan.ranges {
                if let Some(pos) = b.positions.get_mut(p) {
                    pos.from = Some(e.to);
                    pos.replay_to = None;
                    if pos.entries.last() != Some(&e.from) {
                        pos.entries.push(e.from);
                    }
                }
            }
        }
        self.absorb_held();
        self.pending = Some(PendingFlush::Hive(PendingHiveFlush {
            writes,
            layout,
            plan,
            replayed,
        }));
        Ok(())
    }

    /// Completes a flush once its files are all durable: the dead letters go to the dead-letter
    /// topic, the new folders are registered, and the consumer group's offsets move past the ranges.
    pub(super) fn complete_hive_flush(&mut self, flush: PendingHiveFlush) -> Result<(), SinkError> {
        let written = self
            .runtime
            .block_on(flush.writes)
            .map_err(|e| SinkError::Encode(format!("the task writing a flush's files: {e}")))??;
        let cfg = &self.config;
        let unwritable: u64 = written.iter().map(|w| w.unwritable).sum();
        // The data files, as (folder relative to the table, name).
        let table_prefix = format!("{}/", cfg.table);
        let data_files: Vec<(String, String)> = written
            .iter()
            .filter_map(|w| w.data.as_deref()?.strip_prefix(&table_prefix))
            .map(|r| match r.rsplit_once('/') {
                Some((folder, name)) => (folder.to_owned(), name.to_owned()),
                None => (String::new(), r.to_owned()),
            })
            .collect();
        let (records, dead) = (
            flush.plan.records - unwritable,
            flush.plan.dead + unwritable,
        );
        // The dead-letter topic gets the dead letters before the offsets move (at least once: a replay
        // after a crash sends them again), keyed by the partition they came from, so they stay in order.
        if let Some(producer) = &mut self.dlq {
            let now_ms = now_ms();
            for (p, lines) in &flush.plan.dead_letters {
                let key = p.to_string();
                for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    producer.send(key.as_bytes(), line, now_ms)?;
                }
            }
            let delivery = producer.flush()?;
            if delivery.failed > 0 {
                return Err(SinkError::Bus(ticklake_bus::BusError::Undelivered {
                    failed: delivery.failed,
                    reason: delivery.last_error.unwrap_or_default(),
                }));
            }
        }
        // Every file of the checkpoint is durable: register what is new, then move the offsets past it.
        // (A new table whose layout is not chosen yet has no data file to register.)
        if let Some(registrar) = self.registrar.as_mut().filter(|_| self.layout.is_some()) {
            let lake = &self.lake;
            let table = self.runtime.block_on(async {
                let mut patience = Patience::new("the catalog");
                loop {
                    match registrar
                        .register(
                            lake,
                            &cfg.table,
                            &flush.layout,
                            cfg.format,
                            &flush.plan.schemas,
                            &flush.plan.folders,
                        )
                        .await
                    {
                        Ok(t) => break Ok(t.clone()),
                        Err(e) if patience.wait(&e).await => continue,
                        Err(e) => break Err(e),
                    }
                }
            })?;
            self.types.learn(&table);
            // A compaction may have switched a partition these files went into to merged files.
            if cfg.format == FileFormat::Parquet && !flush.layout.keys().is_empty() {
                self.runtime.block_on(async {
                    let mut patience = Patience::new("the catalog");
                    loop {
                        match registrar.make_visible(lake, &cfg.table, &data_files).await {
                            Ok(_) => break Ok(()),
                            Err(e) if patience.wait(&e).await => continue,
                            Err(e) => break Err(e),
                        }
                    }
                })?;
                if let Some(written) = &cfg.written {
                    written.record(
                        flush
                            .plan
                            .folders
                            .iter()
                            .map(|f| register::partition_values(f)),
                    );
                }
            }
        }
        // The ledger holds the ranges; the consumer group's offsets follow it for lag tools, for the
        // partitions still assigned (one revoked while its files were written is its next owner's to
        // commit). A failed commit (the group rebalanced meanwhile) loses nothing: the ledger counts.
        let assigned = self.consumer.assignment();
        let offsets: Vec<(i32, i64)> = flush
            .plan
            .ranges
            .iter()
            .filter(|(p, ..)| assigned.contains(p))
            .map(|(p, e, _)| (*p, e.to))
            .collect();
        if !offsets.is_empty() {
            if let Err(e) = self.consumer.commit(&offsets) {
                tracing::warn!(
                    "committing offsets to the consumer group: {e} (the lake's ledger has them)"
                );
            }
        }
        for (p, ..) in &flush.plan.ranges {
            let Some(mut entries) = lock(&self.buffer)
                .positions
                .get(p)
                .map(|pos| pos.entries.clone())
            else {
                continue;
            };
            self.runtime.block_on(self.ledger.trim(*p, &mut entries));
            if let Some(pos) = lock(&self.buffer).positions.get_mut(p) {
                pos.entries = entries;
            }
        }
        let rewritten: u64 = flush
            .plan
            .ranges
            .iter()
            .filter(|(p, ..)| flush.replayed.contains(p))
            .map(|(.., n)| n)
            .sum();
        self.count_flush(
            &flush.plan.stamps,
            Flushed {
                records: records.saturating_sub(rewritten),
                rewritten,
                dead,
                files: written.len() as u64,
                bytes: written.iter().map(|w| w.bytes).sum(),
            },
        );
        Ok(())
    }

    /// Picks a new table's partition folders from the records of its first flush and claims them in
    /// the catalog before any file is written: the table is created with them unless another sink
    /// created it first, whose layout is then kept.
    fn choose_layout(&mut self, taken: &Checkpoint) -> Result<Partitioning, SinkError> {
        let Some(registrar) = &mut self.registrar else {
            return Ok(Partitioning::default());
        };
        let choice = Partitioning::choose(&taken.shape());
        let cfg = &self.config;
        let lake = &self.lake;
        let table = self.runtime.block_on(async {
            let mut patience = Patience::new("the catalog");
            loop {
                match registrar
                    .claim(lake, &cfg.table, &choice.partitioning, cfg.format)
                    .await
                {
                    Err(e) if patience.wait(&e).await => continue,
                    other => break other,
                }
            }
        })?;
        let layout = register::layout_of(&table, &registrar.describe())?;
        if layout == choice.partitioning {
            tracing::info!(
                "table {:?}: partitioned by {layout}: {}",
                cfg.table,
                choice.reason
            );
        } else {
            tracing::info!(
                "table {:?}: partitioned by {layout}, as the sink that created it meanwhile chose",
                cfg.table
            );
        }
        self.layout = Some(layout.clone());
        Ok(layout)
    }
}

/// Encodes and writes the files of a flush, [`WRITE_CONCURRENCY`] at a time, waiting out outages of
/// the lake.
async fn write_files(
    lake: Lake,
    files: Vec<(String, Job)>,
    format: FileFormat,
    topic: String,
) -> Result<Vec<WrittenFile>, SinkError> {
    futures::stream::iter(files)
        .map(|(rel, job)| {
            let lake = lake.clone();
            let topic = topic.clone();
            async move {
                let (rel, bytes, unwritable, data) = match job {
                    Job::Raw(b) => (rel, b, 0, false),
                    Job::Data(batch) => {
                        let rows = batch.num_rows() as u64;
                        let encoded = {
                            let batch = batch.clone();
                            tokio::task::spawn_blocking(move || encode(&batch, format))
                                .await
                                .map_err(|e| SinkError::Encode(e.to_string()))?
                        };
                        match encoded {
                            Ok(bytes) => (rel, bytes, 0, true),
                            // Checked at decode time, so this is a bug, not the data: the group's
                            // records become dead letters instead of a crash loop.
                            Err(e) => {
                                tracing::error!(
                                    "{rel}: {e}; its {rows} records go to the dead letters"
                                );
                                let (dlq, lines) = unwritable_group(&topic, &rel, &batch, &e);
                                (dlq, lines, rows, false)
                            }
                        }
                    }
                };
                let n = bytes.len() as u64;
                patiently("the lake", || lake.put(&rel, bytes.clone())).await?;
                Ok::<_, SinkError>(WrittenFile {
                    bytes: n,
                    unwritable,
                    data: data.then_some(rel),
                })
            }
        })
        .buffer_unordered(WRITE_CONCURRENCY)
        .try_collect()
        .await
}

/// The dead-letter file for a group of records that could not be encoded: one line per record (the
/// record as a message, or its row number when even that fails) with the reason, at
/// `_ticklake/dlq/<topic>/<the group's file name>.unwritable.jsonl`.
fn unwritable_group(
    topic: &str,
    rel: &str,
    batch: &arrow::array::RecordBatch,
    error: &SinkError,
) -> (String, Bytes) {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let path = format!("_ticklake/dlq/{topic}/{name}.unwritable.jsonl");
    let messages = ticklake_model::arrow::batch_to_messages(batch).ok();
    let mut out = Vec::new();
    for row in 0..batch.num_rows() {
        let value = messages
            .as_ref()
            .map(|m| String::from_utf8_lossy(&m[row]).into_owned());
        let line = serde_json::json!({
            "topic": topic,
            "file": rel,
            "row": row,
            "reason": format!("the file of its group could not be written: {error}"),
            "value": value,
        });
        let _ = serde_json::to_writer(&mut out, &line);
        out.push(b'\n');
    }
    (path, Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unwritable_group_becomes_dead_letters() {
        let mut r = ticklake_model::Record::new("A", 0);
        r.close = Some(1.5);
        let batch = ticklake_model::arrow::records_to_batch(&[r.clone(), r]).unwrap();
        let (path, bytes) = unwritable_group(
            "t",
            "tbl/date=1970-01-01/symbol=A/t+0+00000000000000000007.parquet",
            &batch,
            &SinkError::Encode("boom".into()),
        );
        assert_eq!(
            path,
            "_ticklake/dlq/t/t+0+00000000000000000007.parquet.unwritable.jsonl"
        );
        let lines: Vec<serde_json::Value> = std::str::from_utf8(&bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["row"], 1);
        assert!(lines[0]["reason"].as_str().unwrap().ends_with("boom"));
        let value = lines[0]["value"].as_str().unwrap();
        assert_eq!(
            ticklake_model::json::decode(value.as_bytes())
                .unwrap()
                .close,
            Some(1.5)
        );
    }
}
