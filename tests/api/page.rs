//! The chat page (`WEB_UI`): served with its headers and a strict CSP, turned off by
//! `WEB_UI=false`; its development sign-in exists only on the generated development secret;
//! and the page's own calls (same origin) pass the origin check.

use serde_json::{Value, json};

use crate::common::TestServer;
use crate::origins::ws_status as ws_status_with_origin;

async fn get(server: &TestServer, path: &str) -> reqwest::Response {
    server.http.get(server.url(path)).send().await.unwrap()
}

async fn dev_token(server: &TestServer, body: Value) -> (u16, Value) {
    let response = server
        .http
        .post(server.url("/api/dev/token"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn the_page_and_its_files_are_served_under_a_strict_csp() {
    let server = TestServer::start().await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/style.css", "text/css; charset=utf-8"),
    ] {
        let response = get(&server, path).await;
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["cache-control"], "no-cache");
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
    }
    let page = get(&server, "/").await.text().await.unwrap();
    // JWT_SECRET is set: the page is told there is no development sign-in.
    assert!(page.contains(r#"<meta name="chatd-dev-sign-in" content="off">"#));
    assert!(!page.contains("<script>"), "no inline script");

    let missing = get(&server, "/assets/nothing.js").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap(),
        json!({"error": "no such file"})
    );
    server.shutdown().await;
}

#[tokio::test]
async fn web_ui_false_leaves_no_page() {
    let server = TestServer::start_with(&[("WEB_UI", "false")]).await;
    for path in ["/", "/assets/app.js"] {
        let response = get(&server, path).await;
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"error": "no such route"})
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_development_sign_in_exists_only_on_the_generated_secret() {
    let with_secret = TestServer::start().await;
    let (status, _) = dev_token(&with_secret, json!({"id": "alice"})).await;
    assert_eq!(status, 404);
    with_secret.shutdown().await;

    let keys = TestServer::start_with(&[
        ("JWT_SECRET", ""),
        ("JWT_PUBLIC_KEY", include_str!("../keys/rsa-public.pem")),
    ])
    .await;
    let (status, _) = dev_token(&keys, json!({"id": "alice"})).await;
    assert_eq!(status, 404);
    keys.shutdown().await;

    let dev = TestServer::start_with(&[("JWT_SECRET", "")]).await;
    let page = get(&dev, "/").await.text().await.unwrap();
    assert!(page.contains(r#"<meta name="chatd-dev-sign-in" content="on">"#));
    let (status, body) = dev_token(&dev, json!({"id": "alice"})).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap();
    let sent = dev
        .http
        .post(dev.url("/api/messages"))
        .bearer_auth(token)
        .json(&json!({"participants": ["alice", "bob"], "content": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202, "the token is good for the API");

    for bad in [
        json!({}),
        json!({"id": ""}),
        json!({"id": "a,b"}),
        json!({"id": "x".repeat(129)}),
        // A C1 control character (Schemathesis's find: the document then allowed any string).
        json!({"id": "a\u{84}b"}),
        json!({"id": 7}),
        json!([]),
    ] {
        let (status, body) = dev_token(&dev, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    // The document's id is the user id schema, which admits only ids chatd accepts
    // (`openapi.rs` holds that schema to the server).
    let doc: Value = get(&dev, "/openapi.json").await.json().await.unwrap();
    assert_eq!(
        doc["components"]["schemas"]["DevTokenRequest"]["properties"]["id"]["$ref"],
        "#/components/schemas/UserId"
    );
    dev.shutdown().await;
}

#[tokio::test]
async fn the_page_s_own_origin_may_call_chatd_and_others_still_may_not() {
    let server = TestServer::start().await;
    let own = format!("http://{}", server.addr);
    for (origin, expected) in [(own.as_str(), 202), ("http://evil.example", 403)] {
        let response = server
            .http
            .post(server.url("/api/messages"))
            .bearer_auth(server.token("alice"))
            .header("origin", origin)
            .json(&json!({"participants": ["alice", "bob"], "content": "hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{origin}");
    }
    assert_eq!(ws_status_with_origin(&server, &own).await, 101);
    assert_eq!(
        ws_status_with_origin(&server, "http://evil.example").await,
        403
    );
    server.shutdown().await;
}
