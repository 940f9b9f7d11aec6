//! Socket behaviour: slow consumers, heartbeats, inbound frames and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::{Seen, TestServer, eventually};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The healthy reader is assumed to read each round of `ROUND` messages (240 KB) before the
/// next is sent, which the test enforces by waiting for it: that stays far inside its 1 MiB
/// queue however busy the machine, so only the reader that never reads can overflow. The flood
/// is paced (`PACE` between messages, so filling the slow queue takes at least 17 × PACE)
/// to overflow slower than `WS_STALL_TIMEOUT`: by then the stuck writer has made no progress
/// for the stall timeout and the verdict is 4008, not 4009 (which a queue overflowing faster
/// than its writer could be judged would get).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_with_4008_and_never_stalls_the_others() {
    const MESSAGES: usize = 400;
    const ROUND: usize = 4;
    const PACE: std::time::Duration = std::time::Duration::from_millis(20);
    let server = TestServer::start_with(&[
        ("WS_SEND_QUEUE_BYTES", "1048576"),
        ("WS_STALL_TIMEOUT", "100ms"),
        ("MAX_MESSAGE_BYTES", "60000"),
    ])
    .await;
    let slow = server.ws_with_small_buffer("slow").await; // reads nothing until evicted
    let mut fast = server.ws("fast").await.spawn_counter("last");
    let slow_closed = server.close_code_after_eviction("slow", slow);

    let big = "x".repeat(60_000);
    for sent in 1..=MESSAGES {
        server
            .send_ok("sender", &["sender", "slow", "fast"], &big)
            .await;
        if sent % ROUND == 0 {
            fast.reached(sent).await;
        }
        tokio::time::sleep(PACE).await;
    }
    server.send_ok("sender", &["sender", "fast"], "last").await;
    // The healthy socket received every message, and stays open.
    let (received, _fast) = fast.finish().await;
    assert_eq!(received, MESSAGES + 1);
    assert_eq!(server.connections(&["fast"]).await["fast"], 1);
    assert_eq!(slow_closed.await.unwrap(), Some(4008));
}

/// A burst of the server's own making: 2,000 messages offered within about a second to a
/// channel of 200 readers. Each reader's whole backlog (2,000 frames of ~250 bytes) fits in
/// its default 4 MiB queue, so however far behind the burst leaves a reader that keeps
/// reading, it is never evicted and gets every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_never_evicts_sockets_that_keep_reading() {
    const READERS: usize = 200;
    const MESSAGES: usize = 2000;
    const SENDERS: usize = 16;
    let server = TestServer::start_with(&[("MAX_PARTICIPANTS", "250")]).await;
    let names: Vec<String> = (0..READERS).map(|i| format!("reader{i}")).collect();
    let mut counters = Vec::new();
    for name in &names {
        counters.push(server.ws(name).await.spawn_counter("last"));
    }
    let mut channel: Vec<&str> = names.iter().map(String::as_str).collect();
    channel.push("sender");

    let server = Arc::new(server);
    let sends: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (server, channel) = (server.clone(), channel.iter().map(|n| n.to_string()));
            let channel: Vec<String> = channel.collect();
            tokio::spawn(async move {
                let channel: Vec<&str> = channel.iter().map(String::as_str).collect();
                for i in (s..MESSAGES).step_by(SENDERS) {
                    server
                        .send_ok("sender", &channel, &format!("burst {i}"))
                        .await;
                }
            })
        })
        .collect();
    for send in sends {
        send.await.unwrap();
    }
    server.send_ok("sender", &channel, "last").await;
    let mut sockets = Vec::new();
    for counter in counters {
        let (received, socket) = counter.finish().await;
        assert_eq!(received, MESSAGES + 1, "a reading socket missed frames");
        sockets.push(socket);
    }
    let counts = server.connections(&channel[..READERS]).await;
    assert!(
        names.iter().all(|name| counts[name] == 1),
        "every reader is still connected: {counts}"
    );
}

#[tokio::test]
async fn a_socket_that_does_not_answer_pings_is_closed() {
    let server =
        TestServer::start_with(&[("WS_PING_INTERVAL", "100ms"), ("WS_PONG_TIMEOUT", "500ms")])
            .await;
    let _silent = server.ws("silent").await; // never reads, so never answers a ping
    let mut answering = server.ws("answering").await;
    let pings = Arc::new(AtomicUsize::new(0));
    let counted = pings.clone();
    // Reading is what answers pings: the client library replies to each one it reads.
    let reader = tokio::spawn(async move {
        while let Seen::Ping = answering.next().await {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });

    server.await_connections("silent", 0).await;
    // Twice the pong timeout later, the socket that answers is still there.
    let seen = pings.load(Ordering::SeqCst);
    eventually("ten more pings", || async {
        (pings.load(Ordering::SeqCst) >= seen + 10).then_some(())
    })
    .await;
    assert_eq!(server.connections(&["answering"]).await["answering"], 1);
    reader.abort();
}

#[tokio::test]
async fn inbound_frames_are_ignored_and_oversized_ones_end_the_socket() {
    let server = TestServer::start_with(&[("WS_MAX_INBOUND_BYTES", "1024")]).await;
    let mut bob = server.ws("bob").await;
    bob.send_raw(WsMessage::text(
        "{\"participants\":[\"bob\",\"alice\"],\"content\":\"sneaky\"}",
    ))
    .await;
    bob.send_raw(WsMessage::binary(vec![0u8; 512])).await;
    let sent = server
        .send_ok("alice", &["alice", "bob"], "still here")
        .await;
    assert_eq!(
        bob.next_message().await,
        sent,
        "data frames from clients change nothing"
    );
    server.stored("bob", "alice,bob", 1).await;

    bob.send_raw(WsMessage::text("x".repeat(2048))).await;
    server.await_connections("bob", 0).await;
    assert!(matches!(bob.next().await, Seen::Closed(_)));
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001_and_history_is_whole_after_it() {
    let mut server = TestServer::start().await;
    let mut bob = server.ws("bob").await;
    let mut accepted = Vec::new();
    for i in 0..50 {
        accepted.push(
            server
                .send_ok("alice", &["alice", "bob"], &format!("m{i}"))
                .await,
        );
    }
    let closing = tokio::spawn(async move { bob.close_code().await });
    server.restart().await;
    assert_eq!(closing.await.unwrap(), Some(1001));
    let history = server.stored("bob", "alice,bob", 50).await;
    accepted.reverse();
    assert_eq!(history, accepted);
}

#[tokio::test]
async fn fragmented_frames_are_read_and_invalid_utf8_ends_only_that_socket() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let server = TestServer::start().await;
    let mut bob = server.ws("bob").await;
    // A text message in two fragments: read, and ignored like any client data.
    bob.send_raw(WsMessage::Frame(Frame::message(
        "{\"hello\":",
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    bob.send_raw(WsMessage::Frame(Frame::message(
        "\"there\"}",
        OpCode::Data(Data::Continue),
        true,
    )))
    .await;
    let sent = server
        .send_ok("alice", &["alice", "bob"], "after fragments")
        .await;
    assert_eq!(bob.next_message().await, sent);

    // A text frame that is not UTF-8 breaks the protocol: that socket ends, nobody else's.
    let mut carol = server.ws("carol").await;
    bob.send_raw(WsMessage::Frame(Frame::message(
        vec![0xff, 0xfe, 0xfd],
        OpCode::Data(Data::Text),
        true,
    )))
    .await;
    server.await_connections("bob", 0).await;
    let sent = server
        .send_ok("alice", &["alice", "carol"], "still serving")
        .await;
    assert_eq!(carol.next_message().await, sent);
}

/// A reader so far behind that its queue overflows, while its writer is never judged stalled
/// (the stall timeout is an hour): it loses frames, is told so with 4009 and the id to
/// reconnect from, and reconnecting with that `since` gives it exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_queue_overflowed_is_told_where_to_resume_and_misses_nothing() {
    const MESSAGES: usize = 160; // 9.6 MB: past the kernel's buffers and the 1 MiB queue
    let server = TestServer::start_with(&[
        ("WS_SEND_QUEUE_BYTES", "1048576"),
        ("WS_STALL_TIMEOUT", "1h"),
        ("MAX_MESSAGE_BYTES", "60000"),
    ])
    .await;
    let mut behind = server.ws_with_small_buffer("behind").await; // does not read yet
    let mut sent = Vec::new();
    for i in 0..MESSAGES {
        let content = format!("{i:04}{}", "x".repeat(60_000 - 4));
        let message = server
            .send_ok("sender", &["sender", "behind"], &content)
            .await;
        sent.push(message["id"].as_str().unwrap().to_string());
    }
    server.await_connections("behind", 0).await; // the overflow took it out of the hub

    let mut seen = Vec::new();
    let close = loop {
        match behind.next().await {
            Seen::Message(message) => seen.push(message["id"].as_str().unwrap().to_string()),
            Seen::Ping => {}
            Seen::Closed(frame) => break frame.expect("a close frame"),
        }
    };
    assert_eq!(u16::from(close.code), 4009, "{close:?}");
    let last = seen.last().expect("frames before the loss");
    assert_eq!(
        close.reason.as_str(),
        format!("missed frames: reconnect with since={last}")
    );
    assert!(seen.len() < MESSAGES, "frames were lost");
    assert_eq!(seen[..], sent[..seen.len()], "what it got has no hole");

    let mut resumed = server
        .ws_with_query("behind", &format!("&since={last}"))
        .await;
    for id in &sent[seen.len()..] {
        assert_eq!(resumed.next_message().await["id"], id.as_str());
    }
}
