//! Retention of the embedded log: by size and by age, offsets going on after deletion, a log made
//! before retention existed, and the error on Kafka.

use std::time::{Duration, Instant};

use ticklake_bus::embedded::Retention;
use ticklake_bus::{
    consumer, ensure_topic, producer, set_retention, BusConfig, ConsumerOptions, Message, StartAt,
};

fn bus() -> (tempfile::TempDir, BusConfig) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = BusConfig::Embedded {
        dir: dir.path().to_path_buf(),
    };
    (dir, config)
}

/// Sends `n` messages `round:i` with one producer, flushed (each producer applies retention once it
/// has appended its first batch).
fn produce_round(cfg: &BusConfig, round: usize, n: usize) {
    let mut p = producer(cfg, "t").expect("producer");
    for i in 0..n {
        p.send(b"k", format!("{round}:{i}").as_bytes(), 1_700_000_000_000)
            .expect("send");
    }
    let d = p.flush().expect("flush");
    assert_eq!((d.acked, d.failed), (n as u64, 0), "{d:?}");
}

/// Everything the topic holds, read from its start.
fn read_all(cfg: &BusConfig) -> Vec<Message> {
    let mut c = consumer(
        cfg,
        ConsumerOptions {
            topic: "t".into(),
            group: None,
            start: StartAt::Earliest,
            listener: None,
        },
    )
    .expect("consumer");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let batch = c.poll(10_000, Duration::from_millis(300)).expect("poll");
        if batch.is_empty() || Instant::now() > deadline {
            break;
        }
        got.extend(batch);
    }
    got
}

fn payloads(ms: &[Message]) -> Vec<String> {
    ms.iter()
        .map(|m| String::from_utf8(m.payload.clone().unwrap().to_vec()).unwrap())
        .collect()
}

/// Offsets are contiguous from the first kept one to the end.
fn assert_contiguous(ms: &[Message], last: i64) {
    assert!(!ms.is_empty(), "the newest batch is always kept");
    let first = ms[0].offset;
    let offsets: Vec<i64> = ms.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (first..=last).collect::<Vec<_>>());
}

#[test]
fn retention_by_size_keeps_the_newest_batch_and_offsets_go_on() {
    let (_dir, cfg) = bus();
    ensure_topic(&cfg, "t", 1, 1).unwrap();
    for round in 0..3 {
        produce_round(&cfg, round, 100);
    }
    assert_eq!(read_all(&cfg).len(), 300, "no limit yet: everything kept");

    // One byte per partition: only each partition's newest batch stays.
    set_retention(
        &cfg,
        "t",
        &Retention {
            max_age: None,
            max_bytes: Some(1),
        },
    )
    .unwrap();
    produce_round(&cfg, 3, 100);
    let kept = read_all(&cfg);
    assert!(
        kept[0].offset >= 300,
        "the batches of rounds 0-2 are deleted, first kept offset {}",
        kept[0].offset
    );
    assert_contiguous(&kept, 399);
    let last = payloads(&kept);
    assert_eq!(last.last().map(String::as_str), Some("3:99"));
    assert!(last.iter().all(|p| p.starts_with("3:")), "{last:?}");

    // The offsets go on after the deleted ones.
    produce_round(&cfg, 4, 10);
    let kept = read_all(&cfg);
    assert_contiguous(&kept, 409);
    assert_eq!(payloads(&kept).last().map(String::as_str), Some("4:9"));
}

#[test]
fn retention_by_age_deletes_what_was_appended_before_the_limit() {
    let (_dir, cfg) = bus();
    ensure_topic(&cfg, "t", 2, 1).unwrap();
    produce_round(&cfg, 0, 50);
    std::thread::sleep(Duration::from_millis(1500));
    set_retention(
        &cfg,
        "t",
        &Retention {
            max_age: Some(Duration::from_secs(1)),
            max_bytes: None,
        },
    )
    .unwrap();
    // The record timestamps (2023) play no part: the append time does.
    produce_round(&cfg, 1, 50);
    let kept = payloads(&read_all(&cfg));
    assert_eq!(kept.len(), 50, "{kept:?}");
    assert!(kept.iter().all(|p| p.starts_with("1:")), "{kept:?}");
}

#[test]
fn a_log_made_before_retention_gets_its_append_times() {
    let (dir, cfg) = bus();
    ensure_topic(&cfg, "t", 1, 1).unwrap();
    produce_round(&cfg, 0, 10);
    // The schema of a log from before retention: no append time.
    let db = dir.path().join("t").join("log.sqlite");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("ALTER TABLE batches DROP COLUMN appended_ms")
        .unwrap();
    set_retention(
        &cfg,
        "t",
        &Retention {
            max_age: Some(Duration::from_secs(3600)),
            max_bytes: None,
        },
    )
    .unwrap();
    produce_round(&cfg, 1, 10);
    // Its old batches count as appended when the column was added: within the hour, so kept.
    let kept = read_all(&cfg);
    assert_eq!(kept.len(), 20);
    assert_contiguous(&kept, 19);
}

#[test]
fn retention_on_kafka_points_to_the_topic_configs() {
    let cfg = BusConfig::Kafka {
        brokers: "127.0.0.1:1".into(),
        settings: vec![],
    };
    let err = set_retention(&cfg, "t", &Retention::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("retention.ms"), "{err}");
}
