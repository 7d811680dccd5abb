//! The same behaviour tests against both buses: the embedded log (always) and a real Apache Kafka
//! broker (started by `scripts/test.sh`; its address comes in `TICKLAKE_TEST_KAFKA`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ticklake_bus::{
    consumer, ensure_topic, murmur2_partition, producer, producer_with, BusConfig, Consumer,
    ConsumerOptions, Message, ProducerOptions, RebalanceListener, StartAt,
};

/// A bus to test against, with whatever keeps it alive.
pub struct Bus {
    pub config: BusConfig,
    _dir: Option<tempfile::TempDir>,
}

pub fn embedded_bus() -> Bus {
    let dir = tempfile::tempdir().expect("temp dir");
    Bus {
        config: BusConfig::Embedded {
            dir: dir.path().to_path_buf(),
        },
        _dir: Some(dir),
    }
}

pub fn kafka_bus() -> Bus {
    let brokers = std::env::var("TICKLAKE_TEST_KAFKA").expect(
        "TICKLAKE_TEST_KAFKA is not set: the Kafka tests need a broker; run scripts/test.sh, which starts one",
    );
    Bus {
        config: BusConfig::Kafka {
            brokers,
            settings: vec![],
        },
        _dir: None,
    }
}

pub fn unique_topic(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t-{name}-{nanos}")
}

fn opts(topic: &str, group: Option<&str>) -> ConsumerOptions {
    ConsumerOptions {
        topic: topic.into(),
        group: group.map(str::to_owned),
        start: StartAt::Earliest,
        listener: None,
    }
}

/// Produces `per_key` messages for each key, payload `key:seq`; returns them in send order.
fn produce(cfg: &BusConfig, topic: &str, keys: &[String], per_key: usize) -> Vec<(String, usize)> {
    produce_with(cfg, topic, keys, per_key, &ProducerOptions::default())
}

/// [`produce`] with a producer's options.
fn produce_with(
    cfg: &BusConfig,
    topic: &str,
    keys: &[String],
    per_key: usize,
    options: &ProducerOptions,
) -> Vec<(String, usize)> {
    let mut p = producer_with(cfg, topic, options).expect("producer");
    let mut sent = Vec::new();
    for seq in 0..per_key {
        for k in keys {
            let payload = format!("{k}:{seq}");
            p.send(
                k.as_bytes(),
                payload.as_bytes(),
                1_700_000_000_000 + seq as i64,
            )
            .expect("send");
            sent.push((k.clone(), seq));
        }
    }
    let d = p.flush().expect("flush");
    assert_eq!(
        d.acked,
        sent.len() as u64,
        "every message acknowledged: {d:?}"
    );
    assert_eq!(d.failed, 0);
    sent
}

fn parse(m: &Message) -> (String, usize) {
    let text = String::from_utf8(m.payload.clone().unwrap().to_vec()).unwrap();
    let (k, seq) = text.split_once(':').unwrap();
    assert_eq!(
        m.key.as_deref(),
        Some(k.as_bytes()),
        "key travels with the message"
    );
    (k.to_owned(), seq.parse().unwrap())
}

/// Polls until `want` messages arrived in total or the deadline passes.
fn drain(c: &mut dyn Consumer, want: usize, limit: Duration) -> Vec<Message> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        got.extend(c.poll(1000, Duration::from_millis(200)).expect("poll"));
    }
    got
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("SYM{i}")).collect()
}

pub fn keyed_messages_keep_order_in_their_partition(cfg: &BusConfig) {
    let topic = unique_topic("order");
    let info = ensure_topic(cfg, &topic, 3, 1).unwrap();
    assert_eq!((info.partitions, info.created), (3, true));
    let again = ensure_topic(cfg, &topic, 5, 1).unwrap();
    assert_eq!(
        (again.partitions, again.created),
        (3, false),
        "an existing topic is kept as it is"
    );

    let keys = keys(7);
    let sent = produce(cfg, &topic, &keys, 300);
    let mut c = consumer(cfg, opts(&topic, None)).unwrap();
    let got = drain(c.as_mut(), sent.len(), Duration::from_secs(60));
    assert_eq!(got.len(), sent.len());

    let mut per_key: HashMap<String, Vec<usize>> = HashMap::new();
    let mut last_offset: HashMap<i32, i64> = HashMap::new();
    for m in &got {
        let (k, seq) = parse(m);
        assert_eq!(
            m.partition,
            murmur2_partition(k.as_bytes(), 3),
            "key {k} in its murmur2 partition"
        );
        assert_eq!(m.timestamp_ms, Some(1_700_000_000_000 + seq as i64));
        if let Some(prev) = last_offset.insert(m.partition, m.offset) {
            assert!(m.offset > prev, "offsets increase within a partition");
        }
        per_key.entry(k).or_default().push(seq);
    }
    for k in &keys {
        assert_eq!(
            per_key[k],
            (0..300).collect::<Vec<_>>(),
            "{k} in send order"
        );
    }
    let lag = c.lag().unwrap();
    assert_eq!(lag.len(), 3);
    assert!(lag.iter().all(|l| l.lag() == 0), "{lag:?}");
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(char, Vec<i32>)>>,
}

impl RebalanceListener for Recorder {
    fn on_revoke(&self, partitions: &[i32]) {
        self.events.lock().unwrap().push(('-', partitions.to_vec()));
    }
    fn on_assign(&self, partitions: &[i32]) {
        self.events.lock().unwrap().push(('+', partitions.to_vec()));
    }
}

fn commit_all(c: &mut dyn Consumer, batch: &[Message]) {
    let mut next = BTreeMap::new();
    for m in batch {
        next.insert(m.partition, m.offset + 1);
    }
    c.commit(&next.into_iter().collect::<Vec<_>>())
        .expect("commit");
}

pub fn a_group_of_two_splits_partitions_exactly_once(cfg: &BusConfig) {
    let topic = unique_topic("group");
    ensure_topic(cfg, &topic, 4, 1).unwrap();
    let sent = produce(cfg, &topic, &keys(40), 100);
    let group = format!("g-{topic}");
    let ra = Arc::new(Recorder::default());
    let rb = Arc::new(Recorder::default());
    let mut a = consumer(
        cfg,
        ConsumerOptions {
            listener: Some(ra.clone()),
            ..opts(&topic, Some(&group))
        },
    )
    .unwrap();
    let mut seen: Vec<(String, usize)> = Vec::new();
    // A alone: it owns everything. Read a little, committing as we go.
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 500 && Instant::now() < deadline {
        let batch = a.poll(100, Duration::from_millis(200)).unwrap();
        commit_all(a.as_mut(), &batch);
        seen.extend(batch.iter().map(parse));
    }
    assert_eq!(
        a.assignment(),
        vec![0, 1, 2, 3],
        "a lone member owns every partition"
    );

    let mut b = consumer(
        cfg,
        ConsumerOptions {
            listener: Some(rb.clone()),
            ..opts(&topic, Some(&group))
        },
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut split = false;
    while (seen.len() < sent.len() || !split) && Instant::now() < deadline {
        for c in [&mut a, &mut b] {
            let batch = c.poll(100, Duration::from_millis(100)).unwrap();
            commit_all(c.as_mut(), &batch);
            seen.extend(batch.iter().map(parse));
        }
        let (pa, pb) = (a.assignment(), b.assignment());
        split = !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == 4;
    }
    let (pa, pb): (BTreeSet<i32>, BTreeSet<i32>) = (
        a.assignment().into_iter().collect(),
        b.assignment().into_iter().collect(),
    );
    assert!(split, "both members got partitions: {pa:?} {pb:?}");
    assert!(
        pa.is_disjoint(&pb),
        "no partition has two owners: {pa:?} {pb:?}"
    );
    assert_eq!(pa.union(&pb).copied().collect::<Vec<_>>(), vec![0, 1, 2, 3]);

    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), sent.len(), "nothing lost");
    assert_eq!(
        seen.len(),
        sent.len(),
        "nothing delivered twice across the rebalance"
    );

    let revoked: Vec<i32> = ra
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|(kind, _)| *kind == '-')
        .flat_map(|(_, p)| p.clone())
        .collect();
    for p in &pb {
        assert!(
            revoked.contains(p),
            "a was told before partition {p} moved to b"
        );
    }
    let assigned_b: BTreeSet<i32> = rb
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|(kind, _)| *kind == '+')
        .flat_map(|(_, p)| p.clone())
        .collect();
    assert!(pb.is_subset(&assigned_b), "b was told of its partitions");
}

pub fn a_restarted_member_resumes_from_committed_offsets(cfg: &BusConfig) {
    let topic = unique_topic("resume");
    ensure_topic(cfg, &topic, 2, 1).unwrap();
    let sent = produce(cfg, &topic, &keys(5), 200);
    let group = format!("g-{topic}");
    let mut first: Vec<(String, usize)> = Vec::new();
    {
        let mut c = consumer(cfg, opts(&topic, Some(&group))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while first.len() < 400 && Instant::now() < deadline {
            let batch = c.poll(50, Duration::from_millis(200)).unwrap();
            commit_all(c.as_mut(), &batch);
            first.extend(batch.iter().map(parse));
        }
        // Read but never committed: these must come again.
        let uncommitted = c.poll(50, Duration::from_secs(5)).unwrap();
        assert!(!uncommitted.is_empty());
    }
    assert!(first.len() >= 400);
    let mut c = consumer(cfg, opts(&topic, Some(&group))).unwrap();
    let rest_batch = drain(
        c.as_mut(),
        sent.len() - first.len(),
        Duration::from_secs(90),
    );
    commit_all(c.as_mut(), &rest_batch);
    let rest: Vec<(String, usize)> = rest_batch.iter().map(parse).collect();
    drop(c);
    // A member that starts where everything is committed gets no message, and still sees that it is at
    // the end (on Kafka the committed offset can be a transaction marker's, one short of the end).
    let mut c = consumer(cfg, opts(&topic, Some(&group))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(c.poll(50, Duration::from_millis(200)).unwrap().is_empty());
        let lag = c.lag().unwrap();
        if lag.len() == 2 && lag.iter().all(|l| l.lag() == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "never at the end: {lag:?}");
    }
    let a: BTreeSet<_> = first.iter().cloned().collect();
    let b: BTreeSet<_> = rest.iter().cloned().collect();
    assert!(a.is_disjoint(&b), "nothing committed is read again");
    assert_eq!(
        first.len() + rest.len(),
        sent.len(),
        "nothing lost or repeated"
    );
    assert_eq!(a.union(&b).count(), sent.len());
}

/// A message is delivered within its linger time without any `flush`: a slow feed is not held back
/// until a batch fills up.
pub fn a_lone_message_arrives_without_flush(cfg: &BusConfig) {
    let topic = unique_topic("lone");
    ensure_topic(cfg, &topic, 1, 1).unwrap();
    let mut c = consumer(cfg, opts(&topic, None)).unwrap();
    let mut p = producer(cfg, &topic).unwrap();
    for i in 0..3 {
        let sent = Instant::now();
        p.send(b"K", format!("K:{i}").as_bytes(), 0).unwrap();
        let got = drain(c.as_mut(), 1, Duration::from_secs(10));
        assert_eq!(got.len(), 1, "message {i} not delivered without flush");
        assert_eq!(parse(&got[0]), ("K".to_string(), i));
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "{:?}",
            sent.elapsed()
        );
    }
    // Delivery reports reach the producer asynchronously (Kafka): flush waits for them.
    assert_eq!(p.flush().unwrap().acked, 3);
}

/// Reads as `sink --once` and `consume` do: until a poll finds nothing and every partition's lag is 0.
fn read_to_the_end(c: &mut dyn Consumer) -> Vec<Message> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    loop {
        let batch = c.poll(1000, Duration::from_secs(1)).expect("poll");
        if batch.is_empty() {
            let lag = c.lag().expect("lag");
            if !lag.is_empty() && lag.iter().all(|l| l.lag() == 0) {
                return got;
            }
        }
        got.extend(batch);
        assert!(Instant::now() < deadline, "never at the end: {got:?}");
    }
}

/// The end a reader reached stops being the end when messages come after it, or when it seeks back.
pub fn the_end_moves_with_new_messages_and_seeks(cfg: &BusConfig) {
    let topic = unique_topic("end");
    ensure_topic(cfg, &topic, 2, 1).unwrap();
    let keys = keys(4);
    produce(cfg, &topic, &keys, 50);
    let mut c = consumer(cfg, opts(&topic, None)).unwrap();
    let first = read_to_the_end(c.as_mut());
    assert_eq!(first.len(), 200);
    for p in [0, 1] {
        assert!(
            first.iter().any(|m| m.partition == p),
            "keys in partition {p}"
        );
    }
    produce(cfg, &topic, &keys, 30);
    // A few of the new messages: the rest are ahead, and the lag says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut second = Vec::new();
    while second.is_empty() && Instant::now() < deadline {
        second = c.poll(5, Duration::from_millis(200)).unwrap();
    }
    let lag = c.lag().unwrap();
    assert!(
        lag.iter().map(|l| l.lag()).sum::<i64>() > 0,
        "{} of 120 read, and no lag: {lag:?}",
        second.len()
    );
    second.extend(read_to_the_end(c.as_mut()));
    assert_eq!(
        second.len(),
        120,
        "the messages sent after the end was reached"
    );
    for m in &second {
        let before = first.iter().filter(|f| f.partition == m.partition);
        assert!(before.map(|f| f.offset).all(|o| o < m.offset), "{m:?}");
    }
    // Back to the start of partition 0: its messages are ahead again.
    c.seek(0, 0).unwrap();
    let lag = c.lag().unwrap();
    let p0 = lag.iter().find(|l| l.partition == 0).unwrap();
    let count = |ms: &[Message]| ms.iter().filter(|m| m.partition == 0).count() as i64;
    assert!(p0.lag() >= count(&first) + count(&second), "{lag:?}");
    let again = read_to_the_end(c.as_mut());
    assert_eq!(count(&again), count(&first) + count(&second));
    assert!(
        again.iter().all(|m| m.partition == 0),
        "only partition 0 was moved"
    );
}

mod embedded {
    use super::*;

    #[test]
    fn lone_message() {
        a_lone_message_arrives_without_flush(&embedded_bus().config);
    }

    #[test]
    fn keyed_order() {
        keyed_messages_keep_order_in_their_partition(&embedded_bus().config);
    }

    #[test]
    fn group_split() {
        a_group_of_two_splits_partitions_exactly_once(&embedded_bus().config);
    }

    #[test]
    fn resume() {
        a_restarted_member_resumes_from_committed_offsets(&embedded_bus().config);
    }

    #[test]
    fn the_end_moves() {
        the_end_moves_with_new_messages_and_seeks(&embedded_bus().config);
    }

    #[test]
    fn missing_topic_and_bad_names_are_clear_errors() {
        let bus = embedded_bus();
        let err = producer(&bus.config, "nope").err().unwrap().to_string();
        assert!(err.contains("topic \"nope\" does not exist"), "{err}");
        let err = ensure_topic(&bus.config, "../../etc", 1, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid topic name"), "{err}");
        let err = consumer(&bus.config, opts("a/b", None))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("invalid topic name"), "{err}");
    }

    /// The consumer reads a partition's next batches ahead while its caller works. Seeks back and
    /// forward, and messages appended after a read ahead found the end of the log, still come in
    /// offset order, each once.
    #[test]
    fn seeks_and_reads_ahead_keep_offset_order() {
        let bus = embedded_bus();
        ensure_topic(&bus.config, "t", 1, 1).unwrap();
        let mut p = producer(&bus.config, "t").unwrap();
        let mut send = |from: usize, to: usize| {
            for i in from..to {
                p.send(b"k", format!("k:{i}").as_bytes(), 1_700_000_000_000)
                    .unwrap();
                if i % 500 == 499 {
                    p.flush().unwrap();
                }
            }
            p.flush().unwrap();
        };
        send(0, 20_000);
        let mut c = consumer(&bus.config, opts("t", None)).unwrap();
        let offsets = |c: &mut Box<dyn Consumer>, want: usize| -> Vec<i64> {
            let mut got = Vec::new();
            while got.len() < want {
                let batch = c.poll(want - got.len(), Duration::from_secs(5)).unwrap();
                assert!(!batch.is_empty(), "nothing after {got:?}");
                for m in &batch {
                    assert_eq!(
                        parse(m).1 as i64,
                        m.offset,
                        "the payload of offset {}",
                        m.offset
                    );
                }
                got.extend(batch.iter().map(|m| m.offset));
            }
            got
        };
        assert_eq!(offsets(&mut c, 3_000), (0..3_000).collect::<Vec<_>>());
        // Each seek comes after the read ahead of the batches after the buffer had time to finish.
        std::thread::sleep(Duration::from_millis(300));
        c.seek(0, 50).unwrap();
        assert_eq!(offsets(&mut c, 1_000), (50..1_050).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(300));
        c.seek(0, 15_000).unwrap();
        assert_eq!(offsets(&mut c, 5_000), (15_000..20_000).collect::<Vec<_>>());
        // At the end: the read ahead found nothing. What comes next is read all the same.
        assert!(c.poll(10, Duration::from_millis(300)).unwrap().is_empty());
        send(20_000, 21_000);
        assert_eq!(offsets(&mut c, 1_000), (20_000..21_000).collect::<Vec<_>>());
    }

    #[test]
    fn reader_cannot_commit_and_stale_member_is_fenced() {
        let bus = embedded_bus();
        ensure_topic(&bus.config, "t", 2, 1).unwrap();
        let mut r = consumer(&bus.config, opts("t", None)).unwrap();
        assert!(r.commit(&[(0, 1)]).is_err());
        let mut a = consumer(&bus.config, opts("t", Some("g"))).unwrap();
        a.poll(1, Duration::from_millis(10)).unwrap();
        assert_eq!(a.assignment(), vec![0, 1]);
        let mut b = consumer(&bus.config, opts("t", Some("g"))).unwrap();
        b.poll(1, Duration::from_millis(10)).unwrap();
        assert!(
            b.assignment().is_empty(),
            "partitions are not taken from a live owner"
        );
        let err = b.commit(&[(0, 5)]).unwrap_err().to_string();
        assert!(err.contains("not assigned to this consumer"), "{err}");
    }
}

mod kafka {
    use super::*;

    #[test]
    fn lone_message() {
        a_lone_message_arrives_without_flush(&kafka_bus().config);
    }

    #[test]
    fn keyed_order() {
        keyed_messages_keep_order_in_their_partition(&kafka_bus().config);
    }

    #[test]
    fn group_split() {
        a_group_of_two_splits_partitions_exactly_once(&kafka_bus().config);
    }

    #[test]
    fn resume() {
        a_restarted_member_resumes_from_committed_offsets(&kafka_bus().config);
    }

    #[test]
    fn the_end_moves() {
        the_end_moves_with_new_messages_and_seeks(&kafka_bus().config);
    }

    #[test]
    fn unreachable_broker_is_a_clear_error() {
        let cfg = BusConfig::Kafka {
            brokers: "127.0.0.1:1".into(),
            settings: vec![("socket.connection.setup.timeout.ms".into(), "1000".into())],
        };
        let err = ensure_topic(&cfg, "t", 1, 1).unwrap_err().to_string();
        assert!(err.contains("cannot reach the brokers"), "{err}");
    }

    /// Messages are read in batches from a queue of their own, fetched ahead: after a seek back or
    /// forward, what was fetched before it is dropped and the partition goes on from the new offset,
    /// in order. (The embedded log's twin above also flushes every 500 messages; here each commit
    /// would put a transaction marker between offsets, so the messages go in one 5 s transaction and
    /// message `i` is at offset `i`.)
    #[test]
    fn seeks_keep_offset_order() {
        let bus = kafka_bus();
        let topic = unique_topic("seek");
        ensure_topic(&bus.config, &topic, 1, 1).unwrap();
        let one_transaction = ProducerOptions {
            transaction_span: Some(Duration::from_secs(5)),
        };
        produce_with(&bus.config, &topic, &keys(1), 20_000, &one_transaction);
        let mut c = consumer(&bus.config, opts(&topic, None)).unwrap();
        let seqs = |c: &mut Box<dyn Consumer>, want: usize| -> Vec<usize> {
            let got = drain(c.as_mut(), want, Duration::from_secs(30));
            got.iter()
                .take(want)
                .map(|m| {
                    let seq = parse(m).1;
                    assert_eq!(seq as i64, m.offset, "payload of offset {}", m.offset);
                    seq
                })
                .collect()
        };
        assert_eq!(seqs(&mut c, 3_000), (0..3_000).collect::<Vec<_>>());
        // The consumer has fetched ahead by now.
        std::thread::sleep(Duration::from_millis(300));
        c.seek(0, 50).unwrap();
        assert_eq!(seqs(&mut c, 1_000), (50..1_050).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(300));
        c.seek(0, 15_000).unwrap();
        assert_eq!(seqs(&mut c, 5_000), (15_000..20_000).collect::<Vec<_>>());
    }

    /// With a transaction committed every 10 ms, many messages are sent while one commits: they wait
    /// in the producer, and still reach the topic once each and in send order per key.
    #[test]
    fn sends_during_commits_arrive_once_in_order() {
        let bus = kafka_bus();
        let topic = unique_topic("commits");
        ensure_topic(&bus.config, &topic, 2, 1).unwrap();
        let keys = keys(5);
        let per_key = 40_000;
        let options = ProducerOptions {
            transaction_span: Some(Duration::from_millis(10)),
        };
        let sent = produce_with(&bus.config, &topic, &keys, per_key, &options);
        let mut c = consumer(&bus.config, opts(&topic, None)).unwrap();
        let got = drain(c.as_mut(), sent.len(), Duration::from_secs(60));
        assert_eq!(got.len(), sent.len(), "each message once");
        let mut per_key_got: HashMap<String, Vec<usize>> = HashMap::new();
        for m in &got {
            let (k, seq) = parse(m);
            per_key_got.entry(k).or_default().push(seq);
        }
        for k in &keys {
            assert!(
                per_key_got[k].iter().copied().eq(0..per_key),
                "{k} in send order"
            );
        }
    }
}
