//! The live tail: the topic read from its end, as it streams, so a page sees records before the sink
//! has flushed them. Records are folded into one-second bars per symbol (by event time) and pushed to
//! subscribers every [`PUSH_EVERY`]: a client merges them into bars of any length of a second or
//! more, and a feed of 100,000 records/s costs a subscriber a few hundred small bars per push.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use ticklake_bus::{BusConfig, Consumer, ConsumerOptions, StartAt};
use tokio::sync::broadcast;

/// How often folded records are pushed.
pub const PUSH_EVERY: Duration = Duration::from_millis(100);
/// How long the tail waits before reading again after the bus failed.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Pushes a slow subscriber may fall behind before it misses some (and is told so).
const BACKLOG: usize = 64;

/// One symbol's records within one second of event time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveBar {
    /// The symbol.
    pub symbol: String,
    /// The second, in Unix seconds.
    pub time: i64,
    /// The latest record's event time, µs since the epoch.
    pub ts: i64,
    /// The first record's open (its close when it has no open).
    pub open: Option<f64>,
    /// The highest high (or close).
    pub high: Option<f64>,
    /// The lowest low (or close).
    pub low: Option<f64>,
    /// The latest record's close.
    pub close: Option<f64>,
    /// The sum of the records' volumes.
    pub volume: Option<f64>,
    /// How many records.
    pub rows: u64,
    /// The earliest record's event time (whose open is the bar's).
    #[serde(skip)]
    first_ts: i64,
}

impl LiveBar {
    fn new(r: &ticklake_model::Record) -> LiveBar {
        LiveBar {
            symbol: r.symbol.clone(),
            time: r.ts.div_euclid(1_000_000),
            ts: r.ts,
            open: r.open.or(r.close),
            high: r.high.or(r.close),
            low: r.low.or(r.close),
            close: r.close,
            volume: r.volume,
            rows: 1,
            first_ts: r.ts,
        }
    }

    fn add(&mut self, r: &ticklake_model::Record) {
        let pick = |a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64| match (a, b) {
            (Some(x), Some(y)) => Some(f(x, y)),
            (x, y) => x.or(y),
        };
        // Records may arrive out of event-time order (several partitions): the open is the earliest
        // record's, the close the latest's.
        if r.ts >= self.ts {
            self.ts = r.ts;
            self.close = r.close.or(self.close);
        }
        if r.ts < self.first_ts {
            self.first_ts = r.ts;
            self.open = r.open.or(r.close).or(self.open);
        }
        self.high = pick(self.high, r.high.or(r.close), f64::max);
        self.low = pick(self.low, r.low.or(r.close), f64::min);
        self.volume = pick(self.volume, r.volume, |a, b| a + b);
        self.rows += 1;
    }
}

/// What subscribers receive: the bars that changed since the last push. Messages that are not JSON
/// records are left out (the sink's dead letters keep them) and counted in
/// `ticklake_live_unreadable_total`.
pub type LivePush = Arc<Vec<LiveBar>>;

/// The tail: a thread reading the topic from its end, and the channel its pushes go out on.
pub struct LiveTail {
    sender: broadcast::Sender<LivePush>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LiveTail {
    /// Starts reading `topic` on `bus` from its end, and waits (at most `wait`) until the tail has
    /// its place there, so that every record produced after this returns is pushed. A bus that
    /// cannot be reached is tried again every few seconds; the server answers meanwhile. Blocks: call
    /// it outside async code (or in `spawn_blocking`).
    pub fn start(bus: BusConfig, topic: String, wait: Duration) -> LiveTail {
        let (sender, _) = broadcast::channel(BACKLOG);
        let stop = Arc::new(AtomicBool::new(false));
        let (placed, is_placed) = std::sync::mpsc::channel();
        let thread = {
            let (sender, stop) = (sender.clone(), stop.clone());
            std::thread::Builder::new()
                .name("ticklake-live".into())
                .spawn(move || tail(bus, topic, sender, stop, placed))
                .ok()
        };
        let _ = is_placed.recv_timeout(wait);
        LiveTail {
            sender,
            stop,
            thread,
        }
    }

    /// A new subscriber's receiver of pushes.
    pub fn subscribe(&self) -> broadcast::Receiver<LivePush> {
        self.sender.subscribe()
    }
}

impl Drop for LiveTail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tail(
    bus: BusConfig,
    topic: String,
    sender: broadcast::Sender<LivePush>,
    stop: Arc<AtomicBool>,
    placed: std::sync::mpsc::Sender<()>,
) {
    let mut consumer: Option<Box<dyn Consumer>> = None;
    let mut folded: BTreeMap<(String, i64), LiveBar> = BTreeMap::new();
    let mut pushed = Instant::now();
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        let c = match consumer.as_mut() {
            Some(c) => c,
            None => {
                let options = ConsumerOptions {
                    topic: topic.clone(),
                    group: None,
                    start: StartAt::Latest,
                    listener: None,
                };
                match ticklake_bus::consumer(&bus, options) {
                    Ok(c) => {
                        failing = false;
                        consumer.insert(c)
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!("the live tail cannot read topic {topic:?} (trying again every {RETRY_AFTER:?}): {e}");
                            failing = true;
                        }
                        std::thread::sleep(RETRY_AFTER);
                        continue;
                    }
                }
            }
        };
        match c.poll(10_000, PUSH_EVERY) {
            Ok(messages) => {
                // The first poll has found the end of every partition.
                let _ = placed.send(());
                for m in messages {
                    let Some(payload) = m.payload.as_deref() else {
                        continue;
                    };
                    match ticklake_model::json::decode(payload) {
                        Ok(r) => {
                            let key = (r.symbol.clone(), r.ts.div_euclid(1_000_000));
                            match folded.get_mut(&key) {
                                Some(bar) => bar.add(&r),
                                None => {
                                    folded.insert(key, LiveBar::new(&r));
                                }
                            }
                        }
                        Err(_) => metrics::counter!("ticklake_live_unreadable_total").increment(1),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    "the live tail lost topic {topic:?} (reading it again from its end): {e}"
                );
                consumer = None;
                std::thread::sleep(RETRY_AFTER);
            }
        }
        if pushed.elapsed() >= PUSH_EVERY && !folded.is_empty() {
            let bars: Vec<LiveBar> = std::mem::take(&mut folded).into_values().collect();
            metrics::counter!("ticklake_live_bars_total").increment(bars.len() as u64);
            // No subscriber is not an error: the tail keeps its place at the end of the topic.
            let _ = sender.send(Arc::new(bars));
            pushed = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticklake_model::Record;

    fn rec(ts: i64, open: f64, high: f64, low: f64, close: f64, volume: f64) -> Record {
        let mut r = Record::new("A", ts);
        (r.open, r.high, r.low, r.close, r.volume) =
            (Some(open), Some(high), Some(low), Some(close), Some(volume));
        r
    }

    #[test]
    fn records_of_one_second_fold_into_one_bar() {
        let mut bar = LiveBar::new(&rec(5_000_100, 10.0, 11.0, 9.5, 10.5, 100.0));
        bar.add(&rec(5_900_000, 10.5, 12.0, 10.0, 11.5, 50.0));
        // A record that arrives late, with an earlier time, is the open, not the close.
        bar.add(&rec(5_000_000, 9.0, 9.0, 8.0, 8.5, 10.0));
        assert_eq!(
            bar,
            LiveBar {
                symbol: "A".into(),
                time: 5,
                ts: 5_900_000,
                open: Some(9.0),
                high: Some(12.0),
                low: Some(8.0),
                close: Some(11.5),
                volume: Some(160.0),
                rows: 3,
                first_ts: 5_000_000,
            }
        );
        // Before the epoch, the second is the floor.
        assert_eq!(LiveBar::new(&rec(-1, 1.0, 1.0, 1.0, 1.0, 1.0)).time, -1);
        // A record with a close only.
        let mut only = Record::new("B", 0);
        only.close = Some(3.0);
        let bar = LiveBar::new(&only);
        assert_eq!(
            (bar.open, bar.high, bar.low, bar.volume),
            (Some(3.0), Some(3.0), Some(3.0), None)
        );
    }
}
