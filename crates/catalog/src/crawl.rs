//! A Glue-like crawler: walks a lake, finds tables, their formats, schemas and Hive partitions, and
//! records them in a catalog.
//!
//! * **Tables.** If the crawled location holds data files directly, it is one table (named after its
//!   folder, or [`CrawlOptions::table`]); otherwise every top-level folder is a table. Names starting
//!   with `_` or `.` are skipped (`_ticklake/` holds metadata), as Athena skips them.
//! * **Formats.** Parquet (by its magic bytes), JSON (one object per record: JSON lines, or whole files
//!   holding one object or an array of them), CSV with the delimiter and header detected.
//! * **Partitions.** `key=value` folders are Hive partitions (values unescaped); other folders become
//!   `partition_0`, `partition_1`, … as Glue names them.
//! * **Schema changes.** Columns that appear are merged in; an integer column that later holds
//!   fractions widens to `double` (reported). Any other type conflict is reported with the files of each
//!   type and never coerced: the partitions holding files of the other type are not registered.
//! * **Incremental.** Only partitions not yet in the catalog are read; `full` re-reads everything and
//!   drops partitions whose folders are gone.
//! * **Iceberg tables.** A table folder with `metadata/*.metadata.json` files is an Apache Iceberg
//!   table: its files are not Hive partitions. It is reported ([`CrawlReport::iceberg`], with its
//!   newest metadata file) for registration in an Iceberg catalog, and left out of this one.

use std::collections::{BTreeMap, BTreeSet};

use arrow::datatypes::{DataType, Schema};
use futures::future::BoxFuture;
use futures::StreamExt;
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use ticklake_lake::{hive_unescape, FileInfo, Lake};
use ticklake_model::names::normalize_column_name;

use crate::table::hive_type;
use crate::{validate_name, Catalog, CatalogError, Column, Partition, StorageFormat, Table};

/// How to crawl.
#[derive(Debug, Clone, Default)]
pub struct CrawlOptions {
    /// Re-read every file and drop partitions whose folders are gone (default: only new partitions).
    pub full: bool,
    /// The table name when the location itself is one table (default: its folder name).
    pub table: Option<String>,
}

/// What a crawl did, table by table.
#[derive(Debug, Clone, Default)]
pub struct CrawlReport {
    /// One entry per table found.
    pub tables: Vec<TableReport>,
    /// Files that could not be read or did not fit, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Iceberg tables found (not cataloged as Hive tables).
    pub iceberg: Vec<IcebergFound>,
}

/// An Apache Iceberg table found by a crawl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcebergFound {
    /// The table name (its folder's, normalized, or [`CrawlOptions::table`]).
    pub name: String,
    /// The table's folder (URL).
    pub location: String,
    /// Its newest metadata file (URL): the highest version number.
    pub metadata: String,
}

/// The version number of an Iceberg metadata file name (`00003-<uuid>.metadata.json` or
/// `v3.metadata.json`), if it is one.
fn metadata_version(file: &str) -> Option<u64> {
    let stem = file.strip_suffix(".metadata.json")?;
    let digits: String = stem
        .trim_start_matches('v')
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The newest metadata file among a table folder's files (paths relative to the folder).
fn newest_metadata<'a>(files: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    files
        .filter_map(|p| {
            let file = p.strip_prefix("metadata/")?;
            (!file.contains('/')).then_some(())?;
            Some((metadata_version(file)?, p))
        })
        .max()
        .map(|(_, p)| p)
}

impl CrawlReport {
    /// Whether any type conflict was found.
    pub fn has_conflicts(&self) -> bool {
        self.tables.iter().any(|t| !t.conflicts.is_empty())
    }
}

/// What a crawl did to one table.
#[derive(Debug, Clone, Default)]
pub struct TableReport {
    /// The table.
    pub name: String,
    /// Its format.
    pub format: String,
    /// Whether the table was created by this crawl.
    pub created: bool,
    /// Columns added to the definition.
    pub added_columns: Vec<String>,
    /// Columns widened from `bigint` to `double`.
    pub widened_columns: Vec<String>,
    /// Files read.
    pub files_read: usize,
    /// Partitions registered by this crawl.
    pub partitions_added: usize,
    /// Partitions dropped because their folders are gone (only with `full`).
    pub partitions_dropped: usize,
    /// Type conflicts: column, then each type with the files holding it.
    pub conflicts: Vec<Conflict>,
}

/// A column found with incompatible types.
#[derive(Debug, Clone)]
pub struct Conflict {
    /// The column.
    pub column: String,
    /// The type in the table definition.
    pub table_type: String,
    /// Each other type, with the files that hold it.
    pub found: BTreeMap<String, Vec<String>>,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "column {:?} is {}", self.column, self.table_type)?;
        for (t, files) in &self.found {
            let shown: Vec<_> = files.iter().take(5).map(String::as_str).collect();
            let more = files.len().saturating_sub(shown.len());
            write!(f, ", but {t} in {}", shown.join(", "))?;
            if more > 0 {
                write!(f, " and {more} more")?;
            }
        }
        write!(
            f,
            "; those partitions were not registered (rewrite the files or give them their own table)"
        )
    }
}

/// Crawls `lake` and records what it finds in `catalog`.
pub fn crawl<'a>(
    lake: &'a Lake,
    catalog: &'a dyn Catalog,
    options: &'a CrawlOptions,
) -> BoxFuture<'a, Result<CrawlReport, CatalogError>> {
    Box::pin(async move {
        let files: Vec<FileInfo> = lake
            .list_files("")
            .await?
            .into_iter()
            .filter(|f| !f.path.split('/').any(|s| s.starts_with(['_', '.'])))
            .collect();
        let mut report = CrawlReport::default();
        // The location itself may be one Iceberg table.
        if let Some(meta) = newest_metadata(files.iter().map(|f| f.path.as_str())) {
            let name = options
                .table
                .clone()
                .unwrap_or_else(|| default_table_name(lake));
            validate_name("table", &name)?;
            report.iceberg.push(IcebergFound {
                name,
                location: lake.url_of("").trim_end_matches('/').to_owned(),
                metadata: lake.url_of(meta).trim_end_matches('/').to_owned(),
            });
            return Ok(report);
        }
        // Group the files by table folder.
        let mut tables: BTreeMap<String, Vec<FileInfo>> = BTreeMap::new();
        let single = files.iter().any(|f| !f.path.contains('/'));
        for f in files {
            if single {
                tables.entry(String::new()).or_default().push(f);
            } else {
                let (top, rest) = f.path.split_once('/').unwrap_or(("", &f.path));
                let rest = rest.to_owned();
                tables
                    .entry(top.to_owned())
                    .or_default()
                    .push(FileInfo { path: rest, ..f });
            }
        }
        for (folder, files) in tables {
            let name = match (&options.table, folder.is_empty()) {
                (Some(t), true) => t.clone(),
                (_, true) => default_table_name(lake),
                (_, false) => normalize_column_name(&folder),
            };
            if let Some(meta) = newest_metadata(files.iter().map(|f| f.path.as_str())) {
                validate_name("table", &name)?;
                report.iceberg.push(IcebergFound {
                    name,
                    location: lake.url_of(&folder).trim_end_matches('/').to_owned(),
                    metadata: lake
                        .url_of(&format!("{folder}/{meta}"))
                        .trim_end_matches('/')
                        .to_owned(),
                });
                continue;
            }
            validate_name("table", &name).map_err(|e| {
                CatalogError::Invalid(format!(
                    "{e}; the folder {:?} gives it (use --table to name a single-table location)",
                    if folder.is_empty() {
                        lake.describe()
                    } else {
                        folder.clone()
                    }
                ))
            })?;
            let t = crawl_table(lake, catalog, options, &name, &folder, files, &mut report).await?;
            report.tables.push(t);
        }
        Ok(report)
    })
}

fn default_table_name(lake: &Lake) -> String {
    let loc = lake.describe();
    let last = loc
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    normalize_column_name(&last)
}

/// A file's format and schema, as read.
struct Found {
    format: StorageFormat,
    schema: Schema,
}

#[allow(clippy::too_many_arguments)]
async fn crawl_table(
    lake: &Lake,
    catalog: &dyn Catalog,
    options: &CrawlOptions,
    name: &str,
    folder: &str,
    files: Vec<FileInfo>,
    report: &mut CrawlReport,
) -> Result<TableReport, CatalogError> {
    let join = |rel: &str| {
        [folder, rel]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("/")
    };
    // The partition folder of each file.
    let mut layout: Option<Vec<String>> = None;
    let mut by_dir: BTreeMap<String, Vec<FileInfo>> = BTreeMap::new();
    for f in files {
        let dir = f.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let keys = partition_keys_of(dir);
        match &layout {
            None => layout = Some(keys),
            Some(k) if *k != keys => {
                report.skipped.push((
                    join(&f.path),
                    format!(
                        "its folders ({}) do not match the table's partitions ({})",
                        if keys.is_empty() {
                            "none".into()
                        } else {
                            keys.join("/")
                        },
                        if k.is_empty() {
                            "none".into()
                        } else {
                            k.join("/")
                        }
                    ),
                ));
                continue;
            }
            Some(_) => {}
        }
        by_dir.entry(dir.to_owned()).or_default().push(f);
    }
    let keys = layout.unwrap_or_default();
    // One read of the definition: `full` rebuilds it from the files, but still updates, not creates.
    let current = catalog.get_table(name).await?;
    let is_new = current.is_none();
    let existing = if options.full { None } else { current };
    let registered: BTreeSet<Vec<String>> = match &existing {
        Some(t) if t.partition_names() == keys.iter().map(String::as_str).collect::<Vec<_>>() => {
            catalog
                .list_partitions(name)
                .await?
                .into_iter()
                .map(|p| p.values)
                .collect()
        }
        _ => BTreeSet::new(),
    };
    // Read the files of new partitions (all files of an unpartitioned table).
    let mut to_read = Vec::new();
    for (dir, fs) in &by_dir {
        let values = partition_values_of(dir);
        if keys.is_empty() || !registered.contains(&values) {
            for f in fs {
                to_read.push((dir.clone(), join(&f.path), f.size));
            }
        }
    }
    let found: Vec<(String, String, Result<Found, String>)> =
        futures::stream::iter(to_read.into_iter().map(|(dir, path, size)| async move {
            let r = inspect(lake, &path, size).await;
            (dir, path, r)
        }))
        .buffered(16)
        .collect()
        .await;

    let mut t = TableReport {
        name: name.to_owned(),
        ..Default::default()
    };
    // The format: the one most files have; the others are reported.
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (_, _, r) in &found {
        if let Ok(f) = r {
            *counts.entry(f.format.classification()).or_default() += 1;
        }
    }
    let existing_format = existing.as_ref().map(|e| e.format);
    let format_name = existing_format
        .map(|f| f.classification())
        .or_else(|| counts.iter().max_by_key(|(_, n)| **n).map(|(k, _)| *k));
    let mut columns: Vec<Column> = existing
        .as_ref()
        .map(|e| e.columns.clone())
        .unwrap_or_default();
    let mut format = existing_format;
    let mut bad_dirs: BTreeSet<String> = BTreeSet::new();
    let mut conflicts: BTreeMap<String, Conflict> = BTreeMap::new();
    let mut good_dirs: BTreeSet<String> = BTreeSet::new();
    for (dir, path, r) in found {
        let f = match r {
            Ok(f) => f,
            Err(reason) => {
                report.skipped.push((path, reason));
                continue;
            }
        };
        if Some(f.format.classification()) != format_name {
            report.skipped.push((
                path,
                format!(
                    "it is {} but the table is {}",
                    f.format.classification(),
                    format_name.unwrap_or("?")
                ),
            ));
            bad_dirs.insert(dir);
            continue;
        }
        if format.is_none() {
            format = Some(f.format);
        }
        t.files_read += 1;
        let mut ok = true;
        let positional = matches!(f.format, StorageFormat::Csv { .. });
        for field in f.schema.fields() {
            let mut cname = normalize_column_name(field.name());
            if cname.is_empty() {
                continue;
            }
            if keys.contains(&cname) {
                if !positional {
                    // A column that is also a partition key reads from the folder, as Athena does.
                    continue;
                }
                // CSV columns are read by position, so the column stays, under another name.
                cname = format!("{cname}_in_file");
            }
            let Some(found_type) = file_type(field.data_type()) else {
                report.skipped.push((
                    path.clone(),
                    format!(
                        "column {:?} has type {} which ticklake cannot catalog",
                        field.name(),
                        field.data_type()
                    ),
                ));
                continue;
            };
            match columns.iter_mut().find(|c| c.name == cname) {
                None => {
                    t.added_columns.push(cname.clone());
                    columns.push(Column {
                        source: (cname != *field.name()).then(|| field.name().clone()),
                        name: cname,
                        data_type: found_type,
                    });
                }
                Some(c) if c.data_type == found_type || found_type == "null" => {}
                Some(c) if c.data_type == "null" => c.data_type = found_type,
                Some(c) if c.data_type == "bigint" && found_type == "double" => {
                    t.widened_columns.push(c.name.clone());
                    c.data_type = found_type;
                }
                Some(c) if c.data_type == "double" && found_type == "bigint" => {}
                Some(c) => {
                    ok = false;
                    conflicts
                        .entry(c.name.clone())
                        .or_insert_with(|| Conflict {
                            column: c.name.clone(),
                            table_type: c.data_type.clone(),
                            found: BTreeMap::new(),
                        })
                        .found
                        .entry(found_type)
                        .or_default()
                        .push(path.clone());
                }
            }
        }
        if ok {
            good_dirs.insert(dir);
        } else {
            bad_dirs.insert(dir);
        }
    }
    for c in &mut columns {
        if c.data_type == "null" {
            c.data_type = "string".into();
        }
    }
    t.conflicts = conflicts.into_values().collect();
    t.widened_columns.sort();
    t.widened_columns.dedup();
    let Some(format) = format else {
        return Ok(t);
    };
    t.format = format.classification().into();
    let table = Table {
        name: name.to_owned(),
        location: lake.url_of(folder),
        columns,
        partition_keys: keys.iter().map(|k| Column::new(k, "string")).collect(),
        format,
        parameters: existing
            .as_ref()
            .map(|e| e.parameters.clone())
            .unwrap_or_else(|| BTreeMap::from([("created_by".into(), "ticklake crawl".into())])),
    };
    t.created = is_new;
    if existing.as_ref() != Some(&table) {
        catalog.put_table(&table).await?;
    }
    if !keys.is_empty() {
        let new: Vec<Partition> = good_dirs
            .iter()
            .filter(|d| !bad_dirs.contains(*d))
            .map(|d| Partition {
                values: partition_values_of(d),
                location: lake.url_of(&join(d)),
            })
            .filter(|p| !registered.contains(&p.values))
            .collect();
        t.partitions_added = catalog.add_partitions(name, &new).await?;
        if options.full {
            let present: BTreeSet<Vec<String>> =
                by_dir.keys().map(|d| partition_values_of(d)).collect();
            // A compacted partition's files are in its compaction folder (`_compacted/…`), which
            // the walk of the table's folders leaves out.
            let gone: Vec<Vec<String>> = catalog
                .list_partitions(name)
                .await?
                .into_iter()
                .filter(|p| {
                    !p.location
                        .contains(crate::compact::COMPACTED_FOLDER_SEGMENT)
                })
                .map(|p| p.values)
                .filter(|v| !present.contains(v))
                .collect();
            t.partitions_dropped = gone.len();
            catalog.drop_partitions(name, &gone).await?;
        }
    }
    Ok(t)
}

/// The Hive type of a column found in a file; `null` for a column with no values yet.
fn file_type(t: &DataType) -> Option<String> {
    if *t == DataType::Null {
        return Some("null".into());
    }
    hive_type(t)
}

/// The partition key names of a folder path (`date=…/symbol=…` -> `date`, `symbol`).
fn partition_keys_of(dir: &str) -> Vec<String> {
    if dir.is_empty() {
        return Vec::new();
    }
    dir.split('/')
        .enumerate()
        .map(|(i, seg)| match seg.split_once('=') {
            Some((k, _)) if !k.is_empty() => normalize_column_name(&hive_unescape(k)),
            _ => format!("partition_{i}"),
        })
        .collect()
}

/// The partition values of a folder path, unescaped.
fn partition_values_of(dir: &str) -> Vec<String> {
    if dir.is_empty() {
        return Vec::new();
    }
    dir.split('/')
        .map(|seg| match seg.split_once('=') {
            Some((k, v)) if !k.is_empty() => hive_unescape(v),
            _ => hive_unescape(seg),
        })
        .collect()
}

/// How much of a text file is read to infer its schema.
const SAMPLE_BYTES: usize = 4 << 20;
/// How many records of a text file are read to infer its schema.
const SAMPLE_RECORDS: usize = 10_000;

/// Reads a file's format and schema.
async fn inspect(lake: &Lake, path: &str, size: u64) -> Result<Found, String> {
    if size == 0 {
        return Err("it is empty".into());
    }
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".parquet") || lower.ends_with(".parq") {
        return parquet_schema(lake, path, size).await;
    }
    let head = lake.get(path).await.map_err(|e| e.to_string())?;
    if head.starts_with(b"PAR1") {
        return parquet_schema(lake, path, size).await;
    }
    let sample = &head[..head.len().min(SAMPLE_BYTES)];
    let first = sample.iter().find(|b| !b.is_ascii_whitespace());
    let is_json = lower.ends_with(".json")
        || lower.ends_with(".jsonl")
        || lower.ends_with(".ndjson")
        || matches!(first, Some(b'{') | Some(b'['));
    if is_json {
        json_schema(sample, sample.len() < head.len())
    } else {
        csv_schema(sample, lower.ends_with(".tsv"))
    }
}

async fn parquet_schema(lake: &Lake, path: &str, size: u64) -> Result<Found, String> {
    let (store, _, _) = lake.object_store().map_err(|e| e.to_string())?;
    let key = lake.object_path(path).map_err(|e| e.to_string())?;
    let reader = ParquetObjectReader::new(store, key).with_file_size(size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| format!("not a readable Parquet file: {e}"))?;
    Ok(Found {
        format: StorageFormat::Parquet,
        schema: builder.schema().as_ref().clone(),
    })
}

fn json_schema(sample: &[u8], truncated: bool) -> Result<Found, String> {
    let mut values = Vec::new();
    let mut order: Vec<String> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let stream = serde_json::Deserializer::from_slice(sample).into_iter::<serde_json::Value>();
    for (i, v) in stream.enumerate() {
        let v = match v {
            Ok(v) => v,
            // The sample may end inside a record.
            Err(_) if truncated && i > 0 => break,
            Err(e) => return Err(format!("not valid JSON: {e}")),
        };
        let objects = match v {
            serde_json::Value::Array(a) => a,
            other => vec![other],
        };
        for o in objects {
            let serde_json::Value::Object(map) = &o else {
                return Err("JSON values must be objects (one record each)".into());
            };
            for k in map.keys() {
                if seen.insert(k.clone()) {
                    order.push(k.clone());
                }
            }
            values.push(o);
        }
        if values.len() >= SAMPLE_RECORDS {
            break;
        }
    }
    if values.is_empty() {
        return Err("no JSON records".into());
    }
    let schema = arrow_json::reader::infer_json_schema_from_iterator(values.iter().map(Ok))
        .map_err(|e| format!("JSON schema: {e}"))?;
    // Keep the order in which the fields first appear in the file.
    let fields: Vec<_> = order
        .iter()
        .filter_map(|n| schema.field_with_name(n).ok().cloned())
        .collect();
    Ok(Found {
        format: StorageFormat::Json,
        schema: Schema::new(fields),
    })
}

fn csv_schema(sample: &[u8], tsv: bool) -> Result<Found, String> {
    let text = std::str::from_utf8(sample)
        .or_else(|e| std::str::from_utf8(&sample[..e.valid_up_to()]))
        .map_err(|e| format!("not UTF-8 text: {e}"))?;
    // Whole lines only: the sample may end inside one.
    let text = match text.rfind('\n') {
        Some(i) if i + 1 < text.len() => &text[..=i],
        _ => text,
    };
    let first_line = text.lines().next().unwrap_or_default();
    let delimiter = if tsv {
        b'\t'
    } else {
        [b',', b'\t', b';', b'|']
            .into_iter()
            .max_by_key(|d| first_line.bytes().filter(|b| b == d).count())
            .unwrap_or(b',')
    };
    let infer = |header: bool| {
        arrow_csv::reader::Format::default()
            .with_header(header)
            .with_delimiter(delimiter)
            .with_truncated_rows(true)
            .infer_schema(text.as_bytes(), Some(SAMPLE_RECORDS))
            .map(|(s, _)| s)
            .map_err(|e| format!("not readable as CSV: {e}"))
    };
    // Glue's rule: the first line is a header if all its fields are text while the rows below have at
    // least one column of another type.
    let first: Vec<&str> = first_line
        .trim_end_matches('\r')
        .split(delimiter as char)
        .collect();
    let all_text = first
        .iter()
        .all(|f| !f.trim().is_empty() && f.trim().parse::<f64>().is_err());
    let with_header = infer(true)?;
    let header = all_text
        && with_header
            .fields()
            .iter()
            .any(|f| !matches!(f.data_type(), DataType::Utf8 | DataType::Null));
    let schema = if header {
        with_header
    } else {
        let s = infer(false)?;
        Schema::new(
            s.fields()
                .iter()
                .enumerate()
                .map(|(i, f)| f.as_ref().clone().with_name(format!("col{i}")))
                .collect::<Vec<_>>(),
        )
    };
    Ok(Found {
        format: StorageFormat::Csv { header, delimiter },
        schema,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_newest_iceberg_metadata_file_is_found() {
        let files = [
            "metadata/00001-a.metadata.json",
            "metadata/00012-b.metadata.json",
            "metadata/00003-c.metadata.json",
            "metadata/snap-1-x.avro",
            "data/ts_day=2024-01-02/x.parquet",
            "metadata/old/00099-z.metadata.json",
        ];
        assert_eq!(
            newest_metadata(files.iter().copied()),
            Some("metadata/00012-b.metadata.json")
        );
        assert_eq!(
            newest_metadata(
                ["metadata/v2.metadata.json", "metadata/v10.metadata.json"].into_iter()
            ),
            Some("metadata/v10.metadata.json")
        );
        assert_eq!(
            newest_metadata(["date=2024-01-02/x.parquet"].into_iter()),
            None
        );
    }

    fn infer(bytes: &[u8], name: &str) -> Result<(StorageFormat, Arc<Schema>), String> {
        let f = if name.ends_with(".json") {
            json_schema(bytes, false)?
        } else {
            csv_schema(bytes, name.ends_with(".tsv"))?
        };
        Ok((f.format, Arc::new(f.schema)))
    }

    #[test]
    fn folders_give_partition_keys_and_values() {
        assert_eq!(
            partition_keys_of("date=2024-01-02/symbol=BRK%3AB"),
            ["date", "symbol"]
        );
        assert_eq!(
            partition_values_of("date=2024-01-02/symbol=BRK%3AB"),
            ["2024-01-02", "BRK:B"]
        );
        assert_eq!(partition_keys_of("2024/01"), ["partition_0", "partition_1"]);
        assert_eq!(partition_values_of("2024/01"), ["2024", "01"]);
        assert!(partition_keys_of("").is_empty());
    }

    #[test]
    fn json_objects_pretty_or_per_line() {
        let pretty = br#"{
            "Index": "HSI", "Date": "1986-12-31", "Open": 2568.3, "Volume": 0.0, "CloseUSD": 333.9
        }"#;
        let (fmt, s) = infer(pretty, "stock_market_0.json").unwrap();
        assert_eq!(fmt, StorageFormat::Json);
        let names: Vec<_> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["Index", "Date", "Open", "Volume", "CloseUSD"]);
        assert_eq!(s.field(2).data_type(), &DataType::Float64);
        let lines = b"{\"a\":1}\n{\"a\":2,\"b\":\"x\"}\n";
        let (_, s) = infer(lines, "x.json").unwrap();
        assert_eq!(s.fields().len(), 2);
        assert!(infer(b"[1,2]", "x.json").unwrap_err().contains("objects"));
    }

    #[test]
    fn csv_header_and_delimiter_are_detected() {
        let csv = b"Index,Date,Open\nHSI,1986-12-31,2568.3\nHSI,1987-01-02,2540.1\n";
        let (fmt, s) = infer(csv, "a.csv").unwrap();
        assert_eq!(
            fmt,
            StorageFormat::Csv {
                header: true,
                delimiter: b','
            }
        );
        assert_eq!(s.field(2).name(), "Open");
        assert_eq!(s.field(2).data_type(), &DataType::Float64);
        let no_header = b"HSI;2568.3\nHSI;2540.1\n";
        let (fmt, s) = infer(no_header, "b.csv").unwrap();
        assert_eq!(
            fmt,
            StorageFormat::Csv {
                header: false,
                delimiter: b';'
            }
        );
        assert_eq!(s.field(0).name(), "col0");
        assert_eq!(s.field(1).data_type(), &DataType::Float64);
    }
}
