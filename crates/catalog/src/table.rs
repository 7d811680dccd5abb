//! What a catalog holds about a table: what AWS Glue holds (name, location, columns with Hive types,
//! partition keys, storage format) and its partitions.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::CatalogError;

/// A column: a lower-case name and a Hive/Glue type (`string`, `double`, `bigint`, `timestamp`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// The name queries use (snake_case ASCII, as Glue and Athena lower-case names).
    pub name: String,
    /// The Hive type as Glue stores it.
    pub data_type: String,
    /// The field's name inside the files when it differs from `name` (e.g. `Adj Close` for `adj_close`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Column {
    /// A column whose files use the same name.
    pub fn new(name: impl Into<String>, data_type: impl Into<String>) -> Column {
        Column {
            name: name.into(),
            data_type: data_type.into(),
            source: None,
        }
    }

    /// The field name inside the files.
    pub fn source_name(&self) -> &str {
        self.source.as_deref().unwrap_or(&self.name)
    }
}

/// How the table's files are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum StorageFormat {
    /// Apache Parquet.
    Parquet,
    /// JSON values, one object per record (JSON lines, or whole files holding one object each).
    Json,
    /// Delimited text.
    Csv {
        /// Whether the first line of each file names the columns.
        header: bool,
        /// The field delimiter.
        delimiter: u8,
    },
}

impl StorageFormat {
    /// `parquet`, `json` or `csv`: Glue's `classification`.
    pub fn classification(&self) -> &'static str {
        match self {
            StorageFormat::Parquet => "parquet",
            StorageFormat::Json => "json",
            StorageFormat::Csv { .. } => "csv",
        }
    }

    /// The Hive SerDe, input and output format classes that let Athena, Trino and Spark read the files.
    pub fn hive_classes(&self) -> (&'static str, &'static str, &'static str) {
        match self {
            StorageFormat::Parquet => (
                "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
                "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
                "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
            ),
            StorageFormat::Json => (
                "org.openx.data.jsonserde.JsonSerDe",
                "org.apache.hadoop.mapred.TextInputFormat",
                "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
            ),
            StorageFormat::Csv { .. } => (
                "org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe",
                "org.apache.hadoop.mapred.TextInputFormat",
                "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
            ),
        }
    }
}

/// A table definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// The table name (snake_case).
    pub name: String,
    /// The folder holding the table's files, as a URL ending in `/` (`file:///…/` or `s3://bucket/…/`).
    pub location: String,
    /// The data columns, in file order.
    pub columns: Vec<Column>,
    /// The partition columns, outermost folder first (their values are strings).
    pub partition_keys: Vec<Column>,
    /// How the files are stored.
    pub format: StorageFormat,
    /// Free-form table parameters (Glue's `Parameters`).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

impl Table {
    /// The Arrow schema queries see: data columns, then partition columns (`Utf8`).
    pub fn schema(&self) -> Result<SchemaRef, CatalogError> {
        let mut fields = Vec::with_capacity(self.columns.len() + self.partition_keys.len());
        for c in &self.columns {
            fields.push(Field::new(&c.name, arrow_type(&c.data_type)?, true));
        }
        for k in &self.partition_keys {
            fields.push(Field::new(&k.name, DataType::Utf8, true));
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    /// The Arrow schema of the data inside the files (file field names, no partition columns).
    pub fn file_schema(&self) -> Result<SchemaRef, CatalogError> {
        let fields = self
            .columns
            .iter()
            .map(|c| Ok(Field::new(c.source_name(), arrow_type(&c.data_type)?, true)))
            .collect::<Result<Vec<_>, CatalogError>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }

    /// The partition key names.
    pub fn partition_names(&self) -> Vec<&str> {
        self.partition_keys
            .iter()
            .map(|k| k.name.as_str())
            .collect()
    }
}

/// A partition: the values of the partition keys (unescaped) and the folder holding its files.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Partition {
    /// One value per partition key, in key order.
    pub values: Vec<String>,
    /// The partition's folder, as a URL ending in `/`.
    pub location: String,
}

impl Partition {
    /// Hive's and Athena's `SHOW PARTITIONS` form, values escaped as in folder names:
    /// `date=2024-01-02/symbol=BRK%3AB`.
    pub fn display(&self, keys: &[Column]) -> String {
        keys.iter()
            .zip(&self.values)
            .map(|(k, v)| format!("{}={}", k.name, ticklake_lake::hive_escape(v)))
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// The Hive type Glue records for an Arrow type, or `None` when ticklake cannot catalog it.
pub fn hive_type(t: &DataType) -> Option<String> {
    Some(match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Float64 => "double".into(),
        DataType::Float32 | DataType::Float16 => "float".into(),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "bigint".into(),
        DataType::Int32 | DataType::UInt16 => "int".into(),
        DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int8 => "tinyint".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Timestamp(_, _) => "timestamp".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "binary".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("decimal({p},{s})"),
        DataType::Dictionary(_, v) => return hive_type(v),
        _ => return None,
    })
}

/// The Arrow type that reads a Hive type. `timestamp` is microseconds in UTC, as the sink writes it.
pub fn arrow_type(hive: &str) -> Result<DataType, CatalogError> {
    let t = hive.trim().to_ascii_lowercase();
    Ok(match t.as_str() {
        "string" | "varchar" | "char" => DataType::Utf8,
        "double" => DataType::Float64,
        "float" => DataType::Float32,
        "bigint" => DataType::Int64,
        "int" | "integer" => DataType::Int32,
        "smallint" => DataType::Int16,
        "tinyint" => DataType::Int8,
        "boolean" => DataType::Boolean,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        "date" => DataType::Date32,
        "binary" => DataType::Binary,
        _ => {
            if let Some(inner) = t.strip_prefix("decimal(").and_then(|r| r.strip_suffix(')')) {
                let (p, s) = inner.split_once(',').unwrap_or((inner, "0"));
                if let (Ok(p), Ok(s)) = (p.trim().parse::<u8>(), s.trim().parse::<i8>()) {
                    if (1..=38).contains(&p) {
                        return Ok(DataType::Decimal128(p, s));
                    }
                }
            }
            if t.starts_with("varchar(") || t.starts_with("char(") {
                return Ok(DataType::Utf8);
            }
            return Err(CatalogError::Invalid(format!(
                "column type {hive:?} is not supported by ticklake's query engine"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hive_types_round_trip() {
        for t in [
            "string",
            "double",
            "float",
            "bigint",
            "int",
            "smallint",
            "tinyint",
            "boolean",
            "timestamp",
            "date",
            "binary",
            "decimal(10,2)",
        ] {
            let a = arrow_type(t).unwrap();
            assert_eq!(hive_type(&a).as_deref(), Some(t), "{t}");
        }
        assert_eq!(arrow_type("varchar(10)").unwrap(), DataType::Utf8);
        assert!(arrow_type("map<string,int>")
            .unwrap_err()
            .to_string()
            .contains("map<string,int>"));
        assert_eq!(hive_type(&DataType::Null), None);
    }

    #[test]
    fn schema_puts_partition_keys_last_and_uses_source_names_in_files() {
        let t = Table {
            name: "t".into(),
            location: "file:///x/t/".into(),
            columns: vec![
                Column::new("ts", "timestamp"),
                Column {
                    name: "adj_close".into(),
                    data_type: "double".into(),
                    source: Some("Adj Close".into()),
                },
            ],
            partition_keys: vec![Column::new("date", "string")],
            format: StorageFormat::Json,
            parameters: BTreeMap::new(),
        };
        let s = t.schema().unwrap();
        let names: Vec<_> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["ts", "adj_close", "date"]);
        let f = t.file_schema().unwrap();
        assert_eq!(f.field(1).name(), "Adj Close");
        assert_eq!(f.fields().len(), 2);
    }
}
