//! Which web origins may call chatd (`CORS_ALLOWED_ORIGINS`), for REST and WebSocket upgrades
//! alike. A request without an `Origin` header (a server, a script, a mobile app, the original
//! service's clients) is not a browser on another site and passes, and so does the chat page
//! served by chatd itself, whose `Origin` names the very host it asks (same origin, no CORS);
//! a browser on an origin not listed is refused with 403 before anything runs, so a refusal
//! changes nothing.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, HOST,
    ORIGIN, VARY,
};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// The request headers beyond the CORS-safelisted ones that a browser client may send: its
/// token, its JSON, a send's `Idempotency-Key` and its own request id.
const ALLOWED_HEADERS: &str = "authorization, content-type, idempotency-key, x-request-id";

/// The response headers beyond the CORS-safelisted ones that a browser client needs to read:
/// how long to wait before retrying (429, 503), the request's id for a bug report, and whether
/// a send with an `Idempotency-Key` was a replay. Browsers hide every other one from scripts.
const EXPOSED: &str = "retry-after, x-request-id, idempotent-replayed";

/// The origins allowed, exactly as browsers send them (`https://app.example.com`).
#[derive(Debug, Default)]
pub struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    pub fn new(origins: Vec<String>) -> Self {
        Self(origins)
    }

    fn permits(&self, origin: &str) -> bool {
        self.0.iter().any(|allowed| allowed == origin)
    }
}

/// Whether `origin` (`scheme://host[:port]`) is the host the request was sent to: a page
/// served by chatd calling back. A browser sets both headers itself, so a page elsewhere
/// cannot claim it (DNS rebinding aside, which gains it no token).
fn same_origin(origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
    let (Ok(origin), Some(Ok(host))) = (origin.to_str(), host.map(HeaderValue::to_str)) else {
        return false;
    };
    ["http://", "https://"]
        .iter()
        .any(|scheme| origin.strip_prefix(scheme) == Some(host))
}

pub async fn check_origin(
    State(allowed): State<Arc<AllowedOrigins>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(origin) = request.headers().get(ORIGIN).cloned() else {
        return next.run(request).await;
    };
    if same_origin(&origin, request.headers().get(HOST)) {
        return next.run(request).await;
    }
    if !origin.to_str().is_ok_and(|o| allowed.permits(o)) {
        return ApiError::new(StatusCode::FORBIDDEN, "this origin may not call chatd")
            .into_response();
    }
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE"),
        );
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    headers.append(VARY, HeaderValue::from_static("origin"));
    response
}
