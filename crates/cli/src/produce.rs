//! `ticklake produce`: a feed (CSV or JSON lines replay, or the simulator) -> JSON messages keyed by
//! symbol -> the topic.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use clap::Args as ClapArgs;
use indicatif::{HumanCount, ProgressBar, ProgressDrawTarget, ProgressStyle};
use ticklake_bus::Producer;
use ticklake_feed::csv::{ColumnMap, CsvOptions, CsvSource, Row};
use ticklake_feed::dates::DateFormat;
use ticklake_feed::jsonl::JsonLinesSource;
use ticklake_feed::pace::{Pacer, Pacing};
use ticklake_feed::rejects::RejectLog;
use ticklake_feed::sim::{SimOptions, Simulator};
use ticklake_model::{json, time, Record};

use crate::options::{stop_flag, Global};

/// Options of `ticklake produce`.
#[derive(ClapArgs, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["source", "simulate"])))]
#[command(group(clap::ArgGroup::new("pace").args(["max", "rate", "realtime", "clock"])))]
pub struct Args {
    /// A file to replay in file order: CSV (the seed's indexProcessed.csv format needs no other option),
    /// or JSON lines (.jsonl, .ndjson, .json): one message per line, sent as it is, keyed by its symbol.
    #[arg(long, value_name = "FILE")]
    pub source: Option<PathBuf>,

    /// Simulate a market instead: a random walk per symbol, deterministic for a seed.
    #[arg(long)]
    pub simulate: bool,

    /// Stop after this many records (default: the whole file; the simulator runs until Ctrl-C).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// CSV: which column holds a field, e.g. --map symbol=Ticker,ts=Date,close=Last.
    #[arg(long, value_name = "FIELD=COLUMN,...", requires = "source")]
    pub map: Option<ColumnMap>,

    /// CSV: date format: iso, dmy (dd/mm/yyyy), mdy (mm/dd/yyyy) or strftime such as %d.%m.%Y %H:%M.
    /// Detected from the file when absent.
    #[arg(long, value_name = "FORMAT", requires = "source", value_parser = DateFormat::from_option)]
    pub date_format: Option<DateFormat>,

    /// CSV: the symbol of every row, for a file of one instrument without a symbol column.
    #[arg(long, value_name = "NAME", requires = "source")]
    pub symbol: Option<String>,

    /// CSV: the field delimiter.
    #[arg(long, default_value = ",", requires = "source", value_parser = parse_delimiter)]
    pub delimiter: u8,

    /// CSV: where rejected rows go, with line number and reason [default: ./<file name>.rejects.csv].
    #[arg(long, value_name = "FILE", requires = "source")]
    pub rejects: Option<PathBuf>,

    /// CSV: start again from the top at the end of the file, until --count or Ctrl-C. Rejects are
    /// recorded on the first pass only.
    #[arg(long = "loop", requires = "source")]
    pub repeat: bool,

    /// Simulator: number of symbols.
    #[arg(long, default_value_t = 10, requires = "simulate")]
    pub symbols: usize,

    /// Simulator: random seed (the same seed gives the same stream).
    #[arg(long, default_value_t = 42, requires = "simulate")]
    pub seed: u64,

    /// Simulator: event time of the first bar (RFC 3339, a date, `now`, or a time ago like `now-3h`).
    #[arg(long, default_value = "2024-01-02T14:30:00Z", requires = "simulate")]
    pub start: String,

    /// Simulator: bar length, e.g. 1s, 250ms, 1m.
    #[arg(long, default_value = "1s", requires = "simulate", value_parser = humantime::parse_duration)]
    pub interval: Duration,

    /// Send as fast as possible (the default).
    #[arg(long)]
    pub max: bool,

    /// Send this many records per second.
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,

    /// Replay the event-time gaps between records (scaled by --speed).
    #[arg(long)]
    pub realtime: bool,

    /// Send each record when the clock reaches its event time: records from the past at once, the
    /// rest as their time comes (with the simulator and a --start in the past: a history, then a live
    /// feed).
    #[arg(long)]
    pub clock: bool,

    /// With --realtime: how much faster than real time, e.g. 60 plays a minute per second.
    #[arg(long, default_value_t = 1.0, requires = "realtime")]
    pub speed: f64,

    /// Partitions of the topic when it has to be created.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,

    /// Kafka: replication factor of the topic when it has to be created.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,

    /// Kafka: commit the producer's transaction this often, 10ms to 5s [default: 200ms]. Consumers
    /// see messages when their transaction commits, so a shorter span shows them sooner; messages sent
    /// while one commits wait in the producer and follow when it ends.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub transaction_span: Option<Duration>,

    /// Embedded log: keep what was appended within this long (e.g. 7d, 12h), like Kafka's
    /// retention.ms. Set once, it stays the topic's until set again; producers delete older batches.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub retention: Option<Duration>,

    /// Embedded log: keep at most about this much per partition (e.g. 10GiB), like Kafka's
    /// retention.bytes; the oldest batches go first.
    #[arg(long, value_name = "SIZE")]
    pub retention_bytes: Option<ByteSize>,
}

fn parse_delimiter(s: &str) -> Result<u8, String> {
    match s {
        "\\t" | "tab" => Ok(b'\t'),
        _ if s.len() == 1 && s.is_ascii() => Ok(s.as_bytes()[0]),
        _ => Err(format!(
            "the delimiter must be one ASCII character (or \\t), not {s:?}"
        )),
    }
}

/// What a produce run did.
struct Totals {
    sent: u64,
    seen_rows: u64,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let bus = g.bus()?;
    // Refused before the topic is created or changed.
    let options = ticklake_bus::ProducerOptions {
        transaction_span: args.transaction_span,
    };
    options.check(&bus)?;
    let pacing = match (args.rate, args.realtime, args.clock) {
        (Some(r), _, _) => Pacing::Rate(r),
        (None, true, _) => Pacing::Realtime { speed: args.speed },
        (None, false, true) => Pacing::Clock,
        (None, false, false) => Pacing::Max,
    };
    let mut pacer = Pacer::new(pacing)?;
    let topic =
        ticklake_bus::ensure_topic(&bus, &g.topic, args.partitions, args.replication_factor)
            .with_context(|| format!("cannot set up topic {:?} ({})", g.topic, g.describe_bus()))?;
    if args.retention.is_some() || args.retention_bytes.is_some() {
        let limits = ticklake_bus::embedded::Retention {
            max_age: args.retention,
            max_bytes: args.retention_bytes.map(|b| b.0),
        };
        ticklake_bus::set_retention(&bus, &g.topic, &limits)
            .with_context(|| format!("cannot set the retention of topic {:?}", g.topic))?;
    }
    if topic.created {
        tracing::info!(
            "created topic {} with {} partitions",
            g.topic,
            topic.partitions
        );
    }
    let mut producer = ticklake_bus::producer_with(&bus, &g.topic, &options)?;
    let stop = stop_flag()?;
    let started = Instant::now();

    let json_lines = args.source.as_deref().is_some_and(is_json_lines);
    if json_lines
        && (args.map.is_some()
            || args.date_format.is_some()
            || args.symbol.is_some()
            || args.rejects.is_some())
    {
        bail!("--map, --date-format, --symbol and --rejects are for CSV files; JSON lines are sent as they are");
    }
    let (totals, rejects) = if let (Some(path), true) = (&args.source, json_lines) {
        let mut source = JsonLinesSource::open(path)?;
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let by_bytes = !args.repeat;
        let bar = progress(g, by_bytes.then_some(size), by_bytes);
        let mut sender = Sender::new(producer.as_mut(), &mut pacer, &bar, !by_bytes);
        'lines: loop {
            while let Some(line) = source.next() {
                if stop.load(Ordering::Relaxed) || args.count.is_some_and(|c| sender.sent >= c) {
                    break 'lines;
                }
                let line = line?;
                sender.seen += 1;
                sender.send_raw(line.key.as_deref(), &line.bytes, line.timestamp_ms)?;
                if by_bytes && sender.seen.is_multiple_of(PROGRESS_EVERY) {
                    bar.set_position(source.byte_position());
                }
            }
            if !args.repeat || stop.load(Ordering::Relaxed) {
                break;
            }
            if sender.sent == 0 {
                bail!("--loop: the file has no line, so there is nothing to repeat");
            }
            source.rewind()?;
            sender.pacer.reset();
        }
        bar.finish_and_clear();
        (sender.totals(), None)
    } else if let Some(path) = &args.source {
        let opts = CsvOptions {
            map: args.map.clone().unwrap_or_default(),
            date_format: args.date_format.clone(),
            symbol: args.symbol.clone(),
            delimiter: args.delimiter,
        };
        let mut source = CsvSource::open(path, &opts)?;
        eprintln!("{}: {}", path.display(), source.describe_mapping());
        let rejects_path = args.rejects.clone().unwrap_or_else(|| {
            let name = path
                .file_name()
                .map_or("source".into(), |n| n.to_string_lossy().into_owned());
            PathBuf::from(format!("{name}.rejects.csv"))
        });
        let mut rejects = RejectLog::new(Some(rejects_path));
        // One pass of a file: progress in bytes. Looping: a records counter.
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let by_bytes = !args.repeat;
        let bar = progress(g, by_bytes.then_some(size), by_bytes);
        let mut sender = Sender::new(producer.as_mut(), &mut pacer, &bar, !by_bytes);
        let mut pass = 0u64;
        'passes: loop {
            while let Some(row) = source.next() {
                if stop.load(Ordering::Relaxed) || args.count.is_some_and(|c| sender.sent >= c) {
                    break 'passes;
                }
                sender.seen += 1;
                match row? {
                    Row::Good(r) => sender.send(&r)?,
                    Row::Rejected(r) if pass == 0 => rejects
                        .record(&r)
                        .context("cannot write the rejects file")?,
                    Row::Rejected(_) => {}
                }
                if by_bytes && sender.seen.is_multiple_of(PROGRESS_EVERY) {
                    bar.set_position(source.byte_position());
                }
            }
            if !args.repeat || stop.load(Ordering::Relaxed) {
                break;
            }
            if sender.sent == 0 {
                bail!("--loop: the file has no readable row, so there is nothing to repeat");
            }
            pass += 1;
            source.rewind()?;
            sender.pacer.reset();
        }
        rejects.flush().context("cannot write the rejects file")?;
        bar.finish_and_clear();
        (sender.totals(), Some(rejects))
    } else {
        let start_ts = simulation_start(&args.start)?;
        if args.symbols == 0 {
            bail!("--symbols must be at least 1");
        }
        let sim = Simulator::new(&SimOptions {
            symbols: args.symbols,
            seed: args.seed,
            start_ts,
            interval: args.interval.as_micros().max(1) as i64,
        });
        let bar = progress(g, args.count, false);
        let mut sender = Sender::new(producer.as_mut(), &mut pacer, &bar, true);
        for r in sim {
            if stop.load(Ordering::Relaxed) || args.count.is_some_and(|c| sender.sent >= c) {
                break;
            }
            sender.seen += 1;
            sender.send(&r)?;
        }
        bar.finish_and_clear();
        (sender.totals(), None)
    };

    let delivery = producer.flush()?;
    let secs = started.elapsed().as_secs_f64();
    let mut line = format!("{} sent", totals.sent);
    if let Some(r) = &rejects {
        line.push_str(&format!(", {} rejected", r.total()));
        if r.total() > 0 {
            line.push_str(&format!(": {}", r.summary()));
        }
    }
    outln!("{line}");
    if let Some(p) = rejects.as_ref().and_then(|r| r.written_path()) {
        outln!(
            "rejected rows with line numbers and reasons: {}",
            p.display()
        );
    }
    outln!(
        "{} acknowledged by {} (topic {}, {} partitions) in {:.2}s, {:.0} records/s",
        delivery.acked,
        g.describe_bus(),
        g.topic,
        topic.partitions,
        secs,
        totals.sent as f64 / secs.max(1e-9)
    );
    if delivery.acked != totals.sent {
        bail!(
            "{} of {} messages were not acknowledged: {}",
            totals.sent - delivery.acked.min(totals.sent),
            totals.sent,
            delivery
                .last_error
                .unwrap_or_else(|| "no reason reported".into())
        );
    }
    if totals.sent == 0 {
        eprintln!(
            "error: nothing could be sent ({} rows read)",
            totals.seen_rows
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Encodes and sends records, with pacing and progress.
struct Sender<'a> {
    producer: &'a mut dyn Producer,
    pacer: &'a mut Pacer,
    bar: &'a ProgressBar,
    /// The bar counts records (rather than the caller moving it by bytes).
    count_records: bool,
    buf: Vec<u8>,
    started: Instant,
    sent: u64,
    seen: u64,
    /// Event time (ms) of the last message sent as it is.
    last_ms: i64,
}

/// Progress is updated once per this many records, to keep the hot loop cheap.
const PROGRESS_EVERY: u64 = 4096;

impl<'a> Sender<'a> {
    fn new(
        producer: &'a mut dyn Producer,
        pacer: &'a mut Pacer,
        bar: &'a ProgressBar,
        count_records: bool,
    ) -> Self {
        Sender {
            producer,
            pacer,
            bar,
            count_records,
            buf: Vec::with_capacity(256),
            started: Instant::now(),
            sent: 0,
            seen: 0,
            last_ms: 0,
        }
    }

    fn send(&mut self, r: &Record) -> Result<()> {
        self.pacer.wait(r.ts);
        self.buf.clear();
        json::encode(r, &mut self.buf);
        self.producer
            .send(r.symbol.as_bytes(), &self.buf, r.ts.div_euclid(1000))?;
        self.sent += 1;
        if self.sent.is_multiple_of(PROGRESS_EVERY) {
            if self.count_records {
                self.bar.inc(PROGRESS_EVERY);
            }
            let rate = self.sent as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            self.bar.set_message(format!(
                "{} sent, {}/s",
                HumanCount(self.sent),
                HumanCount(rate as u64)
            ));
        }
        Ok(())
    }

    /// Sends one message as it is (JSON lines replay): keyed by its symbol when it has one, stamped
    /// with its event time when it has one (else the time of the previous one, for pacing).
    fn send_raw(
        &mut self,
        key: Option<&str>,
        bytes: &[u8],
        timestamp_ms: Option<i64>,
    ) -> Result<()> {
        let ts_ms = timestamp_ms.unwrap_or(self.last_ms);
        self.last_ms = ts_ms;
        self.pacer.wait(ts_ms.saturating_mul(1000));
        self.producer
            .send(key.unwrap_or_default().as_bytes(), bytes, ts_ms)?;
        self.sent += 1;
        if self.sent.is_multiple_of(PROGRESS_EVERY) {
            if self.count_records {
                self.bar.inc(PROGRESS_EVERY);
            }
            self.bar
                .set_message(format!("{} sent", HumanCount(self.sent)));
        }
        Ok(())
    }

    fn totals(&self) -> Totals {
        Totals {
            sent: self.sent,
            seen_rows: self.seen,
        }
    }
}

/// True for files replayed as JSON lines (by extension); anything else is CSV.
fn is_json_lines(path: &std::path::Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["jsonl", "ndjson", "json"].contains(&e.to_ascii_lowercase().as_str()))
}

/// A progress bar on a terminal (bytes of the file, or records), nothing otherwise.
fn progress(g: &Global, len: Option<u64>, bytes: bool) -> ProgressBar {
    if g.quiet {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    let template = if bytes {
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}"
    } else if len.is_some() {
        "{spinner} [{elapsed_precise}] {wide_bar} {percent}% {msg}"
    } else {
        "{spinner} [{elapsed_precise}] {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The simulator's first event time (µs): an RFC 3339 time, a date, `now` or `now-<duration>`.
fn simulation_start(text: &str) -> Result<i64> {
    let bad = || format!("--start {text:?} is not an RFC 3339 time, a date, `now` or `now-3h`");
    if let Some(rest) = text.strip_prefix("now") {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        if rest.is_empty() {
            return Ok(now);
        }
        let ago = rest
            .strip_prefix('-')
            .ok_or_else(|| anyhow::anyhow!(bad()))
            .and_then(|d| humantime::parse_duration(d.trim()).with_context(bad))?;
        return Ok(now.saturating_sub(i64::try_from(ago.as_micros()).unwrap_or(i64::MAX)));
    }
    time::parse_iso(text).with_context(bad)
}
