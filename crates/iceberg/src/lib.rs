//! Apache Iceberg tables in the lake.
//!
//! The sink writes a checkpoint as **one atomic append**: its data files become visible to readers
//! all at once, and the snapshot's summary carries the Kafka offset range of every partition it
//! covers (`ticklake.kafka.<topic>.<partition>` = `"<from>..<to>"`, as the Iceberg Kafka Connect sink
//! keeps its offsets in the table). The table is then the source of truth for what it holds:
//!
//! * [`IcebergLake::offsets`] reads, per partition, the end of the last range the table holds (the
//!   largest `to` among the current snapshot and its ancestors), where a sink resumes;
//! * [`IcebergLake::append`] is refused ([`Appended::Taken`]) unless every range starts where the
//!   table says its partition ends, so a late, stalled or duplicated writer can never add data twice.
//!   The check is made inside the catalog's compare-and-set of the commit (see [`fenced`]).

mod compact;
mod config;
mod fenced;
mod lake;
mod raw_catalog;
mod split;

pub use compact::{CompactOptions, Compacted};
pub use config::{local_warehouse, IcebergCatalog, IcebergConfig};
pub use lake::{Appended, IcebergLake, OffsetRange, PartitionFiles, Registered};

/// The Iceberg library, for callers that read tables themselves (the query engine).
pub use iceberg;

/// What can go wrong with an Iceberg table.
#[derive(Debug, thiserror::Error)]
pub enum IcebergError {
    /// The Iceberg library, the catalog or the store failed.
    #[error("Iceberg table {table}: {source}")]
    Iceberg {
        /// The table (or catalog) concerned.
        table: String,
        /// What failed.
        #[source]
        source: Box<iceberg::Error>,
    },
    /// The catalog cannot be opened.
    #[error("{catalog}: {message}")]
    Catalog {
        /// The catalog, as [`IcebergConfig::describe`] names it.
        catalog: String,
        /// What is wrong.
        message: String,
    },
    /// The data does not fit the table.
    #[error("Iceberg table {table}: {message}")]
    Invalid {
        /// The table concerned.
        table: String,
        /// What is wrong.
        message: String,
    },
}

impl IcebergError {
    /// True for failures that may pass by themselves: the library's I/O and catalog errors
    /// (`Unexpected`: a store or catalog unreachable or answering 5xx) and retryable ones (commit
    /// conflicts); not data that does not fit, features the library lacks, or a catalog that cannot
    /// be opened as configured.
    pub fn may_pass(&self) -> bool {
        match self {
            IcebergError::Iceberg { source, .. } => {
                source.kind() == iceberg::ErrorKind::Unexpected || source.retryable()
            }
            IcebergError::Catalog { .. } | IcebergError::Invalid { .. } => false,
        }
    }
}
