//! Step 2 of the commit protocol: the table and the partitions a flush wrote are registered in the
//! catalog before the offsets move, so new data is queryable without a crawl.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use ticklake_catalog::table::hive_type;
use ticklake_catalog::{Catalog, Column, CompactedPartitions, Partition, StorageFormat, Table};
use ticklake_lake::{hive_unescape, Lake, Partitioning};

use crate::{FileFormat, SinkError};

/// Keeps the sink's table definition and the partitions already registered.
pub(crate) struct Registrar {
    catalog: Arc<dyn Catalog>,
    table: Option<Table>,
    known: HashSet<String>,
    compacted: CompactedPartitions,
}

impl Registrar {
    pub(crate) fn new(catalog: Arc<dyn Catalog>) -> Registrar {
        Registrar {
            catalog,
            table: None,
            known: HashSet::new(),
            compacted: CompactedPartitions::default(),
        }
    }

    /// The catalog, for messages.
    pub(crate) fn describe(&self) -> String {
        self.catalog.describe()
    }

    /// Creates the table, without columns yet, partitioned by `partitioning` unless it exists (another
    /// sink created it first); returns it as the catalog has it.
    pub(crate) async fn claim(
        &mut self,
        lake: &Lake,
        name: &str,
        partitioning: &Partitioning,
        format: FileFormat,
    ) -> Result<Table, SinkError> {
        let table = self
            .catalog
            .create_table(&new_table(lake, name, partitioning, format))
            .await?;
        self.table = Some(table.clone());
        Ok(table)
    }

    /// The table as the catalog has it now, if it exists.
    pub(crate) async fn current(&self, name: &str) -> Result<Option<Table>, SinkError> {
        Ok(self.catalog.get_table(name).await?)
    }

    /// Registers (idempotently) the table with the columns of `schemas` and the partition folders
    /// `paths` (relative to the table, e.g. `date=2024-01-02/symbol=AAPL`). Returns the table as
    /// registered.
    pub(crate) async fn register(
        &mut self,
        lake: &Lake,
        name: &str,
        partitioning: &Partitioning,
        format: FileFormat,
        schemas: &[SchemaRef],
        paths: &[String],
    ) -> Result<&Table, SinkError> {
        let keys: Vec<&str> = partitioning.keys().iter().map(|k| k.name()).collect();
        // A column new to the cached definition may have been added by another sink meanwhile: read
        // the table again then, so its type is the one the catalog already has.
        let new_column = self.table.as_ref().is_some_and(|t| {
            schemas.iter().flat_map(|s| s.fields()).any(|f| {
                !keys.contains(&f.name().as_str()) && !t.columns.iter().any(|c| c.name == *f.name())
            })
        });
        if new_column {
            self.table = None;
        }
        let (mut table, exists) = match self.table.take() {
            Some(t) => (t, true),
            None => match self.catalog.get_table(name).await? {
                Some(t) => {
                    if t.partition_names() != keys {
                        return Err(SinkError::Config(format!(
                            "table {name:?} in the {} is partitioned by ({}), not ({}); \
                             keep its --partition-by or write another --table",
                            self.catalog.describe(),
                            t.partition_names().join(","),
                            keys.join(",")
                        )));
                    }
                    // Partitions written before a restart may not be registered yet (a crash between
                    // the write and the registration): registering again is harmless.
                    (t, true)
                }
                None => (new_table(lake, name, partitioning, format), false),
            },
        };
        let before = table.clone();
        for schema in schemas {
            for field in schema.fields() {
                if keys.contains(&field.name().as_str()) {
                    continue;
                }
                if let Some(c) = table.columns.iter().find(|c| c.name == *field.name()) {
                    if hive_type(field.data_type()).is_some_and(|t| t != c.data_type) {
                        // Two sinks decided a new column's type at the same moment, differently.
                        tracing::warn!(
                            "column `{}` of table {name:?} is {} in the catalog but {} in files just \
                             written: another sink decided its type at the same time",
                            c.name,
                            c.data_type,
                            field.data_type()
                        );
                    }
                    continue;
                }
                let Some(t) = hive_type(field.data_type()) else {
                    continue;
                };
                table.columns.push(Column::new(field.name(), t));
            }
        }
        if !exists || table != before {
            self.catalog.put_table(&table).await?;
        }
        let new: Vec<Partition> = paths
            .iter()
            .filter(|p| !self.known.contains(*p))
            .map(|p| partition(lake, name, p))
            .collect();
        if !keys.is_empty() && !new.is_empty() {
            self.catalog.add_partitions(name, &new).await?;
        }
        self.known.extend(paths.iter().cloned());
        Ok(self.table.insert(table))
    }

    /// Step 3 of the commit protocol, for Parquet tables: the data files `files` ((folder relative to
    /// the table, file name)) just written into partitions that a compaction has switched to merged
    /// files are copied there, so they are queryable before the offsets move. Returns how many were
    /// copied.
    pub(crate) async fn make_visible(
        &mut self,
        lake: &Lake,
        name: &str,
        files: &[(String, String)],
    ) -> Result<usize, SinkError> {
        let mut by_folder: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (folder, file) in files.iter().filter(|(folder, _)| !folder.is_empty()) {
            by_folder.entry(folder).or_default().push(file.clone());
        }
        if by_folder.is_empty() {
            return Ok(0);
        }
        let written: Vec<(Partition, Vec<String>)> = by_folder
            .into_iter()
            .map(|(folder, names)| (partition(lake, name, folder), names))
            .collect();
        Ok(self
            .compacted
            .make_visible(lake, self.catalog.as_ref(), name, &written)
            .await?)
    }
}

/// The partition of the folder `path` (relative to the table `name`, e.g.
/// `date=2024-01-02/symbol=AAPL`), at that folder.
fn partition(lake: &Lake, name: &str, path: &str) -> Partition {
    Partition {
        values: partition_values(path),
        location: lake.url_of(&format!("{name}/{path}")),
    }
}

/// The partition values of the folder `path` (relative to its table).
pub(crate) fn partition_values(path: &str) -> Vec<String> {
    path.split('/')
        .map(|seg| hive_unescape(seg.split_once('=').map_or(seg, |(_, v)| v)))
        .collect()
}

/// A table the sink is about to write, as the catalog gets it before it has columns.
fn new_table(lake: &Lake, name: &str, partitioning: &Partitioning, format: FileFormat) -> Table {
    Table {
        name: name.to_owned(),
        location: lake.url_of(name),
        columns: Vec::new(),
        partition_keys: partitioning
            .keys()
            .iter()
            .map(|k| Column::new(k.name(), "string"))
            .collect(),
        format: match format {
            FileFormat::Parquet => StorageFormat::Parquet,
            FileFormat::Json => StorageFormat::Json,
            FileFormat::Csv => StorageFormat::Csv {
                header: true,
                delimiter: b',',
            },
        },
        parameters: BTreeMap::from([("created_by".into(), "ticklake sink".into())]),
    }
}

/// The partition folders of a table in the catalog, as the sink writes them (`catalog` names it in
/// the error for a layout the sink cannot write, such as a crawled table's `year` folders).
pub(crate) fn layout_of(table: &Table, catalog: &str) -> Result<Partitioning, SinkError> {
    let names = table.partition_names();
    let spelled = if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(",")
    };
    spelled.parse().map_err(|_| {
        SinkError::Config(format!(
            "table {:?} in the {catalog} is partitioned by ({}), which the sink does not write \
             (it writes date, hour and symbol folders): write another --table",
            table.name,
            names.join(",")
        ))
    })
}
