//! The AWS Glue Data Catalog, through `aws-sdk-glue`.
//!
//! Tables are `EXTERNAL_TABLE`s with the Hive SerDe and input/output formats of their storage format and
//! `classification` set, which is what Athena needs to read them. A column whose name inside the files
//! differs from its catalog name keeps the file name in the column's parameters
//! (`ticklake.source_name`), and for JSON also as the OpenX SerDe's `mapping.<column>` parameter, so
//! Athena reads the same field.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_glue::error::DisplayErrorContext;
use aws_sdk_glue::types::{
    Column as GlueColumn, DatabaseInput, PartitionInput, PartitionValueList, SerDeInfo,
    StorageDescriptor, TableInput,
};
use aws_sdk_glue::Client;
use futures::future::BoxFuture;

use crate::{validate_name, Catalog, CatalogError, Column, Partition, StorageFormat, Table};

const SOURCE_NAME: &str = "ticklake.source_name";
/// Glue's limits per batch call.
const CREATE_BATCH: usize = 100;
const DELETE_BATCH: usize = 25;
const GET_BATCH: usize = 1000;

/// A Glue database seen through the Glue API.
#[derive(Debug)]
pub struct GlueCatalog {
    client: Client,
    database: String,
    endpoint: String,
}

fn glue_err(operation: &'static str, e: impl std::error::Error) -> CatalogError {
    CatalogError::Glue {
        operation,
        message: DisplayErrorContext(e).to_string(),
    }
}

impl GlueCatalog {
    /// Connects with the standard AWS configuration and creates the database if it does not exist.
    pub fn connect<'a>(database: &'a str) -> BoxFuture<'a, Result<GlueCatalog, CatalogError>> {
        Box::pin(async move {
            validate_name("database", database)?;
            let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            if config.region().is_none() {
                return Err(CatalogError::Invalid(
                    "AWS Glue: no region configured; set AWS_REGION (e.g. us-east-1) or a profile"
                        .into(),
                ));
            }
            let endpoint = config
                .endpoint_url()
                .map(str::to_owned)
                .unwrap_or_else(|| "AWS".into());
            let client = Client::new(&config);
            let catalog = GlueCatalog {
                client,
                database: database.to_owned(),
                endpoint,
            };
            catalog.ensure_database().await?;
            Ok(catalog)
        })
    }

    async fn ensure_database(&self) -> Result<(), CatalogError> {
        match self.client.get_database().name(&self.database).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_entity_not_found_exception()) =>
            {
                let input = DatabaseInput::builder()
                    .name(&self.database)
                    .description("Created by ticklake")
                    .build()
                    .map_err(|e| glue_err("CreateDatabase", e))?;
                match self
                    .client
                    .create_database()
                    .database_input(input)
                    .send()
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_already_exists_exception()) =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(glue_err("CreateDatabase", e)),
                }
            }
            Err(e) => Err(glue_err("GetDatabase", e)),
        }
    }

    fn storage(&self, table: &Table, location: &str) -> Result<StorageDescriptor, CatalogError> {
        let (serde, input, output) = table.format.hive_classes();
        let mut serde_info = SerDeInfo::builder().serialization_library(serde);
        match table.format {
            StorageFormat::Parquet => {
                serde_info = serde_info.parameters("serialization.format", "1");
            }
            StorageFormat::Json => {
                for c in &table.columns {
                    if let Some(src) = &c.source {
                        serde_info = serde_info.parameters(format!("mapping.{}", c.name), src);
                    }
                }
            }
            StorageFormat::Csv { delimiter, .. } => {
                let d = (delimiter as char).to_string();
                serde_info = serde_info
                    .parameters("field.delim", &d)
                    .parameters("serialization.format", &d);
            }
        }
        let columns = table
            .columns
            .iter()
            .map(to_glue_column)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StorageDescriptor::builder()
            .location(location)
            .input_format(input)
            .output_format(output)
            .compressed(false)
            .serde_info(serde_info.build())
            .set_columns(Some(columns))
            .build())
    }

    /// CreateTable: `false` when a table of that name exists (Glue checks and creates in one call).
    async fn create(&self, input: TableInput) -> Result<bool, CatalogError> {
        match self
            .client
            .create_table()
            .database_name(&self.database)
            .table_input(input)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_already_exists_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(glue_err("CreateTable", e)),
        }
    }

    fn table_input(&self, table: &Table) -> Result<TableInput, CatalogError> {
        let mut params: HashMap<String, String> = table
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.insert(
            "classification".into(),
            table.format.classification().into(),
        );
        params.insert("EXTERNAL".into(), "TRUE".into());
        if let StorageFormat::Csv { header: true, .. } = table.format {
            params.insert("skip.header.line.count".into(), "1".into());
        }
        let keys = table
            .partition_keys
            .iter()
            .map(to_glue_column)
            .collect::<Result<Vec<_>, _>>()?;
        TableInput::builder()
            .name(&table.name)
            .table_type("EXTERNAL_TABLE")
            .storage_descriptor(self.storage(table, &table.location)?)
            .set_partition_keys(Some(keys))
            .set_parameters(Some(params))
            .build()
            .map_err(|e| glue_err("CreateTable", e))
    }
}

fn to_glue_column(c: &Column) -> Result<GlueColumn, CatalogError> {
    let mut b = GlueColumn::builder().name(&c.name).r#type(&c.data_type);
    if let Some(src) = &c.source {
        b = b.parameters(SOURCE_NAME, src);
    }
    b.build().map_err(|e| glue_err("CreateTable", e))
}

fn from_glue_column(c: &GlueColumn) -> Column {
    Column {
        name: c.name().to_ascii_lowercase(),
        data_type: c.r#type().unwrap_or("string").to_owned(),
        source: c.parameters().and_then(|p| p.get(SOURCE_NAME)).cloned(),
    }
}

/// Whether a Glue table is an Iceberg table (`table_type=ICEBERG`, as Athena and Iceberg mark them).
fn is_iceberg(t: &aws_sdk_glue::types::Table) -> bool {
    t.parameters()
        .and_then(|p| p.get("table_type"))
        .is_some_and(|v| v.eq_ignore_ascii_case("iceberg"))
}

fn from_glue_table(t: &aws_sdk_glue::types::Table) -> Result<Table, CatalogError> {
    let sd = t.storage_descriptor();
    let params = t.parameters().cloned().unwrap_or_default();
    let serde = sd
        .and_then(|s| s.serde_info())
        .and_then(|s| s.serialization_library())
        .unwrap_or_default();
    let classification = params
        .get("classification")
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_default();
    let format = if classification == "parquet" || serde.contains("Parquet") {
        StorageFormat::Parquet
    } else if classification == "json" || serde.to_ascii_lowercase().contains("json") {
        StorageFormat::Json
    } else if classification == "csv"
        || serde.contains("LazySimpleSerDe")
        || serde.contains("OpenCSV")
    {
        let delim = sd
            .and_then(|s| s.serde_info())
            .and_then(|s| s.parameters())
            .and_then(|p| p.get("field.delim").or_else(|| p.get("separatorChar")))
            .and_then(|d| d.bytes().next())
            .unwrap_or(b',');
        StorageFormat::Csv {
            header: params.get("skip.header.line.count").map(String::as_str) == Some("1"),
            delimiter: delim,
        }
    } else {
        return Err(CatalogError::Invalid(format!(
            "table {}: storage format {classification:?} / {serde:?} is not supported",
            t.name()
        )));
    };
    let parameters: BTreeMap<String, String> = params
        .into_iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "classification" | "EXTERNAL" | "skip.header.line.count"
            )
        })
        .collect();
    Ok(Table {
        name: t.name().to_owned(),
        location: sd
            .and_then(|s| s.location())
            .map(str::to_owned)
            .unwrap_or_default(),
        columns: sd
            .map(|s| s.columns().iter().map(from_glue_column).collect())
            .unwrap_or_default(),
        partition_keys: t.partition_keys().iter().map(from_glue_column).collect(),
        format,
        parameters,
    })
}

/// Glue's value lists of partitions, for its batch calls (`operation` names the call in errors).
fn value_lists(
    values: &[Vec<String>],
    operation: &'static str,
) -> Result<Vec<PartitionValueList>, CatalogError> {
    values
        .iter()
        .map(|v| {
            PartitionValueList::builder()
                .set_values(Some(v.clone()))
                .build()
                .map_err(|e| glue_err(operation, e))
        })
        .collect()
}

/// A Glue partition as the catalog's: its values and location.
fn partition_of(p: &aws_sdk_glue::types::Partition) -> Partition {
    Partition {
        values: p.values().to_vec(),
        location: p
            .storage_descriptor()
            .and_then(|s| s.location())
            .unwrap_or_default()
            .to_owned(),
    }
}

#[async_trait::async_trait]
impl Catalog for GlueCatalog {
    fn describe(&self) -> String {
        format!(
            "AWS Glue catalog at {}, database {}",
            self.endpoint, self.database
        )
    }

    async fn list_tables(&self) -> Result<Vec<Table>, CatalogError> {
        let mut pages = self
            .client
            .get_tables()
            .database_name(&self.database)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| glue_err("GetTables", e))?;
            // Iceberg tables in the same database belong to the Iceberg catalog (ticklake_iceberg).
            for t in page.table_list().iter().filter(|t| !is_iceberg(t)) {
                out.push(from_glue_table(t)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn get_table(&self, name: &str) -> Result<Option<Table>, CatalogError> {
        match self
            .client
            .get_table()
            .database_name(&self.database)
            .name(name)
            .send()
            .await
        {
            Ok(out) => match out.table() {
                Some(t) if is_iceberg(t) => Err(CatalogError::Invalid(format!(
                    "table {}.{name} in Glue is an Iceberg table: write it with --table-format \
                     iceberg, or pick another table name",
                    self.database
                ))),
                other => other.map(from_glue_table).transpose(),
            },
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_entity_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(glue_err("GetTable", e)),
        }
    }

    async fn put_table(&self, table: &Table) -> Result<(), CatalogError> {
        validate_name("table", &table.name)?;
        let input = self.table_input(table)?;
        if self.create(input.clone()).await? {
            return Ok(());
        }
        self.client
            .update_table()
            .database_name(&self.database)
            .table_input(input)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| glue_err("UpdateTable", e))
    }

    async fn create_table(&self, table: &Table) -> Result<Table, CatalogError> {
        validate_name("table", &table.name)?;
        self.create(self.table_input(table)?).await?;
        self.get_table(&table.name)
            .await?
            .ok_or_else(|| CatalogError::NoSuchTable(table.name.clone()))
    }

    async fn add_partitions(
        &self,
        table: &str,
        partitions: &[Partition],
    ) -> Result<usize, CatalogError> {
        if partitions.is_empty() {
            return Ok(0);
        }
        let def = self
            .get_table(table)
            .await?
            .ok_or_else(|| CatalogError::NoSuchTable(table.to_owned()))?;
        let mut added = 0;
        for chunk in partitions.chunks(CREATE_BATCH) {
            let inputs = chunk
                .iter()
                .map(|p| {
                    Ok(PartitionInput::builder()
                        .set_values(Some(p.values.clone()))
                        .storage_descriptor(self.storage(&def, &p.location)?)
                        .build())
                })
                .collect::<Result<Vec<_>, CatalogError>>()?;
            let out = self
                .client
                .batch_create_partition()
                .database_name(&self.database)
                .table_name(table)
                .set_partition_input_list(Some(inputs))
                .send()
                .await
                .map_err(|e| glue_err("BatchCreatePartition", e))?;
            let mut existing = 0;
            for err in out.errors() {
                let detail = err.error_detail();
                let code = detail.and_then(|d| d.error_code()).unwrap_or_default();
                if code.contains("AlreadyExists") {
                    existing += 1;
                } else {
                    return Err(CatalogError::Glue {
                        operation: "BatchCreatePartition",
                        message: format!(
                            "partition {:?}: {code}: {}",
                            err.partition_values(),
                            detail.and_then(|d| d.error_message()).unwrap_or_default()
                        ),
                    });
                }
            }
            added += chunk.len() - existing;
        }
        Ok(added)
    }

    async fn list_partitions(&self, table: &str) -> Result<Vec<Partition>, CatalogError> {
        let mut pages = self
            .client
            .get_partitions()
            .database_name(&self.database)
            .table_name(table)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| glue_err("GetPartitions", e))?;
            out.extend(page.partitions().iter().map(partition_of));
        }
        out.sort();
        Ok(out)
    }

    async fn get_partitions(
        &self,
        table: &str,
        values: &[Vec<String>],
    ) -> Result<Vec<Partition>, CatalogError> {
        let mut out = Vec::new();
        for chunk in values.chunks(GET_BATCH) {
            let mut wanted = value_lists(chunk, "BatchGetPartition")?;
            // Glue may leave keys unprocessed (throttling): ask for those again.
            for _ in 0..10 {
                if wanted.is_empty() {
                    break;
                }
                let got = self
                    .client
                    .batch_get_partition()
                    .database_name(&self.database)
                    .table_name(table)
                    .set_partitions_to_get(Some(std::mem::take(&mut wanted)))
                    .send()
                    .await
                    .map_err(|e| glue_err("BatchGetPartition", e))?;
                out.extend(got.partitions().iter().map(partition_of));
                wanted = got.unprocessed_keys().to_vec();
            }
            if !wanted.is_empty() {
                return Err(CatalogError::Glue {
                    operation: "BatchGetPartition",
                    message: format!(
                        "{} partitions of table {table} were left unprocessed ten times in a row",
                        wanted.len()
                    ),
                });
            }
        }
        Ok(out)
    }

    async fn drop_partitions(
        &self,
        table: &str,
        values: &[Vec<String>],
    ) -> Result<(), CatalogError> {
        for chunk in values.chunks(DELETE_BATCH) {
            let list = value_lists(chunk, "BatchDeletePartition")?;
            self.client
                .batch_delete_partition()
                .database_name(&self.database)
                .table_name(table)
                .set_partitions_to_delete(Some(list))
                .send()
                .await
                .map_err(|e| glue_err("BatchDeletePartition", e))?;
        }
        Ok(())
    }

    async fn set_partition_location(
        &self,
        table: &str,
        values: &[String],
        expected: &str,
        location: &str,
    ) -> Result<bool, CatalogError> {
        let def = self
            .get_table(table)
            .await?
            .ok_or_else(|| CatalogError::NoSuchTable(table.to_owned()))?;
        let current = self
            .client
            .get_partition()
            .database_name(&self.database)
            .table_name(table)
            .set_partition_values(Some(values.to_vec()))
            .send()
            .await
            .map_err(|e| glue_err("GetPartition", e))?;
        let at = current
            .partition()
            .and_then(|p| p.storage_descriptor())
            .and_then(|s| s.location());
        if at != Some(expected) {
            return Ok(false);
        }
        let input = PartitionInput::builder()
            .set_values(Some(values.to_vec()))
            .storage_descriptor(self.storage(&def, location)?)
            .build();
        self.client
            .update_partition()
            .database_name(&self.database)
            .table_name(table)
            .set_partition_value_list(Some(values.to_vec()))
            .partition_input(input)
            .send()
            .await
            .map_err(|e| glue_err("UpdatePartition", e))?;
        Ok(true)
    }
}
