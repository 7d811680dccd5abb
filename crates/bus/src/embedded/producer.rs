//! The producer: `send` buffers frames per partition; a background thread appends every pending batch
//! in one transaction, so an acknowledged record is on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, TransactionBehavior};

use super::frame::encode_frame;
use super::retention::{self, now_ms, CHECK_EVERY};
use super::{open_topic, storage};
use crate::{murmur2_partition, BusError, Delivery, Producer};

/// Producer tuning.
#[derive(Debug, Clone, Copy)]
pub struct ProducerSettings {
    /// Write a batch once this many bytes are pending.
    pub batch_bytes: usize,
    /// Write pending messages at least this often.
    pub linger: Duration,
    /// `send` blocks while this many bytes are pending (back-pressure).
    pub max_pending_bytes: usize,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        ProducerSettings {
            batch_bytes: 1 << 20,
            linger: Duration::from_millis(10),
            max_pending_bytes: 16 << 20,
        }
    }
}

#[derive(Default)]
struct Pending {
    /// Encoded frames per partition, and their count.
    frames: BTreeMap<i32, (Vec<u8>, u64)>,
    bytes: usize,
    queued: u64,
    /// When the oldest pending message was queued: the linger runs from there.
    oldest: Option<Instant>,
    /// Messages taken by the writer and not yet committed.
    in_flight: u64,
    delivery: Delivery,
    /// `flush` is waiting: write now rather than after the linger.
    urgent: bool,
    closing: bool,
}

struct Shared {
    state: Mutex<Pending>,
    /// Wakes the writer (data or close) and waiters (space freed, batch written).
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic in the writer thread must not take the producer down with a poisoned lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A producer appending to the embedded log; a background thread writes batches.
pub struct EmbeddedProducer {
    partitions: i32,
    shared: Arc<Shared>,
    settings: ProducerSettings,
    writer: Option<JoinHandle<()>>,
}

impl EmbeddedProducer {
    /// Opens a producer for an existing topic under `dir`.
    pub fn open(dir: &Path, topic: &str, settings: ProducerSettings) -> Result<Self, BusError> {
        let (db, conn, partitions) = open_topic(dir, topic)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(Pending::default()),
            changed: Condvar::new(),
        });
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name(format!("ticklake-log-writer-{topic}"))
            .spawn(move || writer_loop(db, conn, s, settings))
            .map_err(|e| storage(dir, e))?;
        Ok(EmbeddedProducer {
            partitions,
            shared,
            settings,
            writer: Some(writer),
        })
    }
}

fn writer_loop(db: PathBuf, mut conn: Connection, shared: Arc<Shared>, settings: ProducerSettings) {
    let mut retention_applied: Option<Instant> = None;
    loop {
        let batches = {
            let mut st = shared.lock();
            while st.bytes < settings.batch_bytes && !st.closing && !(st.urgent && st.queued > 0) {
                let now = Instant::now();
                // `send` wakes this thread when the first message of a batch arrives.
                let wait = match st.oldest {
                    Some(t) if now >= t + settings.linger => break,
                    Some(t) => t + settings.linger - now,
                    None => Duration::from_secs(3600),
                };
                st = shared
                    .changed
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if st.queued == 0 && st.closing {
                return;
            }
            let batches = std::mem::take(&mut st.frames);
            st.in_flight = st.queued;
            st.queued = 0;
            st.oldest = None;
            st.urgent = false;
            st.bytes = 0;
            shared.changed.notify_all();
            batches
        };
        let count: u64 = batches.values().map(|(_, n)| n).sum();
        let result = append(&mut conn, batches);
        if result.is_ok() && retention_applied.is_none_or(|t| t.elapsed() >= CHECK_EVERY) {
            retention_applied = Some(Instant::now());
            match retention::apply(&mut conn) {
                Ok(d) if d.batches > 0 => tracing::info!(
                    "{}: retention deleted {} records in {} batches",
                    db.display(),
                    d.records,
                    d.batches
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("{}: applying the retention limits: {e}", db.display()),
            }
        }
        let mut st = shared.lock();
        st.in_flight = 0;
        match result {
            Ok(()) => st.delivery.acked += count,
            Err(e) => {
                st.delivery.failed += count;
                st.delivery.last_error = Some(format!("{}: {e}", db.display()));
            }
        }
        shared.changed.notify_all();
    }
}

fn append(conn: &mut Connection, batches: BTreeMap<i32, (Vec<u8>, u64)>) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_ms();
    for (partition, (frames, count)) in batches {
        let base: i64 = tx.query_row(
            "SELECT next_offset FROM heads WHERE partition = ?1",
            [partition],
            |r| r.get(0),
        )?;
        let blob = lz4_flex::compress_prepend_size(&frames);
        tx.execute(
            "INSERT INTO batches(partition, base_offset, count, data, appended_ms) \
             VALUES(?1, ?2, ?3, ?4, ?5)",
            params![partition, base, count as i64, blob, now],
        )?;
        tx.execute(
            "UPDATE heads SET next_offset = ?1 WHERE partition = ?2",
            params![base + count as i64, partition],
        )?;
    }
    tx.commit()
}

impl Producer for EmbeddedProducer {
    fn send(&mut self, key: &[u8], payload: &[u8], timestamp_ms: i64) -> Result<(), BusError> {
        let p = murmur2_partition(key, self.partitions);
        let mut st = self.shared.lock();
        while st.bytes >= self.settings.max_pending_bytes {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        let entry = st.frames.entry(p).or_default();
        let before = entry.0.len();
        encode_frame(&mut entry.0, key, payload, timestamp_ms);
        entry.1 += 1;
        let added = entry.0.len() - before;
        st.bytes += added;
        st.queued += 1;
        // Wake the writer when a batch starts (its linger begins) and when one is full.
        if st.oldest.is_none() {
            st.oldest = Some(Instant::now());
            self.shared.changed.notify_all();
        } else if st.bytes >= self.settings.batch_bytes {
            self.shared.changed.notify_all();
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<Delivery, BusError> {
        let mut st = self.shared.lock();
        st.urgent = true;
        self.shared.changed.notify_all();
        while st.queued > 0 || st.in_flight > 0 {
            st = self
                .shared
                .changed
                .wait_timeout(st, self.settings.linger)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(st.delivery.clone())
    }

    fn delivery(&self) -> Delivery {
        self.shared.lock().delivery.clone()
    }
}

impl Drop for EmbeddedProducer {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}
