//! Browsers on other sites: only the origins in CORS_ALLOWED_ORIGINS may call chatd, over REST
//! or WebSocket; clients that send no Origin (servers, scripts, apps) are not affected.

use crate::common::TestServer;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const APP: &str = "https://app.example.com";

/// The status of a `/ws` upgrade that carries `Origin: origin`.
pub(crate) async fn ws_status(server: &TestServer, origin: &str) -> u16 {
    let url = format!("ws://{}/ws?token={}", server.addr, server.token("bob"));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

/// Response headers a browser's script may read, beyond the safelisted ones.
/// A browser's preflight for a send from `APP` that carries `headers`.
async fn preflight_send(server: &TestServer, headers: &str) -> reqwest::Response {
    server
        .http
        .request(reqwest::Method::OPTIONS, server.url("/api/messages"))
        .header("origin", APP)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", headers)
        .send()
        .await
        .unwrap()
}

fn assert_exposes(response: &reqwest::Response, names: &[&str]) {
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_string();
    let exposed: Vec<&str> = exposed.split(',').map(str::trim).collect();
    for name in names {
        assert!(exposed.contains(name), "{name} not in {exposed:?}");
        assert!(response.headers().contains_key(*name), "{name} not sent");
    }
}

#[tokio::test]
async fn only_allowed_origins_may_call_and_they_get_cors_headers() {
    let server = TestServer::start_with(&[(
        "CORS_ALLOWED_ORIGINS",
        "https://app.example.com/, https://admin.example.com",
    )])
    .await;
    let preflight = preflight_send(&server, "authorization, content-type").await;
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], APP);
    assert!(
        preflight.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );

    let allowed = server
        .http
        .post(server.url("/api/messages"))
        .header("origin", APP)
        .bearer_auth(server.token("alice"))
        .json(&json!({"participants": ["alice", "bob"], "content": "from the app"}))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 202);
    assert_eq!(allowed.headers()["access-control-allow-origin"], APP);
    assert_exposes(&allowed, &["x-request-id"]);

    let evil = server
        .http
        .post(server.url("/api/messages"))
        .header("origin", "https://evil.example")
        .bearer_auth(server.token("alice"))
        .json(&json!({"participants": ["alice", "bob"], "content": "from elsewhere"}))
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), 403);
    let body: serde_json::Value = evil.json().await.unwrap();
    assert!(body["error"].is_string());
    let stored = server.stored("alice", "alice,bob", 1).await;
    assert_eq!(
        stored[0]["content"], "from the app",
        "the refused send stored nothing"
    );

    assert_eq!(ws_status(&server, APP).await, 101);
    assert_eq!(ws_status(&server, "https://evil.example").await, 403);
}

/// What a browser's script needs from the answers: the request's id, whether a send was a
/// replay of an earlier one with the same `Idempotency-Key`, and when to retry after a 429.
#[tokio::test]
async fn browsers_may_send_an_idempotency_key_and_read_the_headers_that_answer() {
    let server = TestServer::start_with(&[
        ("CORS_ALLOWED_ORIGINS", APP),
        ("RATE_LIMIT_RPS", "0.001"),
        ("RATE_LIMIT_BURST", "2"),
    ])
    .await;
    let preflight = preflight_send(&server, "authorization, content-type, idempotency-key").await;
    assert_eq!(preflight.status(), 204);
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("idempotency-key"), "{allowed}");

    let send = || {
        server
            .http
            .post(server.url("/api/messages"))
            .header("origin", APP)
            .header("idempotency-key", "from-the-browser-1")
            .bearer_auth(server.token("alice"))
            .json(&json!({"participants": ["alice", "bob"], "content": "once"}))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 202);
    let replayed = send().await.unwrap();
    assert_eq!(replayed.status(), 202);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_exposes(&replayed, &["idempotent-replayed", "x-request-id"]);

    // The burst of 2 is spent.
    let limited = send().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_exposes(&limited, &["retry-after", "x-request-id"]);
}

#[tokio::test]
async fn by_default_no_browser_origin_is_allowed_but_other_clients_are() {
    let server = TestServer::start().await;
    assert_eq!(ws_status(&server, APP).await, 403);
    let from_browser = server
        .http
        .get(server.url("/health"))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(from_browser.status(), 403);
    server
        .send_ok("alice", &["alice"], "no Origin header: not a browser")
        .await;
    let _bob = server.ws("bob").await;
}
