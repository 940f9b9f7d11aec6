//! The real `chatd` binary as a child process: what `kill -9` and SIGTERM leave behind.
//!
//! Its own test binary, apart from the in-process tests of `api/`: what these tests look at
//! belongs to a chatd process (its exit after a signal, its `ulimit -n`, its resident memory,
//! the gauges of a recorder no other chatd writes), so each runs the built binary as a child.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chatd::app;
use chatd::pipeline::outbox::{Outbox, OutboxCounts};
use chatd::store::SQLITE_FILE;
use common::process::{Chatd, FdLimit, limit_fds, run_to_exit, serve_command};
use common::{eventually, metric, token_for};
use futures_util::{StreamExt, stream};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_the_last_202_loses_nothing_acknowledged() {
    const MESSAGES: usize = 3000;
    const SENDERS: usize = 20;
    let data_dir = tempfile::tempdir().unwrap();
    let secret = "kill-9-secret";
    // A deliberately slow relay, so the kill finds work still in the outbox.
    let slow_relay = [("RELAY_WORKERS", "1"), ("RELAY_BATCH_SIZE", "8")];
    let mut chatd = Chatd::start(data_dir.path(), secret, &slow_relay);

    let senders: Vec<String> = (0..SENDERS).map(|i| format!("sender{i}")).collect();
    let chatd_ref = &chatd;
    let accepted: Vec<Value> = stream::iter(0..MESSAGES)
        .map(|i| {
            let sender = &senders[i % SENDERS];
            async move {
                chatd_ref
                    .send(sender, &[sender, "reader"], &format!("message {i}"))
                    .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    chatd.child.kill().expect("SIGKILL");
    chatd.child.wait().unwrap();
    assert_eq!(accepted.len(), MESSAGES);

    let chatd = Chatd::start(data_dir.path(), secret, &[]);
    eventually("the restarted relay empties the outbox", || async {
        (chatd.pending().await == 0).then_some(())
    })
    .await;
    let mut stored: HashMap<String, Value> = HashMap::new();
    for sender in &senders {
        for message in chatd
            .whole_history("reader", &format!("{sender},reader"))
            .await
        {
            let id = message["id"].as_str().unwrap().to_string();
            assert!(
                stored.insert(id.clone(), message).is_none(),
                "{id} is stored twice"
            );
        }
    }
    assert_eq!(
        stored.len(),
        MESSAGES,
        "history holds exactly the acknowledged messages"
    );
    for message in &accepted {
        assert_eq!(stored.get(message["id"].as_str().unwrap()), Some(message));
    }
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_drains_and_exits_0() {
    let data_dir = tempfile::tempdir().unwrap();
    let secret = "sigterm-secret";
    let mut chatd = Chatd::start(data_dir.path(), secret, &[]);
    let url = format!("ws://{}/ws?token={}", chatd.addr, token_for(secret, "bob"));
    let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut bob = common::WsClient { stream };
    for i in 0..20 {
        chatd
            .send("alice", &["alice", "bob"], &format!("m{i}"))
            .await;
    }

    let pid = i32::try_from(chatd.child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(bob.close_code().await, Some(1001));
    let status = tokio::task::spawn_blocking(move || chatd.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));

    // Read the stopped chatd's outbox file itself: shutdown drained it before exiting.
    let outbox = Outbox::open(
        &data_dir.path().join(app::OUTBOX_FILE),
        1,
        "test",
        Duration::from_secs(60),
        Box::new(|_| {}),
        Default::default(),
    )
    .unwrap();
    assert_eq!(outbox.counts(), OutboxCounts::default());
    drop(outbox);
    let chatd = Chatd::start(data_dir.path(), secret, &[]);
    assert_eq!(chatd.whole_history("bob", "alice,bob").await.len(), 20);
}

/// `--ready-file` is how a program that started chatd with `PORT=0` learns its ports (every
/// `Chatd` here is found through it); it is there exactly while chatd serves.
#[tokio::test]
async fn the_ready_file_names_both_ports_and_is_removed_at_shutdown() {
    let data_dir = tempfile::tempdir().unwrap();
    let chatd = Chatd::start(data_dir.path(), "ready", &[("METRICS_PORT", "0")]);
    let ready_file = chatd.ready_file();
    let ready: Value = serde_json::from_slice(&std::fs::read(&ready_file).unwrap()).unwrap();
    assert_eq!(ready["addr"], chatd.addr.to_string(), "{ready}");
    let metrics_addr = ready["metrics_addr"].as_str().expect("METRICS_PORT is set");
    assert_ne!(metrics_addr, ready["addr"], "{ready}");
    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);

    let pid = i32::try_from(chatd.child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let (status, chatd) = tokio::task::spawn_blocking(move || {
        let mut chatd = chatd;
        (chatd.child.wait().unwrap(), chatd)
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
    let left: Vec<_> = std::fs::read_dir(ready_file.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    drop(chatd);
}

#[tokio::test]
async fn gauges_show_an_unreachable_store_and_what_waits_for_it() {
    let data_dir = tempfile::tempdir().unwrap();
    let uri = common::unreachable_mongo_uri();
    let env = [("MONGO_URI", uri.as_str()), ("STORE_TIMEOUT", "300ms")];
    let chatd = Chatd::start(data_dir.path(), "gauges", &env);
    let _bob = {
        let url = format!(
            "ws://{}/ws?token={}",
            chatd.addr,
            token_for("gauges", "bob")
        );
        tokio_tungstenite::connect_async(url).await.unwrap()
    };
    chatd
        .send("alice", &["alice", "bob"], "waits in the outbox")
        .await;
    chatd.send("alice", &["alice", "bob"], "so does this").await;
    let scrape = chatd.metrics().await;
    assert_eq!(metric(&scrape, "chat_store_up"), 0.0);
    assert_eq!(metric(&scrape, "chat_outbox_depth"), 2.0);
    assert!(metric(&scrape, "chat_outbox_oldest_age_seconds") >= 0.0);
    assert_eq!(metric(&scrape, "chat_ws_connections"), 1.0);
    assert_eq!(metric(&scrape, "chat_messages_accepted_total"), 2.0);
}

/// The healthy readers are assumed to read each round of `ROUND` messages (100 KB) before the
/// next round is sent, which the test enforces by waiting for them: inside their 256 KiB
/// queues however busy the machine, so only the reader that never reads can overflow (once
/// its kernel buffers, up to 4 MiB on loopback, are full too). Rounds are paced (`PACE`
/// apart) so that the slow queue, which takes more than two rounds to fill, overflows slower
/// than `WS_STALL_TIMEOUT`: the verdict is then 4008 (stalled), not 4009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_costs_bounded_memory_and_nobody_else_anything() {
    const HEALTHY: usize = 100;
    const MESSAGES: usize = 1500;
    const ROUND: usize = 25;
    const PACE: Duration = Duration::from_millis(150);
    let data_dir = tempfile::tempdir().unwrap();
    let secret = "slow-secret";
    let env = [
        ("MAX_PARTICIPANTS", "110"),
        ("WS_SEND_QUEUE_BYTES", "262144"),
        ("WS_STALL_TIMEOUT", "100ms"),
    ];
    let chatd = Chatd::start(data_dir.path(), secret, &env);
    let server = common::process_target(&chatd, secret);
    // Never read: the close frame waits behind megabytes it will not read, so the verdict is
    // read from the server's own count (api/sockets.rs checks the close code on a lighter flood).
    let _slow = server.ws_with_small_buffer("slow").await;
    let mut readers = Vec::new();
    for i in 0..HEALTHY {
        readers.push(
            server
                .ws(&format!("healthy{i}"))
                .await
                .spawn_counter("last"),
        );
    }
    let rss_before = chatd.rss_kib();

    let mut everyone: Vec<String> = (0..HEALTHY).map(|i| format!("healthy{i}")).collect();
    everyone.push("slow".into());
    everyone.push("sender".into());
    let everyone: Vec<&str> = everyone.iter().map(String::as_str).collect();
    let page = "p".repeat(4000);
    let mut rss_peak = rss_before;
    for sent in 1..=MESSAGES {
        chatd.send("sender", &everyone, &page).await;
        if sent % ROUND == 0 {
            rss_peak = rss_peak.max(chatd.rss_kib());
            for reader in &mut readers {
                reader.reached(sent).await;
            }
            tokio::time::sleep(PACE).await;
        }
    }
    chatd.send("sender", &everyone, "last").await;
    for reader in readers {
        let (received, _socket) = reader.finish().await;
        assert_eq!(received, MESSAGES + 1, "a healthy socket missed messages");
    }
    server.await_connections("slow", 0).await;
    eventually("the slow socket is closed as a slow consumer", || async {
        let closed = metric(
            &chatd.metrics().await,
            "chat_ws_connections_closed_total{reason=\"slow_consumer\"}",
        );
        (closed == 1.0).then_some(())
    })
    .await;
    rss_peak = rss_peak.max(chatd.rss_kib());
    // The slow socket holds at most WS_SEND_QUEUE_BYTES of frames, which share the message
    // bytes with every other socket: the server grows by buffers, not by the backlog of the
    // slow reader (1,500 messages of 4 KB, 6 MB, which it never reads).
    let growth = rss_peak.saturating_sub(rss_before);
    eprintln!("RSS {rss_before} KiB before, {rss_peak} KiB at the peak");
    assert!(growth < 64 * 1024, "the server grew by {growth} KiB");
}

#[test]
fn caps_set_beyond_ulimit_n_refuse_to_start_with_exit_2() {
    let data_dir = tempfile::tempdir().unwrap();
    let low = FdLimit {
        soft: 512,
        hard: 512,
    };
    for (name, value) in [
        ("MAX_CONNECTIONS", "50000"),
        ("HTTP_MAX_CONNECTIONS", "5000"),
    ] {
        let mut command = serve_command(data_dir.path(), "fds", &[(name, value)]);
        let (status, stderr) = run_to_exit(limit_fds(&mut command, low));
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("invalid configuration: {name}=\"{value}\"")),
            "{stderr}"
        );
        assert!(stderr.contains("ulimit -n is 512"), "{stderr}");
        assert!(stderr.contains(&format!("or lower {name}")), "{stderr}");
    }
    assert!(
        !data_dir.path().join(app::OUTBOX_FILE).exists(),
        "nothing was opened"
    );
}

#[tokio::test]
async fn a_default_max_connections_is_lowered_to_fit_ulimit_n() {
    let data_dir = tempfile::tempdir().unwrap();
    let secret = "lowered";
    // 300 descriptors: 256 reserved, 44 for connections, a quarter of those (11) kept for HTTP
    // requests, 33 for sockets.
    let limit = FdLimit {
        soft: 300,
        hard: 300,
    };
    let chatd = Chatd::start_with_fd_limit(data_dir.path(), secret, &[], limit);
    assert!(
        chatd
            .logs()
            .iter()
            .any(|line| line.contains("MAX_CONNECTIONS lowered")
                && line.contains("max_connections=33")),
        "{:#?}",
        chatd.logs()
    );
    let server = common::process_target(&chatd, secret);
    let mut open = Vec::new();
    for i in 0..33 {
        open.push(server.ws(&format!("user{i}")).await);
    }
    let token = server.token("latecomer");
    assert_eq!(server.ws_refused(&format!("?token={token}")).await, 503);
}

#[test]
fn the_soft_limit_is_raised_to_the_hard_one_before_the_caps_are_fitted() {
    let data_dir = tempfile::tempdir().unwrap();
    // 1,000 sockets do not fit under 300 descriptors, but do under 4,096.
    let limit = FdLimit {
        soft: 300,
        hard: 4096,
    };
    let env = [("MAX_CONNECTIONS", "1000")];
    let chatd = Chatd::start_with_fd_limit(data_dir.path(), "raised", &env, limit);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", chatd.child.id())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .expect("a Max open files line")
        .split_whitespace()
        .collect();
    assert_eq!(open_files[..2], ["4096", "4096"], "{limits}");
}

/// SIGTERM, and the exit status once chatd has stopped.
async fn stop(mut chatd: Chatd) -> std::process::ExitStatus {
    let pid = i32::try_from(chatd.child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    tokio::task::spawn_blocking(move || chatd.child.wait())
        .await
        .unwrap()
        .unwrap()
}

/// Overwrites the root page of `table` (an interior page once the table spans several) in the
/// SQLite file at `path` with garbage.
fn corrupt_table(path: &std::path::Path, table: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let (root, page_size): (i64, i64) = conn
        .query_row(
            "SELECT rootpage, (SELECT page_size FROM pragma_page_size) FROM sqlite_master WHERE name = ?1",
            [table],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    let pages: i64 = conn
        .query_row("SELECT page_count FROM pragma_page_count", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert!(pages > root + 2, "{table} spans several pages");
    drop(conn);
    let mut bytes = std::fs::read(path).unwrap();
    let start = usize::try_from((root - 1) * page_size).unwrap();
    let end = start + usize::try_from(page_size).unwrap();
    bytes[start..end].fill(0xA5);
    std::fs::write(path, bytes).unwrap();
}

/// Starting on a corrupted file must stop with a message naming it, and serve nothing. Returns
/// what chatd said.
fn assert_refuses_corrupted(
    data_dir: &std::path::Path,
    env: &[(&str, &str)],
    file: &str,
) -> String {
    let (status, stderr) = run_to_exit(&mut serve_command(data_dir, "corrupt", env));
    assert!(!status.success(), "{stderr}");
    let named = format!("{}/{file} is corrupted", data_dir.display());
    assert!(stderr.contains(&named), "{stderr}");
    assert!(
        stderr.contains("restore the file from a backup"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
    stderr
}

#[tokio::test]
async fn a_corrupted_outbox_stops_chatd_with_what_to_do() {
    let data_dir = tempfile::tempdir().unwrap();
    // The store is away, so what is accepted stays pending in the outbox.
    let uri = common::unreachable_mongo_uri();
    let env = [
        ("MONGO_URI", uri.as_str()),
        ("STORE_TIMEOUT", "300ms"),
        ("SHUTDOWN_TIMEOUT", "1s"),
    ];
    let chatd = Chatd::start(data_dir.path(), "corrupt", &env);
    let page = "p".repeat(4000);
    for _ in 0..20 {
        chatd.send("alice", &["alice", "bob"], &page).await;
    }
    assert_eq!(chatd.pending().await, 20);
    assert_eq!(stop(chatd).await.code(), Some(0));

    corrupt_table(&data_dir.path().join(app::OUTBOX_FILE), "outbox");
    let stderr = assert_refuses_corrupted(data_dir.path(), &env, app::OUTBOX_FILE);
    assert!(
        stderr.contains("acknowledged (202) but not yet in the store"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_corrupted_embedded_store_stops_chatd_with_what_to_do() {
    let data_dir = tempfile::tempdir().unwrap();
    let chatd = Chatd::start(data_dir.path(), "corrupt", &[]);
    let page = "p".repeat(4000);
    for _ in 0..20 {
        chatd.send("alice", &["alice", "bob"], &page).await;
    }
    eventually("the relay stores every message", || async {
        (chatd.pending().await == 0).then_some(())
    })
    .await;
    assert_eq!(stop(chatd).await.code(), Some(0));

    corrupt_table(&data_dir.path().join(SQLITE_FILE), "messages");
    assert_refuses_corrupted(data_dir.path(), &[], SQLITE_FILE);
}

/// `chatd --help` lists the settings with their defaults, never the values in the environment.
#[test]
fn help_shows_no_secret_from_the_environment() {
    let secret = "do-not-print-this-secret";
    let admin_token = "do-not-print-this-admin-token";
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .arg("--help")
        .env("JWT_SECRET", secret)
        .env("ADMIN_TOKEN", admin_token)
        .output()
        .expect("chatd runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("JWT_SECRET") && help.contains("ADMIN_TOKEN"),
        "{help}"
    );
    assert!(!help.contains(secret), "{help}");
    assert!(!help.contains(admin_token), "{help}");
}
