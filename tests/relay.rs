//! The relay on the embedded store: a message the store refuses never delays the others, and a
//! store that cannot be used holds messages in the outbox instead of dead-lettering them.
//!
//! Its own test binary, for the metrics recorder: there is one per process, so counters are
//! compared before and after, and only this file's outage test makes batches "unavailable"
//! (beside the tests of `api/`, the MongoDB outages would too).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{TestServer, eventually, metric};
use serde_json::{Value, json};

const UNAVAILABLE_BATCHES: &str = "chat_persist_batches_total{result=\"unavailable\"}";

/// A connection to one of the running chatd's SQLite files in its data directory.
fn open(server: &TestServer, file: &str) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(server.data_dir.path().join(file)).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

/// Runs statements on the embedded store's own file, beside the running chatd.
fn on_store(server: &TestServer, sql: &str) {
    common::on_store(server.data_dir.path(), sql);
}

fn count(server: &TestServer, file: &str, query: &str) -> u64 {
    open(server, file)
        .query_row(query, [], |row| row.get(0))
        .unwrap()
}

async fn unavailable_batches(server: &TestServer) -> f64 {
    metric(&server.scrape().await, UNAVAILABLE_BATCHES)
}

fn ids(messages: &[Value]) -> BTreeSet<String> {
    messages
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_message_sent_after_poison_reaches_history_within_a_second() {
    // The default backoff (100 ms doubling, with jitter): nine attempts take at least 12.75 s,
    // so no poison message is dead before the healthy one is stored.
    let server = TestServer::start_with(&[("RETRY_ATTEMPTS", "9")]).await;
    on_store(
        &server,
        "CREATE UNIQUE INDEX content_unique ON messages (content)",
    );
    server.send_ok("alice", &["alice", "bob"], "poison").await;
    server.stored("alice", "alice,bob", 1).await;
    for _ in 0..10 {
        server.send_ok("alice", &["alice", "bob"], "poison").await;
    }
    eventually("every poison message was refused at least once", || async {
        let refused = count(
            &server,
            chatd::app::OUTBOX_FILE,
            "SELECT COUNT(*) FROM outbox WHERE attempts >= 1",
        );
        (refused == 10).then_some(())
    })
    .await;

    let healthy = server.send_ok("bob", &["alice", "bob"], "healthy").await;
    let sent = Instant::now();
    eventually("the healthy message is in history", || async {
        let page = server.history("alice", "participants=alice,bob").await;
        page.contains(&healthy).then_some(())
    })
    .await;
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the healthy message took {took:?} to reach history"
    );
    // The outbox forgets the healthy message a moment after the store has it; the poison
    // messages are still being retried.
    eventually("only the poison messages are pending", || async {
        let outbox = server.health().await["outbox"].clone();
        (outbox == json!({"pending": 10, "dead_lettered": 0})).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_unusable_embedded_store_holds_messages_until_it_is_restored() {
    // One attempt: had the outage spent an attempt, the message would be a dead letter.
    let server = TestServer::start_with(&[
        ("RETRY_ATTEMPTS", "1"),
        ("RETRY_BASE_MS", "10"),
        ("RETRY_MAX_MS", "200"),
    ])
    .await;
    let mut sent = vec![server.send_ok("alice", &["alice", "bob"], "before").await];
    server.stored("alice", "alice,bob", 1).await;
    let unavailable_before = unavailable_batches(&server).await;

    on_store(&server, "ALTER TABLE messages RENAME TO messages_away");
    for i in 0..20 {
        sent.push(
            server
                .send_ok("alice", &["alice", "bob"], &format!("during {i}"))
                .await,
        );
    }
    eventually("the relay finds the store unavailable", || async {
        (unavailable_batches(&server).await > unavailable_before).then_some(())
    })
    .await;
    let body = eventually("/ready says the store is down", || async {
        let (status, body) = server.ready().await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["error"], "not ready: the store is unreachable");
    let health = server.health().await;
    assert_eq!(health["store"]["up"], false);
    assert_eq!(health["outbox"], json!({"pending": 20, "dead_lettered": 0}));
    let (status, body) = server.get_history("bob", "participants=alice,bob").await;
    assert_eq!(status, 503, "history says the store is away: {body}");
    assert_eq!(
        count(
            &server,
            chatd::store::SQLITE_FILE,
            "SELECT COUNT(*) FROM dead_letters"
        ),
        0
    );

    on_store(&server, "ALTER TABLE messages_away RENAME TO messages");
    let stored = server.stored("bob", "alice,bob", sent.len()).await;
    assert_eq!(ids(&stored), ids(&sent), "every message is stored, once");
    eventually("the store is ready again", || async {
        (server.ready().await.0 == 200).then_some(())
    })
    .await;
    // History shows a message once the store has it; the outbox forgets it a moment later.
    eventually("the outbox is empty", || async {
        let outbox = server.health().await["outbox"].clone();
        (outbox == json!({"pending": 0, "dead_lettered": 0})).then_some(())
    })
    .await;
    assert_eq!(
        count(
            &server,
            chatd::store::SQLITE_FILE,
            "SELECT COUNT(*) FROM dead_letters"
        ),
        0
    );
}
