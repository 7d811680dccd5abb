//! Where a lake's Iceberg tables live and which catalog keeps them; the file IO that reaches them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iceberg::io::{
    LocalFsStorageFactory, StorageFactory, S3_ACCESS_KEY_ID, S3_ENDPOINT, S3_PATH_STYLE_ACCESS,
    S3_REGION, S3_SECRET_ACCESS_KEY, S3_SESSION_TOKEN,
};
use iceberg_storage_opendal::OpenDalResolvingStorageFactory;

use crate::IcebergError;

/// The catalog that keeps a lake's Iceberg tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IcebergCatalog {
    /// Iceberg's SQL catalog in a SQLite file (`embedded`): the tables pyiceberg's `SqlCatalog` and
    /// Java's `JdbcCatalog` read from the same file.
    Sql {
        /// The SQLite file.
        file: PathBuf,
    },
    /// The AWS Glue Data Catalog (region, endpoint and credentials from the standard AWS settings).
    /// Tables are registered as Athena expects Iceberg tables: `table_type=ICEBERG` and
    /// `metadata_location`.
    Glue,
    /// An Iceberg REST catalog.
    Rest {
        /// Its URL, e.g. `http://localhost:8181`.
        uri: String,
        /// A bearer token, if the server wants one.
        token: Option<String>,
    },
}

/// Where a lake's Iceberg tables are and which catalog keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcebergConfig {
    /// The lake's root, under which each table gets its folder: `file:///abs/path` or
    /// `s3://bucket/prefix`.
    pub warehouse: String,
    /// The catalog namespace (the Glue database) of the tables.
    pub namespace: String,
    /// The catalog.
    pub catalog: IcebergCatalog,
}

impl IcebergConfig {
    /// The embedded catalog of a lake on local disk: the SQL catalog in
    /// `<lake>/_ticklake/iceberg.sqlite`, tables in `<lake>/<table>/`, namespace `ticklake`.
    pub fn embedded(lake: &Path) -> Result<IcebergConfig, IcebergError> {
        let warehouse = local_warehouse(lake)?;
        let root = PathBuf::from(warehouse.trim_start_matches("file://"));
        Ok(IcebergConfig {
            warehouse,
            namespace: "ticklake".to_owned(),
            catalog: IcebergCatalog::Sql {
                file: root.join("_ticklake").join("iceberg.sqlite"),
            },
        })
    }

    /// Where the catalog is, for messages (never a token).
    pub fn describe(&self) -> String {
        let catalog = match &self.catalog {
            IcebergCatalog::Sql { file } => format!("Iceberg SQL catalog {}", file.display()),
            IcebergCatalog::Glue => "AWS Glue Data Catalog".to_owned(),
            IcebergCatalog::Rest { uri, .. } => format!("Iceberg REST catalog at {uri}"),
        };
        format!(
            "{catalog} (namespace {}, lake {})",
            self.namespace, self.warehouse
        )
    }
}

/// The `file://` URL of a local lake folder (which need not exist yet). Table locations are
/// absolute URLs: a relative lake path must not end up in them.
pub fn local_warehouse(lake: &Path) -> Result<String, IcebergError> {
    let root = lake
        .canonicalize()
        .or_else(|_| std::path::absolute(lake))
        .map_err(|e| IcebergError::Invalid {
            table: format!("catalog {}", lake.display()),
            message: format!("cannot resolve the lake's folder: {e}"),
        })?;
    Ok(format!("file://{}", root.display()))
}

/// The file IO of a catalog: local files for a local lake; S3 (and local files) otherwise.
pub(crate) fn storage(local: bool) -> Arc<dyn StorageFactory> {
    if local {
        Arc::new(LocalFsStorageFactory)
    } else {
        Arc::new(OpenDalResolvingStorageFactory::new())
    }
}

/// S3 settings for Iceberg's file IO from the standard `AWS_*` variables, read as the lake's own S3
/// store reads them (object_store): path-style requests unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`
/// is true. Unset values are left to the AWS credential chain.
pub(crate) fn s3_properties() -> HashMap<String, String> {
    let var = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
    };
    let mut props = HashMap::new();
    let mut set = |key: &str, names: &[&str]| {
        if let Some(v) = var(names) {
            props.insert(key.to_owned(), v);
        }
    };
    set(
        S3_ENDPOINT,
        &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"],
    );
    set(S3_ACCESS_KEY_ID, &["AWS_ACCESS_KEY_ID"]);
    set(S3_SECRET_ACCESS_KEY, &["AWS_SECRET_ACCESS_KEY"]);
    set(S3_SESSION_TOKEN, &["AWS_SESSION_TOKEN"]);
    set(S3_REGION, &["AWS_REGION", "AWS_DEFAULT_REGION"]);
    let virtual_hosted = var(&["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"])
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    props.insert(
        S3_PATH_STYLE_ACCESS.to_owned(),
        (!virtual_hosted).to_string(),
    );
    props
}

/// The path prefix a REST catalog serves this warehouse under (its `GET /v1/config` overrides).
pub(crate) async fn rest_prefix(
    http: &reqwest::Client,
    uri: &str,
    warehouse: &str,
    token: Option<&str>,
) -> Result<Option<String>, String> {
    let url = format!("{uri}/v1/config");
    let mut request = http.get(&url).query(&[("warehouse", warehouse)]);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| {
        format!(
            "cannot reach the REST catalog at {url}: {}",
            error_chain(&e)
        )
    })?;
    if !response.status().is_success() {
        return Err(format!(
            "the REST catalog at {url} answered {}",
            response.status()
        ));
    }
    let config: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("the REST catalog at {url} sent no JSON config: {e}"))?;
    Ok(config
        .pointer("/overrides/prefix")
        .or_else(|| config.pointer("/defaults/prefix"))
        .and_then(|p| p.as_str())
        .map(str::to_owned))
}

/// An error and its causes, `: `-separated (a client's "error sending request" alone does not say
/// that the connection was refused).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
