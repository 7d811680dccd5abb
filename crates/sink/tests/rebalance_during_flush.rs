//! A rebalance that lands while a flush's files are being written.
//!
//! Member A of a consumer group claims its checkpoint's ranges in the lake's ledger and starts writing
//! the files, each of which takes seconds (A reaches the lake, a bucket of the moto S3 server that
//! `scripts/test.sh` starts, through `object_store`'s `ThrottledStore`). While they are in flight,
//! member B joins, and the group moves a partition from A to B. A goes on writing the files of its
//! claimed ranges but must not commit the moved partition's offsets; B must resume that partition from
//! the ledger and write A's range again (the same files). The lake must end with every record once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMicrosecondType;
use futures::TryStreamExt;
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use ticklake_bus::BusConfig;
use ticklake_sink::{
    FileFormat, FlushPolicy, Lake, PartitionBy, Sink, SinkConfig, Stats, TableFormat,
    DEFAULT_MAX_MESSAGE_BYTES,
};

const TABLE: &str = "ticks";
const RECORDS: usize = 6_000;
const SYMBOLS: usize = 20;

/// Runs `f` on a runtime of the test's own (the S3 client needs one).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    static RUNTIME: LazyLock<tokio::runtime::Runtime> =
        LazyLock::new(|| tokio::runtime::Runtime::new().unwrap());
    RUNTIME.block_on(f)
}

/// A new bucket of the moto server, as a lake.
fn new_lake() -> Lake {
    let url = std::env::var("TICKLAKE_TEST_S3")
        .expect("TICKLAKE_TEST_S3 is not set: run scripts/test.sh, which starts a moto S3 server");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let bucket = format!("moved-{nanos}");
    ureq::put(&format!("{url}/{bucket}"))
        .send_empty()
        .expect("create the bucket on moto");
    let settings = [
        ("aws_endpoint", url.as_str()),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "testing"),
        ("aws_secret_access_key", "testing"),
        ("aws_region", "us-east-1"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    Lake::open_with(&format!("s3://{bucket}"), &settings).unwrap()
}

/// The same lake, each of whose writes waits `put_delay` first.
fn slowed(lake: &Lake, put_delay: Duration) -> Lake {
    let Lake::Object { store, prefix, url } = lake.clone() else {
        panic!("an S3 lake");
    };
    let config = ThrottleConfig {
        wait_put_per_call: put_delay,
        ..ThrottleConfig::default()
    };
    Lake::Object {
        store: Arc::new(ThrottledStore::new(store, config)),
        prefix,
        url,
    }
}

/// The paths of the lake's objects under `prefix` ending in `ext`.
fn objects(lake: &Lake, prefix: &str, ext: &str) -> Vec<object_store::path::Path> {
    let Lake::Object { store, .. } = lake else {
        panic!("an S3 lake");
    };
    let prefix = object_store::path::Path::from(prefix);
    let listed: Vec<_> = block_on(store.list(Some(&prefix)).try_collect()).unwrap();
    listed
        .into_iter()
        .map(|o: object_store::ObjectMeta| o.location)
        .filter(|p| p.as_ref().ends_with(ext))
        .collect()
}

fn config(topic: &str) -> SinkConfig {
    SinkConfig {
        topic: topic.into(),
        group: format!("{topic}_lake"),
        table: TABLE.into(),
        // One file per Kafka partition and flush, so that A's flush is a few slow writes.
        partition_by: PartitionBy::Keys("none".parse().unwrap()),
        format: FileFormat::Parquet,
        // A's first checkpoint is the whole topic, whichever partition's messages come first; a
        // replayed range is flushed as soon as it is read, whatever the limits.
        flush: FlushPolicy {
            records: RECORDS,
            bytes: 256 << 20,
            interval: Duration::from_secs(60),
        },
        once: false,
        catalog: None,
        max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        dlq_topic: None,
        table_format: TableFormat::Hive,
        iceberg: None,
        written: None,
    }
}

/// A sink running on its own thread until `stop` is raised.
fn start(
    bus: &BusConfig,
    lake: Lake,
    config: SinkConfig,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Stats> {
    let bus = bus.clone();
    std::thread::spawn(move || {
        let mut sink = Sink::new(&bus, lake, config).unwrap();
        sink.run(&stop, &mut |_| {}).unwrap()
    })
}

/// Waits up to `limit` for `done`.
fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every (symbol, epoch second) row of the table's Parquet files.
fn lake_rows(lake: &Lake) -> Vec<(String, i64)> {
    let Lake::Object { store, .. } = lake else {
        panic!("an S3 lake");
    };
    let mut rows = Vec::new();
    for path in objects(lake, TABLE, ".parquet") {
        let bytes = block_on(async { store.get(&path).await?.bytes().await }).unwrap();
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
        {
            let batch = batch.unwrap();
            let symbol = batch.column_by_name("symbol").unwrap().as_string::<i32>();
            let ts = batch
                .column_by_name("ts")
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>();
            assert_eq!(symbol.null_count() + ts.null_count(), 0);
            for i in 0..batch.num_rows() {
                rows.push((symbol.value(i).to_owned(), ts.value(i) / 1_000_000));
            }
        }
    }
    rows.sort();
    rows
}

/// `put_delay`: how long each write to A's lake takes, the window in which B joins and the group
/// moves a partition.
fn a_partition_moved_while_its_files_are_written_lands_once(
    bus: BusConfig,
    topic: &str,
    put_delay: Duration,
) {
    let lake = new_lake();
    ticklake_bus::ensure_topic(&bus, topic, 2, 1).unwrap();
    let mut expected = Vec::with_capacity(RECORDS);
    {
        let mut producer = ticklake_bus::producer(&bus, topic).unwrap();
        for i in 0..RECORDS {
            let symbol = format!("S{}", i % SYMBOLS);
            let ts = 1_700_000_000 + i as i64;
            let payload = format!(r#"{{"symbol":"{symbol}","ts":{ts},"close":{i}.5}}"#);
            producer
                .send(symbol.as_bytes(), payload.as_bytes(), ts * 1000)
                .unwrap();
            expected.push((symbol, ts));
        }
        assert_eq!(producer.flush().unwrap().failed, 0);
    }
    expected.sort();

    // A alone takes both partitions and flushes them as one checkpoint: two claims, then two files.
    let stop_a = Arc::new(AtomicBool::new(false));
    let a = start(
        &bus,
        slowed(&lake, put_delay),
        config(topic),
        stop_a.clone(),
    );
    let ledger = format!("_ticklake/ledger/{TABLE}/{topic}");
    wait_for(
        Duration::from_secs(90),
        "A's claims of both partitions",
        || (0..2).all(|p| !objects(&lake, &format!("{ledger}/{p}"), ".json").is_empty()),
    );
    // The claims are made: A's files are in flight for `put_delay`. B joins now.
    assert!(
        objects(&lake, TABLE, ".parquet").is_empty(),
        "A's files were written before B could join: raise the put delay"
    );
    let stop_b = Arc::new(AtomicBool::new(false));
    let b = start(&bus, lake.clone(), config(topic), stop_b.clone());
    // A's files land, and B writes the moved partition's range again from the ledger.
    wait_for(Duration::from_secs(90), "A's files", || {
        objects(&lake, TABLE, ".parquet").len() >= 2
    });
    std::thread::sleep(Duration::from_secs(2));
    stop_b.store(true, Ordering::Relaxed);
    stop_a.store(true, Ordering::Relaxed);
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert!(
        b.rewritten > 0,
        "B took a partition whose range A had claimed and was writing, and wrote it again: {b:?}"
    );
    assert_eq!(
        a.records + b.records,
        RECORDS as u64,
        "every record counted once: a {a:?}, b {b:?}"
    );

    // Whatever a last sink of the group finds left, it writes; the lake then holds every record once.
    let mut once = config(topic);
    once.once = true;
    let rest = Sink::new(&bus, lake.clone(), once)
        .unwrap()
        .run(&AtomicBool::new(false), &mut |_| {})
        .unwrap();
    assert_eq!(rest.records, 0, "{rest:?}");
    assert_eq!(lake_rows(&lake), expected);
}

#[test]
fn moved_while_written_embedded() {
    let log = tempfile::tempdir().unwrap();
    let bus = BusConfig::Embedded {
        dir: log.path().to_owned(),
    };
    a_partition_moved_while_its_files_are_written_lands_once(bus, "ticks", Duration::from_secs(3));
}

/// On Apache Kafka the group's rebalance goes through the broker's coordinator: a longer window.
#[test]
fn moved_while_written_kafka() {
    let brokers = std::env::var("TICKLAKE_TEST_KAFKA")
        .expect("TICKLAKE_TEST_KAFKA is not set: run scripts/test.sh, which starts a broker");
    let bus = BusConfig::Kafka {
        brokers,
        settings: Vec::new(),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let topic = format!("moved_while_written_{nanos}");
    a_partition_moved_while_its_files_are_written_lands_once(bus, &topic, Duration::from_secs(8));
}
