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
//!
//! This module holds the topic's storage (its database and schema); [`frame`] encodes records into
//! batches, [`producer`] is the writer thread behind [`EmbeddedProducer`], [`group`] the consumer-group
//! protocol (membership by file locks, partition ownership, fenced commits) and [`consumer`] the reader.

mod consumer;
mod frame;
mod group;
mod producer;
mod read_ahead;
mod retention;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

pub use consumer::EmbeddedConsumer;
pub use group::GroupSettings;
pub use producer::{EmbeddedProducer, ProducerSettings};
pub use retention::Retention;

use crate::{validate_topic, BusError, TopicInfo};

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
    // Switching to WAL takes an exclusive lock without waiting for the busy handler; WAL stays set
    // in the file, so it is switched only once, not at each connection.
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(|e| storage(db, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))
            .map_err(|e| storage(db, e))?;
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;")
        .map_err(|e| storage(db, e))?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS heads(partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches(
  partition INTEGER NOT NULL, base_offset INTEGER NOT NULL, count INTEGER NOT NULL,
  data BLOB NOT NULL, appended_ms INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(partition, base_offset));
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
    retention::migrate(&conn).map_err(|e| storage(&db, e))?;
    Ok(info)
}

/// Sets the retention limits of an existing topic (a limit that is `None` stays as it was); its
/// producers apply them (see [`retention`]).
pub fn set_retention(dir: &Path, topic: &str, limits: &Retention) -> Result<(), BusError> {
    let (db, mut conn, _) = open_topic(dir, topic)?;
    retention::set(&mut conn, limits).map_err(|e| storage(&db, e))
}

/// The retention limits of an existing topic.
pub fn retention(dir: &Path, topic: &str) -> Result<Retention, BusError> {
    let (db, conn, _) = open_topic(dir, topic)?;
    retention::get(&conn).map_err(|e| storage(&db, e))
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
    retention::migrate(&conn).map_err(|e| storage(&db, e))?;
    Ok((db, conn, n as i32))
}
