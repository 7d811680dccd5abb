//! CSV replay.
//!
//! The header names the columns. Each core field (`symbol`, `ts`, `open`, `high`, `low`, `close`,
//! `volume`) is found by an explicit [`ColumnMap`] entry, else by its own name, else by a usual alias
//! (`Index`/`Ticker` -> symbol, `Date`/`Timestamp` -> ts, `Price` -> close); every other column is kept as
//! an extra column under its snake_case name. The seed's `indexProcessed.csv` therefore needs no options.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use csv::{ByteRecord, ReaderBuilder};
use ticklake_model::names::{core_alias, normalize_column_name};
use ticklake_model::{Record, Value};

use crate::dates::{DateFormat, Evidence};
use crate::rejects::{Reject, RejectKind};
use crate::FeedError;

/// Explicit `field=Column` pairs, e.g. `symbol=Ticker,ts=Date`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnMap(pub Vec<(String, String)>);

const FIELDS: [&str; 7] = ["symbol", "ts", "open", "high", "low", "close", "volume"];

impl FromStr for ColumnMap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut pairs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, column) = part
                .split_once('=')
                .ok_or_else(|| format!("--map entry {part:?} is not field=Column"))?;
            let field = field.trim().to_ascii_lowercase();
            if !FIELDS.contains(&field.as_str()) {
                return Err(format!(
                    "--map field {field:?} is not one of {}",
                    FIELDS.join(", ")
                ));
            }
            pairs.push((field, column.trim().to_owned()));
        }
        Ok(ColumnMap(pairs))
    }
}

/// How to read a CSV file.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    /// Explicit column choices for core fields.
    pub map: ColumnMap,
    /// The date column's format; `None` detects it from the file's values.
    pub date_format: Option<DateFormat>,
    /// A symbol for every row, for files of one instrument without a symbol column.
    pub symbol: Option<String>,
    /// Field delimiter.
    pub delimiter: u8,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            map: ColumnMap::default(),
            date_format: None,
            symbol: None,
            delimiter: b',',
        }
    }
}

/// One row's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// A record read from the row.
    Good(Record),
    /// The row was skipped, and why.
    Rejected(Reject),
}

/// Where each record field comes from.
#[derive(Debug, Clone)]
struct Layout {
    width: usize,
    symbol: Option<usize>,
    ts: usize,
    /// open, high, low, close, volume.
    prices: [Option<usize>; 5],
    extras: Vec<(usize, Arc<str>)>,
    header: Vec<String>,
}

/// A CSV file replayed row by row, in file order.
pub struct CsvSource {
    path: PathBuf,
    reader: csv::Reader<BufReader<File>>,
    layout: Layout,
    date: DateFormat,
    symbol: Option<String>,
    delimiter: u8,
    row: ByteRecord,
}

impl CsvSource {
    /// Opens `path`, reads its header, resolves the columns and, unless given, detects the date format.
    pub fn open(path: impl AsRef<Path>, options: &CsvOptions) -> Result<Self, FeedError> {
        let path = path.as_ref().to_path_buf();
        let mut reader = reader(&path, options.delimiter)?;
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| csv_error(&path, &e))?
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_owned())
            .collect();
        if header.iter().all(String::is_empty) {
            return Err(FeedError::Csv {
                path: path.display().to_string(),
                message: "the file has no header row (the first line names the columns)".into(),
            });
        }
        let layout = resolve(&header, options).map_err(|message| FeedError::Mapping {
            path: path.display().to_string(),
            message,
        })?;
        let date = match &options.date_format {
            Some(f) => f.clone(),
            None => detect_dates(&path, options.delimiter, layout.ts)?,
        };
        Ok(CsvSource {
            path,
            reader,
            layout,
            date,
            symbol: options.symbol.clone(),
            delimiter: options.delimiter,
            row: ByteRecord::new(),
        })
    }

    /// The date format in use (given or detected).
    pub fn date_format(&self) -> &DateFormat {
        &self.date
    }

    /// How the columns were mapped, e.g. `symbol<-Index, ts<-Date, ..., extra: adj_close<-Adj Close`.
    pub fn describe_mapping(&self) -> String {
        let l = &self.layout;
        let col = |i: usize| l.header[i].as_str();
        let mut parts = vec![match (l.symbol, &self.symbol) {
            (Some(i), _) => format!("symbol<-{}", col(i)),
            (None, Some(s)) => format!("symbol={s:?}"),
            (None, None) => "symbol<-?".into(),
        }];
        parts.push(format!("ts<-{} ({})", col(l.ts), self.date.describe()));
        for (name, idx) in FIELDS[2..].iter().zip(l.prices) {
            if let Some(i) = idx {
                parts.push(format!("{name}<-{}", col(i)));
            }
        }
        for (i, name) in &l.extras {
            parts.push(format!("{name}<-{}", col(*i)));
        }
        parts.join(", ")
    }

    /// Bytes of the file read so far (for progress).
    pub fn byte_position(&self) -> u64 {
        self.reader.position().byte()
    }

    /// Goes back to the first data row (for looped replays).
    pub fn rewind(&mut self) -> Result<(), FeedError> {
        let mut reader = reader(&self.path, self.delimiter)?;
        reader.headers().map_err(|e| csv_error(&self.path, &e))?;
        self.reader = reader;
        Ok(())
    }

    fn parse(&self, line: u64) -> Result<Record, Reject> {
        let row = &self.row;
        let l = &self.layout;
        let raw = || {
            let mut text = row
                .iter()
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(&char::from(self.delimiter).to_string());
            if text.ends_with('\r') {
                text.pop();
            }
            text
        };
        let reject = |kind, reason: String| Reject {
            line,
            kind,
            reason,
            raw: raw(),
        };
        if row.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
            return Err(reject(RejectKind::Blank, "every field is empty".into()));
        }
        if row.len() != l.width {
            return Err(reject(
                RejectKind::ColumnCount,
                format!("{} fields, the header has {}", row.len(), l.width),
            ));
        }
        let text = |i: usize| -> Result<&str, Reject> {
            std::str::from_utf8(&row[i]).map(str::trim).map_err(|_| {
                reject(
                    RejectKind::BadNumber,
                    format!("column {:?} is not valid UTF-8", l.header[i]),
                )
            })
        };
        let required = |i: usize| -> Result<&str, Reject> {
            let t = text(i)?;
            if t.is_empty() {
                Err(reject(
                    RejectKind::MissingValue,
                    format!("column {:?} is empty", l.header[i]),
                ))
            } else {
                Ok(t)
            }
        };
        // `resolve` guarantees a symbol column or a constant symbol.
        let symbol = match l.symbol {
            Some(i) => required(i)?.to_owned(),
            None => self.symbol.clone().unwrap_or_default(),
        };
        let ts_text = required(l.ts)?;
        let ts = self.date.parse(ts_text).ok_or_else(|| {
            reject(
                RejectKind::BadDate,
                format!(
                    "column {:?}: {ts_text:?} is not a date in {}",
                    l.header[l.ts],
                    self.date.describe()
                ),
            )
        })?;
        let mut record = Record::new(symbol, ts);
        let mut prices = [None; 5];
        for (slot, idx) in prices.iter_mut().zip(l.prices) {
            if let Some(i) = idx {
                let t = required(i)?;
                *slot = Some(finite(t).ok_or_else(|| {
                    reject(
                        RejectKind::BadNumber,
                        format!("column {:?}: {t:?} is not a number", l.header[i]),
                    )
                })?);
            }
        }
        [
            record.open,
            record.high,
            record.low,
            record.close,
            record.volume,
        ] = prices;
        record.extra.reserve(l.extras.len());
        for (i, name) in &l.extras {
            let t = text(*i)?;
            let v = if t.is_empty() {
                Value::Null
            } else if let Some(n) = finite(t) {
                Value::Number(n)
            } else {
                Value::Text(t.to_owned())
            };
            record.extra.push((name.clone(), v));
        }
        Ok(record)
    }
}

fn finite(t: &str) -> Option<f64> {
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl Iterator for CsvSource {
    type Item = Result<Row, FeedError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut row = std::mem::take(&mut self.row);
        let read = self.reader.read_byte_record(&mut row);
        self.row = row;
        match read {
            Ok(false) => None,
            Ok(true) => {
                let line = self.row.position().map_or(0, |p| p.line());
                Some(Ok(match self.parse(line) {
                    Ok(r) => Row::Good(r),
                    Err(reject) => Row::Rejected(reject),
                }))
            }
            Err(e) => Some(Err(csv_error(&self.path, &e))),
        }
    }
}

fn reader(path: &Path, delimiter: u8) -> Result<csv::Reader<BufReader<File>>, FeedError> {
    let file = File::open(path).map_err(|source| FeedError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        // Records end at `\n` only: with the default (`\r` too) the reader counts CRLF lines one short,
        // and the line numbers in rejects would be wrong. The `\r` left on the last field is trimmed.
        .terminator(csv::Terminator::Any(b'\n'))
        .from_reader(BufReader::with_capacity(1 << 20, file)))
}

fn csv_error(path: &Path, e: &csv::Error) -> FeedError {
    match e.kind() {
        csv::ErrorKind::Io(io) => FeedError::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(io.kind(), io.to_string()),
        },
        _ => FeedError::Csv {
            path: path.display().to_string(),
            message: e.to_string(),
        },
    }
}

fn resolve(header: &[String], options: &CsvOptions) -> Result<Layout, String> {
    let normalized: Vec<String> = header.iter().map(|h| normalize_column_name(h)).collect();
    let listing = || format!("the header has: {}", header.join(", "));
    let mut used = vec![false; header.len()];
    let mut pick = |field: &str| -> Result<Option<usize>, String> {
        let found = if let Some((_, col)) = options.map.0.iter().find(|(f, _)| f == field) {
            let want = normalize_column_name(col);
            let i = header
                .iter()
                .position(|h| h == col)
                .or_else(|| normalized.iter().position(|n| *n == want))
                .ok_or_else(|| format!("--map {field}={col}: no such column; {}", listing()))?;
            Some(i)
        } else {
            normalized
                .iter()
                .enumerate()
                .position(|(i, n)| !used[i] && n == field)
                .or_else(|| {
                    normalized
                        .iter()
                        .enumerate()
                        .position(|(i, n)| !used[i] && core_alias(n) == Some(field))
                })
        };
        if let Some(i) = found {
            used[i] = true;
        }
        Ok(found)
    };
    let symbol = pick("symbol")?;
    if symbol.is_none() && options.symbol.is_none() {
        return Err(format!(
            "no symbol column; {}; pass --map symbol=<column>, or --symbol NAME for a file of one instrument",
            listing()
        ));
    }
    let ts = pick("ts")?
        .ok_or_else(|| format!("no date/time column; {}; pass --map ts=<column>", listing()))?;
    let mut prices = [None; 5];
    for (slot, field) in prices.iter_mut().zip(&FIELDS[2..]) {
        *slot = pick(field)?;
    }
    let mut extras: Vec<(usize, Arc<str>)> = Vec::new();
    for (i, n) in normalized.iter().enumerate() {
        if used[i] {
            continue;
        }
        let mut name = n.clone();
        let mut k = 2;
        while FIELDS.contains(&name.as_str()) || extras.iter().any(|(_, e)| **e == *name) {
            name = format!("{n}_{k}");
            k += 1;
        }
        extras.push((i, Arc::from(name)));
    }
    Ok(Layout {
        width: header.len(),
        symbol,
        ts,
        prices,
        extras,
        header: header.to_vec(),
    })
}

/// Reads the date column ahead of the replay until its format is clear (see [`Evidence`]).
fn detect_dates(path: &Path, delimiter: u8, column: usize) -> Result<DateFormat, FeedError> {
    let mut reader = reader(path, delimiter)?;
    let mut evidence = Evidence::default();
    let mut row = ByteRecord::new();
    while reader
        .read_byte_record(&mut row)
        .map_err(|e| csv_error(path, &e))?
    {
        if let Some(v) = row.get(column).and_then(|b| std::str::from_utf8(b).ok()) {
            evidence.add(v);
        }
        if evidence.settled() {
            break;
        }
    }
    evidence.decide().map_err(|message| FeedError::Dates {
        path: path.display().to_string(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn rows(src: CsvSource) -> (Vec<Record>, Vec<Reject>) {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for r in src {
            match r.unwrap() {
                Row::Good(r) => good.push(r),
                Row::Rejected(r) => bad.push(r),
            }
        }
        (good, bad)
    }

    const SEED: &str = "Index,Date,Open,High,Low,Close,Adj Close,Volume,CloseUSD\n";

    #[test]
    fn seed_format_needs_no_options() {
        let f = file(&format!(
            "{SEED}HSI,1986-12-31,2568.3,2568.4,2568.2,2568.3,2568.3,0.0,333.879\n"
        ));
        let src = CsvSource::open(f.path(), &CsvOptions::default()).unwrap();
        assert_eq!(
            src.describe_mapping(),
            "symbol<-Index, ts<-Date (ISO-8601 or epoch), open<-Open, high<-High, low<-Low, \
             close<-Close, volume<-Volume, adj_close<-Adj Close, close_usd<-CloseUSD"
        );
        let (good, bad) = rows(src);
        assert!(bad.is_empty());
        let r = &good[0];
        assert_eq!((r.symbol.as_str(), r.ts), ("HSI", 536_371_200_000_000));
        assert_eq!(
            (r.open, r.high, r.low, r.close, r.volume),
            (
                Some(2568.3),
                Some(2568.4),
                Some(2568.2),
                Some(2568.3),
                Some(0.0)
            )
        );
        assert_eq!(r.extra[0], (Arc::from("adj_close"), Value::Number(2568.3)));
        assert_eq!(r.extra[1], (Arc::from("close_usd"), Value::Number(333.879)));
    }

    #[test]
    fn bad_rows_are_rejected_with_line_and_reason() {
        let f = file(&format!(
            "{SEED}\
             GSPTSE,29/06/1979,1,2,0.5,1.5,1.5,0,1.2\r\n\
             ,,,,,,,,\r\n\
             GSPTSE,30/06/1979,1,2\r\n\
             GSPTSE,31/06/1979,1,2,0.5,1.5,1.5,0,1.2\r\n\
             GSPTSE,01/07/1979,x,2,0.5,1.5,1.5,0,1.2\r\n\
             ,02/07/1979,1,2,0.5,1.5,1.5,0,1.2\r\n\
             GSPTSE,03/07/1979,1,2,0.5,1.5,,0,\r\n"
        ));
        let src = CsvSource::open(f.path(), &CsvOptions::default()).unwrap();
        assert_eq!(src.date_format(), &DateFormat::DayFirst);
        let (good, bad) = rows(src);
        assert_eq!(good.len(), 2);
        assert_eq!(
            good[1].extra[0].1,
            Value::Null,
            "an empty extra value is a null, not a reject"
        );
        let got: Vec<(u64, RejectKind)> = bad.iter().map(|r| (r.line, r.kind)).collect();
        assert_eq!(
            got,
            vec![
                (3, RejectKind::Blank),
                (4, RejectKind::ColumnCount),
                (5, RejectKind::BadDate),
                (6, RejectKind::BadNumber),
                (7, RejectKind::MissingValue),
            ]
        );
        assert_eq!(
            bad[2].reason,
            "column \"Date\": \"31/06/1979\" is not a date in dd/mm/yyyy"
        );
        assert_eq!(bad[3].reason, "column \"Open\": \"x\" is not a number");
        assert_eq!(bad[1].raw, "GSPTSE,30/06/1979,1,2");
    }

    #[test]
    fn ambiguous_dates_are_an_error_unless_told() {
        let text = format!("{SEED}A,01/02/1979,1,1,1,1,1,1,1\nA,03/04/1979,1,1,1,1,1,1,1\n");
        let f = file(&text);
        let err = CsvSource::open(f.path(), &CsvOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("ambiguous") && err.contains("--date-format"),
            "{err}"
        );
        let opts = CsvOptions {
            date_format: Some(DateFormat::MonthFirst),
            ..Default::default()
        };
        let (good, _) = rows(CsvSource::open(f.path(), &opts).unwrap());
        assert_eq!(
            good[0].ts,
            ticklake_model::time::parse_iso("1979-01-02").unwrap()
        );
    }

    #[test]
    fn any_csv_with_a_mapping() {
        let f = file("when;Ticker;Last;Qty;venue\n2024-01-02T14:30:00Z;AAPL;185.5;100;XNAS\n");
        let opts = CsvOptions {
            map: "symbol=Ticker, ts=when, volume=Qty".parse().unwrap(),
            delimiter: b';',
            ..Default::default()
        };
        let (good, bad) = rows(CsvSource::open(f.path(), &opts).unwrap());
        assert!(bad.is_empty());
        let r = &good[0];
        assert_eq!(r.symbol, "AAPL");
        assert_eq!(r.close, Some(185.5), "`Last` is an alias of close");
        assert_eq!(r.volume, Some(100.0));
        assert_eq!(
            r.extra,
            vec![(Arc::from("venue"), Value::Text("XNAS".into()))]
        );
    }

    #[test]
    fn mapping_errors_name_the_columns() {
        let f = file("a,b\n1,2\n");
        let err = CsvSource::open(f.path(), &CsvOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("no symbol column; the header has: a, b"),
            "{err}"
        );
        let opts = CsvOptions {
            map: "symbol=zzz".parse().unwrap(),
            ..Default::default()
        };
        let err = CsvSource::open(f.path(), &opts).err().unwrap().to_string();
        assert!(err.contains("--map symbol=zzz: no such column"), "{err}");
        assert!("price=x".parse::<ColumnMap>().is_err());
        assert!("symbol".parse::<ColumnMap>().is_err());
    }

    #[test]
    fn constant_symbol_and_rewind() {
        let f = file("Date,Close\n2024-01-02,1.5\n2024-01-03,1.6\n");
        let opts = CsvOptions {
            symbol: Some("XYZ".into()),
            ..Default::default()
        };
        let mut src = CsvSource::open(f.path(), &opts).unwrap();
        assert_eq!(src.by_ref().count(), 2);
        src.rewind().unwrap();
        let (good, _) = rows(src);
        assert_eq!(good.len(), 2);
        assert_eq!(good[0].symbol, "XYZ");
    }
}
