//! The embedded catalog: one SQLite file, safe to share between a running sink and queries.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use backon::{BlockingRetryable, ExponentialBuilder};
use rusqlite::{params, Connection, OptionalExtension};

use crate::{validate_name, Catalog, CatalogError, Partition, Table};

/// A catalog in a SQLite file (WAL mode, so readers never block the sink's registrations).
#[derive(Debug)]
pub struct EmbeddedCatalog {
    path: PathBuf,
    database: String,
    conn: Mutex<Connection>,
}

impl EmbeddedCatalog {
    /// Opens (creating if needed) the catalog file and its folder.
    pub fn open(path: &Path, database: &str) -> Result<EmbeddedCatalog, CatalogError> {
        validate_name("database", database)?;
        let err = |e: &dyn std::fmt::Display| CatalogError::Embedded {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let conn = Connection::open(path).map_err(|e| err(&e))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| err(&e))?;
        // SQLite answers BUSY without calling the busy handler when it switches the journal mode
        // (and when another process recovers the log of a killed writer), so the set-up is retried.
        (|| set_up(&conn))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(10))
                    .with_max_delay(Duration::from_secs(1))
                    .with_total_delay(Some(Duration::from_secs(30)))
                    .without_max_times(),
            )
            .sleep(std::thread::sleep)
            .when(is_busy)
            .call()
            .map_err(|e| err(&e))?;
        Ok(EmbeddedCatalog {
            path: path.to_owned(),
            database: database.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> CatalogError {
        CatalogError::Embedded {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn decode_table(&self, json: &str) -> Result<Table, CatalogError> {
        serde_json::from_str(json).map_err(|e| self.err(format!("a table definition: {e}")))
    }
}

/// Puts the file in WAL mode and creates the tables, writing only what is missing, so opening a
/// catalog that exists takes no write lock.
fn set_up(conn: &Connection) -> rusqlite::Result<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))?;
    }
    conn.execute_batch("PRAGMA synchronous=FULL;")?;
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('tables', 'partitions')",
        [],
        |r| r.get(0),
    )?;
    if tables < 2 {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS tables (
                 database TEXT NOT NULL, name TEXT NOT NULL, definition TEXT NOT NULL,
                 PRIMARY KEY (database, name));
             CREATE TABLE IF NOT EXISTS partitions (
                 database TEXT NOT NULL, table_name TEXT NOT NULL, part_values TEXT NOT NULL,
                 location TEXT NOT NULL,
                 PRIMARY KEY (database, table_name, part_values));",
        )?;
    }
    Ok(())
}

/// Whether SQLite refused for a lock another connection holds.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

#[async_trait::async_trait]
impl Catalog for EmbeddedCatalog {
    fn describe(&self) -> String {
        format!(
            "embedded catalog {}, database {}",
            self.path.display(),
            self.database
        )
    }

    async fn list_tables(&self) -> Result<Vec<Table>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT definition FROM tables WHERE database = ?1 ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([&self.database], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(self.decode_table(&row.map_err(|e| self.err(e))?)?);
        }
        Ok(out)
    }

    async fn get_table(&self, name: &str) -> Result<Option<Table>, CatalogError> {
        let json: Option<String> = self
            .conn()
            .query_row(
                "SELECT definition FROM tables WHERE database = ?1 AND name = ?2",
                params![self.database, name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        json.map(|j| self.decode_table(&j)).transpose()
    }

    async fn put_table(&self, table: &Table) -> Result<(), CatalogError> {
        validate_name("table", &table.name)?;
        let json = serde_json::to_string(table).map_err(|e| self.err(e))?;
        self.conn()
            .execute(
                "INSERT INTO tables (database, name, definition) VALUES (?1, ?2, ?3)
                 ON CONFLICT (database, name) DO UPDATE SET definition = excluded.definition",
                params![self.database, table.name, json],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn create_table(&self, table: &Table) -> Result<Table, CatalogError> {
        validate_name("table", &table.name)?;
        let json = serde_json::to_string(table).map_err(|e| self.err(e))?;
        self.conn()
            .execute(
                "INSERT INTO tables (database, name, definition) VALUES (?1, ?2, ?3)
                 ON CONFLICT (database, name) DO NOTHING",
                params![self.database, table.name, json],
            )
            .map_err(|e| self.err(e))?;
        self.get_table(&table.name)
            .await?
            .ok_or_else(|| CatalogError::NoSuchTable(table.name.clone()))
    }

    async fn add_partitions(
        &self,
        table: &str,
        partitions: &[Partition],
    ) -> Result<usize, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let mut added = 0;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO partitions (database, table_name, part_values, location)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(|e| self.err(e))?;
            for p in partitions {
                let values = serde_json::to_string(&p.values).map_err(|e| self.err(e))?;
                added += stmt
                    .execute(params![self.database, table, values, p.location])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(added)
    }

    async fn list_partitions(&self, table: &str) -> Result<Vec<Partition>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT part_values, location FROM partitions
                 WHERE database = ?1 AND table_name = ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![self.database, table], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (values, location) = row.map_err(|e| self.err(e))?;
            let values = serde_json::from_str(&values)
                .map_err(|e| self.err(format!("partition values {values:?}: {e}")))?;
            out.push(Partition { values, location });
        }
        out.sort();
        Ok(out)
    }

    async fn get_partitions(
        &self,
        table: &str,
        values: &[Vec<String>],
    ) -> Result<Vec<Partition>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT location FROM partitions
                 WHERE database = ?1 AND table_name = ?2 AND part_values = ?3",
            )
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for v in values {
            let key = serde_json::to_string(v).map_err(|e| self.err(e))?;
            let location: Option<String> = stmt
                .query_row(params![self.database, table, key], |r| r.get(0))
                .optional()
                .map_err(|e| self.err(e))?;
            if let Some(location) = location {
                out.push(Partition {
                    values: v.clone(),
                    location,
                });
            }
        }
        Ok(out)
    }

    async fn drop_partitions(
        &self,
        table: &str,
        values: &[Vec<String>],
    ) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for v in values {
            let v = serde_json::to_string(v).map_err(|e| self.err(e))?;
            tx.execute(
                "DELETE FROM partitions WHERE database = ?1 AND table_name = ?2 AND part_values = ?3",
                params![self.database, table, v],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    async fn set_partition_location(
        &self,
        table: &str,
        values: &[String],
        expected: &str,
        location: &str,
    ) -> Result<bool, CatalogError> {
        let v = serde_json::to_string(values).map_err(|e| self.err(e))?;
        let changed = self
            .conn()
            .execute(
                "UPDATE partitions SET location = ?1
                 WHERE database = ?2 AND table_name = ?3 AND part_values = ?4 AND location = ?5",
                params![location, self.database, table, v, expected],
            )
            .map_err(|e| self.err(e))?;
        Ok(changed == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Column, StorageFormat};

    fn table(name: &str) -> Table {
        Table {
            name: name.into(),
            location: format!("file:///lake/{name}/"),
            columns: vec![
                Column::new("ts", "timestamp"),
                Column::new("close", "double"),
            ],
            partition_keys: vec![
                Column::new("date", "string"),
                Column::new("symbol", "string"),
            ],
            format: StorageFormat::Parquet,
            parameters: Default::default(),
        }
    }

    #[tokio::test]
    async fn tables_and_partitions_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("_ticklake/catalog.sqlite");
        let c = EmbeddedCatalog::open(&path, "ticklake").unwrap();
        assert!(c.get_table("prices").await.unwrap().is_none());
        c.put_table(&table("prices")).await.unwrap();
        c.put_table(&table("bars")).await.unwrap();
        let p = |d: &str, s: &str| Partition {
            values: vec![d.into(), s.into()],
            location: format!("file:///lake/prices/date={d}/symbol={s}/"),
        };
        let added = c
            .add_partitions("prices", &[p("2024-01-02", "A"), p("2024-01-02", "B")])
            .await
            .unwrap();
        assert_eq!(added, 2);
        // Registering again is harmless: the sink does it after every replay.
        let added = c
            .add_partitions("prices", &[p("2024-01-02", "B"), p("2024-01-03", "A")])
            .await
            .unwrap();
        assert_eq!(added, 1);
        drop(c);

        let c = EmbeddedCatalog::open(&path, "ticklake").unwrap();
        let names: Vec<_> = c
            .list_tables()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["bars", "prices"]);
        assert_eq!(
            c.get_table("prices").await.unwrap().unwrap(),
            table("prices")
        );
        let parts = c.list_partitions("prices").await.unwrap();
        assert_eq!(
            parts,
            [
                p("2024-01-02", "A"),
                p("2024-01-02", "B"),
                p("2024-01-03", "A")
            ]
        );
        c.drop_partitions("prices", &[vec!["2024-01-02".into(), "A".into()]])
            .await
            .unwrap();
        assert_eq!(c.list_partitions("prices").await.unwrap().len(), 2);
        assert!(c.list_partitions("bars").await.unwrap().is_empty());

        // Another database in the same file sees none of it.
        let other = EmbeddedCatalog::open(&path, "other").unwrap();
        assert!(other.list_tables().await.unwrap().is_empty());
    }

    #[test]
    fn processes_opening_and_writing_at_once_are_not_refused() {
        // Sinks, `compact` and queries open the same file at once, some of them just after another
        // was killed; none may fail with "database is locked".
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("_ticklake/catalog.sqlite");
        let (threads, rounds) = (12, 15);
        let start = std::sync::Barrier::new(threads);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (path, start) = (&path, &start);
                s.spawn(move || {
                    start.wait();
                    for r in 0..rounds {
                        let c = EmbeddedCatalog::open(path, "ticklake").unwrap();
                        let p = Partition {
                            values: vec![format!("{t}"), format!("{r}")],
                            location: format!("file:///lake/prices/t={t}/r={r}/"),
                        };
                        let added =
                            futures::executor::block_on(c.add_partitions("prices", &[p])).unwrap();
                        assert_eq!(added, 1);
                    }
                });
            }
        });
        let c = EmbeddedCatalog::open(&path, "ticklake").unwrap();
        let parts = futures::executor::block_on(c.list_partitions("prices")).unwrap();
        assert_eq!(parts.len(), threads * rounds);
    }

    #[tokio::test]
    async fn the_first_creation_of_a_table_wins() {
        let dir = tempfile::tempdir().unwrap();
        let c = EmbeddedCatalog::open(&dir.path().join("catalog.sqlite"), "ticklake").unwrap();
        let first = table("prices");
        assert_eq!(c.create_table(&first).await.unwrap(), first);
        let mut second = table("prices");
        second.partition_keys = vec![Column::new("symbol", "string")];
        // The second writer gets the first one's table, unchanged.
        assert_eq!(c.create_table(&second).await.unwrap(), first);
        assert_eq!(c.get_table("prices").await.unwrap().unwrap(), first);
        assert!(c.create_table(&table("../x")).await.is_err());
    }

    #[tokio::test]
    async fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        assert!(EmbeddedCatalog::open(&path, "Bad-Name").is_err());
        let c = EmbeddedCatalog::open(&path, "ticklake").unwrap();
        let e = c.put_table(&table("../x")).await.unwrap_err();
        assert!(e.to_string().contains("\"../x\""), "{e}");
    }
}
