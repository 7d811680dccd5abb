//! The query engine: a DataFusion session whose tables are the catalog's, read-only.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::logical_expr::AggregateUDF;
use ticklake_catalog::Catalog;

use crate::helpers::{vwap_udaf, Ohlcv, Tables};
use crate::provider::{LakeTable, Storage};
use crate::QueryError;

/// The catalog name queries see (Athena's is `AwsDataCatalog`); tables are in the schema named after
/// the catalog's database, which is also the default, so `prices`, `ticklake.prices` and
/// `awsdatacatalog.ticklake.prices` all work.
pub const CATALOG_NAME: &str = "awsdatacatalog";

/// The result of one statement.
#[derive(Debug, Clone)]
pub struct Output {
    /// Its columns.
    pub schema: SchemaRef,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
}

impl Output {
    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// SQL over the catalog's tables.
pub struct Engine {
    ctx: SessionContext,
    catalog: Arc<dyn Catalog>,
    database: String,
    s3_options: Vec<(String, String)>,
    tables: Tables,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("catalog", &self.catalog.describe())
            .finish()
    }
}

impl Engine {
    /// A session over every table of `catalog` (its `database` is the default schema).
    /// `s3_options` are object_store settings applied over the `AWS_*` environment for S3 tables.
    pub async fn new(
        catalog: Arc<dyn Catalog>,
        database: &str,
        s3_options: Vec<(String, String)>,
    ) -> Result<Engine, QueryError> {
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG_NAME, database)
            .with_create_default_catalog_and_schema(true)
            .with_information_schema(true);
        config.options_mut().sql_parser.collect_spans = true;
        let ctx = SessionContext::new_with_config(config);
        let tables: Tables = Arc::new(RwLock::new(HashMap::new()));
        ctx.register_udaf(vwap_udaf());
        ctx.register_udtf(
            "ohlcv",
            Arc::new(Ohlcv {
                tables: tables.clone(),
            }),
        );
        let engine = Engine {
            ctx,
            catalog,
            database: database.to_owned(),
            s3_options,
            tables,
        };
        engine.refresh().await?;
        Ok(engine)
    }

    /// Re-reads the table definitions from the catalog (partitions are read at every query anyway).
    pub async fn refresh(&self) -> Result<(), QueryError> {
        let defs = self.catalog.list_tables().await?;
        let mut stores: HashSet<String> = HashSet::new();
        let mut tables = HashMap::new();
        for def in defs {
            let storage = Storage::open(&def.location, &self.s3_options)
                .map_err(|e| QueryError::Table(def.name.clone(), e.to_string()))?;
            if stores.insert(storage.url.as_str().to_owned()) {
                self.ctx
                    .register_object_store(storage.url.as_ref(), storage.store.clone());
            }
            let name = def.name.clone();
            let table = LakeTable::new(def, self.catalog.clone(), storage)
                .map_err(|e| QueryError::Table(name.clone(), e.to_string()))?;
            tables.insert(name, Arc::new(table));
        }
        let old: Vec<String> = self
            .tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for name in old {
            self.ctx.deregister_table(name.as_str())?;
        }
        for (name, t) in &tables {
            self.ctx.register_table(name.as_str(), t.clone())?;
        }
        *self.tables.write().unwrap_or_else(|p| p.into_inner()) = tables;
        Ok(())
    }

    /// The catalog behind the engine.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// Runs one statement. `SHOW TABLES`, `DESCRIBE <table>` and `SHOW PARTITIONS <table>` answer
    /// from the catalog as Athena does; anything that would write or change the lake or the catalog is
    /// refused.
    pub async fn execute(&self, sql: &str) -> Result<Output, QueryError> {
        if let Some(out) = self.athena_statement(sql).await? {
            return Ok(out);
        }
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = self
            .ctx
            .sql_with_options(sql, options)
            .await
            .map_err(|e| QueryError::from_datafusion(e, sql))?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df
            .collect()
            .await
            .map_err(|e| QueryError::from_datafusion(e, sql))?;
        Ok(Output { schema, batches })
    }

    /// The statements answered from the catalog.
    async fn athena_statement(&self, sql: &str) -> Result<Option<Output>, QueryError> {
        let words: Vec<&str> = sql
            .trim()
            .trim_end_matches(';')
            .split_whitespace()
            .collect();
        let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
        let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
        match lower.as_slice() {
            ["show", "tables"] => {
                let names: Vec<String> = self
                    .catalog
                    .list_tables()
                    .await?
                    .into_iter()
                    .map(|t| t.name)
                    .collect();
                Ok(Some(strings(&[("tab_name", names)])))
            }
            ["describe" | "desc", _] | ["describe" | "desc", "table", _] => {
                let name = self.table_name(words[words.len() - 1])?;
                let t = self
                    .catalog
                    .get_table(&name)
                    .await?
                    .ok_or(ticklake_catalog::CatalogError::NoSuchTable(name))?;
                let mut cols = Vec::new();
                let mut types = Vec::new();
                let mut comments = Vec::new();
                for c in &t.columns {
                    cols.push(c.name.clone());
                    types.push(c.data_type.clone());
                    comments.push(String::new());
                }
                for k in &t.partition_keys {
                    cols.push(k.name.clone());
                    types.push(k.data_type.clone());
                    comments.push("partition key".into());
                }
                Ok(Some(strings(&[
                    ("col_name", cols),
                    ("data_type", types),
                    ("comment", comments),
                ])))
            }
            ["show", "partitions", _] => {
                let name = self.table_name(words[2])?;
                let t = self
                    .catalog
                    .get_table(&name)
                    .await?
                    .ok_or(ticklake_catalog::CatalogError::NoSuchTable(name.clone()))?;
                if t.partition_keys.is_empty() {
                    return Err(QueryError::Sql {
                        message: format!("table {name} is not partitioned"),
                        position: None,
                    });
                }
                let parts: Vec<String> = self
                    .catalog
                    .list_partitions(&name)
                    .await?
                    .iter()
                    .map(|p| p.display(&t.partition_keys))
                    .collect();
                Ok(Some(strings(&[("partition", parts)])))
            }
            _ => Ok(None),
        }
    }

    /// A table name as written in a statement: `t`, `"t"`, `db.t`.
    fn table_name(&self, written: &str) -> Result<String, QueryError> {
        let parts: Vec<String> = written
            .split('.')
            .map(|p| p.trim_matches(['"', '`']).to_owned())
            .collect();
        match parts.as_slice() {
            [t] => Ok(t.to_ascii_lowercase()),
            [db, t] | [_, db, t] if db.eq_ignore_ascii_case(&self.database) => {
                Ok(t.to_ascii_lowercase())
            }
            _ => Err(QueryError::Sql {
                message: format!(
                    "{written}: only tables of database {} are visible",
                    self.database
                ),
                position: None,
            }),
        }
    }

    /// Registers an extra aggregate function (for embedding programs).
    pub fn register_udaf(&self, f: AggregateUDF) {
        self.ctx.register_udaf(f);
    }
}

fn strings(columns: &[(&str, Vec<String>)]) -> Output {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, _)| Field::new(*n, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let arrays = columns
        .iter()
        .map(|(_, v)| Arc::new(StringArray::from(v.clone())) as _)
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays).expect("columns of equal length");
    Output {
        schema,
        batches: vec![batch],
    }
}

/// Splits a script into statements at `;`, leaving alone those inside quotes and comments.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                cur.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' | '`' => {
                    quote = Some(c);
                    cur.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    // A comment runs to the end of the line.
                    for c in chars.by_ref() {
                        if c == '\n' {
                            cur.push('\n');
                            break;
                        }
                    }
                }
                ';' => {
                    if !cur.trim().is_empty() {
                        out.push(cur.trim().to_owned());
                    }
                    cur.clear();
                }
                _ => cur.push(c),
            },
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        assert_eq!(
            split_statements("select 1; select ';' as x -- a ; comment\n; ;show tables"),
            ["select 1", "select ';' as x \n", "show tables"].map(|s| s.trim().to_owned())
        );
        assert!(split_statements("  ;; ").is_empty());
    }
}
