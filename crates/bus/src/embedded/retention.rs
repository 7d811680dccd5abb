//! Retention: how long and how much of a topic the embedded log keeps, like Kafka's `retention.ms` and
//! `retention.bytes`.
//!
//! The limits are the topic's own (kept in its database), so every producer of the topic applies the
//! same ones. A producer's writer applies them after its first append and then at most every
//! [`CHECK_EVERY`]. Whole batches are deleted, oldest first, as Kafka deletes whole segments:
//! - by age, the batches appended longer ago than the limit (the time a batch was appended, not its
//!   records' timestamps: a replay of 1990's prices is not old on the day it is produced);
//! - by size, per partition, the oldest batches beyond the limit, never the partition's newest batch.
//!
//! Offsets go on where they were: a consumer whose position was deleted continues at the first kept
//! offset. SQLite reuses the freed pages for new batches, so a log under retention stops growing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// How often a producer applies the retention limits.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(10);

/// The retention limits of a topic (`None`: no limit of that kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Batches appended longer ago than this are deleted.
    pub max_age: Option<Duration>,
    /// Each partition keeps at most about this many bytes (compressed), oldest batches deleted first.
    pub max_bytes: Option<u64>,
}

/// What one application of the limits deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Batches deleted.
    pub batches: u64,
    /// Records in them.
    pub records: u64,
}

const AGE_KEY: &str = "retention_ms";
const BYTES_KEY: &str = "retention_bytes";

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Adds the column a batch's append time is kept in to a log created before retention existed; its
/// batches count as appended now.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has: bool = conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info('batches') WHERE name = 'appended_ms'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    if !has {
        // ALTER TABLE takes a constant default only, so the time is written into the statement.
        let sql = format!(
            "ALTER TABLE batches ADD COLUMN appended_ms INTEGER NOT NULL DEFAULT {}",
            now_ms()
        );
        match conn.execute_batch(&sql) {
            // Another process added it first.
            Err(e) if e.to_string().contains("duplicate column") => {}
            other => other?,
        }
    }
    Ok(())
}

/// Sets the topic's limits; a limit that is `None` is left as it was.
pub(super) fn set(conn: &mut Connection, retention: &Retention) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (key, value) in [
        (
            AGE_KEY,
            retention
                .max_age
                .map(|d| d.as_millis().min(i64::MAX as u128) as i64),
        ),
        (
            BYTES_KEY,
            retention.max_bytes.map(|b| b.min(i64::MAX as u64) as i64),
        ),
    ] {
        if let Some(v) = value {
            tx.execute(
                "INSERT INTO meta(key, value) VALUES(?1, ?2) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, v],
            )?;
        }
    }
    tx.commit()
}

/// The topic's limits.
pub(super) fn get(conn: &Connection) -> rusqlite::Result<Retention> {
    let value = |key: &str| -> rusqlite::Result<Option<i64>> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
    };
    Ok(Retention {
        max_age: value(AGE_KEY)?.map(|ms| Duration::from_millis(ms.max(0) as u64)),
        max_bytes: value(BYTES_KEY)?.map(|b| b.max(0) as u64),
    })
}

/// Deletes what the topic's limits no longer keep, in one transaction.
pub(super) fn apply(conn: &mut Connection) -> rusqlite::Result<Deleted> {
    let limits = get(conn)?;
    if limits == Retention::default() {
        return Ok(Deleted::default());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut deleted = Deleted::default();
    let mut count = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> rusqlite::Result<()> {
        let (batches, records): (i64, Option<i64>) = tx.query_row(
            &format!("SELECT count(*), sum(count) FROM batches WHERE {sql}"),
            p,
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if batches > 0 {
            tx.execute(&format!("DELETE FROM batches WHERE {sql}"), p)?;
            deleted.batches += batches as u64;
            deleted.records += records.unwrap_or(0) as u64;
        }
        Ok(())
    };
    if let Some(age) = limits.max_age {
        let cutoff = now_ms().saturating_sub(age.as_millis().min(i64::MAX as u128) as i64);
        count("appended_ms < ?1", &[&cutoff])?;
    }
    if let Some(max) = limits.max_bytes {
        let max = max.min(i64::MAX as u64) as i64;
        let partitions: Vec<i32> = {
            let mut st = tx.prepare("SELECT partition FROM heads")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for p in partitions {
            // The newest batch whose bytes, with every newer batch's, pass the limit: it and every
            // older batch go, except the partition's newest batch.
            count(
                "partition = ?1 AND base_offset <= ( \
                   SELECT base_offset FROM ( \
                     SELECT base_offset, SUM(length(data)) OVER (ORDER BY base_offset DESC) AS kept \
                     FROM batches WHERE partition = ?1) \
                   WHERE kept > ?2 ORDER BY base_offset DESC LIMIT 1) \
                 AND base_offset < (SELECT MAX(base_offset) FROM batches WHERE partition = ?1)",
                &[&p, &max],
            )?;
        }
    }
    tx.commit()?;
    Ok(deleted)
}
