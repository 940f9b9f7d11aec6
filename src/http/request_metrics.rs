//! Metrics by route: every request is counted and timed under its route's template, and refused
//! sends are counted by reason.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, histogram};

use crate::telemetry::{self, RejectReason};

/// Runs after routing, so the route label is the route's template, never a user's path.
pub async fn record(req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched
        .as_ref()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let started = Instant::now();
    let mut response = next.run(req).await;
    let status = response.status();
    record_request(route, method, status, started.elapsed());
    // For the access log, written outside the router (`request_id`).
    if let Some(matched) = matched {
        response.extensions_mut().insert(matched);
    }
    response
}

pub fn record_request(route: String, method: &'static str, status: StatusCode, elapsed: Duration) {
    if route == "/api/messages"
        && method == "POST"
        && let Some(reason) = rejection_reason(status)
    {
        reason.count();
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

fn rejection_reason(status: StatusCode) -> Option<RejectReason> {
    Some(match status {
        StatusCode::BAD_REQUEST => RejectReason::Invalid,
        StatusCode::UNAUTHORIZED => RejectReason::Unauthorized,
        StatusCode::FORBIDDEN => RejectReason::Forbidden,
        StatusCode::PAYLOAD_TOO_LARGE => RejectReason::TooLarge,
        StatusCode::TOO_MANY_REQUESTS => RejectReason::RateLimited,
        s if s.is_server_error() => RejectReason::Unavailable,
        _ => return None,
    })
}
