//! The Kafka bus (librdkafka through `rdkafka`).
//!
//! Producer (`producer`): transactional (every message reaches the topic exactly once, also when a broker
//! restarts mid-stream), lz4 compression, Kafka's murmur2 partitioner (the Java client's, and the
//! embedded log's), 20 ms linger and 1 MB batches; a full local queue blocks `send` (back-pressure),
//! and messages sent while a transaction commits wait in the producer's own queue until it ends.
//! Consumer (`consumer`): no auto-commit (offsets are committed by the caller after the data is safe),
//! only committed transactions read (`read_committed`, librdkafka's default), start from the earliest
//! offset, a 10 s session timeout (a crashed member's partitions move on quickly), fetches that wait at
//! most 100 ms, and a full local fetch queue that pauses fetching for 10 ms rather than librdkafka's 1 s;
//! messages are read in batches from a queue of their own (`fetch_queue`).
//! Any librdkafka setting given as `-X key=value` overrides these.

mod consumer;
mod fetch_queue;
mod held;
mod producer;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::util::Timeout;

use crate::{BusError, TopicInfo};

pub use consumer::KafkaConsumer;
pub use producer::{
    check_transaction_span, KafkaProducer, TRANSACTION_SPAN, TRANSACTION_SPANS, WAITING_MESSAGES,
};

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

fn kerr(e: KafkaError) -> BusError {
    BusError::Kafka(e.to_string())
}

fn client_config(
    brokers: &str,
    settings: &[(String, String)],
    defaults: &[(&str, &str)],
) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    for (k, v) in defaults {
        cfg.set(*k, *v);
    }
    for (k, v) in settings {
        cfg.set(k, v);
    }
    cfg
}

/// Creates `topic` unless it exists; returns its shape.
pub fn ensure_topic(
    brokers: &str,
    settings: &[(String, String)],
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<TopicInfo, BusError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, settings, &[])
        .create()
        .map_err(kerr)?;
    if let Some(n) = partition_count(admin.inner(), topic)? {
        return Ok(TopicInfo {
            partitions: n,
            created: false,
        });
    }
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(Timeout::After(METADATA_TIMEOUT)));
    let results = futures_executor::block_on(admin.create_topics([&new], &opts)).map_err(kerr)?;
    let mut created = true;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => created = false,
            Err((name, code)) => {
                return Err(BusError::Kafka(format!(
                    "cannot create topic {name:?}: {code}"
                )))
            }
        }
    }
    // The new topic's metadata may take a moment to reach every broker.
    for _ in 0..50 {
        if let Some(n) = partition_count(admin.inner(), topic)? {
            return Ok(TopicInfo {
                partitions: n,
                created,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(BusError::Kafka(format!(
        "topic {topic:?} was created but its metadata did not appear"
    )))
}

/// The partition count of `topic`, or `None` when the brokers do not know it.
pub fn topic_partitions(
    brokers: &str,
    settings: &[(String, String)],
    topic: &str,
) -> Result<Option<i32>, BusError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, settings, &[])
        .create()
        .map_err(kerr)?;
    partition_count(admin.inner(), topic)
}

fn partition_count<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<Option<i32>, BusError> {
    let md = client
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| BusError::Kafka(format!("cannot reach the brokers: {e}")))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32))
}
