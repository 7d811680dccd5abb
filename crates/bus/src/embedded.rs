//! The embedded log: a durable, partitioned topic in one SQLite file, for running without a broker.
//!
//! Layout: `<dir>/<topic>/log.sqlite` (WAL mode) and `<dir>/<topic>/members/` (group member locks).
//!
//! * Records are stored as batches: one row per batch and partition holding lz4-compressed frames, with
//!   the batch's base offset and count. A producer's background writer appends every pending batch in one
//!   transaction (`synchronous=FULL`), so an acknowledged record is on disk and survives `kill -9`.
//! * SQLite's locking makes concurrent producers and consumers in separate processes safe.
//! * Consumer groups: each member holds an exclusive OS lock on its own file in `members/`. The OS drops
//!   that lock when the process dies, however it dies, so the others see a dead member at once and take
//!   over its partitions. Partitions are spread round-robin over the live members sorted by id; a member
//!   first revokes (telling its [`RebalanceListener`](crate::RebalanceListener)) and releases what it no
//!   longer should own, and only free partitions are claimed, so no partition ever has two owners.
//!   Commits are fenced: a member can only commit partitions it owns.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::{
    murmur2_partition, validate_topic, BusError, Consumer, ConsumerOptions, Delivery, Message,
    PartitionLag, Producer, StartAt, TopicInfo,
};

const DB_FILE: &str = "log.sqlite";
const MEMBERS_DIR: &str = "members";

fn topic_dir(dir: &Path, topic: &str) -> PathBuf {
    dir.join(topic)
}

fn storage(path: &Path, e: impl std::fmt::Display) -> BusError {
    BusError::Storage {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Opens the topic's database with the settings every connection needs.
fn connect(db: &Path) -> Result<Connection, BusError> {
    let conn = Connection::open(db).map_err(|e| storage(db, e))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(|e| storage(db, e))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;",
    )
    .map_err(|e| storage(db, e))?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS heads(partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches(
  partition INTEGER NOT NULL, base_offset INTEGER NOT NULL, count INTEGER NOT NULL,
  data BLOB NOT NULL, PRIMARY KEY(partition, base_offset));
CREATE TABLE IF NOT EXISTS offsets(grp TEXT NOT NULL, partition INTEGER NOT NULL,
  next_offset INTEGER NOT NULL, PRIMARY KEY(grp, partition));
CREATE TABLE IF NOT EXISTS members(grp TEXT NOT NULL, member TEXT NOT NULL, PRIMARY KEY(grp, member));
CREATE TABLE IF NOT EXISTS owners(grp TEXT NOT NULL, partition INTEGER NOT NULL, member TEXT NOT NULL,
  PRIMARY KEY(grp, partition));
";

/// Creates the topic with `partitions` partitions unless it exists; returns its shape.
pub fn ensure_topic(dir: &Path, topic: &str, partitions: i32) -> Result<TopicInfo, BusError> {
    validate_topic(topic)?;
    let tdir = topic_dir(dir, topic);
    fs::create_dir_all(tdir.join(MEMBERS_DIR)).map_err(|e| storage(&tdir, e))?;
    let db = tdir.join(DB_FILE);
    let mut conn = connect(&db)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| storage(&db, e))?;
    tx.execute_batch(SCHEMA).map_err(|e| storage(&db, e))?;
    let existing: Option<i64> = tx
        .query_row("SELECT value FROM meta WHERE key='partitions'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| storage(&db, e))?;
    let info = match existing {
        Some(n) => TopicInfo {
            partitions: n as i32,
            created: false,
        },
        None => {
            tx.execute(
                "INSERT INTO meta(key, value) VALUES('partitions', ?1)",
                [partitions],
            )
            .map_err(|e| storage(&db, e))?;
            for p in 0..partitions {
                tx.execute(
                    "INSERT INTO heads(partition, next_offset) VALUES(?1, 0)",
                    [p],
                )
                .map_err(|e| storage(&db, e))?;
            }
            TopicInfo {
                partitions,
                created: true,
            }
        }
    };
    tx.commit().map_err(|e| storage(&db, e))?;
    Ok(info)
}

/// The partition count of `topic`, or `None` when it does not exist.
pub fn partition_count(dir: &Path, topic: &str) -> Result<Option<i32>, BusError> {
    match open_topic(dir, topic) {
        Ok((_, _, n)) => Ok(Some(n)),
        Err(BusError::NoSuchTopic(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens an existing topic: (database path, connection, partition count).
fn open_topic(dir: &Path, topic: &str) -> Result<(PathBuf, Connection, i32), BusError> {
    validate_topic(topic)?;
    let db = topic_dir(dir, topic).join(DB_FILE);
    if !db.exists() {
        return Err(BusError::NoSuchTopic(topic.to_owned()));
    }
    let conn = connect(&db)?;
    let n: i64 = conn
        .query_row("SELECT value FROM meta WHERE key='partitions'", [], |r| {
            r.get(0)
        })
        .map_err(|_| BusError::NoSuchTopic(topic.to_owned()))?;
    Ok((db, conn, n as i32))
}

// ---- batch encoding: frames of [ts i64][key len i32 (-1 = none)][key][value len u32][value], lz4 ----

fn encode_frame(out: &mut Vec<u8>, key: &[u8], payload: &[u8], ts: i64) {
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&(key.len() as i32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

fn decode_batch(
    partition: i32,
    base: i64,
    blob: &[u8],
    skip_below: i64,
    out: &mut VecDeque<Message>,
) -> Result<(), String> {
    let raw = lz4_flex::decompress_size_prepended(blob).map_err(|e| e.to_string())?;
    let mut at = 0usize;
    let mut offset = base;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
        let s = raw.get(*at..*at + n).ok_or_else(|| {
            format!("batch at offset {base} of partition {partition} is truncated")
        })?;
        *at += n;
        Ok(s)
    };
    while at < raw.len() {
        let ts = i64::from_le_bytes(take(&mut at, 8)?.try_into().unwrap_or_default());
        let klen = i32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap_or_default());
        let key = if klen >= 0 {
            Some(take(&mut at, klen as usize)?.to_vec())
        } else {
            None
        };
        let vlen = u32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap_or_default());
        let value = take(&mut at, vlen as usize)?;
        if offset >= skip_below {
            out.push_back(Message {
                partition,
                offset,
                key,
                payload: Some(value.to_vec()),
                timestamp_ms: Some(ts),
            });
        }
        offset += 1;
    }
    Ok(())
}

// ---- producer ----

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
    for (partition, (frames, count)) in batches {
        let base: i64 = tx.query_row(
            "SELECT next_offset FROM heads WHERE partition = ?1",
            [partition],
            |r| r.get(0),
        )?;
        let blob = lz4_flex::compress_prepend_size(&frames);
        tx.execute(
            "INSERT INTO batches(partition, base_offset, count, data) VALUES(?1, ?2, ?3, ?4)",
            params![partition, base, count as i64, blob],
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

// ---- consumer ----

/// Consumer-group tuning.
#[derive(Debug, Clone, Copy)]
pub struct GroupSettings {
    /// How often a member looks for joined or departed members.
    pub rebalance_interval: Duration,
    /// How long an empty poll sleeps before looking again for new data.
    pub idle_wait: Duration,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            rebalance_interval: Duration::from_millis(250),
            idle_wait: Duration::from_millis(5),
        }
    }
}

struct Membership {
    group: String,
    id: String,
    /// Held (locked) for as long as this member lives.
    _lock: File,
    lock_path: PathBuf,
    members_dir: PathBuf,
    last_check: Option<Instant>,
}

/// A consumer of the embedded log.
pub struct EmbeddedConsumer {
    db: PathBuf,
    conn: Connection,
    options: ConsumerOptions,
    partitions: i32,
    settings: GroupSettings,
    membership: Option<Membership>,
    /// Assigned partitions and the next offset to return from each.
    positions: BTreeMap<i32, i64>,
    buffers: HashMap<i32, VecDeque<Message>>,
    /// Where the round-robin over partitions continues.
    cursor: usize,
}

impl EmbeddedConsumer {
    /// Opens a consumer; with a group, joins it (partitions are assigned on the first poll).
    pub fn open(
        dir: &Path,
        options: ConsumerOptions,
        settings: GroupSettings,
    ) -> Result<Self, BusError> {
        let (db, conn, partitions) = open_topic(dir, &options.topic)?;
        let membership = match &options.group {
            None => None,
            Some(group) => Some(join(dir, &conn, &db, &options.topic, group)?),
        };
        let mut c = EmbeddedConsumer {
            db,
            conn,
            options,
            partitions,
            settings,
            membership,
            positions: BTreeMap::new(),
            buffers: HashMap::new(),
            cursor: 0,
        };
        if c.membership.is_none() {
            let all: Vec<i32> = (0..partitions).collect();
            for p in &all {
                let pos = c.start_position(*p)?;
                c.positions.insert(*p, pos);
            }
            if let Some(l) = &c.options.listener {
                l.on_assign(&all);
            }
        }
        Ok(c)
    }

    fn err(&self, e: impl std::fmt::Display) -> BusError {
        storage(&self.db, e)
    }

    fn high_watermark(&self, partition: i32) -> Result<i64, BusError> {
        self.conn
            .query_row(
                "SELECT next_offset FROM heads WHERE partition = ?1",
                [partition],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    fn start_position(&self, partition: i32) -> Result<i64, BusError> {
        if let Some(group) = &self.options.group {
            let committed: Option<i64> = self
                .conn
                .query_row(
                    "SELECT next_offset FROM offsets WHERE grp = ?1 AND partition = ?2",
                    params![group, partition],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| self.err(e))?;
            if let Some(c) = committed {
                return Ok(c);
            }
        }
        match self.options.start {
            StartAt::Earliest => Ok(0),
            StartAt::Latest => self.high_watermark(partition),
        }
    }

    /// Looks at the group's live members and moves partitions accordingly.
    fn rebalance(&mut self) -> Result<(), BusError> {
        let Some(m) = &self.membership else {
            return Ok(());
        };
        if m.last_check
            .is_some_and(|t| t.elapsed() < self.settings.rebalance_interval)
        {
            return Ok(());
        }
        let (group, me, members_dir) = (m.group.clone(), m.id.clone(), m.members_dir.clone());
        // 1. Drop dead members (their lock is free) and work out what this member should own.
        let desired: Vec<i32> = {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| storage(&self.db, e))?;
            let members: Vec<String> = {
                let mut st = tx
                    .prepare("SELECT member FROM members WHERE grp = ?1 ORDER BY member")
                    .map_err(|e| storage(&self.db, e))?;
                let rows = st
                    .query_map([&group], |r| r.get(0))
                    .map_err(|e| storage(&self.db, e))?;
                rows.collect::<Result<_, _>>()
                    .map_err(|e| storage(&self.db, e))?
            };
            let mut live = Vec::with_capacity(members.len());
            for other in members {
                if other == me || member_alive(&members_dir, &other) {
                    live.push(other);
                } else {
                    tx.execute(
                        "DELETE FROM members WHERE grp = ?1 AND member = ?2",
                        params![group, other],
                    )
                    .map_err(|e| storage(&self.db, e))?;
                    tx.execute(
                        "DELETE FROM owners WHERE grp = ?1 AND member = ?2",
                        params![group, other],
                    )
                    .map_err(|e| storage(&self.db, e))?;
                    let _ = fs::remove_file(members_dir.join(format!("{other}.lock")));
                }
            }
            tx.commit().map_err(|e| storage(&self.db, e))?;
            let rank = live.iter().position(|x| *x == me).unwrap_or(0);
            (0..self.partitions)
                .filter(|p| *p as usize % live.len().max(1) == rank)
                .collect()
        };
        // 2. Give up what this member should no longer own: listener first, then release.
        let revoke: Vec<i32> = self
            .positions
            .keys()
            .copied()
            .filter(|p| !desired.contains(p))
            .collect();
        if !revoke.is_empty() {
            if let Some(l) = &self.options.listener {
                l.on_revoke(&revoke);
            }
            for p in &revoke {
                self.positions.remove(p);
                self.buffers.remove(p);
                self.conn
                    .execute(
                        "DELETE FROM owners WHERE grp = ?1 AND partition = ?2 AND member = ?3",
                        params![group, p, me],
                    )
                    .map_err(|e| self.err(e))?;
            }
        }
        // 3. Claim what is desired and free.
        let mut claimed = Vec::new();
        for p in desired {
            if self.positions.contains_key(&p) {
                continue;
            }
            let n = self
                .conn
                .execute(
                    "INSERT OR IGNORE INTO owners(grp, partition, member) VALUES(?1, ?2, ?3)",
                    params![group, p, me],
                )
                .map_err(|e| self.err(e))?;
            let owner: String = self
                .conn
                .query_row(
                    "SELECT member FROM owners WHERE grp = ?1 AND partition = ?2",
                    params![group, p],
                    |r| r.get(0),
                )
                .map_err(|e| self.err(e))?;
            if n == 1 || owner == me {
                let pos = self.start_position(p)?;
                self.positions.insert(p, pos);
                claimed.push(p);
            }
        }
        if !claimed.is_empty() {
            if let Some(l) = &self.options.listener {
                l.on_assign(&claimed);
            }
        }
        if let Some(m) = &mut self.membership {
            m.last_check = Some(Instant::now());
        }
        Ok(())
    }

    /// Fills the buffer of `partition` from the log; returns false when nothing new is there.
    fn fetch(&mut self, partition: i32) -> Result<bool, BusError> {
        let pos = self.positions[&partition];
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT base_offset, data FROM batches WHERE partition = ?1 AND base_offset + count > ?2 \
                 ORDER BY base_offset LIMIT 4",
            )
            .map_err(|e| storage(&self.db, e))?;
        let rows: Vec<(i64, Vec<u8>)> = st
            .query_map(params![partition, pos], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| storage(&self.db, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| storage(&self.db, e))?;
        drop(st);
        let buf = self.buffers.entry(partition).or_default();
        for (base, blob) in &rows {
            decode_batch(partition, *base, blob, pos, buf).map_err(|e| storage(&self.db, e))?;
        }
        Ok(!rows.is_empty())
    }
}

/// True when `member`'s lock file is held by a live process.
fn member_alive(members_dir: &Path, member: &str) -> bool {
    let path = members_dir.join(format!("{member}.lock"));
    match File::options().read(true).write(true).open(&path) {
        Ok(f) => match f.try_lock() {
            Ok(()) => {
                let _ = f.unlock();
                false
            }
            Err(_) => true,
        },
        Err(_) => false,
    }
}

fn join(
    dir: &Path,
    conn: &Connection,
    db: &Path,
    topic: &str,
    group: &str,
) -> Result<Membership, BusError> {
    if group.is_empty() {
        return Err(BusError::Config("the consumer group name is empty".into()));
    }
    let members_dir = topic_dir(dir, topic).join(MEMBERS_DIR);
    fs::create_dir_all(&members_dir).map_err(|e| storage(&members_dir, e))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Sortable by join time, unique per process and call.
    let id = format!("{nanos:032}-{}", std::process::id());
    let lock_path = members_dir.join(format!("{id}.lock"));
    let lock = File::create(&lock_path).map_err(|e| storage(&lock_path, e))?;
    lock.lock().map_err(|e| storage(&lock_path, e))?;
    conn.execute(
        "INSERT INTO members(grp, member) VALUES(?1, ?2)",
        params![group, id],
    )
    .map_err(|e| storage(db, e))?;
    Ok(Membership {
        group: group.to_owned(),
        id,
        _lock: lock,
        lock_path,
        members_dir,
        last_check: None,
    })
}

impl Consumer for EmbeddedConsumer {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Message>, BusError> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            self.rebalance()?;
            let parts: Vec<i32> = self.positions.keys().copied().collect();
            for i in 0..parts.len() {
                if out.len() >= max {
                    break;
                }
                let p = parts[(self.cursor + i) % parts.len()];
                if self.buffers.get(&p).is_none_or(VecDeque::is_empty) && !self.fetch(p)? {
                    continue;
                }
                let buf = self.buffers.entry(p).or_default();
                while out.len() < max {
                    let Some(m) = buf.pop_front() else { break };
                    self.positions.insert(p, m.offset + 1);
                    out.push(m);
                }
            }
            self.cursor = self.cursor.wrapping_add(1);
            if !out.is_empty() || Instant::now() >= deadline {
                return Ok(out);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(self.settings.idle_wait.min(left));
        }
    }

    fn commit(&mut self, offsets: &[(i32, i64)]) -> Result<(), BusError> {
        let Some(m) = &self.membership else {
            return Err(BusError::NoGroup);
        };
        let (group, me) = (m.group.clone(), m.id.clone());
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| storage(&self.db, e))?;
        for (p, off) in offsets {
            let owner: Option<String> = tx
                .query_row(
                    "SELECT member FROM owners WHERE grp = ?1 AND partition = ?2",
                    params![group, p],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| storage(&self.db, e))?;
            if owner.as_deref() != Some(me.as_str()) {
                return Err(BusError::NotAssigned(*p));
            }
            tx.execute(
                "INSERT INTO offsets(grp, partition, next_offset) VALUES(?1, ?2, ?3) \
                 ON CONFLICT(grp, partition) DO UPDATE SET next_offset = excluded.next_offset",
                params![group, p, off],
            )
            .map_err(|e| storage(&self.db, e))?;
        }
        tx.commit().map_err(|e| storage(&self.db, e))
    }

    fn assignment(&self) -> Vec<i32> {
        self.positions.keys().copied().collect()
    }

    fn committed(&mut self, partition: i32) -> Result<Option<i64>, BusError> {
        let Some(group) = &self.options.group else {
            return Ok(None);
        };
        self.conn
            .query_row(
                "SELECT next_offset FROM offsets WHERE grp = ?1 AND partition = ?2",
                params![group, partition],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn seek(&mut self, partition: i32, offset: i64) -> Result<(), BusError> {
        if !self.positions.contains_key(&partition) {
            return Err(BusError::NotAssigned(partition));
        }
        self.positions.insert(partition, offset.max(0));
        self.buffers.remove(&partition);
        Ok(())
    }

    fn lag(&mut self) -> Result<Vec<PartitionLag>, BusError> {
        self.rebalance()?;
        self.positions
            .iter()
            .map(|(p, pos)| {
                Ok(PartitionLag {
                    partition: *p,
                    position: *pos,
                    high_watermark: self.high_watermark(*p)?,
                })
            })
            .collect()
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        // Leave the group cleanly so the others take over at once.
        if let Some(m) = &self.membership {
            let parts: Vec<i32> = self.positions.keys().copied().collect();
            if !parts.is_empty() {
                if let Some(l) = &self.options.listener {
                    l.on_revoke(&parts);
                }
            }
            let _ = self.conn.execute(
                "DELETE FROM owners WHERE grp = ?1 AND member = ?2",
                params![m.group, m.id],
            );
            let _ = self.conn.execute(
                "DELETE FROM members WHERE grp = ?1 AND member = ?2",
                params![m.group, m.id],
            );
            let _ = fs::remove_file(&m.lock_path);
        }
    }
}
