//! A catalog table as a DataFusion table: the catalog's partitions, pruned by the query's filters on
//! the partition columns, then the files inside the partitions that remain.
//!
//! As in Athena, what a query sees is what the catalog registers: a folder the catalog does not know is
//! not read. Filters on `date`/`symbol` (any partition key) never list or open the other partitions;
//! `EXPLAIN` shows the files that remain in the scan.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, ScalarValue, Statistics};
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::{FileFormat, FileMeta};
use datafusion::datasource::listing::helpers::expr_applicable_for_cols;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::create_physical_expr;
use datafusion::physical_expr::expressions::Column as ColumnExpr;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::ExecutionPlan;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore};
use ticklake_catalog::{Catalog, Partition, StorageFormat, Table};
use ticklake_lake::Lake;

use crate::file_groups::{ordered_groups, symbol_groups};
use crate::file_statistics::{FileStatistics, FileStatisticsCache};

/// Where a table's files are: the store, its URL as DataFusion knows it, and the table's lake.
#[derive(Debug, Clone)]
pub(crate) struct Storage {
    pub(crate) lake: Lake,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) url: ObjectStoreUrl,
}

impl Storage {
    /// Opens the store holding `location` (a table's `file://` or `s3://` URL).
    pub(crate) fn open(location: &str, s3_options: &[(String, String)]) -> Result<Storage> {
        let lake = Lake::open_with(location, s3_options).map_err(ext)?;
        let (store, url, _) = lake.object_store().map_err(ext)?;
        let url = ObjectStoreUrl::parse(url.as_str())?;
        Ok(Storage { lake, store, url })
    }
}

fn ext(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Listings and footer reads a scan has in flight at once.
const STORE_REQUESTS: usize = 32;

/// Partition folders from which a scan lists them in one walk of the table's folder (see
/// [`PrunedPartitions::fit_one_walk`]).
const ONE_WALK_FOLDERS: usize = 16;

/// A scan's partitions: those its filters keep, and what listing their files needs to know of the
/// table's others.
struct PrunedPartitions {
    kept: Vec<Partition>,
    /// How many partitions the table has.
    all: usize,
    /// Whether every partition of the table is in a folder inside the table's, none under a hidden
    /// name (a compacted partition's generation folder under `_compacted/`).
    in_plain_folders: bool,
}

impl PrunedPartitions {
    /// Whether one walk of the table's folder on local disk finds the kept partitions' files for less
    /// than listing each folder: the local store lists a folder in a blocking task of its own that
    /// resolves the folder's real path and sets up a walk, most of the cost of a folder of a few
    /// files. So at least [`ONE_WALK_FOLDERS`] folders, at least half of the table's, and no partition
    /// compacted: a compacted partition's own folder keeps the sink's files, and `_compacted/` the
    /// generations it replaced, for `--retention` (an hour by default) after each switch, files the
    /// walk would list for nothing (a sink compacting every minute leaves thousands). On S3 one listing
    /// of the table would page through every key in turn, where the folders' listings run side by
    /// side, so S3 always lists each folder.
    fn fit_one_walk(&self) -> bool {
        self.in_plain_folders
            && self.kept.len() >= ONE_WALK_FOLDERS
            && self.kept.len() * 2 >= self.all
    }
}

/// Files whose statistics a table keeps between queries (see [`FileStatisticsCache`]): the lake's
/// 100 M-row benchmark table has about 2,000. An entry is about 3 KiB for the lake's schema (288 bytes
/// of statistics a column, the path, the listing), so a table holds about 24 MiB at most, beside the
/// 50 MiB of footers DataFusion's metadata cache keeps for all tables.
const FILE_STATISTICS_KEPT: usize = 8_192;

/// A catalog table that DataFusion can scan.
#[derive(Debug)]
pub struct LakeTable {
    table: Table,
    catalog: Arc<dyn Catalog>,
    storage: Storage,
    schema: SchemaRef,
    file_schema: SchemaRef,
    format: Arc<dyn FileFormat>,
    /// Each Parquet file's statistics over `file_schema`, read from its footer by an earlier query
    /// (shared with the table this one replaces at a refresh, see [`LakeTable::keeping_statistics_of`]).
    file_statistics: Arc<FileStatisticsCache>,
}

impl LakeTable {
    pub(crate) fn new(table: Table, catalog: Arc<dyn Catalog>, storage: Storage) -> Result<Self> {
        let schema = table.schema().map_err(ext)?;
        let file_schema = table.file_schema().map_err(ext)?;
        let format: Arc<dyn FileFormat> = match table.format {
            StorageFormat::Parquet => Arc::new(ParquetFormat::default()),
            StorageFormat::Json => Arc::new(JsonFormat::default()),
            StorageFormat::Csv { header, delimiter } => Arc::new(
                CsvFormat::default()
                    .with_has_header(header)
                    .with_delimiter(delimiter),
            ),
        };
        Ok(LakeTable {
            table,
            catalog,
            storage,
            schema,
            file_schema,
            format,
            file_statistics: Arc::new(FileStatisticsCache::new(FILE_STATISTICS_KEPT)),
        })
    }

    /// This table, keeping the files' statistics `before` holds when it is the same table as far as
    /// they go: the same location, format and file schema. A catalog refresh (`serve` re-reads the
    /// catalog every 10 s) then does not read every footer again.
    pub(crate) fn keeping_statistics_of(mut self, before: &LakeTable) -> Self {
        if self.table.location == before.table.location
            && self.table.format == before.table.format
            && self.file_schema == before.file_schema
        {
            self.file_statistics = before.file_statistics.clone();
        }
        self
    }

    /// The catalog's definition.
    pub fn definition(&self) -> &Table {
        &self.table
    }

    /// The partitions whose values pass `filters` (all of them without filters), and what listing
    /// their files needs to know of the table's others.
    async fn pruned_partitions(
        &self,
        state: &dyn Session,
        filters: &[Expr],
    ) -> Result<PrunedPartitions> {
        let partitions = self
            .catalog
            .list_partitions(&self.table.name)
            .await
            .map_err(ext)?;
        let all = partitions.len();
        let in_plain_folders = partitions.iter().all(|p| {
            self.relative_location(p)
                .is_some_and(|rel| !rel.split('/').any(hidden))
        });
        let pruned = |kept| PrunedPartitions {
            kept,
            all,
            in_plain_folders,
        };
        let Some(filter) = conjunction(filters.iter().cloned()) else {
            return Ok(pruned(partitions));
        };
        if partitions.is_empty() {
            return Ok(pruned(partitions));
        }
        let fields: Vec<Field> = self
            .table
            .partition_keys
            .iter()
            .map(|k| Field::new(&k.name, DataType::Utf8, true))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let columns: Vec<ArrayRef> = (0..schema.fields().len())
            .map(|i| {
                Arc::new(StringArray::from_iter(
                    partitions.iter().map(|p| partition_value(p, i)),
                )) as ArrayRef
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let df_schema = DFSchema::try_from(schema)?;
        let expr = create_physical_expr(&filter, &df_schema, state.execution_props())?;
        let keep = expr.evaluate(&batch)?.into_array(batch.num_rows())?;
        let keep = keep
            .as_any()
            .downcast_ref::<arrow::array::BooleanArray>()
            .ok_or_else(|| DataFusionError::Internal("partition filter is not boolean".into()))?;
        let kept = partitions
            .into_iter()
            .enumerate()
            .filter(|(i, _)| keep.is_valid(*i) && keep.value(*i))
            .map(|(_, p)| p)
            .collect();
        Ok(pruned(kept))
    }

    /// A partition's location relative to the table's, if it is inside the table's folder.
    fn relative_location<'a>(&self, p: &'a Partition) -> Option<&'a str> {
        // The table's location is a folder: `…/t` must not admit `…/t2/…`.
        p.location
            .strip_prefix(self.table.location.trim_end_matches('/'))
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|rel| !rel.split('/').any(|seg| seg == ".."))
    }

    /// The store path of a partition's folder.
    fn partition_path(&self, p: &Partition) -> Result<ObjectPath> {
        let rel = self.relative_location(p).ok_or_else(|| {
            DataFusionError::Plan(format!(
                "table {}: partition {} is at {}, outside the table's location {}; \
                 ticklake reads partitions inside the table's folder only",
                self.table.name,
                p.display(&self.table.partition_keys),
                p.location,
                self.table.location
            ))
        })?;
        self.storage.lake.object_path(rel).map_err(ext)
    }

    /// The data files a scan with `filters` reads: those of the partitions whose keys pass the
    /// filters on partition keys (other filters are left alone), sorted by path.
    pub(crate) async fn listed_files(
        &self,
        state: &dyn Session,
        filters: &[Expr],
    ) -> Result<Vec<PartitionedFile>> {
        let keys = self.table.partition_names();
        if keys.is_empty() {
            let folders = vec![(self.storage.lake.object_path("").map_err(ext)?, Vec::new())];
            return self.files(folders).await;
        }
        let partition_filters: Vec<Expr> = filters
            .iter()
            .filter(|f| expr_applicable_for_cols(&keys, f))
            .cloned()
            .collect();
        let pruned = self.pruned_partitions(state, &partition_filters).await?;
        let folders = pruned
            .kept
            .iter()
            .map(|p| {
                let values = (0..keys.len())
                    .map(|i| ScalarValue::Utf8(partition_value(p, i)))
                    .collect();
                Ok((self.partition_path(p)?, values))
            })
            .collect::<Result<Vec<_>>>()?;
        if matches!(self.storage.lake, Lake::Local { .. }) && pruned.fit_one_walk() {
            self.files_in_one_walk(folders).await
        } else {
            self.files(folders).await
        }
    }

    /// Where other engines find a file this table's store lists: a path on local disk, an
    /// `s3://bucket/key` URL in S3.
    pub(crate) fn file_url(&self, path: &ObjectPath) -> String {
        let base = self.storage.url.as_str();
        match base.strip_prefix("file://") {
            Some(_) => format!("/{path}"),
            None => format!("{}/{path}", base.trim_end_matches('/')),
        }
    }

    /// Lists the data files of the given folders (hidden `_`/`.` files and empty files left out).
    async fn files(
        &self,
        folders: Vec<(ObjectPath, Vec<ScalarValue>)>,
    ) -> Result<Vec<PartitionedFile>> {
        let store = self.storage.store.clone();
        let lists = futures::stream::iter(folders.into_iter().map(|(path, values)| {
            let store = store.clone();
            async move {
                let metas: Vec<_> = store.list(Some(&path)).try_collect().await?;
                Ok::<_, object_store::Error>(
                    metas
                        .into_iter()
                        .filter(|m| {
                            m.size > 0
                                && m.location
                                    .prefix_match(&path)
                                    .is_some_and(|mut parts| parts.all(|s| !hidden(s.as_ref())))
                        })
                        .map(|m| {
                            let mut f = PartitionedFile::new_from_meta(m);
                            f.partition_values = values.clone();
                            f
                        })
                        .collect::<Vec<_>>(),
                )
            }
        }))
        .buffer_unordered(STORE_REQUESTS)
        .try_collect::<Vec<_>>()
        .await
        .map_err(ext)?;
        let mut files: Vec<PartitionedFile> = lists.into_iter().flatten().collect();
        sort_by_location(&mut files);
        Ok(files)
    }

    /// The same files as [`files`](Self::files) gives for `folders` (folders inside the table's), from
    /// one walk of the table's folder: each file goes to every given folder that holds it, unless a
    /// folder or file name below that one is hidden (`_`/`.`).
    async fn files_in_one_walk(
        &self,
        folders: Vec<(ObjectPath, Vec<ScalarValue>)>,
    ) -> Result<Vec<PartitionedFile>> {
        let table_folder = self.storage.lake.object_path("").map_err(ext)?;
        let index: HashMap<&str, usize> = folders
            .iter()
            .enumerate()
            .map(|(i, (path, _))| (path.as_ref(), i))
            .collect();
        let metas: Vec<ObjectMeta> = self
            .storage
            .store
            .list(Some(&table_folder))
            .try_collect()
            .await
            .map_err(ext)?;
        let mut files = Vec::new();
        for meta in metas {
            if meta.size == 0 {
                continue;
            }
            let location = meta.location.as_ref();
            // From the file's name up: the name or folder just below each folder `location[..end]`.
            let mut end = location.len();
            while let Some(slash) = location[..end].rfind('/') {
                if hidden(&location[slash + 1..end]) || slash < table_folder.as_ref().len() {
                    break;
                }
                end = slash;
                if let Some(&i) = index.get(&location[..end]) {
                    let mut f = PartitionedFile::new_from_meta(meta.clone());
                    f.partition_values = folders[i].1.clone();
                    files.push(f);
                }
            }
        }
        sort_by_location(&mut files);
        Ok(files)
    }

    /// The scan's file groups and, when every file's footer records the order of its rows (ticklake
    /// writes `symbol, ts` as Parquet `sorting_columns`), the orderings that hold within each group.
    ///
    /// A partition column is constant in a file, so files sorted by `ts` in folders by `symbol` are
    /// sorted by `symbol, ts` once grouped by their statistics, balanced by bytes (see
    /// [`ordered_groups`]; DataFusion's min/max bin packing proves each group's order). A window
    /// `PARTITION BY symbol ORDER BY ts`, or an `ORDER BY symbol, ts`, then merges ordered streams
    /// instead of sorting every row. Files without the footer's order, or too unordered to fit the
    /// engine's partitions, are read as before.
    /// Every file whose footer reads carries its statistics (see [`table_statistics`]).
    ///
    /// `keys` are the partition columns the scan carries (each file's `partition_values`, in that
    /// order). With `by_symbol`, each symbol's files are kept in one group where that order holds
    /// (see [`symbol_groups`]), and the third value says so.
    async fn file_groups(
        &self,
        state: &dyn Session,
        files: Vec<PartitionedFile>,
        table_schema: &SchemaRef,
        keys: &[&str],
        by_symbol: bool,
    ) -> (Vec<FileGroup>, Vec<LexOrdering>, bool) {
        let target = state.config_options().execution.target_partitions.max(1);
        let unordered = |files| (FileGroup::new(files).split_files(target), Vec::new(), false);
        if !matches!(self.table.format, StorageFormat::Parquet) || files.is_empty() {
            return unordered(files);
        }
        // Each file's statistics and order: kept from an earlier query, or read from its footer.
        let cache = &self.file_statistics;
        let reads: Vec<_> = files
            .iter()
            .map(|f| {
                let (format, store) = (self.format.clone(), self.storage.store.clone());
                let (schema, object) = (self.file_schema.clone(), f.object_meta.clone());
                async move {
                    if let Some(kept) = cache.get(&object) {
                        return Ok(kept);
                    }
                    let FileMeta {
                        statistics,
                        ordering,
                        ..
                    } = format
                        .infer_stats_and_ordering(state, &store, schema, &object)
                        .await?;
                    let read = FileStatistics {
                        statistics: Arc::new(statistics),
                        ordering,
                    };
                    cache.put(&object, read.clone());
                    Ok::<_, DataFusionError>(read)
                }
            })
            .collect();
        let footers: Vec<_> = futures::stream::iter(reads)
            .buffered(STORE_REQUESTS)
            .collect()
            .await;
        let mut file_order: Option<Vec<PhysicalSortExpr>> = None;
        let mut ordered = true;
        let mut described = Vec::with_capacity(files.len());
        for (file, footer) in files.iter().zip(footers) {
            let Ok(FileStatistics {
                statistics,
                ordering,
            }) = footer
            else {
                return unordered(files);
            };
            described.push(file.clone().with_statistics(statistics));
            // The order all files share so far; none once a file has none.
            let common: Vec<PhysicalSortExpr> = match (file_order.take(), ordering) {
                (_, None) => Vec::new(),
                (None, Some(ordering)) => ordering.to_vec(),
                (Some(order), Some(ordering)) => order
                    .into_iter()
                    .zip(ordering.iter())
                    .take_while(|(a, b)| a == *b)
                    .map(|(a, _)| a)
                    .collect(),
            };
            ordered &= !common.is_empty();
            file_order = Some(common);
        }
        if !ordered {
            return unordered(described);
        }
        let file_order = file_order.unwrap_or_default();
        let key = |name: &str| {
            let i = table_schema.index_of(name).ok()?;
            Some(PhysicalSortExpr::new(
                Arc::new(ColumnExpr::new(name, i)),
                SortOptions {
                    descending: false,
                    nulls_first: false,
                },
            ))
        };
        // Folders by symbol: `symbol, ts` and `symbol, <the other keys>, ts` (volatility per symbol
        // and date); otherwise the keys in their order, then the files' own order.
        let mut leads: Vec<Vec<&str>> = Vec::new();
        if keys.contains(&"symbol") {
            leads.push(vec!["symbol"]);
            let mut all = vec!["symbol"];
            all.extend(keys.iter().copied().filter(|k| *k != "symbol"));
            if all.len() > 1 {
                leads.push(all);
            }
        } else {
            leads.push(keys.to_vec());
        }
        let orderings: Vec<LexOrdering> = leads
            .iter()
            .filter_map(|lead| {
                let exprs: Option<Vec<_>> = lead.iter().map(|k| key(k)).collect();
                LexOrdering::new(exprs?.into_iter().chain(file_order.iter().cloned()))
            })
            .collect();
        let symbol = keys.iter().position(|k| *k == "symbol");
        if let (true, Some(symbol), Some(primary)) = (by_symbol, symbol, orderings.first()) {
            if let Some(groups) = symbol_groups(&described, symbol, primary, target, table_schema) {
                return (groups, orderings, true);
            }
        }
        // Balanced by bytes where that fits `target` ordered groups, else DataFusion's packing
        // (balanced by number of files), which may still fit where the greedy pass by bytes did not.
        let grouped = orderings.first().and_then(|primary| {
            ordered_groups(&described, primary, target, table_schema).or_else(|| {
                FileScanConfig::split_groups_by_statistics_with_target_partitions(
                    table_schema,
                    &[FileGroup::new(described.clone())],
                    primary,
                    target,
                )
                .ok()
            })
        });
        match grouped {
            Some(groups) if groups.len() <= target => (groups, orderings, false),
            _ => unordered(described),
        }
    }
}

/// Whether a file or folder name is hidden from scans, as in Hive and Spark: `_` or `.` first
/// (`_compacted/`, `_sources.json`, a local write's `.name.tmp-…` before its rename).
fn hidden(name: &str) -> bool {
    name.starts_with(['_', '.'])
}

/// Sorts listed files by path, and a file in two partitions (a partition folder inside another) by
/// its partition values, so that every listing gives the same order.
fn sort_by_location(files: &mut [PartitionedFile]) {
    files.sort_by(|a, b| {
        a.object_meta
            .location
            .cmp(&b.object_meta.location)
            .then_with(|| {
                a.partition_values
                    .partial_cmp(&b.partition_values)
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
    });
}

/// The table's statistics as the sum of its files' (the footers `file_groups` read): exact row
/// counts, and each column's min, max and null count as exact as the footers say. With them
/// DataFusion answers `count(*)` (and `min`/`max` where a footer's are exact) without reading a file.
/// Unknown when any file has none (JSON and CSV files, or a footer that cannot be read).
fn table_statistics(groups: &[FileGroup], schema: &Schema) -> Result<Statistics> {
    let files: Option<Vec<&Statistics>> = groups
        .iter()
        .flat_map(|g| g.iter())
        .map(|f| f.statistics.as_deref())
        .collect();
    match files {
        Some(files) if !files.is_empty() => Statistics::try_merge_iter(files, schema),
        _ => Ok(Statistics::new_unknown(schema)),
    }
}

/// Partition `p`'s value of its `i`th key as queries read it: None (NULL) for Hive's default partition
/// or a value the catalog lacks.
pub(crate) fn partition_value(p: &Partition, i: usize) -> Option<String> {
    p.values
        .get(i)
        .filter(|v| v.as_str() != "__HIVE_DEFAULT_PARTITION__")
        .cloned()
}

#[async_trait]
impl TableProvider for LakeTable {
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
        let keys = self.table.partition_names();
        Ok(filters
            .iter()
            .map(|f| {
                if !keys.is_empty() && expr_applicable_for_cols(&keys, f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
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
        let mut files = self.listed_files(state, filters).await?;
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        if files.is_empty() {
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        // The partition columns the scan carries: all of them, or, when the engine asks to keep
        // each symbol's files together (`preserve_file_partitions`, set per statement by
        // `Engine::run` for a window over one table), only those the query reads, symbol among
        // them and first. DataFusion then declares the scan hash-partitioned by exactly those
        // columns in that order: by `symbol` alone for a window by symbol that does not read
        // `date`, by `symbol, date` for one by symbol and date.
        let names = self.table.partition_names();
        let width = self.file_schema.fields().len();
        let read: Vec<usize> = (0..names.len())
            .filter(|i| projection.is_none_or(|p| p.contains(&(width + i))))
            .collect();
        let by_symbol = state.config_options().optimizer.preserve_file_partitions > 0
            && read.iter().any(|&i| names[i] == "symbol");
        let mut kept: Vec<usize> = (0..names.len()).collect();
        if by_symbol {
            kept = read;
            kept.sort_by_key(|&i| names[i] != "symbol");
        }
        let mut projection = projection.cloned();
        if !kept.iter().copied().eq(0..names.len()) {
            for file in &mut files {
                let values = std::mem::take(&mut file.partition_values);
                file.partition_values = kept.iter().map(|&i| values[i].clone()).collect();
            }
            // A partition column's index follows it to its place among the keys the scan carries
            // (all columns are named when the query named none, so they keep the table's order).
            let all = || (0..width + names.len()).collect::<Vec<_>>();
            let columns = projection.unwrap_or_else(all);
            projection = Some(
                columns
                    .into_iter()
                    .map(|c| match c.checked_sub(width) {
                        Some(key) => width + kept.iter().position(|&k| k == key).unwrap_or(key),
                        None => c,
                    })
                    .collect(),
            );
        }
        let keys: Vec<&str> = kept.iter().map(|&i| names[i]).collect();
        let partition_fields: Vec<FieldRef> = keys
            .iter()
            .map(|k| Arc::new(Field::new(*k, DataType::Utf8, true)))
            .collect();
        let source =
            self.format
                .file_source(datafusion::datasource::table_schema::TableSchema::new(
                    self.file_schema.clone(),
                    partition_fields.clone(),
                ));
        // The files' fields, then the partition columns: what the scan's statistics and orderings
        // are stated over.
        let mut table_fields: Vec<FieldRef> = self.file_schema.fields().to_vec();
        table_fields.extend(partition_fields.iter().cloned());
        let table_schema = Arc::new(Schema::new(table_fields));
        let (groups, orderings, by_partition) = self
            .file_groups(state, files, &table_schema, &keys, by_symbol)
            .await;
        let statistics = table_statistics(&groups, &table_schema)?;
        let config = FileScanConfigBuilder::new(self.storage.url.clone(), source)
            .with_file_groups(groups)
            .with_output_ordering(orderings)
            .with_statistics(statistics)
            .with_projection_indices(projection)?
            .with_limit(limit)
            .with_partitioned_by_file_group(by_partition)
            .build();
        let plan = self.format.create_physical_plan(state, config).await?;
        // Files may name a column differently (`Adj Close` for `adj_close`): rename to the table's names.
        let out = plan.schema();
        if out
            .fields()
            .iter()
            .zip(projected.fields())
            .all(|(a, b)| a.name() == b.name())
        {
            return Ok(plan);
        }
        let exprs: Vec<ProjectionExpr> = out
            .fields()
            .iter()
            .zip(projected.fields())
            .enumerate()
            .map(|(i, (from, to))| ProjectionExpr {
                expr: Arc::new(ColumnExpr::new(from.name(), i)),
                alias: to.name().clone(),
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticklake_catalog::{Column, EmbeddedCatalog};

    fn lake_table(dir: &std::path::Path, folder: &str, columns: &[(&str, &str)]) -> LakeTable {
        let location = format!("file://{}/{folder}/", dir.display());
        std::fs::create_dir_all(dir.join(folder)).unwrap();
        let catalog = EmbeddedCatalog::open(&dir.join("catalog.sqlite"), "default").unwrap();
        let table = Table {
            name: "t".into(),
            location: location.clone(),
            columns: columns.iter().map(|(n, t)| Column::new(*n, *t)).collect(),
            partition_keys: vec![Column::new("symbol", "string")],
            format: StorageFormat::Parquet,
            parameters: Default::default(),
        };
        let storage = Storage::open(&location, &[]).unwrap();
        LakeTable::new(table, Arc::new(catalog), storage).unwrap()
    }

    /// The files of a set of partition folders, listed folder by folder and found in one walk of the
    /// table's folder: hidden and empty files, a folder the catalog does not know, a partition outside
    /// the usual layout and one inside another.
    #[tokio::test]
    async fn one_walk_of_the_table_finds_the_files_each_partition_listing_finds() {
        let dir = tempfile::tempdir().unwrap();
        let table = lake_table(dir.path(), "t", &[("close", "double")]);
        let root = dir.path().join("t");
        let write = |rel: &str, bytes: &[u8]| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        };
        let mut partitions = Vec::new();
        for i in 0..20 {
            let folder = format!("symbol=S{i:02}");
            write(&format!("{folder}/a.parquet"), b"1");
            write(&format!("{folder}/b.parquet"), b"22");
            partitions.push((folder, format!("S{i:02}")));
        }
        write("symbol=S00/_tmp/c.parquet", b"3");
        write("symbol=S00/.d.parquet", b"4");
        write("symbol=S01/empty.parquet", b"");
        write("symbol=S02/nested/e.parquet", b"5");
        write("symbol=UNKNOWN/f.parquet", b"6");
        write("_compacted/g1/symbol=C/h.parquet", b"7");
        write("symbol=S03/inner/i.parquet", b"8");
        partitions.push(("_compacted/g1/symbol=C".into(), "C".into()));
        partitions.push(("symbol=S03/inner".into(), "INNER".into()));
        let folders: Vec<(ObjectPath, Vec<ScalarValue>)> = partitions
            .iter()
            .map(|(rel, value)| {
                let path = table.storage.lake.object_path(rel).unwrap();
                (path, vec![ScalarValue::Utf8(Some(value.clone()))])
            })
            .collect();
        let listed = |files: Vec<PartitionedFile>| -> Vec<(String, u64, Vec<ScalarValue>)> {
            files
                .into_iter()
                .map(|f| {
                    let location = f.object_meta.location.to_string();
                    (location, f.object_meta.size, f.partition_values)
                })
                .collect()
        };
        for keep in [folders.len(), 16, 3] {
            let kept = folders[folders.len() - keep..].to_vec();
            let each = listed(table.files(kept.clone()).await.unwrap());
            let walked = listed(table.files_in_one_walk(kept).await.unwrap());
            assert_eq!(walked, each, "{keep} partitions kept");
            if keep == folders.len() {
                // 20 partitions of 2 files, the nested file, the compacted one, and the inner
                // partition's file twice (in S03 and in its own partition).
                assert_eq!(each.len(), 44);
                let names: Vec<&str> = each
                    .iter()
                    .map(|(l, ..)| l.rsplit('/').next().unwrap())
                    .collect();
                for hidden in ["c.parquet", ".d.parquet", "empty.parquet", "f.parquet"] {
                    assert!(
                        !names.contains(&hidden),
                        "{hidden} is not a file of a partition"
                    );
                }
            }
        }
    }

    /// One walk of the table's folder is taken for many partitions of a table none of whose partitions
    /// is compacted (a compacted one's old files stay in the table's folder for `--retention`).
    #[tokio::test]
    async fn one_walk_is_for_most_of_many_partitions_none_compacted() {
        use datafusion::prelude::{col, lit, SessionContext};
        let dir = tempfile::tempdir().unwrap();
        let table = lake_table(dir.path(), "t", &[("close", "double")]);
        table.catalog.create_table(&table.table).await.unwrap();
        let partition = |rel: &str, value: &str| Partition {
            values: vec![value.to_owned()],
            location: format!("{}{rel}/", table.table.location),
        };
        let plain: Vec<Partition> = (0..20)
            .map(|i| partition(&format!("symbol=S{i:02}"), &format!("S{i:02}")))
            .collect();
        table.catalog.add_partitions("t", &plain).await.unwrap();
        let state = SessionContext::new().state();
        let fits = |filters: Vec<Expr>| {
            let (table, state) = (&table, &state);
            async move {
                let pruned = table.pruned_partitions(state, &filters).await.unwrap();
                (pruned.kept.len(), pruned.fit_one_walk())
            }
        };
        assert_eq!(fits(vec![]).await, (20, true));
        assert_eq!(
            fits(vec![col("symbol").gt_eq(lit("S04"))]).await,
            (16, true)
        );
        assert_eq!(
            fits(vec![col("symbol").gt_eq(lit("S05"))]).await,
            (15, false)
        );
        let more: Vec<Partition> = (0..20)
            .map(|i| partition(&format!("symbol=T{i:02}"), &format!("T{i:02}")))
            .collect();
        table.catalog.add_partitions("t", &more).await.unwrap();
        assert_eq!(fits(vec![col("symbol").lt(lit("T"))]).await, (20, true));
        assert_eq!(fits(vec![col("symbol").lt(lit("T04"))]).await, (24, true));
        let fewer_than_half = col("symbol")
            .gt_eq(lit("S04"))
            .and(col("symbol").lt(lit("T")));
        assert_eq!(fits(vec![fewer_than_half]).await, (16, false));
        let compacted = partition("_compacted/g1/symbol=C", "C");
        table
            .catalog
            .add_partitions("t", &[compacted])
            .await
            .unwrap();
        assert_eq!(fits(vec![]).await, (41, false));
    }

    /// A partition is read only inside the table's folder: not in a sibling folder whose name starts
    /// with the table's, nor above it through `..`.
    #[test]
    fn a_partition_location_is_taken_only_inside_the_table_folder() {
        let dir = tempfile::tempdir().unwrap();
        let table = lake_table(dir.path(), "t", &[("close", "double")]);
        let at = |rel: &str| Partition {
            values: vec!["X".into()],
            location: format!("file://{}/{rel}", dir.path().display()),
        };
        assert_eq!(
            table.relative_location(&at("t/symbol=X/")),
            Some("symbol=X/")
        );
        assert_eq!(table.relative_location(&at("t/")), Some(""));
        assert_eq!(table.relative_location(&at("t2/symbol=X/")), None);
        assert_eq!(table.relative_location(&at("t/../u/symbol=X/")), None);
        let outside = table.partition_path(&at("t2/symbol=X/")).unwrap_err();
        assert!(
            outside.to_string().contains("outside the table's location"),
            "{outside}"
        );
    }

    /// A refreshed table shares the statistics of the table it replaces only where they still hold:
    /// they are stated over the file schema, and keyed by paths in one store.
    #[test]
    fn a_refreshed_table_keeps_statistics_only_of_the_same_files_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let columns = [("ts", "timestamp"), ("close", "double")];
        let before = lake_table(dir.path(), "t", &columns);
        let shares = |after: LakeTable| {
            Arc::ptr_eq(
                &after.keeping_statistics_of(&before).file_statistics,
                &before.file_statistics,
            )
        };
        assert!(shares(lake_table(dir.path(), "t", &columns)));
        assert!(!shares(lake_table(dir.path(), "elsewhere", &columns)));
        let added = [
            ("ts", "timestamp"),
            ("close", "double"),
            ("volume", "double"),
        ];
        assert!(!shares(lake_table(dir.path(), "t", &added)));
        let retyped = [("ts", "timestamp"), ("close", "float")];
        assert!(!shares(lake_table(dir.path(), "t", &retyped)));
        let mut json = lake_table(dir.path(), "t", &columns);
        json.table.format = StorageFormat::Json;
        assert!(!shares(json));
    }
}
