//! Reconnect recovery: `/ws?since=<id>` replays what was missed, then goes live, with no gap
//! and no duplicate at the seam.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::{TestServer, eventually};
use serde_json::Value;

const MARKER: &str = "end-of-test";

fn content(message: &Value) -> &str {
    message["content"].as_str().unwrap()
}

#[tokio::test]
async fn a_reconnecting_socket_gets_what_it_missed_in_order_then_the_live_stream() {
    let server = TestServer::start().await;
    let mut bob = server.ws("bob").await;
    let seen = server.send_ok("alice", &["alice", "bob"], "before").await;
    assert_eq!(bob.next_message().await, seen);
    bob.close().await;
    server.await_connections("bob", 0).await;

    let mut missed = Vec::new();
    for i in 0..5 {
        missed.push(
            server
                .send_ok("alice", &["alice", "bob"], &format!("while away {i}"))
                .await,
        );
    }
    server
        .send_ok("bob", &["alice", "bob"], "bob's own, from his phone")
        .await;
    missed.push(
        server
            .send_ok("carol", &["bob", "carol"], "another channel")
            .await,
    );

    let since = format!("&since={}", seen["id"].as_str().unwrap());
    let mut bob = server.ws_with_query("bob", &since).await;
    for expected in &missed {
        assert_eq!(&bob.next_message().await, expected);
    }
    let live = server
        .send_ok("alice", &["alice", "bob"], "live again")
        .await;
    assert_eq!(bob.next_message().await, live);
    server.send_ok("alice", &["alice", "bob"], MARKER).await;
    assert_eq!(bob.messages_until(MARKER).await.len(), 1, "nothing twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seam_has_no_gap_and_no_duplicate_while_messages_keep_coming() {
    let server = Arc::new(TestServer::start().await);
    let mut bob = server.ws("bob").await;
    let seen = server.send_ok("alice", &["alice", "bob"], "before").await;
    assert_eq!(bob.next_message().await, seen);
    bob.close().await;
    server.await_connections("bob", 0).await;

    let sending = Arc::new(AtomicBool::new(true));
    let sender = tokio::spawn({
        let (server, sending) = (server.clone(), sending.clone());
        async move {
            let mut sent = Vec::new();
            while sending.load(Ordering::SeqCst) {
                let message = server
                    .send_ok("alice", &["alice", "bob"], &format!("m{}", sent.len()))
                    .await;
                sent.push(message["id"].as_str().unwrap().to_string());
            }
            sent
        }
    });
    // Reconnect in the middle of the stream.
    eventually("some messages are sent while bob is away", || async {
        (server.history("bob", "participants=alice,bob").await.len() > 20).then_some(())
    })
    .await;
    let since = format!("&since={}", seen["id"].as_str().unwrap());
    let mut bob = server.ws_with_query("bob", &since).await;
    let first_live = bob.next_message().await;
    sending.store(false, Ordering::SeqCst);
    let sent = sender.await.unwrap();
    server.send_ok("alice", &["alice", "bob"], MARKER).await;

    let mut received = vec![first_live];
    received.extend(bob.messages_until(MARKER).await);
    received.pop();
    let ids: Vec<&str> = received.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a message arrived twice");
    let expected: BTreeSet<&str> = sent.iter().map(String::as_str).collect();
    assert_eq!(
        unique, expected,
        "every message sent after `since` arrives, exactly once"
    );
    assert!(received.iter().all(|m| content(m).starts_with('m')));
}

#[tokio::test]
async fn too_many_missed_messages_tell_the_client_to_page_history() {
    let server = TestServer::start_with(&[("RECOVERY_LIMIT", "3")]).await;
    let seen = server.send_ok("alice", &["alice", "bob"], "before").await;
    for i in 0..5 {
        server
            .send_ok("alice", &["alice", "bob"], &format!("missed {i}"))
            .await;
    }
    let since = format!("&since={}", seen["id"].as_str().unwrap());
    let mut bob = server.ws_with_query("bob", &since).await;
    let notice = bob.next_message().await;
    assert_eq!(notice["type"], "recovery_limit_exceeded");
    assert_eq!(notice["limit"], 3);
    let live = server.send_ok("alice", &["alice", "bob"], "live").await;
    assert_eq!(bob.next_message().await, live);
}

#[tokio::test]
async fn since_must_be_a_message_id() {
    let server = TestServer::start().await;
    let token = server.token("bob");
    assert_eq!(
        server
            .ws_refused(&format!("?token={token}&since=yesterday"))
            .await,
        400
    );
    assert_eq!(
        server.connections(&["bob"]).await["bob"],
        0,
        "a refused upgrade registers nothing"
    );
}

/// What a listener that keeps dropping its socket saw, by message id.
#[derive(Default)]
struct Seen {
    counts: std::collections::HashMap<String, usize>,
    last: Option<String>,
}

/// Concurrent senders and a listener that disconnects after a random number of frames and
/// reconnects with `since` = the last id it got: the union of what it saw is exactly what was
/// acknowledged, each message once. The relay moves messages from the outbox to the store the
/// whole time, so reconnects also cross that seam. Seeded; the seed is printed on failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_reconnecting_at_random_frames_sees_every_acknowledged_message_once() {
    use rand::{Rng, SeedableRng};
    const SENDERS: usize = 6;
    const PER_SENDER: usize = 120;
    for seed in [1_u64, 2, 3] {
        let server = Arc::new(TestServer::start().await);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let acked = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        // Connected before anything is sent: a first socket has no `since` to recover from.
        let mut first = Some(server.ws("listener").await);
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let (server, acked) = (server.clone(), acked.clone());
                tokio::spawn(async move {
                    let sender = format!("sender{s}");
                    for i in 0..PER_SENDER {
                        let message = server
                            .send_ok(&sender, &[&sender, "listener"], &format!("{s}:{i}"))
                            .await;
                        let id = message["id"].as_str().unwrap().to_string();
                        acked.lock().unwrap().insert(id);
                    }
                })
            })
            .collect();

        let mut seen = Seen::default();
        let total = SENDERS * PER_SENDER;
        let mut reconnects = 0;
        while seen.counts.len() < total {
            let query = match &seen.last {
                Some(last) => format!("&since={last}"),
                None => String::new(),
            };
            let mut socket = match first.take() {
                Some(socket) => socket,
                None => server.ws_with_query("listener", &query).await,
            };
            let frames = rng.random_range(1..=25);
            for _ in 0..frames {
                if seen.counts.len() == total {
                    break;
                }
                let message = socket.next_message().await;
                let id = message["id"].as_str().expect("a message frame").to_string();
                *seen.counts.entry(id.clone()).or_default() += 1;
                seen.last = Some(id);
            }
            socket.close().await;
            reconnects += 1;
        }
        for sender in senders {
            sender.await.unwrap();
        }
        let twice: Vec<_> = seen.counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "seed {seed}: seen more than once: {twice:?}"
        );
        let got: BTreeSet<String> = seen.counts.into_keys().collect();
        assert_eq!(
            got,
            *acked.lock().unwrap(),
            "seed {seed}: what the listener saw over {reconnects} reconnects"
        );
    }
}

/// Recoveries take turns (`RECOVERY_CONCURRENCY`), each holding its turn until its missed
/// messages are written. A replay of 12 MB to a client that does not read cannot be written
/// (the kernel buffers a few MB at most), so its turn stays taken: another recovering upgrade
/// is refused with 503 and `Retry-After`, and gets in once the first reader has read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recoveries_take_turns_and_an_upgrade_without_one_is_told_to_retry() {
    let server = TestServer::start_with(&[
        ("RECOVERY_CONCURRENCY", "1"),
        ("MAX_MESSAGE_BYTES", "60000"),
    ])
    .await;
    let first = server.send_ok("alice", &["alice", "bob"], "first").await;
    let big = "x".repeat(60_000);
    for _ in 0..200 {
        server.send_ok("alice", &["alice", "bob"], &big).await;
    }
    server.send_ok("alice", &["alice", "bob"], MARKER).await;
    let since = format!("&since={}", first["id"].as_str().unwrap());
    let mut holding = server.ws_with_small_buffer_and_query("bob", &since).await;
    let token = server.token("bob");
    assert_eq!(
        server.ws_refused(&format!("?token={token}{since}")).await,
        503,
        "no turn is free while the first replay is unread"
    );
    // A socket without `since` needs no turn.
    let _live = server.ws("bob").await;

    assert_eq!(holding.messages_until(MARKER).await.len(), 201);
    let mut later = eventually("a turn is free again", || async {
        let url = format!("ws://{}/ws?token={token}{since}", server.addr);
        tokio_tungstenite::connect_async(url).await.ok()
    })
    .await
    .0;
    use futures_util::StreamExt;
    let replayed = later.next().await.unwrap().unwrap();
    assert!(
        replayed
            .into_text()
            .unwrap()
            .contains("\"sender\":\"alice\"")
    );
}

/// Waits until the relay has moved everything into the store, so a replay reads the store's
/// pages and not the outbox.
async fn await_all_stored(server: &TestServer) {
    eventually("the outbox is empty", || async {
        (server.health().await["outbox"]["pending"] == 0).then_some(())
    })
    .await;
}

/// Reconnects as `reader` with `since` and checks that exactly `expected` is replayed, in
/// order, and that nothing more comes before the live stream.
async fn replays_exactly(server: &TestServer, reader: &str, since: &Value, expected: &[&Value]) {
    let query = format!("&since={}", since["id"].as_str().unwrap());
    let mut socket = server.ws_with_query(reader, &query).await;
    for (i, want) in expected.iter().enumerate() {
        let got = socket.next_message().await;
        assert_eq!(
            &&got,
            want,
            "{reader}: replayed frame {i} of {}",
            expected.len()
        );
    }
    // In a channel of the reader's alone, so no other reader's replay has it.
    server.send_ok("alice", &["alice", reader], MARKER).await;
    assert_eq!(
        socket.messages_until(MARKER).await.len(),
        1,
        "{reader}: nothing beyond the expected {} before the live stream",
        expected.len()
    );
}

/// The store is read a page at a time as the socket writes: replays of exactly one page, one
/// more than a page and exactly the limit (several pages) arrive whole, in order, with the
/// reader's own messages (which count towards the limit) skipped across page boundaries; one
/// more than the limit is the notice.
#[tokio::test]
async fn replays_of_several_pages_arrive_whole_up_to_the_limit_exactly() {
    let page = chatd::pipeline::recovery::PAGE as usize;
    let limit = 2 * page + 1;
    let server = TestServer::start_with(&[("RECOVERY_LIMIT", &limit.to_string())]).await;
    let group = ["alice", "bob", "carol", "dave", "erin"];
    let since = server.send_ok("alice", &group, "before").await;
    let mut sent = Vec::new();
    for i in 0..=limit {
        // Bob's own now and then, one of them on the first page boundary.
        let sender = if i % 50 == page % 50 { "bob" } else { "alice" };
        sent.push(server.send_ok(sender, &group, &format!("m{i}")).await);
    }
    await_all_stored(&server).await;
    let others_after = |reader: &str, k: usize| -> Vec<&Value> {
        sent[k + 1..]
            .iter()
            .filter(|m| m["sender"] != reader)
            .collect()
    };

    // `limit + 1` missed, bob's own counted: the notice, then live.
    let query = format!("&since={}", since["id"].as_str().unwrap());
    let mut erin = server.ws_with_query("erin", &query).await;
    let notice = erin.next_message().await;
    assert_eq!(notice["type"], "recovery_limit_exceeded");
    assert_eq!(notice["limit"], limit);

    let checks = [
        ("bob", 0, limit),
        ("carol", limit - page - 1, page + 1),
        ("dave", limit - page, page),
    ];
    for (reader, k, missed) in checks {
        assert_eq!(sent.len() - k - 1, missed);
        replays_exactly(&server, reader, &sent[k], &others_after(reader, k)).await;
    }
}
