//! Sources of market records for ticklake.
//!
//! * [`csv`]: replays a CSV file in file order. The seed's `indexProcessed.csv` columns work with no
//!   options; any other CSV works with a [`ColumnMap`](csv::ColumnMap) and, where needed, a date format.
//!   Rows that cannot be read are skipped and recorded with their line number and reason ([`rejects`]).
//! * [`jsonl`]: replays a JSON lines file, one message per line, sent as it is.
//! * [`sim`]: a deterministic market simulator (a random walk per symbol, plausible OHLCV bars).
//! * [`pace`]: pacing: as fast as possible, a fixed rate, or real time by event timestamp with a speed
//!   factor.

pub mod csv;
pub mod dates;
pub mod jsonl;
pub mod pace;
pub mod rejects;
pub mod sim;

/// Errors that stop a source as a whole (as opposed to one bad row, which is a [`rejects::Reject`]).
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The CSV structure could not be read at all (e.g. no header).
    #[error("{path}: {message}")]
    Csv {
        /// The file concerned.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The column mapping does not fit the file's header.
    #[error("{path}: {message}")]
    Mapping {
        /// The file concerned.
        path: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The dates in the file could not be read unambiguously.
    #[error("{path}: {message}")]
    Dates {
        /// The file concerned.
        path: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// An option has a value that cannot work.
    #[error("{0}")]
    Options(String),
}
