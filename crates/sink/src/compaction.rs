//! Compaction in the background of a sink (`--compact-every`): a thread that compacts the sink's
//! table (for a Hive table, the partitions the sink wrote to) every so often until it is stopped, so
//! no cron job is needed. Failures are logged and the
//! next round tries again; the sink goes on regardless.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ticklake_catalog::{
    compact_hive, compact_hive_partitions, Catalog, HiveCompactOptions, MERGED_WHOLE_AFTER,
};
use ticklake_iceberg::{CompactOptions, IcebergConfig, IcebergLake};
use ticklake_lake::Lake;

/// Which table a background compaction keeps compact, and how.
#[derive(Debug, Clone)]
pub enum CompactionTarget {
    /// A Hive table of the lake, registered in the catalog.
    Hive {
        /// The lake.
        lake: Lake,
        /// Its catalog.
        catalog: Arc<dyn Catalog>,
        /// How.
        options: HiveCompactOptions,
        /// Only the partitions a sink wrote to (all of the table's with `None`).
        written: Option<WrittenPartitions>,
    },
    /// An Iceberg table of the lake.
    Iceberg {
        /// Where the lake's Iceberg tables are and which catalog keeps them.
        config: IcebergConfig,
        /// How.
        options: CompactOptions,
    },
}

/// The partitions of a Hive table a sink wrote to, with when it last did; shared with its background
/// compaction, whose rounds visit only these. A partition is visited until it has not been written
/// to for [`MERGED_WHOLE_AFTER`] and two rounds more, so its last round merges it whole.
#[derive(Debug, Clone, Default)]
pub struct WrittenPartitions(Arc<Mutex<HashMap<Vec<String>, Instant>>>);

impl WrittenPartitions {
    /// Notes that the partitions with these values were just written to.
    pub fn record(&self, partitions: impl IntoIterator<Item = Vec<String>>) {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for values in partitions {
            map.insert(values, now);
        }
    }

    /// The partitions to visit in a round, dropping those not written to for `keep_for` (this is
    /// their last round).
    fn visit(&self, keep_for: Duration) -> Vec<Vec<String>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let out: Vec<Vec<String>> = map.keys().cloned().collect();
        map.retain(|_, at| at.elapsed() < keep_for);
        out
    }
}

/// A running background compaction; stopped when dropped.
pub struct BackgroundCompaction {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundCompaction {
    /// Compacts `table` every `every`, on a thread of its own.
    pub fn spawn(
        target: CompactionTarget,
        table: String,
        every: Duration,
    ) -> std::io::Result<BackgroundCompaction> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("compaction".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!("compaction: cannot start its runtime: {e}");
                        return;
                    }
                };
                let (lock, wake) = &*flag;
                loop {
                    let stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                    let (stopped, _) = wake
                        .wait_timeout_while(stopped, every, |s| !*s)
                        .unwrap_or_else(|e| e.into_inner());
                    if *stopped {
                        return;
                    }
                    drop(stopped);
                    let started = Instant::now();
                    match runtime.block_on(round(&target, &table, every)) {
                        Ok(Some(what)) => tracing::info!(
                            "compaction of {table}: {what} in {:.1}s",
                            started.elapsed().as_secs_f64()
                        ),
                        Ok(None) => tracing::debug!("compaction of {table}: nothing to do"),
                        Err(e) => tracing::warn!("compaction of {table}: {e} (tried again later)"),
                    }
                }
            })?;
        Ok(BackgroundCompaction {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread, after the round in progress if any.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BackgroundCompaction {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One compaction; what it did, if anything.
async fn round(
    target: &CompactionTarget,
    table: &str,
    every: Duration,
) -> Result<Option<String>, String> {
    match target {
        CompactionTarget::Iceberg { config, options } => {
            let lake = IcebergLake::open(config).await.map_err(|e| e.to_string())?;
            if lake.load(table).await.map_err(|e| e.to_string())?.is_none() {
                return Ok(None);
            }
            let done = lake
                .compact(table, options)
                .await
                .map_err(|e| e.to_string())?;
            Ok((done.files_removed > 0 || done.files_deleted > 0).then(|| {
                format!(
                    "{} files merged into {} in {} partitions, {} snapshots expired, {} files deleted",
                    done.files_removed,
                    done.files_added,
                    done.partitions,
                    done.snapshots_expired,
                    done.files_deleted
                )
            }))
        }
        CompactionTarget::Hive {
            lake,
            catalog,
            options,
            written,
        } => {
            if catalog
                .get_table(table)
                .await
                .map_err(|e| e.to_string())?
                .is_none()
            {
                return Ok(None);
            }
            let done = match written {
                None => compact_hive(lake, catalog.as_ref(), table, options).await,
                Some(written) => {
                    let partitions = written.visit(MERGED_WHOLE_AFTER + 2 * every);
                    if partitions.is_empty() {
                        return Ok(None);
                    }
                    compact_hive_partitions(
                        lake,
                        catalog.as_ref(),
                        table,
                        Some(&partitions),
                        options,
                    )
                    .await
                }
            }
            .map_err(|e| e.to_string())?;
            Ok((done.files_removed > 0 || done.files_deleted > 0).then(|| {
                format!(
                    "{} files merged into {} in {} partitions, {} replaced files deleted",
                    done.files_removed, done.files_added, done.partitions, done.files_deleted
                )
            }))
        }
    }
}
