//! Turning a batch of records into the bytes of one lake file.

use std::str::FromStr;

use arrow::array::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;

use crate::SinkError;

/// The file format of the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileFormat {
    /// Apache Parquet: zstd, statistics on, rows sorted by symbol then time (the default).
    #[default]
    Parquet,
    /// One JSON object per line (the message format).
    Json,
    /// CSV with a header row.
    Csv,
}

impl FromStr for FileFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "parquet" => Ok(FileFormat::Parquet),
            "json" => Ok(FileFormat::Json),
            "csv" => Ok(FileFormat::Csv),
            other => Err(format!(
                "unknown format {other:?}: use parquet, json or csv"
            )),
        }
    }
}

impl FileFormat {
    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Parquet => "parquet",
            FileFormat::Json => "json",
            FileFormat::Csv => "csv",
        }
    }
}

/// Sorts `batch` by (symbol, ts) and encodes it in `format`.
pub fn encode(batch: &RecordBatch, format: FileFormat) -> Result<Bytes, SinkError> {
    let err = |e: &dyn std::fmt::Display| SinkError::Encode(e.to_string());
    let sorted = ticklake_lake::sort_by_symbol_ts(batch).map_err(|e| err(&e))?;
    let mut out = Vec::with_capacity(sorted.get_array_memory_size() / 4 + 1024);
    match format {
        FileFormat::Parquet => {
            let props = ticklake_lake::parquet_properties(&sorted.schema());
            let mut w = ArrowWriter::try_new(&mut out, sorted.schema(), Some(props))
                .map_err(|e| err(&e))?;
            w.write(&sorted).map_err(|e| err(&e))?;
            w.close().map_err(|e| err(&e))?;
        }
        // The message's own form when the file has the symbol; without it (a table partitioned by
        // symbol keeps it in the folders), Arrow's JSON lines writer, which takes any columns.
        FileFormat::Json if sorted.schema().index_of("symbol").is_ok() => {
            for m in ticklake_model::arrow::batch_to_messages(&sorted).map_err(|e| err(&e))? {
                out.extend_from_slice(&m);
                out.push(b'\n');
            }
        }
        FileFormat::Json => {
            let mut w = arrow_json::LineDelimitedWriter::new(&mut out);
            w.write(&sorted).map_err(|e| err(&e))?;
            w.finish().map_err(|e| err(&e))?;
        }
        FileFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            w.write(&sorted).map_err(|e| err(&e))?;
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::reader::FileReader;
    use ticklake_model::Record;

    fn batch() -> RecordBatch {
        let mut rs = Vec::new();
        for (sym, ts) in [("B", 3), ("A", 2), ("B", 1), ("A", 1)] {
            let mut r = Record::new(sym, ts);
            r.close = Some(ts as f64);
            rs.push(r);
        }
        ticklake_model::arrow::records_to_batch(&rs).unwrap()
    }

    #[test]
    fn parquet_is_sorted_zstd_with_statistics() {
        let bytes = encode(&batch(), FileFormat::Parquet).unwrap();
        let reader =
            parquet::file::serialized_reader::SerializedFileReader::new(bytes.clone()).unwrap();
        let rg = reader.metadata().row_group(0);
        let col = rg.column(1);
        // The level is not recorded in the file, only the codec.
        assert!(
            matches!(col.compression(), parquet::basic::Compression::ZSTD(_)),
            "{:?}",
            col.compression()
        );
        assert!(col.statistics().is_some(), "statistics are written");
        use parquet::basic::Encoding;
        // Column 1 is `ts`: delta-encoded, no dictionary.
        assert!(
            col.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED)
                && col.dictionary_page_offset().is_none(),
            "{:?}",
            col.encodings().collect::<Vec<_>>()
        );
        let rows: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let recs = ticklake_model::arrow::batch_to_records(&rows[0]).unwrap();
        let keys: Vec<(&str, i64)> = recs.iter().map(|r| (r.symbol.as_str(), r.ts)).collect();
        assert_eq!(keys, [("A", 1), ("A", 2), ("B", 1), ("B", 3)]);
    }

    #[test]
    fn json_and_csv() {
        let json = encode(&batch(), FileFormat::Json).unwrap();
        let lines: Vec<&str> = std::str::from_utf8(&json).unwrap().lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0].starts_with(r#"{"symbol":"A","ts":"1970-01-01T00:00:00.000001Z""#),
            "{}",
            lines[0]
        );
        // Without the symbol (partitioned by it), JSON lines of the other columns.
        let no_symbol = batch().project(&[1, 5]).unwrap();
        let json = encode(&no_symbol, FileFormat::Json).unwrap();
        let first = std::str::from_utf8(&json).unwrap().lines().next().unwrap();
        let v: serde_json::Value = serde_json::from_str(first).unwrap();
        assert_eq!(v["close"], 1.0);
        assert!(v["ts"].as_str().unwrap().starts_with("1970-01-01T00:00:00"));
        let csv = encode(&batch(), FileFormat::Csv).unwrap();
        let text = std::str::from_utf8(&csv).unwrap();
        assert!(
            text.starts_with("symbol,ts,open,high,low,close,volume\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 5);
    }
}
