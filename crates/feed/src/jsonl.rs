//! JSON lines replay: one message per line, sent as it is.
//!
//! Unlike the CSV replay, nothing is rewritten: each line's bytes (without the line end) become one
//! message, whatever they hold — the objects another producer or the seed's own consumer wrote, or
//! deliberately broken input to try a sink with. A line that decodes as a record is keyed by its symbol
//! and stamped with its event time; any other line goes without a key. Blank lines are skipped.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek};
use std::path::{Path, PathBuf};

use ticklake_model::json;

use crate::FeedError;

/// One line of the file, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in the file.
    pub number: u64,
    /// The line's bytes, without `\n` or `\r\n`.
    pub bytes: Vec<u8>,
    /// The record's symbol, when the line decodes as a record.
    pub key: Option<String>,
    /// The record's event time in ms, when the line decodes as a record.
    pub timestamp_ms: Option<i64>,
}

/// Reads a JSON lines file line by line (any bytes, no size limit per line beyond memory).
pub struct JsonLinesSource {
    path: PathBuf,
    reader: BufReader<File>,
    line: u64,
    position: u64,
}

impl JsonLinesSource {
    /// Opens the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FeedError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| FeedError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(JsonLinesSource {
            path,
            reader: BufReader::with_capacity(1 << 20, file),
            line: 0,
            position: 0,
        })
    }

    /// Bytes read so far (for progress).
    pub fn byte_position(&self) -> u64 {
        self.position
    }

    /// Starts again from the first line.
    pub fn rewind(&mut self) -> Result<(), FeedError> {
        self.reader
            .seek(std::io::SeekFrom::Start(0))
            .map_err(|source| FeedError::Io {
                path: self.path.display().to_string(),
                source,
            })?;
        self.line = 0;
        self.position = 0;
        Ok(())
    }
}

impl Iterator for JsonLinesSource {
    type Item = Result<Line, FeedError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let mut bytes = Vec::new();
            match self.reader.read_until(b'\n', &mut bytes) {
                Ok(0) => return None,
                Ok(n) => {
                    self.line += 1;
                    self.position += n as u64;
                }
                Err(source) => {
                    return Some(Err(FeedError::Io {
                        path: format!("{} line {}", self.path.display(), self.line + 1),
                        source,
                    }))
                }
            }
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let (key, timestamp_ms) = match json::decode(&bytes) {
                Ok(r) => (Some(r.symbol), Some(r.ts.div_euclid(1000))),
                Err(_) => (None, None),
            };
            return Some(Ok(Line {
                number: self.line,
                bytes,
                key,
                timestamp_ms,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_sent_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut content = Vec::new();
        content.extend_from_slice(b"{\"Index\":\"HSI\",\"Date\":\"1986-12-31\",\"Close\":1}\r\n");
        content.extend_from_slice(b"\n   \n");
        content.extend_from_slice(b"not json \xff\n");
        content.extend_from_slice(b"{\"symbol\":\"A\",\"ts\":1000}");
        std::fs::write(&path, &content).unwrap();
        let lines: Vec<Line> = JsonLinesSource::open(&path)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].key.as_deref(), Some("HSI"));
        assert_eq!(lines[0].timestamp_ms, Some(536_371_200_000));
        assert_eq!(
            lines[0].bytes,
            b"{\"Index\":\"HSI\",\"Date\":\"1986-12-31\",\"Close\":1}"
        );
        assert_eq!(lines[1].number, 4);
        assert_eq!(lines[1].bytes, b"not json \xff");
        assert_eq!(lines[1].key, None);
        assert_eq!(lines[2].key.as_deref(), Some("A"));
        assert_eq!(lines[2].timestamp_ms, Some(1_000_000));
    }
}
