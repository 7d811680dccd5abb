//! The ledger: the lake's own record of which offsets of each topic-partition it holds.
//!
//! Before a sink writes any file of a checkpoint, it claims the checkpoint's offset range in the
//! ledger: the file `_ticklake/ledger/<table>/<topic>/<partition>/<from:020>.json` holding
//! `{"from": X, "to": Y}`, created only if absent (a hard link locally, `If-None-Match: *` on S3), so
//! that of any writers racing for the range starting at X exactly one decides where it ends. Entries
//! form a chain (each starts where the previous ended), and a writer claims the next range only once
//! the files of its previous range are durable and registered. Hence every entry but the last is
//! complete, and the last one is complete or being written.
//!
//! A sink that is given a partition resumes from the ledger, not from the consumer group: it seeks to
//! the start of the last entry and writes exactly that range again. Files are named by the first
//! offset of their records, so the rewrite reproduces the same files with the same records, whether
//! the first attempt finished, crashed half-way, or is still running in a stalled process that will
//! wake up later: all of them write the same files. A stalled writer that wakes up after others moved
//! on finds that the chain no longer ends with its range (an entry starts after it), whether its
//! range's entry is there or was trimmed away, and drops the partition before writing anything. Only
//! old entries are ever deleted (all but the last few), never one just claimed. A new consumer group or
//! expired group offsets change nothing: the lake says where to resume.

use bytes::Bytes;
use ticklake_lake::Lake;

use crate::SinkError;

/// One claimed range of offsets of a partition: `from` (inclusive) to `to` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Entry {
    pub from: i64,
    pub to: i64,
}

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The range is ours to write.
    Won,
    /// The same range was claimed before (a replay): write it again.
    Same,
    /// The range from this offset was claimed with another end: someone else decided it.
    Taken(Entry),
}

/// The ledger of one table and topic.
pub(crate) struct Ledger {
    lake: Lake,
    dir: String,
}

/// Entries kept per partition; older ones are deleted as new ones are claimed.
const KEEP: usize = 3;

impl Ledger {
    pub(crate) fn new(lake: Lake, table: &str, topic: &str) -> Ledger {
        Ledger {
            lake,
            dir: format!("_ticklake/ledger/{table}/{topic}"),
        }
    }

    fn path(&self, partition: i32, from: i64) -> String {
        format!("{}/{partition}/{from:020}.json", self.dir)
    }

    /// The entries of a partition, oldest first.
    pub(crate) async fn entries(&self, partition: i32) -> Result<Vec<i64>, SinkError> {
        let files = self
            .lake
            .list(&format!("{}/{partition}/", self.dir))
            .await?;
        let mut froms: Vec<i64> = files
            .iter()
            .filter_map(|f| f.rsplit('/').next()?.strip_suffix(".json")?.parse().ok())
            .collect();
        froms.sort_unstable();
        Ok(froms)
    }

    /// Reads one entry.
    pub(crate) async fn read(&self, partition: i32, from: i64) -> Result<Entry, SinkError> {
        let path = self.path(partition, from);
        let bytes = self.lake.get(&path).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| SinkError::Ledger(format!("{path}: unreadable entry: {e}")))
    }

    /// The partition's entries (oldest first) and the last one read. An entry trimmed between the
    /// listing and the read (the chain moved on meanwhile) means listing again.
    pub(crate) async fn tail(
        &self,
        partition: i32,
    ) -> Result<(Vec<i64>, Option<Entry>), SinkError> {
        let mut attempts = 0;
        loop {
            let froms = self.entries(partition).await?;
            let Some(&from) = froms.last() else {
                return Ok((froms, None));
            };
            match self.read(partition, from).await {
                Ok(last) => return Ok((froms, Some(last))),
                Err(e) => {
                    attempts += 1;
                    if attempts >= 5 || self.lake.exists(&self.path(partition, from)).await? {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Claims `entry` for `partition` and returns what the claim found, with the partition's entries
    /// as they stood right after it (oldest first, for [`Ledger::trim`]).
    ///
    /// A range is ours to write only while the chain ends with it: if any entry starts after
    /// `entry.from`, the chain moved on without us (we were stalled, or resumed from a listing that is
    /// out of date now) and the claim is reported as taken, whether the entry at `entry.from` was
    /// created just now (its old entry was trimmed) or found equal. Nothing is deleted on the way: an
    /// entry once visible may be relied on by another writer that found it [`Claim::Same`]; a stale
    /// one left below the chain's end is harmless (resuming reads only the last) and is trimmed later.
    pub(crate) async fn claim(
        &self,
        partition: i32,
        entry: Entry,
    ) -> Result<(Claim, Vec<i64>), SinkError> {
        let path = self.path(partition, entry.from);
        let body = serde_json::to_vec(&entry).map_err(|e| SinkError::Ledger(e.to_string()))?;
        let claim = if self.lake.put_if_absent(&path, Bytes::from(body)).await? {
            Claim::Won
        } else {
            let existing = self.read(partition, entry.from).await?;
            if existing != entry {
                tracing::debug!(
                    "ledger: partition {partition}: {}..{}: taken as {}..{}",
                    entry.from,
                    entry.to,
                    existing.from,
                    existing.to
                );
                return Ok((Claim::Taken(existing), Vec::new()));
            }
            Claim::Same
        };
        let froms = self.entries(partition).await?;
        tracing::debug!(
            "ledger: partition {partition}: {}..{}: {claim:?}, entries {froms:?}",
            entry.from,
            entry.to
        );
        if let Some(&last) = froms.last().filter(|last| **last > entry.from) {
            // (Trimmed meanwhile by the writer that moved on: its start is all the log needs.)
            let last = self.read(partition, last).await.unwrap_or(Entry {
                from: last,
                to: last,
            });
            return Ok((Claim::Taken(last), froms));
        }
        Ok((claim, froms))
    }

    /// Deletes the partition's entries older than the last few (best effort: a failure only leaves
    /// an old entry behind).
    pub(crate) async fn trim(&self, partition: i32, froms: &mut Vec<i64>) {
        while froms.len() > KEEP {
            let from = froms.remove(0);
            tracing::debug!("ledger: partition {partition}: deleting the old entry {from}");
            if let Err(e) = self.lake.delete(&self.path(partition, from)).await {
                tracing::warn!("ledger: cannot delete an old entry: {e}");
                froms.insert(0, from);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_writer_decides_each_range_and_a_stale_one_learns_it() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let ledger = Ledger::new(lake, "t", "topic");
        assert_eq!(ledger.tail(0).await.unwrap().1, None);
        let e = |from, to| Entry { from, to };
        let claim = |from, to| {
            let ledger = &ledger;
            async move { ledger.claim(0, e(from, to)).await.unwrap() }
        };
        assert_eq!(claim(0, 10).await, (Claim::Won, vec![0]));
        assert_eq!(claim(0, 10).await, (Claim::Same, vec![0]));
        assert_eq!(claim(0, 12).await.0, Claim::Taken(e(0, 10)));
        assert_eq!(claim(10, 20).await, (Claim::Won, vec![0, 10]));
        assert_eq!(ledger.tail(0).await.unwrap().1, Some(e(10, 20)));
        // A writer that resumed at 10 (replaying 10..20) stalls; another one moves on and trims.
        let mut froms = vec![0, 10];
        for (from, to) in [(20, 30), (30, 40), (40, 50)] {
            let (won, listed) = claim(from, to).await;
            assert_eq!(won, Claim::Won);
            froms = listed;
            ledger.trim(0, &mut froms).await;
        }
        assert_eq!(ledger.entries(0).await.unwrap(), [20, 30, 40]);
        // The stalled writer wakes up: its replay of 10..20 creates the trimmed entry again, but the
        // chain ends later, so it is not its to write; and so is a claim found equal to a stale one.
        assert_eq!(claim(10, 20).await.0, Claim::Taken(e(40, 50)));
        assert_eq!(claim(10, 20).await.0, Claim::Taken(e(40, 50)));
        assert_eq!(claim(20, 30).await.0, Claim::Taken(e(40, 50)));
        assert_eq!(
            claim(40, 50).await.0,
            Claim::Same,
            "the chain's end is rewritten"
        );
        assert_eq!(claim(50, 55).await.0, Claim::Won);
        // What a stale claim left behind goes with the next trim.
        let (_, mut froms) = claim(55, 60).await;
        assert_eq!(froms, [10, 20, 30, 40, 50, 55]);
        ledger.trim(0, &mut froms).await;
        assert_eq!(ledger.entries(0).await.unwrap(), [40, 50, 55]);
        assert_eq!(ledger.entries(1).await.unwrap(), Vec::<i64>::new());
    }
}
