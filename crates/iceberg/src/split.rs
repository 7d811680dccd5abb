//! Splitting a checkpoint's rows by the table's partition, one Iceberg partition value per partition.
//!
//! The iceberg crate's `RecordBatchPartitionSplitter` turns every row's partition value into its own
//! `Struct` literal before grouping: a checkpoint of a million records held a million of them, 160 MB
//! at the sink's peak. Here the values are computed column-wise by the same transforms
//! (`PartitionValueCalculator`), rows are grouped by Arrow's row format of those values, and one
//! `Struct` is made per group, from its first row.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::row::{RowConverter, SortField};
use arrow_array::RecordBatch;
use iceberg::arrow::{arrow_struct_to_literal, PartitionValueCalculator};
use iceberg::spec::{Literal, PartitionKey, PartitionSpecRef, SchemaRef};
use iceberg::{Error, ErrorKind};

/// The rows of `batch` (in the table's Arrow shape) grouped by their partition under `spec`, each
/// group keeping the rows' order, with the partition's key; groups in no particular order.
pub(crate) fn split_by_partition(
    batch: &RecordBatch,
    schema: SchemaRef,
    spec: PartitionSpecRef,
) -> iceberg::Result<Vec<(PartitionKey, RecordBatch)>> {
    let calculator = PartitionValueCalculator::try_new(&spec, &schema)?;
    let values = calculator.calculate(batch)?;
    let columns = values
        .as_struct_opt()
        .ok_or_else(|| Error::new(ErrorKind::Unexpected, "partition values are not a struct"))?
        .columns()
        .to_vec();
    let arrow_err = |e: arrow::error::ArrowError| {
        Error::new(ErrorKind::Unexpected, "grouping rows by partition").with_source(e)
    };
    let converter = RowConverter::new(
        columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )
    .map_err(arrow_err)?;
    let rows = converter.convert_columns(&columns).map_err(arrow_err)?;
    let mut groups: HashMap<_, Vec<u32>> = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        let i = u32::try_from(i).map_err(|_| {
            Error::new(
                ErrorKind::DataInvalid,
                "a checkpoint of more than 4 billion rows",
            )
        })?;
        groups.entry(row).or_default().push(i);
    }
    let mut out = Vec::with_capacity(groups.len());
    for (_, indices) in groups {
        let Some(&first) = indices.first() else {
            continue;
        };
        let value = arrow_struct_to_literal(
            &values.slice(first as usize, 1),
            calculator.partition_type(),
        )?
        .pop()
        .flatten();
        let Some(Literal::Struct(value)) = value else {
            return Err(Error::new(
                ErrorKind::DataInvalid,
                "a partition value is not a struct",
            ));
        };
        let rows = take_record_batch(batch, &UInt32Array::from(indices)).map_err(arrow_err)?;
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
    /// symbol among the rows.
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
            let ours = sorted(split_by_partition(&batch, schema.clone(), spec.clone()).unwrap());
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
