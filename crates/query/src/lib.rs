//! SQL over the lake: a DataFusion session whose tables are the catalog's (partitions pruned from the
//! catalog by `date`/`symbol` filters) and the lake's Iceberg tables (files pruned by their manifests;
//! time travel with `as_of(…)` and `snapshots(…)`), Athena's `SHOW TABLES`, `DESCRIBE` and `SHOW PARTITIONS`,
//! market helpers (`ohlcv(...)` bars and the `vwap(...)` aggregate), `files(...)` (the files a query
//! of a Hive table reads, for other engines), read-only enforcement, and result
//! formatting as a table, CSV, JSON lines or Parquet.

mod engine;
mod file_groups;
mod file_statistics;
mod files;
mod folder_distinct;
mod handover;
mod helpers;
mod iceberg;
mod key_runs;
pub mod market;
mod output;
mod output_bounds;
mod provider;
mod run_aggregate;
#[cfg(test)]
mod test_support;
mod window_topn;
mod yielding;

pub use engine::{
    split_statements, Engine, EngineOptions, Output, PartitionValues, CATALOG_NAME,
    DEFAULT_MEMORY_LIMIT, DEFAULT_TIMEOUT,
};
pub use iceberg::IcebergTable;
pub use output::{write_output, OutputFormat};
pub use output_bounds::FUNCTION_OUTPUT_LIMIT;
pub use provider::LakeTable;

use datafusion::error::DataFusionError;

/// Errors of queries.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL is wrong; DataFusion's message and, when known, where (line and column, from 1).
    #[error("{message}")]
    Sql {
        /// What is wrong.
        message: String,
        /// Line and column of the problem.
        position: Option<(u64, u64)>,
    },
    /// The statement would write or change the lake or the catalog.
    #[error("queries are read-only: {0}")]
    ReadOnly(String),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] ticklake_catalog::CatalogError),
    /// A table of the catalog cannot be read.
    #[error("table {0}: {1}")]
    Table(String, String),
    /// Running the query failed (reading files, for example).
    #[error("{0}")]
    Execution(String),
    /// The statement ran longer than its time limit and was stopped.
    #[error("the statement ran longer than its time limit ({}) and was stopped; raise --timeout to give it longer", humantime_secs(*.0))]
    Timeout(std::time::Duration),
    /// The statement needed more memory for sorts, joins or aggregations than its limit, and what
    /// held it could not spill to disk. `detail` is DataFusion's account of who held what.
    #[error(
        "the statement needs more memory than its limit{} allows; raise --memory-limit, or narrow \
         the statement (a filter, fewer groups, a LIMIT). {detail}",
        limit.map(|l| format!(" ({})", mebibytes(l))).unwrap_or_default()
    )]
    MemoryLimit {
        /// The limit (bytes), when known.
        limit: Option<usize>,
        /// What ran out, and the largest holders of memory.
        detail: String,
    },
    /// Writing the result failed.
    #[error("writing the result: {0}")]
    Output(#[source] std::io::Error),
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        match e.find_root() {
            // Only the root: the errors around it tell users to set `datafusion.runtime.*`, which
            // ticklake's users set as --memory-limit.
            root @ DataFusionError::ResourcesExhausted(_) => QueryError::MemoryLimit {
                limit: None,
                detail: root.to_string(),
            },
            _ => QueryError::Execution(e.to_string()),
        }
    }
}

impl QueryError {
    /// Classifies a DataFusion error for the statement `sql`: refused writes, SQL errors with their
    /// position, or failures while running.
    pub fn from_datafusion(e: DataFusionError, sql: &str) -> QueryError {
        let message = e.to_string();
        for (marker, what) in [
            (
                "DDL not supported",
                "statements that create, change or drop tables are refused",
            ),
            (
                "DML not supported",
                "INSERT, UPDATE, DELETE and COPY are refused",
            ),
            (
                "Statement not supported",
                "SET, transactions and similar statements are refused",
            ),
        ] {
            if message.contains(marker) {
                return QueryError::ReadOnly(format!(
                    "{what}; the lake is written by `ticklake sink` and cataloged by `ticklake crawl` ({message})"
                ));
            }
        }
        let span = e
            .diagnostic()
            .and_then(|d| d.span)
            .map(|s| (s.start.line, s.start.column));
        let position = span
            .or_else(|| parser_position(&message))
            .or_else(|| message.contains("found: EOF").then(|| end_of(sql)));
        let is_sql = position.is_some()
            || matches!(
                e.find_root(),
                DataFusionError::SQL(..)
                    | DataFusionError::Plan(..)
                    | DataFusionError::SchemaError(..)
            );
        if is_sql {
            QueryError::Sql { message, position }
        } else {
            QueryError::from(e)
        }
    }

    /// The message, and for SQL errors with a position the offending line with a caret under it.
    pub fn render(&self, sql: &str) -> String {
        let mut out = self.to_string();
        if let QueryError::Sql {
            position: Some((line, column)),
            ..
        } = self
        {
            if let Some(text) = sql.lines().nth((*line as usize).saturating_sub(1)) {
                let col = (*column as usize).max(1);
                out.push_str(&format!(
                    "\n  at line {line}, column {column}:\n  {text}\n  {}^",
                    " ".repeat(col - 1)
                ));
            }
        }
        out
    }
}

fn mebibytes(bytes: usize) -> String {
    format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
}

fn humantime_secs(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// The position just after the last character of `sql` (where "found: EOF" points).
fn end_of(sql: &str) -> (u64, u64) {
    let text = sql.trim_end();
    let line = text.lines().count().max(1);
    let last = text.lines().last().unwrap_or_default();
    (line as u64, last.chars().count() as u64 + 1)
}

/// `… at Line: 1, Column: 8` in sqlparser's messages.
fn parser_position(message: &str) -> Option<(u64, u64)> {
    let i = message.rfind("Line: ")?;
    let rest = &message[i + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, col.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_positions_are_found_and_shown() {
        assert_eq!(
            parser_position("SQL error: ParserError(\"Expected: an expression, found: FROM at Line: 2, Column: 8\")"),
            Some((2, 8))
        );
        assert_eq!(parser_position("no position"), None);
        let e = QueryError::Sql {
            message: "bad".into(),
            position: Some((2, 8)),
        };
        let shown = e.render("select 1,\nselect FROM x");
        assert!(shown.ends_with("  select FROM x\n         ^"), "{shown}");
    }
}
