//! Every JSON body ends with a newline, as the original service's did, so a shell prompt lands
//! on its own line after `curl`. One layer on each router rather than a rule each handler must
//! remember: a future handler's `Json` gets it too. Bodies that are not `application/json` (the
//! 101 WebSocket upgrade, `/metrics`' text) pass untouched.

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::Response;

pub async fn end_json_with_newline(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // JSON bodies are built whole in memory; collecting them costs no more than they already
    // did. One that cannot be read is passed on empty, as it would have failed the client anyway.
    let mut bytes = to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default()
        .to_vec();
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

/// The newline for JSON bodies written by hand, outside the routers (the accept loop's 503).
pub fn with_newline(mut json: String) -> String {
    json.push('\n');
    json
}
