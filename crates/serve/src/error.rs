//! Errors as the API answers them: a status and a JSON body, never a backtrace.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use ticklake_query::QueryError;

/// An error answer: `{"error": message, "kind": kind}`, with `line` and `column` (from 1) for SQL
/// errors whose position is known.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    pub(crate) position: Option<(u64, u64)>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            position: None,
        }
    }

    /// A request that is wrong in itself (a missing or malformed parameter).
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let (status, kind, position) = match &e {
            QueryError::Sql { position, .. } => (StatusCode::BAD_REQUEST, "sql", *position),
            QueryError::ReadOnly(_) => (StatusCode::FORBIDDEN, "read_only", None),
            // The request is well formed but too costly for the server's limits.
            QueryError::Timeout(_) => (StatusCode::UNPROCESSABLE_ENTITY, "timeout", None),
            QueryError::MemoryLimit { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "memory_limit", None)
            }
            QueryError::Execution(_) => (StatusCode::UNPROCESSABLE_ENTITY, "execution", None),
            QueryError::Catalog(_) | QueryError::Table(..) => {
                (StatusCode::BAD_GATEWAY, "catalog", None)
            }
            QueryError::Output(_) => (StatusCode::INTERNAL_SERVER_ERROR, "output", None),
        };
        ApiError {
            status,
            kind,
            message: e.to_string(),
            position,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message, "kind": self.kind });
        if let Some((line, column)) = self.position {
            body["line"] = line.into();
            body["column"] = column.into();
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
