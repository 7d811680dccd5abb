//! What ticklake does to Iceberg's SQL catalog directly, beside the library: the compare-and-set of a
//! table's metadata pointer (for commits the library cannot build, such as compaction's replace) and
//! reading the pointer (to name the file when the library cannot read it). The table is the one
//! Iceberg's SQL (JDBC) catalog defines, shared by iceberg-rust, pyiceberg and Java.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Row};

use crate::lake::CATALOG_NAME;

async fn connect(uri: &str) -> Result<SqliteConnection, sqlx::Error> {
    SqliteConnectOptions::from_str(uri)?
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await
}

/// Points `namespace.table` at the metadata file `new` if it still points at `old`; `false` if
/// another commit moved it.
pub(crate) async fn swap_metadata(
    uri: &str,
    namespace: &str,
    table: &str,
    old: &str,
    new: &str,
) -> Result<bool, sqlx::Error> {
    let mut conn = connect(uri).await?;
    let done = sqlx::query(
        "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
         WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? \
         AND metadata_location = ?",
    )
    .bind(new)
    .bind(old)
    .bind(CATALOG_NAME)
    .bind(namespace)
    .bind(table)
    .bind(old)
    .execute(&mut conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The metadata file `namespace.table` points at, if the catalog has the table.
pub(crate) async fn metadata_location(
    uri: &str,
    namespace: &str,
    table: &str,
) -> Result<Option<String>, sqlx::Error> {
    let mut conn = connect(uri).await?;
    let row = sqlx::query(
        "SELECT metadata_location FROM iceberg_tables \
         WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?",
    )
    .bind(CATALOG_NAME)
    .bind(namespace)
    .bind(table)
    .fetch_optional(&mut conn)
    .await?;
    Ok(row.and_then(|r| r.try_get::<Option<String>, _>(0).ok().flatten()))
}
