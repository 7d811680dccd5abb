//! The producer: idempotent, compressing, with back-pressure when librdkafka's queue is full.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;

use super::{client_config, kerr};
use crate::{BusError, Delivery, Producer};

#[derive(Default)]
struct DeliveryCounter {
    acked: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
    }
}

/// An idempotent, compressing producer to one topic.
pub struct KafkaProducer {
    topic: String,
    producer: ThreadedProducer<DeliveryCounter>,
}

impl KafkaProducer {
    /// Connects a producer for `topic`.
    pub fn new(
        brokers: &str,
        settings: &[(String, String)],
        topic: &str,
    ) -> Result<Self, BusError> {
        let producer = client_config(
            brokers,
            settings,
            &[
                ("enable.idempotence", "true"),
                ("compression.type", "lz4"),
                ("partitioner", "murmur2_random"),
                ("linger.ms", "20"),
                ("batch.size", "1000000"),
                // librdkafka's own queue (100,000 messages) and delivery timeout (300 s) stay: a full
                // queue makes `send` wait for the broker (back-pressure) instead of queueing messages
                // that would expire before a slow broker takes them.
            ],
        )
        .create_with_context(DeliveryCounter::default())
        .map_err(|e| BusError::Config(format!("kafka producer: {e}")))?;
        Ok(KafkaProducer {
            topic: topic.to_owned(),
            producer,
        })
    }
}

impl Producer for KafkaProducer {
    fn send(&mut self, key: &[u8], payload: &[u8], timestamp_ms: i64) -> Result<(), BusError> {
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
                Err((e, _)) => return Err(kerr(e)),
            }
        }
    }

    fn flush(&mut self) -> Result<Delivery, BusError> {
        // Bounded by message.timeout.ms (300 s by default): by then every message is acknowledged or failed.
        self.producer
            .flush(Timeout::After(Duration::from_secs(900)))
            .map_err(kerr)?;
        Ok(self.delivery())
    }

    fn delivery(&self) -> Delivery {
        let c = self.producer.context();
        Delivery {
            acked: c.acked.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            last_error: c
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}
