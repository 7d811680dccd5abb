//! Rows that could not be read: counted by kind and written, with line number and reason, to a CSV file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// Why a row was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectKind {
    /// Every field is empty.
    Blank,
    /// The row has more or fewer fields than the header.
    ColumnCount,
    /// A required value is empty.
    MissingValue,
    /// A numeric column holds something that is not a finite number.
    BadNumber,
    /// The date/time column cannot be read in the file's date format.
    BadDate,
}

impl RejectKind {
    /// The label used in summaries, e.g. `blank row`.
    pub fn label(self) -> &'static str {
        match self {
            RejectKind::Blank => "blank row",
            RejectKind::ColumnCount => "wrong column count",
            RejectKind::MissingValue => "missing value",
            RejectKind::BadNumber => "bad number",
            RejectKind::BadDate => "bad date",
        }
    }
}

/// One skipped row.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// 1-based line number in the source file.
    pub line: u64,
    /// The kind of problem.
    pub kind: RejectKind,
    /// What exactly is wrong, naming the column and value.
    pub reason: String,
    /// The row's text.
    pub raw: String,
}

/// Counts rejects and writes them to a CSV file (`line,kind,reason,row`), created on the first reject.
pub struct RejectLog {
    path: Option<PathBuf>,
    writer: Option<csv::Writer<BufWriter<File>>>,
    counts: BTreeMap<RejectKind, u64>,
}

impl RejectLog {
    /// A log that writes to `path` (or only counts, with `None`).
    pub fn new(path: Option<PathBuf>) -> Self {
        RejectLog {
            path,
            writer: None,
            counts: BTreeMap::new(),
        }
    }

    /// Counts `reject` and appends it to the file.
    pub fn record(&mut self, reject: &Reject) -> std::io::Result<()> {
        *self.counts.entry(reject.kind).or_default() += 1;
        let Some(path) = &self.path else {
            return Ok(());
        };
        if self.writer.is_none() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut w = csv::Writer::from_writer(BufWriter::new(File::create(path)?));
            w.write_record(["line", "kind", "reason", "row"])?;
            self.writer = Some(w);
        }
        if let Some(w) = &mut self.writer {
            w.write_record([
                reject.line.to_string().as_str(),
                reject.kind.label(),
                &reject.reason,
                &reject.raw,
            ])?;
        }
        Ok(())
    }

    /// Rows rejected so far.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Rejects per kind.
    pub fn counts(&self) -> &BTreeMap<RejectKind, u64> {
        &self.counts
    }

    /// `blank row (27670), bad date (2)`: kinds by count, largest first. Empty when nothing was rejected.
    pub fn summary(&self) -> String {
        let mut kinds: Vec<_> = self.counts.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        kinds
            .iter()
            .map(|(k, n)| format!("{} ({n})", k.label()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The file written, if any reject was recorded.
    pub fn written_path(&self) -> Option<&Path> {
        self.writer.as_ref().and(self.path.as_deref())
    }

    /// Flushes the file to disk.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if let Some(w) = &mut self.writer {
            w.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_summarises_and_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/rejects.csv");
        let mut log = RejectLog::new(Some(path.clone()));
        assert_eq!(log.summary(), "");
        assert!(log.written_path().is_none());
        for (line, kind) in [
            (3, RejectKind::Blank),
            (4, RejectKind::BadDate),
            (5, RejectKind::Blank),
        ] {
            log.record(&Reject {
                line,
                kind,
                reason: "why, \"quoted\"".into(),
                raw: ",,".into(),
            })
            .unwrap();
        }
        log.flush().unwrap();
        assert_eq!(log.total(), 3);
        assert_eq!(log.summary(), "blank row (2), bad date (1)");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rd = csv::Reader::from_reader(text.as_bytes());
        let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(&rows[1][0], "4");
        assert_eq!(&rows[1][1], "bad date");
        assert_eq!(&rows[1][2], "why, \"quoted\"");
    }
}
