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
