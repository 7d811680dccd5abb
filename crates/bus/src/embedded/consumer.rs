//! The reader: positions per assigned partition, fetched batch by batch from the log.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};

use super::group::{GroupMember, GroupSettings};
use super::read_ahead::{read_batches, ReadAhead};
use super::{open_topic, storage};
use crate::{BusError, Consumer, ConsumerOptions, Message, PartitionLag, StartAt};

/// A consumer of the embedded log.
pub struct EmbeddedConsumer {
    db: PathBuf,
    conn: Connection,
    options: ConsumerOptions,
    partitions: i32,
    settings: GroupSettings,
    membership: Option<GroupMember>,
    /// Assigned partitions and the next offset to return from each.
    positions: BTreeMap<i32, i64>,
    buffers: HashMap<i32, VecDeque<Message>>,
    /// Where the round-robin over partitions continues.
    cursor: usize,
    /// Each partition's next batches, read while the caller works on the ones before.
    read_ahead: ReadAhead,
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
            Some(group) => Some(GroupMember::join(dir, &conn, &db, &options.topic, group)?),
        };
        let read_ahead = ReadAhead::start(&db);
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
            read_ahead,
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

    /// Looks at the group's live members and moves partitions accordingly: this member first revokes
    /// (telling the listener) and releases what it should no longer own, then claims what is free.
    fn rebalance(&mut self) -> Result<(), BusError> {
        let Some(member) = &mut self.membership else {
            return Ok(());
        };
        let Some(desired) = member.due_assignment(
            &mut self.conn,
            &self.db,
            self.partitions,
            self.settings.rebalance_interval,
        )?
        else {
            return Ok(());
        };
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
                self.read_ahead.forget(*p);
                member.release(&self.conn, &self.db, *p)?;
            }
        }
        let mut claimed = Vec::new();
        for p in desired {
            if !self.positions.contains_key(&p) && member.claim(&self.conn, &self.db, p)? {
                claimed.push(p);
            }
        }
        member.checked();
        for p in &claimed {
            let pos = self.start_position(*p)?;
            self.positions.insert(*p, pos);
        }
        if !claimed.is_empty() {
            if let Some(l) = &self.options.listener {
                l.on_assign(&claimed);
            }
        }
        Ok(())
    }

    /// Fills the (empty) buffer of `partition` from the log, or from what was read ahead; returns
    /// false when nothing new is there. Then asks for the batches after these to be read ahead.
    fn fetch(&mut self, partition: i32) -> Result<bool, BusError> {
        let pos = self.positions[&partition];
        let buf = self.buffers.entry(partition).or_default();
        let fetched = match self.read_ahead.take(partition, pos) {
            Some(messages) if buf.is_empty() => {
                *buf = messages;
                true
            }
            _ => read_batches(&self.conn, &self.db, partition, pos, buf)?,
        };
        if let Some(last) = buf.back().filter(|_| fetched) {
            self.read_ahead.request(partition, last.offset + 1);
        }
        Ok(fetched)
    }
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
                let n = buf.len().min(max - out.len());
                out.reserve(n);
                out.extend(buf.drain(..n));
                if let Some(last) = out.last().filter(|_| n > 0) {
                    self.positions.insert(p, last.offset + 1);
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
        match &self.membership {
            Some(m) => m.commit(&mut self.conn, &self.db, offsets),
            None => Err(BusError::NoGroup),
        }
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
        self.read_ahead.forget(partition);
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
        if let Some(m) = &self.membership {
            let parts: Vec<i32> = self.positions.keys().copied().collect();
            if !parts.is_empty() {
                if let Some(l) = &self.options.listener {
                    l.on_revoke(&parts);
                }
            }
            m.leave(&self.conn);
        }
    }
}
