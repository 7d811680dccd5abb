//! The `files(table)` table function: the data files a query of a catalog table reads right now, one
//! row each, with the partition's keys, the file's path or URL, its size and when it was written.
//!
//! This is how another engine reads exactly what ticklake reads. A glob over a Hive table's folders
//! (`lake/t/*/*/*.parquet`) is right only until the table is compacted: a compaction writes the
//! merged files to a new folder and points the partition there in the catalog, the sink's own files
//! stay behind until `--retention` has passed, then they are deleted. The catalog's locations are the
//! truth, and this function lists the files at them, as the engine's own scans do:
//!
//! ```text
//! ticklake query --format csv "SELECT file FROM files('stock_topic')" > files.csv
//! duckdb -c "SET VARIABLE files = (SELECT list(file) FROM 'files.csv');
//!            SELECT count(*) FROM read_parquet(getvariable('files'), hive_partitioning = true)"
//! ```

use std::any::Any;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionImpl};
use datafusion::common::ScalarValue;
use datafusion::datasource::listing::helpers::expr_applicable_for_cols;
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use crate::helpers::{string_literal, table_named, Tables};
use crate::iceberg::IcebergTable;
use crate::provider::LakeTable;

/// The `files(table)` table function.
#[derive(Debug)]
pub(crate) struct Files {
    pub(crate) tables: Tables,
}

impl TableFunctionImpl for Files {
    fn call(&self, args: &[Expr]) -> Result<Arc<dyn TableProvider>> {
        let name = match args {
            [arg] => string_literal(arg).map(str::to_ascii_lowercase),
            _ => None,
        }
        .ok_or_else(|| {
            DataFusionError::Plan(
                "files(table) takes one argument: a table's name as a string, e.g. files('stock_topic')"
                    .into(),
            )
        })?;
        let table = table_named(&self.tables, &name, "files")?;
        if let Some(iceberg) = table.as_any().downcast_ref::<IcebergTable>() {
            return Err(DataFusionError::Plan(format!(
                "files: {name:?} is an Iceberg table; its snapshot's metadata under {}/metadata \
                 lists its files, and engines read it through that (DuckDB's iceberg_scan, \
                 pyiceberg, Spark); snapshots('{name}') shows its snapshots",
                iceberg.location()
            )));
        }
        let Some(lake) = table.as_any().downcast_ref::<LakeTable>() else {
            return Err(DataFusionError::Plan(format!(
                "files: {name:?} is not a table of the lake"
            )));
        };
        let keys: Vec<String> = lake
            .definition()
            .partition_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut fields: Vec<Field> = keys
            .iter()
            .map(|k| Field::new(k, DataType::Utf8, true))
            .collect();
        fields.push(Field::new("file", DataType::Utf8, false));
        fields.push(Field::new("bytes", DataType::Int64, false));
        fields.push(Field::new(
            "modified",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ));
        Ok(Arc::new(FilesOf {
            table,
            keys,
            schema: Arc::new(Schema::new(fields)),
        }))
    }
}

/// `files(table)` for one table: listed when scanned, so each statement sees the files of its time.
#[derive(Debug)]
struct FilesOf {
    /// A [`LakeTable`] (checked by [`Files::call`]).
    table: Arc<dyn TableProvider>,
    keys: Vec<String>,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for FilesOf {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    /// Filters on the partition keys choose the partitions listed, as in a query of the table.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        let keys: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        Ok(filters
            .iter()
            .map(|f| {
                if expr_applicable_for_cols(&keys, f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let lake = self
            .table
            .as_any()
            .downcast_ref::<LakeTable>()
            .ok_or_else(|| DataFusionError::Internal("files: not a lake table".into()))?;
        let files = lake.listed_files(state, filters).await?;
        let mut columns: Vec<ArrayRef> = (0..self.keys.len())
            .map(|i| {
                Arc::new(StringArray::from_iter(files.iter().map(
                    |f| match f.partition_values.get(i) {
                        Some(ScalarValue::Utf8(v)) => v.clone(),
                        _ => None,
                    },
                ))) as ArrayRef
            })
            .collect();
        columns.push(Arc::new(StringArray::from_iter_values(
            files.iter().map(|f| lake.file_url(&f.object_meta.location)),
        )));
        columns.push(Arc::new(Int64Array::from_iter_values(
            files
                .iter()
                .map(|f| i64::try_from(f.object_meta.size).unwrap_or(i64::MAX)),
        )));
        columns.push(Arc::new(
            TimestampMillisecondArray::from_iter_values(
                files
                    .iter()
                    .map(|f| f.object_meta.last_modified.timestamp_millis()),
            )
            .with_timezone("UTC"),
        ));
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        MemTable::try_new(self.schema.clone(), vec![vec![batch]])?
            .scan(state, projection, &[], limit)
            .await
    }
}
