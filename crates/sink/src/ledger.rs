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
//! on finds its next range claimed (or, if that entry was already cleaned up, finds its previous entry
//! gone) and drops the partition before writing anything. A new consumer group or expired group
//! offsets change nothing: the lake says where to resume.

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

    /// The last entry of a partition, if any.
    pub(crate) async fn last(&self, partition: i32) -> Result<Option<Entry>, SinkError> {
        match self.entries(partition).await?.last() {
            Some(&from) => Ok(Some(self.read(partition, from).await?)),
            None => Ok(None),
        }
    }

    /// Claims `entry` for `partition`. `previous` is the start of this writer's previous entry of the
    /// partition: if it is gone, the chain moved on without us (the entry just created is stale and is
    /// removed again), which is reported as taken.
    pub(crate) async fn claim(
        &self,
        partition: i32,
        entry: Entry,
        previous: Option<i64>,
    ) -> Result<Claim, SinkError> {
        let path = self.path(partition, entry.from);
        let body = serde_json::to_vec(&entry).map_err(|e| SinkError::Ledger(e.to_string()))?;
        if self.lake.put_if_absent(&path, Bytes::from(body)).await? {
            if let Some(prev) = previous {
                if !self.lake.exists(&self.path(partition, prev)).await? {
                    self.lake.delete(&path).await?;
                    let last = self.last(partition).await?.unwrap_or(entry);
                    return Ok(Claim::Taken(last));
                }
            }
            return Ok(Claim::Won);
        }
        let existing = self.read(partition, entry.from).await?;
        Ok(if existing == entry {
            Claim::Same
        } else {
            Claim::Taken(existing)
        })
    }

    /// Deletes the partition's entries older than the last few (best effort: a failure only leaves
    /// an old entry behind).
    pub(crate) async fn trim(&self, partition: i32, froms: &mut Vec<i64>) {
        while froms.len() > KEEP {
            let from = froms.remove(0);
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
        assert_eq!(ledger.last(0).await.unwrap(), None);
        let e = |from, to| Entry { from, to };
        assert_eq!(ledger.claim(0, e(0, 10), None).await.unwrap(), Claim::Won);
        assert_eq!(ledger.claim(0, e(0, 10), None).await.unwrap(), Claim::Same);
        assert_eq!(
            ledger.claim(0, e(0, 12), None).await.unwrap(),
            Claim::Taken(e(0, 10))
        );
        assert_eq!(
            ledger.claim(0, e(10, 20), Some(0)).await.unwrap(),
            Claim::Won
        );
        assert_eq!(ledger.last(0).await.unwrap(), Some(e(10, 20)));
        // Another writer moves on and cleans up; the stalled one claims 20.. from 10, long gone.
        let mut froms = vec![0, 10];
        for (from, to) in [(20, 30), (30, 40), (40, 50)] {
            assert_eq!(
                ledger
                    .claim(0, e(from, to), froms.last().copied())
                    .await
                    .unwrap(),
                Claim::Won
            );
            froms.push(from);
            ledger.trim(0, &mut froms).await;
        }
        assert_eq!(ledger.entries(0).await.unwrap(), [20, 30, 40]);
        assert_eq!(
            ledger.claim(0, e(10, 25), Some(0)).await.unwrap(),
            Claim::Taken(e(40, 50)),
            "a writer whose previous entry is gone is stale"
        );
        assert_eq!(ledger.entries(0).await.unwrap(), [20, 30, 40]);
        assert_eq!(ledger.entries(1).await.unwrap(), Vec::<i64>::new());
    }
}
