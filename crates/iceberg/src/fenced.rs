//! The offset fence: a [`Catalog`] wrapper that refuses an append whose ranges do not start where the
//! table says their partitions end.
//!
//! `Transaction::commit` loads the table afresh on every attempt and rebases the append onto it, so a
//! check made before committing would be racy. This wrapper checks in `update_table`, the catalog call
//! that makes the commit: it loads the table and compares the offsets recorded by its current snapshot
//! chain with the append's ranges, then lets the real catalog apply the commit. The commit carries the
//! requirement that the table's current snapshot is still the one it was built on (checked by the
//! catalog's compare-and-set, e.g. `UPDATE … WHERE metadata_location = <old>` in the SQL catalog), so
//! if another snapshot landed between the check and the swap, the commit fails as a conflict, is
//! retried on the fresh table and checked again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation,
    TableIdent,
};

use crate::lake::{recorded_offsets, OffsetRange};

/// A range refused by the fence: the table holds the partition up to `recorded` (`None`: not at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    pub partition: i32,
    pub recorded: Option<i64>,
}

/// The catalog, with one append's ranges to check.
#[derive(Debug)]
pub(crate) struct FencedCatalog {
    inner: Arc<dyn Catalog>,
    table: TableIdent,
    topic: String,
    ranges: Vec<OffsetRange>,
    refused: Mutex<Option<Refused>>,
}

impl FencedCatalog {
    pub(crate) fn new(
        inner: Arc<dyn Catalog>,
        table: TableIdent,
        topic: &str,
        ranges: &[OffsetRange],
    ) -> FencedCatalog {
        FencedCatalog {
            inner,
            table,
            topic: topic.to_owned(),
            ranges: ranges.to_vec(),
            refused: Mutex::new(None),
        }
    }

    /// The range the fence refused, if it did.
    pub(crate) fn refused(&self) -> Option<Refused> {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn check(&self) -> Result<()> {
        let table = self.inner.load_table(&self.table).await?;
        let ends = recorded_offsets(table.metadata_ref(), &self.topic);
        for r in &self.ranges {
            let recorded = ends.get(&r.partition).copied();
            // A partition the table does not hold yet may start anywhere (a new table, or a topic
            // that kept only its later offsets); once it holds some, ranges follow on exactly.
            if recorded.is_some_and(|end| end != r.from) {
                let refused = Refused {
                    partition: r.partition,
                    recorded,
                };
                *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(refused);
                return Err(Error::new(
                    ErrorKind::DataInvalid,
                    format!(
                        "partition {} of topic {:?}: the table holds its offsets up to {}, this \
                         append starts at {}",
                        r.partition,
                        self.topic,
                        recorded.unwrap_or_default(),
                        r.from
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Catalog for FencedCatalog {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        self.inner.namespace_exists(namespace).await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        self.inner.drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Table> {
        self.inner.create_table(namespace, creation).await
    }

    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        self.inner.load_table(table).await
    }

    async fn drop_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.drop_table(table).await
    }

    async fn purge_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.purge_table(table).await
    }

    async fn table_exists(&self, table: &TableIdent) -> Result<bool> {
        self.inner.table_exists(table).await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<()> {
        self.inner.rename_table(src, dest).await
    }

    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }

    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        if commit.identifier() == &self.table {
            self.check().await?;
        }
        self.inner.update_table(commit).await
    }
}
