//! The request's id: its own `x-request-id`, or a new one, on a tracing span that every log
//! line inside carries, and on the response; and the access log, one line per request at info
//! (target `chatd::access`, which `RUST_LOG=info,chatd::access=off` turns off): method, route,
//! path, status, duration and id. The path is logged without its query, which can hold a
//! token (`/ws?token=`); no header and no body is logged.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use uuid::Uuid;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Outermost: gives the request an id and a span that every log line inside carries.
pub async fn assign(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::now_v7().simple().to_string());
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let span = tracing::info_span!("request", id = %id, %method, path);
    let started = Instant::now();
    let mut response = next.run(req).instrument(span).await;
    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        target: "chatd::access",
        %method,
        route = %route,
        path = %path,
        status = response.status().as_u16(),
        duration_ms = %format_args!("{duration_ms:.3}"),
        request_id = %id,
        "request"
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}
