//! Splitting a checkpoint's rows by the table's partition, one Iceberg partition value per partition.
//!
//! The iceberg crate's `RecordBatchPartitionSplitter` turns every row's partition value into its own
//! `Struct` literal before grouping: a checkpoint of a million records held a million of them, 160 MB
//! at the sink's peak. Here the values are computed column-wise by the same transforms
//! (`PartitionValueCalculator`), rows are grouped by Arrow's row format of those values, and one
//! `Struct` is made per partition, from its first row.
//!
//! The batches are split one by one, and a batch whose rows all fall in one partition (a sink's group:
//! one symbol on one day) is kept whole, without copying a column.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::row::{OwnedRow, RowConverter, SortField};
use arrow_array::RecordBatch;
use iceberg::arrow::{arrow_struct_to_literal, PartitionValueCalculator};
use iceberg::spec::{Literal, PartitionKey, PartitionSpecRef, SchemaRef};
use iceberg::{Error, ErrorKind};

/// The rows of `batches` (each in the table's Arrow shape) grouped by their partition under `spec`:
/// per partition its key and its rows, as one batch per input batch that has rows in it (in input
/// order, each keeping its rows' order); partitions in the order of their values.
pub(crate) fn split_by_partition(
    batches: &[RecordBatch],
    schema: SchemaRef,
    spec: PartitionSpecRef,
) -> iceberg::Result<Vec<(PartitionKey, Vec<RecordBatch>)>> {
    let calculator = PartitionValueCalculator::try_new(&spec, &schema)?;
    let arrow_err = |e: arrow::error::ArrowError| {
        Error::new(ErrorKind::Unexpected, "grouping rows by partition").with_source(e)
    };
    let mut converter: Option<RowConverter> = None;
    // Per partition: its value (one row of the partition values' struct) and its rows so far.
    let mut partitions: BTreeMap<OwnedRow, (ArrayRef, Vec<RecordBatch>)> = BTreeMap::new();
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let values = calculator.calculate(batch)?;
        let columns = values
            .as_struct_opt()
            .ok_or_else(|| Error::new(ErrorKind::Unexpected, "partition values are not a struct"))?
            .columns()
            .to_vec();
        let converter = match &mut converter {
            Some(c) => c,
            None => converter.insert(
                RowConverter::new(
                    columns
                        .iter()
                        .map(|c| SortField::new(c.data_type().clone()))
                        .collect(),
                )
                .map_err(arrow_err)?,
            ),
        };
        let rows = converter.convert_columns(&columns).map_err(arrow_err)?;
        // Per partition of the batch: its row of values, the index of its first row, its rows. A
        // batch all of one partition is kept whole; another is cut with `take`.
        let first = rows.row(0);
        let pieces = if rows.iter().all(|r| r == first) {
            vec![(first, 0, batch.clone())]
        } else {
            let mut groups: BTreeMap<_, Vec<u32>> = BTreeMap::new();
            for (i, row) in rows.iter().enumerate() {
                let i = u32::try_from(i).map_err(|_| {
                    Error::new(
                        ErrorKind::DataInvalid,
                        "a batch of more than 4 billion rows",
                    )
                })?;
                groups.entry(row).or_default().push(i);
            }
            let mut pieces = Vec::with_capacity(groups.len());
            for (row, indices) in groups {
                let first = indices[0] as usize;
                let part =
                    take_record_batch(batch, &UInt32Array::from(indices)).map_err(arrow_err)?;
                pieces.push((row, first, part));
            }
            pieces
        };
        for (row, first, part) in pieces {
            partitions
                .entry(row.owned())
                .or_insert_with(|| (values.slice(first, 1), Vec::new()))
                .1
                .push(part);
        }
    }
    let mut out = Vec::with_capacity(partitions.len());
    for (value, rows) in partitions.into_values() {
        let value = arrow_struct_to_literal(&value, calculator.partition_type())?
            .pop()
            .flatten();
        let Some(Literal::Struct(value)) = value else {
            return Err(Error::new(
                ErrorKind::DataInvalid,
                "a partition value is not a struct",
            ));
        };
        out.push((
            PartitionKey::new(spec.as_ref().clone(), schema.clone(), value),
            rows,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, StringArray, TimestampMicrosecondArray};
    use iceberg::arrow::{schema_to_arrow_schema, RecordBatchPartitionSplitter};
    use iceberg::spec::{NestedField, PartitionSpec, PrimitiveType, Schema, Transform, Type};

    use super::*;

    /// The library's splitter and this one give the same partitions with the same rows, for a
    /// day-partitioned table (the sink's) and for one partitioned by symbol and day, with a NULL
    /// symbol among the rows; and the same rows when they come as two batches.
    #[test]
    fn splits_as_the_library_does() {
        let schema = Arc::new(
            Schema::builder()
                .with_fields(vec![
                    NestedField::optional(1, "symbol", Type::Primitive(PrimitiveType::String))
                        .into(),
                    NestedField::required(2, "ts", Type::Primitive(PrimitiveType::Timestamptz))
                        .into(),
                    NestedField::optional(3, "close", Type::Primitive(PrimitiveType::Double))
                        .into(),
                ])
                .build()
                .unwrap(),
        );
        let day = 86_400_000_000i64;
        let symbols = [Some("A"), Some("B"), None, Some("A"), Some("B"), Some("A")];
        let ts = [0, 3 * day + 5, day + 1, 2 * day, day - 1, 3 * day];
        let arrow_schema = Arc::new(schema_to_arrow_schema(&schema).unwrap());
        let batch = RecordBatch::try_new(
            arrow_schema,
            vec![
                Arc::new(StringArray::from(symbols.to_vec())),
                Arc::new(TimestampMicrosecondArray::from(ts.to_vec()).with_timezone("+00:00")),
                Arc::new(Float64Array::from(
                    (0..6).map(f64::from).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap();
        let by_day = PartitionSpec::builder(schema.clone())
            .add_partition_field("ts", "ts_day", Transform::Day)
            .unwrap()
            .build()
            .unwrap();
        let by_symbol_and_day = PartitionSpec::builder(schema.clone())
            .add_partition_field("symbol", "symbol", Transform::Identity)
            .unwrap()
            .add_partition_field("ts", "ts_day", Transform::Day)
            .unwrap()
            .build()
            .unwrap();
        for (spec, partitions) in [(by_day, 4), (by_symbol_and_day, 6)] {
            let spec = Arc::new(spec);
            let sorted = |mut parts: Vec<(PartitionKey, RecordBatch)>| {
                parts.sort_by_key(|(k, _)| format!("{:?}", k.data()));
                parts
                    .into_iter()
                    .map(|(k, b)| (format!("{:?}", k.data()), b))
                    .collect::<Vec<_>>()
            };
            // Split whole, and split as two batches (the first of one partition): the same rows.
            let whole =
                split_by_partition(std::slice::from_ref(&batch), schema.clone(), spec.clone())
                    .unwrap()
                    .into_iter()
                    .map(|(k, mut rows)| {
                        assert_eq!(rows.len(), 1);
                        (k, rows.remove(0))
                    })
                    .collect();
            let ours = sorted(whole);
            let halves = [batch.slice(0, 1), batch.slice(1, batch.num_rows() - 1)];
            let in_halves = split_by_partition(&halves, schema.clone(), spec.clone())
                .unwrap()
                .into_iter()
                .map(|(k, rows)| {
                    assert!(rows.len() <= 2);
                    (
                        k,
                        arrow::compute::concat_batches(&rows[0].schema(), &rows).unwrap(),
                    )
                })
                .collect();
            assert_eq!(sorted(in_halves), ours);
            let library =
                RecordBatchPartitionSplitter::try_new_with_computed_values(schema.clone(), spec)
                    .unwrap()
                    .split(&batch)
                    .unwrap();
            let library = sorted(library);
            assert_eq!(ours.len(), partitions);
            assert_eq!(ours, library);
        }
    }
}
