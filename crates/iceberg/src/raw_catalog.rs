//! The catalog reached directly, beside the Iceberg library, for two things the library cannot do:
//! commit a snapshot it did not build (compaction's `replace`: 0.10 has no rewrite action and its
//! commits cannot be built outside it), and name the metadata file a table points at when the
//! library cannot read it.
//!
//! A commit is a compare-and-set on the table's current state, as the library's own commits are:
//!
//! * **SQL catalog**: the new metadata file is written, then
//!   `UPDATE iceberg_tables … WHERE metadata_location = <old>` (the table Iceberg's SQL/JDBC catalog
//!   defines, shared by iceberg-rust, pyiceberg and Java);
//! * **AWS Glue**: the new metadata file is written, then `UpdateTable` with the `VersionId` read
//!   beside the old pointer (Glue's optimistic lock, which Iceberg's own Glue catalogs use);
//! * **REST catalog**: the snapshot is sent as `add-snapshot` and `set-snapshot-ref` updates with the
//!   requirement that `main` is still the parent (`assert-ref-snapshot-id`); the server checks it and
//!   writes the metadata.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use aws_sdk_glue::error::DisplayErrorContext;
use aws_sdk_glue::types::TableInput;
use iceberg::spec::{Snapshot, SnapshotReference, SnapshotRetention, TableMetadataBuilder};
use iceberg::table::Table;
use iceberg::{MetadataLocation, TableRequirement, TableUpdate};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Row};

use crate::lake::CATALOG_NAME;
use crate::IcebergError;

/// Glue's table parameters for an Iceberg table's metadata file (as Athena and Iceberg read them).
const METADATA_LOCATION: &str = "metadata_location";
const PREVIOUS_METADATA_LOCATION: &str = "previous_metadata_location";

/// How ticklake reaches the catalog itself.
pub(crate) enum RawCatalog {
    /// Iceberg's SQL catalog in the SQLite database `uri` (`sqlite:…`).
    Sql { uri: String },
    /// The AWS Glue Data Catalog.
    Glue { client: aws_sdk_glue::Client },
    /// An Iceberg REST catalog: `base` is its URL up to the namespaces (`…/v1/` and the server's
    /// prefix); `token`, a bearer token if one was given.
    Rest {
        http: reqwest::Client,
        base: String,
        token: Option<String>,
    },
}

impl RawCatalog {
    /// The metadata file the catalog points `namespace.table` at, if it can say.
    pub(crate) async fn metadata_location(&self, namespace: &str, table: &str) -> Option<String> {
        match self {
            RawCatalog::Sql { uri } => {
                let mut conn = connect(uri).await.ok()?;
                let row = sqlx::query(
                    "SELECT metadata_location FROM iceberg_tables \
                     WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?",
                )
                .bind(CATALOG_NAME)
                .bind(namespace)
                .bind(table)
                .fetch_optional(&mut conn)
                .await
                .ok()?;
                row.and_then(|r| r.try_get::<Option<String>, _>(0).ok().flatten())
            }
            RawCatalog::Glue { client } => glue_table(client, namespace, table)
                .await
                .ok()??
                .parameters()?
                .get(METADATA_LOCATION)
                .cloned(),
            // The server reads the file itself and names it in its own errors.
            RawCatalog::Rest { .. } => None,
        }
    }

    /// Makes `snapshot` (a child of the current snapshot of `t`, whose manifests are written) the
    /// table's `main` branch, unless the table moved on since `t` was loaded: `Ok(false)` then, and
    /// nothing is left behind by this call.
    pub(crate) async fn commit_snapshot(
        &self,
        t: &Table,
        namespace: &str,
        snapshot: Snapshot,
    ) -> Result<bool, IcebergError> {
        let table = t.identifier().name().to_owned();
        let err = crate::IcebergLake::error(&table);
        let catalog_err = |message: String| IcebergError::Invalid {
            table: table.clone(),
            message,
        };
        if let RawCatalog::Rest { http, base, token } = self {
            let parent = snapshot.parent_snapshot_id();
            let id = snapshot.snapshot_id();
            let body = serde_json::json!({
                "identifier": {"namespace": namespace.split('.').collect::<Vec<_>>(), "name": table},
                "requirements": [TableRequirement::RefSnapshotIdMatch {
                    r#ref: "main".to_owned(),
                    snapshot_id: parent,
                }],
                "updates": [
                    TableUpdate::AddSnapshot { snapshot },
                    TableUpdate::SetSnapshotRef {
                        ref_name: "main".to_owned(),
                        reference: SnapshotReference::new(id, SnapshotRetention::branch(None, None, None)),
                    },
                ],
            });
            let url = format!(
                "{base}namespaces/{}/tables/{table}",
                namespace.replace('.', "\u{1f}")
            );
            let mut request = http.post(&url).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.map_err(|e| {
                catalog_err(format!("committing to the REST catalog at {url}: {e}"))
            })?;
            let status = response.status();
            if status.is_success() {
                return Ok(true);
            }
            if status == reqwest::StatusCode::CONFLICT {
                return Ok(false);
            }
            let text = response.text().await.unwrap_or_default();
            return Err(catalog_err(format!(
                "the REST catalog at {url} refused the commit ({status}): {}",
                text.chars().take(500).collect::<String>()
            )));
        }

        let metadata = t.metadata();
        let old = t.metadata_location_result().map_err(&err)?.to_owned();
        let new_metadata =
            TableMetadataBuilder::new_from_metadata(metadata.clone(), Some(old.clone()))
                .set_branch_snapshot(snapshot, "main")
                .map_err(&err)?
                .build()
                .map_err(&err)?
                .metadata;
        let new = MetadataLocation::from_str(&old)
            .map_err(&err)?
            .with_new_metadata(&new_metadata)
            .to_string();
        new_metadata
            .write_to(
                t.file_io(),
                &MetadataLocation::from_str(&new).map_err(&err)?,
            )
            .await
            .map_err(&err)?;
        let swapped = match self {
            RawCatalog::Sql { uri } => swap_sql(uri, namespace, &table, &old, &new)
                .await
                .map_err(|e| catalog_err(format!("updating the catalog {uri}: {e}")))?,
            RawCatalog::Glue { client } => swap_glue(client, namespace, &table, &old, &new)
                .await
                .map_err(catalog_err)?,
            RawCatalog::Rest { .. } => unreachable!("REST commits return above"),
        };
        if !swapped {
            let _ = t.file_io().delete(&new).await;
        }
        Ok(swapped)
    }
}

async fn connect(uri: &str) -> Result<SqliteConnection, sqlx::Error> {
    SqliteConnectOptions::from_str(uri)?
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await
}

/// Points `namespace.table` at the metadata file `new` if it still points at `old`.
async fn swap_sql(
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

/// The Glue table `database.table` as GetTable returns it (with its `VersionId`).
async fn glue_table(
    client: &aws_sdk_glue::Client,
    database: &str,
    table: &str,
) -> Result<Option<aws_sdk_glue::types::Table>, String> {
    let got = client
        .get_table()
        .database_name(database)
        .name(table)
        .send()
        .await
        .map_err(|e| {
            format!(
                "Glue GetTable {database}.{table}: {}",
                DisplayErrorContext(e)
            )
        })?;
    Ok(got.table().cloned())
}

/// Points the Glue table at the metadata file `new` if it still points at `old`, under Glue's
/// optimistic lock (the table's `VersionId`).
async fn swap_glue(
    client: &aws_sdk_glue::Client,
    database: &str,
    table: &str,
    old: &str,
    new: &str,
) -> Result<bool, String> {
    let Some(current) = glue_table(client, database, table).await? else {
        return Ok(false);
    };
    let mut parameters: HashMap<String, String> = current.parameters().cloned().unwrap_or_default();
    if parameters.get(METADATA_LOCATION).map(String::as_str) != Some(old) {
        return Ok(false);
    }
    parameters.insert(METADATA_LOCATION.to_owned(), new.to_owned());
    parameters.insert(PREVIOUS_METADATA_LOCATION.to_owned(), old.to_owned());
    let input = TableInput::builder()
        .name(current.name())
        .set_description(current.description().map(str::to_owned))
        .set_table_type(current.table_type().map(str::to_owned))
        .set_storage_descriptor(current.storage_descriptor().cloned())
        .set_partition_keys(Some(current.partition_keys().to_vec()))
        .set_parameters(Some(parameters))
        .build()
        .map_err(|e| format!("Glue table input for {database}.{table}: {e}"))?;
    let mut update = client
        .update_table()
        .database_name(database)
        .skip_archive(true)
        .table_input(input);
    if let Some(version) = current.version_id() {
        update = update.version_id(version);
    }
    match update.send().await {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_concurrent_modification_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(format!(
            "Glue UpdateTable {database}.{table}: {}",
            DisplayErrorContext(e)
        )),
    }
}
