//! The embedded log's consumer groups. Each member holds an exclusive OS lock on its own file in
//! `members/`; the OS drops it when the process dies, however it dies, so the others see a dead member
//! at once. Partitions are spread round-robin over the live members sorted by id (join time). A member
//! only claims a partition no one owns (`owners` table), so no partition ever has two owners, and it
//! can only commit offsets of partitions it owns.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{storage, topic_dir, MEMBERS_DIR};
use crate::BusError;

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

/// This process's membership of a consumer group of the embedded log.
pub(super) struct GroupMember {
    group: String,
    id: String,
    /// Held (locked) for as long as this member lives.
    _lock: File,
    lock_path: PathBuf,
    members_dir: PathBuf,
    last_check: Option<Instant>,
}

impl GroupMember {
    /// Joins `group` on `topic`: a new member id, its lock file held, its row in `members`.
    pub(super) fn join(
        dir: &Path,
        conn: &Connection,
        db: &Path,
        topic: &str,
        group: &str,
    ) -> Result<GroupMember, BusError> {
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
        Ok(GroupMember {
            group: group.to_owned(),
            id,
            _lock: lock,
            lock_path,
            members_dir,
            last_check: None,
        })
    }

    /// Once per `interval`: drops dead members (their lock is free, with their ownerships) and returns
    /// the partitions this member should own. `None` between checks.
    pub(super) fn due_assignment(
        &mut self,
        conn: &mut Connection,
        db: &Path,
        partitions: i32,
        interval: Duration,
    ) -> Result<Option<Vec<i32>>, BusError> {
        if self.last_check.is_some_and(|t| t.elapsed() < interval) {
            return Ok(None);
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| storage(db, e))?;
        let members: Vec<String> = {
            let mut st = tx
                .prepare("SELECT member FROM members WHERE grp = ?1 ORDER BY member")
                .map_err(|e| storage(db, e))?;
            let rows = st
                .query_map([&self.group], |r| r.get(0))
                .map_err(|e| storage(db, e))?;
            rows.collect::<Result<_, _>>().map_err(|e| storage(db, e))?
        };
        let mut live = Vec::with_capacity(members.len());
        for other in members {
            if other == self.id || member_alive(&self.members_dir, &other) {
                live.push(other);
            } else {
                for sql in [
                    "DELETE FROM members WHERE grp = ?1 AND member = ?2",
                    "DELETE FROM owners WHERE grp = ?1 AND member = ?2",
                ] {
                    tx.execute(sql, params![self.group, other])
                        .map_err(|e| storage(db, e))?;
                }
                let _ = fs::remove_file(self.members_dir.join(format!("{other}.lock")));
            }
        }
        tx.commit().map_err(|e| storage(db, e))?;
        let rank = live.iter().position(|x| *x == self.id).unwrap_or(0);
        Ok(Some(
            (0..partitions)
                .filter(|p| *p as usize % live.len().max(1) == rank)
                .collect(),
        ))
    }

    /// Records that the assignment was acted on; the next check is due after the interval.
    pub(super) fn checked(&mut self) {
        self.last_check = Some(Instant::now());
    }

    /// Gives up the ownership of `partition`.
    pub(super) fn release(
        &self,
        conn: &Connection,
        db: &Path,
        partition: i32,
    ) -> Result<(), BusError> {
        conn.execute(
            "DELETE FROM owners WHERE grp = ?1 AND partition = ?2 AND member = ?3",
            params![self.group, partition, self.id],
        )
        .map_err(|e| storage(db, e))?;
        Ok(())
    }

    /// Takes `partition` if no one owns it (or this member already does); true when it is ours.
    pub(super) fn claim(
        &self,
        conn: &Connection,
        db: &Path,
        partition: i32,
    ) -> Result<bool, BusError> {
        let n = conn
            .execute(
                "INSERT OR IGNORE INTO owners(grp, partition, member) VALUES(?1, ?2, ?3)",
                params![self.group, partition, self.id],
            )
            .map_err(|e| storage(db, e))?;
        let owner: String = conn
            .query_row(
                "SELECT member FROM owners WHERE grp = ?1 AND partition = ?2",
                params![self.group, partition],
                |r| r.get(0),
            )
            .map_err(|e| storage(db, e))?;
        Ok(n == 1 || owner == self.id)
    }

    /// Commits the group's offsets, fenced: every partition must be owned by this member.
    pub(super) fn commit(
        &self,
        conn: &mut Connection,
        db: &Path,
        offsets: &[(i32, i64)],
    ) -> Result<(), BusError> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| storage(db, e))?;
        for (p, off) in offsets {
            let owner: Option<String> = tx
                .query_row(
                    "SELECT member FROM owners WHERE grp = ?1 AND partition = ?2",
                    params![self.group, p],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| storage(db, e))?;
            if owner.as_deref() != Some(self.id.as_str()) {
                return Err(BusError::NotAssigned(*p));
            }
            tx.execute(
                "INSERT INTO offsets(grp, partition, next_offset) VALUES(?1, ?2, ?3) \
                 ON CONFLICT(grp, partition) DO UPDATE SET next_offset = excluded.next_offset",
                params![self.group, p, off],
            )
            .map_err(|e| storage(db, e))?;
        }
        tx.commit().map_err(|e| storage(db, e))
    }

    /// Leaves the group cleanly (best effort), so the others take over at once.
    pub(super) fn leave(&self, conn: &Connection) {
        for sql in [
            "DELETE FROM owners WHERE grp = ?1 AND member = ?2",
            "DELETE FROM members WHERE grp = ?1 AND member = ?2",
        ] {
            let _ = conn.execute(sql, params![self.group, self.id]);
        }
        let _ = fs::remove_file(&self.lock_path);
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
