//! Hostile input over HTTP, generated: whatever a client sends, the answer is 202 or one of the
//! contract's JSON errors, nothing panics, and the server keeps serving.

use std::sync::OnceLock;

use crate::common::TestServer;
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::runtime::Runtime;

const CONTRACT_STATUSES: &[u16] = &[400, 401, 403, 404, 405, 413, 429, 503];

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| runtime().block_on(TestServer::start_with(&[("MAX_PARTICIPANTS", "8")])))
}

/// Sends and checks the answer is 202 or a contract error with a JSON body.
fn answer(request: reqwest::RequestBuilder) -> Result<u16, TestCaseError> {
    runtime().block_on(async {
        let response = request
            .send()
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let status = response.status().as_u16();
        let body: Value = response
            .json()
            .await
            .map_err(|e| TestCaseError::fail(format!("{status}: not JSON: {e}")))?;
        if status != 202 && status != 200 {
            prop_assert!(CONTRACT_STATUSES.contains(&status), "status {}", status);
            prop_assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{}",
                body
            );
        }
        Ok(status)
    })
}

fn user_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        "\\PC{0,20}",
        "[a-z]{0,4}[,\\x00\\n][a-z]{0,4}",
        "x{120,140}"
    ]
}

fn field() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,50}".prop_map(Value::from),
        proptest::collection::vec(user_id(), 0..12).prop_map(|ids| json!(ids)),
        proptest::collection::vec(any::<u8>(), 0..5).prop_map(|n| json!(n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_bytes_as_a_send(body in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let s = server();
        answer(s.http.post(s.url("/api/messages")).bearer_auth(s.token("alice")).body(body))?;
    }

    #[test]
    fn any_shape_of_send(participants in field(), content in field(), with_alice in any::<bool>()) {
        let s = server();
        let mut participants = participants;
        if let (Some(list), true) = (participants.as_array_mut(), with_alice) {
            list.push(json!("alice"));
        }
        let status = answer(
            s.http
                .post(s.url("/api/messages"))
                .bearer_auth(s.token("alice"))
                .json(&json!({ "participants": participants, "content": content })),
        )?;
        if status == 202 {
            prop_assert!(content.as_str().is_some_and(|c| !c.is_empty()));
        }
    }

    #[test]
    fn any_history_query(query in "\\PC{0,120}") {
        let s = server();
        let url = format!("{}?{}", s.url("/api/messages/get"), query);
        if let Ok(url) = reqwest::Url::parse(&url) {
            answer(s.http.get(url).bearer_auth(s.token("alice")))?;
        }
    }

    #[test]
    fn any_authorization_header(header in "[ -~]{0,300}") {
        let s = server();
        let request = s.http.post(s.url("/api/messages")).header("authorization", header).json(&json!({"participants": ["a"], "content": "x"}));
        let status = answer(request)?;
        prop_assert!(status == 401, "status {}", status);
    }
}

#[test]
fn the_server_still_serves_after_the_onslaught() {
    let s = server();
    runtime().block_on(async {
        let health = s.health().await;
        assert_eq!(health["status"], "ok");
        s.send_ok("alice", &["alice", "bob"], "still here").await;
    });
}

#[test]
fn a_huge_token_is_a_401_like_any_bad_one() {
    let s = server();
    let huge = format!(
        "{}.{}.{}",
        "e".repeat(8000),
        "y".repeat(16_000),
        "z".repeat(8000)
    );
    let status = answer(
        s.http
            .get(s.url("/api/messages/get?participants=alice"))
            .bearer_auth(huge),
    )
    .unwrap();
    assert_eq!(status, 401);
    let status = runtime().block_on(async {
        let url = format!("ws://{}/ws?token={}", s.addr, "x".repeat(30_000));
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                response.status().as_u16()
            }
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
    });
    assert_eq!(status, 401);
}
