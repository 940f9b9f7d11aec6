//! Browsers on other sites: only the origins in CORS_ALLOWED_ORIGINS may call chatd, over REST
//! or WebSocket; clients that send no Origin (servers, scripts, apps) are not affected.

use crate::common::TestServer;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const APP: &str = "https://app.example.com";

async fn ws_status(server: &TestServer, origin: &str) -> u16 {
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

#[tokio::test]
async fn only_allowed_origins_may_call_and_they_get_cors_headers() {
    let server = TestServer::start_with(&[(
        "CORS_ALLOWED_ORIGINS",
        "https://app.example.com/, https://admin.example.com",
    )])
    .await;
    let preflight = server
        .http
        .request(reqwest::Method::OPTIONS, server.url("/api/messages"))
        .header("origin", APP)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
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
