//! The producer: transactional, so that what reaches the topic is every message exactly once.
//!
//! An idempotent producer alone is not enough. When a broker restarts under load, librdkafka can bump the
//! producer epoch and renumber messages whose first attempt the broker had already written, and the topic
//! then holds them twice (a broker stopped three times while 500,000 messages streamed in at 50,000/s left
//! 2,000 to 8,000 duplicates per run, also with one request in flight per connection). Transactions close
//! that hole: the producer keeps a copy of each message until the transaction that holds it commits. When
//! librdkafka reports a transaction it cannot complete, the producer aborts it (readers with
//! `isolation.level=read_committed`, librdkafka's default and the sink's, never see aborted messages) and
//! sends the copies again in a new one.
//!
//! A transaction is committed once it is a span old ([`TRANSACTION_SPAN`] unless the producer is given
//! another; also when no new message comes: a background thread looks), after [`TRANSACTION_MESSAGES`]
//! messages, and at `flush`. Readers see messages when their transaction commits, so the span bounds the
//! delay it adds.
//!
//! librdkafka takes no message while a transaction commits (it flushes what it holds, then the coordinator
//! writes the commit markers: tens of milliseconds on loopback). Messages sent meanwhile wait in the
//! producer's own queue, up to [`WAITING_MESSAGES`], and go to librdkafka, in send order, as soon as the
//! commit ends (the committer thread hands them over). The caller goes on encoding its messages instead of
//! waiting on each commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backon::ExponentialBackoff;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};

use super::held::HeldMessages;
use super::{client_config, kerr};
use crate::{outage_backoff, BusError, Delivery, Producer};

/// How long a transaction stays open before it is committed, by default.
pub const TRANSACTION_SPAN: Duration = Duration::from_millis(200);
/// The shortest and longest spans a producer accepts: a transaction must commit well within
/// `transaction.timeout.ms` (10 s), or the broker aborts it.
pub const TRANSACTION_SPANS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(5);
/// Checks that a transaction span is within [`TRANSACTION_SPANS`].
pub fn check_transaction_span(span: Duration) -> Result<(), BusError> {
    if TRANSACTION_SPANS.contains(&span) {
        return Ok(());
    }
    Err(BusError::Config(format!(
        "a transaction span of {span:?} is out of range: use {:?} to {:?} (the broker aborts \
         transactions open longer than transaction.timeout.ms, 10 s)",
        TRANSACTION_SPANS.start(),
        TRANSACTION_SPANS.end()
    )))
}

/// How many messages a transaction holds at most (their copies are kept until it commits).
pub const TRANSACTION_MESSAGES: usize = 500_000;
/// How many messages wait for a commit to end at most, before `send` waits for it too.
pub const WAITING_MESSAGES: usize = 100_000;
/// How long one transactional call (init, commit, abort) may block before it is tried again.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the flush before a commit waits for deliveries; what is still outstanding then (a broker
/// away), the commit itself waits for, within [`CALL_TIMEOUT`].
const DELIVERY_WAIT: Duration = Duration::from_secs(5);

/// A transactional, compressing producer to one topic.
pub struct KafkaProducer {
    state: Arc<Mutex<Transactions>>,
    /// Messages sent while another thread held `state` (the committer, mostly while it commits), in send
    /// order. They go to librdkafka before any message sent after them.
    waiting: Arc<Mutex<HeldMessages>>,
    stop: Arc<AtomicBool>,
    committer: Option<JoinHandle<()>>,
}

/// The producer and the open transaction's messages, shared with the committer thread.
struct Transactions {
    topic: String,
    /// The producer's settings, to start a new instance after a fatal error.
    config: ClientConfig,
    /// Whether the transactional id is this producer's own (not one the settings gave). Then no other
    /// instance can fence it: a "fenced" error comes from the coordinator bumping the epoch of a
    /// transaction it aborted (a broker restart, a timed-out transaction), and a new instance carries on.
    own_id: bool,
    producer: ThreadedProducer<DefaultProducerContext>,
    held: HeldMessages,
    /// How long a transaction stays open before it is committed.
    span: Duration,
    /// When the open transaction got its first message.
    opened: Option<Instant>,
    /// Messages in committed transactions.
    committed: u64,
    /// Why the committer thread could not commit (returned by the next `send` or `flush`).
    failure: Option<BusError>,
}

impl KafkaProducer {
    /// Connects a producer for `topic` and opens its first transaction, which commits every `span`
    /// (within [`TRANSACTION_SPANS`]). Its `transactional.id` is unique to this producer unless the
    /// settings give one (a fixed id lets a restarted producer fence off the previous instance and
    /// abort its open transaction at once).
    pub fn new(
        brokers: &str,
        settings: &[(String, String)],
        topic: &str,
        span: Duration,
    ) -> Result<Self, BusError> {
        check_transaction_span(span)?;
        let id = format!(
            "ticklake-{topic}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let config = client_config(
            brokers,
            settings,
            &[
                ("transactional.id", &id),
                // A producer that dies with a transaction open holds readers back at that point until the
                // broker aborts it: 10 s, as Kafka Streams' exactly-once default.
                ("transaction.timeout.ms", "10000"),
                ("compression.type", "lz4"),
                ("partitioner", "murmur2_random"),
                ("linger.ms", "20"),
                ("batch.size", "1000000"),
                // librdkafka's own queue (100,000 messages) stays: a full queue makes `send` wait for
                // the broker (back-pressure).
            ],
        );
        let producer = start_producer(&config, &mut Patience::new())?;
        let state = Arc::new(Mutex::new(Transactions {
            topic: topic.to_owned(),
            config,
            own_id: !settings.iter().any(|(k, _)| k == "transactional.id"),
            producer,
            held: HeldMessages::default(),
            span,
            opened: None,
            committed: 0,
            failure: None,
        }));
        let waiting = Arc::new(Mutex::new(HeldMessages::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let committer = {
            let (state, waiting, stop) = (state.clone(), waiting.clone(), stop.clone());
            std::thread::Builder::new()
                .name("kafka-commit".into())
                .spawn(move || commit_when_due(&state, &waiting, &stop, span))
                .map_err(|e| BusError::Kafka(format!("cannot start the commit thread: {e}")))?
        };
        Ok(KafkaProducer {
            state,
            waiting,
            stop,
            committer: Some(committer),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Transactions> {
        lock(&self.state)
    }
}

/// Locks a mutex; a thread that panicked holding it left nothing half-done that matters here.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates a producer, registers its transactional id with the brokers (which aborts any transaction an
/// earlier instance with this id left open) and begins its first transaction.
fn start_producer(
    config: &ClientConfig,
    patience: &mut Patience,
) -> Result<ThreadedProducer<DefaultProducerContext>, BusError> {
    let producer: ThreadedProducer<DefaultProducerContext> = config
        .create()
        .map_err(|e| BusError::Config(format!("kafka producer: {e}")))?;
    loop {
        match producer.init_transactions(CALL_TIMEOUT) {
            Ok(()) => break,
            Err(e) if !is_fatal(&e) && patience.wait(&e) => {}
            Err(e) => {
                return Err(BusError::Kafka(format!(
                    "the brokers did not start a transactional producer (ticklake's Kafka \
                     producer needs transactions, Kafka 0.11 or later): {e}"
                )))
            }
        }
    }
    producer.begin_transaction().map_err(kerr)?;
    Ok(producer)
}

/// The committer thread: commits the open transaction once it is a span old, so that messages become
/// visible without waiting for the next `send`, then hands librdkafka the messages sent meanwhile.
fn commit_when_due(
    state: &Mutex<Transactions>,
    waiting: &Mutex<HeldMessages>,
    stop: &AtomicBool,
    span: Duration,
) {
    let look_every = (span / 4).min(Duration::from_millis(100));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(look_every);
        let mut t = lock(state);
        if t.failure.is_none() && t.due() {
            if let Err(e) = t.commit() {
                t.failure = Some(e);
            }
        }
        if t.failure.is_none() {
            if let Err(e) = t.hand_over(waiting) {
                t.failure = Some(e);
            }
        }
    }
}

impl Transactions {
    fn due(&self) -> bool {
        self.opened
            .is_some_and(|at| at.elapsed() >= self.span || self.held.len() >= TRANSACTION_MESSAGES)
    }

    /// Hands one message to librdkafka, waiting while its queue is full.
    fn produce(&self, key: &[u8], payload: &[u8], timestamp_ms: i64) -> Result<(), KafkaError> {
        let mut record = BaseRecord::to(&self.topic)
            .key(key)
            .payload(payload)
            .timestamp(timestamp_ms);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // The background thread serves delivery reports; wait for room.
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Sends the waiting messages, in order, until none is left (more may come while it sends: the
    /// caller's thread adds to them while this one holds the transactions).
    fn hand_over(&mut self, waiting: &Mutex<HeldMessages>) -> Result<(), BusError> {
        loop {
            let batch = std::mem::take(&mut *lock(waiting));
            if batch.len() == 0 {
                return Ok(());
            }
            for (key, payload, ts) in batch.iter() {
                self.send(key, payload, ts)?;
            }
        }
    }

    fn send(&mut self, key: &[u8], payload: &[u8], timestamp_ms: i64) -> Result<(), BusError> {
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        if let Err(e) = self.produce(key, payload, timestamp_ms) {
            if !matches!(
                e,
                KafkaError::MessageProduction(RDKafkaErrorCode::State | RDKafkaErrorCode::Fatal)
            ) {
                return Err(kerr(e));
            }
            // The transaction cannot take more messages (an abortable or a fatal error): settle it,
            // which sends what it held again where needed, and put this message into the next one.
            if self.held.len() == 0 {
                self.restart(&mut Patience::new())?;
            } else {
                self.commit()?;
            }
            self.produce(key, payload, timestamp_ms).map_err(kerr)?;
        }
        self.held.push(key, payload, timestamp_ms);
        self.opened.get_or_insert_with(Instant::now);
        if self.held.len() >= TRANSACTION_MESSAGES {
            self.commit()?;
        }
        Ok(())
    }

    /// Commits the open transaction and begins the next. When librdkafka says the transaction must be
    /// aborted (messages failed, the coordinator timed it out), aborts it and sends its messages again in
    /// a new one; after a fatal error (librdkafka cannot abort a transaction the coordinator already
    /// timed out, confluentinc/librdkafka#3297), or when fenced under its own transactional id (the
    /// coordinator aborted the transaction and bumped the epoch), starts a new producer instance with the
    /// same transactional id, which aborts the old one's transaction, and sends them again there. Fenced
    /// under an id the settings gave, it stops: another instance took over. Waits out brokers that are
    /// away for up to [`crate::OUTAGE_PATIENCE`].
    fn commit(&mut self) -> Result<(), BusError> {
        if self.held.len() == 0 {
            return Ok(());
        }
        self.deliver_held();
        let mut patience = Patience::new();
        loop {
            let e = match self.producer.commit_transaction(CALL_TIMEOUT) {
                Ok(()) => {
                    self.committed += self.held.len() as u64;
                    self.held.clear();
                    self.opened = None;
                    return self.producer.begin_transaction().map_err(kerr);
                }
                Err(e) => e,
            };
            if (fenced(&e) && !self.own_id) || !patience.wait(&e) {
                return Err(undelivered(self.held.len(), &e));
            }
            if is_fatal(&e) || fenced(&e) {
                self.restart(&mut patience)?;
            } else if requires_abort(&e) {
                self.abort_and_resend(&mut patience)?;
            }
        }
    }

    /// Waits until librdkafka has delivered every message it holds (or [`DELIVERY_WAIT`] passes), sending
    /// them without waiting out `linger.ms`, so that the commit that follows finds none outstanding.
    ///
    /// rdkafka's `commit_transaction` flushes first through its own `flush`, which, while a message is
    /// outstanding, serves the event queue in slices of 100 ms and returns only at the end of a slice
    /// (its `poll` runs to its deadline). Every commit took at least 100 ms that way, during which no
    /// message could be handed to librdkafka: a quarter of a 10 M-record run. librdkafka's own
    /// `rd_kafka_flush` waits on a condition variable instead (the delivery reports are events, served
    /// by the producer's polling thread). Whatever it leaves (a timeout, a failed message), the commit
    /// flushes again and reports.
    fn deliver_held(&self) {
        let timeout_ms = i32::try_from(DELIVERY_WAIT.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the handle is this live producer's; librdkafka's API may be called from any thread.
        unsafe {
            rdkafka::bindings::rd_kafka_flush(self.producer.client().native_ptr(), timeout_ms)
        };
    }

    /// Aborts the open transaction, begins a new one and sends the held messages into it again.
    fn abort_and_resend(&mut self, patience: &mut Patience) -> Result<(), BusError> {
        loop {
            match self.producer.abort_transaction(CALL_TIMEOUT) {
                Ok(()) => break,
                Err(e) if fenced(&e) && !self.own_id => {
                    return Err(undelivered(self.held.len(), &e))
                }
                Err(e) if !patience.wait(&e) => return Err(undelivered(self.held.len(), &e)),
                Err(e) if is_fatal(&e) || fenced(&e) => return self.restart(patience),
                Err(_) => {}
            }
        }
        self.producer.begin_transaction().map_err(kerr)?;
        self.resend()
    }

    /// Replaces a producer that hit a fatal error with a new instance under the same transactional id
    /// (registering it aborts the old instance's open transaction), and sends the held messages again.
    fn restart(&mut self, patience: &mut Patience) -> Result<(), BusError> {
        tracing::warn!(
            "starting a new Kafka producer, to send the {} messages of a failed transaction again",
            self.held.len()
        );
        self.producer = start_producer(&self.config, patience)?;
        self.resend()
    }

    /// Sends the held messages into the open transaction. When the transaction fails again meanwhile,
    /// stops: the caller's commit gets that error and starts over. Any other failure ends the run, so a
    /// commit never counts copies that were not sent.
    fn resend(&self) -> Result<(), BusError> {
        for (key, payload, ts) in self.held.iter() {
            match self.produce(key, payload, ts) {
                Ok(()) => {}
                Err(KafkaError::MessageProduction(
                    RDKafkaErrorCode::State | RDKafkaErrorCode::Fatal,
                )) => return Ok(()),
                Err(e) => return Err(undelivered(self.held.len(), &e)),
            }
        }
        Ok(())
    }
}

fn transaction_error(e: &KafkaError) -> Option<&rdkafka::error::RDKafkaError> {
    match e {
        KafkaError::Transaction(t) => Some(t),
        _ => None,
    }
}

fn is_fatal(e: &KafkaError) -> bool {
    transaction_error(e).is_some_and(|t| t.is_fatal())
}

/// The coordinator fenced this instance: another producer with the same transactional id took over (this
/// one must stop, not fight it), or, under the producer's own id, the coordinator bumped the epoch itself.
fn fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)
    )
}

fn requires_abort(e: &KafkaError) -> bool {
    transaction_error(e).is_some_and(|t| t.txn_requires_abort())
}

fn undelivered(held: usize, e: &KafkaError) -> BusError {
    BusError::Undelivered {
        failed: held as u64,
        reason: e.to_string(),
    }
}

/// Exponential back-off between attempts while the brokers are away, with a warning per wait.
struct Patience {
    backoff: ExponentialBackoff,
}

impl Patience {
    fn new() -> Patience {
        Patience {
            backoff: outage_backoff(),
        }
    }

    /// Waits and returns true to try again, or returns false when the patience is spent.
    fn wait(&mut self, e: &KafkaError) -> bool {
        match self.backoff.next() {
            Some(delay) => {
                tracing::warn!(
                    "waiting for Kafka: {e}; trying again in {:.1}s",
                    delay.as_secs_f64()
                );
                std::thread::sleep(delay);
                true
            }
            None => false,
        }
    }
}

impl Producer for KafkaProducer {
    /// Hands the message to librdkafka after any waiting ones; while the committer thread holds the
    /// transactions (a commit), the message waits instead, unless [`WAITING_MESSAGES`] already do.
    fn send(&mut self, key: &[u8], payload: &[u8], timestamp_ms: i64) -> Result<(), BusError> {
        let mut t = match self.state.try_lock() {
            Ok(t) => t,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let mut waiting = lock(&self.waiting);
                if waiting.len() < WAITING_MESSAGES {
                    waiting.push(key, payload, timestamp_ms);
                    return Ok(());
                }
                drop(waiting);
                lock(&self.state)
            }
        };
        t.hand_over(&self.waiting)?;
        t.send(key, payload, timestamp_ms)
    }

    fn flush(&mut self) -> Result<Delivery, BusError> {
        let mut t = self.lock();
        if let Some(e) = t.failure.take() {
            return Err(e);
        }
        t.hand_over(&self.waiting)?;
        t.commit()?;
        Ok(t.delivery())
    }

    fn delivery(&self) -> Delivery {
        self.lock().delivery()
    }
}

impl Transactions {
    fn delivery(&self) -> Delivery {
        Delivery {
            acked: self.committed,
            failed: 0,
            last_error: self.failure.as_ref().map(|e| e.to_string()),
        }
    }
}

impl Drop for KafkaProducer {
    /// Stops the committer and aborts a transaction left open (a run that failed before `flush`), so
    /// readers are not held back until the broker times it out. Waiting messages are dropped unsent.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.committer.take() {
            let _ = c.join();
        }
        let t = self.lock();
        if t.held.len() > 0 {
            let _ = t.producer.abort_transaction(Duration::from_secs(5));
        }
    }
}
