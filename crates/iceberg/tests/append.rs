//! Appends to a real Iceberg table (the SQL catalog on SQLite, files on local disk), read back with
//! the Iceberg library's own scan.

use std::sync::Arc;

use arrow_array::{Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use ticklake_iceberg::{Appended, IcebergLake, OffsetRange};

const DAY_US: i64 = 86_400_000_000;

/// `n` records: symbols A/B/C in turn, one a minute from day `day` (days since 1970), close = i.
fn batch(n: usize, day: i64, extra: Option<&str>) -> RecordBatch {
    let mut fields = vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("close", DataType::Float64, true),
    ];
    let symbols = ["A", "B", "C"];
    let mut columns: Vec<arrow_array::ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| symbols[i % 3]),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                (0..n as i64).map(|i| day * DAY_US + i * 60_000_000),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64))),
    ];
    if let Some(name) = extra {
        fields.push(Field::new(name, DataType::Float64, true));
        columns.push(Arc::new(Float64Array::from_iter_values(
            (0..n).map(|i| i as f64 * 2.0),
        )));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

async fn rows(lake: &IcebergLake, table: &str) -> usize {
    let batches = lake.read(table).await.unwrap();
    batches.iter().map(RecordBatch::num_rows).sum()
}

fn range(partition: i32, from: i64, to: i64) -> OffsetRange {
    OffsetRange {
        partition,
        from,
        to,
    }
}

#[tokio::test]
async fn appends_carry_offsets_and_a_stale_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lake = IcebergLake::embedded(dir.path()).await.unwrap();
    assert!(lake.offsets("ticks", "t").await.unwrap().is_empty());

    // Two days of records in one checkpoint of two partitions.
    let first = [batch(1000, 19_000, None), batch(500, 19_001, None)];
    let done = lake
        .append("ticks", "t", &[range(0, 0, 700), range(1, 0, 800)], &first)
        .await
        .unwrap();
    assert!(
        matches!(done, Appended::Committed { files, .. } if files >= 2),
        "{done:?}"
    );
    assert_eq!(rows(&lake, "ticks").await, 1500);
    let offsets = lake.offsets("ticks", "t").await.unwrap();
    assert_eq!(
        offsets.into_iter().collect::<Vec<_>>(),
        [(0, 700), (1, 800)]
    );

    // Partition 1 goes on; partition 0 is not in this append and keeps its end.
    let done = lake
        .append(
            "ticks",
            "t",
            &[range(1, 800, 900)],
            &[batch(100, 19_002, None)],
        )
        .await
        .unwrap();
    assert!(matches!(done, Appended::Committed { .. }), "{done:?}");
    let offsets = lake.offsets("ticks", "t").await.unwrap();
    assert_eq!(
        offsets.into_iter().collect::<Vec<_>>(),
        [(0, 700), (1, 900)]
    );

    // A stale writer replays 800..900, and one skips ahead: both refused, nothing added.
    for stale in [range(1, 800, 900), range(1, 950, 1000)] {
        let done = lake
            .append("ticks", "t", &[stale], &[batch(100, 19_002, None)])
            .await
            .unwrap();
        assert_eq!(
            done,
            Appended::Taken {
                partition: 1,
                recorded: Some(900)
            }
        );
    }
    assert_eq!(rows(&lake, "ticks").await, 1600);
    // Another topic's offsets are its own.
    assert!(lake.offsets("ticks", "other").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_new_column_is_added_to_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let lake = IcebergLake::embedded(dir.path()).await.unwrap();
    lake.append("ticks", "t", &[range(0, 0, 10)], &[batch(10, 19_000, None)])
        .await
        .unwrap();
    lake.append(
        "ticks",
        "t",
        &[range(0, 10, 20)],
        &[batch(10, 19_000, Some("adj_close"))],
    )
    .await
    .unwrap();
    let t = lake.load("ticks").await.unwrap().unwrap();
    let schema = t.metadata().current_schema();
    assert!(schema.field_by_name("adj_close").is_some());
    assert_eq!(rows(&lake, "ticks").await, 20);
}

#[tokio::test]
async fn of_two_racing_writers_of_one_range_exactly_one_commits() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Arc::new(IcebergLake::embedded(dir.path()).await.unwrap());
    lake.append("ticks", "t", &[range(0, 0, 10)], &[batch(10, 19_000, None)])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let lake = lake.clone();
        tasks.push(tokio::spawn(async move {
            lake.append(
                "ticks",
                "t",
                &[range(0, 10, 50)],
                &[batch(40, 19_000, None)],
            )
            .await
            .unwrap()
        }));
    }
    let mut committed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Appended::Committed { .. } => committed += 1,
            Appended::Taken { recorded, .. } => assert_eq!(recorded, Some(50)),
        }
    }
    assert_eq!(committed, 1);
    assert_eq!(rows(&lake, "ticks").await, 50);
}

/// The rows of the table as sorted (symbol, ts, close) triples.
async fn contents(lake: &IcebergLake, table: &str) -> Vec<(String, i64, u64)> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, TimestampMicrosecondType};
    let mut out = Vec::new();
    for b in lake.read(table).await.unwrap() {
        let symbol = b.column_by_name("symbol").unwrap().as_string::<i32>();
        let ts = b
            .column_by_name("ts")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        let close = b
            .column_by_name("close")
            .unwrap()
            .as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            out.push((
                symbol.value(i).to_owned(),
                ts.value(i),
                close.value(i).to_bits(),
            ));
        }
    }
    out.sort();
    out
}

/// Ten small appends over two days, one of them with an extra column: compaction merges each day
/// into one file sorted by symbol and ts in one `replace` snapshot, with the same rows; expiring the
/// old snapshots and deleting the files they alone referenced keeps the offsets, so the next append
/// must still start where the table ends.
#[tokio::test]
async fn compaction_merges_small_files_and_keeps_rows_and_offsets() {
    use ticklake_iceberg::CompactOptions;
    let dir = tempfile::tempdir().unwrap();
    let lake = IcebergLake::embedded(dir.path()).await.unwrap();
    for i in 0..10i64 {
        let day = 19_000 + i % 2;
        let b = batch(300, day, (i == 7).then_some("extra"));
        let done = lake
            .append("t", "feed", &[range(0, i * 300, (i + 1) * 300)], &[b])
            .await
            .unwrap();
        assert!(matches!(done, Appended::Committed { .. }), "{done:?}");
    }
    let before = contents(&lake, "t").await;
    assert_eq!(before.len(), 3000);
    let parts = lake.partitions("t").await.unwrap();
    assert_eq!(parts.len(), 2);
    assert!(parts.iter().all(|p| p.files == 5), "{parts:?}");

    // Nothing is old enough yet: nothing is merged, nothing expired.
    let waiting = CompactOptions {
        older_than: std::time::Duration::from_secs(3600),
        ..CompactOptions::default()
    };
    let done = lake.compact("t", &waiting).await.unwrap();
    assert_eq!(done.files_removed, 0, "{done:?}");
    assert_eq!(done.snapshots_expired, 0, "{done:?}");

    let now = CompactOptions {
        older_than: std::time::Duration::ZERO,
        retention: std::time::Duration::ZERO,
        ..CompactOptions::default()
    };
    let done = lake.compact("t", &now).await.unwrap();
    assert_eq!(
        (done.partitions, done.files_removed, done.files_added),
        (2, 10, 2),
        "{done:?}"
    );
    assert_eq!(done.records, 3000);
    assert_eq!(done.snapshots_expired, 10, "{done:?}");
    assert!(done.files_deleted >= 10, "{done:?}");
    assert_eq!(contents(&lake, "t").await, before);
    let parts = lake.partitions("t").await.unwrap();
    assert!(parts.iter().all(|p| p.files == 1), "{parts:?}");
    let data_files = std::fs::read_dir(dir.path().join("t/data"))
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum::<usize>();
    assert_eq!(data_files, 2, "the merged-away files are deleted");

    // The offsets outlive the snapshots that recorded them.
    let offsets = lake.offsets("t", "feed").await.unwrap();
    assert_eq!(offsets.get(&0), Some(&3000));
    let stale = lake
        .append(
            "t",
            "feed",
            &[range(0, 2700, 3300)],
            &[batch(600, 19_001, None)],
        )
        .await
        .unwrap();
    assert!(matches!(stale, Appended::Taken { .. }), "{stale:?}");
    let next = lake
        .append(
            "t",
            "feed",
            &[range(0, 3000, 3300)],
            &[batch(300, 19_001, None)],
        )
        .await
        .unwrap();
    assert!(matches!(next, Appended::Committed { .. }), "{next:?}");
    assert_eq!(rows(&lake, "t").await, 3300);
    // A second compaction merges the new small file into the day's file.
    let done = lake.compact("t", &now).await.unwrap();
    assert_eq!((done.files_removed, done.files_added), (2, 1), "{done:?}");
    assert_eq!(rows(&lake, "t").await, 3300);
    assert_eq!(
        lake.offsets("t", "feed").await.unwrap().get(&0),
        Some(&3300)
    );
}

/// Appends racing a compaction: every append lands, the compaction retries its commit on the fresh
/// table, and no row is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_beside_a_compaction_lose_nothing() {
    use ticklake_iceberg::CompactOptions;
    let dir = tempfile::tempdir().unwrap();
    let lake = Arc::new(IcebergLake::embedded(dir.path()).await.unwrap());
    for i in 0..6i64 {
        lake.append(
            "t",
            "feed",
            &[range(0, i * 100, (i + 1) * 100)],
            &[batch(100, 19_000, None)],
        )
        .await
        .unwrap();
    }
    let writer = {
        let lake = lake.clone();
        tokio::spawn(async move {
            for i in 6..30i64 {
                let done = lake
                    .append(
                        "t",
                        "feed",
                        &[range(0, i * 100, (i + 1) * 100)],
                        &[batch(100, 19_000 + i % 3, None)],
                    )
                    .await
                    .unwrap();
                assert!(matches!(done, Appended::Committed { .. }), "{done:?}");
            }
        })
    };
    let options = CompactOptions {
        older_than: std::time::Duration::ZERO,
        retention: std::time::Duration::ZERO,
        ..CompactOptions::default()
    };
    let mut merged = 0;
    while !writer.is_finished() {
        merged += lake.compact("t", &options).await.unwrap().files_removed;
    }
    writer.await.unwrap();
    merged += lake.compact("t", &options).await.unwrap().files_removed;
    assert!(merged > 0);
    assert_eq!(rows(&lake, "t").await, 3000);
    assert_eq!(
        lake.offsets("t", "feed").await.unwrap().get(&0),
        Some(&3000)
    );
}
