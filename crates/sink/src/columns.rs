//! The types of a table's extra columns: decided by the table, not by each file.
//!
//! A column's type is the one the catalog's table gives it; a column the table does not have yet takes
//! the type of its first non-null value (a number: `double`, a boolean: `boolean`, text: `string`) and
//! keeps it. Every later value is converted to that type where it can be without loss of meaning — a
//! numeric string such as `"1.5"` into a `double` column, `"true"` into a `boolean` one, anything into a
//! `string` one — and a value that cannot be (`"abc"` for a `double`) sends its record to the dead
//! letters with the reason. Blank values are nulls (the decoder makes them so), which fit any type. So no
//! file ever holds a column of another type than its table, and queries over the table never fail on one.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::DataType;
use ticklake_catalog::table::arrow_type;
use ticklake_catalog::Table;
use ticklake_model::names::CORE_COLUMNS;
use ticklake_model::{Record, Value};

/// The type of an extra column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnType {
    Double,
    Boolean,
    Text,
}

impl ColumnType {
    fn of_arrow(dt: &DataType) -> ColumnType {
        match dt {
            DataType::Boolean => ColumnType::Boolean,
            t if t.is_numeric() => ColumnType::Double,
            _ => ColumnType::Text,
        }
    }

    fn of_value(v: &Value) -> Option<ColumnType> {
        match v {
            Value::Null => None,
            Value::Number(_) => Some(ColumnType::Double),
            Value::Bool(_) => Some(ColumnType::Boolean),
            Value::Text(_) => Some(ColumnType::Text),
        }
    }

    pub(crate) fn arrow(self) -> DataType {
        match self {
            ColumnType::Double => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Text => DataType::Utf8,
        }
    }

    fn hive(self) -> &'static str {
        match self {
            ColumnType::Double => "double",
            ColumnType::Boolean => "boolean",
            ColumnType::Text => "string",
        }
    }

    /// `v` as a value of this type, or a description of `v` when it cannot be one.
    fn convert(self, v: Value) -> Result<Value, String> {
        match (self, v) {
            (_, Value::Null) => Ok(Value::Null),
            (ColumnType::Double, v @ Value::Number(_)) => Ok(v),
            (ColumnType::Double, Value::Text(s)) => match s.trim().parse::<f64>() {
                Ok(n) if n.is_finite() => Ok(Value::Number(n)),
                _ => Err(format!("the text {s:?}")),
            },
            (ColumnType::Double, Value::Bool(b)) => Err(format!("the boolean {b}")),
            (ColumnType::Boolean, v @ Value::Bool(_)) => Ok(v),
            (ColumnType::Boolean, Value::Text(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(format!("the text {s:?}")),
            },
            (ColumnType::Boolean, Value::Number(n)) => Err(format!("the number {n}")),
            (ColumnType::Text, v @ Value::Text(_)) => Ok(v),
            (ColumnType::Text, Value::Number(n)) => Ok(Value::Text(
                serde_json::to_string(&n).unwrap_or_else(|_| n.to_string()),
            )),
            (ColumnType::Text, Value::Bool(b)) => Ok(Value::Text(b.to_string())),
        }
    }
}

/// The types of the extra columns of one table, as far as the sink knows them.
#[derive(Debug, Default)]
pub(crate) struct ColumnTypes {
    types: HashMap<Arc<str>, ColumnType>,
}

impl ColumnTypes {
    /// Takes the types of the table's columns that are not known yet (the catalog's word wins over
    /// nothing, never over a type this sink has already written).
    pub(crate) fn learn(&mut self, table: &Table) {
        for c in &table.columns {
            if CORE_COLUMNS.contains(&c.name.as_str()) || self.types.contains_key(c.name.as_str()) {
                continue;
            }
            if let Ok(dt) = arrow_type(&c.data_type) {
                self.types
                    .insert(Arc::from(c.name.as_str()), ColumnType::of_arrow(&dt));
            }
        }
    }

    /// The Arrow type of a column, once decided.
    pub(crate) fn arrow_type(&self, name: &str) -> Option<DataType> {
        self.types.get(name).map(|t| t.arrow())
    }

    /// Converts the record's extra values to their columns' types, deciding the type of columns seen for
    /// the first time. On a value that does not fit, nothing is decided and the reason is returned.
    pub(crate) fn fit<S>(&mut self, r: &mut Record<S>) -> Result<(), String> {
        let mut decided: Vec<(Arc<str>, ColumnType)> = Vec::new();
        for (name, v) in r.extra.iter_mut() {
            let known = self
                .types
                .get(name)
                .copied()
                .or_else(|| decided.iter().find(|(n, _)| n == name).map(|(_, t)| *t));
            let t = match (known, ColumnType::of_value(v)) {
                (Some(t), _) => t,
                (None, Some(t)) => {
                    decided.push((name.clone(), t));
                    t
                }
                (None, None) => continue,
            };
            let value = std::mem::replace(v, Value::Null);
            *v = t.convert(value).map_err(|got| {
                format!(
                    "column `{name}` is {} in this table; {got} is not",
                    t.hive()
                )
            })?;
        }
        self.types.extend(decided);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticklake_catalog::{Column, StorageFormat};

    fn record(extra: &[(&str, Value)]) -> Record {
        let mut r = Record::new("A", 0);
        r.extra = extra
            .iter()
            .map(|(n, v)| (Arc::from(*n), v.clone()))
            .collect();
        r
    }

    #[test]
    fn the_first_value_decides_and_later_values_convert_or_are_refused() {
        let mut t = ColumnTypes::default();
        let mut blank = record(&[("adj_close", Value::Null)]);
        t.fit(&mut blank).unwrap();
        assert_eq!(t.arrow_type("adj_close"), None, "a null decides nothing");
        let mut first = record(&[("adj_close", Value::Number(1.5))]);
        t.fit(&mut first).unwrap();
        assert_eq!(t.arrow_type("adj_close"), Some(DataType::Float64));
        let mut text = record(&[("adj_close", Value::Text(" 2.5 ".into()))]);
        t.fit(&mut text).unwrap();
        assert_eq!(text.extra[0].1, Value::Number(2.5));
        let mut bad = record(&[
            ("venue", Value::Text("X".into())),
            ("adj_close", Value::Text("n/a".into())),
        ]);
        let err = t.fit(&mut bad).unwrap_err();
        assert_eq!(
            err,
            "column `adj_close` is double in this table; the text \"n/a\" is not"
        );
        assert_eq!(
            t.arrow_type("venue"),
            None,
            "a refused record decides nothing"
        );
        let mut flags = record(&[("halted", Value::Text("TRUE".into()))]);
        t.fit(&mut flags).unwrap();
        assert_eq!(t.arrow_type("halted"), Some(DataType::Utf8));
        let mut num = record(&[("halted", Value::Number(1.0))]);
        t.fit(&mut num).unwrap();
        assert_eq!(num.extra[0].1, Value::Text("1.0".into()));
    }

    #[test]
    fn the_table_decides_first() {
        let table = Table {
            name: "t".into(),
            location: "file:///t/".into(),
            columns: vec![
                Column::new("symbol", "string"),
                Column::new("adj_close", "double"),
                Column::new("halted", "boolean"),
                Column::new("n", "bigint"),
            ],
            partition_keys: vec![],
            format: StorageFormat::Parquet,
            parameters: Default::default(),
        };
        let mut t = ColumnTypes::default();
        t.learn(&table);
        assert_eq!(t.arrow_type("symbol"), None, "core columns are not extras");
        assert_eq!(t.arrow_type("n"), Some(DataType::Float64));
        let mut r = record(&[
            ("adj_close", Value::Text("3".into())),
            ("halted", Value::Text("false".into())),
        ]);
        t.fit(&mut r).unwrap();
        assert_eq!(r.extra[0].1, Value::Number(3.0));
        assert_eq!(r.extra[1].1, Value::Bool(false));
        let mut r = record(&[("halted", Value::Number(0.0))]);
        assert!(t.fit(&mut r).unwrap_err().contains("boolean"));
    }
}
