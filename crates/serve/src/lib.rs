//! The lake over HTTP (`ticklake serve`): a dashboard page (a live ticker board, candlesticks with
//! volume, an SQL console) and the read-only JSON API it uses, for other dashboards, notebooks and
//! scripts too.
//!
//! | route | answers |
//! |---|---|
//! | `GET /` | the page (built from `web/` by `build.rs`, embedded in the binary) |
//! | `POST /api/query` | one read-only SQL statement; JSON, CSV or Arrow IPC by `Accept`; rows, time and memory bounded |
//! | `GET /api/tables` | the tables queries see, with their columns |
//! | `GET /api/symbols` | the symbols of a table |
//! | `GET /api/bars` | OHLCV bars of one symbol at an interval (`1m` … `1d`, `1mo`), between two times |
//! | `GET /api/latest` | the latest price of each symbol, its change from the record before, and its volume |
//! | `GET /api/live` | server-sent events: the topic's records as they stream, folded into one-second bars |
//! | `GET /metrics` | Prometheus metrics of the process (the server's requests, and a sink's in the same process) |
//! | `GET /health` | liveness, without a token |
//! | `GET /api/openapi.json` | the OpenAPI description of all of these |
//!
//! Safe by default: only read-only SQL runs (the engine refuses the rest), every answer is cut at a row
//! limit and every query at the engine's time and memory limits, a server that listens on anything but
//! a loopback address refuses to start without a bearer token, and every error is a JSON body with a
//! 4xx status when the request is at fault, never a backtrace.

mod api;
mod auth;
mod encode;
mod error;
mod live;
mod page;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
pub use live::{LiveBar, LiveTail, PUSH_EVERY};
pub use metrics_exporter_prometheus::PrometheusHandle;
use ticklake_query::Engine;

/// The shortest token a server accepts.
pub const MIN_TOKEN_CHARS: usize = 16;

/// How a server runs.
#[derive(Clone)]
pub struct ServeConfig {
    /// The address to listen on. Anything but a loopback address needs a `token`.
    pub listen: SocketAddr,
    /// The bearer token every request but `GET /health` must carry (`Authorization: Bearer …`).
    pub token: Option<String>,
    /// The most rows one answer holds; a query with more is cut there and marked truncated.
    pub max_rows: usize,
    /// Queries that run at once; more wait for a turn (their time limit starts when they run).
    pub max_concurrent_queries: usize,
    /// The table the market routes (`/api/symbols`, `/api/bars`, `/api/latest`) read when a request
    /// names none.
    pub table: String,
    /// How often the server re-reads the catalog, so tables created after it started answer too.
    pub refresh_every: Duration,
    /// Where `GET /metrics` reads the process's metrics; without it, that route answers 503.
    pub metrics: Option<PrometheusHandle>,
    /// The topic `GET /api/live` streams from its end; without it, that route answers 503.
    pub live: Option<LiveTopic>,
}

/// A topic on a bus, for the live tail.
#[derive(Debug, Clone)]
pub struct LiveTopic {
    /// The bus.
    pub bus: ticklake_bus::BusConfig,
    /// The topic.
    pub topic: String,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("max_rows", &self.max_rows)
            .field("max_concurrent_queries", &self.max_concurrent_queries)
            .field("table", &self.table)
            .field("refresh_every", &self.refresh_every)
            .field("live", &self.live.as_ref().map(|l| &l.topic))
            .finish()
    }
}

/// Why a server cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listen address off loopback without a token.
    #[error(
        "refusing to listen on {0} without a token: anyone who can reach it could query the lake; \
         give --token (better: the TICKLAKE_SERVE_TOKEN variable), or listen on 127.0.0.1"
    )]
    TokenNeeded(SocketAddr),
    /// A token too short or with characters a header cannot carry.
    #[error("the token {0}; use at least {MIN_TOKEN_CHARS} visible characters, e.g. the output of `openssl rand -hex 32`")]
    BadToken(&'static str),
    /// A setting out of range.
    #[error("{0}")]
    Config(String),
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// A server bound to its address, ready to run.
pub struct Server {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    engine: Arc<Engine>,
    config: ServeConfig,
    live: Option<Arc<LiveTail>>,
}

impl Server {
    /// Checks `config` (a token off loopback, limits above zero), starts the live tail (which has its
    /// place at the end of the topic when this returns) and binds the address.
    pub fn bind(
        engine: Arc<Engine>,
        config: ServeConfig,
    ) -> BoxFuture<'static, Result<Server, ServeError>> {
        Box::pin(async move {
            check(&config)?;
            let live = match config.live.clone() {
                Some(l) => Some(Arc::new(
                    tokio::task::spawn_blocking(move || {
                        LiveTail::start(l.bus, l.topic, Duration::from_secs(10))
                    })
                    .await
                    .map_err(|e| ServeError::Config(format!("the live tail did not start: {e}")))?,
                )),
                None => None,
            };
            let listener =
                tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(|source| ServeError::Bind {
                        addr: config.listen,
                        source,
                    })?;
            let addr = listener.local_addr().map_err(|source| ServeError::Bind {
                addr: config.listen,
                source,
            })?;
            Ok(Server {
                listener,
                addr,
                engine,
                config,
                live,
            })
        })
    }

    /// The address the server listens on (the port the system chose, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers requests until `shutdown` completes, then finishes the requests under way.
    pub fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> BoxFuture<'static, Result<(), ServeError>> {
        self.serve_until(Box::pin(shutdown))
    }

    fn serve_until(
        self,
        shutdown: BoxFuture<'static, ()>,
    ) -> BoxFuture<'static, Result<(), ServeError>> {
        Box::pin(async move {
            let refresher = tokio::spawn(refresh(self.engine.clone(), self.config.refresh_every));
            let router = api::router(self.engine, self.config, self.live);
            let served = axum::serve(self.listener, router)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(ServeError::Serve);
            refresher.abort();
            served
        })
    }
}

/// Re-reads the catalog every `every`, so new tables (and Iceberg tables' new schemas) answer.
async fn refresh(engine: Arc<Engine>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = engine.refresh().await {
            tracing::warn!(
                "cannot re-read the catalog (the tables known before still answer): {e}"
            );
        }
    }
}

fn check(config: &ServeConfig) -> Result<(), ServeError> {
    match &config.token {
        None if !config.listen.ip().is_loopback() => {
            return Err(ServeError::TokenNeeded(config.listen))
        }
        None => {}
        Some(t) if t.chars().count() < MIN_TOKEN_CHARS => {
            return Err(ServeError::BadToken("is too short"))
        }
        Some(t) if !t.chars().all(|c| c.is_ascii_graphic()) => {
            return Err(ServeError::BadToken(
                "has spaces, control or non-ASCII characters",
            ))
        }
        Some(_) => {}
    }
    if config.max_rows == 0 {
        return Err(ServeError::Config(
            "the row limit must be at least 1".into(),
        ));
    }
    if config.max_concurrent_queries == 0 {
        return Err(ServeError::Config(
            "at least one query must be allowed to run at once".into(),
        ));
    }
    if config.refresh_every.is_zero() {
        return Err(ServeError::Config(
            "the catalog refresh interval must be above zero".into(),
        ));
    }
    ticklake_query::market::check_table(&config.table)
        .map_err(|e| ServeError::Config(format!("the default table: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, token: Option<&str>) -> ServeConfig {
        ServeConfig {
            listen: listen.parse().unwrap(),
            token: token.map(str::to_owned),
            max_rows: 10,
            max_concurrent_queries: 1,
            table: "stock_topic".into(),
            refresh_every: Duration::from_secs(10),
            metrics: None,
            live: None,
        }
    }

    #[test]
    fn off_loopback_a_good_token_is_required() {
        assert!(check(&config("127.0.0.1:0", None)).is_ok());
        assert!(check(&config("[::1]:0", None)).is_ok());
        let e = check(&config("0.0.0.0:8080", None)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("refusing to listen on 0.0.0.0:8080 without a token"),
            "{e}"
        );
        let e = check(&config("0.0.0.0:8080", Some("short"))).unwrap_err();
        assert!(e.to_string().starts_with("the token is too short"), "{e}");
        let e = check(&config("0.0.0.0:8080", Some("a token with spaces in it"))).unwrap_err();
        assert!(e.to_string().contains("has spaces"), "{e}");
        assert!(check(&config("0.0.0.0:8080", Some("0123456789abcdef0123"))).is_ok());
        // The token never shows in the configuration's debug form.
        let shown = format!("{:?}", config("0.0.0.0:1", Some("0123456789abcdef0123")));
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }
}
