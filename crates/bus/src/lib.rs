//! One producer/consumer interface over two message buses.
//!
//! * [`kafka`]: any Kafka-protocol broker through librdkafka: a transactional (exactly-once), compressing producer keyed by
//!   symbol, consumer groups with manual offset commits, and any librdkafka setting passed through.
//! * [`embedded`]: a durable, partitioned log in a SQLite file on local disk, for running with no broker.
//!   Producers and consumers may be separate processes; consumer groups split partitions and keep
//!   committed offsets; an acknowledged record survives `kill -9` of either side.
//!
//! Both place a key in the same partition (Kafka's murmur2 partitioner), so a symbol's records stay in
//! order within one partition whichever bus carries them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub mod embedded;
pub mod kafka;
mod partitioner;

pub use partitioner::murmur2_partition;

use bytes::Bytes;

/// A message read from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset within the partition.
    pub offset: i64,
    /// The key (the symbol, for ticklake's own producer).
    pub key: Option<Bytes>,
    /// The value (one JSON record, for ticklake's own producer). The messages of one batch of the
    /// embedded log share its buffer: a payload is a slice of it, not a copy.
    pub payload: Option<Bytes>,
    /// The message timestamp, ms since the epoch (ticklake sets it to the record's event time).
    pub timestamp_ms: Option<i64>,
}

/// Delivery totals of a producer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Messages the bus has acknowledged as durably stored.
    pub acked: u64,
    /// Messages the bus reported as failed.
    pub failed: u64,
    /// The last failure reported, if any.
    pub last_error: Option<String>,
}

/// How long ticklake waits for a service that is away (a broker, the object store, the catalog, a full
/// disk) before it gives up on the step that needs it.
pub const OUTAGE_PATIENCE: Duration = Duration::from_secs(600);

/// The waits between attempts while a service is away: 0.2 s doubling to 10 s, with jitter, until
/// [`OUTAGE_PATIENCE`] is spent. Shared by the Kafka producer and the sink's flush steps.
pub fn outage_backoff() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .with_total_delay(Some(OUTAGE_PATIENCE))
        .build()
}

/// Sends messages to one topic.
pub trait Producer: Send {
    /// Queues one message; `key` chooses the partition. May block briefly when the queue is full.
    fn send(&mut self, key: &[u8], payload: &[u8], timestamp_ms: i64) -> Result<(), BusError>;
    /// Waits until every queued message is acknowledged or has failed, and returns the totals.
    fn flush(&mut self) -> Result<Delivery, BusError>;
    /// The totals so far, without waiting.
    fn delivery(&self) -> Delivery;
}

/// How far a consumer is behind the end of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    /// The partition.
    pub partition: i32,
    /// The next offset this consumer will read.
    pub position: i64,
    /// The offset the next message written to the partition will get.
    pub high_watermark: i64,
}

impl PartitionLag {
    /// Messages not yet read.
    pub fn lag(&self) -> i64 {
        (self.high_watermark - self.position).max(0)
    }
}

/// Reads messages from one topic, alone or as a member of a consumer group.
pub trait Consumer: Send {
    /// Returns up to `max` messages, waiting up to `timeout` for the first. An empty vector means none
    /// arrived in time. Messages of one partition come in offset order.
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Message>, BusError>;
    /// Commits, for each (partition, offset), the offset of the next message to read. Only for group
    /// members, and only for partitions currently assigned to this member. An empty list does nothing.
    fn commit(&mut self, offsets: &[(i32, i64)]) -> Result<(), BusError>;
    /// The partitions currently assigned to this consumer.
    fn assignment(&self) -> Vec<i32>;
    /// Moves an assigned partition's position: the next messages of `partition` start at `offset`
    /// (messages fetched before are dropped).
    fn seek(&mut self, partition: i32, offset: i64) -> Result<(), BusError>;
    /// The group's committed offset of a partition (`None` without a group or commit).
    fn committed(&mut self, partition: i32) -> Result<Option<i64>, BusError>;
    /// Position and end of each assigned partition. A partition read to its end may report the end as
    /// of its last fetch (Kafka): messages that came since arrive with the next polls.
    fn lag(&mut self) -> Result<Vec<PartitionLag>, BusError>;
}

/// Told when a group member gains or loses partitions.
pub trait RebalanceListener: Send + Sync {
    /// Called before `partitions` are given up. When it returns, nothing may be written for them any more:
    /// another member may take them over at once.
    fn on_revoke(&self, partitions: &[i32]);
    /// Called after `partitions` were assigned, before any of their messages is returned.
    fn on_assign(&self, partitions: &[i32]);
}

/// Where a consumer starts in a partition that has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The oldest message kept.
    #[default]
    Earliest,
    /// Only messages written from now on.
    Latest,
}

/// How to consume.
#[derive(Clone, Default)]
pub struct ConsumerOptions {
    /// The topic.
    pub topic: String,
    /// The consumer group; `None` reads every partition alone and commits nothing.
    pub group: Option<String>,
    /// Where to start without a committed offset.
    pub start: StartAt,
    /// Told about partitions gained and lost.
    pub listener: Option<Arc<dyn RebalanceListener>>,
}

/// Which bus to use.
#[derive(Clone, PartialEq, Eq)]
pub enum BusConfig {
    /// The embedded log in this directory.
    Embedded {
        /// Directory holding one log per topic.
        dir: PathBuf,
    },
    /// A Kafka-protocol cluster.
    Kafka {
        /// `host:port[,host:port...]`.
        brokers: String,
        /// librdkafka settings (`-X key=value`), applied after ticklake's own defaults.
        settings: Vec<(String, String)>,
    },
}

/// Kafka settings in `Debug` output: values of secrets (passwords, keys, tokens, JAAS configs) are
/// replaced by `***`, so configurations can be logged.
pub struct Redacted<'a>(pub &'a [(String, String)]);

/// True for librdkafka settings whose values are secrets.
pub fn is_secret_setting(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "key.pem",
        "token",
        "oauthbearer.config",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
}

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_setting(k) {
                        "***"
                    } else {
                        v.as_str()
                    },
                )
            }))
            .finish()
    }
}

impl std::fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusConfig::Embedded { dir } => f.debug_struct("Embedded").field("dir", dir).finish(),
            BusConfig::Kafka { brokers, settings } => f
                .debug_struct("Kafka")
                .field("brokers", brokers)
                .field("settings", &Redacted(settings))
                .finish(),
        }
    }
}

/// A topic's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicInfo {
    /// Number of partitions.
    pub partitions: i32,
    /// True when this call created it.
    pub created: bool,
}

/// Errors of the message bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A topic name Kafka would refuse (and that could escape a directory in the embedded log).
    #[error("invalid topic name {0:?}: use 1-249 characters from a-z, A-Z, 0-9, '.', '_', '-'")]
    InvalidTopic(String),
    /// The topic does not exist.
    #[error("topic {0:?} does not exist (produce to it first, or create it)")]
    NoSuchTopic(String),
    /// A setting is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The Kafka client reported an error.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The embedded log's storage failed.
    #[error("embedded log {path}: {message}")]
    Storage {
        /// The log's file or directory.
        path: String,
        /// What failed.
        message: String,
    },
    /// A commit for a partition this member does not own (it was reassigned).
    #[error(
        "cannot commit partition {0}: it is not assigned to this consumer (a rebalance moved it)"
    )]
    NotAssigned(i32),
    /// Operation needs a consumer group.
    #[error("this consumer has no group, so it cannot commit offsets")]
    NoGroup,
    /// Messages were not acknowledged.
    #[error("{failed} message(s) were not acknowledged: {reason}")]
    Undelivered {
        /// How many.
        failed: u64,
        /// The last reason reported.
        reason: String,
    },
}

/// Checks a topic name by Kafka's rules.
pub fn validate_topic(name: &str) -> Result<(), BusError> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BusError::InvalidTopic(name.to_owned()))
    }
}

/// Creates `topic` with `partitions` partitions if it does not exist; returns its shape either way.
pub fn ensure_topic(
    config: &BusConfig,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<TopicInfo, BusError> {
    validate_topic(topic)?;
    if partitions < 1 {
        return Err(BusError::Config(format!(
            "partitions must be at least 1, not {partitions}"
        )));
    }
    match config {
        BusConfig::Embedded { dir } => embedded::ensure_topic(dir, topic, partitions),
        BusConfig::Kafka { brokers, settings } => {
            kafka::ensure_topic(brokers, settings, topic, partitions, replication)
        }
    }
}

/// The number of partitions of `topic`, or `None` when it does not exist.
pub fn partition_count(config: &BusConfig, topic: &str) -> Result<Option<i32>, BusError> {
    validate_topic(topic)?;
    match config {
        BusConfig::Embedded { dir } => embedded::partition_count(dir, topic),
        BusConfig::Kafka { brokers, settings } => kafka::topic_partitions(brokers, settings, topic),
    }
}

/// Sets how long and how much of `topic` the embedded log keeps (see [`embedded::Retention`]); a limit
/// that is `None` stays as it was. On Kafka these are the topic's own `retention.ms` and
/// `retention.bytes`, which the broker's administrators set.
pub fn set_retention(
    config: &BusConfig,
    topic: &str,
    limits: &embedded::Retention,
) -> Result<(), BusError> {
    validate_topic(topic)?;
    match config {
        BusConfig::Embedded { dir } => embedded::set_retention(dir, topic, limits),
        BusConfig::Kafka { .. } => Err(BusError::Config(format!(
            "--retention and --retention-bytes are for the embedded log; on Kafka, set the topic's \
             retention.ms and retention.bytes on the broker (kafka-configs.sh --alter --entity-type \
             topics --entity-name {topic} --add-config retention.ms=...)"
        ))),
    }
}

/// How a producer sends, beyond the bus's own settings.
#[derive(Debug, Clone, Default)]
pub struct ProducerOptions {
    /// Kafka: how long a transaction stays open before it commits (default
    /// [`kafka::TRANSACTION_SPAN`], 200 ms; within [`kafka::TRANSACTION_SPANS`]).
    /// Readers see messages when their transaction commits, so shorter spans show them sooner;
    /// messages sent while one commits wait in the producer (up to [`kafka::WAITING_MESSAGES`]). The
    /// embedded log has no transactions: giving a span for it is a configuration error.
    pub transaction_span: Option<Duration>,
}

impl ProducerOptions {
    /// Checks the options against the bus, so a caller can refuse them before touching the topic.
    pub fn check(&self, config: &BusConfig) -> Result<(), BusError> {
        match (config, self.transaction_span) {
            (_, None) => Ok(()),
            (BusConfig::Embedded { .. }, Some(_)) => Err(BusError::Config(
                "--transaction-span is for Kafka (--brokers): the embedded log has no transactions, \
                 its appends are visible as soon as they are durable"
                    .into(),
            )),
            (BusConfig::Kafka { .. }, Some(span)) => kafka::check_transaction_span(span),
        }
    }
}

/// A producer for `topic`, which must exist (see [`ensure_topic`]), with the default options.
pub fn producer(config: &BusConfig, topic: &str) -> Result<Box<dyn Producer>, BusError> {
    producer_with(config, topic, &ProducerOptions::default())
}

/// A producer for `topic`, which must exist (see [`ensure_topic`]).
pub fn producer_with(
    config: &BusConfig,
    topic: &str,
    options: &ProducerOptions,
) -> Result<Box<dyn Producer>, BusError> {
    validate_topic(topic)?;
    options.check(config)?;
    Ok(match config {
        BusConfig::Embedded { dir } => Box::new(embedded::EmbeddedProducer::open(
            dir,
            topic,
            embedded::ProducerSettings::default(),
        )?),
        BusConfig::Kafka { brokers, settings } => Box::new(kafka::KafkaProducer::new(
            brokers,
            settings,
            topic,
            options.transaction_span.unwrap_or(kafka::TRANSACTION_SPAN),
        )?),
    })
}

/// A consumer of `options.topic`.
pub fn consumer(
    config: &BusConfig,
    options: ConsumerOptions,
) -> Result<Box<dyn Consumer>, BusError> {
    validate_topic(&options.topic)?;
    Ok(match config {
        BusConfig::Embedded { dir } => Box::new(embedded::EmbeddedConsumer::open(
            dir,
            options,
            embedded::GroupSettings::default(),
        )?),
        BusConfig::Kafka { brokers, settings } => {
            Box::new(kafka::KafkaConsumer::new(brokers, settings, options)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = BusConfig::Kafka {
            brokers: "b:9092".into(),
            settings: vec![
                ("sasl.password".into(), "hunter2".into()),
                ("sasl.jaas.config".into(), "x required password=p".into()),
                ("ssl.key.password".into(), "k".into()),
                ("sasl.username".into(), "alice".into()),
            ],
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("password=p"),
            "{shown}"
        );
        assert!(shown.contains("alice") && shown.contains("***"), "{shown}");
    }

    #[test]
    fn topic_names() {
        for ok in ["stock-topic", "a", "a.b_c-1"] {
            assert!(validate_topic(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "a b", &"x".repeat(250)] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }
}
