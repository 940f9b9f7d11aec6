//! The original Go service's integration scenarios, against a real chatd, and (from
//! `cluster`) against the instances of one cluster: each scenario takes the instances, puts
//! user `i`'s socket on instance `i % n` and sends user `i`'s messages through instance
//! `i + 1`, so that with several instances every message crosses from one to another.
//!
//! "Receives nothing else" is checked with a barrier, not a sleep: after the scenario's sends
//! are acknowledged, a marker message is sent to each listener through every instance. Each
//! socket gets one instance's frames in the order that instance accepted them, so anything
//! that would have reached it arrives before the last of its markers.

use std::collections::BTreeSet;

use crate::common::{TestServer, WsClient};
use futures_util::future::join_all;
use serde_json::Value;

const MARKER: &str = "end-of-scenario";

async fn send_marker(server: &TestServer, to: &str) {
    server.send_ok("marker", &["marker", to], MARKER).await;
}

/// Where user `i` listens.
fn home(instances: &[TestServer], i: usize) -> &TestServer {
    &instances[i % instances.len()]
}

/// Where user `i` sends.
fn via(instances: &[TestServer], i: usize) -> &TestServer {
    &instances[(i + 1) % instances.len()]
}

/// What each user's socket received (markers aside) once everything sent so far has arrived.
async fn received_by(
    instances: &[TestServer],
    users: &[&str],
    sockets: &mut [WsClient],
) -> Vec<Vec<Value>> {
    for user in users {
        for instance in instances {
            send_marker(instance, user).await;
        }
    }
    let mut everyone = Vec::new();
    for socket in sockets {
        let mut received = Vec::new();
        for _ in instances {
            received.extend(socket.messages_until(MARKER).await);
            received.pop();
        }
        everyone.push(received);
    }
    everyone
}

#[tokio::test]
async fn ten_users_each_message_the_other_nine_at_once() {
    ten_users_message_the_other_nine(&[TestServer::start().await]).await;
}

pub async fn ten_users_message_the_other_nine(instances: &[TestServer]) {
    let users: Vec<String> = (0..10).map(|i| format!("user{i}")).collect();
    let mut sockets = Vec::new();
    for (i, user) in users.iter().enumerate() {
        sockets.push(home(instances, i).ws(user).await);
    }

    let sends = users.iter().enumerate().flat_map(|(i, from)| {
        let server = via(instances, i);
        users
            .iter()
            .filter(move |to| *to != from)
            .map(move |to| async move {
                server
                    .send_ok(from, &[from, to], &format!("{from}->{to}"))
                    .await
            })
    });
    let accepted = join_all(sends).await;
    assert_eq!(accepted.len(), 90);

    let user_names: Vec<&str> = users.iter().map(String::as_str).collect();
    let everyone = received_by(instances, &user_names, &mut sockets).await;
    for (user, received) in users.iter().zip(everyone) {
        let senders: BTreeSet<&str> = received
            .iter()
            .map(|m| m["sender"].as_str().unwrap())
            .collect();
        let expected: BTreeSet<&str> = users
            .iter()
            .filter(|u| *u != user)
            .map(String::as_str)
            .collect();
        assert_eq!(received.len(), 9, "{user} got {received:?}");
        assert_eq!(
            senders, expected,
            "{user} must get one message from each other user, none of its own"
        );
        for message in &received {
            assert_eq!(
                message["content"],
                format!("{}->{user}", message["sender"].as_str().unwrap())
            );
        }
    }

    // Every 1:1 channel ends up with both directions stored.
    for (i, a) in users.iter().enumerate() {
        for b in &users[i + 1..] {
            let stored = home(instances, i).stored(a, &format!("{a},{b}"), 2).await;
            let contents: BTreeSet<&str> = stored
                .iter()
                .map(|m| m["content"].as_str().unwrap())
                .collect();
            assert_eq!(
                contents,
                BTreeSet::from([format!("{a}->{b}").as_str(), format!("{b}->{a}").as_str()])
            );
        }
    }
}

#[tokio::test]
async fn a_group_of_five_each_sending_one() {
    group_of_five_each_sending_one(&[TestServer::start().await]).await;
}

pub async fn group_of_five_each_sending_one(instances: &[TestServer]) {
    let group = ["ana", "ben", "cy", "dee", "eve"];
    let mut sockets = Vec::new();
    for (i, user) in group.iter().enumerate() {
        sockets.push(home(instances, i).ws(user).await);
    }
    let contents: Vec<String> = group
        .iter()
        .map(|from| format!("hello from {from}"))
        .collect();
    join_all(
        group
            .iter()
            .zip(&contents)
            .enumerate()
            .map(|(i, (from, content))| via(instances, i).send_ok(from, &group, content)),
    )
    .await;

    let everyone = received_by(instances, &group, &mut sockets).await;
    for (user, received) in group.iter().zip(everyone) {
        let senders: BTreeSet<&str> = received
            .iter()
            .map(|m| m["sender"].as_str().unwrap())
            .collect();
        assert_eq!(received.len(), 4, "{user} got {received:?}");
        assert!(!senders.contains(user), "{user} received its own message");
        for message in &received {
            assert_eq!(
                message["participants"],
                serde_json::json!(["ana", "ben", "cy", "dee", "eve"])
            );
        }
    }
    for (i, user) in group.iter().enumerate() {
        home(instances, i)
            .stored(user, "eve,dee,cy,ben,ana", 5)
            .await;
    }
}

#[tokio::test]
async fn twenty_five_messages_paged_by_ten() {
    twenty_five_messages_paged(&[TestServer::start().await]).await;
}

/// Sent one at a time, each through the next instance, and read back through every instance.
pub async fn twenty_five_messages_paged(instances: &[TestServer]) {
    for i in 0..25 {
        via(instances, i)
            .send_ok("alice", &["alice", "bob"], &format!("message {i:02}"))
            .await;
    }
    home(instances, 0).stored("alice", "alice,bob", 25).await;

    let mut seen = Vec::new();
    for (page, expected) in [(0, 10), (1, 10), (2, 5), (3, 0)] {
        let messages = home(instances, page)
            .history(
                "bob",
                &format!("participants=alice,bob&page={page}&size=10"),
            )
            .await;
        assert_eq!(messages.len(), expected, "page {page}");
        seen.extend(
            messages
                .into_iter()
                .map(|m| m["content"].as_str().unwrap().to_string()),
        );
    }
    let newest_first: Vec<String> = (0..25).rev().map(|i| format!("message {i:02}")).collect();
    assert_eq!(
        seen, newest_first,
        "pages are newest first, with no overlap and no gap"
    );
}

#[tokio::test]
async fn a_non_participant_can_neither_send_nor_read() {
    non_participant_refused(&[TestServer::start().await]).await;
}

pub async fn non_participant_refused(instances: &[TestServer]) {
    via(instances, 0)
        .send_ok("alice", &["alice", "bob"], "private")
        .await;
    let server = via(instances, 1);
    let response = server.send("mallory", &["alice", "bob"], "let me in").await;
    assert_eq!(response.status(), 403);
    let (status, body) = server
        .get_history("mallory", "participants=alice,bob")
        .await;
    assert_eq!(status, 403);
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn an_invalid_token_is_401() {
    invalid_token_refused(&TestServer::start().await).await;
}

pub async fn invalid_token_refused(server: &TestServer) {
    let response = server
        .http
        .post(server.url("/api/messages"))
        .bearer_auth("not-a-jwt")
        .json(&serde_json::json!({"participants": ["a"], "content": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(server.ws_refused("?token=not-a-jwt").await, 401);
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let server =
        TestServer::start_with(&[("RATE_LIMIT_RPS", "0.5"), ("RATE_LIMIT_BURST", "3")]).await;
    let mut carol = server.ws("carol").await;
    for i in 0..3 {
        server
            .send_ok(
                "alice",
                &["alice", "carol"],
                &format!("within the burst {i}"),
            )
            .await;
    }
    let refused = server
        .send("alice", &["alice", "carol"], "one too many")
        .await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body["error"].is_string());

    // Buckets are per user, and the refused send went nowhere.
    server
        .send_ok("bob", &["bob", "carol"], "bob has his own bucket")
        .await;
    send_marker(&server, "carol").await;
    let received: Vec<String> = carol
        .messages_until(MARKER)
        .await
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        received,
        [
            "within the burst 0",
            "within the burst 1",
            "within the burst 2",
            "bob has his own bucket",
            MARKER
        ]
    );
}
