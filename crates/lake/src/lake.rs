//! The lake's storage: a local folder or an S3-compatible bucket, written whole-file and atomically.
//!
//! * Local: a temporary file (named `.<name>.tmp-…`, hidden from query engines) is written, fsynced and
//!   renamed over the final name, and the folder is fsynced, so a file is either absent or complete
//!   and on disk, even after a crash.
//! * S3 (`s3://bucket/prefix`): one PUT per file through `object_store`, which S3 makes visible
//!   atomically. Endpoint, region and credentials come from the standard `AWS_*` environment variables
//!   (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, …, `AWS_ALLOW_HTTP=true` for plain-HTTP
//!   servers such as MinIO or moto).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};

use crate::LakeError;

/// A file in the lake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// Its `/`-separated path inside the lake.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, in milliseconds since 1970 (0 when unknown).
    pub modified_ms: i64,
}

/// Where the lake lives.
#[derive(Clone, Debug)]
pub enum Lake {
    /// A folder on local disk.
    Local {
        /// The lake's root folder.
        root: PathBuf,
    },
    /// An object store bucket and key prefix.
    Object {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// Key prefix of the lake inside the bucket (may be empty).
        prefix: String,
        /// The location as the user gave it, for messages.
        url: String,
    },
}

impl Lake {
    /// `s3://bucket[/prefix]` (or `s3a://`) for S3, anything else is a local folder.
    pub fn open(location: &str) -> Result<Lake, LakeError> {
        Self::open_with(location, &[])
    }

    /// Like [`open`](Self::open), with S3 settings given explicitly (object_store keys such as
    /// `aws_endpoint`, `aws_allow_http`, `aws_access_key_id`), applied over the environment's.
    pub fn open_with(location: &str, s3_options: &[(String, String)]) -> Result<Lake, LakeError> {
        if let Some(rest) = location
            .strip_prefix("s3://")
            .or_else(|| location.strip_prefix("s3a://"))
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(LakeError::Config(format!(
                    "lake {location:?}: no bucket name (use s3://bucket/prefix)"
                )));
            }
            // A few quick retries here; longer outages are waited out (and reported) by the caller,
            // which knows what it is waiting for (the sink's flush, say).
            let retry = object_store::RetryConfig {
                backoff: object_store::BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(20),
            };
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry);
            for (k, v) in s3_options {
                let key = k
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|e| LakeError::Config(format!("S3 option {k:?}: {e}")))?;
                builder = builder.with_config(key, v);
            }
            let store = builder
                .build()
                .map_err(|e| LakeError::Config(format!("lake {location:?}: {e}")))?;
            let prefix = prefix.trim_matches('/').to_owned();
            if !prefix.is_empty() {
                ObjectPath::parse(&prefix)
                    .map_err(|e| LakeError::Config(format!("lake {location:?}: {e}")))?;
            }
            Ok(Lake::Object {
                store: Arc::new(store),
                prefix,
                url: location.to_owned(),
            })
        } else if let Some(path) = location.strip_prefix("file://") {
            Self::open_with(path, s3_options)
        } else if location.contains("://") {
            Err(LakeError::Config(format!(
                "lake {location:?}: only local folders and s3:// locations are supported"
            )))
        } else {
            Ok(Lake::Local {
                root: PathBuf::from(location),
            })
        }
    }

    /// The location for messages.
    pub fn describe(&self) -> String {
        match self {
            Lake::Local { root } => root.display().to_string(),
            Lake::Object { url, .. } => url.clone(),
        }
    }

    /// The URL of a folder inside the lake, as catalogs record table and partition locations:
    /// `file:///abs/path/lake/<rel>/` or `s3://bucket/prefix/<rel>/`.
    pub fn url_of(&self, rel: &str) -> String {
        let rel = rel.trim_matches('/');
        let mut base = match self {
            Lake::Local { root } => {
                let abs = std::path::absolute(root).unwrap_or_else(|_| root.clone());
                format!("file://{}", abs.display())
            }
            Lake::Object { url, .. } => url.replacen("s3a://", "s3://", 1),
        };
        while base.ends_with('/') {
            base.pop();
        }
        if rel.is_empty() {
            format!("{base}/")
        } else {
            format!("{base}/{rel}/")
        }
    }

    /// The object store holding the lake, the URL that names that store (`file:///` or `s3://bucket`),
    /// and the store path of the lake's root, for query engines that read the files directly.
    pub fn object_store(&self) -> Result<(Arc<dyn ObjectStore>, url::Url, ObjectPath), LakeError> {
        match self {
            Lake::Local { root } => {
                let abs = std::path::absolute(root).map_err(|e| LakeError::Storage {
                    location: root.display().to_string(),
                    message: e.to_string(),
                })?;
                let path =
                    ObjectPath::from_absolute_path(&abs).map_err(|e| LakeError::Storage {
                        location: abs.display().to_string(),
                        message: e.to_string(),
                    })?;
                let url = url::Url::parse("file:///").expect("a valid URL");
                Ok((Arc::new(LocalFileSystem::new()), url, path))
            }
            Lake::Object { store, prefix, url } => {
                let rest = url
                    .strip_prefix("s3://")
                    .or_else(|| url.strip_prefix("s3a://"))
                    .unwrap_or(url);
                let bucket = rest.split('/').next().unwrap_or(rest);
                let store_url = url::Url::parse(&format!("s3://{bucket}")).map_err(|e| {
                    LakeError::Config(format!("lake {url:?}: bucket name {bucket:?}: {e}"))
                })?;
                Ok((store.clone(), store_url, Self::key(prefix, "")?))
            }
        }
    }

    /// The store path of a file or folder inside the lake, in the form the store of
    /// [`object_store`](Self::object_store) uses (local names are percent-encoded as `LocalFileSystem`
    /// expects; S3 keys are taken literally, `%` included, as Athena takes them).
    pub fn object_path(&self, rel: &str) -> Result<ObjectPath, LakeError> {
        let rel = rel.trim_matches('/');
        match self {
            Lake::Local { root } => {
                let abs = std::path::absolute(root.join(rel)).map_err(|e| LakeError::Storage {
                    location: root.display().to_string(),
                    message: e.to_string(),
                })?;
                ObjectPath::from_absolute_path(&abs).map_err(|e| LakeError::Storage {
                    location: abs.display().to_string(),
                    message: e.to_string(),
                })
            }
            Lake::Object { prefix, .. } => Self::key(prefix, rel),
        }
    }

    fn key(prefix: &str, rel: &str) -> Result<ObjectPath, LakeError> {
        let full = if prefix.is_empty() || rel.is_empty() {
            format!("{prefix}{rel}")
        } else {
            format!("{prefix}/{rel}")
        };
        ObjectPath::parse(&full)
            .map_err(|e| LakeError::Config(format!("bad object key {full:?}: {e}")))
    }

    /// Writes `data` at `rel` (a `/`-separated path inside the lake), whole and atomically, replacing
    /// any file of that name.
    pub async fn put(&self, rel: &str, data: Bytes) -> Result<(), LakeError> {
        match self {
            Lake::Local { root } => {
                let path = root.join(rel);
                on_blocking_pool(root, move || write_local(&path, &data)).await
            }
            Lake::Object { store, prefix, url } => {
                let key = Self::key(prefix, rel)?;
                store
                    .put(&key, PutPayload::from_bytes(data))
                    .await
                    .map(|_| ())
                    .map_err(|e| LakeError::Storage {
                        location: format!("{url}/{rel}"),
                        message: e.to_string(),
                    })
            }
        }
    }

    /// Writes a whole file only if no file of that name exists, atomically: of several writers racing
    /// for one name, exactly one gets `true`. Local: a fsynced temporary file hard-linked to the name
    /// (the link fails if the name exists); S3: a PUT with `If-None-Match: *`.
    pub async fn put_if_absent(&self, rel: &str, data: Bytes) -> Result<bool, LakeError> {
        match self {
            Lake::Local { root } => {
                let path = root.join(rel);
                on_blocking_pool(root, move || create_local(&path, &data)).await
            }
            Lake::Object { store, prefix, url } => {
                let key = Self::key(prefix, rel)?;
                match store
                    .put_opts(&key, PutPayload::from_bytes(data), PutMode::Create.into())
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                    Err(e) => Err(LakeError::Storage {
                        location: format!("{url}/{rel}"),
                        message: e.to_string(),
                    }),
                }
            }
        }
    }

    /// Copies the file `from` to `to` (both inside the lake), replacing any file named `to`, whole and
    /// atomically. Local: a hard link (no bytes copied; the lake's files are never changed in place,
    /// only replaced), renamed into place and made durable; S3: a server-side copy.
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), LakeError> {
        match self {
            Lake::Local { root } => {
                let (from, to) = (root.join(from), root.join(to));
                on_blocking_pool(root, move || link_local(&from, &to)).await
            }
            Lake::Object { store, prefix, url } => {
                let (from_key, to_key) = (Self::key(prefix, from)?, Self::key(prefix, to)?);
                store
                    .copy(&from_key, &to_key)
                    .await
                    .map_err(|e| LakeError::Storage {
                        location: format!("{url}/{from} -> {url}/{to}"),
                        message: e.to_string(),
                    })
            }
        }
    }

    /// Deletes a file; a file that is not there is not an error.
    pub async fn delete(&self, rel: &str) -> Result<(), LakeError> {
        match self {
            Lake::Local { root } => match fs::remove_file(root.join(rel)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(LakeError::Storage {
                    location: root.join(rel).display().to_string(),
                    message: e.to_string(),
                }),
            },
            Lake::Object { store, prefix, url } => {
                let key = Self::key(prefix, rel)?;
                match store.delete(&key).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(LakeError::Storage {
                        location: format!("{url}/{rel}"),
                        message: e.to_string(),
                    }),
                }
            }
        }
    }

    /// Removes a folder of the lake if it is empty (local disk; object stores have no folders).
    pub async fn remove_empty_folder(&self, rel: &str) -> Result<(), LakeError> {
        match self {
            Lake::Local { root } => match fs::remove_dir(root.join(rel)) {
                Ok(()) => Ok(()),
                // Not empty (a file landed), or already gone.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::DirectoryNotEmpty
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(LakeError::Storage {
                    location: root.join(rel).display().to_string(),
                    message: e.to_string(),
                }),
            },
            Lake::Object { .. } => Ok(()),
        }
    }

    /// True when the file exists.
    pub async fn exists(&self, rel: &str) -> Result<bool, LakeError> {
        match self {
            Lake::Local { root } => Ok(root.join(rel).is_file()),
            Lake::Object { store, prefix, url } => {
                let key = Self::key(prefix, rel)?;
                match store.head(&key).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(LakeError::Storage {
                        location: format!("{url}/{rel}"),
                        message: e.to_string(),
                    }),
                }
            }
        }
    }

    /// Reads a whole file.
    pub async fn get(&self, rel: &str) -> Result<Bytes, LakeError> {
        match self {
            Lake::Local { root } => {
                let path = root.join(rel);
                fs::read(&path)
                    .map(Bytes::from)
                    .map_err(|e| LakeError::Storage {
                        location: path.display().to_string(),
                        message: e.to_string(),
                    })
            }
            Lake::Object { store, prefix, url } => {
                let key = Self::key(prefix, rel)?;
                let err = |e: object_store::Error| LakeError::Storage {
                    location: format!("{url}/{rel}"),
                    message: e.to_string(),
                };
                store
                    .get(&key)
                    .await
                    .map_err(err)?
                    .bytes()
                    .await
                    .map_err(err)
            }
        }
    }

    /// Every file below `rel` (recursively), as lake-relative paths, sorted; temporary files are left out.
    pub async fn list(&self, rel: &str) -> Result<Vec<String>, LakeError> {
        Ok(self
            .list_files(rel)
            .await?
            .into_iter()
            .map(|f| f.path)
            .collect())
    }

    /// Every file below `rel` (recursively) with its size, sorted by path; temporary files are left out.
    pub async fn list_files(&self, rel: &str) -> Result<Vec<FileInfo>, LakeError> {
        let mut out =
            match self {
                Lake::Local { root } => {
                    let mut out = Vec::new();
                    let base = root.join(rel);
                    if base.exists() {
                        walk(root, &base, &mut out).map_err(|e| LakeError::Storage {
                            location: base.display().to_string(),
                            message: e.to_string(),
                        })?;
                    }
                    out
                }
                Lake::Object { store, prefix, url } => {
                    let key = Self::key(prefix, rel.trim_end_matches('/'))?;
                    let metas: Vec<_> =
                        store.list(Some(&key)).try_collect().await.map_err(|e| {
                            LakeError::Storage {
                                location: url.clone(),
                                message: e.to_string(),
                            }
                        })?;
                    let strip = if prefix.is_empty() {
                        0
                    } else {
                        prefix.len() + 1
                    };
                    metas
                        .into_iter()
                        .map(|m| FileInfo {
                            path: m.location.as_ref()[strip..].to_owned(),
                            size: m.size,
                            modified_ms: m.last_modified.timestamp_millis(),
                        })
                        .collect()
                }
            };
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<FileInfo>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() && !entry.file_name().to_string_lossy().starts_with('.') {
            if let Ok(rel) = path.strip_prefix(root) {
                let meta = entry.metadata()?;
                out.push(FileInfo {
                    path: rel.to_string_lossy().replace('\\', "/"),
                    size: meta.len(),
                    modified_ms: meta
                        .modified()
                        .ok()
                        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_millis() as i64),
                });
            }
        }
    }
    Ok(())
}

/// Runs a blocking file-system job of the lake at `root` on tokio's blocking pool.
async fn on_blocking_pool<T: Send + 'static>(
    root: &Path,
    job: impl FnOnce() -> Result<T, LakeError> + Send + 'static,
) -> Result<T, LakeError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| LakeError::Storage {
            location: root.display().to_string(),
            message: e.to_string(),
        })?
}

/// Creates the folder of `path` and those missing on the way, syncing each new folder's parent (a new
/// folder is durable only once its parent is fsynced too); returns a hidden temporary name beside
/// `path`, unique in this process.
fn temp_beside(path: &Path) -> std::io::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(x) = d.filter(|x| !x.as_os_str().is_empty() && !x.exists()) {
        missing.push(x.to_path_buf());
        d = x.parent();
    }
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(dir.join(format!(".{name}.tmp-{}-{seq}", std::process::id())))
}

/// Writes `data` to a hidden temporary file beside `path` (see [`temp_beside`]) and fsyncs it.
/// Returns its name.
fn write_temp(path: &Path, data: &[u8]) -> std::io::Result<PathBuf> {
    let tmp = temp_beside(path)?;
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    if let Err(e) = written {
        // A full disk must not fill up further with the remains of failed attempts.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

fn write_local(path: &Path, data: &[u8]) -> Result<(), LakeError> {
    let err = |e: std::io::Error| LakeError::Storage {
        location: path.display().to_string(),
        message: e.to_string(),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = write_temp(path, data).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    // Make the rename itself durable.
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

fn link_local(from: &Path, to: &Path) -> Result<(), LakeError> {
    let err = |e: std::io::Error| LakeError::Storage {
        location: format!("{} -> {}", from.display(), to.display()),
        message: e.to_string(),
    };
    // A link cannot replace a name: link to a temporary name, then rename over `to`.
    let tmp = temp_beside(to).map_err(err)?;
    fs::hard_link(from, &tmp).map_err(err)?;
    if let Err(e) = fs::rename(&tmp, to) {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    let dir = to.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

fn create_local(path: &Path, data: &[u8]) -> Result<bool, LakeError> {
    let err = |e: std::io::Error| LakeError::Storage {
        location: path.display().to_string(),
        message: e.to_string(),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = write_temp(path, data).map_err(err)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copy_replaces_the_target_whole_and_keeps_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        lake.put("t/a/f.parquet", Bytes::from_static(b"one"))
            .await
            .unwrap();
        lake.copy("t/a/f.parquet", "t/_compacted/a/g/f.parquet")
            .await
            .unwrap();
        assert_eq!(
            &lake.get("t/_compacted/a/g/f.parquet").await.unwrap()[..],
            b"one"
        );
        // Replacing the source afterwards (a replay rewrites a file) leaves the copy as it was.
        lake.put("t/a/f.parquet", Bytes::from_static(b"two"))
            .await
            .unwrap();
        assert_eq!(
            &lake.get("t/_compacted/a/g/f.parquet").await.unwrap()[..],
            b"one"
        );
        lake.copy("t/a/f.parquet", "t/_compacted/a/g/f.parquet")
            .await
            .unwrap();
        assert_eq!(
            &lake.get("t/_compacted/a/g/f.parquet").await.unwrap()[..],
            b"two"
        );
        assert_eq!(&lake.get("t/a/f.parquet").await.unwrap()[..], b"two");
        // No temporary file is left beside the copy, and a missing source is an error.
        assert_eq!(
            lake.list("t/_compacted/a/g").await.unwrap(),
            vec!["t/_compacted/a/g/f.parquet".to_owned()]
        );
        assert!(lake
            .copy("t/a/missing.parquet", "t/b/x.parquet")
            .await
            .is_err());
    }

    #[tokio::test]
    async fn put_if_absent_lets_exactly_one_writer_create_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let rel = "_ticklake/ledger/t/x/0/00000000000000000000.json";
        assert!(!lake.exists(rel).await.unwrap());
        assert!(lake.put_if_absent(rel, Bytes::from("first")).await.unwrap());
        assert!(!lake
            .put_if_absent(rel, Bytes::from("second"))
            .await
            .unwrap());
        assert_eq!(lake.get(rel).await.unwrap(), Bytes::from("first"));
        assert!(lake.exists(rel).await.unwrap());
        assert_eq!(lake.list("_ticklake").await.unwrap(), [rel]);
        lake.delete(rel).await.unwrap();
        lake.delete(rel).await.unwrap();
        assert!(!lake.exists(rel).await.unwrap());
    }
}
