//! The real `chatd` binary as a child process: what `kill -9` and SIGTERM leave behind.

mod common;

use std::collections::HashMap;

use chatd::app;
use chatd::outbox::{Outbox, OutboxCounts};
use common::process::Chatd;
use common::{eventually, token_for};
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
    let outbox = Outbox::open(&data_dir.path().join(app::OUTBOX_FILE), 1, "test").unwrap();
    assert_eq!(outbox.counts(), OutboxCounts::default());
    drop(outbox);
    let chatd = Chatd::start(data_dir.path(), secret, &[]);
    assert_eq!(chatd.whole_history("bob", "alice,bob").await.len(), 20);
}

/// The value of one exact series line of a scrape.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} is not in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn gauges_show_an_unreachable_store_and_what_waits_for_it() {
    let data_dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let uri = format!("mongodb://{closed}");
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
