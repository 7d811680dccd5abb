//! The consume -> buffer -> flush -> commit loop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use ticklake_bus::{
    BusConfig, Consumer, ConsumerOptions, Message, PartitionLag, RebalanceListener, StartAt,
};
use ticklake_catalog::Catalog;
use ticklake_model::arrow::BatchBuilder;
use ticklake_model::json;

use crate::format::{encode, FileFormat};
use crate::register::Registrar;
use crate::SinkError;
use ticklake_lake::layout::file_name;
use ticklake_lake::{Lake, Partitioning};

/// When to flush.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    /// Flush once this many records are buffered.
    pub records: usize,
    /// Flush once this many message bytes are buffered (bounds memory whatever the partition count).
    pub bytes: usize,
    /// Flush once the oldest buffered record has waited this long (also when the topic goes quiet).
    pub interval: Duration,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy {
            records: 1_000_000,
            bytes: 256 << 20,
            interval: Duration::from_secs(5),
        }
    }
}

/// What to sink, and how.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The topic to consume.
    pub topic: String,
    /// The consumer group (sinks with the same group split the partitions).
    pub group: String,
    /// The table folder inside the lake.
    pub table: String,
    /// The partition folders.
    pub partitioning: Partitioning,
    /// The file format.
    pub format: FileFormat,
    /// When to flush.
    pub flush: FlushPolicy,
    /// Drain what is on the topic, then stop.
    pub once: bool,
    /// Where to register the table and its partitions (none: files only).
    pub catalog: Option<Arc<dyn Catalog>>,
}

/// Counters of a sink run (everything counts committed data only).
#[derive(Debug, Clone)]
pub struct Stats {
    /// Records written to the lake and committed.
    pub records: u64,
    /// Messages sent to the dead-letter files.
    pub dead_letters: u64,
    /// Files written (data and dead-letter).
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Flushes (checkpoints committed).
    pub flushes: u64,
    /// Consumer position and end per assigned partition, as of the last look.
    pub lag: Vec<PartitionLag>,
    /// Time from a record's timestamp to the commit of its file, ms.
    pub freshness: Histogram<u64>,
    /// Since the sink started.
    pub elapsed: Duration,
}

impl Stats {
    /// Messages not yet consumed, over all assigned partitions.
    pub fn total_lag(&self) -> i64 {
        self.lag.iter().map(PartitionLag::lag).sum()
    }
}

struct Group {
    first_offset: i64,
    builder: BatchBuilder,
}

#[derive(Default)]
struct PartitionBuf {
    groups: BTreeMap<String, Group>,
    dead: Vec<u8>,
    dead_first: Option<i64>,
    dead_count: u64,
    next_offset: i64,
    records: usize,
    bytes: usize,
    /// Message timestamps (ms) of the buffered records, for freshness.
    stamps: Vec<i64>,
}

#[derive(Default)]
struct Buffer {
    parts: BTreeMap<i32, PartitionBuf>,
    records: usize,
    bytes: usize,
    since: Option<Instant>,
}

/// Drops the unflushed records of revoked partitions: their new owner replays them from the committed
/// offset. Runs inside the consumer's poll, so no flush of this sink is under way when it does.
struct Revoker(Arc<Mutex<Buffer>>);

impl RebalanceListener for Revoker {
    fn on_revoke(&self, partitions: &[i32]) {
        let mut b = lock(&self.0);
        for p in partitions {
            if let Some(pb) = b.parts.remove(p) {
                b.records -= pb.records;
                b.bytes -= pb.bytes;
                tracing::info!(
                    "partition {p} revoked: {} unflushed records left to its next owner",
                    pb.records
                );
            }
        }
        if b.parts.is_empty() {
            b.since = None;
        }
    }

    fn on_assign(&self, partitions: &[i32]) {
        tracing::info!("partitions assigned: {partitions:?}");
    }
}

fn lock(m: &Mutex<Buffer>) -> MutexGuard<'_, Buffer> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running sink.
pub struct Sink {
    config: SinkConfig,
    lake: Lake,
    consumer: Box<dyn Consumer>,
    buffer: Arc<Mutex<Buffer>>,
    runtime: tokio::runtime::Runtime,
    registrar: Option<Registrar>,
    stats: Stats,
    started: Instant,
}

/// How often the status callback and the lag metrics are refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// Memory an open group (one future file) costs beyond its records, counted against `FlushPolicy::bytes`.
const GROUP_OVERHEAD: usize = 4096;
/// Files written at the same time during a flush.
const WRITE_CONCURRENCY: usize = 8;
/// With `once`, how long to wait for a partition assignment before concluding there is nothing to do.
const ONCE_ASSIGN_WAIT: Duration = Duration::from_secs(120);

impl Sink {
    /// Joins the consumer group and prepares the lake.
    pub fn new(bus: &BusConfig, lake: Lake, config: SinkConfig) -> Result<Sink, SinkError> {
        if config.table.is_empty()
            || config.table.starts_with(['_', '.'])
            || !config
                .table
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(SinkError::Config(format!(
                "table name {:?}: use lower-case letters, digits and '_', not starting with '_'",
                config.table
            )));
        }
        if config.flush.records == 0 || config.flush.bytes == 0 || config.flush.interval.is_zero() {
            return Err(SinkError::Config(
                "flush limits must be greater than zero".into(),
            ));
        }
        let buffer = Arc::new(Mutex::new(Buffer::default()));
        let consumer = ticklake_bus::consumer(
            bus,
            ConsumerOptions {
                topic: config.topic.clone(),
                group: Some(config.group.clone()),
                start: StartAt::Earliest,
                listener: Some(Arc::new(Revoker(buffer.clone()))),
            },
        )?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ticklake-sink-io")
            .enable_all()
            .build()
            .map_err(|e| SinkError::Config(format!("cannot start the I/O runtime: {e}")))?;
        let registrar = config.catalog.clone().map(Registrar::new);
        Ok(Sink {
            config,
            lake,
            consumer,
            buffer,
            runtime,
            registrar,
            stats: Stats {
                records: 0,
                dead_letters: 0,
                files: 0,
                bytes: 0,
                flushes: 0,
                lag: Vec::new(),
                freshness: Histogram::new(3)
                    .unwrap_or_else(|_| unreachable!("3 significant digits is valid")),
                elapsed: Duration::ZERO,
            },
            started: Instant::now(),
        })
    }

    /// Runs until `stop` is raised (then flushes and commits) or, with `once`, until the topic is
    /// drained. `status` is called every few seconds and at the end.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        status: &mut dyn FnMut(&Stats),
    ) -> Result<Stats, SinkError> {
        // The first status (and lag metrics) comes after 2 s, then every STATUS_EVERY.
        let mut last_status = Instant::now()
            .checked_sub(STATUS_EVERY - Duration::from_secs(2))
            .unwrap_or_else(Instant::now);
        loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let wait = self.time_to_deadline().min(Duration::from_millis(100));
            let batch = self.consumer.poll(10_000, wait)?;
            let empty = batch.is_empty();
            self.absorb(batch);
            if self.should_flush() {
                self.flush()?;
            }
            if last_status.elapsed() >= STATUS_EVERY {
                self.refresh_lag()?;
                status(&self.snapshot());
                last_status = Instant::now();
            }
            if empty && self.config.once && self.drained()? {
                break;
            }
        }
        self.flush()?;
        self.refresh_lag()?;
        let s = self.snapshot();
        status(&s);
        Ok(s)
    }

    fn snapshot(&mut self) -> Stats {
        self.stats.elapsed = self.started.elapsed();
        self.stats.clone()
    }

    fn refresh_lag(&mut self) -> Result<(), SinkError> {
        self.stats.lag = self.consumer.lag()?;
        for l in &self.stats.lag {
            metrics::gauge!("ticklake_sink_consumer_lag", "partition" => l.partition.to_string())
                .set(l.lag() as f64);
        }
        Ok(())
    }

    /// With `once`: true when every assigned partition is read to its end.
    fn drained(&mut self) -> Result<bool, SinkError> {
        let lag = self.consumer.lag()?;
        if lag.is_empty() {
            if self.started.elapsed() > ONCE_ASSIGN_WAIT {
                return Err(SinkError::Config(format!(
                    "no partition of {:?} was assigned to this sink within {}s: is another member of \
                     group {:?} holding them all?",
                    self.config.topic,
                    ONCE_ASSIGN_WAIT.as_secs(),
                    self.config.group
                )));
            }
            return Ok(false);
        }
        Ok(lag.iter().all(|l| l.lag() == 0))
    }

    fn time_to_deadline(&self) -> Duration {
        match lock(&self.buffer).since {
            Some(t) => self.config.flush.interval.saturating_sub(t.elapsed()),
            None => self.config.flush.interval,
        }
    }

    fn should_flush(&self) -> bool {
        let b = lock(&self.buffer);
        b.records >= self.config.flush.records
            || b.bytes >= self.config.flush.bytes
            || b.since
                .is_some_and(|t| t.elapsed() >= self.config.flush.interval)
    }

    /// Decodes messages into the open checkpoints.
    fn absorb(&mut self, batch: Vec<Message>) {
        if batch.is_empty() {
            return;
        }
        let mut b = lock(&self.buffer);
        let b = &mut *b;
        b.since.get_or_insert_with(Instant::now);
        for m in batch {
            let pb = b.parts.entry(m.partition).or_default();
            pb.next_offset = m.offset + 1;
            let size = m.payload.as_ref().map_or(0, Vec::len);
            pb.bytes += size;
            b.bytes += size;
            let decoded = match &m.payload {
                Some(p) => json::decode(p),
                None => Err(ticklake_model::DecodeError::NotJson(
                    "the message has no value".into(),
                )),
            };
            match decoded {
                Ok(r) => {
                    let path = self.config.partitioning.path_for(&r.symbol, r.ts);
                    let group = pb.groups.entry(path).or_insert_with(|| {
                        // An open group costs memory of its own, beyond its records.
                        pb.bytes += GROUP_OVERHEAD;
                        b.bytes += GROUP_OVERHEAD;
                        Group {
                            first_offset: m.offset,
                            builder: BatchBuilder::new(),
                        }
                    });
                    group.builder.push(&r);
                    pb.stamps.push(m.timestamp_ms.unwrap_or(r.ts / 1000));
                    pb.records += 1;
                    b.records += 1;
                }
                Err(e) => {
                    pb.dead_first.get_or_insert(m.offset);
                    pb.dead_count += 1;
                    dead_letter(&mut pb.dead, &self.config.topic, &m, &e.to_string());
                }
            }
        }
    }

    /// Writes every open checkpoint, then commits the offsets after them.
    fn flush(&mut self) -> Result<(), SinkError> {
        let taken = std::mem::take(&mut *lock(&self.buffer));
        if taken.parts.is_empty() {
            return Ok(());
        }
        let cfg = &self.config;
        let ext = cfg.format.extension();
        let mut jobs: Vec<(String, Job)> = Vec::new();
        let mut folders: Vec<String> = Vec::new();
        let mut schemas = Vec::new();
        let mut offsets = Vec::new();
        let mut stamps = Vec::new();
        let (mut records, mut dead) = (0u64, 0u64);
        for (p, pb) in taken.parts {
            for (path, mut g) in pb.groups {
                let batch = g
                    .builder
                    .finish()
                    .map_err(|e| SinkError::Encode(e.to_string()))?;
                if self.registrar.is_some() {
                    if schemas.last() != Some(&batch.schema()) {
                        schemas.push(batch.schema());
                    }
                    folders.push(path.clone());
                }
                // Text formats leave partition columns to the folders, as Hive writers do: their
                // readers map columns by position (CSV), and a table cannot hold a column twice.
                let batch = if cfg.format == FileFormat::Parquet {
                    batch
                } else {
                    drop_columns(batch, cfg.partitioning.keys().iter().map(|k| k.name()))
                };
                let name = file_name(&cfg.topic, p, g.first_offset, ext);
                let rel = if path.is_empty() {
                    format!("{}/{name}", cfg.table)
                } else {
                    format!("{}/{path}/{name}", cfg.table)
                };
                jobs.push((rel, Job::Data(batch)));
            }
            if let Some(first) = pb.dead_first {
                let rel = format!(
                    "_ticklake/dlq/{}/{}",
                    cfg.topic,
                    file_name(&cfg.topic, p, first, "jsonl")
                );
                jobs.push((rel, Job::Raw(Bytes::from(pb.dead))));
            }
            records += pb.records as u64;
            dead += pb.dead_count;
            stamps.extend(pb.stamps);
            offsets.push((p, pb.next_offset));
        }
        let lake = self.lake.clone();
        let format = cfg.format;
        let written: Vec<u64> = self.runtime.block_on(
            futures::stream::iter(jobs)
                .map(|(rel, job)| {
                    let lake = lake.clone();
                    async move {
                        let bytes = match job {
                            Job::Raw(b) => b,
                            Job::Data(batch) => {
                                tokio::task::spawn_blocking(move || encode(&batch, format))
                                    .await
                                    .map_err(|e| SinkError::Encode(e.to_string()))??
                            }
                        };
                        let n = bytes.len() as u64;
                        lake.put(&rel, bytes).await?;
                        Ok::<u64, SinkError>(n)
                    }
                })
                .buffer_unordered(WRITE_CONCURRENCY)
                .try_collect(),
        )?;
        // Every file of the checkpoint is durable: register what is new, then move the offsets past it.
        if let Some(registrar) = &mut self.registrar {
            folders.sort();
            folders.dedup();
            self.runtime.block_on(registrar.register(
                &self.lake,
                &cfg.table,
                &cfg.partitioning,
                cfg.format,
                &schemas,
                &folders,
            ))?;
        }
        self.consumer.commit(&offsets)?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for s in stamps {
            let _ = self.stats.freshness.record((now_ms - s).max(0) as u64);
        }
        let bytes: u64 = written.iter().sum();
        let s = &mut self.stats;
        s.records += records;
        s.dead_letters += dead;
        s.files += written.len() as u64;
        s.bytes += bytes;
        s.flushes += 1;
        metrics::counter!("ticklake_sink_records_total").increment(records);
        metrics::counter!("ticklake_sink_dead_letters_total").increment(dead);
        metrics::counter!("ticklake_sink_files_total").increment(written.len() as u64);
        metrics::counter!("ticklake_sink_bytes_total").increment(bytes);
        metrics::counter!("ticklake_sink_flushes_total").increment(1);
        tracing::debug!(
            "flushed {records} records, {dead} dead letters, {} files, {bytes} bytes",
            written.len()
        );
        Ok(())
    }
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

enum Job {
    Data(arrow::array::RecordBatch),
    Raw(Bytes),
}

/// Appends one dead-letter line: where the message was, why it was refused, and the message itself.
fn dead_letter(out: &mut Vec<u8>, topic: &str, m: &Message, reason: &str) {
    let text = |b: &Option<Vec<u8>>| {
        b.as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let line = serde_json::json!({
        "topic": topic,
        "partition": m.partition,
        "offset": m.offset,
        "timestamp_ms": m.timestamp_ms,
        "reason": reason,
        "key": text(&m.key),
        "value": text(&m.payload),
    });
    let _ = serde_json::to_writer(&mut *out, &line);
    out.push(b'\n');
}
