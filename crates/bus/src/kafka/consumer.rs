//! The consumer: a group member with manual commits whose revoked partitions' messages are dropped
//! inside `poll`, or a reader of every partition. Messages are read in batches from a queue of their
//! own (see [`super::fetch_queue`]); rebalances and errors from the consumer's queue.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::fetch_queue::FetchQueue;
use super::{client_config, kerr, partition_count, METADATA_TIMEOUT};
use crate::{
    BusError, Consumer, ConsumerOptions, Message, PartitionLag, RebalanceListener, StartAt,
};

struct GroupContext {
    /// Where the assigned partitions' messages go.
    fetched: FetchQueue,
    listener: Option<Arc<dyn RebalanceListener>>,
    /// Partitions revoked since the consumer last looked: `poll` drops the messages of these partitions
    /// that it gathered before the revocation, since their next owner replays them.
    revoked: Mutex<Vec<i32>>,
}

impl ClientContext for GroupContext {}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl GroupContext {
    /// Forwards the partitions' fetch queues to [`GroupContext::fetched`], before they are assigned.
    fn forward(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            let Ok(topic) = CString::new(e.topic()) else {
                continue;
            };
            if !self
                .fetched
                .forward(consumer.client().native_ptr(), &topic, e.partition())
            {
                tracing::debug!(
                    "partition {} of {:?} read one message at a time",
                    e.partition(),
                    e.topic()
                );
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.forward(consumer, tpl);
        }
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partitions_of(tpl);
            if parts.is_empty() {
                return;
            }
            if let Some(l) = &self.listener {
                l.on_revoke(&parts);
            }
            self.revoked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(parts);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                if let Some(l) = &self.listener {
                    l.on_assign(&partitions_of(tpl));
                }
            }
            Rebalance::Error(e) => tracing::warn!("kafka rebalance error: {e}"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// A Kafka consumer: a group member with manual commits, or (without a group) a reader of every partition.
pub struct KafkaConsumer {
    topic: String,
    consumer: BaseConsumer<GroupContext>,
    grouped: bool,
    /// Next offset per partition, as far as this consumer has returned messages.
    positions: BTreeMap<i32, i64>,
    /// Partitions read to their end: librdkafka's last word on each was a partition-EOF event (it
    /// sends one when a fetch finds nothing past the position). Their lag is 0 without asking the
    /// broker, which answers an offset request only after the fetch it is holding open (up to
    /// `fetch.wait.max.ms`, for each partition in turn).
    at_end: BTreeSet<i32>,
}

/// How long `poll` waits on the message queue at a time before it looks for rebalances again.
const EVENT_LOOK: Duration = Duration::from_millis(100);

impl KafkaConsumer {
    /// Connects and subscribes (with a group) or assigns every partition (without).
    pub fn new(
        brokers: &str,
        settings: &[(String, String)],
        options: ConsumerOptions,
    ) -> Result<Self, BusError> {
        let reset = match options.start {
            StartAt::Earliest => "earliest",
            StartAt::Latest => "latest",
        };
        let reader_group = format!("ticklake-reader-{}", std::process::id());
        let group = options.group.as_deref().unwrap_or(&reader_group);
        let consumer: BaseConsumer<GroupContext> = client_config(
            brokers,
            settings,
            &[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", reset),
                // Tells `lag` which partitions are read to their end (see `at_end`).
                ("enable.partition.eof", "true"),
                // A crashed member's partitions move on after 10 s (Kafka's default is 45 s).
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "2000"),
                // Fresh data within a fraction of a second even on brokers that wait out the fetch.
                ("fetch.wait.max.ms", "100"),
                // librdkafka stops fetching a partition while 100,000 messages are queued locally and
                // looks again only after `fetch.queue.backoff.ms` (1 s by default): a consumer that
                // drains 100,000 messages in a tenth of a second then idles the rest of that second.
                // Look again soon. The queue's own bounds stay librdkafka's (100,000 messages, 64 MiB).
                ("fetch.queue.backoff.ms", "10"),
            ],
        )
        .create_with_context(GroupContext {
            fetched: FetchQueue::default(),
            revoked: Mutex::new(Vec::new()),
            listener: options.listener.clone(),
        })
        .map_err(|e| BusError::Config(format!("kafka consumer: {e}")))?;
        consumer
            .context()
            .fetched
            .open(consumer.client().native_ptr())
            .map_err(|e| {
                BusError::Kafka(format!("cannot start the thread releasing messages: {e}"))
            })?;
        // From here on, an error drops the consumer through its `Drop`, which releases the queue.
        let this = KafkaConsumer {
            topic: options.topic.clone(),
            consumer,
            grouped: options.group.is_some(),
            positions: BTreeMap::new(),
            at_end: BTreeSet::new(),
        };
        let (consumer, topic) = (&this.consumer, &this.topic);
        if options.group.is_some() {
            consumer.subscribe(&[topic]).map_err(kerr)?;
        } else {
            let n = partition_count(consumer.client(), topic)?
                .ok_or_else(|| BusError::NoSuchTopic(topic.clone()))?;
            let mut tpl = TopicPartitionList::new();
            let start = match options.start {
                StartAt::Earliest => Offset::Beginning,
                StartAt::Latest => Offset::End,
            };
            for p in 0..n {
                tpl.add_partition_offset(topic, p, start).map_err(kerr)?;
            }
            consumer.context().forward(consumer, &tpl);
            consumer.assign(&tpl).map_err(kerr)?;
            if let Some(l) = &options.listener {
                l.on_assign(&(0..n).collect::<Vec<_>>());
            }
        }
        Ok(this)
    }

    /// Serves what waits on the consumer's own queue: rebalances (whose revocations drop what `out`
    /// holds of the revoked partitions), errors, and any message fetched before its partition was
    /// forwarded.
    fn serve_events(&mut self, out: &mut Vec<Message>, max: usize) -> Result<(), BusError> {
        while out.len() < max {
            let Some(result) = self.consumer.poll(Duration::ZERO) else {
                break;
            };
            let result = result.map(|m| Message {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(Bytes::copy_from_slice),
                payload: m.payload().map(Bytes::copy_from_slice),
                timestamp_ms: m.timestamp().to_millis(),
            });
            self.drop_revoked(out);
            match result {
                Ok(m) => {
                    self.at_end.remove(&m.partition);
                    self.positions.insert(m.partition, m.offset + 1);
                    out.push(m);
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    self.at_end.insert(p);
                }
                Err(KafkaError::MessageConsumption(code)) => consumer_error(code)?,
                Err(e) => return Err(kerr(e)),
            }
        }
        // A rebalance event ends the loop above with nothing returned.
        self.drop_revoked(out);
        Ok(())
    }

    /// A rebalance inside this poll revoked partitions: what was gathered of them before is not ours
    /// to hand out any more (the next owner replays it from the committed offset).
    fn drop_revoked(&mut self, out: &mut Vec<Message>) {
        let context = self.consumer.context();
        let revoked =
            std::mem::take(&mut *context.revoked.lock().unwrap_or_else(|e| e.into_inner()));
        if !revoked.is_empty() {
            out.retain(|m| !revoked.contains(&m.partition));
            for p in &revoked {
                self.positions.remove(p);
                self.at_end.remove(p);
            }
        }
    }

    /// Takes up to `max - out.len()` messages from the message queue, waiting up to `wait` for the
    /// first.
    fn read_fetched(
        &mut self,
        out: &mut Vec<Message>,
        max: usize,
        wait: Duration,
    ) -> Result<(), BusError> {
        let mut error = None;
        let (positions, at_end) = (&mut self.positions, &mut self.at_end);
        self.consumer
            .context()
            .fetched
            .read(max.saturating_sub(out.len()), wait, |m| {
                if m.error == Some(RDKafkaErrorCode::PartitionEOF) {
                    at_end.insert(m.partition);
                    return;
                }
                if let Some(code) = m.error {
                    if error.is_none() {
                        error = consumer_error(code).err();
                    }
                    return;
                }
                at_end.remove(&m.partition);
                positions.insert(m.partition, m.offset + 1);
                out.push(Message {
                    partition: m.partition,
                    offset: m.offset,
                    key: m.key.map(Bytes::copy_from_slice),
                    payload: m.payload.map(Bytes::copy_from_slice),
                    timestamp_ms: m.timestamp_ms,
                });
            });
        error.map_or(Ok(()), Err)
    }
}

impl Drop for KafkaConsumer {
    /// Releases the message queue before the client it belongs to.
    fn drop(&mut self) {
        self.consumer.context().fetched.close();
    }
}

/// A consumer error: logged and retried (librdkafka carries on fetching), unless it is fatal.
fn consumer_error(code: RDKafkaErrorCode) -> Result<(), BusError> {
    if fatal(code) {
        return Err(kerr(KafkaError::MessageConsumption(code)));
    }
    tracing::warn!("kafka consumer: {code} (retrying)");
    Ok(())
}

fn fatal(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::Fatal
    )
}

impl Consumer for KafkaConsumer {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Message>, BusError> {
        // A year stands for "no limit" without overflowing the clock.
        let deadline = Instant::now() + timeout.min(Duration::from_secs(365 * 86_400));
        let mut out = Vec::new();
        loop {
            self.serve_events(&mut out, max)?;
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = if out.is_empty() {
                left.min(EVENT_LOOK)
            } else {
                Duration::ZERO
            };
            self.read_fetched(&mut out, max, wait)?;
            if !out.is_empty() || left.is_zero() {
                break;
            }
        }
        // Forget positions of partitions no longer assigned.
        let assigned = self.assignment();
        self.positions.retain(|p, _| assigned.contains(p));
        self.at_end.retain(|p| assigned.contains(p));
        Ok(out)
    }

    fn commit(&mut self, offsets: &[(i32, i64)]) -> Result<(), BusError> {
        if !self.grouped {
            return Err(BusError::NoGroup);
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let assigned = self.assignment();
        let mut tpl = TopicPartitionList::new();
        for (p, off) in offsets {
            if !assigned.contains(p) {
                return Err(BusError::NotAssigned(*p));
            }
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*off))
                .map_err(kerr)?;
        }
        self.consumer.commit(&tpl, CommitMode::Sync).map_err(kerr)
    }

    fn committed(&mut self, partition: i32) -> Result<Option<i64>, BusError> {
        if !self.grouped {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        let tpl = self
            .consumer
            .committed_offsets(tpl, METADATA_TIMEOUT)
            .map_err(kerr)?;
        Ok(tpl.elements().iter().find_map(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }))
    }

    fn seek(&mut self, partition: i32, offset: i64) -> Result<(), BusError> {
        // Right after an assignment the partition's fetcher may still be starting, which librdkafka
        // answers with a state error: try again briefly.
        let mut tries = 0;
        loop {
            match self.consumer.seek(
                &self.topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            ) {
                Ok(()) => break,
                Err(e) if tries < 3 => {
                    tries += 1;
                    tracing::debug!("seek of partition {partition} to {offset}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(kerr(e)),
            }
        }
        self.positions.insert(partition, offset);
        self.at_end.remove(&partition);
        Ok(())
    }

    fn assignment(&self) -> Vec<i32> {
        self.consumer
            .assignment()
            .map(|tpl| partitions_of(&tpl))
            .unwrap_or_default()
    }

    fn lag(&mut self) -> Result<Vec<PartitionLag>, BusError> {
        let assigned = self.assignment();
        let mut committed = BTreeMap::new();
        if self.grouped && assigned.iter().any(|p| !self.positions.contains_key(p)) {
            let tpl = self.consumer.committed(METADATA_TIMEOUT).map_err(kerr)?;
            for e in tpl.elements() {
                if let Offset::Offset(o) = e.offset() {
                    committed.insert(e.partition(), o);
                }
            }
        }
        // librdkafka's own position also moves past transaction markers, which take an offset but are
        // never returned as messages: after a transactional producer's last commit, the last message's
        // offset + 1 is the marker's, one short of the end. (A seek resets librdkafka's position, so
        // it is only ahead of ours by markers.)
        let mut past_markers = BTreeMap::new();
        for e in self.consumer.position().map_err(kerr)?.elements() {
            if let Offset::Offset(o) = e.offset() {
                past_markers.insert(e.partition(), o);
            }
        }
        assigned
            .into_iter()
            .map(|p| {
                // librdkafka's position also counts when no message of the partition came since its
                // assignment: resuming at a committed offset that is a marker returns no message.
                let known = [self.positions.get(&p), past_markers.get(&p)]
                    .into_iter()
                    .flatten()
                    .max()
                    .or_else(|| committed.get(&p))
                    .copied();
                if let Some(position) = known.filter(|_| self.at_end.contains(&p)) {
                    // Read to its end as of the last fetch.
                    return Ok(PartitionLag {
                        partition: p,
                        position,
                        high_watermark: position,
                    });
                }
                let (low, high) = self
                    .consumer
                    .fetch_watermarks(&self.topic, p, METADATA_TIMEOUT)
                    .map_err(kerr)?;
                let position = known.unwrap_or(low);
                Ok(PartitionLag {
                    partition: p,
                    position,
                    high_watermark: high,
                })
            })
            .collect()
    }
}
