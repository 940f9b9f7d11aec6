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
        &[("MONGO_URI", &uri), ("STORE_TIMEOUT", "1s")],
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
