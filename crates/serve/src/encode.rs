//! Query results as JSON, CSV or Arrow IPC, chosen by the request's `Accept` header.

use arrow::array::RecordBatch;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ticklake_query::Output;

use crate::error::ApiError;

/// The media type of Arrow's IPC stream format.
pub(crate) const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// The formats an answer can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Csv,
    Arrow,
}

impl Format {
    /// The first format of `Accept` the server can give (JSON when there is none, or `*/*`).
    pub(crate) fn from_accept(headers: &HeaderMap) -> Result<Format, ApiError> {
        let Some(accept) = headers.get(header::ACCEPT) else {
            return Ok(Format::Json);
        };
        let accept = accept.to_str().unwrap_or_default();
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            if refused {
                continue;
            }
            match media.as_str() {
                "application/json" | "*/*" | "application/*" => return Ok(Format::Json),
                "text/csv" | "text/*" => return Ok(Format::Csv),
                ARROW_STREAM => return Ok(Format::Arrow),
                _ => {}
            }
        }
        Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            format!(
                "cannot answer in {accept:?}: results come as application/json, text/csv or {ARROW_STREAM}"
            ),
        ))
    }
}

/// The rows of `batches` as a JSON array of objects (a column per key, NULL as `null`).
pub(crate) fn json_rows(batches: &[RecordBatch]) -> Result<Vec<u8>, ApiError> {
    let mut buf = Vec::new();
    let mut writer = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow_json::writer::JsonArray>(&mut buf);
    for b in batches.iter().filter(|b| b.num_rows() > 0) {
        writer.write(b).map_err(encoding)?;
    }
    writer.finish().map_err(encoding)?;
    drop(writer);
    if buf.is_empty() {
        buf.extend_from_slice(b"[]");
    }
    Ok(buf)
}

fn encoding(e: arrow::error::ArrowError) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "encoding",
        format!("cannot encode the result: {e}"),
    )
}

/// The answer to a query: its rows in `format`; for JSON, `{"columns", "rows", "row_count",
/// "truncated", "elapsed_ms"}`, for CSV and Arrow the same facts in `X-Ticklake-*` headers.
pub(crate) fn answer(
    format: Format,
    out: &Output,
    truncated: bool,
    elapsed_ms: f64,
) -> Result<Response, ApiError> {
    let rows = out.rows();
    let (content_type, body) = match format {
        Format::Json => {
            let columns: Vec<serde_json::Value> = out
                .schema
                .fields()
                .iter()
                .map(|f| serde_json::json!({ "name": f.name(), "type": f.data_type().to_string() }))
                .collect();
            let mut body = Vec::new();
            body.extend_from_slice(b"{\"columns\":");
            body.extend_from_slice(&serde_json::to_vec(&columns).unwrap_or_default());
            body.extend_from_slice(b",\"rows\":");
            body.extend_from_slice(&json_rows(&out.batches)?);
            body.extend_from_slice(
                format!(
                    ",\"row_count\":{rows},\"truncated\":{truncated},\"elapsed_ms\":{elapsed_ms:.3}}}"
                )
                .as_bytes(),
            );
            ("application/json", body)
        }
        Format::Csv => {
            let mut body = Vec::new();
            {
                let mut w = arrow_csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut body);
                // An empty batch first, so an answer without rows still has its header line.
                w.write(&RecordBatch::new_empty(out.schema.clone()))
                    .map_err(encoding)?;
                for b in &out.batches {
                    w.write(b).map_err(encoding)?;
                }
            }
            ("text/csv; charset=utf-8", body)
        }
        Format::Arrow => {
            let mut body = Vec::new();
            {
                let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut body, &out.schema)
                    .map_err(encoding)?;
                for b in &out.batches {
                    w.write(b).map_err(encoding)?;
                }
                w.finish().map_err(encoding)?;
            }
            (ARROW_STREAM, body)
        }
    };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("x-ticklake-rows", HeaderValue::from(rows));
    headers.insert(
        "x-ticklake-truncated",
        HeaderValue::from_static(if truncated { "true" } else { "false" }),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{elapsed_ms:.3}")) {
        headers.insert("x-ticklake-elapsed-ms", v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Result<Format, ApiError> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        Format::from_accept(&h)
    }

    #[test]
    fn accept_picks_the_first_format_served() {
        assert_eq!(
            Format::from_accept(&HeaderMap::new()).unwrap(),
            Format::Json
        );
        assert_eq!(accept("text/csv").unwrap(), Format::Csv);
        assert_eq!(accept(ARROW_STREAM).unwrap(), Format::Arrow);
        assert_eq!(
            accept("text/html, text/csv;q=0.9, */*;q=0.1").unwrap(),
            Format::Csv
        );
        assert_eq!(
            accept("text/csv;q=0, application/json").unwrap(),
            Format::Json
        );
        let e = accept("text/html").unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_ACCEPTABLE);
        assert!(
            e.message.contains("application/json, text/csv"),
            "{}",
            e.message
        );
    }
}
