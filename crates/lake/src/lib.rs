//! The lake's storage and layout.
//!
//! [`Lake`] is a local folder or an S3-compatible bucket, written whole-file and atomically;
//! [`layout`] says where a record goes in it (`<table>/date=…/symbol=…/<topic>+<partition>+<offset>.<ext>`)
//! and how partition values are Hive-escaped; [`parquet_format`] is how its Parquet files are written.

pub mod lake;
pub mod layout;
pub mod parquet_format;

pub use lake::{FileInfo, Lake};
pub use layout::{
    hive_escape, hive_unescape, FeedShape, LayoutChoice, PartitionKey, Partitioning,
    CHOSEN_FILE_RECORDS, SMALL_FILES, SMALL_FILE_RECORDS,
};
pub use parquet_format::{
    sort_by_symbol_ts, sorted_runs, sorting_columns, writer_properties as parquet_properties,
};

/// Errors of the lake's storage.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The lake location or an S3 setting is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// Writing, listing or reading the lake failed.
    #[error("lake {location}: {message}")]
    Storage {
        /// The file or location concerned.
        location: String,
        /// What failed.
        message: String,
    },
}
