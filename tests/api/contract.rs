//! The contract's API beyond the original's scenarios: formats, refusals, cursors and sockets.

use crate::common::{TestServer, WsClient, eventually, token_for};
use serde_json::{Value, json};

const MARKER: &str = "end-of-test";

#[tokio::test]
async fn the_accepted_message_is_the_same_in_the_reply_on_the_socket_and_in_history() {
    let server = TestServer::start().await;
    let mut bob = server.ws("bob").await;
    let accepted = server
        .send_ok("alice", &["bob", "alice", "bob"], "Hello everyone!")
        .await;

    assert_eq!(accepted["sender"], "alice");
    assert_eq!(accepted["content"], "Hello everyone!");
    assert_eq!(accepted["participants"], json!(["alice", "bob"]));
    let id = uuid::Uuid::parse_str(accepted["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7);
    let created_at = accepted["created_at"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(created_at).is_ok());
    assert!(
        created_at.ends_with('Z') && created_at.len() == 24,
        "{created_at}"
    );

    assert_eq!(bob.next_message().await, accepted);
    assert_eq!(server.stored("bob", "alice,bob", 1).await, vec![accepted]);
}

#[tokio::test]
async fn participant_order_and_duplicates_do_not_matter() {
    let server = TestServer::start().await;
    server.send_ok("alice", &["bob", "alice"], "one").await;
    server
        .send_ok("bob", &["alice", "bob", "alice"], "two")
        .await;
    let stored = server.stored("alice", "alice,bob", 2).await;
    for query in ["bob,alice", "alice,bob,bob"] {
        assert_eq!(
            server
                .history("bob", &format!("participants={query}"))
                .await,
            stored
        );
    }
    // A channel of one is its own channel.
    server.send_ok("alice", &["alice"], "note to self").await;
    assert_eq!(
        server.stored("alice", "alice", 1).await[0]["content"],
        "note to self"
    );
    assert_eq!(
        server
            .history("alice", "participants=alice,bob")
            .await
            .len(),
        2
    );
}

#[tokio::test]
async fn every_socket_of_a_user_receives_and_is_counted() {
    let server = TestServer::start().await;
    let mut alice = vec![
        server.ws("alice").await,
        server.ws("alice").await,
        server.ws("alice").await,
    ];
    let _bob = server.ws("bob").await;
    assert_eq!(
        server.connections(&["alice", "bob", "carol"]).await,
        json!({"alice": 3, "bob": 1, "carol": 0})
    );

    let sent = server
        .send_ok("bob", &["alice", "bob"], "to all of alice's sockets")
        .await;
    for socket in &mut alice {
        assert_eq!(socket.next_message().await, sent);
    }

    alice.pop().unwrap().close().await;
    alice.pop().unwrap().close().await;
    server.await_connections("alice", 1).await;
    assert_eq!(
        server.connections(&["alice", "bob"]).await,
        json!({"alice": 1, "bob": 1})
    );
}

#[tokio::test]
async fn the_sender_s_own_sockets_never_get_its_message() {
    let server = TestServer::start().await;
    let mut alice_elsewhere = server.ws("alice").await;
    server
        .send_ok("alice", &["alice", "bob"], "from alice's phone")
        .await;
    server.send_ok("bob", &["alice", "bob"], MARKER).await;
    let received = alice_elsewhere.messages_until(MARKER).await;
    assert_eq!(received.len(), 1, "alice's other socket got {received:?}");
}

#[tokio::test]
async fn the_cursor_stays_correct_while_new_messages_arrive() {
    let server = TestServer::start().await;
    for i in 0..15 {
        server
            .send_ok("alice", &["alice", "bob"], &format!("old {i:02}"))
            .await;
    }
    server.stored("alice", "alice,bob", 15).await;
    let first = server
        .history("alice", "participants=alice,bob&size=5")
        .await;
    let contents = |page: &[Value]| -> Vec<String> {
        page.iter()
            .map(|m| m["content"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        contents(&first),
        ["old 14", "old 13", "old 12", "old 11", "old 10"]
    );

    for i in 0..3 {
        server
            .send_ok("bob", &["alice", "bob"], &format!("new {i}"))
            .await;
    }
    server.stored("alice", "alice,bob", 18).await;
    let last_id = first.last().unwrap()["id"].as_str().unwrap();
    let second = server
        .history(
            "alice",
            &format!("participants=alice,bob&size=5&before={last_id}"),
        )
        .await;
    assert_eq!(
        contents(&second),
        ["old 09", "old 08", "old 07", "old 06", "old 05"]
    );

    // page/size shifts as messages arrive; the cursor does not.
    let shifted = server
        .history("alice", "participants=alice,bob&size=5&page=1")
        .await;
    assert_eq!(
        contents(&shifted),
        ["old 12", "old 11", "old 10", "old 09", "old 08"]
    );

    let empty = server
        .history(
            "alice",
            &format!(
                "participants=alice,bob&before={}",
                first_id_of(&server).await
            ),
        )
        .await;
    assert!(empty.is_empty());
}

async fn first_id_of(server: &TestServer) -> String {
    let oldest = server
        .history("alice", "participants=alice,bob&size=1&page=17")
        .await;
    oldest[0]["id"].as_str().unwrap().to_string()
}

/// Sends `request` and checks it is refused with `status` and a JSON `{"error": "..."}`.
async fn expect_refusal(request: reqwest::RequestBuilder, status: u16, what: &str) {
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), status, "{what}");
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "{what}"
    );
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "{what}: no error text in {body}");
}

#[tokio::test]
async fn every_refusal_is_a_json_error_with_its_status_and_changes_nothing() {
    let server = TestServer::start_with(&[("MAX_PARTICIPANTS", "5")]).await;
    let mut bob = server.ws("bob").await;
    let alice = server.token("alice");
    let send = server.url("/api/messages");
    let valid = json!({"participants": ["alice", "bob"], "content": "x"});

    let bodies: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", b"{\"participants\":".to_vec(), 400),
        ("empty body", Vec::new(), 400),
        (
            "not an object",
            json!(["alice", "bob"]).to_string().into(),
            400,
        ),
        (
            "no participants",
            json!({"content": "x"}).to_string().into(),
            400,
        ),
        (
            "null participants",
            json!({"participants": null, "content": "x"})
                .to_string()
                .into(),
            400,
        ),
        (
            "empty participants",
            json!({"participants": [], "content": "x"})
                .to_string()
                .into(),
            400,
        ),
        (
            "participants not a list",
            json!({"participants": "alice,bob", "content": "x"})
                .to_string()
                .into(),
            400,
        ),
        (
            "non-string participant",
            json!({"participants": ["alice", 7], "content": "x"})
                .to_string()
                .into(),
            400,
        ),
        (
            "empty participant",
            json!({"participants": ["alice", ""], "content": "x"})
                .to_string()
                .into(),
            400,
        ),
        (
            "comma in an id",
            json!({"participants": ["alice", "b,ob"], "content": "x"})
                .to_string()
                .into(),
            400,
        ),
        (
            "control character in an id",
            json!({"participants": ["alice", "b\nob"], "content": "x"})
                .to_string()
                .into(),
            400,
        ),
        (
            "id over 128 bytes",
            json!({"participants": ["alice", "x".repeat(129)], "content": "x"})
                .to_string()
                .into(),
            400,
        ),
        (
            "too many participants",
            json!({"participants": ["alice", "bob", "c", "d", "e", "f"], "content": "x"})
                .to_string()
                .into(),
            400,
        ),
        (
            "no content",
            json!({"participants": ["alice", "bob"]}).to_string().into(),
            400,
        ),
        (
            "empty content",
            json!({"participants": ["alice", "bob"], "content": ""})
                .to_string()
                .into(),
            400,
        ),
        (
            "content not a string",
            json!({"participants": ["alice", "bob"], "content": 42})
                .to_string()
                .into(),
            400,
        ),
        (
            "content too large",
            json!({"participants": ["alice", "bob"], "content": "x".repeat(4097)})
                .to_string()
                .into(),
            413,
        ),
        (
            "body too large",
            json!({"participants": ["alice", "bob"], "content": "x", "pad": "x".repeat(70_000)})
                .to_string()
                .into(),
            413,
        ),
        (
            "sender not a participant",
            json!({"participants": ["bob", "carol"], "content": "x"})
                .to_string()
                .into(),
            403,
        ),
    ];
    for (what, body, status) in bodies {
        let request = server
            .http
            .post(&send)
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .body(body);
        expect_refusal(request, status, what).await;
    }

    let wrong_key = token_for("another-secret", "alice");
    let expired = expired_token(&server);
    let tokens = [
        ("bad token", "a.b.c"),
        ("another key", wrong_key.as_str()),
        ("expired", expired.as_str()),
        ("alg none", ALG_NONE_TOKEN),
    ];
    expect_refusal(server.http.post(&send).json(&valid), 401, "no token").await;
    for (what, token) in tokens {
        expect_refusal(
            server.http.post(&send).bearer_auth(token).json(&valid),
            401,
            what,
        )
        .await;
        let status = server.ws_refused(&format!("?token={token}")).await;
        assert_eq!(status, 401, "socket with {what}");
    }
    assert_eq!(server.ws_refused("").await, 401, "socket without a token");

    let queries = [
        ("history without participants", "", 400),
        ("history with a bad id", "participants=alice,b%0Aob", 400),
        (
            "history with a bad page",
            "participants=alice,bob&page=-1",
            400,
        ),
        ("history with size 0", "participants=alice,bob&size=0", 400),
        (
            "history with a bad cursor",
            "participants=alice,bob&before=42",
            400,
        ),
        ("someone else's history", "participants=bob,carol", 403),
    ];
    for (what, query, status) in queries {
        let url = server.url(&format!("/api/messages/get?{query}"));
        expect_refusal(server.http.get(url).bearer_auth(&alice), status, what).await;
    }
    let history = server.url("/api/messages/get?participants=alice,bob");
    expect_refusal(server.http.get(history), 401, "history without a token").await;
    let connections = server
        .http
        .post(server.url("/api/connections"))
        .json(&json!({"users": "alice"}));
    expect_refusal(connections, 400, "connections with a bad list").await;
    expect_refusal(
        server
            .http
            .get(server.url("/api/nothing-here"))
            .bearer_auth(&alice),
        404,
        "unknown API route",
    )
    .await;
    expect_refusal(
        server.http.get(server.url("/nothing-here")),
        404,
        "unknown route",
    )
    .await;
    expect_refusal(
        server.http.get(&send).bearer_auth(&alice),
        405,
        "GET on send",
    )
    .await;
    expect_refusal(
        server.http.delete(server.url("/health")),
        405,
        "DELETE on health",
    )
    .await;

    // Nothing refused reached bob or history: the marker is the first and only thing there is.
    server.send_ok("alice", &["alice", "bob"], MARKER).await;
    assert_eq!(bob.messages_until(MARKER).await.len(), 1);
    assert_eq!(
        server.stored("alice", "alice,bob", 1).await[0]["content"],
        MARKER
    );
}

fn expired_token(server: &TestServer) -> String {
    // Well past the 60 s leeway, signed with the server's own secret.
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"id": "alice", "iat": now - 7200, "exp": now - 3600}),
        &jsonwebtoken::EncodingKey::from_secret(server.secret().as_bytes()),
    )
    .unwrap()
}

/// `{"alg":"none","typ":"JWT"}.{"id":"alice","exp":4102444800}.` with no signature.
const ALG_NONE_TOKEN: &str =
    "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJpZCI6ImFsaWNlIiwiZXhwIjo0MTAyNDQ0ODAwfQ.";

#[tokio::test]
async fn connections_can_require_a_token() {
    let server = TestServer::start_with(&[("CONNECTIONS_REQUIRE_AUTH", "true")]).await;
    let _alice = server.ws("alice").await;
    let url = server.url("/api/connections");
    let anonymous = server
        .http
        .post(&url)
        .json(&json!({"users": ["alice"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let answer: Value = eventually("alice's socket is counted", || async {
        let response = server
            .http
            .post(&url)
            .bearer_auth(server.token("bob"))
            .json(&json!({"users": ["alice"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        (body["alice"] == 1).then_some(body)
    })
    .await;
    assert_eq!(answer, json!({"alice": 1}));
}

#[tokio::test]
async fn a_socket_may_authenticate_with_the_authorization_header() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::start().await;
    let mut request = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", server.token("bob")).parse().unwrap(),
    );
    let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut bob = WsClient { stream };
    let sent = server
        .send_ok("alice", &["alice", "bob"], "via header")
        .await;
    assert_eq!(bob.next_message().await, sent);
}

#[tokio::test]
async fn history_and_health_survive_a_restart() {
    let mut server = TestServer::start().await;
    for i in 0..3 {
        server
            .send_ok("alice", &["alice", "bob"], &format!("before restart {i}"))
            .await;
    }
    let before = server.stored("bob", "alice,bob", 3).await;
    server.restart().await;
    assert_eq!(
        server.history("bob", "participants=alice,bob").await,
        before
    );
    let after = server
        .send_ok("bob", &["alice", "bob"], "after restart")
        .await;
    let stored = server.stored("alice", "alice,bob", 4).await;
    assert_eq!(stored[0], after, "ids keep increasing across the restart");
    let health = eventually("the outbox empties", || async {
        let health = server.health().await;
        (health["outbox"] == json!({"pending": 0, "dead_lettered": 0})).then_some(health)
    })
    .await;
    assert_eq!(health["store"], json!({"backend": "sqlite", "up": true}));
}

#[tokio::test]
async fn a_second_chatd_on_the_same_data_dir_is_refused() {
    let server = TestServer::start().await;
    let refused = chatd::app::start(server.config())
        .await
        .err()
        .expect("the second start fails");
    assert!(refused.to_string().contains("another chatd"), "{refused:#}");
    server
        .send_ok("alice", &["alice"], "the first one still serves")
        .await;
}

/// A send with `Idempotency-Key: key`: the status, the `Idempotent-Replayed` header and the body.
async fn send_with_key(
    server: &TestServer,
    key: &str,
    participants: &[&str],
    content: &str,
) -> (u16, bool, Value) {
    let response = server
        .http
        .post(server.url("/api/messages"))
        .bearer_auth(server.token("alice"))
        .header("Idempotency-Key", key)
        .json(&serde_json::json!({ "participants": participants, "content": content }))
        .send()
        .await
        .expect("POST /api/messages");
    let status = response.status().as_u16();
    let replayed = response.headers().get("idempotent-replayed").is_some();
    (status, replayed, response.json().await.expect("JSON body"))
}

#[tokio::test]
async fn a_retried_send_with_the_same_idempotency_key_is_stored_once_across_a_restart() {
    let mut server = TestServer::start().await;
    let mut bob = server.ws("bob").await;
    let (status, replayed, first) =
        send_with_key(&server, "retry-1", &["alice", "bob"], "once").await;
    assert_eq!((status, replayed), (202, false), "{first}");
    let (status, replayed, again) =
        send_with_key(&server, "retry-1", &["bob", "alice"], "once").await;
    assert_eq!((status, replayed), (202, true), "{again}");
    assert_eq!(again, first, "the repeat answers with the first 202's body");
    // Another key, or another sender's same key, is another message.
    let other = send_with_key(&server, "retry-2", &["alice", "bob"], "once").await;
    assert_eq!((other.0, other.1), (202, false));
    assert_ne!(other.2["message"]["id"], first["message"]["id"]);

    // Bob got each message once, live.
    assert_eq!(bob.next_message().await["id"], first["message"]["id"]);
    assert_eq!(bob.next_message().await["id"], other.2["message"]["id"]);
    server.stored("bob", "alice,bob", 2).await;

    server.restart().await;
    let (status, replayed, after_restart) =
        send_with_key(&server, "retry-1", &["alice", "bob"], "once").await;
    assert_eq!((status, replayed), (202, true));
    assert_eq!(after_restart, first);
    let history = server.history("bob", "participants=alice,bob").await;
    assert_eq!(history.len(), 2, "nothing new stored: {history:?}");
}

#[tokio::test]
async fn an_idempotency_key_names_one_send_and_must_be_well_formed() {
    let server = TestServer::start().await;
    let (status, _, _) = send_with_key(&server, "k", &["alice", "bob"], "first").await;
    assert_eq!(status, 202);
    let (status, _, body) = send_with_key(&server, "k", &["alice", "bob"], "different").await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Idempotency-Key"));
    let (status, _, body) = send_with_key(&server, "k", &["alice", "carol"], "first").await;
    assert_eq!(status, 422, "another channel under the same key: {body}");
    // Visible ASCII only, as the document's pattern says: no spaces, even inside.
    for bad in ["", "   ", "a b", &"k".repeat(256)] {
        let (status, _, body) = send_with_key(&server, bad, &["alice", "bob"], "x").await;
        assert_eq!(status, 400, "key {bad:?}: {body}");
    }
    server.stored("bob", "alice,bob", 1).await;
    assert!(
        server
            .history("carol", "participants=alice,carol")
            .await
            .is_empty()
    );
}

/// Every JSON body ends with exactly one newline, as the original's did, so a shell prompt
/// lands on its own line after `curl`.
#[tokio::test]
async fn every_json_body_ends_with_one_newline() {
    let server = TestServer::start().await;
    let http = &server.http;
    let requests = [
        (
            "a 202",
            server.url("/api/messages"),
            Some(r#"{"participants":["alice","bob"],"content":"hi"}"#),
        ),
        ("a 400", server.url("/api/messages"), Some("{not json")),
        ("/health", server.url("/health"), None),
        ("/openapi.json", server.url("/openapi.json"), None),
        ("a 404", server.url("/nowhere"), None),
    ];
    for (what, url, body) in requests {
        let request = match body {
            Some(body) => http
                .post(url)
                .bearer_auth(server.token("alice"))
                .header("content-type", "application/json")
                .body(body),
            None => http.get(url),
        };
        let response = request.send().await.unwrap();
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{what}"
        );
        let bytes = response.bytes().await.unwrap();
        assert!(
            bytes.ends_with(b"\n") && !bytes.ends_with(b"\n\n"),
            "{what}: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice::<Value>(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    assert!(
        !server.scrape().await.is_empty(),
        "/metrics stays text, untouched"
    );
    server.shutdown().await;
}
