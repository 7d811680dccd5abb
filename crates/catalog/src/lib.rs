//! The catalog: table definitions and their partitions, as AWS Glue keeps them, so that ticklake's own
//! query engine and Athena, Trino, Spark or DuckDB read the same lake the same way.
//!
//! Two implementations of [`Catalog`]:
//! * [`EmbeddedCatalog`]: a SQLite file (by default `<lake>/_ticklake/catalog.sqlite`), no server.
//! * [`GlueCatalog`]: the AWS Glue Data Catalog through `aws-sdk-glue`; region, endpoint and
//!   credentials come from the standard AWS settings (`AWS_REGION`, `AWS_ENDPOINT_URL`, profiles, …).
//!
//! The [`crawl`] module is a Glue-like crawler that builds tables and partitions from the files; the
//! [`compact`] module merges a partition's small files and switches the partition to them.

pub mod compact;
pub mod crawl;
mod embedded;
mod glue;
pub mod table;

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;

pub use compact::{
    compact_hive, compact_hive_partitions, CompactedPartitions, HiveCompactOptions, HiveCompacted,
    MERGED_WHOLE_AFTER,
};
pub use crawl::{crawl, CrawlOptions, CrawlReport, IcebergFound};
pub use embedded::EmbeddedCatalog;
pub use glue::GlueCatalog;
pub use table::{Column, Partition, StorageFormat, Table};

/// The database (Glue's name for a group of tables) used when none is given.
pub const DEFAULT_DATABASE: &str = "ticklake";

/// Errors of the catalogs and the crawler.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A name, definition or setting is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The embedded catalog's file failed.
    #[error("embedded catalog {path}: {message}")]
    Embedded {
        /// The SQLite file.
        path: String,
        /// What failed.
        message: String,
    },
    /// A call to AWS Glue failed.
    #[error("AWS Glue {operation}: {message}")]
    Glue {
        /// The API operation.
        operation: &'static str,
        /// What failed.
        message: String,
    },
    /// Reading the lake failed.
    #[error(transparent)]
    Lake(#[from] ticklake_lake::LakeError),
    /// A table asked for does not exist.
    #[error("table {0:?} does not exist in the catalog; run `ticklake crawl` or check the name (`SHOW TABLES`)")]
    NoSuchTable(String),
}

/// A catalog of tables and partitions, in one database.
#[async_trait::async_trait]
pub trait Catalog: Send + Sync + std::fmt::Debug {
    /// Where it is, for messages (`embedded catalog lake/_ticklake/catalog.sqlite, database ticklake`).
    fn describe(&self) -> String;

    /// Every table, sorted by name.
    async fn list_tables(&self) -> Result<Vec<Table>, CatalogError>;

    /// One table, if it exists.
    async fn get_table(&self, name: &str) -> Result<Option<Table>, CatalogError>;

    /// Creates the table, or replaces its definition (its partitions are kept).
    async fn put_table(&self, table: &Table) -> Result<(), CatalogError>;

    /// Creates the table unless one of that name exists, in one step (of two writers creating it at
    /// once, one wins), and returns the table the catalog holds afterwards: `table`, or the one that
    /// was there first.
    async fn create_table(&self, table: &Table) -> Result<Table, CatalogError>;

    /// Adds partitions; those already registered are left as they are. Returns how many were new.
    async fn add_partitions(
        &self,
        table: &str,
        partitions: &[Partition],
    ) -> Result<usize, CatalogError>;

    /// Every partition of a table, sorted by values.
    async fn list_partitions(&self, table: &str) -> Result<Vec<Partition>, CatalogError>;

    /// The partitions of a table with these values, as the catalog has them now (values that are not
    /// registered are left out; any order). The sink reads its partitions' locations with it after
    /// each flush, to find those a compaction has switched to merged files.
    async fn get_partitions(
        &self,
        table: &str,
        values: &[Vec<String>],
    ) -> Result<Vec<Partition>, CatalogError>;

    /// Removes partitions (given by their values) from the catalog; the files stay.
    async fn drop_partitions(
        &self,
        table: &str,
        values: &[Vec<String>],
    ) -> Result<(), CatalogError>;

    /// Points a partition at another folder, if it is still at `expected` (compaction's switch to
    /// the folder of merged files). Returns whether it was switched. The embedded catalog checks and
    /// switches in one transaction; Glue has no conditional update of a partition, so its check and
    /// switch are two calls (one compaction per table at a time keeps that safe).
    async fn set_partition_location(
        &self,
        table: &str,
        values: &[String],
        expected: &str,
        location: &str,
    ) -> Result<bool, CatalogError>;
}

/// Which catalog to use.
#[derive(Debug, Clone)]
pub enum CatalogConfig {
    /// A SQLite file.
    Embedded {
        /// The file (created if missing).
        path: PathBuf,
        /// The database name.
        database: String,
    },
    /// The AWS Glue Data Catalog (created database if missing).
    Glue {
        /// The Glue database.
        database: String,
    },
}

/// Opens the configured catalog.
pub fn open<'a>(
    config: &'a CatalogConfig,
) -> BoxFuture<'a, Result<Arc<dyn Catalog>, CatalogError>> {
    Box::pin(async move {
        let catalog: Arc<dyn Catalog> = match config {
            CatalogConfig::Embedded { path, database } => {
                Arc::new(EmbeddedCatalog::open(path, database)?)
            }
            CatalogConfig::Glue { database } => Arc::new(GlueCatalog::connect(database).await?),
        };
        Ok(catalog)
    })
}

/// Checks a table or database name: lower-case letters, digits and `_`, not starting with `_`.
pub fn validate_name(kind: &str, name: &str) -> Result<(), CatalogError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!(
            "{kind} name {name:?}: use lower-case letters, digits and '_', not starting with '_'"
        )))
    }
}
