//! The lake's Iceberg tables: where they are cataloged, how a checkpoint is appended.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use arrow::compute::BatchCoalescer;
use arrow_array::RecordBatch;
use arrow_schema::Schema as ArrowSchema;
use futures::future::BoxFuture;
use iceberg::arrow::{
    arrow_schema_to_schema_auto_assign_ids, arrow_type_to_type, schema_to_arrow_schema,
};
use iceberg::spec::{
    DataFileFormat, NullOrder, SortDirection, SortField, SortOrder, TableMetadataRef, Transform,
    UnboundPartitionSpec,
};
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::{Catalog, CatalogBuilder, ErrorKind, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_glue::{
    GlueCatalogBuilder, AWS_REGION_NAME, GLUE_CATALOG_PROP_URI, GLUE_CATALOG_PROP_WAREHOUSE,
};
use iceberg_catalog_rest::{
    RestCatalogBuilder, REST_CATALOG_PROP_URI, REST_CATALOG_PROP_WAREHOUSE,
};
use iceberg_catalog_sql::{
    SqlBindStyle, SqlCatalogBuilder, SQL_CATALOG_PROP_BIND_STYLE, SQL_CATALOG_PROP_URI,
    SQL_CATALOG_PROP_WAREHOUSE,
};
use ticklake_model::arrow::project;

use crate::config::{rest_prefix, s3_properties, storage};
use crate::fenced::FencedCatalog;
use crate::raw_catalog::RawCatalog;
use crate::IcebergError;
use crate::{IcebergCatalog, IcebergConfig};

/// The catalog's name in its SQL tables (`iceberg_tables.catalog_name`); pyiceberg's `SqlCatalog`
/// must be given the same name to see the tables.
pub(crate) const CATALOG_NAME: &str = "ticklake";

/// The offset range of one Kafka partition in an append: `from` (inclusive) to `to` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetRange {
    /// The topic's partition.
    pub partition: i32,
    /// The first offset.
    pub from: i64,
    /// One past the last offset.
    pub to: i64,
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// The checkpoint is in the table, as the snapshot `snapshot_id`.
    Committed {
        /// The new current snapshot.
        snapshot_id: i64,
        /// Data files added.
        files: usize,
        /// Their size in bytes.
        bytes: u64,
    },
    /// Refused: the table holds `partition` up to `recorded`, not up to the range's start (another
    /// writer committed it, or this one is stale). Nothing was added.
    Taken {
        /// The partition whose range does not follow on.
        partition: i32,
        /// Where the table says the partition ends.
        recorded: Option<i64>,
    },
}

/// The live data files of one partition of a table's current snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFiles {
    /// The partition as a path, e.g. `ts_day=2024-01-02`.
    pub partition: String,
    /// How many data files it has.
    pub files: usize,
    /// Rows in them.
    pub records: u64,
    /// Their size in bytes.
    pub bytes: u64,
}

/// What registering a table's metadata file in the catalog did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// The table is new to the catalog.
    New,
    /// The catalog already points at that metadata file.
    Same,
    /// The catalog has the table at another metadata file (left as it is: it may be newer).
    Other(String),
}

/// The Iceberg tables of one lake and their catalog.
pub struct IcebergLake {
    pub(crate) catalog: Arc<dyn Catalog>,
    pub(crate) namespace: NamespaceIdent,
    /// Where tables get their folders: the lake's root URL.
    root: String,
    /// The catalog reached directly, for commits the Iceberg library cannot make.
    pub(crate) raw: RawCatalog,
    /// What the catalog is, for messages.
    described: String,
    /// Times are written without a time zone (`timestamp`, holding UTC): Glue has no
    /// timestamp-with-time-zone column type, and Athena's Iceberg tables do not take one.
    naive_times: bool,
}

impl IcebergLake {
    /// The embedded catalog of a lake on local disk: Iceberg's SQL catalog in the SQLite file
    /// `<lake>/_ticklake/iceberg.sqlite`; each table's data and metadata in `<lake>/<table>/`.
    pub fn embedded<'a>(lake: &'a Path) -> BoxFuture<'a, Result<IcebergLake, IcebergError>> {
        Box::pin(async move { IcebergLake::open(&IcebergConfig::embedded(lake)?).await })
    }

    /// The catalog `config` names, if it can have tables: an SQL catalog's file must exist (it is not
    /// made by looking), Glue and REST catalogs are asked.
    pub fn open_if_present<'a>(
        config: &'a IcebergConfig,
    ) -> BoxFuture<'a, Result<Option<IcebergLake>, IcebergError>> {
        Box::pin(async move {
            match &config.catalog {
                IcebergCatalog::Sql { file } if !file.is_file() => Ok(None),
                _ => Ok(Some(IcebergLake::open(config).await?)),
            }
        })
    }

    /// Opens the catalog `config` names, making its namespace if it has none.
    pub fn open<'a>(config: &'a IcebergConfig) -> BoxFuture<'a, Result<IcebergLake, IcebergError>> {
        Box::pin(async move {
            let described = config.describe();
            let invalid = |message: String| IcebergError::Catalog {
                catalog: described.clone(),
                message,
            };
            let err = |source: iceberg::Error| invalid(crate::config::error_chain(&source));
            let root = config.warehouse.trim_end_matches('/').to_owned();
            let local = root.starts_with("file://");
            let mut props = if local {
                HashMap::new()
            } else {
                s3_properties()
            };
            let (catalog, raw): (Arc<dyn Catalog>, RawCatalog) = match &config.catalog {
                IcebergCatalog::Sql { file } => {
                    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir).map_err(|e| {
                            invalid(format!("cannot create the folder {}: {e}", dir.display()))
                        })?;
                    }
                    let uri = format!("sqlite:{}?mode=rwc", file.display());
                    props.extend([
                        (SQL_CATALOG_PROP_URI.to_owned(), uri.clone()),
                        (SQL_CATALOG_PROP_WAREHOUSE.to_owned(), root.clone()),
                        (
                            SQL_CATALOG_PROP_BIND_STYLE.to_owned(),
                            SqlBindStyle::QMark.to_string(),
                        ),
                    ]);
                    let builder = SqlCatalogBuilder::default().with_storage_factory(storage(local));
                    let catalog = builder.load(CATALOG_NAME, props).await.map_err(err)?;
                    (Arc::new(catalog), RawCatalog::Sql { uri })
                }
                IcebergCatalog::Glue => {
                    let sdk =
                        aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                    if sdk.region().is_none() {
                        return Err(invalid(
                            "AWS Glue: no region configured; set AWS_REGION (e.g. us-east-1) or a profile"
                                .into(),
                        ));
                    }
                    props.insert(GLUE_CATALOG_PROP_WAREHOUSE.to_owned(), root.clone());
                    if let Some(endpoint) = sdk.endpoint_url() {
                        props.insert(GLUE_CATALOG_PROP_URI.to_owned(), endpoint.to_owned());
                    }
                    if let Some(region) = sdk.region() {
                        props.insert(AWS_REGION_NAME.to_owned(), region.to_string());
                    }
                    let catalog = GlueCatalogBuilder::default()
                        .with_storage_factory(storage(local))
                        .load(CATALOG_NAME, props)
                        .await
                        .map_err(err)?;
                    let client = aws_sdk_glue::Client::new(&sdk);
                    (Arc::new(catalog), RawCatalog::Glue { client })
                }
                IcebergCatalog::Rest { uri, token } => {
                    let uri = uri.trim_end_matches('/').to_owned();
                    props.insert(REST_CATALOG_PROP_URI.to_owned(), uri.clone());
                    props.insert(REST_CATALOG_PROP_WAREHOUSE.to_owned(), root.clone());
                    if let Some(token) = token {
                        props.insert("token".to_owned(), token.clone());
                    }
                    let catalog = RestCatalogBuilder::default()
                        .with_storage_factory(storage(local))
                        .load(CATALOG_NAME, props)
                        .await
                        .map_err(err)?;
                    let http = reqwest::Client::new();
                    let prefix = rest_prefix(&http, &uri, &root, token.as_deref())
                        .await
                        .map_err(invalid)?;
                    let base = match prefix {
                        Some(p) => format!("{uri}/v1/{}/", p.trim_matches('/')),
                        None => format!("{uri}/v1/"),
                    };
                    let token = token.clone();
                    (Arc::new(catalog), RawCatalog::Rest { http, base, token })
                }
            };
            let namespace = NamespaceIdent::new(config.namespace.clone());
            if !catalog.namespace_exists(&namespace).await.map_err(err)? {
                match catalog.create_namespace(&namespace, HashMap::new()).await {
                    Ok(_) => {}
                    // Another process made it meanwhile.
                    Err(e) if catalog.namespace_exists(&namespace).await.unwrap_or(false) => {
                        tracing::debug!("namespace created meanwhile: {e}");
                    }
                    Err(e) => return Err(err(e)),
                }
            }
            Ok(IcebergLake {
                catalog,
                namespace,
                root,
                naive_times: matches!(raw, RawCatalog::Glue { .. }),
                raw,
                described,
            })
        })
    }

    /// Where the catalog is, for messages.
    pub fn describe(&self) -> String {
        self.described.clone()
    }

    /// The names of the tables, sorted.
    pub fn tables<'a>(&'a self) -> BoxFuture<'a, Result<Vec<String>, IcebergError>> {
        Box::pin(async move {
            let mut names: Vec<String> = self
                .catalog
                .list_tables(&self.namespace)
                .await
                .map_err(Self::error("catalog"))?
                .into_iter()
                .map(|t| t.name().to_owned())
                .collect();
            names.sort();
            Ok(names)
        })
    }

    /// The live data files of the table's current snapshot, per partition, sorted by partition.
    pub fn partitions<'a>(
        &'a self,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PartitionFiles>, IcebergError>> {
        Box::pin(async move {
            let Some(t) = self.load(table).await? else {
                return Ok(Vec::new());
            };
            let mut by_partition: BTreeMap<String, PartitionFiles> = BTreeMap::new();
            for e in live_entries(&t).await? {
                let p = by_partition
                    .entry(e.partition.clone())
                    .or_insert_with(|| PartitionFiles {
                        partition: e.partition.clone(),
                        files: 0,
                        records: 0,
                        bytes: 0,
                    });
                p.files += 1;
                p.records += e.file.record_count();
                p.bytes += e.file.file_size_in_bytes();
            }
            Ok(by_partition.into_values().collect())
        })
    }

    /// Registers an existing table (written by another tool, or whose catalog was lost) by its
    /// metadata file.
    pub fn register<'a>(
        &'a self,
        table: &'a str,
        metadata_location: &'a str,
    ) -> BoxFuture<'a, Result<Registered, IcebergError>> {
        Box::pin(async move {
            if let Some(t) = self.load(table).await? {
                return Ok(match t.metadata_location() {
                    Some(l) if l == metadata_location => Registered::Same,
                    other => Registered::Other(other.unwrap_or_default().to_owned()),
                });
            }
            self.catalog
                .register_table(&self.ident(table), metadata_location.to_owned())
                .await
                .map_err(Self::error(table))?;
            Ok(Registered::New)
        })
    }

    pub(crate) fn ident(&self, table: &str) -> TableIdent {
        TableIdent::new(self.namespace.clone(), table.to_owned())
    }

    pub(crate) fn error(table: &str) -> impl Fn(iceberg::Error) -> IcebergError + '_ {
        move |source| IcebergError::Iceberg {
            table: table.to_owned(),
            source: Box::new(source),
        }
    }

    /// The table, if it exists.
    pub fn load<'a>(
        &'a self,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Option<Table>, IcebergError>> {
        Box::pin(async move {
            let ident = self.ident(table);
            match self.catalog.load_table(&ident).await {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == ErrorKind::TableNotFound => Ok(None),
                // Not every catalog says "not found" with that kind (Glue's does not).
                Err(_) if matches!(self.catalog.table_exists(&ident).await, Ok(false)) => Ok(None),
                Err(e) => {
                    // Name the metadata file: the library's message does not always.
                    let file = self
                        .raw
                        .metadata_location(&self.namespace_name(), table)
                        .await;
                    Err(IcebergError::Iceberg {
                        table: match file {
                            Some(f) => format!("{table} (metadata file {f})"),
                            None => table.to_owned(),
                        },
                        source: Box::new(e),
                    })
                }
            }
        })
    }

    /// The namespace as the SQL catalog stores it.
    pub(crate) fn namespace_name(&self) -> String {
        self.namespace.as_ref().join(".")
    }

    /// Every row of the table's current snapshot (none for a table that does not exist yet).
    pub fn read<'a>(
        &'a self,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RecordBatch>, IcebergError>> {
        Box::pin(async move {
            use futures::TryStreamExt;
            let Some(t) = self.load(table).await? else {
                return Ok(Vec::new());
            };
            let err = Self::error(table);
            t.scan()
                .select_all()
                .build()
                .map_err(&err)?
                .to_arrow()
                .await
                .map_err(&err)?
                .try_collect()
                .await
                .map_err(&err)
        })
    }

    /// Per partition of `topic`, where the table's records of it end (`None` for a table that does
    /// not exist yet: nothing is held).
    pub fn offsets<'a>(
        &'a self,
        table: &'a str,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<i32, i64>, IcebergError>> {
        Box::pin(async move {
            Ok(match self.load(table).await? {
                Some(t) => recorded_offsets(t.metadata_ref(), topic),
                None => BTreeMap::new(),
            })
        })
    }

    /// Creates the table for batches shaped like `schema` unless it exists: partitioned by day of
    /// `ts`, sorted by `symbol, ts`.
    async fn create(&self, table: &str, schema: &ArrowSchema) -> Result<Table, IcebergError> {
        let err = Self::error(table);
        let fields: Vec<arrow_schema::FieldRef> = schema
            .fields()
            .iter()
            .map(|f| {
                Arc::new(
                    f.as_ref()
                        .clone()
                        .with_data_type(self.column_type(f.data_type())),
                )
            })
            .collect();
        let iceberg_schema =
            arrow_schema_to_schema_auto_assign_ids(&ArrowSchema::new(fields)).map_err(&err)?;
        let field = |name: &str| {
            iceberg_schema
                .field_by_name(name)
                .map(|f| f.id)
                .ok_or_else(|| IcebergError::Invalid {
                    table: table.to_owned(),
                    message: format!("the records have no {name:?} column"),
                })
        };
        let (ts, symbol) = (field("ts")?, field("symbol")?);
        // The spec id is optional in the REST protocol, but Java's REST servers want it.
        let spec = UnboundPartitionSpec::builder()
            .with_spec_id(0)
            .add_partition_field(ts, "ts_day", Transform::Day)
            .map_err(&err)?
            .build();
        let sort_field = |id| {
            SortField::builder()
                .source_id(id)
                .transform(Transform::Identity)
                .direction(SortDirection::Ascending)
                .null_order(NullOrder::First)
                .build()
        };
        let sort = SortOrder::builder()
            .with_order_id(1)
            .with_sort_field(sort_field(symbol))
            .with_sort_field(sort_field(ts))
            .build_unbound()
            .map_err(&err)?;
        let creation = TableCreation::builder()
            .name(table.to_owned())
            .location(format!("{}/{table}", self.root))
            .schema(iceberg_schema)
            .partition_spec(spec)
            .sort_order(sort)
            .properties(HashMap::from([(
                "write.parquet.compression-codec".to_owned(),
                "zstd".to_owned(),
            )]))
            .build();
        match self.catalog.create_table(&self.namespace, creation).await {
            Ok(t) => Ok(t),
            // Another sink created it meanwhile.
            Err(e) => match self.load(table).await? {
                Some(t) => Ok(t),
                None => Err(err(e)),
            },
        }
    }

    /// The table column type for records of type `ty` (times lose their zone where the catalog
    /// wants that; the values stay UTC).
    fn column_type(&self, ty: &arrow_schema::DataType) -> arrow_schema::DataType {
        match ty {
            arrow_schema::DataType::Timestamp(unit, Some(_)) if self.naive_times => {
                arrow_schema::DataType::Timestamp(*unit, None)
            }
            other => other.clone(),
        }
    }

    /// Adds the columns of `schema` the table lacks (as optional columns), in a commit of its own.
    async fn evolve(&self, table: Table, schema: &ArrowSchema) -> Result<Table, IcebergError> {
        let name = table.identifier().name().to_owned();
        let err = Self::error(&name);
        let current = table.metadata().current_schema().clone();
        let missing: Vec<_> = schema
            .fields()
            .iter()
            .filter(|f| current.field_by_name(f.name()).is_none())
            .collect();
        if missing.is_empty() {
            return Ok(table);
        }
        let tx = Transaction::new(&table);
        let mut update = tx.update_schema();
        for f in &missing {
            let ty = arrow_type_to_type(&self.column_type(f.data_type())).map_err(&err)?;
            update = update.add_column(AddColumn::optional(f.name(), ty));
        }
        let tx = update.apply(tx).map_err(&err)?;
        tx.commit(self.catalog.as_ref()).await.map_err(&err)
    }

    /// Appends `batches` (all of one Arrow schema: `symbol`, `ts`, …) as one snapshot covering
    /// `ranges` of `topic`, unless a range does not start where the table says its partition ends.
    /// The table is created on the first append; new columns are added to its schema first.
    pub fn append<'a>(
        &'a self,
        table: &'a str,
        topic: &'a str,
        ranges: &'a [OffsetRange],
        batches: &'a [RecordBatch],
    ) -> BoxFuture<'a, Result<Appended, IcebergError>> {
        Box::pin(async move {
            let err = Self::error(table);
            let Some(first) = batches.first() else {
                return Err(IcebergError::Invalid {
                    table: table.to_owned(),
                    message: "an append needs records".into(),
                });
            };
            // The batches of one checkpoint may differ in their extra columns: the union of them all.
            let mut fields: Vec<arrow_schema::FieldRef> =
                first.schema().fields().iter().cloned().collect();
            for b in &batches[1..] {
                for f in b.schema().fields() {
                    if !fields.iter().any(|have| have.name() == f.name()) {
                        fields.push(f.clone());
                    }
                }
            }
            let schema = ArrowSchema::new(fields);
            let current = match self.load(table).await? {
                Some(t) => t,
                None => self.create(table, &schema).await?,
            };
            let current = self.evolve(current, &schema).await?;
            let files = self.write_files(&current, topic, ranges, batches).await?;
            let count = files.len();
            let bytes = files.iter().map(|f| f.file_size_in_bytes()).sum();
            let properties: HashMap<String, String> = ranges
                .iter()
                .map(|r| {
                    (
                        offsets_key(topic, r.partition),
                        format!("{}..{}", r.from, r.to),
                    )
                })
                .collect();
            let fenced = FencedCatalog::new(self.catalog.clone(), self.ident(table), topic, ranges);
            let tx = Transaction::new(&current);
            let tx = tx
                .fast_append()
                .add_data_files(files)
                .set_snapshot_properties(properties)
                .with_check_duplicate(false)
                .apply(tx)
                .map_err(&err)?;
            match tx.commit(&fenced).await {
                Ok(t) => Ok(Appended::Committed {
                    snapshot_id: t.metadata().current_snapshot_id().unwrap_or_default(),
                    files: count,
                    bytes,
                }),
                Err(e) => match fenced.refused() {
                    // The files written for it are referenced by no snapshot (orphans, for cleanup).
                    Some(r) => Ok(Appended::Taken {
                        partition: r.partition,
                        recorded: r.recorded,
                    }),
                    None => Err(err(e)),
                },
            }
        })
    }

    /// Writes the batches as Parquet data files of the table, sorted by `symbol, ts`, one or more per
    /// day; returns them for the commit.
    async fn write_files(
        &self,
        table: &Table,
        topic: &str,
        ranges: &[OffsetRange],
        batches: &[RecordBatch],
    ) -> Result<Vec<iceberg::spec::DataFile>, IcebergError> {
        let first = ranges.first().map_or(0, |r| r.from);
        let prefix = format!(
            "{topic}+{}+{first:020}",
            ranges.first().map_or(0, |r| r.partition)
        );
        write_sorted(table, &prefix, batches, 512 << 20).await
    }
}

/// Rows handed to the Parquet writer at a time: runs of fewer than half of it (a group of a few
/// records, with thousands of symbols) are gathered into batches of it; a larger run goes as it is
/// unless smaller ones are waiting before it.
const WRITE_BATCH_ROWS: usize = 64 * 1024;

/// Writes `batches` (of any schemas the table's current schema covers) as Parquet data files of the
/// table, sorted by `symbol, ts`, split by partition and rolled at about `target_size` bytes; returns
/// them for a commit. Names start with `prefix`.
pub(crate) async fn write_sorted(
    table: &Table,
    prefix: &str,
    batches: &[RecordBatch],
    target_size: usize,
) -> Result<Vec<iceberg::spec::DataFile>, IcebergError> {
    let name = table.identifier().name().to_owned();
    let err = IcebergLake::error(&name);
    let invalid = |message: String| IcebergError::Invalid {
        table: name.clone(),
        message,
    };
    let metadata = table.metadata();
    let iceberg_schema = metadata.current_schema().clone();
    let target = Arc::new(schema_to_arrow_schema(&iceberg_schema).map_err(&err)?);
    // In the table's shape, with the field ids Iceberg's writer needs.
    let projected: Vec<RecordBatch> = batches
        .iter()
        .map(|b| project(b, &target).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()
        .map_err(&invalid)?;
    // The batches are split as they are, not concatenated first: a sink's groups each fall in one
    // partition and are already sorted, so the rows are written without a copy of the checkpoint
    // (before, its concatenation, its sorted copy and its split copy peaked at three).
    let partitions = crate::split::split_by_partition(
        &projected,
        iceberg_schema.clone(),
        metadata.default_partition_spec().clone(),
    )
    .map_err(&err)?;
    drop(projected);
    let properties = ticklake_lake::parquet_properties(&target);
    let parquet = ParquetWriterBuilder::new(properties, iceberg_schema.clone());
    let rolling = RollingFileWriterBuilder::new(
        parquet,
        target_size,
        table.file_io().clone(),
        DefaultLocationGenerator::new(metadata).map_err(&err)?,
        DefaultFileNameGenerator::new(
            prefix.to_owned(),
            Some(uuid::Uuid::now_v7().to_string()),
            DataFileFormat::Parquet,
        ),
    );
    let mut writer = FanoutWriter::new(DataFileWriterBuilder::new(rolling));
    for (key, rows) in partitions {
        let mut coalescer = BatchCoalescer::new(target.clone(), WRITE_BATCH_ROWS)
            .with_biggest_coalesce_batch_size(Some(WRITE_BATCH_ROWS / 2));
        for run in ticklake_lake::sorted_runs(rows).map_err(|e| invalid(e.to_string()))? {
            coalescer
                .push_batch(run)
                .map_err(|e| invalid(e.to_string()))?;
            while let Some(batch) = coalescer.next_completed_batch() {
                writer.write(key.clone(), batch).await.map_err(&err)?;
            }
        }
        coalescer
            .finish_buffered_batch()
            .map_err(|e| invalid(e.to_string()))?;
        while let Some(batch) = coalescer.next_completed_batch() {
            writer.write(key.clone(), batch).await.map_err(&err)?;
        }
    }
    writer.close().await.map_err(&err)
}

/// A live data file of a table's current snapshot, with its manifest bookkeeping (what a rewrite of
/// the manifests needs).
#[derive(Debug, Clone)]
pub(crate) struct LiveEntry {
    pub file: iceberg::spec::DataFile,
    /// Its partition as a path (`ts_day=2024-01-02`).
    pub partition: String,
    /// The partition spec it was written with.
    pub spec_id: i32,
    /// The snapshot that added it.
    pub snapshot_id: i64,
    pub sequence_number: i64,
    pub file_sequence_number: Option<i64>,
    /// When the snapshot that added it was committed (ms since 1970).
    pub committed_ms: i64,
}

/// The live data files of the table's current snapshot, read from its manifests.
pub(crate) async fn live_entries(table: &Table) -> Result<Vec<LiveEntry>, IcebergError> {
    let name = table.identifier().name().to_owned();
    let err = IcebergLake::error(&name);
    let metadata = table.metadata();
    let Some(snapshot) = metadata.current_snapshot() else {
        return Ok(Vec::new());
    };
    let schema = snapshot.schema(metadata).map_err(&err)?;
    let list = table
        .manifest_list_reader(snapshot)
        .load()
        .await
        .map_err(&err)?;
    let mut out = Vec::new();
    for manifest_file in list.entries() {
        let manifest = manifest_file
            .load_manifest(table.file_io())
            .await
            .map_err(&err)?;
        let spec = manifest.metadata().partition_spec();
        // `partition_to_path` panics on a spec that does not fit the schema: check first.
        let named = spec.partition_type(&schema).is_ok();
        for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
            let file = entry.data_file();
            let snapshot_id = entry.snapshot_id().unwrap_or(snapshot.snapshot_id());
            out.push(LiveEntry {
                file: file.clone(),
                partition: if named {
                    spec.partition_to_path(file.partition(), schema.clone())
                } else {
                    format!("{:?}", file.partition())
                },
                spec_id: spec.spec_id(),
                snapshot_id,
                sequence_number: entry
                    .sequence_number()
                    .unwrap_or(manifest_file.sequence_number),
                file_sequence_number: entry
                    .file_sequence_number
                    .or(Some(manifest_file.sequence_number)),
                committed_ms: metadata
                    .snapshot_by_id(snapshot_id)
                    .map_or(0, |s| s.timestamp_ms()),
            });
        }
    }
    Ok(out)
}

/// The summary key of a partition's offset range.
fn offsets_key(topic: &str, partition: i32) -> String {
    format!("ticklake.kafka.{topic}.{partition}")
}

/// The summary key of a snapshot that records the end of every partition of every topic the table
/// holds (compaction's snapshots do), so that older snapshots are not needed to know them and may be
/// expired.
pub(crate) const COMPLETE_OFFSETS: &str = "ticklake.offsets-complete";

/// Per partition of `topic`: the largest range end recorded by the current snapshot and its
/// ancestors. (Appends only ever move a partition forward, so the largest end is the last one.)
pub(crate) fn recorded_offsets(metadata: TableMetadataRef, topic: &str) -> BTreeMap<i32, i64> {
    all_recorded_offsets(metadata)
        .into_iter()
        .filter(|((t, _), _)| t == topic)
        .map(|((_, p), end)| (p, end))
        .collect()
}

/// Per topic and partition: the largest range end recorded by the current snapshot and its
/// ancestors, back to the newest snapshot that records them all.
pub(crate) fn all_recorded_offsets(metadata: TableMetadataRef) -> BTreeMap<(String, i32), i64> {
    let mut ends = BTreeMap::new();
    let Some(current) = metadata.current_snapshot_id() else {
        return ends;
    };
    for snapshot in iceberg::util::snapshot::ancestors_of(&metadata, current) {
        let properties = &snapshot.summary().additional_properties;
        for (key, value) in properties {
            // Topic names may contain dots; the partition follows the last one.
            let Some((topic, partition)) = key
                .strip_prefix("ticklake.kafka.")
                .and_then(|rest| rest.rsplit_once('.'))
                .and_then(|(t, p)| Some((t, p.parse::<i32>().ok()?)))
            else {
                continue;
            };
            let Some(to) = value
                .split_once("..")
                .and_then(|(_, to)| to.parse::<i64>().ok())
            else {
                continue;
            };
            let end = ends.entry((topic.to_owned(), partition)).or_insert(to);
            *end = (*end).max(to);
        }
        if properties.contains_key(COMPLETE_OFFSETS) {
            break;
        }
    }
    ends
}
