//! Waiting out outages: an unavailable object store, catalog or disk is retried with exponential
//! back-off (backon) for up to [`ticklake_bus::OUTAGE_PATIENCE`], and every wait is logged with what failed, so an
//! operator sees "waiting for the lake" instead of a dead sink. Errors that waiting cannot fix
//! (permissions, a read-only file system, bad settings) end the flush at once; nothing is committed then.

use backon::ExponentialBackoff;
use ticklake_bus::outage_backoff;

use crate::SinkError;

/// The back-off of one operation.
pub(crate) struct Patience {
    what: &'static str,
    backoff: ExponentialBackoff,
}

impl Patience {
    pub(crate) fn new(what: &'static str) -> Patience {
        Patience {
            what,
            backoff: outage_backoff(),
        }
    }

    /// After a failure: waits and returns true to try again, or returns false to give up (the error
    /// is not an outage, or the patience is spent).
    pub(crate) async fn wait(&mut self, e: &SinkError) -> bool {
        if !is_outage(e) {
            return false;
        }
        match self.backoff.next() {
            Some(delay) => {
                tracing::warn!(
                    "waiting for {}: {e}; trying again in {:.1}s",
                    self.what,
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
                true
            }
            None => false,
        }
    }
}

/// True for failures that may pass: network errors, 5xx answers, a full disk.
fn is_outage(e: &SinkError) -> bool {
    let permanent = [
        "Permission denied",
        "Read-only file system",
        "File name too long",
        "AccessDenied",
        "NoSuchBucket",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    ];
    match e {
        SinkError::Lake(l) => {
            let text = l.to_string();
            !matches!(l, ticklake_lake::LakeError::Config(_))
                && !permanent.iter().any(|p| text.contains(p))
        }
        SinkError::Catalog(c) => {
            let text = c.to_string();
            !permanent.iter().any(|p| text.contains(p))
                && !matches!(
                    c,
                    ticklake_catalog::CatalogError::Invalid(_)
                        | ticklake_catalog::CatalogError::NoSuchTable(_)
                )
        }
        SinkError::Iceberg(i) => {
            let text = i.to_string();
            i.may_pass() && !permanent.iter().any(|p| text.contains(p))
        }
        _ => false,
    }
}

/// Runs `op` until it succeeds, waiting out outages of `what` (see [`Patience`]).
pub(crate) async fn patiently<T, E, F, Fut>(what: &'static str, mut op: F) -> Result<T, SinkError>
where
    E: Into<SinkError>,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut patience = Patience::new(what);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let e = e.into();
                if !patience.wait(&e).await {
                    return Err(e);
                }
            }
        }
    }
}
