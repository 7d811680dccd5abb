//! Each data file's statistics and row order, as its footer gives them, kept between queries.
//!
//! Planning a scan of a Parquet table needs every file's statistics (min, max and null count per
//! column; rows) and its `sorting_columns`. DataFusion keeps the footers themselves in its metadata
//! cache, but turning a footer into statistics again at every query was about a quarter of the
//! planning time of a 210-file lake. [`FileStatisticsCache`] keeps the result instead.
//!
//! DataFusion's own `DefaultFileStatisticsCache` has no bound, and `ticklake serve` runs for months
//! over tables whose files compaction replaces; so this one holds at most a fixed number of files,
//! the least recently used leaving first. An entry is used only while the file is the one it was
//! read from: the same size, modification time and, where the store gives one, ETag.

use std::sync::{Arc, Mutex};

use datafusion::common::Statistics;
use datafusion::execution::cache::lru_queue::LruQueue;
use datafusion::physical_expr::LexOrdering;
use object_store::path::Path as ObjectPath;
use object_store::ObjectMeta;

/// A file's statistics and the order of its rows, as planning uses them.
#[derive(Debug, Clone)]
pub(crate) struct FileStatistics {
    pub(crate) statistics: Arc<Statistics>,
    pub(crate) ordering: Option<LexOrdering>,
}

/// Files' [`FileStatistics`] by path, for one table's file schema (they are stated over it), at most
/// `capacity` of them.
pub(crate) struct FileStatisticsCache {
    capacity: usize,
    entries: Mutex<LruQueue<ObjectPath, (ObjectMeta, FileStatistics)>>,
}

impl std::fmt::Debug for FileStatisticsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStatisticsCache")
            .field("capacity", &self.capacity)
            .field("files", &self.len())
            .finish()
    }
}

impl FileStatisticsCache {
    /// Holds at most `capacity` files.
    pub(crate) fn new(capacity: usize) -> Self {
        FileStatisticsCache {
            capacity,
            entries: Mutex::new(LruQueue::new()),
        }
    }

    /// The statistics kept for `file`, if they were read from this very file (a file rewritten in
    /// place, or replaced under the same name, is read again).
    pub(crate) fn get(&self, file: &ObjectMeta) -> Option<FileStatistics> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&file.location) {
            Some((read, kept)) if same_file(read, file) => Some(kept.clone()),
            Some(_) => {
                entries.remove(&file.location);
                None
            }
            None => None,
        }
    }

    /// Keeps `statistics` for `file`; the least recently used file leaves when the cache is full.
    pub(crate) fn put(&self, file: &ObjectMeta, statistics: FileStatistics) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.put(file.location.clone(), (file.clone(), statistics));
        while entries.len() > self.capacity {
            entries.pop();
        }
    }

    /// How many files' statistics are kept.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Whether `now` is still the file `read` describes.
fn same_file(read: &ObjectMeta, now: &ObjectMeta) -> bool {
    read.size == now.size
        && read.last_modified == now.last_modified
        && (read.e_tag.is_none() || now.e_tag.is_none() || read.e_tag == now.e_tag)
        && read.version == now.version
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn meta(path: &str, size: u64, second: i64, e_tag: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            location: ObjectPath::from(path),
            last_modified: Utc.timestamp_opt(1_700_000_000 + second, 0).unwrap(),
            size,
            e_tag: e_tag.map(str::to_string),
            version: None,
        }
    }

    fn rows(n: usize) -> FileStatistics {
        let mut statistics = Statistics::new_unknown(&arrow::datatypes::Schema::empty());
        statistics.num_rows = datafusion::common::stats::Precision::Exact(n);
        FileStatistics {
            statistics: Arc::new(statistics),
            ordering: None,
        }
    }

    fn kept_rows(cache: &FileStatisticsCache, file: &ObjectMeta) -> Option<usize> {
        cache
            .get(file)
            .map(|s| *s.statistics.num_rows.get_value().unwrap())
    }

    #[test]
    fn a_file_is_read_again_once_it_changed() {
        let cache = FileStatisticsCache::new(10);
        let file = meta("t/date=2024-01-02/a.parquet", 100, 0, Some("1"));
        cache.put(&file, rows(7));
        assert_eq!(kept_rows(&cache, &file), Some(7));
        // Another size, another time, another ETag: each is another file.
        assert_eq!(
            kept_rows(&cache, &meta(file.location.as_ref(), 101, 0, Some("1"))),
            None
        );
        cache.put(&file, rows(7));
        assert_eq!(
            kept_rows(&cache, &meta(file.location.as_ref(), 100, 1, Some("1"))),
            None
        );
        cache.put(&file, rows(7));
        assert_eq!(
            kept_rows(&cache, &meta(file.location.as_ref(), 100, 0, Some("2"))),
            None
        );
        // The stale entry is gone, not kept beside the new one.
        assert_eq!(cache.len(), 0);
        // A store without ETags compares size and time.
        cache.put(&meta("t/b.parquet", 5, 0, None), rows(1));
        assert_eq!(kept_rows(&cache, &meta("t/b.parquet", 5, 0, None)), Some(1));
        assert_eq!(kept_rows(&cache, &meta("t/c.parquet", 5, 0, None)), None);
    }

    #[test]
    fn holds_at_most_its_capacity_least_recently_used_first_out() {
        let cache = FileStatisticsCache::new(2);
        let (a, b, c) = (
            meta("a.parquet", 1, 0, None),
            meta("b.parquet", 1, 0, None),
            meta("c.parquet", 1, 0, None),
        );
        cache.put(&a, rows(1));
        cache.put(&b, rows(2));
        // `a` is used, so `b` is the least recently used when `c` comes.
        assert_eq!(kept_rows(&cache, &a), Some(1));
        cache.put(&c, rows(3));
        assert_eq!(cache.len(), 2);
        assert_eq!(kept_rows(&cache, &b), None);
        assert_eq!(kept_rows(&cache, &a), Some(1));
        assert_eq!(kept_rows(&cache, &c), Some(3));
        let none = FileStatisticsCache::new(0);
        none.put(&a, rows(1));
        assert_eq!((none.len(), kept_rows(&none, &a)), (0, None));
    }
}
