//! The `chatd` command line as an operator meets it: start-up refusals that come early, say
//! one thing and exit with the right status; the commands that work on a store without a
//! server; and `chatd health`, the container's health check.
//!
//! Its own test binary: every test runs the built binary as a child process.

mod common;

use std::net::TcpListener;

use chatd::app;
use chatd::store::SQLITE_FILE;
use common::process::{Chatd, run_cli, run_to_exit, serve_command};
use common::{eventually, on_store, token_for};

#[test]
fn a_port_in_use_is_refused_before_any_database_is_opened() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let data_dir = tempfile::tempdir().unwrap();
    let mut command = serve_command(data_dir.path(), "port-in-use", &[("PORT", &port)]);
    let (status, stderr) = run_to_exit(&mut command);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("binding PORT 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
    for file in [app::OUTBOX_FILE, SQLITE_FILE] {
        assert!(!data_dir.path().join(file).exists(), "{file} was opened");
    }
}

#[test]
fn a_mongodb_that_does_not_answer_is_one_line_naming_the_server_and_what_to_check() {
    // A port nothing listens on: connection refused at once.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let uri = format!("mongodb://127.0.0.1:{port}/");
    let out = run_cli(
        &["migrate"],
        &[("MONGO_URI", &uri), ("STORE_TIMEOUT", "5s")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("check MONGO_URI"), "{stderr}");
    assert!(
        stderr.contains(&format!("no MongoDB server answered (127.0.0.1:{port}: ")),
        "{stderr}"
    );
    assert!(!stderr.contains("labels"), "no driver dump: {stderr}");
}

#[test]
fn store_commands_refuse_a_data_dir_that_does_not_exist() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("mistyped");
    let missing_text = missing.display().to_string();
    for args in [&["dlq", "list"][..], &["migrate"]] {
        let out = run_cli(args, &[("DATA_DIR", &missing_text)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("DATA_DIR {missing_text} does not exist")),
            "{stderr}"
        );
        assert!(!missing.exists(), "{args:?} created it");
    }
}

#[test]
fn every_configuration_error_exits_2_with_one_message() {
    let data_dir = tempfile::tempdir().unwrap();
    for (name, value) in [
        ("RUST_LOG", "chatd=nonsense["),
        ("HOST", "no-such-host.invalid"),
        ("PORT", "http"),
    ] {
        let mut command = serve_command(data_dir.path(), "config", &[(name, value)]);
        let (status, stderr) = run_to_exit(&mut command);
        assert_eq!(status.code(), Some(2), "{name}: {stderr}");
        let lines: Vec<&str> = stderr.trim().lines().collect();
        assert_eq!(lines.len(), 1, "{name}: {stderr}");
        assert!(
            lines[0].starts_with(&format!("chatd: invalid configuration: {name}=")),
            "{stderr}"
        );
    }
}

#[test]
fn a_short_jwt_secret_is_accepted_with_a_warning_that_says_why() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path().display().to_string();
    let out = run_cli(
        &["token", "alice"],
        &[("JWT_SECRET", "short"), ("DATA_DIR", &dir)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("JWT_SECRET is 5 bytes, shorter than 32"),
        "{stderr}"
    );
    let long = "a".repeat(32);
    let out = run_cli(
        &["token", "alice"],
        &[("JWT_SECRET", &long), ("DATA_DIR", &dir)],
    );
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[tokio::test]
async fn health_answers_0_while_chatd_serves_and_1_once_it_is_gone() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut chatd = Chatd::start(data_dir.path(), "health", &[]);
    let url = format!("http://{}", chatd.addr);
    let ok = run_cli(&["health", "--url", &url], &[]);
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "ok");
    // The default: this machine's PORT.
    let port = chatd.addr.port().to_string();
    let local = run_cli(&["health"], &[("PORT", &port)]);
    assert!(local.status.success(), "{local:?}");

    chatd.child.kill().unwrap();
    chatd.child.wait().unwrap();
    let gone = run_cli(&["health", "--url", &url, "--timeout", "2s"], &[]);
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
}

#[tokio::test]
async fn health_checks_a_chatd_that_serves_tls_on_its_own_port() {
    let generated = rcgen::generate_simple_self_signed(vec!["chat.example".to_string()]).unwrap();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let tls = [("TLS_CERT", cert.as_str()), ("TLS_KEY", key.as_str())];
    let data_dir = tempfile::tempdir().unwrap();
    let chatd = Chatd::start(data_dir.path(), "health-tls", &tls);
    let port = chatd.addr.port().to_string();
    let mut env = tls.to_vec();
    env.push(("PORT", &port));
    let out = run_cli(&["health"], &env);
    assert!(out.status.success(), "{out:?}");
    // Plain HTTP to a TLS port is not healthy.
    let plain = run_cli(&["health", "--url", &format!("http://{}", chatd.addr)], &[]);
    assert_eq!(plain.status.code(), Some(1), "{plain:?}");
}

#[tokio::test]
async fn every_request_leaves_one_access_line_without_tokens_unless_turned_off() {
    let data_dir = tempfile::tempdir().unwrap();
    let chatd = Chatd::start(data_dir.path(), "access", &[]);
    let http = reqwest::Client::new();
    let token = token_for("access", "alice");
    let history = format!(
        "http://{}/api/messages/get?participants=alice,bob",
        chatd.addr
    );
    let answered = http
        .get(&history)
        .bearer_auth(&token)
        .header("x-request-id", "audit-me-1")
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);
    // A token in the query, as a browser's socket sends it: refused here, and never logged.
    let in_query = format!("http://{}/ws?token=secret-in-the-query", chatd.addr);
    http.get(&in_query).send().await.unwrap();
    let line = eventually("the access line", || async {
        chatd
            .logs()
            .into_iter()
            .find(|line| line.contains("chatd::access") && line.contains("audit-me-1"))
    })
    .await;
    for field in [
        "method=GET",
        "route=/api/messages/get",
        "path=/api/messages/get",
        "status=200",
        "duration_ms=",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    eventually("the refused socket's line", || async {
        chatd
            .logs()
            .iter()
            .any(|line| line.contains("chatd::access") && line.contains("path=/ws"))
            .then_some(())
    })
    .await;
    let logs = chatd.logs().join("\n");
    assert!(!logs.contains("secret-in-the-query"), "{logs}");
    assert!(!logs.contains(&token), "{logs}");

    let quiet_dir = tempfile::tempdir().unwrap();
    let quiet = Chatd::start(
        quiet_dir.path(),
        "access",
        &[("RUST_LOG", "info,chatd::access=off")],
    );
    let health = http
        .get(format!("http://{}/health", quiet.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // The line would be written before the answer was sent.
    assert!(
        !quiet
            .logs()
            .iter()
            .any(|line| line.contains("chatd::access")),
        "{:#?}",
        quiet.logs()
    );
}

#[tokio::test]
async fn replays_and_purges_are_audited_and_the_cli_replays_count_in_the_servers_metric() {
    const ADMIN: &str = "audit-admin-token";
    let data_dir = tempfile::tempdir().unwrap();
    let env = [
        ("RETRY_ATTEMPTS", "1"),
        ("RETRY_BASE_MS", "10"),
        ("ADMIN_TOKEN", ADMIN),
    ];
    let chatd = Chatd::start(data_dir.path(), "audit", &env);
    on_store(
        data_dir.path(),
        "CREATE UNIQUE INDEX content_unique ON messages (content)",
    );
    chatd.send("alice", &["alice", "bob"], "twice").await;
    let http = reqwest::Client::new();
    let dead_letters = || async {
        let listed: serde_json::Value = http
            .get(chatd.url("/admin/dead-letters"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed.as_array().unwrap().len()
    };
    common::process_target(&chatd, "audit")
        .stored("alice", "alice,bob", 1)
        .await;
    // The first one is stored: each later one is refused and dead-lettered.
    let mut refused = Vec::new();
    for _ in 0..2 {
        let message = chatd.send("alice", &["alice", "bob"], "twice").await;
        refused.push(message["id"].as_str().unwrap().to_string());
    }
    eventually("both are dead letters", || async {
        (dead_letters().await == 2).then_some(())
    })
    .await;
    on_store(data_dir.path(), "DROP INDEX content_unique");

    let dir = data_dir.path().display().to_string();
    let replayed = run_cli(
        &["dlq", "replay", &refused[0]],
        &[("DATA_DIR", &dir), ("USER", "night-operator")],
    );
    assert!(replayed.status.success(), "{replayed:?}");
    let stderr = String::from_utf8_lossy(&replayed.stderr);
    let audit = stderr
        .lines()
        .find(|line| line.contains("chatd::audit"))
        .unwrap_or_else(|| panic!("no audit line: {stderr}"));
    for field in [
        "by=cli:night-operator",
        "action=\"replay\"",
        &format!("id={}", refused[0]),
        "result=\"replayed\"",
    ] {
        assert!(audit.contains(field), "{field} missing: {audit}");
    }
    let metrics = chatd.metrics().await;
    assert_eq!(
        common::metric(&metrics, "chat_dlq_replays_total{result=\"replayed\"}"),
        1.0,
        "the CLI's replay counts"
    );

    let purged = http
        .delete(chatd.url(&format!("/admin/dead-letters/{}", refused[1])))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    let line = eventually("the purge's audit line", || async {
        chatd
            .logs()
            .into_iter()
            .find(|line| line.contains("chatd::audit") && line.contains("purge"))
    })
    .await;
    assert!(line.contains("by=http"), "{line}");
    assert!(line.contains(&refused[1]), "{line}");
    assert!(line.contains("1 removed"), "{line}");
}
