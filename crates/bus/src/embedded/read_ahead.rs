//! Reading the log, and reading it ahead: a thread that fetches and decodes a partition's next
//! batches while the consumer's caller works on the messages it already has.
//!
//! A read ahead is only ever used for the position it was asked for: when the consumer next needs
//! the partition's messages from offset `n`, it takes the read that started at `n`, or reads itself.
//! The log's batches never change once written, so a read made a moment earlier holds the same
//! messages; a seek or a revocation only makes a read ahead useless, never wrong.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{params, Connection};

use super::frame::decode_batch;
use super::{connect, storage};
use crate::{BusError, Message};

/// Appends to `buf` the messages of `partition` from offset `pos` on, up to four batches; returns
/// false when the log holds nothing there yet.
pub(super) fn read_batches(
    conn: &Connection,
    db: &Path,
    partition: i32,
    pos: i64,
    buf: &mut VecDeque<Message>,
) -> Result<bool, BusError> {
    let mut st = conn
        .prepare_cached(
            // The batch holding ?2 is found by a seek on the primary key, so a fetch costs the
            // same at the start and at the end of a long log.
            "SELECT base_offset, data FROM batches WHERE partition = ?1 \
             AND base_offset >= COALESCE((SELECT MAX(base_offset) FROM batches \
               WHERE partition = ?1 AND base_offset <= ?2), 0) \
             AND base_offset + count > ?2 ORDER BY base_offset LIMIT 4",
        )
        .map_err(|e| storage(db, e))?;
    let mut rows = st
        .query(params![partition, pos])
        .map_err(|e| storage(db, e))?;
    let mut fetched = false;
    // Each batch is decompressed from the row as SQLite holds it, with no copy into a Vec first.
    while let Some(row) = rows.next().map_err(|e| storage(db, e))? {
        let base: i64 = row.get(0).map_err(|e| storage(db, e))?;
        let blob = row
            .get_ref(1)
            .and_then(|v| v.as_blob().map_err(Into::into))
            .map_err(|e| storage(db, e))?;
        decode_batch(partition, base, blob, pos, buf).map_err(|e| storage(db, e))?;
        fetched = true;
    }
    Ok(fetched)
}

/// One read made ahead: the messages of `partition` from offset `from` on.
struct Fetched {
    partition: i32,
    from: i64,
    messages: Result<VecDeque<Message>, BusError>,
}

/// The read-ahead thread of one consumer, with its own connection to the log.
pub(super) struct ReadAhead {
    requests: Option<mpsc::Sender<(i32, i64)>>,
    results: mpsc::Receiver<Fetched>,
    /// Where each partition's read under way starts.
    pending: HashMap<i32, i64>,
    /// Reads done and not yet taken, by partition.
    ready: HashMap<i32, Fetched>,
    worker: Option<JoinHandle<()>>,
}

impl ReadAhead {
    /// Starts the thread; it opens its connection to `db` at its first read. Without a thread
    /// (the system refused one), every read is made by the consumer itself.
    pub(super) fn start(db: &Path) -> Self {
        let (requests, requested) = mpsc::channel::<(i32, i64)>();
        let (done, results) = mpsc::channel();
        let db: PathBuf = db.to_owned();
        let worker = std::thread::Builder::new()
            .name("ticklake-log-read".into())
            .spawn(move || {
                let mut conn: Option<Connection> = None;
                for (partition, from) in requested {
                    let mut messages = VecDeque::new();
                    let read = match &conn {
                        Some(c) => Ok(c),
                        None => connect(&db).map(|c| &*conn.insert(c)),
                    }
                    .and_then(|c| read_batches(c, &db, partition, from, &mut messages));
                    let fetched = Fetched {
                        partition,
                        from,
                        messages: read.map(|_| messages),
                    };
                    if done.send(fetched).is_err() {
                        break;
                    }
                }
            })
            .ok();
        ReadAhead {
            requests: worker.as_ref().map(|_| requests),
            results,
            pending: HashMap::new(),
            ready: HashMap::new(),
            worker,
        }
    }

    /// Asks for the messages of `partition` from offset `from` on, read in the background.
    pub(super) fn request(&mut self, partition: i32, from: i64) {
        if self.pending.get(&partition) == Some(&from) {
            return;
        }
        if let Some(requests) = &self.requests {
            if requests.send((partition, from)).is_ok() {
                self.pending.insert(partition, from);
            }
        }
    }

    /// The messages of `partition` from offset `from` on, if a read ahead started there and found
    /// some (waiting for it if it is under way). `None`: the caller reads itself.
    pub(super) fn take(&mut self, partition: i32, from: i64) -> Option<VecDeque<Message>> {
        while let Ok(fetched) = self.results.try_recv() {
            self.arrived(fetched);
        }
        while self.pending.get(&partition) == Some(&from) {
            match self.results.recv() {
                Ok(fetched) => self.arrived(fetched),
                Err(_) => {
                    self.pending.clear();
                    break;
                }
            }
        }
        let fetched = self.ready.remove(&partition)?;
        // An error or an empty read is left to the caller's own read: it reports the error, and
        // finds what was appended since.
        match fetched.messages {
            Ok(messages) if fetched.from == from && !messages.is_empty() => Some(messages),
            _ => None,
        }
    }

    /// Drops what was read ahead for `partition` (after a seek or a revocation).
    pub(super) fn forget(&mut self, partition: i32) {
        self.ready.remove(&partition);
        self.pending.remove(&partition);
    }

    fn arrived(&mut self, fetched: Fetched) {
        if self.pending.get(&fetched.partition) == Some(&fetched.from) {
            self.pending.remove(&fetched.partition);
            self.ready.insert(fetched.partition, fetched);
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Closing the requests ends the thread after the read it is making.
        self.requests.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
