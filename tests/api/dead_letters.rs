//! Dead letters with the embedded store, and the admin surface that guards them.

use crate::common::{self, process::run_cli};
use crate::common::{TestServer, eventually};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "embedded-admin-token";

async fn admin(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = server.http.request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Runs a statement on the embedded store's own file, beside the running chatd.
fn on_store(server: &TestServer, sql: &str) {
    common::on_store(server.data_dir.path(), sql);
}

#[tokio::test]
async fn the_embedded_store_keeps_dead_letters_that_operators_replay_and_purge() {
    let server = TestServer::start_with(&[
        ("RETRY_ATTEMPTS", "2"),
        ("RETRY_BASE_MS", "10"),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
    ])
    .await;
    let data_dir = server.data_dir.path().display().to_string();
    let cli_env = [("DATA_DIR", data_dir.as_str())];
    on_store(
        &server,
        "CREATE UNIQUE INDEX content_unique ON messages (content)",
    );

    let first = server.send_ok("alice", &["alice", "bob"], "twice").await;
    server.stored("alice", "alice,bob", 1).await;
    let refused = server.send_ok("alice", &["alice", "bob"], "twice").await;
    let refused_id = refused["id"].as_str().unwrap();
    let letters = eventually("the dead letter is stored", || async {
        let (_, letters) = admin(
            &server,
            reqwest::Method::GET,
            "/admin/dead-letters",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
        (letters.as_array().unwrap().len() == 1).then_some(letters)
    })
    .await;
    let letter = &letters[0];
    assert_eq!(letter["id"], refused_id);
    assert_eq!(letter["message"], refused);
    assert_eq!(letter["attempts"], 2);
    assert_eq!(letter["error"]["kind"], "constraint");
    assert!(
        letter["error"]["message"]
            .as_str()
            .unwrap()
            .contains("UNIQUE"),
        "{letter}"
    );
    eventually("the dead letter leaves the outbox", || async {
        (server.health().await["outbox"] == json!({"pending": 0, "dead_lettered": 0})).then_some(())
    })
    .await;

    let listing = run_cli(&["dlq", "list", "--error", "unique"], &cli_env);
    assert!(
        String::from_utf8_lossy(&listing.stdout).starts_with(refused_id),
        "{listing:?}"
    );
    let shown = run_cli(&["dlq", "show", refused_id], &cli_env);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(&shown, letter);
    let as_json = run_cli(&["dlq", "list", "--json"], &cli_env);
    let as_json: Value = serde_json::from_slice(&as_json.stdout).unwrap();
    assert_eq!(as_json, json!([letter]), "the list holds what `show` shows");
    let dry = run_cli(&["dlq", "replay", "--all", "--dry-run"], &cli_env);
    assert_eq!(
        String::from_utf8_lossy(&dry.stdout).trim(),
        format!("would replay {refused_id}")
    );

    on_store(&server, "DROP INDEX content_unique");
    let replayed = run_cli(&["dlq", "replay", refused_id], &cli_env);
    assert!(replayed.status.success(), "{replayed:?}");
    assert_eq!(
        server.stored("bob", "alice,bob", 2).await,
        vec![refused.clone(), first]
    );
    assert_eq!(
        String::from_utf8_lossy(&run_cli(&["dlq", "list"], &cli_env).stdout).trim(),
        "no dead letters"
    );
    let missing = run_cli(&["dlq", "replay", refused_id], &cli_env);
    assert!(
        !missing.status.success(),
        "replaying what is not there is an error"
    );

    // Purge: a new dead letter, removed over HTTP.
    on_store(
        &server,
        "DELETE FROM messages; CREATE UNIQUE INDEX content_unique ON messages (content)",
    );
    server.send_ok("bob", &["alice", "bob"], "again").await;
    server.stored("bob", "alice,bob", 1).await;
    let doomed = server.send_ok("bob", &["alice", "bob"], "again").await;
    let path = format!("/admin/dead-letters/{}", doomed["id"].as_str().unwrap());
    eventually("the second dead letter is stored", || async {
        (admin(
            &server,
            reqwest::Method::GET,
            &path,
            Some(ADMIN_TOKEN),
            None,
        )
        .await
        .0 == 200)
            .then_some(())
    })
    .await;
    assert_eq!(
        admin(
            &server,
            reqwest::Method::DELETE,
            &path,
            Some(ADMIN_TOKEN),
            None
        )
        .await,
        (200, json!({"purged": 1}))
    );
    assert_eq!(
        admin(
            &server,
            reqwest::Method::GET,
            &path,
            Some(ADMIN_TOKEN),
            None
        )
        .await
        .0,
        404
    );
}

#[tokio::test]
async fn the_admin_api_refuses_a_missing_or_wrong_token() {
    let server = TestServer::start_with(&[("ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let alice = server.token("alice");
    for token in [
        None,
        Some("wrong"),
        Some(alice.as_str()),
        Some("embedded-admin-tokenX"),
    ] {
        let (status, body) = admin(
            &server,
            reqwest::Method::GET,
            "/admin/dead-letters",
            token,
            None,
        )
        .await;
        assert_eq!(status, 401, "{token:?}");
        assert!(body["error"].is_string());
        let replay = admin(
            &server,
            reqwest::Method::POST,
            "/admin/dead-letters/replay",
            token,
            Some(json!({"all": true})),
        )
        .await;
        assert_eq!(replay.0, 401, "{token:?}");
    }
    let (status, body) = admin(
        &server,
        reqwest::Method::GET,
        "/admin/dead-letters",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!((status, body), (200, json!([])));
    for bad in [
        json!({}),
        json!({"ids": []}),
        json!({"ids": [1]}),
        json!({"all": false}),
        json!({"ids": ["a"], "all": true}),
        // A misspelt dry_run is refused rather than ignored: it would replay for real.
        json!({"all": true, "dryrun": true}),
    ] {
        let (status, _) = admin(
            &server,
            reqwest::Method::POST,
            "/admin/dead-letters/replay",
            Some(ADMIN_TOKEN),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, 400, "{bad}");
    }
    let (status, _) = admin(
        &server,
        reqwest::Method::GET,
        "/admin/dead-letters?limit=0",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn without_admin_token_no_admin_route_exists() {
    let server = TestServer::start().await;
    for (method, path) in [
        (reqwest::Method::GET, "/admin/dead-letters"),
        (reqwest::Method::GET, "/admin/dead-letters/some-id"),
        (reqwest::Method::DELETE, "/admin/dead-letters/some-id"),
        (reqwest::Method::POST, "/admin/dead-letters/replay"),
    ] {
        let (status, body) = admin(
            &server,
            method.clone(),
            path,
            Some(""),
            Some(json!({"all": true})),
        )
        .await;
        assert_eq!(status, 404, "{method} {path}");
        assert!(body["error"].is_string());
    }
}

/// With `METRICS_PORT`, the admin API and the metrics leave the port clients reach.
#[tokio::test]
async fn the_internal_port_takes_the_admin_api_and_the_metrics_off_the_main_one() {
    let server =
        TestServer::start_with(&[("METRICS_PORT", "0"), ("ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let (status, _) = admin(
        &server,
        reqwest::Method::GET,
        "/admin/dead-letters",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 404, "not on the main port");
    let metrics = server.metrics_url().expect("METRICS_PORT is set");
    let internal = metrics.trim_end_matches("/metrics");
    let listed = server
        .http
        .get(format!("{internal}/admin/dead-letters"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.json::<Value>().await.unwrap(), json!([]));
    let unauthorized = server
        .http
        .get(format!("{internal}/admin/dead-letters"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401, "still guarded by ADMIN_TOKEN");
    assert_eq!(
        server.http.get(&metrics).send().await.unwrap().status(),
        200
    );
}
