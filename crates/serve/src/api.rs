//! The routes and their handlers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, RecordBatch, UInt32Array};
use arrow::compute::{cast, concat_batches, take_record_batch};
use arrow::datatypes::DataType;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use ticklake_query::{split_statements, Engine, Output};
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;

use crate::encode::{answer, json_rows, Format};
use crate::error::ApiError;
use crate::live::{LiveBar, LivePush, LiveTail};
use crate::ServeConfig;
use ticklake_query::market::{self, BarInterval, TimeBound};

/// The largest request body: far more than any SQL statement needs.
const MAX_BODY_BYTES: usize = 1 << 20;

/// The OpenAPI description of the routes.
const OPENAPI: &str = include_str!("../openapi.json");

#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
    config: Arc<ServeConfig>,
    queries: Arc<Semaphore>,
    live: Option<Arc<LiveTail>>,
}

/// The server's routes, with authentication, metrics, a body limit and JSON answers for every error
/// (unknown routes, wrong methods, panics included).
pub(crate) fn router(
    engine: Arc<Engine>,
    config: ServeConfig,
    live: Option<Arc<LiveTail>>,
) -> Router {
    let token: Option<Arc<str>> = config.token.as_deref().map(Arc::from);
    let state = AppState {
        engine,
        live,
        queries: Arc::new(Semaphore::new(config.max_concurrent_queries)),
        config: Arc::new(config),
    };
    let guarded = Router::new()
        .route("/api/query", post(query))
        .route("/api/tables", get(tables))
        .route("/api/symbols", get(symbols))
        .route("/api/bars", get(bars))
        .route("/api/latest", get(latest))
        .route("/api/live", get(live_stream))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            token,
            crate::auth::require_token,
        ));
    Router::new()
        .route("/", get(crate::page::index))
        .route("/assets/{*path}", get(crate::page::asset))
        .route("/health", get(health))
        .route("/api/openapi.json", get(openapi))
        .merge(guarded)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(track))
        .layer(middleware::from_fn(refuse_declared_too_large))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(panicked))
        .with_state(state)
}

/// Refuses a body whose declared length is over the limit at once, so the client is not left
/// sending megabytes the server will not read (a body without a length is cut off as it is read).
async fn refuse_declared_too_large(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(bytes) if bytes > MAX_BODY_BYTES as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the body has {bytes} bytes; a request may send at most {MAX_BODY_BYTES} bytes"
            ),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// Counts each request and its time by route and status, for `GET /metrics`.
async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("ticklake_http_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("ticklake_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the server failed on this request (a bug: please report it with the request)",
    )
    .into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {}; the routes are listed at /api/openapi.json",
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}; see /api/openapi.json",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    match &state.config.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_metrics",
            "this server was started without metrics",
        )
        .into_response(),
    }
}

impl AppState {
    /// Runs one statement within the concurrency, row, time and memory limits; its rows, whether
    /// they were cut, and the time it ran (waiting for a turn not included).
    async fn run(&self, sql: &str, max_rows: usize) -> Result<(Output, bool, f64), ApiError> {
        let _turn = self.queries.acquire().await.map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is stopping",
            )
        })?;
        let started = Instant::now();
        let (out, truncated) = self.engine.execute_limited(sql, max_rows).await?;
        Ok((out, truncated, started.elapsed().as_secs_f64() * 1000.0))
    }

    /// The table a request names, or the default one: checked, and a 404 when queries do not see
    /// it (after a refresh, so a table created since the last one is found).
    async fn table(&self, given: Option<String>) -> Result<String, ApiError> {
        let table = given.unwrap_or_else(|| self.config.table.clone());
        market::check_table(&table).map_err(ApiError::bad_request)?;
        if !self.engine.has_table(&table) {
            self.engine.refresh().await?;
            if !self.engine.has_table(&table) {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!(
                        "no table {table:?} in database {}: GET /api/tables lists the tables",
                        self.engine.database()
                    ),
                ));
            }
        }
        Ok(table)
    }

    /// The partitions `/api/latest` must read in `table` (for `symbol`, or every symbol), from the
    /// catalog's: None when the table is not partitioned by `date` and `symbol` (or the catalog cannot
    /// say), or when a partition's symbol or date is NULL (a scope of dates cannot name the rows of
    /// no date, nor the symbols they belong to), and then the whole table is read.
    async fn latest_scope(&self, table: &str, symbol: Option<&str>) -> Option<market::LatestScope> {
        let values = self
            .engine
            .partition_values(table, &["symbol", "date"])
            .await
            .ok()??;
        let known: Vec<(&str, &str)> = values
            .iter()
            .filter(|v| symbol.is_none_or(|wanted| v[0].as_deref() == Some(wanted)))
            .map(|v| Some((v[0].as_deref()?, v[1].as_deref()?)))
            .collect::<Option<_>>()?;
        market::LatestScope::of(known)
    }

    /// A row limit a request asks for, within the server's.
    fn limit(&self, asked: Option<usize>) -> usize {
        asked
            .unwrap_or(self.config.max_rows)
            .min(self.config.max_rows)
    }
}

/// A symbol a request gives, checked by the sink's rules (a 400 naming what is wrong).
fn check_symbol(symbol: &str) -> Result<(), ApiError> {
    ticklake_model::names::check_symbol(symbol)
        .map_err(|e| ApiError::bad_request(format!("symbol: {e}")))
}

/// The rows of `batches` as a JSON array of objects.
fn rows_value(batches: &[RecordBatch]) -> Result<Value, ApiError> {
    serde_json::from_slice(&json_rows(batches)?)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// A query's parameters, or a 400 naming what is wrong with them.
fn params<T>(given: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    given
        .map(|Query(p)| p)
        .map_err(|e| ApiError::bad_request(format!("bad query parameters: {}", e.body_text())))
}

/// The body of `POST /api/query` as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    sql: String,
    #[serde(default)]
    max_rows: Option<usize>,
}

/// `POST /api/query`: one read-only statement, as JSON (`{"sql": …, "max_rows": …}`) or as the
/// body itself (`text/plain`, `application/sql`).
async fn query(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let format = Format::from_accept(&headers)?;
    let body = body.map_err(|e| {
        let kind = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_request"
        };
        ApiError::new(
            e.status(),
            kind,
            format!(
                "cannot read the body (at most {MAX_BODY_BYTES} bytes): {}",
                e.body_text()
            ),
        )
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let request = match media.as_str() {
        "application/json" => serde_json::from_slice::<QueryRequest>(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body is not a query request ({{\"sql\": \"…\", \"max_rows\": 100}}): {e}"
            ))
        })?,
        "text/plain" | "application/sql" => QueryRequest {
            sql: String::from_utf8(body.to_vec())
                .map_err(|_| ApiError::bad_request("the SQL is not UTF-8 text"))?,
            max_rows: None,
        },
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "cannot read a body of type {content_type:?}: send application/json ({{\"sql\": \"…\"}}) or text/plain (the SQL); with curl -d, add -H 'Content-Type: application/json'"
                ),
            ))
        }
    };
    let statements = split_statements(&request.sql)?;
    let statement = match statements.as_slice() {
        [] => return Err(ApiError::bad_request("no SQL statement given")),
        [one] => one,
        many => {
            return Err(ApiError::bad_request(format!(
                "one statement per request, this has {}",
                many.len()
            )))
        }
    };
    let (out, truncated, elapsed_ms) = state.run(statement, state.limit(request.max_rows)).await?;
    answer(format, &out, truncated, elapsed_ms)
}

/// `GET /api/tables`: every table queries see, with its columns.
async fn tables(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.engine.refresh().await?;
    let sql = market::columns_sql(state.engine.database());
    // A column limit far above any catalog's (a plan's LIMIT must fit in an i64).
    let (out, _, _) = state.run(&sql, 1_000_000).await?;
    let mut tables: Vec<Value> = Vec::new();
    for b in &out.batches {
        let (names, columns, types, nullable) = (
            strings(b, 0)?,
            strings(b, 1)?,
            strings(b, 2)?,
            strings(b, 3)?,
        );
        for i in 0..b.num_rows() {
            let column = json!({
                "name": columns[i],
                "type": types[i],
                "nullable": nullable[i].as_deref() == Some("YES"),
            });
            match tables.last_mut() {
                Some(t) if t["name"].as_str() == names[i].as_deref() => {
                    if let Some(cols) = t["columns"].as_array_mut() {
                        cols.push(column);
                    }
                }
                _ => tables.push(json!({ "name": names[i], "columns": [column] })),
            }
        }
    }
    Ok(Json(
        json!({ "database": state.engine.database(), "tables": tables }),
    ))
}

/// Column `i` of `b` as text.
fn strings(b: &RecordBatch, i: usize) -> Result<Vec<Option<String>>, ApiError> {
    let column = cast(b.column(i), &DataType::Utf8).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("reading the catalog's columns: {e}"),
        )
    })?;
    let column = column.as_any().downcast_ref::<arrow::array::StringArray>();
    Ok(column
        .map(|c| {
            (0..c.len())
                .map(|j| c.is_valid(j).then(|| c.value(j).to_owned()))
                .collect()
        })
        .unwrap_or_default())
}

#[derive(Debug, Deserialize)]
struct TableParams {
    table: Option<String>,
}

/// `GET /api/symbols`: the symbols of a table, in order.
async fn symbols(
    State(state): State<AppState>,
    given: Result<Query<TableParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = params(given)?;
    let table = state.table(p.table).await?;
    // A table partitioned by symbol has them in its partitions: no file is read.
    let from_partitions = state.engine.partition_values(&table, &["symbol"]).await?;
    let (symbols, truncated) = match from_partitions {
        Some(values) => {
            // Each partition's one value; NULL (Hive's default partition) is no symbol, as below.
            let all: BTreeSet<String> = values.into_iter().flatten().flatten().collect();
            let truncated = all.len() > state.config.max_rows;
            (
                all.into_iter().take(state.config.max_rows).collect(),
                truncated,
            )
        }
        None => {
            let (out, truncated, _) = state
                .run(&market::symbols_sql(&table), state.config.max_rows)
                .await?;
            let mut symbols = Vec::new();
            for b in &out.batches {
                symbols.extend(strings(b, 0)?.into_iter().flatten());
            }
            (symbols, truncated)
        }
    };
    Ok(Json(
        json!({ "table": table, "symbols": symbols, "truncated": truncated }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BarsParams {
    symbol: Option<String>,
    interval: Option<String>,
    from: Option<String>,
    to: Option<String>,
    table: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/bars`: OHLCV bars of one symbol, oldest first; with more bars than the limit, the newest.
async fn bars(
    State(state): State<AppState>,
    given: Result<Query<BarsParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = params(given)?;
    let table = state.table(p.table).await?;
    let symbol = p.symbol.filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::bad_request("the symbol is missing: /api/bars?symbol=AAPL&interval=1m")
    })?;
    check_symbol(&symbol)?;
    let interval: BarInterval = p
        .interval
        .as_deref()
        .unwrap_or("1d")
        .parse()
        .map_err(ApiError::bad_request)?;
    let time = |t: &Option<String>| {
        t.as_deref()
            .map(str::parse::<TimeBound>)
            .transpose()
            .map_err(ApiError::bad_request)
    };
    let (from, to) = (time(&p.from)?, time(&p.to)?);
    if let (Some(f), Some(t)) = (&from, &to) {
        if f >= t {
            return Err(ApiError::bad_request(
                "from must be before to (from is inclusive, to exclusive)",
            ));
        }
    }
    let sql = market::bars_sql(&table, &symbol, &interval, from.as_ref(), to.as_ref());
    let (out, truncated, _) = state.run(&sql, state.limit(p.limit)).await?;
    let oldest_first = reversed(&out)?;
    let rows = rows_value(&oldest_first)?;
    Ok(Json(json!({
        "table": table,
        "symbol": symbol,
        "interval": interval.to_string(),
        "bars": rows,
        "truncated": truncated,
    })))
}

/// The rows of `out` in reverse order, as one batch.
fn reversed(out: &Output) -> Result<Vec<RecordBatch>, ApiError> {
    let internal = |e: arrow::error::ArrowError| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    };
    let all = concat_batches(&out.schema, &out.batches).map_err(internal)?;
    let n = all.num_rows() as u32;
    let indices = UInt32Array::from_iter_values((0..n).rev());
    Ok(vec![take_record_batch(&all, &indices).map_err(internal)?])
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatestParams {
    table: Option<String>,
    symbol: Option<String>,
}

/// `GET /api/latest`: each symbol's latest record (or one symbol's).
async fn latest(
    State(state): State<AppState>,
    given: Result<Query<LatestParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = params(given)?;
    let table = state.table(p.table).await?;
    if let Some(s) = &p.symbol {
        check_symbol(s)?;
    }
    let scope = state.latest_scope(&table, p.symbol.as_deref()).await;
    let sql = market::latest_sql(&table, p.symbol.as_deref(), scope.as_ref());
    let (out, truncated, _) = state.run(&sql, state.config.max_rows).await?;
    let rows = rows_value(&out.batches)?;
    Ok(Json(
        json!({ "table": table, "latest": rows, "truncated": truncated }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LiveParams {
    symbol: Option<String>,
}

/// `GET /api/live`: server-sent events from the live tail: `ready` once subscribed, then `bars`
/// (a JSON array of one-second bars, see [`LiveBar`]) as records stream in, and `lagged` (how many
/// pushes this client missed) when it reads too slowly.
async fn live_stream(
    State(state): State<AppState>,
    given: Result<Query<LiveParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = params(given)?;
    if let Some(s) = &p.symbol {
        check_symbol(s)?;
    }
    let Some(tail) = &state.live else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_live",
            "this server reads no topic (it was started without a live tail)",
        ));
    };
    let receiver = tail.subscribe();
    let ready = Event::default()
        .event("ready")
        .data(json!({ "symbol": p.symbol }).to_string());
    let pushes = futures::stream::unfold((receiver, p.symbol), |(mut rx, symbol)| async move {
        loop {
            let event = match rx.recv().await {
                Ok(push) => match chosen(&push, symbol.as_deref()) {
                    Some(data) => Event::default().event("bars").data(data),
                    None => continue,
                },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    Event::default().event("lagged").data(missed.to_string())
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            return Some((Ok::<_, std::convert::Infallible>(event), (rx, symbol)));
        }
    });
    let events = futures::StreamExt::chain(futures::stream::once(async move { Ok(ready) }), pushes);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The bars of `push` for `symbol` (all without one) as JSON, or nothing when none are.
fn chosen(push: &LivePush, symbol: Option<&str>) -> Option<String> {
    let bars: Vec<&LiveBar> = push
        .iter()
        .filter(|b| symbol.is_none_or(|s| b.symbol == s))
        .collect();
    if bars.is_empty() {
        return None;
    }
    serde_json::to_string(&bars).ok()
}
