//! The query engine: a DataFusion session whose tables are the catalog's, read-only.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{AggregateUDF, Expr, LogicalPlan};
use datafusion::optimizer::OptimizerRule;
use futures::future::BoxFuture;
use ticklake_catalog::Catalog;

use datafusion::catalog::{SchemaProvider, TableProvider};
use ticklake_iceberg::IcebergLake;

use crate::files::Files;
use crate::folder_distinct::FolderDistinct;
use crate::helpers::{vwap_udaf, Ohlcv, Tables};
use crate::iceberg::{AsOf, IcebergTable, IcebergTables, Snapshots};
use crate::output_bounds::bound_function_outputs;
use crate::provider::{partition_value, LakeTable, Storage};
use crate::run_aggregate::RunAggregate;
use crate::window_topn::WindowTopN;
use crate::yielding::YieldingJoins;
use crate::QueryError;

/// The catalog name queries see (Athena's is `AwsDataCatalog`); tables are in the schema named after
/// the catalog's database, which is also the default, so `prices`, `ticklake.prices` and
/// `awsdatacatalog.ticklake.prices` all work.
pub const CATALOG_NAME: &str = "awsdatacatalog";

/// The result of one statement.
#[derive(Debug, Clone)]
pub struct Output {
    /// Its columns.
    pub schema: SchemaRef,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
}

impl Output {
    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// How an engine runs queries: where tables may be, and the limits that keep one query from taking
/// the machine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// object_store settings applied over the `AWS_*` environment for S3 tables.
    pub s3_options: Vec<(String, String)>,
    /// Memory that one query's operators (sorts, joins, aggregations) may hold; beyond it they spill
    /// to disk where they can, or the query fails with a message naming the limit.
    pub memory_limit: Option<usize>,
    /// A statement still running after this long is stopped with an error.
    pub timeout: Option<Duration>,
    /// Local folders (`file://` URLs) whose tables may be read. A table of the catalog on local disk
    /// outside all of them is refused, so that a catalog entry cannot make a query read any file of
    /// the machine. Tables in object stores (`s3://`) are read with the store's own permissions.
    pub allowed_locations: Vec<String>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            s3_options: Vec::new(),
            memory_limit: Some(DEFAULT_MEMORY_LIMIT),
            timeout: Some(DEFAULT_TIMEOUT),
            allowed_locations: Vec::new(),
        }
    }
}

/// The default memory limit of a query: 4 GiB.
pub const DEFAULT_MEMORY_LIMIT: usize = 4 << 30;
/// The default time limit of a statement: 10 minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// SQL over the catalog's tables.
pub struct Engine {
    ctx: SessionContext,
    catalog: Arc<dyn Catalog>,
    iceberg: Option<Arc<IcebergLake>>,
    database: String,
    options: EngineOptions,
    tables: Tables,
    iceberg_tables: IcebergTables,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("catalog", &self.catalog.describe())
            .finish()
    }
}

/// The values of some partition keys, one row per partition, None where queries read NULL.
pub type PartitionValues = Vec<Vec<Option<String>>>;

impl Engine {
    /// A session over every table of `catalog` (its `database` is the default schema).
    pub fn new<'a>(
        catalog: Arc<dyn Catalog>,
        database: &'a str,
        options: EngineOptions,
    ) -> BoxFuture<'a, Result<Engine, QueryError>> {
        Engine::with_iceberg(catalog, None, database, options)
    }

    /// A session over every table of `catalog` and every Iceberg table of `iceberg` (an Iceberg
    /// table hides a catalog table of the same name).
    pub fn with_iceberg<'a>(
        catalog: Arc<dyn Catalog>,
        iceberg: Option<Arc<IcebergLake>>,
        database: &'a str,
        options: EngineOptions,
    ) -> BoxFuture<'a, Result<Engine, QueryError>> {
        Box::pin(async move {
            let mut config = SessionConfig::new()
                .with_default_catalog_and_schema(CATALOG_NAME, database)
                .with_create_default_catalog_and_schema(true)
                .with_information_schema(true);
            config.options_mut().sql_parser.collect_spans = true;
            let mut runtime = RuntimeEnvBuilder::new();
            if let Some(limit) = options.memory_limit {
                // A fair pool, not DataFusion's default greedy one: with a sort per partition, a greedy
                // pool let one partition's sorter keep the memory the other's spill merge needed, and a
                // window over 100 M rows failed under 4 GiB instead of spilling (2 M rows under 64 MiB).
                let pool = FairSpillPool::new(limit);
                runtime = runtime.with_memory_pool(Arc::new(TrackConsumersPool::new(
                    pool,
                    NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN),
                )));
            }
            // DataFusion's logical rules, with its single-distinct rewrite replaced by one that
            // leaves aggregates grouped by partition folders alone (see `folder_distinct`).
            let optimizer_rules = datafusion::optimizer::Optimizer::new()
                .rules
                .into_iter()
                .map(|rule| {
                    if rule.name() == FolderDistinct::REPLACES {
                        Arc::new(FolderDistinct::default()) as Arc<dyn OptimizerRule + Send + Sync>
                    } else {
                        rule
                    }
                })
                .collect();
            let state = SessionStateBuilder::new()
                .with_config(config)
                .with_runtime_env(runtime.build_arc()?)
                .with_default_features()
                .with_optimizer_rules(optimizer_rules)
                .with_physical_optimizer_rule(Arc::new(WindowTopN))
                .with_physical_optimizer_rule(Arc::new(RunAggregate::default()))
                .with_physical_optimizer_rule(Arc::new(YieldingJoins))
                .build();
            let ctx = SessionContext::new_with_state(state);
            bound_function_outputs(&ctx, options.memory_limit);
            let tables: Tables = Arc::new(RwLock::new(HashMap::new()));
            let iceberg_tables: IcebergTables = Arc::new(RwLock::new(HashMap::new()));
            ctx.register_udaf(vwap_udaf());
            ctx.register_udtf(
                "files",
                Arc::new(Files {
                    tables: tables.clone(),
                }),
            );
            ctx.register_udtf(
                "ohlcv",
                Arc::new(Ohlcv {
                    tables: tables.clone(),
                }),
            );
            ctx.register_udtf(
                "snapshots",
                Arc::new(Snapshots {
                    tables: iceberg_tables.clone(),
                }),
            );
            ctx.register_udtf(
                "as_of",
                Arc::new(AsOf {
                    tables: iceberg_tables.clone(),
                }),
            );
            ctx.catalog(CATALOG_NAME)
                .ok_or_else(|| QueryError::Execution(format!("no catalog {CATALOG_NAME}")))?
                .register_schema(
                    database,
                    Arc::new(LakeSchema {
                        tables: tables.clone(),
                    }),
                )?;
            let engine = Engine {
                ctx,
                catalog,
                iceberg,
                database: database.to_owned(),
                options,
                tables,
                iceberg_tables,
            };
            engine.refresh().await?;
            Ok(engine)
        })
    }

    /// Re-reads the table definitions from the catalogs (partitions, and Iceberg tables' current
    /// snapshots, are read at every query anyway).
    pub fn refresh<'a>(&'a self) -> BoxFuture<'a, Result<(), QueryError>> {
        Box::pin(async move {
            let defs = self.catalog.list_tables().await?;
            let before = self
                .tables
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let mut stores: HashSet<String> = HashSet::new();
            let mut tables: HashMap<String, Arc<dyn TableProvider>> = HashMap::new();
            for def in defs {
                if let Err(why) = self.check_location(&def.location) {
                    // The table stays unknown to queries; naming it says why.
                    tracing::warn!("table {}: {why}", def.name);
                    continue;
                }
                let storage = Storage::open(&def.location, &self.options.s3_options)
                    .map_err(|e| QueryError::Table(def.name.clone(), e.to_string()))?;
                if stores.insert(storage.url.as_str().to_owned()) {
                    self.ctx
                        .register_object_store(storage.url.as_ref(), storage.store.clone());
                }
                let name = def.name.clone();
                let mut table = LakeTable::new(def, self.catalog.clone(), storage)
                    .map_err(|e| QueryError::Table(name.clone(), e.to_string()))?;
                if let Some(before) = before
                    .get(&name)
                    .and_then(|t| t.as_any().downcast_ref::<LakeTable>())
                {
                    table = table.keeping_statistics_of(before);
                }
                tables.insert(name, Arc::new(table));
            }
            let mut iceberg_tables = HashMap::new();
            if let Some(lake) = &self.iceberg {
                for name in lake.tables().await.map_err(iceberg_error)? {
                    // A broken table (its metadata file missing or corrupt) is left out, with the reason,
                    // and the others stay queryable.
                    let table =
                        match IcebergTable::open(lake.clone(), &name, &self.options.s3_options)
                            .await
                        {
                            Ok(t) => t,
                            Err(e) => {
                                tracing::warn!("Iceberg table {name} cannot be read: {e}");
                                continue;
                            }
                        };
                    if let Err(why) = self.check_location(table.location()) {
                        tracing::warn!("table {name}: {why}");
                        continue;
                    }
                    let storage = table.storage();
                    if stores.insert(storage.url.as_str().to_owned()) {
                        self.ctx
                            .register_object_store(storage.url.as_ref(), storage.store.clone());
                    }
                    if tables.contains_key(&name) {
                        tracing::warn!(
                            "table {name} is both an Iceberg table and a table of {}: queries read the Iceberg table",
                            self.catalog.describe()
                        );
                    }
                    let table = Arc::new(table);
                    iceberg_tables.insert(name.clone(), table.clone());
                    tables.insert(name, table);
                }
            }
            // Queries find their tables in this map (see `LakeSchema`): swapping it in one step means a
            // query planned during a refresh (a server refreshes while it answers) never finds a table
            // missing.
            *self.tables.write().unwrap_or_else(|p| p.into_inner()) = tables;
            *self
                .iceberg_tables
                .write()
                .unwrap_or_else(|p| p.into_inner()) = iceberg_tables;
            Ok(())
        })
    }

    /// The Iceberg table of that name, if there is one.
    fn iceberg_table(&self, name: &str) -> Option<Arc<IcebergTable>> {
        self.iceberg_tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Refuses local tables outside the allowed folders.
    fn check_location(&self, location: &str) -> Result<(), String> {
        if !location.starts_with("file:") && location.contains("://") {
            return Ok(());
        }
        let folder = |l: &str| format!("{}/", l.trim_end_matches('/'));
        let target = folder(location);
        if target.split('/').any(|seg| seg == "..") {
            return Err(format!("its location {location} contains `..`"));
        }
        if self
            .options
            .allowed_locations
            .iter()
            .any(|a| target.starts_with(&folder(a)))
        {
            return Ok(());
        }
        Err(format!(
            "its location {location} is on local disk outside the lake ({}); \
             allow it with --allow-location {location}",
            self.options.allowed_locations.join(", ")
        ))
    }

    /// The catalog behind the engine.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// Runs one statement. `SHOW TABLES`, `DESCRIBE <table>` and `SHOW PARTITIONS <table>` answer
    /// from the catalog as Athena does; anything that would write or change the lake or the catalog is
    /// refused.
    pub fn execute<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<Output, QueryError>> {
        Box::pin(self.timed(self.run(sql, None)))
    }

    /// Runs one statement as [`Engine::execute`] does, but stops once it has `max_rows` rows: the
    /// plan itself is limited, so a query over a large table does not compute rows it would throw
    /// away. The flag is true when the statement had more rows than were returned.
    pub fn execute_limited<'a>(
        &'a self,
        sql: &'a str,
        max_rows: usize,
    ) -> BoxFuture<'a, Result<(Output, bool), QueryError>> {
        Box::pin(async move {
            let plan_limit = max_rows.saturating_add(1).min(i64::MAX as usize);
            let mut out = self.timed(self.run(sql, Some(plan_limit))).await?;
            let truncated = out.rows() > max_rows;
            if truncated {
                let mut left = max_rows;
                out.batches = out
                    .batches
                    .iter()
                    .filter_map(|b| {
                        let take = b.num_rows().min(left);
                        left -= take;
                        (take > 0).then(|| b.slice(0, take))
                    })
                    .collect();
            }
            Ok((out, truncated))
        })
    }

    /// Whether queries see a table of this name (spelt as the catalog spells it), as of the last
    /// [`Engine::refresh`].
    pub fn has_table(&self, name: &str) -> bool {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    /// The values of `keys` of each partition of table `name` (in `keys` order), from the catalog,
    /// when queries read `name` as a catalog table partitioned by every one of `keys`; None for an
    /// Iceberg table, a table without one of the keys, or no table. A value is None where queries
    /// read NULL (Hive's `__HIVE_DEFAULT_PARTITION__`). For answers that partition values alone give
    /// (a table's symbols), or that they narrow (the partitions a query need read).
    pub fn partition_values<'a>(
        &'a self,
        name: &'a str,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Option<PartitionValues>, QueryError>> {
        Box::pin(async move {
            let provider = self
                .tables
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                .cloned();
            let Some(table) = provider
                .as_ref()
                .and_then(|p| p.as_any().downcast_ref::<LakeTable>())
            else {
                return Ok(None);
            };
            let definition = table.definition();
            let Some(positions) = keys
                .iter()
                .map(|k| definition.partition_keys.iter().position(|c| c.name == *k))
                .collect::<Option<Vec<usize>>>()
            else {
                return Ok(None);
            };
            let partitions = self.catalog.list_partitions(&definition.name).await?;
            Ok(Some(
                partitions
                    .into_iter()
                    .map(|p| positions.iter().map(|i| partition_value(&p, *i)).collect())
                    .collect(),
            ))
        })
    }

    /// The database whose tables queries see (the default schema).
    pub fn database(&self) -> &str {
        &self.database
    }

    async fn timed(
        &self,
        run: impl std::future::Future<Output = Result<Output, QueryError>>,
    ) -> Result<Output, QueryError> {
        let result = match self.options.timeout {
            Some(limit) => tokio::time::timeout(limit, run)
                .await
                .map_err(|_| QueryError::Timeout(limit))?,
            None => run.await,
        };
        result.map_err(|e| match e {
            QueryError::MemoryLimit {
                limit: None,
                detail,
            } => QueryError::MemoryLimit {
                limit: self.options.memory_limit,
                detail,
            },
            e => e,
        })
    }

    async fn run(&self, sql: &str, limit: Option<usize>) -> Result<Output, QueryError> {
        if let Some(out) = self.athena_statement(sql).await? {
            return Ok(out);
        }
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = self
            .ctx
            .sql_with_options(sql, options)
            .await
            .map_err(|e| QueryError::from_datafusion(e, sql))?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let (mut state, plan) = df.into_parts();
        // Lake files declare their order (`symbol, ts`, see `LakeTable`). A window over it keeps the
        // order through repartitioning (merging ordered streams) instead of sorting every row; other
        // queries repartition freely (an order-preserving merge serialises parallel aggregation, and
        // sorting their small results again costs nothing).
        let window = plan
            .exists(|node| Ok(matches!(node, LogicalPlan::Window(_))))
            .unwrap_or(false);
        let optimizer = &mut state.config_mut().options_mut().optimizer;
        optimizer.prefer_existing_sort = window;
        // A window over one table read through single-input operators has the lake's scans keep
        // each symbol's files in one partition, so `PARTITION BY symbol` needs no hash repartition
        // (`symbol_groups` in `file_groups.rs`). Not with joins, unions or subqueries: there DataFusion
        // could match the scan's partitions against another input's hashed ones.
        // Not for the top rows of each group (`row_number() ... = 1`): `WindowTopN` keeps a few rows
        // per group as the files are read, so the scan gains nothing from whole symbols and loses the
        // split of a table of few symbols over every core (1 symbol: 84 -> 128 ms).
        optimizer.preserve_file_partitions =
            usize::from(window && reads_one_table(&plan) && !numbers_top_rows(&plan));
        let mut df = DataFrame::new(state, plan);
        if let Some(n) = limit {
            df = df
                .limit(0, Some(n))
                .map_err(|e| QueryError::from_datafusion(e, sql))?;
        }
        let batches = df
            .collect()
            .await
            .map_err(|e| QueryError::from_datafusion(e, sql))?;
        Ok(Output { schema, batches })
    }

    /// The statements answered from the catalog.
    async fn athena_statement(&self, sql: &str) -> Result<Option<Output>, QueryError> {
        let words: Vec<&str> = sql
            .trim()
            .trim_end_matches(';')
            .split_whitespace()
            .collect();
        let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
        let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
        match lower.as_slice() {
            ["show", "tables"] => {
                let mut names: Vec<String> = self
                    .catalog
                    .list_tables()
                    .await?
                    .into_iter()
                    .map(|t| t.name)
                    .collect();
                if let Some(lake) = &self.iceberg {
                    names.extend(lake.tables().await.map_err(iceberg_error)?);
                }
                names.sort();
                names.dedup();
                Ok(Some(strings(&[("tab_name", names)])))
            }
            ["describe" | "desc", _] | ["describe" | "desc", "table", _] => {
                let name = self.table_name(words[words.len() - 1])?;
                if let Some(t) = self.iceberg_table(&name) {
                    return Ok(Some(describe_iceberg(&t)));
                }
                self.check_table(&name).await?;
                let t = self
                    .catalog
                    .get_table(&name)
                    .await?
                    .ok_or(ticklake_catalog::CatalogError::NoSuchTable(name))?;
                let mut cols = Vec::new();
                let mut types = Vec::new();
                let mut comments = Vec::new();
                for c in &t.columns {
                    cols.push(c.name.clone());
                    types.push(c.data_type.clone());
                    comments.push(String::new());
                }
                for k in &t.partition_keys {
                    cols.push(k.name.clone());
                    types.push(k.data_type.clone());
                    comments.push("partition key".into());
                }
                Ok(Some(strings(&[
                    ("col_name", cols),
                    ("data_type", types),
                    ("comment", comments),
                ])))
            }
            ["show", "partitions", _] => {
                let name = self.table_name(words[2])?;
                if let (Some(_), Some(lake)) = (self.iceberg_table(&name), &self.iceberg) {
                    let parts = lake.partitions(&name).await.map_err(iceberg_error)?;
                    return Ok(Some(iceberg_partitions(&parts)));
                }
                self.check_table(&name).await?;
                let t = self
                    .catalog
                    .get_table(&name)
                    .await?
                    .ok_or(ticklake_catalog::CatalogError::NoSuchTable(name.clone()))?;
                if t.partition_keys.is_empty() {
                    return Err(QueryError::Sql {
                        message: format!("table {name} is not partitioned"),
                        position: None,
                    });
                }
                let parts: Vec<String> = self
                    .catalog
                    .list_partitions(&name)
                    .await?
                    .iter()
                    .map(|p| p.display(&t.partition_keys))
                    .collect();
                Ok(Some(strings(&[("partition", parts)])))
            }
            _ => Ok(None),
        }
    }

    /// Fails with the reason when the catalog has the table but queries may not read it.
    async fn check_table(&self, name: &str) -> Result<(), QueryError> {
        if let Some(t) = self.catalog.get_table(name).await? {
            self.check_location(&t.location)
                .map_err(|why| QueryError::Table(name.to_owned(), why))?;
        }
        Ok(())
    }

    /// A table name as written in a statement: `t`, `"t"`, `db.t`.
    fn table_name(&self, written: &str) -> Result<String, QueryError> {
        let parts: Vec<String> = written
            .split('.')
            .map(|p| p.trim_matches(['"', '`']).to_owned())
            .collect();
        match parts.as_slice() {
            [t] => Ok(t.to_ascii_lowercase()),
            [db, t] | [_, db, t] if db.eq_ignore_ascii_case(&self.database) => {
                Ok(t.to_ascii_lowercase())
            }
            _ => Err(QueryError::Sql {
                message: format!(
                    "{written}: only tables of database {} are visible",
                    self.database
                ),
                position: None,
            }),
        }
    }

    /// Registers an extra aggregate function (for embedding programs).
    pub fn register_udaf(&self, f: AggregateUDF) {
        self.ctx.register_udaf(f);
    }
}

/// The schema queries see: the engine's current tables, read from the map `refresh` replaces.
#[derive(Debug)]
struct LakeSchema {
    tables: Tables,
}

#[async_trait::async_trait]
impl SchemaProvider for LakeSchema {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        Ok(self
            .tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned())
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }
}

fn iceberg_error(e: ticklake_iceberg::IcebergError) -> QueryError {
    QueryError::Execution(e.to_string())
}

/// `DESCRIBE` of an Iceberg table: its columns, then its partition fields (hidden partitioning: they
/// are derived from columns, and filters on those columns prune by them).
fn describe_iceberg(t: &IcebergTable) -> Output {
    let metadata = t.metadata();
    let schema = metadata.current_schema();
    let mut cols = Vec::new();
    let mut types = Vec::new();
    let mut comments = Vec::new();
    for f in schema.as_struct().fields() {
        cols.push(f.name.clone());
        types.push(f.field_type.to_string());
        comments.push(f.doc.clone().unwrap_or_default());
    }
    for p in metadata.default_partition_spec().fields() {
        let source = schema
            .field_by_id(p.source_id)
            .map_or_else(|| p.source_id.to_string(), |f| f.name.clone());
        cols.push(p.name.clone());
        types.push(format!("{}({source})", p.transform));
        comments.push("partition field (hidden: filter on the source column)".into());
    }
    strings(&[
        ("col_name", cols),
        ("data_type", types),
        ("comment", comments),
    ])
}

/// `SHOW PARTITIONS` of an Iceberg table: each partition of the current snapshot with its files.
fn iceberg_partitions(parts: &[ticklake_iceberg::PartitionFiles]) -> Output {
    use arrow::array::{ArrayRef, Int64Array};
    let schema = Arc::new(Schema::new(vec![
        Field::new("partition", DataType::Utf8, false),
        Field::new("files", DataType::Int64, false),
        Field::new("records", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, false),
    ]));
    let int = |f: &dyn Fn(&ticklake_iceberg::PartitionFiles) -> u64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            parts
                .iter()
                .map(|p| i64::try_from(f(p)).unwrap_or(i64::MAX)),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            parts.iter().map(|p| p.partition.as_str()),
        )),
        int(&|p| p.files as u64),
        int(&|p| p.records),
        int(&|p| p.bytes),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).expect("columns of equal length");
    Output {
        schema,
        batches: vec![batch],
    }
}

fn strings(columns: &[(&str, Vec<String>)]) -> Output {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, _)| Field::new(*n, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let arrays = columns
        .iter()
        .map(|(_, v)| Arc::new(StringArray::from(v.clone())) as _)
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays).expect("columns of equal length");
    Output {
        schema,
        batches: vec![batch],
    }
}

/// Splits a script into statements at the `;` tokens of the SQL tokenizer (so `;` inside quotes,
/// identifiers and `--` or `/* */` comments is left alone). A script that cannot be tokenized (an
/// unterminated string or comment) is an error with its position.
pub fn split_statements(sql: &str) -> Result<Vec<String>, QueryError> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| QueryError::Sql {
            message: format!("SQL error: {}", e.message),
            position: Some((e.location.line, e.location.column)),
        })?;
    // Byte offset of each line's start, to turn (line, column) locations into offsets.
    let mut line_starts = vec![0usize];
    line_starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
    let offset = |line: u64, column: u64| -> usize {
        let start = line_starts
            .get((line as usize).saturating_sub(1))
            .copied()
            .unwrap_or(sql.len());
        sql[start..]
            .char_indices()
            .nth((column as usize).saturating_sub(1))
            .map_or(sql.len(), |(i, _)| start + i)
    };
    let mut out = Vec::new();
    let (mut from, mut meaningful) = (0usize, false);
    for t in &tokens {
        match &t.token {
            Token::SemiColon => {
                let at = offset(t.span.start.line, t.span.start.column);
                if meaningful {
                    out.push(sql[from..at].trim().to_owned());
                }
                from = at + 1;
                meaningful = false;
            }
            Token::Whitespace(_) | Token::EOF => {}
            _ => meaningful = true,
        }
    }
    if meaningful {
        out.push(sql[from..].trim().to_owned());
    }
    Ok(out)
}

/// Whether `plan` reads one table scan through operators of one input each (no join, union or
/// subquery anywhere in it), or explains such a plan.
fn reads_one_table(plan: &LogicalPlan) -> bool {
    let mut scans = 0;
    let mut linear = true;
    let _ = plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::TableScan(_) => scans += 1,
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Window(_)
            | LogicalPlan::Aggregate(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Distinct(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_) => {}
            _ => linear = false,
        }
        Ok(if linear {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    linear && scans == 1
}

/// Whether `plan` filters a `row_number()` window (the top rows of each group, which the
/// `WindowTopN` rule keeps as the rows are read), or explains such a plan.
fn numbers_top_rows(plan: &LogicalPlan) -> bool {
    fn below_renames(plan: &LogicalPlan) -> &LogicalPlan {
        match plan {
            LogicalPlan::Projection(p) => below_renames(&p.input),
            LogicalPlan::SubqueryAlias(a) => below_renames(&a.input),
            other => other,
        }
    }
    plan.exists(|node| {
        let LogicalPlan::Filter(filter) = node else {
            return Ok(false);
        };
        let LogicalPlan::Window(window) = below_renames(&filter.input) else {
            return Ok(false);
        };
        Ok(window.window_expr.iter().any(|e| {
            let e = match e {
                Expr::Alias(a) => &*a.expr,
                e => e,
            };
            matches!(e, Expr::WindowFunction(f) if f.fun.name() == "row_number")
        }))
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        assert_eq!(
            split_statements("select 1; select ';' as x -- a ; comment\n; ;show tables").unwrap(),
            ["select 1", "select ';' as x -- a ; comment", "show tables"]
        );
        assert_eq!(
            split_statements("select 1 /* ; */ + 1; select \"a;b\" from t").unwrap(),
            ["select 1 /* ; */ + 1", "select \"a;b\" from t"]
        );
        assert_eq!(
            split_statements("select 'ü;' ;\n  select 2").unwrap(),
            ["select 'ü;'", "select 2"]
        );
        assert!(split_statements("  ;; -- nothing\n").unwrap().is_empty());
        let err = split_statements("select 1;\nselect 'open").unwrap_err();
        assert!(
            matches!(
                err,
                QueryError::Sql {
                    position: Some((2, _)),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// A session with an empty table `t` of symbols, times and closes.
    async fn ticks_table() -> SessionContext {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t (symbol TEXT, ts BIGINT, close DOUBLE)")
            .await
            .unwrap();
        ctx
    }

    /// Only a plan over one table through single-input operators may have its scan keep symbols'
    /// files together: anything that combines inputs could pair its partitions with hashed ones.
    #[tokio::test]
    async fn one_table_plans_are_told_from_plans_that_combine_inputs() {
        let ctx = ticks_table().await;
        let cases = [
            ("SELECT symbol, max(r) FROM (SELECT symbol, close / lag(close) OVER (PARTITION BY symbol ORDER BY ts) AS r FROM t) GROUP BY symbol ORDER BY 1 LIMIT 3", true),
            ("SELECT DISTINCT symbol FROM t WHERE close > 1", true),
            ("EXPLAIN ANALYZE SELECT symbol, row_number() OVER (PARTITION BY symbol ORDER BY ts) FROM t", true),
            ("SELECT a.symbol FROM t a JOIN t b ON a.symbol = b.symbol", false),
            ("SELECT symbol FROM t UNION ALL SELECT symbol FROM t", false),
            ("SELECT symbol FROM t WHERE symbol IN (SELECT symbol FROM t WHERE close > 1)", false),
            ("SELECT symbol, (SELECT max(close) FROM t) FROM t", false),
            ("SELECT 1", false),
        ];
        for (sql, one) in cases {
            let plan = ctx.sql(sql).await.unwrap().into_unoptimized_plan();
            assert_eq!(reads_one_table(&plan), one, "{sql}\n{plan}");
        }
    }

    /// The top rows of each group are told from other windows over `row_number()`.
    #[tokio::test]
    async fn top_rows_per_group_are_told_from_other_windows() {
        let ctx = ticks_table().await;
        let cases = [
            ("SELECT symbol, ts FROM (SELECT symbol, ts, row_number() OVER (PARTITION BY symbol ORDER BY ts DESC) AS rn FROM t) WHERE rn = 1 ORDER BY symbol", true),
            ("EXPLAIN SELECT * FROM (SELECT symbol, row_number() OVER (PARTITION BY symbol ORDER BY ts) AS rn FROM t) x WHERE x.rn <= 3", true),
            ("SELECT symbol, row_number() OVER (PARTITION BY symbol ORDER BY ts) FROM t", false),
            ("SELECT * FROM (SELECT symbol, close / lag(close) OVER (PARTITION BY symbol ORDER BY ts) AS r FROM t) WHERE r > 0", false),
            ("SELECT symbol, count(*) FROM t WHERE close > 1 GROUP BY symbol", false),
        ];
        for (sql, top) in cases {
            let plan = ctx.sql(sql).await.unwrap().into_unoptimized_plan();
            assert_eq!(numbers_top_rows(&plan), top, "{sql}\n{plan}");
        }
    }
}
