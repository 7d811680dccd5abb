//! The consume -> buffer -> flush -> commit loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ticklake_bus::{
    BusConfig, Consumer, ConsumerOptions, Message, PartitionLag, Producer, RebalanceListener,
    StartAt,
};
use ticklake_catalog::Catalog;

use crate::checkpoint::{Checkpoint, Position, Rules};
use crate::columns::ColumnTypes;
use crate::compaction::WrittenPartitions;
use crate::format::FileFormat;
use crate::ledger::Ledger;
use crate::patience::Patience;
use crate::register::{self, Registrar};
use crate::SinkError;
use ticklake_lake::{Lake, Partitioning, SMALL_FILES, SMALL_FILE_RECORDS};

mod hive;
mod iceberg;

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
    pub partition_by: PartitionBy,
    /// The file format.
    pub format: FileFormat,
    /// When to flush.
    pub flush: FlushPolicy,
    /// Drain what is on the topic, then stop.
    pub once: bool,
    /// Where to register the table and its partitions (none: files only).
    pub catalog: Option<Arc<dyn Catalog>>,
    /// Messages larger than this are dead-lettered.
    pub max_message_bytes: usize,
    /// A topic that also receives every dead letter (besides the lake's dead-letter files), as Kafka
    /// Connect's `errors.deadletterqueue.topic.name`.
    pub dlq_topic: Option<String>,
    /// How the table is kept: Hive folders (files and a catalog) or an Iceberg table.
    pub table_format: TableFormat,
    /// Where Iceberg tables are and which catalog keeps them (needed with [`TableFormat::Iceberg`]).
    pub iceberg: Option<ticklake_iceberg::IcebergConfig>,
    /// Where each flush notes the Hive partitions it wrote, for a background compaction of those.
    pub written: Option<WrittenPartitions>,
}

/// The partition folders of a Hive table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PartitionBy {
    /// A table that exists keeps its own; a new one gets [`Partitioning::choose`]'s pick from the
    /// records of its first flush, claimed in the catalog before any file is written (so sinks of
    /// one group agree, and restarts keep it). Without a catalog: `date,symbol`.
    #[default]
    Auto,
    /// These columns; a table that exists with others is refused before anything is consumed.
    Keys(Partitioning),
}

impl std::str::FromStr for PartitionBy {
    type Err = String;

    /// `auto`, or what [`Partitioning`] parses (`date,symbol`, `symbol`, `none`, ...).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(PartitionBy::Auto),
            keys => keys.parse().map(PartitionBy::Keys),
        }
    }
}

impl std::fmt::Display for PartitionBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartitionBy::Auto => f.write_str("auto"),
            PartitionBy::Keys(p) => p.fmt(f),
        }
    }
}

/// How a table is kept in the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableFormat {
    /// Hive-style folders of files, registered in the catalog; the lake's ledger holds the offsets.
    #[default]
    Hive,
    /// An Apache Iceberg table (in the SQL, Glue or REST catalog of [`SinkConfig::iceberg`]): one
    /// atomic append per checkpoint, carrying the offsets (see `ticklake_iceberg`).
    Iceberg,
}

impl std::str::FromStr for TableFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hive" => Ok(TableFormat::Hive),
            "iceberg" => Ok(TableFormat::Iceberg),
            other => Err(format!(
                "unknown table format {other:?}: use hive or iceberg"
            )),
        }
    }
}

/// The default limit on a message's size: 1 MiB, Kafka's own default for a message.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Counters of a sink run (everything counts committed data only).
#[derive(Debug, Clone)]
pub struct Stats {
    /// Records written to the lake and committed.
    pub records: u64,
    /// Records of ranges written again when resuming from the ledger (already counted by the run
    /// that first wrote them; rewriting them changes nothing in the lake).
    pub rewritten: u64,
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

/// Drops the unflushed records of revoked partitions: their new owner replays them from the lake's
/// ledger. Runs inside the consumer's poll, between flushes, but a Hive flush's files may still be
/// being written: its ranges are claimed already, so the new owner writes the same files again
/// (see [`crate::ledger`]), and this sink does not commit the group's offsets of those partitions.
struct Revoker(Arc<Mutex<Checkpoint>>);

impl RebalanceListener for Revoker {
    fn on_revoke(&self, partitions: &[i32]) {
        lock(&self.0).revoke(partitions);
    }

    fn on_assign(&self, partitions: &[i32]) {
        tracing::info!("partitions assigned: {partitions:?}");
        lock(&self.0).assigned.extend_from_slice(partitions);
    }
}

fn lock(m: &Mutex<Checkpoint>) -> MutexGuard<'_, Checkpoint> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running sink.
pub struct Sink {
    config: SinkConfig,
    lake: Lake,
    consumer: Box<dyn Consumer>,
    buffer: Arc<Mutex<Checkpoint>>,
    /// The table's extra column types, as decided so far.
    types: ColumnTypes,
    runtime: tokio::runtime::Runtime,
    registrar: Option<Registrar>,
    /// The producer of `dlq_topic`.
    dlq: Option<Box<dyn Producer>>,
    /// The lake's record of the offsets it holds.
    ledger: Ledger,
    /// With `--table-format iceberg`: the table's catalog, and where the table says each assigned
    /// partition ends.
    iceberg: Option<iceberg::IcebergState>,
    stats: Stats,
    started: Instant,
    /// Whether the small-files warning was given (once per run).
    warned_small_files: bool,
    /// The table's partition folders; `None` until a new table's are chosen (records are routed into
    /// `date,symbol` folders meanwhile, see [`PartitionBy::Auto`]).
    layout: Option<Partitioning>,
    /// The flush being written while the next checkpoint fills.
    pending: Option<PendingFlush>,
}

/// How often the status callback and the lag metrics are refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// Files written at the same time during a flush.
const WRITE_CONCURRENCY: usize = 8;
/// With `once`, how long to wait for a partition assignment before concluding there is nothing to do.
const ONCE_ASSIGN_WAIT: Duration = Duration::from_secs(120);
/// The longest wait for messages while a flush's files are being written, so that the flush is
/// registered and committed soon after they are durable.
const PENDING_POLL: Duration = Duration::from_millis(10);

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
        if config.table.len() > 128 {
            return Err(SinkError::Config(format!(
                "table name {:?} is {} bytes long; use at most 128",
                config.table,
                config.table.len()
            )));
        }
        let longest =
            ticklake_lake::layout::file_name(&config.topic, i32::MAX, i64::MAX, "parquet");
        if longest.len() > 255 {
            return Err(SinkError::Config(format!(
                "topic {:?} is too long to name lake files after it ({} bytes with the partition and \
                 offset, more than the 255 file systems allow): use a topic of at most 220 characters",
                config.topic,
                longest.len()
            )));
        }
        if config.max_message_bytes == 0 {
            return Err(SinkError::Config(
                "the message size limit must be greater than zero".into(),
            ));
        }
        let dlq = match &config.dlq_topic {
            Some(t) if *t == config.topic => {
                return Err(SinkError::Config(
                    "the dead-letter topic must not be the topic the sink reads".into(),
                ))
            }
            Some(t) => {
                ticklake_bus::ensure_topic(bus, t, 1, 1)?;
                Some(ticklake_bus::producer(bus, t)?)
            }
            None => None,
        };
        let buffer = Arc::new(Mutex::new(Checkpoint::default()));
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
        let ledger = Ledger::new(lake.clone(), &config.table, &config.topic);
        let iceberg = match config.table_format {
            TableFormat::Hive => None,
            TableFormat::Iceberg => {
                let Some(iceberg) = &config.iceberg else {
                    return Err(SinkError::Config(
                        "an Iceberg table needs its catalog (SinkConfig::iceberg)".into(),
                    ));
                };
                Some(runtime.block_on(iceberg::IcebergState::open(iceberg))?)
            }
        };
        // An Iceberg table is its own catalog entry (the Hive registration is for folders).
        let registrar = config
            .catalog
            .clone()
            .filter(|_| config.table_format == TableFormat::Hive)
            .map(Registrar::new);
        let mut types = ColumnTypes::default();
        let mut layout = match (&config.partition_by, &registrar) {
            (PartitionBy::Keys(p), _) => Some(p.clone()),
            (PartitionBy::Auto, None) => Some(Partitioning::default()),
            (PartitionBy::Auto, Some(_)) => None,
        };
        if let Some(r) = &registrar {
            if let Some(table) = runtime.block_on(r.current(&config.table))? {
                types.learn(&table);
                let theirs = register::layout_of(&table, &r.describe())?;
                if layout.as_ref().is_some_and(|given| *given != theirs) {
                    return Err(SinkError::Config(format!(
                        "table {:?} in the {} is partitioned by ({theirs}), not ({}); leave \
                         --partition-by out to keep its own, or write another --table",
                        config.table,
                        r.describe(),
                        config.partition_by
                    )));
                }
                layout = Some(theirs);
            }
        }
        Ok(Sink {
            config,
            lake,
            consumer,
            buffer,
            types,
            runtime,
            registrar,
            dlq,
            ledger,
            iceberg,
            stats: Stats {
                records: 0,
                rewritten: 0,
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
            warned_small_files: false,
            layout,
            pending: None,
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
            let mut wait = self
                .time_to_deadline()
                .clamp(Duration::from_millis(5), Duration::from_millis(100));
            if self.pending.is_some() {
                wait = wait.min(PENDING_POLL);
            }
            let batch = self.consumer.poll(10_000, wait)?;
            self.resume_assigned()?;
            let empty = batch.is_empty();
            self.absorb(batch);
            self.reseek();
            self.complete_flush(false)?;
            if self.should_flush() {
                self.flush()?;
            }
            if last_status.elapsed() >= STATUS_EVERY {
                // The broker may be away for a while (a restart): the status can wait.
                if let Err(e) = self.refresh_lag() {
                    tracing::warn!("reading the consumer lag: {e}");
                }
                status(&self.snapshot());
                last_status = Instant::now();
            }
            if empty && self.config.once && self.drained()? {
                break;
            }
        }
        self.flush()?;
        self.complete_flush(true)?;
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
        b.replay_complete()
            || b.records >= self.config.flush.records
            || b.bytes >= self.config.flush.bytes
            || b.since
                .is_some_and(|t| t.elapsed() >= self.config.flush.interval)
    }

    /// Resumes newly assigned partitions where the ledger says the lake is: after the last claimed
    /// range when the group committed its end (it was finished), else at its start, writing it again
    /// exactly (see [`crate::ledger`]). The consumer is moved there; the checkpoint checks that the
    /// first message it takes is the one at that offset (see [`Position::resync`]).
    fn resume_assigned(&mut self) -> Result<(), SinkError> {
        if !lock(&self.buffer).assigned.is_empty() {
            // Where a partition resumes is read from what the lake holds: the flush being written
            // must be in it (or an Iceberg append committed meanwhile would move the table's end
            // past a resumed position). A refused append adds its partitions to those to resume.
            self.complete_flush(true)?;
        }
        let mut assigned = std::mem::take(&mut lock(&self.buffer).assigned);
        assigned.sort_unstable();
        assigned.dedup();
        if self.iceberg.is_some() {
            return self.resume_from_table(assigned);
        }
        for p in assigned {
            let ledger = &self.ledger;
            let (entries, last) = self.runtime.block_on(async {
                let mut patience = Patience::new("the lake's ledger");
                loop {
                    match ledger.tail(p).await {
                        Err(e) if patience.wait(&e).await => continue,
                        other => break other,
                    }
                }
            })?;
            let mut position = Position {
                from: last.map(|e| e.from),
                replay_to: last.map(|e| e.to),
                entries,
                resync: last.is_some(),
                after_seek: None,
            };
            if let Some(e) = last {
                let end = match self.consumer.lag() {
                    Ok(lag) => lag
                        .iter()
                        .find(|l| l.partition == p)
                        .map(|l| l.high_watermark),
                    Err(e) => {
                        tracing::warn!("partition {p}: cannot read its end: {e}");
                        None
                    }
                };
                if end.is_some_and(|end| end < e.to) {
                    return Err(SinkError::Ledger(format!(
                        "partition {p} of topic {:?} ends at offset {}, but the lake already holds \
                         its offsets up to {}: was the topic deleted and created again? To start \
                         the table over from this topic, move the folder _ticklake/ledger/{}/{} away",
                        self.config.topic,
                        end.unwrap_or_default(),
                        e.to,
                        self.config.table,
                        self.config.topic
                    )));
                }
                // Unknown (the broker is away): rewrite the last range, which is always safe.
                let committed = self.consumer.committed(p).unwrap_or_else(|e| {
                    tracing::warn!("partition {p}: cannot read the group's offset: {e}");
                    None
                });
                if committed == Some(e.to) {
                    // The group commits a range only once it is finished: go on from its end.
                    position.from = Some(e.to);
                    position.replay_to = None;
                } else {
                    tracing::info!(
                        "partition {p}: the lake holds offsets up to {}; writing {}..{} again",
                        e.to,
                        e.from,
                        e.to
                    );
                }
                if committed != position.from {
                    if let Err(err) = self.consumer.seek(p, position.from.unwrap_or(e.from)) {
                        tracing::warn!("partition {p}: {err}; moving it on its first message");
                    }
                }
            }
            lock(&self.buffer).positions.insert(p, position);
        }
        Ok(())
    }

    /// Moves partitions back that delivered messages past where they must start.
    fn reseek(&mut self) {
        let reseek = std::mem::take(&mut lock(&self.buffer).reseek);
        let assigned = self.consumer.assignment();
        for (p, offset) in reseek {
            if assigned.contains(&p) {
                if let Err(e) = self.consumer.seek(p, offset) {
                    tracing::warn!("partition {p}: moving back to offset {offset}: {e}");
                }
            }
        }
    }

    /// Decodes messages into the open checkpoint.
    fn absorb(&mut self, batch: Vec<Message>) {
        let routing = self.layout.clone().unwrap_or_default();
        lock(&self.buffer).absorb(
            batch,
            &mut Rules {
                topic: &self.config.topic,
                partitioning: &routing,
                max_message_bytes: self.config.max_message_bytes,
                types: &mut self.types,
            },
        );
    }

    /// Completes the flush being written (its files durable, registered, committed), then starts
    /// one of every open checkpoint ready for it.
    fn flush(&mut self) -> Result<(), SinkError> {
        // The ledger's chain: a range is claimed only once the files of the one before are durable.
        self.complete_flush(true)?;
        let taken = lock(&self.buffer).take_ready();
        if taken.is_empty() {
            return Ok(());
        }
        if self.iceberg.is_some() {
            return self.start_append(taken);
        }
        self.start_hive_flush(taken)
    }

    /// Completes the flush being written, if any, once it is durable (waiting for it when `wait`,
    /// else only if it already is).
    fn complete_flush(&mut self, wait: bool) -> Result<(), SinkError> {
        match self.pending.take_if(|p| wait || p.is_finished()) {
            None => Ok(()),
            Some(PendingFlush::Hive(p)) => self.complete_hive_flush(p),
            Some(PendingFlush::Iceberg(p)) => self.complete_append(p),
        }
    }
}

/// A flush whose ranges are decided and whose files are being written, at most one at a time: the
/// next flush completes it first.
enum PendingFlush {
    Hive(hive::PendingHiveFlush),
    Iceberg(iceberg::PendingAppend),
}

impl PendingFlush {
    fn is_finished(&self) -> bool {
        match self {
            PendingFlush::Hive(p) => p.is_finished(),
            PendingFlush::Iceberg(p) => p.is_finished(),
        }
    }
}

/// What a flush added to the lake, for the statistics and metrics.
struct Flushed {
    /// Records committed for the first time.
    records: u64,
    /// Records of replayed ranges written again.
    rewritten: u64,
    dead: u64,
    files: u64,
    bytes: u64,
}

impl Sink {
    /// Once the positions moved past a flush: messages held past replayed ranges start the next
    /// checkpoint.
    fn absorb_held(&mut self) {
        let held = std::mem::take(&mut lock(&self.buffer).held);
        self.absorb(held);
    }

    /// Counts a committed flush (statistics, freshness, metrics).
    fn count_flush(&mut self, stamps: &[i64], f: Flushed) {
        let now_ms = now_ms();
        for s in stamps {
            let _ = self.stats.freshness.record((now_ms - s).max(0) as u64);
        }
        let s = &mut self.stats;
        s.records += f.records;
        s.rewritten += f.rewritten;
        s.dead_letters += f.dead;
        s.files += f.files;
        s.bytes += f.bytes;
        s.flushes += 1;
        metrics::counter!("ticklake_sink_records_total").increment(f.records);
        metrics::counter!("ticklake_sink_dead_letters_total").increment(f.dead);
        metrics::counter!("ticklake_sink_files_total").increment(f.files);
        metrics::counter!("ticklake_sink_bytes_total").increment(f.bytes);
        metrics::counter!("ticklake_sink_flushes_total").increment(1);
        tracing::debug!(
            "flushed {} records, {} dead letters, {} files, {} bytes",
            f.records + f.rewritten,
            f.dead,
            f.files,
            f.bytes
        );
        let records = f.records + f.rewritten + f.dead;
        if !self.warned_small_files
            && f.files >= SMALL_FILES
            && records < f.files * SMALL_FILE_RECORDS
        {
            self.warned_small_files = true;
            tracing::warn!(
                "a flush wrote {} files of {:.1} records on average into `{}` partition folders: so \
                 many small files slow the sink and every query. For daily or coarser bars over many \
                 dates use --partition-by symbol; for many symbols, --partition-by date (files stay \
                 sorted by symbol, so a symbol's rows are still found fast) or --compact-every 10m to \
                 merge them as partitions go quiet (said once per run)",
                f.files,
                records as f64 / f.files as f64,
                self.layout.clone().unwrap_or_default()
            );
        }
    }
}

/// The wall clock in ms since the epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
