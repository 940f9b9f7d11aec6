//! What every request leaves behind: an id (its own `x-request-id`, or a new one) on a tracing
//! span and on the response, and metrics by route. Also `/metrics` and `/ready`.

use std::time::{Duration, Instant};

use ::metrics::{counter, gauge, histogram};
use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracing::Instrument;
use uuid::Uuid;

use super::{ApiError, AppState};
use crate::error::Chain;
use crate::integrity::Database;
use crate::telemetry;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// How long a scrape waits for the store's dead-letter count before showing the last one.
const SCRAPE_STORE_TIMEOUT: Duration = Duration::from_secs(1);

/// Outermost: gives the request an id and a span that every log line inside carries.
pub async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::now_v7().simple().to_string());
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(status = response.status().as_u16(), elapsed = ?started.elapsed(), "request done");
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

/// Runs after routing, so the route label is the route's template, never a user's path.
pub async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status();
    record_request(route, method, status, started.elapsed());
    response
}

pub fn record_request(route: String, method: &'static str, status: StatusCode, elapsed: Duration) {
    if route == "/api/messages"
        && method == "POST"
        && let Some(reason) = rejection_reason(status)
    {
        counter!(telemetry::MESSAGES_REJECTED, "reason" => reason).increment(1);
    }
    histogram!(telemetry::HTTP_DURATION, "route" => route.clone()).record(elapsed);
    let status = status.as_u16().to_string();
    counter!(telemetry::HTTP_REQUESTS, "route" => route, "method" => method, "status" => status)
        .increment(1);
}

/// Methods by name; anything unusual shares one label, so clients cannot mint series.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

fn rejection_reason(status: StatusCode) -> Option<&'static str> {
    Some(match status {
        StatusCode::BAD_REQUEST => "invalid",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        s if s.is_server_error() => "unavailable",
        _ => return None,
    })
}

/// `GET /metrics`: the Prometheus text format, with the gauges read fresh from the pipeline.
pub async fn scrape(State(state): State<AppState>) -> Response {
    gauge!(telemetry::WS_CONNECTIONS).set(state.hub.open() as f64);
    let counts = state.outbox.counts();
    gauge!(telemetry::OUTBOX_DEPTH).set(counts.pending as f64);
    match state.outbox.oldest_pending().await {
        Ok(oldest) => {
            let age = oldest.map_or(0.0, |at| {
                (chrono::Utc::now() - at).as_seconds_f64().max(0.0)
            });
            gauge!(telemetry::OUTBOX_OLDEST_AGE).set(age);
        }
        Err(e) => tracing::warn!(error = %Chain(&e), "reading the outbox's oldest entry failed"),
    }
    gauge!(telemetry::STORE_UP).set(if state.store_health.is_up() { 1.0 } else { 0.0 });
    for database in Database::ALL {
        let corrupted = state.integrity.is_corrupted(database);
        gauge!(telemetry::STORAGE_CORRUPTED, "file" => database.label()).set(if corrupted {
            1.0
        } else {
            0.0
        });
    }
    // Dead letters still on their way from the outbox count too. An unanswered store keeps the
    // last figure rather than holding up the scrape.
    if let Ok(Ok(stored)) =
        tokio::time::timeout(SCRAPE_STORE_TIMEOUT, state.store.count_dead_letters()).await
    {
        gauge!(telemetry::DEAD_LETTER_BACKLOG).set((stored + counts.dead_lettered) as f64);
    }
    let text = state.metrics.render();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

/// `GET /ready`: 200 once the store is reachable and its migrations are applied. A database
/// file found corrupted while running makes it 503 for good, naming the file and what to do:
/// a load balancer takes the instance out, and only an operator can bring it back.
pub async fn ready(State(state): State<AppState>) -> Response {
    let corrupted = state.integrity.found();
    if !corrupted.is_empty() {
        let advice: Vec<String> = corrupted.iter().map(|c| c.advice()).collect();
        let files: Vec<Value> = corrupted
            .iter()
            .map(|c| {
                json!({
                    "file": c.database.label(),
                    "path": c.path.display().to_string(),
                    "error": c.error,
                })
            })
            .collect();
        let body = json!({
            "error": format!("not ready: {}", advice.join(" ")),
            "corrupted": files,
        });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    if state.store_health.is_ready() {
        Json(json!({ "status": "ready" })).into_response()
    } else if state.store_health.is_up() {
        ApiError::unavailable("not ready: the store's migrations are not applied yet")
            .into_response()
    } else {
        ApiError::unavailable("not ready: the store is unreachable").into_response()
    }
}
