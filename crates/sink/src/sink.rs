//! The consume -> buffer -> flush -> commit loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use ticklake_bus::{
    BusConfig, Consumer, ConsumerOptions, Message, PartitionLag, Producer, RebalanceListener,
    StartAt,
};
use ticklake_catalog::Catalog;

use crate::checkpoint::{Checkpoint, Job, Plan, Position, Rules};
use crate::columns::ColumnTypes;
use crate::compaction::WrittenPartitions;
use crate::format::{encode, FileFormat};
use crate::ledger::{Claim, Ledger};
use crate::patience::Patience;
use crate::register::{self, Registrar};
use crate::SinkError;
use ticklake_lake::{Lake, Partitioning, SMALL_FILES, SMALL_FILE_RECORDS};

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

/// Drops the unflushed records of revoked partitions: their new owner replays them from the committed
/// offset. Runs inside the consumer's poll, so no flush of this sink is under way when it does.
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
}

/// How often the status callback and the lag metrics are refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(10);
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
            let wait = self
                .time_to_deadline()
                .clamp(Duration::from_millis(5), Duration::from_millis(100));
            let batch = self.consumer.poll(10_000, wait)?;
            self.resume_assigned()?;
            let empty = batch.is_empty();
            self.absorb(batch);
            self.reseek();
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
        let assigned = std::mem::take(&mut lock(&self.buffer).assigned);
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

    /// Picks a new table's partition folders from the records of its first flush and claims them in
    /// the catalog before any file is written: the table is created with them unless another sink
    /// created it first, whose layout is then kept.
    fn choose_layout(&mut self, taken: &Checkpoint) -> Result<Partitioning, SinkError> {
        let Some(registrar) = &mut self.registrar else {
            return Ok(Partitioning::default());
        };
        let choice = Partitioning::choose(&taken.shape());
        let cfg = &self.config;
        let lake = &self.lake;
        let table = self.runtime.block_on(async {
            let mut patience = Patience::new("the catalog");
            loop {
                match registrar
                    .claim(lake, &cfg.table, &choice.partitioning, cfg.format)
                    .await
                {
                    Err(e) if patience.wait(&e).await => continue,
                    other => break other,
                }
            }
        })?;
        let layout = register::layout_of(&table, &registrar.describe())?;
        if layout == choice.partitioning {
            tracing::info!(
                "table {:?}: partitioned by {layout}: {}",
                cfg.table,
                choice.reason
            );
        } else {
            tracing::info!(
                "table {:?}: partitioned by {layout}, as the sink that created it meanwhile chose",
                cfg.table
            );
        }
        self.layout = Some(layout.clone());
        Ok(layout)
    }

    /// Writes every open checkpoint, then commits the offsets after them.
    fn flush(&mut self) -> Result<(), SinkError> {
        let mut taken = lock(&self.buffer).take_ready();
        if taken.is_empty() {
            return Ok(());
        }
        if self.iceberg.is_some() {
            return self.flush_to_table(taken);
        }
        // Step 0: claim each partition's range in the ledger before writing any of its files.
        let mut replayed = Vec::new();
        for (p, entry) in taken.ranges() {
            let (claim, listed) = self.runtime.block_on(async {
                let mut patience = Patience::new("the lake's ledger");
                loop {
                    match self.ledger.claim(p, entry).await {
                        Err(e) if patience.wait(&e).await => continue,
                        other => break other,
                    }
                }
            })?;
            if let Some(pos) = lock(&self.buffer).positions.get_mut(&p) {
                pos.entries = listed;
            }
            match claim {
                Claim::Won => {}
                Claim::Same => replayed.push(p),
                Claim::Taken(other) => {
                    // Another writer decided this range (we were stalled, or it took the partition
                    // over): drop ours and write what the lake says, if the partition is still ours.
                    tracing::warn!(
                        "partition {p}: offsets {}..{} are another writer's (the lake's ledger goes \
                         on with {}..{}); dropping this sink's copy and resuming from the ledger",
                        entry.from,
                        entry.to,
                        other.from,
                        other.to
                    );
                    taken.revoke(&[p]);
                    let mut b = lock(&self.buffer);
                    b.revoke(&[p]);
                    if self.consumer.assignment().contains(&p) {
                        b.assigned.push(p);
                    }
                }
            }
        }
        if taken.is_empty() {
            return Ok(());
        }
        let layout = match self.layout.clone() {
            Some(layout) => layout,
            // Only dead letters: no evidence of the feed's shape yet, and no folder to place.
            None if taken.records == 0 => Partitioning::default(),
            None => self.choose_layout(&taken)?,
        };
        let cfg = &self.config;
        let plan = taken.plan(&cfg.topic, &cfg.table, &layout, cfg.format, &self.types)?;
        let Plan {
            files: jobs,
            folders,
            schemas,
            ranges,
            stamps,
            dead_letters,
            records,
            dead,
        } = plan;
        let lake = self.lake.clone();
        let format = cfg.format;
        let topic = cfg.topic.clone();
        let written: Vec<(u64, u64, Option<String>)> = self.runtime.block_on(
            futures::stream::iter(jobs)
                .map(|(rel, job)| {
                    let lake = lake.clone();
                    let topic = topic.clone();
                    async move {
                        let (rel, bytes, unwritable, data) = match job {
                            Job::Raw(b) => (rel, b, 0, false),
                            Job::Data(batch) => {
                                let rows = batch.num_rows() as u64;
                                let encoded = {
                                    let batch = batch.clone();
                                    tokio::task::spawn_blocking(move || encode(&batch, format))
                                        .await
                                        .map_err(|e| SinkError::Encode(e.to_string()))?
                                };
                                match encoded {
                                    Ok(bytes) => (rel, bytes, 0, true),
                                    // Checked at decode time, so this is a bug, not the data: the
                                    // group's records become dead letters instead of a crash loop.
                                    Err(e) => {
                                        tracing::error!(
                                            "{rel}: {e}; its {rows} records go to the dead letters"
                                        );
                                        let (dlq, lines) =
                                            unwritable_group(&topic, &rel, &batch, &e);
                                        (dlq, lines, rows, false)
                                    }
                                }
                            }
                        };
                        let n = bytes.len() as u64;
                        let mut patience = Patience::new("the lake");
                        while let Err(e) = lake.put(&rel, bytes.clone()).await {
                            let e = SinkError::from(e);
                            if !patience.wait(&e).await {
                                return Err(e);
                            }
                        }
                        Ok::<_, SinkError>((n, unwritable, data.then_some(rel)))
                    }
                })
                .buffer_unordered(WRITE_CONCURRENCY)
                .try_collect(),
        )?;
        let unwritable: u64 = written.iter().map(|(_, u, _)| u).sum();
        // The data files, as (folder relative to the table, name).
        let table_prefix = format!("{}/", cfg.table);
        let data_files: Vec<(String, String)> = written
            .iter()
            .filter_map(|(.., rel)| rel.as_deref()?.strip_prefix(&table_prefix))
            .map(|r| match r.rsplit_once('/') {
                Some((folder, name)) => (folder.to_owned(), name.to_owned()),
                None => (String::new(), r.to_owned()),
            })
            .collect();
        let written: Vec<u64> = written.into_iter().map(|(n, ..)| n).collect();
        let (records, dead) = (records - unwritable, dead + unwritable);
        // The dead-letter topic gets the dead letters before the offsets move (at least once: a replay
        // after a crash sends them again), keyed by the partition they came from, so they stay in order.
        if let Some(producer) = &mut self.dlq {
            let now_ms = now_ms();
            for (p, lines) in &dead_letters {
                let key = p.to_string();
                for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    producer.send(key.as_bytes(), line, now_ms)?;
                }
            }
            let delivery = producer.flush()?;
            if delivery.failed > 0 {
                return Err(SinkError::Bus(ticklake_bus::BusError::Undelivered {
                    failed: delivery.failed,
                    reason: delivery.last_error.unwrap_or_default(),
                }));
            }
        }
        // Every file of the checkpoint is durable: register what is new, then move the offsets past it.
        // (A new table whose layout is not chosen yet has no data file to register.)
        if let Some(registrar) = self.registrar.as_mut().filter(|_| self.layout.is_some()) {
            let lake = &self.lake;
            let table = self.runtime.block_on(async {
                let mut patience = Patience::new("the catalog");
                loop {
                    match registrar
                        .register(lake, &cfg.table, &layout, cfg.format, &schemas, &folders)
                        .await
                    {
                        Ok(t) => break Ok(t.clone()),
                        Err(e) if patience.wait(&e).await => continue,
                        Err(e) => break Err(e),
                    }
                }
            })?;
            self.types.learn(&table);
            // A compaction may have switched a partition these files went into to merged files.
            if cfg.format == FileFormat::Parquet && !layout.keys().is_empty() {
                self.runtime.block_on(async {
                    let mut patience = Patience::new("the catalog");
                    loop {
                        match registrar.make_visible(lake, &cfg.table, &data_files).await {
                            Ok(_) => break Ok(()),
                            Err(e) if patience.wait(&e).await => continue,
                            Err(e) => break Err(e),
                        }
                    }
                })?;
                if let Some(written) = &cfg.written {
                    written.record(folders.iter().map(|f| register::partition_values(f)));
                }
            }
        }
        // The ledger now holds the ranges; the consumer group's offsets follow it for lag tools. A
        // failed commit (the group rebalanced meanwhile) loses nothing: the ledger is what counts.
        let offsets: Vec<(i32, i64)> = ranges.iter().map(|(p, e, _)| (*p, e.to)).collect();
        let rewritten: u64 = ranges
            .iter()
            .filter(|(p, ..)| replayed.contains(p))
            .map(|(.., n)| n)
            .sum();
        if let Err(e) = self.consumer.commit(&offsets) {
            tracing::warn!(
                "committing offsets to the consumer group: {e} (the lake's ledger has them)"
            );
        }
        {
            let mut b = lock(&self.buffer);
            for (p, e, _) in &ranges {
                if let Some(pos) = b.positions.get_mut(p) {
                    pos.from = Some(e.to);
                    pos.replay_to = None;
                    if pos.entries.last() != Some(&e.from) {
                        pos.entries.push(e.from);
                    }
                }
            }
        }
        for (p, ..) in &ranges {
            let mut entries = lock(&self.buffer)
                .positions
                .get(p)
                .map(|pos| pos.entries.clone())
                .unwrap_or_default();
            self.runtime.block_on(self.ledger.trim(*p, &mut entries));
            if let Some(pos) = lock(&self.buffer).positions.get_mut(p) {
                pos.entries = entries;
            }
        }
        let bytes: u64 = written.iter().sum();
        self.finish_flush(
            &stamps,
            Flushed {
                records: records.saturating_sub(rewritten),
                rewritten,
                dead,
                files: written.len() as u64,
                bytes,
            },
        );
        Ok(())
    }
}

/// The wall clock in ms since the epoch.
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
    /// After a flush: messages held past replayed ranges start the next checkpoint, and the flush is
    /// counted (statistics, freshness, metrics).
    fn finish_flush(&mut self, stamps: &[i64], f: Flushed) {
        let held = std::mem::take(&mut lock(&self.buffer).held);
        self.absorb(held);
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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The dead-letter file for a group of records that could not be encoded: one line per record (the
/// record as a message, or its row number when even that fails) with the reason, at
/// `_ticklake/dlq/<topic>/<the group's file name>.unwritable.jsonl`.
fn unwritable_group(
    topic: &str,
    rel: &str,
    batch: &arrow::array::RecordBatch,
    error: &SinkError,
) -> (String, bytes::Bytes) {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let path = format!("_ticklake/dlq/{topic}/{name}.unwritable.jsonl");
    let messages = ticklake_model::arrow::batch_to_messages(batch).ok();
    let mut out = Vec::new();
    for row in 0..batch.num_rows() {
        let value = messages
            .as_ref()
            .map(|m| String::from_utf8_lossy(&m[row]).into_owned());
        let line = serde_json::json!({
            "topic": topic,
            "file": rel,
            "row": row,
            "reason": format!("the file of its group could not be written: {error}"),
            "value": value,
        });
        let _ = serde_json::to_writer(&mut out, &line);
        out.push(b'\n');
    }
    (path, bytes::Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unwritable_group_becomes_dead_letters() {
        let mut r = ticklake_model::Record::new("A", 0);
        r.close = Some(1.5);
        let batch = ticklake_model::arrow::records_to_batch(&[r.clone(), r]).unwrap();
        let (path, bytes) = unwritable_group(
            "t",
            "tbl/date=1970-01-01/symbol=A/t+0+00000000000000000007.parquet",
            &batch,
            &SinkError::Encode("boom".into()),
        );
        assert_eq!(
            path,
            "_ticklake/dlq/t/t+0+00000000000000000007.parquet.unwritable.jsonl"
        );
        let lines: Vec<serde_json::Value> = std::str::from_utf8(&bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["row"], 1);
        assert!(lines[0]["reason"].as_str().unwrap().ends_with("boom"));
        let value = lines[0]["value"].as_str().unwrap();
        assert_eq!(
            ticklake_model::json::decode(value.as_bytes())
                .unwrap()
                .close,
            Some(1.5)
        );
    }
}
