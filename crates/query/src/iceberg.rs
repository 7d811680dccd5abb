//! Iceberg tables as DataFusion tables.
//!
//! A scan asks Iceberg which data files of the snapshot can hold rows passing the query's filters (its
//! manifests prune by partition values and by each file's column statistics), then reads those files
//! with DataFusion's own Parquet reader (row groups and pages pruned again, many files at once).
//! `EXPLAIN` shows the files that remain. Without a pinned snapshot, every scan reads the table's
//! current snapshot afresh, so a long-running session sees new commits; a checkpoint's files appear
//! all at once.
//!
//! Time travel and history are table functions:
//! * `snapshots('prices')`: the table's snapshots, oldest first, with the Kafka offsets each carries;
//! * `as_of('prices', <snapshot id>)` or `as_of('prices', TIMESTAMP '2026-11-27 10:00:00')` (or a
//!   timestamp string): the table as it was in that snapshot, or at that time (UTC).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionImpl};
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;
use ticklake_iceberg::iceberg::expr::{Predicate, Reference};
use ticklake_iceberg::iceberg::scan::FileScanTask;
use ticklake_iceberg::iceberg::spec::{Datum, TableMetadata};
use ticklake_iceberg::iceberg::table::Table;
use ticklake_iceberg::IcebergLake;

use crate::helpers::string_literal;
use crate::provider::Storage;

fn ext(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// An Iceberg table of the lake, at its current snapshot or pinned to one.
pub struct IcebergTable {
    name: String,
    lake: Arc<IcebergLake>,
    /// The table as loaded when the engine last refreshed (for time travel and the schema).
    table: Table,
    /// `None`: the current snapshot at each scan.
    snapshot: Option<i64>,
    schema: SchemaRef,
    storage: Storage,
}

impl std::fmt::Debug for IcebergTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcebergTable")
            .field("name", &self.name)
            .field("snapshot", &self.snapshot)
            .finish()
    }
}

/// The table's Arrow schema without Iceberg's field-id metadata (DataFusion matches columns by name).
fn arrow_schema(schema: &ticklake_iceberg::iceberg::spec::Schema) -> Result<SchemaRef> {
    let with_ids = ticklake_iceberg::iceberg::arrow::schema_to_arrow_schema(schema).map_err(ext)?;
    Ok(Arc::new(Schema::new(
        with_ids
            .fields()
            .iter()
            .map(|f| {
                Field::new(f.name(), f.data_type().clone(), f.is_nullable())
                    .with_metadata(HashMap::new())
            })
            .collect::<Vec<_>>(),
    )))
}

impl IcebergTable {
    /// The table `name` of `lake` at its current snapshot.
    pub(crate) async fn open(
        lake: Arc<IcebergLake>,
        name: &str,
        s3_options: &[(String, String)],
    ) -> Result<IcebergTable> {
        let table = lake
            .load(name)
            .await
            .map_err(ext)?
            .ok_or_else(|| DataFusionError::Plan(format!("Iceberg table {name} is gone")))?;
        let schema = arrow_schema(table.metadata().current_schema())?;
        let storage = Storage::open(table.metadata().location(), s3_options)?;
        Ok(IcebergTable {
            name: name.to_owned(),
            lake,
            table,
            snapshot: None,
            schema,
            storage,
        })
    }

    /// Where the table is (its `file://` or `s3://` URL).
    pub fn location(&self) -> &str {
        self.table.metadata().location()
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The table's metadata as of the engine's last refresh.
    pub fn metadata(&self) -> &TableMetadata {
        self.table.metadata()
    }

    /// The same table pinned to one of its snapshots.
    fn at(&self, snapshot_id: i64) -> Result<IcebergTable> {
        let metadata = self.table.metadata();
        let snapshot = metadata.snapshot_by_id(snapshot_id).ok_or_else(|| {
            DataFusionError::Plan(format!(
                "table {} has no snapshot {snapshot_id}; list them with SELECT * FROM snapshots('{}')",
                self.name, self.name
            ))
        })?;
        let schema = arrow_schema(snapshot.schema(metadata).map_err(ext)?.as_ref())?;
        Ok(IcebergTable {
            name: self.name.clone(),
            lake: self.lake.clone(),
            table: self.table.clone(),
            snapshot: Some(snapshot_id),
            schema,
            storage: self.storage.clone(),
        })
    }

    /// The snapshot that was current at `millis` (UTC), from the table's snapshot log.
    fn at_time(&self, millis: i64) -> Result<IcebergTable> {
        let history = self.table.metadata().history();
        let entry = history
            .iter()
            .rev()
            .find(|e| e.timestamp_ms() <= millis)
            .ok_or_else(|| {
                let first = history.first().map_or_else(
                    || "it has no snapshot yet".to_owned(),
                    |e| {
                        format!(
                            "its first snapshot is at {}",
                            format_millis(e.timestamp_ms())
                        )
                    },
                );
                DataFusionError::Plan(format!(
                    "table {} had no snapshot at {}: {first}",
                    self.name,
                    format_millis(millis)
                ))
            })?;
        self.at(entry.snapshot_id)
    }

    /// The data files of the snapshot that can hold rows passing `filters`.
    async fn plan_files(&self, filters: &[Expr]) -> Result<Vec<FileScanTask>> {
        let table = match self.snapshot {
            Some(_) => self.table.clone(),
            None => self
                .lake
                .load(&self.name)
                .await
                .map_err(ext)?
                .ok_or_else(|| {
                    DataFusionError::Plan(format!("Iceberg table {} is gone", self.name))
                })?,
        };
        let metadata = table.metadata();
        let Some(snapshot_id) = self.snapshot.or(metadata.current_snapshot_id()) else {
            return Ok(Vec::new());
        };
        let snapshot = metadata.snapshot_by_id(snapshot_id).ok_or_else(|| {
            DataFusionError::Plan(format!(
                "table {}: snapshot {snapshot_id} is gone",
                self.name
            ))
        })?;
        let schema = snapshot.schema(metadata).map_err(ext)?;
        let predicate = filters
            .iter()
            .filter_map(|f| to_predicate(f, &|c| schema.field_by_name(c).is_some()))
            .reduce(Predicate::and);
        let scan = |predicate: Option<Predicate>| {
            let mut b = table.scan().snapshot_id(snapshot_id).select_all();
            if let Some(p) = predicate {
                b = b.with_filter(p);
            }
            b.build()
        };
        // A filter Iceberg cannot bind (a literal of another type, say) only costs pruning.
        let scan = match scan(predicate.clone()) {
            Ok(s) => s,
            Err(e) if predicate.is_some() => {
                tracing::debug!("table {}: scanning without pruning: {e}", self.name);
                scan(None).map_err(ext)?
            }
            Err(e) => return Err(ext(e)),
        };
        let tasks: Vec<FileScanTask> = scan
            .plan_files()
            .await
            .map_err(ext)?
            .try_collect()
            .await
            .map_err(ext)?;
        if tasks.iter().any(|t| !t.deletes.is_empty()) {
            return Err(DataFusionError::NotImplemented(format!(
                "table {} has row-level delete files (written by another engine); ticklake reads \
                 tables without deletes",
                self.name
            )));
        }
        Ok(tasks)
    }

    /// The task's file in the store, which must be inside the table's location.
    fn partitioned_file(&self, task: &FileScanTask) -> Result<PartitionedFile> {
        let folder = format!("{}/", self.location().trim_end_matches('/'));
        let rel = task
            .data_file_path
            .strip_prefix(&folder)
            .filter(|rel| !rel.split('/').any(|seg| seg == ".."))
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "table {}: data file {} is outside the table's location {}; ticklake reads \
                     files inside the table's folder only",
                    self.name,
                    task.data_file_path,
                    self.location()
                ))
            })?;
        let path = self.storage.lake.object_path(rel).map_err(ext)?;
        let mut file = PartitionedFile::new(path.to_string(), task.file_size_in_bytes);
        file.object_meta.location = path;
        Ok(file)
    }
}

#[async_trait]
impl TableProvider for IcebergTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Iceberg prunes files; DataFusion still checks every row.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let tasks = self.plan_files(filters).await?;
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        if tasks.is_empty() {
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let files = tasks
            .iter()
            .map(|t| self.partitioned_file(t))
            .collect::<Result<Vec<_>>>()?;
        tracing::debug!("table {}: {} data files to read", self.name, files.len());
        let format = ParquetFormat::default();
        let source = format.file_source(datafusion::datasource::table_schema::TableSchema::new(
            self.schema.clone(),
            Vec::new(),
        ));
        let groups =
            FileGroup::new(files).split_files(state.config_options().execution.target_partitions);
        let config = FileScanConfigBuilder::new(self.storage.url.clone(), source)
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }
}

/// The part of a DataFusion filter that Iceberg can prune files with, if any. Only columns for which
/// `known` holds are used; an `AND` keeps what it can, an `OR` needs both sides. The result may keep
/// more files than the filter would (never fewer): DataFusion checks the rows afterwards.
fn to_predicate(expr: &Expr, known: &dyn Fn(&str) -> bool) -> Option<Predicate> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => match (to_predicate(left, known), to_predicate(right, known)) {
                (Some(l), Some(r)) => Some(l.and(r)),
                (l, r) => l.or(r),
            },
            Operator::Or => Some(to_predicate(left, known)?.or(to_predicate(right, known)?)),
            _ => {
                let (column, op, value) = match (left.as_ref(), right.as_ref()) {
                    (Expr::Column(c), Expr::Literal(v, _)) => (c, *op, v),
                    (Expr::Literal(v, _), Expr::Column(c)) => (c, op.swap()?, v),
                    _ => return None,
                };
                if !known(&column.name) {
                    return None;
                }
                let r = Reference::new(column.name.clone());
                // Timestamps of another unit than Iceberg's microseconds are rounded outwards.
                let (down, up) = (datum(value, false)?, datum(value, true)?);
                Some(match op {
                    Operator::Eq if down == up => r.equal_to(down),
                    Operator::Eq => r
                        .clone()
                        .greater_than_or_equal_to(down)
                        .and(r.less_than_or_equal_to(up)),
                    Operator::NotEq if down == up => r.not_equal_to(down),
                    Operator::Lt | Operator::LtEq => r.less_than_or_equal_to(up),
                    Operator::Gt | Operator::GtEq => r.greater_than_or_equal_to(down),
                    _ => return None,
                })
            }
        },
        Expr::IsNull(e) => match e.as_ref() {
            Expr::Column(c) if known(&c.name) => Some(Reference::new(c.name.clone()).is_null()),
            _ => None,
        },
        Expr::IsNotNull(e) => match e.as_ref() {
            Expr::Column(c) if known(&c.name) => Some(Reference::new(c.name.clone()).is_not_null()),
            _ => None,
        },
        Expr::InList(list) if !list.negated => {
            let Expr::Column(c) = list.expr.as_ref() else {
                return None;
            };
            if !known(&c.name) {
                return None;
            }
            let values = list
                .list
                .iter()
                .map(|e| match e {
                    Expr::Literal(v, _) => {
                        let (down, up) = (datum(v, false)?, datum(v, true)?);
                        (down == up).then_some(down)
                    }
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Reference::new(c.name.clone()).is_in(values))
        }
        Expr::Between(b) if !b.negated => {
            let Expr::Column(c) = b.expr.as_ref() else {
                return None;
            };
            let (Expr::Literal(low, _), Expr::Literal(high, _)) = (b.low.as_ref(), b.high.as_ref())
            else {
                return None;
            };
            if !known(&c.name) {
                return None;
            }
            let r = Reference::new(c.name.clone());
            Some(
                r.clone()
                    .greater_than_or_equal_to(datum(low, false)?)
                    .and(r.less_than_or_equal_to(datum(high, true)?)),
            )
        }
        _ => None,
    }
}

/// A literal as an Iceberg value; timestamps in microseconds, rounded `up` or down.
fn datum(value: &ScalarValue, up: bool) -> Option<Datum> {
    let micros = |v: i64, per_micro: i64| {
        if up {
            v.div_euclid(per_micro) + i64::from(v.rem_euclid(per_micro) != 0)
        } else {
            v.div_euclid(per_micro)
        }
    };
    let ts = |v: i64, tz: &Option<Arc<str>>| {
        if tz.is_some() {
            Datum::timestamptz_micros(v)
        } else {
            Datum::timestamp_micros(v)
        }
    };
    Some(match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Datum::string(s),
        ScalarValue::Boolean(Some(b)) => Datum::bool(*b),
        ScalarValue::Int8(Some(v)) => Datum::int(*v),
        ScalarValue::Int16(Some(v)) => Datum::int(*v),
        ScalarValue::Int32(Some(v)) => Datum::int(*v),
        ScalarValue::Int64(Some(v)) => Datum::long(*v),
        ScalarValue::Float32(Some(v)) => Datum::float(*v),
        ScalarValue::Float64(Some(v)) => Datum::double(*v),
        ScalarValue::Date32(Some(d)) => Datum::date(*d),
        ScalarValue::TimestampSecond(Some(v), tz) => ts(v.checked_mul(1_000_000)?, tz),
        ScalarValue::TimestampMillisecond(Some(v), tz) => ts(v.checked_mul(1_000)?, tz),
        ScalarValue::TimestampMicrosecond(Some(v), tz) => ts(*v, tz),
        ScalarValue::TimestampNanosecond(Some(v), tz) => ts(micros(*v, 1_000), tz),
        _ => return None,
    })
}

fn format_millis(millis: i64) -> String {
    arrow::temporal_conversions::timestamp_ms_to_datetime(millis).map_or_else(
        || format!("{millis} ms"),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
    )
}

/// The Iceberg tables the table functions can read, by name (kept up to date by the engine).
pub(crate) type IcebergTables = Arc<RwLock<HashMap<String, Arc<IcebergTable>>>>;

fn table_arg(tables: &IcebergTables, args: &[Expr], function: &str) -> Result<Arc<IcebergTable>> {
    let name = match args.first().and_then(string_literal) {
        Some(s) => s.to_ascii_lowercase(),
        None => {
            return Err(DataFusionError::Plan(format!(
                "{function}: the first argument is an Iceberg table's name as a string, e.g. {function}('prices'{})",
                if function == "as_of" { ", 1234" } else { "" }
            )))
        }
    };
    tables
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&name)
        .cloned()
        .ok_or_else(|| {
            DataFusionError::Plan(format!(
                "{function}: no Iceberg table {name:?} (time travel needs an Iceberg table; SHOW TABLES lists the tables)"
            ))
        })
}

/// The `snapshots(table)` table function.
#[derive(Debug)]
pub(crate) struct Snapshots {
    pub(crate) tables: IcebergTables,
}

impl TableFunctionImpl for Snapshots {
    fn call(&self, args: &[Expr]) -> Result<Arc<dyn TableProvider>> {
        if args.len() != 1 {
            return Err(DataFusionError::Plan(
                "snapshots(table) takes one argument: an Iceberg table's name".into(),
            ));
        }
        let table = table_arg(&self.tables, args, "snapshots")?;
        let metadata = table.metadata();
        let mut snapshots: Vec<_> = metadata.snapshots().collect();
        snapshots.sort_by_key(|s| (s.timestamp_ms(), s.sequence_number()));
        let current = metadata.current_snapshot_id();
        let summary_number = |s: &ticklake_iceberg::iceberg::spec::Snapshot, key: &str| {
            s.summary()
                .additional_properties
                .get(key)
                .and_then(|v| v.parse::<i64>().ok())
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "committed_at",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("snapshot_id", DataType::Int64, false),
            Field::new("parent_id", DataType::Int64, true),
            Field::new("operation", DataType::Utf8, false),
            Field::new("is_current", DataType::Boolean, false),
            Field::new("added_records", DataType::Int64, true),
            Field::new("total_records", DataType::Int64, true),
            Field::new("added_files", DataType::Int64, true),
            Field::new("total_files", DataType::Int64, true),
            Field::new("kafka_offsets", DataType::Utf8, true),
        ]));
        let offsets = |s: &ticklake_iceberg::iceberg::spec::Snapshot| {
            let mut ranges: Vec<String> = s
                .summary()
                .additional_properties
                .iter()
                .filter_map(|(k, v)| Some(format!("{}={v}", k.strip_prefix("ticklake.kafka.")?)))
                .collect();
            ranges.sort();
            (!ranges.is_empty()).then(|| ranges.join(", "))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampMillisecondArray::from_iter_values(
                    snapshots.iter().map(|s| s.timestamp_ms()),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(
                snapshots.iter().map(|s| s.snapshot_id()),
            )),
            Arc::new(Int64Array::from_iter(
                snapshots.iter().map(|s| s.parent_snapshot_id()),
            )),
            Arc::new(StringArray::from_iter_values(
                snapshots.iter().map(|s| s.summary().operation.as_str()),
            )),
            Arc::new(arrow::array::BooleanArray::from_iter(
                snapshots
                    .iter()
                    .map(|s| Some(Some(s.snapshot_id()) == current)),
            )),
            Arc::new(Int64Array::from_iter(
                snapshots.iter().map(|s| summary_number(s, "added-records")),
            )),
            Arc::new(Int64Array::from_iter(
                snapshots.iter().map(|s| summary_number(s, "total-records")),
            )),
            Arc::new(Int64Array::from_iter(
                snapshots
                    .iter()
                    .map(|s| summary_number(s, "added-data-files")),
            )),
            Arc::new(Int64Array::from_iter(
                snapshots
                    .iter()
                    .map(|s| summary_number(s, "total-data-files")),
            )),
            Arc::new(StringArray::from_iter(snapshots.iter().map(|s| offsets(s)))),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

/// The `as_of(table, snapshot id | timestamp)` table function.
#[derive(Debug)]
pub(crate) struct AsOf {
    pub(crate) tables: IcebergTables,
}

impl TableFunctionImpl for AsOf {
    fn call(&self, args: &[Expr]) -> Result<Arc<dyn TableProvider>> {
        if args.len() != 2 {
            return Err(DataFusionError::Plan(
                "as_of(table, version) takes two arguments: an Iceberg table's name and a snapshot \
                 id or a timestamp, e.g. as_of('prices', TIMESTAMP '2026-11-27 10:00:00')"
                    .into(),
            ));
        }
        let table = table_arg(&self.tables, args, "as_of")?;
        let millis = |v: i64, per_milli: i64| v.div_euclid(per_milli);
        let pinned = match (&args[1], string_literal(&args[1])) {
            (_, Some(s)) => {
                let nanos = arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(s)
                    .map_err(|e| {
                        DataFusionError::Plan(format!(
                            "as_of: {s:?} is not a timestamp ({e}); use e.g. '2026-11-27 10:00:00' (UTC) or a snapshot id"
                        ))
                    })?;
                table.at_time(millis(nanos, 1_000_000))?
            }
            (Expr::Literal(ScalarValue::Int64(Some(id)), _), _) => table.at(*id)?,
            (Expr::Literal(ScalarValue::TimestampSecond(Some(v), _), _), _) => {
                table.at_time(v.saturating_mul(1000))?
            }
            (Expr::Literal(ScalarValue::TimestampMillisecond(Some(v), _), _), _) => {
                table.at_time(*v)?
            }
            (Expr::Literal(ScalarValue::TimestampMicrosecond(Some(v), _), _), _) => {
                table.at_time(millis(*v, 1_000))?
            }
            (Expr::Literal(ScalarValue::TimestampNanosecond(Some(v), _), _), _) => {
                table.at_time(millis(*v, 1_000_000))?
            }
            (other, _) => {
                return Err(DataFusionError::Plan(format!(
                    "as_of: the version must be a snapshot id (a number from snapshots('{}')) or a timestamp, not {other}",
                    table.name
                )))
            }
        };
        Ok(Arc::new(pinned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn filters_become_iceberg_predicates_that_never_prune_more() {
        let p = to_predicate(&col("symbol").eq(lit("AAPL")), &all).unwrap();
        assert_eq!(p.to_string(), "symbol = \"AAPL\"");
        // A half that Iceberg cannot use is dropped from an AND, and spoils an OR.
        let odd = Expr::IsTrue(Box::new(col("flag")));
        let p = to_predicate(&col("close").gt(lit(5.0)).and(odd.clone()), &all).unwrap();
        assert_eq!(p.to_string(), "close >= 5");
        assert!(to_predicate(&col("close").gt(lit(5.0)).or(odd), &all).is_none());
        // Unknown columns (added after a pinned snapshot) are not used.
        assert!(to_predicate(&col("extra").eq(lit(1i64)), &|c| c != "extra").is_none());
        // Nanosecond timestamps round outwards to microseconds.
        let ns = ScalarValue::TimestampNanosecond(Some(1_500), Some("UTC".into()));
        let p = to_predicate(&col("ts").lt(lit(ns.clone())), &all).unwrap();
        assert!(p.to_string().contains("<="), "{p}");
        assert_eq!(datum(&ns, true), Some(Datum::timestamptz_micros(2)));
        assert_eq!(datum(&ns, false), Some(Datum::timestamptz_micros(1)));
        // A literal on the left swaps the comparison.
        let p = to_predicate(&lit(3i64).lt(col("n")), &all).unwrap();
        assert!(p.to_string().contains(">="), "{p}");
    }
}
