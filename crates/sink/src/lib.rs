//! The sink: consumes a topic and writes a partitioned lake, exactly once.
//!
//! For each Kafka partition the sink keeps one open checkpoint: every record consumed since the last
//! flush, grouped by lake partition (`date=…/symbol=…`). A flush (by record count, bytes or time)
//! claims each partition's offset range in the lake's ledger, then writes each group as one file named
//! `<topic>+<partition>+<first offset>` — whole and atomic — while the next checkpoint fills, and only
//! once every file is durable registers them and commits the offsets. A crash anywhere replays the
//! ledger's last range; the replay gives every group the same first offset and so the same file name,
//! which is overwritten rather than duplicated. Partitions taken away by a rebalance drop their
//! unflushed records (the new owner replays them from the ledger), so nothing is written twice or lost.
//!
//! Messages that cannot be decoded go, with the reason, partition and offset, to dead-letter files
//! `_ticklake/dlq/<topic>/<topic>+<partition>+<first offset>.jsonl` in the lake, under the same
//! protocol; they never stop the sink.

mod checkpoint;
mod columns;
mod compaction;
pub mod format;
mod ledger;
mod patience;
mod register;
mod sink;

pub use compaction::{BackgroundCompaction, CompactionTarget, WrittenPartitions};
pub use format::FileFormat;
use futures::future::BoxFuture;
pub use sink::{
    FlushPolicy, PartitionBy, Sink, SinkConfig, Stats, TableFormat, DEFAULT_MAX_MESSAGE_BYTES,
};
pub use ticklake_lake::{Lake, PartitionKey, Partitioning};

/// Opens the catalog the sink registers its tables in, waiting out an outage of it (AWS Glue answering
/// 5xx or unreachable) as a flush does, so a sink started while the catalog is briefly away carries on.
pub fn open_catalog<'a>(
    config: &'a ticklake_catalog::CatalogConfig,
) -> BoxFuture<'a, Result<std::sync::Arc<dyn ticklake_catalog::Catalog>, SinkError>> {
    Box::pin(patience::patiently("the catalog", move || {
        ticklake_catalog::open(config)
    }))
}

/// Errors of the sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A setting is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The message bus failed.
    #[error(transparent)]
    Bus(#[from] ticklake_bus::BusError),
    /// Writing or reading the lake failed.
    #[error(transparent)]
    Lake(#[from] ticklake_lake::LakeError),
    /// Registering partitions in the catalog failed.
    #[error(transparent)]
    Catalog(#[from] ticklake_catalog::CatalogError),
    /// An Iceberg table or its catalog failed.
    #[error(transparent)]
    Iceberg(#[from] ticklake_iceberg::IcebergError),
    /// The lake's ledger of offsets is unreadable.
    #[error("ledger: {0}")]
    Ledger(String),
    /// Encoding a file failed.
    #[error("encoding a lake file: {0}")]
    Encode(String),
}

/// The table a topic is sunk into by default: the topic in snake_case (`stock-topic` -> `stock_topic`).
pub fn default_table(topic: &str) -> String {
    topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('_')
        .to_owned()
}
