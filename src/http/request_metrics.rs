//! Metrics by route: every request is counted and timed under its route's template, and refused
//! sends are counted by reason.
//!
//! Requests are counted by status class (2xx, 4xx, 5xx, ...) rather than by code, so that the
//! few series a route can have all exist at zero from the router's start ([`register_route`]):
//! the first 5xx of a route then shows as an increase, where a series born at 1 would show
//! nothing to `rate()` and `increase()`.

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
    counter!(
        telemetry::HTTP_REQUESTS,
        "route" => route,
        "method" => method,
        "status_class" => status_class(status),
    )
    .increment(1);
}

/// The classes every route's series exist in from the start: what the dashboard and the alerts
/// read (success, the client's errors, chatd's errors). A 101 (`/ws`) or a 3xx is counted too,
/// in a series born with its first request.
pub const REGISTERED_CLASSES: [&str; 3] = ["2xx", "4xx", "5xx"];

/// Creates `route`'s series for `method` in every class of [`REGISTERED_CLASSES`], at zero if
/// they are new. Adding zero leaves a series that other chatds of this process (the tests run
/// several) have already counted into as it is.
pub fn register_route(route: &'static str, method: &Method) {
    for class in REGISTERED_CLASSES {
        counter!(
            telemetry::HTTP_REQUESTS,
            "route" => route,
            "method" => method_label(method),
            "status_class" => class,
        )
        .increment(0);
    }
}

/// "2xx" for 200 to 299, and so on.
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_fall_in_their_class() {
        for (code, class) in [
            (101, "1xx"),
            (200, "2xx"),
            (202, "2xx"),
            (304, "3xx"),
            (404, "4xx"),
            (429, "4xx"),
            (500, "5xx"),
            (503, "5xx"),
        ] {
            assert_eq!(
                status_class(StatusCode::from_u16(code).unwrap()),
                class,
                "{code}"
            );
        }
    }
}
