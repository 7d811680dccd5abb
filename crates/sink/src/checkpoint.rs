//! The open checkpoint: the messages consumed since the last commit, decoded, checked and grouped by
//! lake folder, until a flush turns them into files.
//!
//! Every message ends in exactly one of two places: a record of a [`FileGroup`] (one future file), or a
//! dead letter with its reason. Everything a flush needs is checked here, when the message arrives
//! (the decoder's rules, the column types of the table, the size limit), so a record accepted into a
//! checkpoint can always be written.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use base64::Engine as _;
use bytes::Bytes;
use indexmap::IndexMap;
use ticklake_bus::Message;
use ticklake_lake::layout::file_name;
use ticklake_lake::{FeedShape, Partitioning};
use ticklake_model::arrow::{concat_union, BatchBuilder};
use ticklake_model::{json, Record};

use crate::columns::ColumnTypes;
use crate::format::FileFormat;
use crate::ledger::Entry;
use crate::SinkError;

/// What an open group costs in memory beyond its records (builders, map entry), counted against
/// `--flush-bytes` so that thousands of small lake partitions flush early instead of growing.
pub(crate) const GROUP_OVERHEAD: usize = 4096;

/// What a route (a time bucket and symbol's entry in a checkpoint's routing map) costs beyond its
/// symbol, counted like [`GROUP_OVERHEAD`]: a feed of a new symbol in every message, under a layout
/// without `symbol`, grows the map and not the groups.
const ROUTE_OVERHEAD: usize = 64;

/// The rules a message must pass to become a record of the lake.
pub(crate) struct Rules<'a> {
    pub topic: &'a str,
    pub partitioning: &'a Partitioning,
    /// Larger messages are dead-lettered.
    pub max_message_bytes: usize,
    /// The table's column types (new columns are decided here).
    pub types: &'a mut ColumnTypes,
}

/// The records of one future file: one lake folder of one Kafka partition.
struct FileGroup {
    first_offset: i64,
    builder: BatchBuilder,
}

#[derive(Default)]
struct PartitionCheckpoint {
    /// The offset the checkpoint starts at (its ledger entry's `from`).
    from: i64,
    /// The layout its groups' folders follow: the table's, or `date,symbol` while a new table's is
    /// not chosen yet (a flush then merges them into the chosen one's folders).
    routed_by: Partitioning,
    /// The groups by folder, in the order the folders were first seen (a route holds a group's
    /// index).
    groups: IndexMap<String, FileGroup, FastHash>,
    /// The group of each (time bucket, symbol) seen, so that routing a record formats no string and
    /// compares none: one lookup of a number and a short string. Each route counts against
    /// `--flush-bytes` ([`ROUTE_OVERHEAD`]), so the map is as bounded as the groups.
    routes: HashMap<i64, HashMap<Box<str>, usize, FastHash>, FastHash>,
    dead: Vec<u8>,
    dead_first: Option<i64>,
    dead_count: u64,
    next_offset: i64,
    records: usize,
    bytes: usize,
    /// Message timestamps (ms) of the buffered records, for freshness.
    stamps: Vec<i64>,
}

/// Where an assigned partition stands in the ledger.
#[derive(Debug, Default, Clone)]
pub(crate) struct Position {
    /// Where the next checkpoint starts (`None`: at the first message, for a partition the ledger does
    /// not know yet).
    pub from: Option<i64>,
    /// The end of a range claimed before (a replay): the next checkpoint ends exactly there.
    pub replay_to: Option<i64>,
    /// Starts of the partition's ledger entries as listed at its last claim (or its resumption), oldest
    /// first: what the next trim deletes from.
    pub entries: Vec<i64>,
    /// Resumed from the ledger: the first message taken must be the one at `from`. A consumer that
    /// delivers later offsets first (it started elsewhere, or a seek was overtaken by the group's
    /// committed offset) is moved back to `from` until it delivers it.
    pub resync: bool,
    /// The first offset delivered after the last move back: the same one twice means the topic has no
    /// message at `from` (a transaction marker, or retention removed it), so it is taken.
    pub after_seek: Option<i64>,
}

/// The hasher of the routing maps: their keys are short (a number, a symbol, a folder), looked up once
/// per record, where SipHash cost more than the lookup. Seeded at random per map, so no feed can
/// choose symbols that collide.
type FastHash = ahash::RandomState;

impl PartitionCheckpoint {
    /// The group of a record of `symbol` at `ts` (µs), made (starting at `offset`) if its folder has
    /// none yet, and the memory (beyond the record) that its routing took: a new group's and a new
    /// route's overhead.
    fn group_for(&mut self, symbol: &str, ts: i64, offset: i64) -> (&mut FileGroup, usize) {
        let bucket = self.routed_by.time_bucket(ts);
        let known = self
            .routes
            .get(&bucket)
            .and_then(|s| s.get(symbol))
            .copied();
        let (i, added) = match known {
            Some(i) => (i, 0),
            None => {
                let path = self.routed_by.path_for(symbol, ts);
                let (i, made) = match self.groups.get_index_of(&path) {
                    Some(i) => (i, false),
                    None => {
                        let group = FileGroup {
                            first_offset: offset,
                            builder: BatchBuilder::new(),
                        };
                        (self.groups.insert_full(path, group).0, true)
                    }
                };
                self.routes
                    .entry(bucket)
                    .or_default()
                    .insert(symbol.into(), i);
                let group = if made { GROUP_OVERHEAD } else { 0 };
                (i, group + ROUTE_OVERHEAD + symbol.len())
            }
        };
        (&mut self.groups[i], added)
    }
}

/// Messages in a piece of a batch: what one thread decodes at a time.
const DECODE_PIECE: usize = 1024;

/// The records of a piece of a batch, or the reasons they are dead letters, in offset order.
type Decoded<'a> = Vec<Result<Record<Cow<'a, str>>, String>>;

/// A message's record, or the reason it is a dead letter. The record borrows its symbol from the
/// message: it costs no allocation of its own, and none is freed on the sink's thread that another
/// thread made.
fn decode_one(m: &Message, max_message_bytes: usize) -> Result<Record<Cow<'_, str>>, String> {
    match &m.payload {
        None => Err("the message has no value".to_owned()),
        Some(p) if p.len() > max_message_bytes => Err(format!(
            "the message is {} bytes, more than the {max_message_bytes} a record may have \
             (--max-message-bytes)",
            p.len()
        )),
        Some(p) => json::decode_borrowed(p).map_err(|e| e.to_string()),
    }
}

/// Helper threads that decode beside the sink's: one per further core, up to 3. Counted once: finding
/// the cores reads the process's cgroup files, too much to do for every batch.
static DECODE_HELPERS: LazyLock<usize> =
    LazyLock::new(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) - 1);

/// Decodes a batch piece by piece and hands the pieces to `route` in offset order, with the index of
/// each piece's first message. JSON decoding is most of a sink's work, and routing must stay on one
/// thread in offset order: so helper threads (one per further core) decode the pieces ahead while this
/// thread routes the earlier ones, and this thread decodes too whenever the next piece is not ready.
fn decode_in_order<'a>(
    batch: &'a [Message],
    max_message_bytes: usize,
    mut route: impl FnMut(usize, &'a [Message], Decoded<'a>),
) {
    let pieces: Vec<&'a [Message]> = batch.chunks(DECODE_PIECE).collect();
    let decode = move |piece: &'a [Message]| -> Decoded<'a> {
        piece
            .iter()
            .map(|m| decode_one(m, max_message_bytes))
            .collect()
    };
    let helpers = *DECODE_HELPERS;
    if helpers == 0 || pieces.len() < 2 {
        for (k, piece) in pieces.iter().enumerate() {
            route(k * DECODE_PIECE, piece, decode(piece));
        }
        return;
    }
    let next = AtomicUsize::new(0);
    let claim = || {
        let k = next.fetch_add(1, Ordering::Relaxed);
        (k < pieces.len()).then_some(k)
    };
    let (claim, pieces_ref) = (&claim, &pieces);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Decoded<'a>)>();
    std::thread::scope(|s| {
        for _ in 0..helpers.min(pieces.len() - 1) {
            let tx = tx.clone();
            // A helper that cannot be started (a thread limit) leaves its pieces to the others.
            let _ = std::thread::Builder::new()
                .name("ticklake-sink-decode".into())
                .spawn_scoped(s, move || {
                    while let Some(k) = claim() {
                        if tx.send((k, decode(pieces_ref[k]))).is_err() {
                            break;
                        }
                    }
                });
        }
        drop(tx);
        let mut done: BTreeMap<usize, Decoded<'a>> = BTreeMap::new();
        for (k, piece) in pieces.iter().enumerate() {
            let decoded = loop {
                if let Some(d) = done.remove(&k) {
                    break d;
                }
                if let Ok((j, d)) = rx.try_recv() {
                    done.insert(j, d);
                    continue;
                }
                match claim() {
                    Some(j) => {
                        done.insert(j, decode(pieces[j]));
                    }
                    None => match rx.recv() {
                        Ok((j, d)) => {
                            done.insert(j, d);
                        }
                        // Every helper is gone without it (one panicked; the scope re-raises that).
                        Err(_) => break decode(piece),
                    },
                }
            };
            route(k * DECODE_PIECE, piece, decoded);
        }
    });
}

/// Every partition's records since the last commit.
#[derive(Default)]
pub(crate) struct Checkpoint {
    parts: BTreeMap<i32, PartitionCheckpoint>,
    /// The ledger position of every assigned partition.
    pub positions: BTreeMap<i32, Position>,
    /// Partitions assigned since the sink last looked: their positions come from the ledger.
    pub assigned: Vec<i32>,
    /// Messages past the end of a range being replayed, for the checkpoint after it.
    pub held: Vec<Message>,
    /// Partitions to move back to an offset (see [`Position::resync`]).
    pub reseek: Vec<(i32, i64)>,
    /// Records buffered, over all partitions.
    pub records: usize,
    /// Message bytes buffered (plus [`GROUP_OVERHEAD`] per open group, and each route's size).
    pub bytes: usize,
    /// When the oldest buffered message arrived.
    pub since: Option<Instant>,
}

/// One file a flush writes.
pub(crate) enum Job {
    /// Records, to encode in the table's format.
    Data(arrow::array::RecordBatch),
    /// Dead letters, already encoded (JSON lines).
    Raw(Bytes),
}

/// What a flush must do: the files to write, then what to register and commit.
pub(crate) struct Plan {
    /// (path inside the lake, contents).
    pub files: Vec<(String, Job)>,
    /// Lake folders (relative to the table) that received data files.
    pub folders: Vec<String>,
    /// The distinct schemas of the data files.
    pub schemas: Vec<SchemaRef>,
    /// The ledger entry of each partition's checkpoint, and its number of records.
    pub ranges: Vec<(i32, Entry, u64)>,
    /// Message timestamps of the records (ms).
    pub stamps: Vec<i64>,
    /// The dead letters of each partition (JSON lines, the contents of its dead-letter file).
    pub dead_letters: Vec<(i32, Bytes)>,
    pub records: u64,
    pub dead: u64,
}

impl Checkpoint {
    /// True when nothing was consumed since the last flush.
    pub(crate) fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// True when a partition replaying a range has all of it: it must be flushed before it can take
    /// more.
    pub(crate) fn replay_complete(&self) -> bool {
        self.positions
            .iter()
            .any(|(p, pos)| pos.replay_to.is_some() && self.replay_done(*p, pos))
    }

    fn replay_done(&self, p: i32, pos: &Position) -> bool {
        let Some(end) = pos.replay_to else {
            return true;
        };
        self.parts.get(&p).is_some_and(|pc| pc.next_offset >= end)
            || self.held.iter().any(|m| m.partition == p)
    }

    /// Takes the partitions that can be flushed now: all but those still replaying a range. A replay
    /// whose range has no message left (the topic's retention removed them) ends here, with no file.
    pub(crate) fn take_ready(&mut self) -> Checkpoint {
        let mut ready = Checkpoint::default();
        let parts: Vec<i32> = self.parts.keys().copied().collect();
        for p in parts {
            let pos = self.positions.get(&p).cloned().unwrap_or_default();
            if !self.replay_done(p, &pos) {
                continue;
            }
            if let Some(mut pc) = self.parts.remove(&p) {
                self.records -= pc.records;
                self.bytes -= pc.bytes;
                if let Some(end) = pos.replay_to {
                    pc.next_offset = end;
                }
                ready.records += pc.records;
                ready.bytes += pc.bytes;
                ready.parts.insert(p, pc);
            }
        }
        let empty: Vec<i32> = self
            .positions
            .iter()
            .filter(|(p, pos)| {
                pos.replay_to.is_some() && !self.parts.contains_key(p) && self.replay_done(**p, pos)
            })
            .map(|(p, _)| *p)
            .collect();
        for p in empty {
            if let Some(pos) = self.positions.get_mut(&p) {
                pos.from = pos.replay_to.take();
            }
        }
        if !ready.parts.is_empty() {
            ready.since = self.since;
            if self.parts.is_empty() {
                self.since = None;
            }
        }
        ready
    }

    /// The ledger entry each partition's checkpoint would claim.
    pub(crate) fn ranges(&self) -> Vec<(i32, Entry)> {
        self.parts
            .iter()
            .map(|(p, pc)| {
                (
                    *p,
                    Entry {
                        from: pc.from,
                        to: pc.next_offset,
                    },
                )
            })
            .collect()
    }

    /// Drops the unflushed records of revoked partitions: their next owner replays them.
    pub(crate) fn revoke(&mut self, partitions: &[i32]) {
        self.held.retain(|m| !partitions.contains(&m.partition));
        self.reseek.retain(|(p, _)| !partitions.contains(p));
        self.assigned.retain(|p| !partitions.contains(p));
        for p in partitions {
            self.positions.remove(p);
            if let Some(pc) = self.parts.remove(p) {
                self.records -= pc.records;
                self.bytes -= pc.bytes;
                tracing::info!(
                    "partition {p} revoked: {} unflushed records left to its next owner",
                    pc.records
                );
            }
        }
        if self.parts.is_empty() {
            self.since = None;
        }
    }

    /// Takes in consumed messages: each becomes a record of its lake folder's group or a dead letter.
    /// Messages before the partition's position are already in the lake (a redelivery) and are skipped;
    /// messages past the end of a range being replayed are held for the next checkpoint.
    pub(crate) fn absorb(&mut self, batch: Vec<Message>, rules: &mut Rules<'_>) {
        if batch.is_empty() {
            return;
        }
        // Messages held for the next checkpoint, by index: they are moved out of the batch once the
        // records borrowing it are gone.
        let mut hold = Vec::new();
        decode_in_order(
            &batch,
            rules.max_message_bytes,
            |first, piece, mut decoded| {
                // By reference: copying each record (136 bytes) out of its piece stalled the loop.
                for (i, (m, decoded)) in piece.iter().zip(&mut decoded).enumerate() {
                    self.absorb_one(first + i, m, decoded, rules, &mut hold);
                }
            },
        );
        if !hold.is_empty() {
            let mut hold = hold.into_iter().peekable();
            for (i, m) in batch.into_iter().enumerate() {
                if hold.next_if_eq(&i).is_some() {
                    self.held.push(m);
                }
            }
        }
    }

    /// Takes in one message (the `i`th of its batch) and its decoded record.
    fn absorb_one(
        &mut self,
        i: usize,
        m: &Message,
        decoded: &mut Result<Record<Cow<'_, str>>, String>,
        rules: &mut Rules<'_>,
        hold: &mut Vec<usize>,
    ) {
        // Only a partition resumed from the ledger may take messages: one the sink has not
        // resumed (its assignment not seen yet, or taken back after a lost claim) is resumed
        // first, and its messages are fetched again from where the ledger says.
        let Some(pos) = self.positions.get_mut(&m.partition) else {
            if !self.assigned.contains(&m.partition) {
                self.assigned.push(m.partition);
            }
            return;
        };
        let expected = self
            .parts
            .get(&m.partition)
            .map(|pc| pc.next_offset)
            .or(pos.from);
        if expected.is_some_and(|e| m.offset < e) {
            return;
        }
        if let (true, Some(from)) = (pos.resync, pos.from) {
            if m.offset > from && pos.after_seek != Some(m.offset) {
                if !self.reseek.iter().any(|(p, _)| *p == m.partition) {
                    tracing::debug!(
                        "partition {}: offset {} came before {from}; moving back",
                        m.partition,
                        m.offset
                    );
                    pos.after_seek = Some(m.offset);
                    self.reseek.push((m.partition, from));
                }
                return;
            }
            pos.resync = false;
            pos.after_seek = None;
        }
        if pos.replay_to.is_some_and(|end| m.offset >= end) {
            hold.push(i);
            return;
        }
        let from = pos.from.unwrap_or(m.offset);
        self.since.get_or_insert_with(Instant::now);
        let pc = self
            .parts
            .entry(m.partition)
            .or_insert_with(|| PartitionCheckpoint {
                from,
                routed_by: rules.partitioning.clone(),
                ..Default::default()
            });
        pc.next_offset = m.offset + 1;
        let size = m.payload.as_ref().map_or(0, Bytes::len);
        pc.bytes += size;
        self.bytes += size;
        let record = match decoded {
            Ok(r) => rules.types.fit(r).map(|()| &*r),
            Err(reason) => Err(std::mem::take(reason)),
        };
        match record {
            Ok(r) => {
                let (group, added) = pc.group_for(&r.symbol, r.ts, m.offset);
                group.builder.push(r);
                pc.bytes += added;
                self.bytes += added;
                pc.stamps.push(m.timestamp_ms.unwrap_or(r.ts / 1000));
                pc.records += 1;
                self.records += 1;
            }
            Err(reason) => {
                pc.dead_first.get_or_insert(m.offset);
                pc.dead_count += 1;
                dead_letter(&mut pc.dead, rules.topic, m, &reason);
            }
        }
    }

    /// How its records spread over `date,symbol` folders (records routed by another layout are not
    /// counted), for choosing a new table's layout.
    pub(crate) fn shape(&self) -> FeedShape {
        let mut shape = FeedShape::default();
        let default = Partitioning::default();
        for pc in self.parts.values().filter(|pc| pc.routed_by == default) {
            for (path, g) in &pc.groups {
                shape.add(path, g.builder.len() as u64);
            }
        }
        shape
    }

    /// Turns the checkpoint into the files of a flush in the folders of `partitioning`: one per group,
    /// named by the Kafka partition and the group's first offset, and one dead-letter file per
    /// partition that has dead letters. Groups routed by a finer layout (before a new table's was
    /// chosen) are merged into their folders in `partitioning` first.
    pub(crate) fn plan(
        self,
        topic: &str,
        table: &str,
        partitioning: &Partitioning,
        format: FileFormat,
        types: &ColumnTypes,
    ) -> Result<Plan, SinkError> {
        let ext = format.extension();
        let mut plan = Plan {
            files: Vec::new(),
            folders: Vec::new(),
            schemas: Vec::new(),
            ranges: Vec::new(),
            stamps: Vec::new(),
            dead_letters: Vec::new(),
            records: 0,
            dead: 0,
        };
        for (p, pc) in self.parts {
            for (path, first_offset, batch) in
                group_files(pc.groups, &pc.routed_by, partitioning, types)?
            {
                if !plan.schemas.contains(&batch.schema()) {
                    plan.schemas.push(batch.schema());
                }
                plan.folders.push(path.clone());
                // Text formats leave partition columns to the folders, as Hive writers do: their
                // readers map columns by position (CSV), and a table cannot hold a column twice.
                let batch = if format == FileFormat::Parquet {
                    batch
                } else {
                    drop_columns(batch, partitioning.keys().iter().map(|k| k.name()))
                };
                let name = file_name(topic, p, first_offset, ext);
                let rel = if path.is_empty() {
                    format!("{table}/{name}")
                } else {
                    format!("{table}/{path}/{name}")
                };
                plan.files.push((rel, Job::Data(batch)));
            }
            if let Some(first) = pc.dead_first {
                let rel = format!(
                    "_ticklake/dlq/{topic}/{}",
                    file_name(topic, p, first, "jsonl")
                );
                let dead = Bytes::from(pc.dead);
                plan.dead_letters.push((p, dead.clone()));
                plan.files.push((rel, Job::Raw(dead)));
            }
            plan.records += pc.records as u64;
            plan.dead += pc.dead_count;
            plan.stamps.extend(pc.stamps);
            plan.ranges.push((
                p,
                Entry {
                    from: pc.from,
                    to: pc.next_offset,
                },
                pc.records as u64,
            ));
        }
        plan.folders.sort();
        plan.folders.dedup();
        Ok(plan)
    }
}

/// The groups of one partition's checkpoint as (folder in `to`, first offset, records): one per
/// group when they were routed by `to`, else the groups of each folder of `to` merged into one.
fn group_files(
    mut groups: IndexMap<String, FileGroup, FastHash>,
    routed_by: &Partitioning,
    to: &Partitioning,
    types: &ColumnTypes,
) -> Result<Vec<(String, i64, RecordBatch)>, SinkError> {
    // In folder order, so that a flush writes its files, and merges groups, in the same order
    // whatever order the records came in.
    groups.sort_unstable_keys();
    let finish = |mut g: FileGroup| {
        g.builder
            .finish_typed(|name| types.arrow_type(name))
            .map_err(|e| SinkError::Encode(e.to_string()))
    };
    if routed_by == to {
        return groups
            .into_iter()
            .map(|(path, g)| Ok((path, g.first_offset, finish(g)?)))
            .collect();
    }
    let mut merged: BTreeMap<String, (i64, Vec<RecordBatch>)> = BTreeMap::new();
    for (path, g) in groups {
        let Some(folder) = to.coarsen(routed_by, &path) else {
            return Err(SinkError::Config(format!(
                "records routed into `{routed_by}` folders cannot be written in `{to}` folders \
                 (another sink created the table with that layout meanwhile): start the sink again"
            )));
        };
        let first = g.first_offset;
        let entry = merged.entry(folder).or_insert((first, Vec::new()));
        entry.0 = entry.0.min(first);
        entry.1.push(finish(g)?);
    }
    merged
        .into_iter()
        .map(|(folder, (first, batches))| {
            let batch = concat_union(&batches).map_err(|e| SinkError::Encode(e.to_string()))?;
            Ok((folder, first, batch))
        })
        .collect()
}

/// The batch without the named columns.
fn drop_columns<'a>(
    batch: arrow::array::RecordBatch,
    names: impl Iterator<Item = &'a str>,
) -> arrow::array::RecordBatch {
    let names: Vec<&str> = names.collect();
    let keep: Vec<usize> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !names.contains(&f.name().as_str()))
        .map(|(i, _)| i)
        .collect();
    batch.project(&keep).unwrap_or(batch)
}

/// Appends one dead-letter line: where the message was, why it was refused, and the message itself —
/// as text when it is UTF-8, else byte for byte in base64 (`value_base64`, `key_base64`).
fn dead_letter(out: &mut Vec<u8>, topic: &str, m: &Message, reason: &str) {
    let mut line = serde_json::json!({
        "topic": topic,
        "partition": m.partition,
        "offset": m.offset,
        "timestamp_ms": m.timestamp_ms,
        "reason": reason,
    });
    for (field, bytes) in [("key", &m.key), ("value", &m.payload)] {
        let (name, v) = match bytes.as_deref().map(std::str::from_utf8) {
            None => (field.to_owned(), serde_json::Value::Null),
            Some(Ok(text)) => (field.to_owned(), text.into()),
            Some(Err(_)) => (
                format!("{field}_base64"),
                base64::engine::general_purpose::STANDARD
                    .encode(bytes.as_deref().unwrap_or_default())
                    .into(),
            ),
        };
        line[name] = v;
    }
    let _ = serde_json::to_writer(&mut *out, &line);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::encode;
    use proptest::prelude::*;

    fn message(offset: i64, payload: Vec<u8>) -> Message {
        Message {
            partition: (offset % 3) as i32,
            offset,
            key: Some(Bytes::from_static(b"k")),
            payload: Some(payload.into()),
            timestamp_ms: Some(0),
        }
    }

    /// Runs messages through the whole path of a flush short of the storage: absorb, plan, encode.
    /// Returns (records in data files, dead letters) and checks every file encodes.
    fn through(payloads: Vec<Vec<u8>>, format: FileFormat) -> (usize, usize, Vec<String>) {
        let partitioning = Partitioning::default();
        let n = payloads.len();
        let batch = payloads
            .into_iter()
            .enumerate()
            .map(|(i, p)| message(i as i64, p))
            .collect();
        let (cp, types) = absorbed(vec![batch], &partitioning);
        let plan = cp
            .plan("t", "t", &partitioning, format, &types)
            .expect("a checkpoint always plans");
        let (mut rows, mut dead, mut reasons) = (0, 0, Vec::new());
        for (rel, job) in &plan.files {
            assert!(
                rel.starts_with("t/") || rel.starts_with("_ticklake/dlq/t/"),
                "{rel}"
            );
            assert!(rel.split('/').all(|seg| seg.len() <= 255), "{rel}");
            match job {
                Job::Data(b) => {
                    rows += b.num_rows();
                    encode(b, format).expect("an accepted record always encodes");
                }
                Job::Raw(b) => {
                    for line in std::str::from_utf8(b).unwrap().lines() {
                        let v: serde_json::Value = serde_json::from_str(line).unwrap();
                        reasons.push(v["reason"].as_str().unwrap().to_owned());
                        dead += 1;
                    }
                }
            }
        }
        assert_eq!(rows, plan.records as usize);
        assert_eq!(dead, plan.dead as usize);
        assert_eq!(rows + dead, n, "every message is a record or a dead letter");
        (rows, dead, reasons)
    }

    /// A checkpoint of partitions 0-2 that has absorbed the given batches, and the column types decided.
    fn absorbed(
        batches: Vec<Vec<Message>>,
        partitioning: &Partitioning,
    ) -> (Checkpoint, ColumnTypes) {
        let mut types = ColumnTypes::default();
        let mut cp = Checkpoint::default();
        for p in 0..3 {
            cp.positions.insert(p, Position::default());
        }
        for batch in batches {
            cp.absorb(
                batch,
                &mut Rules {
                    topic: "t",
                    partitioning,
                    max_message_bytes: 1 << 20,
                    types: &mut types,
                },
            );
        }
        (cp, types)
    }

    /// The files a checkpoint plans from messages absorbed in the given batches, encoded as JSON lines.
    fn planned(batches: Vec<Vec<Message>>) -> Vec<(String, Vec<u8>)> {
        let partitioning = Partitioning::default();
        let (cp, types) = absorbed(batches, &partitioning);
        let plan = cp
            .plan("t", "t", &partitioning, FileFormat::Json, &types)
            .expect("a checkpoint always plans");
        plan.files
            .into_iter()
            .map(|(rel, job)| match job {
                Job::Data(b) => (rel, encode(&b, FileFormat::Json).unwrap().to_vec()),
                Job::Raw(b) => (rel, b.to_vec()),
            })
            .collect()
    }

    #[test]
    fn a_large_batch_decoded_in_pieces_gives_the_files_of_one_message_at_a_time() {
        // Several pieces (DECODE_PIECE each), decoded on the helper threads and this one: dead letters
        // among the records, a column whose type the first value decides and later ones must fit.
        let payloads: Vec<Vec<u8>> = (0..5 * DECODE_PIECE as i64 + 17)
            .map(|i| match i % 11 {
                0 => b"not json".to_vec(),
                5 => format!(r#"{{"symbol":"S{}","ts":{i},"venue":{i}}}"#, i % 4).into_bytes(),
                7 if i > 3000 => {
                    format!(r#"{{"symbol":"S{}","ts":{i},"venue":"x"}}"#, i % 4).into_bytes()
                }
                _ => format!(
                    r#"{{"symbol":"S{}","ts":{},"close":{i}.5}}"#,
                    i % 4,
                    i * 1_000_000
                )
                .into_bytes(),
            })
            .collect();
        let messages = |p: &[Vec<u8>]| -> Vec<Message> {
            p.iter()
                .enumerate()
                .map(|(i, p)| message(i as i64, p.clone()))
                .collect()
        };
        let whole = planned(vec![messages(&payloads)]);
        let one_by_one = planned(messages(&payloads).into_iter().map(|m| vec![m]).collect());
        assert_eq!(whole, one_by_one);
        let lines: usize = whole
            .iter()
            .map(|(_, b)| b.split(|c| *c == b'\n').filter(|l| !l.is_empty()).count())
            .sum();
        assert_eq!(
            lines,
            payloads.len(),
            "every message is a row or a dead letter"
        );
        assert!(whole
            .iter()
            .any(|(rel, _)| rel.starts_with("_ticklake/dlq/")));
    }

    #[test]
    fn groups_routed_by_date_and_symbol_merge_into_a_coarser_layout() {
        let fine = Partitioning::default();
        let mut types = ColumnTypes::default();
        let mut cp = Checkpoint::default();
        cp.positions.insert(0, Position::default());
        let day = |d: u32| format!("2024-01-{d:02}T10:00:00Z");
        let payloads = [
            format!(r#"{{"symbol":"A","ts":"{}","close":1.0}}"#, day(3)),
            format!(r#"{{"symbol":"B","ts":"{}","close":2.0}}"#, day(1)),
            format!(
                r#"{{"symbol":"A","ts":"{}","close":3.0,"note":"x"}}"#,
                day(1)
            ),
            format!(r#"{{"symbol":"A","ts":"{}","close":4.0}}"#, day(2)),
        ];
        let batch = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| Message {
                partition: 0,
                offset: 10 + i as i64,
                key: None,
                payload: Some(p.clone().into()),
                timestamp_ms: Some(0),
            })
            .collect();
        cp.absorb(
            batch,
            &mut Rules {
                topic: "t",
                partitioning: &fine,
                max_message_bytes: 1 << 20,
                types: &mut types,
            },
        );
        assert_eq!(cp.shape().records(), 4);
        let symbol: Partitioning = "symbol".parse().unwrap();
        let plan = cp
            .plan("t", "t", &symbol, FileFormat::Parquet, &types)
            .unwrap();
        let files: Vec<(&str, usize)> = plan
            .files
            .iter()
            .map(|(rel, job)| match job {
                Job::Data(b) => {
                    encode(b, FileFormat::Parquet).unwrap();
                    (rel.as_str(), b.num_rows())
                }
                Job::Raw(_) => panic!("no dead letters here"),
            })
            .collect();
        // A's three dates are one file, named by A's first offset (10); B's is its own.
        assert_eq!(
            files,
            [
                ("t/symbol=A/t+0+00000000000000000010.parquet", 3),
                ("t/symbol=B/t+0+00000000000000000011.parquet", 1)
            ]
        );
        assert_eq!(plan.folders, ["symbol=A", "symbol=B"]);
        // The column only one of A's records has is null in the others.
        let Job::Data(a) = &plan.files[0].1 else {
            unreachable!()
        };
        let note = a.column_by_name("note").expect("the extra column is kept");
        assert_eq!(note.null_count(), 2);
        // A layout that is not made of date,symbol's columns cannot take these groups.
        let mut cp = Checkpoint::default();
        cp.positions.insert(0, Position::default());
        cp.absorb(
            vec![Message {
                partition: 0,
                offset: 0,
                key: None,
                payload: Some(payloads[0].clone().into()),
                timestamp_ms: Some(0),
            }],
            &mut Rules {
                topic: "t",
                partitioning: &fine,
                max_message_bytes: 1 << 20,
                types: &mut types,
            },
        );
        let hourly: Partitioning = "date,hour,symbol".parse().unwrap();
        let err = cp
            .plan("t", "t", &hourly, FileFormat::Parquet, &types)
            .err()
            .expect("refused");
        assert!(
            err.to_string()
                .contains("`date,hour,symbol` folders (another sink created"),
            "{err}"
        );
    }

    #[test]
    fn records_route_to_one_group_per_folder_in_every_layout() {
        // Many (time bucket, symbol) pairs share a folder in the coarser layouts: each folder is one
        // file, named by its first record's offset, with exactly that folder's records.
        let (day, hour) = (86_400_000_000i64, 3_600_000_000i64);
        let jan_1 = 1_704_067_200_000_000i64; // 2024-01-01T00:00:00Z in µs
        let records: Vec<(String, i64)> = (0..600i64)
            .map(|i| {
                (
                    format!("S{}", i % 7),
                    jan_1 + (i % 5) * day + (i % 3) * 7 * hour,
                )
            })
            .collect();
        let batch: Vec<Message> = records
            .iter()
            .enumerate()
            .map(|(i, (sym, ts))| {
                let (d, h) = ((ts - jan_1) / day, (ts - jan_1) % day / hour);
                let ts = format!("2024-01-{:02}T{h:02}:00:00Z", d + 1);
                let json = format!(r#"{{"symbol":"{sym}","ts":"{ts}","close":1.5}}"#);
                Message {
                    partition: 0,
                    ..message(i as i64, json.into_bytes())
                }
            })
            .collect();
        for layout in [
            "date,symbol",
            "date",
            "symbol",
            "date,hour,symbol",
            "date,hour",
            "none",
        ] {
            let partitioning: Partitioning = layout.parse().unwrap();
            let mut expected: BTreeMap<String, (i64, usize)> = BTreeMap::new();
            for (i, (sym, ts)) in records.iter().enumerate() {
                let e = expected
                    .entry(partitioning.path_for(sym, *ts))
                    .or_insert((i as i64, 0));
                e.1 += 1;
            }
            let (cp, types) = absorbed(vec![batch.clone()], &partitioning);
            let plan = cp
                .plan("t", "t", &partitioning, FileFormat::Parquet, &types)
                .unwrap();
            let files: Vec<(String, usize)> = plan
                .files
                .iter()
                .map(|(rel, job)| match job {
                    Job::Data(b) => (rel.clone(), b.num_rows()),
                    Job::Raw(_) => panic!("no dead letters here"),
                })
                .collect();
            let want: Vec<(String, usize)> = expected
                .iter()
                .map(|(folder, (first, n))| {
                    let name = file_name("t", 0, *first, "parquet");
                    let rel = if folder.is_empty() {
                        format!("t/{name}")
                    } else {
                        format!("t/{folder}/{name}")
                    };
                    (rel, *n)
                })
                .collect();
            assert_eq!(files, want, "layout `{layout}`");
        }
    }

    #[test]
    fn a_new_symbol_in_every_message_counts_against_the_flush_size() {
        // One folder (`date`), and a route per symbol: the routing map's memory is counted, so that
        // `--flush-bytes` bounds it as it bounds the groups.
        let date: Partitioning = "date".parse().unwrap();
        let batch: Vec<Message> = (0..1000i64)
            .map(|i| {
                let json = format!(r#"{{"symbol":"SYM{i}","ts":"2024-01-02T10:00:00Z"}}"#);
                Message {
                    partition: 0,
                    ..message(i, json.into_bytes())
                }
            })
            .collect();
        let payloads: usize = batch
            .iter()
            .map(|m| m.payload.as_ref().unwrap().len())
            .sum();
        let (cp, _) = absorbed(vec![batch], &date);
        assert_eq!(cp.parts[&0].groups.len(), 1);
        assert!(
            cp.bytes >= payloads + GROUP_OVERHEAD + 1000 * ROUTE_OVERHEAD,
            "{} bytes counted for {payloads} bytes of messages",
            cp.bytes
        );
    }

    #[test]
    fn poison_of_every_kind_is_dead_lettered_with_its_reason() {
        let long = format!(r#"{{"symbol":"{}","ts":0,"close":1}}"#, "X".repeat(300));
        let huge = format!(
            r#"{{"symbol":"A","ts":0,"note":"{}"}}"#,
            "x".repeat(2 << 20)
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (long.into_bytes(), "field `symbol`: is too long"),
            (
                br#"{"symbol":"A","ts":0,"close":1,"Close":2}"#.to_vec(),
                "field `close`: is given twice",
            ),
            (
                br#"{"symbol":"A","symbol":"B","ts":0}"#.to_vec(),
                "field `symbol`: appears twice",
            ),
            (
                br#"{"symbol":1e300,"ts":0}"#.to_vec(),
                "field `symbol`: expected a string, got a number",
            ),
            (
                br#"{"symbol":"A","ts":"10000-01-01"}"#.to_vec(),
                "field `ts`: cannot read",
            ),
            (
                br#"{"symbol":"A","ts":1e300}"#.to_vec(),
                "field `ts`: is outside the years 0001-9999",
            ),
            (
                br#"{"symbol":"A","ts":-62135596801}"#.to_vec(),
                "field `ts`: is outside the years 0001-9999",
            ),
            (
                br#"{"symbol":"A","ts":0,"close":NaN}"#.to_vec(),
                "not valid JSON",
            ),
            (
                br#"{"symbol":"A","ts":0,"close":"Infinity"}"#.to_vec(),
                "field `close`: expected a number",
            ),
            (
                br#"{"symbol":"A","ts":0,"close":1e999}"#.to_vec(),
                "not valid JSON",
            ),
            (
                br#"{"symbol":"A","ts":0,"close":true}"#.to_vec(),
                "field `close`: expected a number, got a boolean",
            ),
            (
                br#"{"symbol":"A","ts":{"a":1}}"#.to_vec(),
                "field `ts`: expected a timestamp, got an object",
            ),
            (huge.into_bytes(), "the message is 2097"),
            (
                b"{\"symbol\":\"\xff\xfe\",\"ts\":0}".to_vec(),
                "not valid JSON",
            ),
            (
                br#"{"symbol":"","ts":0}"#.to_vec(),
                "field `symbol`: is empty",
            ),
            (
                br#"{"symbol":"  ","ts":0}"#.to_vec(),
                "field `symbol`: is empty",
            ),
            (
                br#"{"symbol":"A","ts":0,"Adj Close":1,"adj_close":2}"#.to_vec(),
                "field `adj_close`: is given twice",
            ),
            (
                br#"{"symbol":"A","ts":0,"adj_close":"n/a"}"#.to_vec(),
                "column `adj_close` is double in this table",
            ),
        ];
        let want: Vec<&str> = cases.iter().map(|(_, w)| *w).collect();
        // A good record first decides that adj_close is a number.
        let mut payloads = vec![br#"{"symbol":"A","ts":0,"adj_close":""}"#.to_vec()];
        payloads.push(br#"{"symbol":"A","ts":0,"adj_close":1.5}"#.to_vec());
        payloads.extend(cases.into_iter().map(|(p, _)| p));
        let (rows, dead, reasons) = through(payloads, FileFormat::Parquet);
        assert_eq!((rows, dead), (2, want.len()));
        // Dead letters are written in offset order per partition: compare as sets of prefixes.
        for w in want {
            assert!(
                reasons.iter().any(|r| r.starts_with(w)),
                "no reason starts with {w:?}: {reasons:#?}"
            );
        }
    }

    #[test]
    fn non_utf8_messages_are_kept_byte_for_byte() {
        let mut out = Vec::new();
        let m = message(7, vec![0xff, 0x00, b'a']);
        dead_letter(&mut out, "t", &m, "not valid JSON");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["value_base64"], "/wBh");
        assert_eq!(v["key"], "k");
        assert_eq!(v["offset"], 7);
    }

    /// JSON-ish messages built from the pieces that trouble decoders: odd keys (core names in other
    /// cases, aliases, duplicates), values of every JSON type, strings that look like numbers or dates.
    fn messages() -> impl Strategy<Value = Vec<u8>> {
        let key = prop::sample::select(vec![
            "symbol",
            "Symbol",
            "ts",
            "Date",
            "date",
            "open",
            "Close",
            "close",
            "price",
            "volume",
            "Volume",
            "adj_close",
            "Adj Close",
            "venue",
            "",
            " ",
            "ts ",
            "Index",
            "hour",
            "a.b",
        ]);
        let value = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("\"\"".to_owned()),
            Just("\"1.5\"".to_owned()),
            Just("\"2024-01-02\"".to_owned()),
            Just("\"NaN\"".to_owned()),
            Just("[1]".to_owned()),
            Just("{}".to_owned()),
            any::<f64>().prop_map(|f| if f.is_finite() {
                format!("{f:e}")
            } else {
                "1".into()
            }),
            any::<i64>().prop_map(|i| i.to_string()),
            "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        prop::collection::vec((key, value), 0..8).prop_map(|fields| {
            let body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
                .collect();
            format!("{{{}}}", body.join(",")).into_bytes()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_bytes_end_in_the_lake_or_the_dead_letters(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..16)
        ) {
            through(payloads, FileFormat::Parquet);
        }

        #[test]
        fn any_json_object_ends_in_the_lake_or_the_dead_letters(
            payloads in prop::collection::vec(messages(), 1..24),
            format in prop::sample::select(vec![FileFormat::Parquet, FileFormat::Json, FileFormat::Csv]),
        ) {
            through(payloads, format);
        }
    }
}
