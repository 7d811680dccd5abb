//! Writing results: an aligned table for people, CSV, JSON lines or Parquet for programs.

use std::io::Write;
use std::str::FromStr;

use parquet::arrow::ArrowWriter;

use crate::{Output, QueryError};

/// How results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row and line.
    Json,
    /// A Parquet file.
    Parquet,
}

impl FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(OutputFormat::Table),
            "csv" => Ok(OutputFormat::Csv),
            "json" | "jsonl" => Ok(OutputFormat::Json),
            "parquet" => Ok(OutputFormat::Parquet),
            other => Err(format!(
                "unknown output format {other:?}; use table, csv, json or parquet"
            )),
        }
    }
}

/// Writes one statement's result.
pub fn write_output(
    out: &Output,
    format: OutputFormat,
    w: &mut dyn Write,
) -> Result<(), QueryError> {
    // The I/O error itself is kept (a closed pipe is not a failure to the CLI).
    let err = |e: &dyn std::fmt::Display| QueryError::Output(std::io::Error::other(e.to_string()));
    let io = QueryError::Output;
    let arrow = |e: arrow::error::ArrowError| match e {
        arrow::error::ArrowError::IoError(_, e) => QueryError::Output(e),
        other => err(&other),
    };
    match format {
        OutputFormat::Table => {
            let text =
                arrow::util::pretty::pretty_format_batches(&out.batches).map_err(|e| err(&e))?;
            if out.batches.iter().all(|b| b.num_rows() == 0) {
                let names: Vec<_> = out
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                writeln!(w, "{}\n(0 rows)", names.join(" | ")).map_err(io)?;
            } else {
                writeln!(w, "{text}").map_err(io)?;
                let n = out.rows();
                writeln!(w, "({n} row{})", if n == 1 { "" } else { "s" }).map_err(io)?;
            }
        }
        OutputFormat::Csv => {
            // Batch by batch through a buffer: the CSV writer turns I/O errors into text.
            let empty = [arrow::array::RecordBatch::new_empty(out.schema.clone())];
            let batches = if out.batches.is_empty() {
                &empty[..]
            } else {
                &out.batches[..]
            };
            let mut buf = Vec::new();
            for (i, b) in batches.iter().enumerate() {
                buf.clear();
                arrow_csv::WriterBuilder::new()
                    .with_header(i == 0)
                    .build(&mut buf)
                    .write(b)
                    .map_err(|e| err(&e))?;
                w.write_all(&buf).map_err(io)?;
            }
        }
        OutputFormat::Json => {
            let mut writer = arrow_json::LineDelimitedWriter::new(&mut *w);
            for b in &out.batches {
                writer.write(b).map_err(arrow)?;
            }
            writer.finish().map_err(arrow)?;
        }
        OutputFormat::Parquet => {
            let mut buf = Vec::new();
            let mut writer =
                ArrowWriter::try_new(&mut buf, out.schema.clone(), None).map_err(|e| err(&e))?;
            for b in &out.batches {
                writer.write(b).map_err(|e| err(&e))?;
            }
            writer.close().map_err(|e| err(&e))?;
            w.write_all(&buf).map_err(io)?;
        }
    }
    w.flush().map_err(io)
}
