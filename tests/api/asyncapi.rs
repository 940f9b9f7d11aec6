//! `asyncapi.yaml`: the document is AsyncAPI 3.0, its message schema is the one /openapi.json
//! generates from the code (a copy that cannot drift unnoticed), and the frames a running
//! chatd really sends on `/ws` (live, replayed, the recovery-limit notice, the shutdown close)
//! are the ones it describes.

use serde_json::{Value, json};

use crate::common::{Seen, TestServer};

/// The document, parsed from the repository's root.
fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/asyncapi.yaml");
    let text = std::fs::read_to_string(path).expect("asyncapi.yaml at the repository's root");
    serde_norway::from_str(&text).expect("asyncapi.yaml is YAML")
}

/// What a local `$ref` (`#/...`) points at, followed through refs to refs.
fn resolve<'a>(doc: &'a Value, mut node: &'a Value) -> &'a Value {
    while let Some(reference) = node.get("$ref").and_then(Value::as_str) {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference} is not local"));
        node = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{reference} points at nothing"));
    }
    node
}

/// The messages of the operation in which chatd sends frames on `/ws`, by name, each with a
/// validator of its payload (its `$ref`s resolved within the document's components).
fn frames(doc: &Value) -> Vec<(String, jsonschema::Validator)> {
    let operation = &doc["operations"]["sendFrames"];
    assert_eq!(operation["action"], "send");
    assert_eq!(resolve(doc, &operation["channel"])["address"], "/ws");
    operation["messages"]
        .as_array()
        .expect("the operation's messages")
        .iter()
        .map(|message| {
            let message = resolve(doc, message);
            assert_eq!(message["contentType"], "application/json");
            assert!(
                message.get("schemaFormat").is_none(),
                "payloads are in the default (AsyncAPI, JSON Schema draft-07) format"
            );
            // `allOf`: draft-07 ignores a `$ref`'s siblings; the components ride along so the
            // payload's `$ref`s resolve against this root.
            let schema = json!({
                "$schema": "http://json-schema.org/draft-07/schema#",
                "allOf": [message["payload"]],
                "components": doc["components"],
            });
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .expect("a valid JSON Schema");
            (message["name"].as_str().unwrap().to_string(), validator)
        })
        .collect()
}

/// Fails unless `frame` matches the schema of the document's message `name`, and no other's:
/// a client can tell every frame apart.
fn check(frames: &[(String, jsonschema::Validator)], name: &str, frame: &Value) {
    let (_, validator) = frames
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("the document has no message {name}"));
    let errors: Vec<String> = validator
        .iter_errors(frame)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{frame} is not a {name}: {errors:?}");
    let matching: Vec<&str> = frames
        .iter()
        .filter(|(_, v)| v.is_valid(frame))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(matching, [name], "{frame} matches more than one message");
}

#[test]
fn the_document_is_asyncapi_3_0_describing_ws() {
    let doc = document();
    let version = doc["asyncapi"].as_str().expect("asyncapi: <version>");
    assert!(version.starts_with("3.0."), "{version}");
    let channel = &doc["channels"]["ws"];
    assert_eq!(channel["address"], "/ws");
    let binding = &channel["bindings"]["ws"];
    assert_eq!(binding["method"], "GET");
    for param in ["token", "since"] {
        assert!(
            binding["query"]["properties"].get(param).is_some(),
            "{param}"
        );
    }
    assert!(
        binding["headers"]["properties"]
            .get("Authorization")
            .is_some()
    );
    for scheme in ["bearerAuth", "tokenQuery"] {
        assert!(
            doc["components"]["securitySchemes"].get(scheme).is_some(),
            "{scheme}"
        );
    }
    let codes: Vec<u64> = channel["x-close-codes"]
        .as_array()
        .expect("x-close-codes")
        .iter()
        .map(|c| c["code"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [1001, 4008, 4009]);
    let names: Vec<String> = frames(&doc).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["message", "recovery_limit_exceeded"]);
}

#[tokio::test]
async fn the_message_schema_is_the_openapi_document_s() {
    let server = TestServer::start().await;
    let openapi = crate::openapi::document(&server).await;
    let generated = &openapi["components"]["schemas"]["Message"];
    assert!(generated.is_object(), "/openapi.json has no Message schema");
    let doc = document();
    assert_eq!(
        &doc["components"]["schemas"]["Message"], generated,
        "asyncapi.yaml's Message differs from /openapi.json's: copy the generated one"
    );
    // And the frame's payload is that schema, not another.
    assert_eq!(
        resolve(&doc, &doc["channels"]["ws"]["messages"]["message"])["payload"]["$ref"],
        "#/components/schemas/Message"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn real_frames_match_the_document_s_schemas() {
    let doc = document();
    let frames = frames(&doc);
    let server = TestServer::start_with(&[("RECOVERY_LIMIT", "2")]).await;

    // A live message.
    let mut bob = server.ws("bob").await;
    let live = server.send_ok("alice", &["alice", "bob"], "live").await;
    let frame = bob.next_message().await;
    assert_eq!(frame, live);
    check(&frames, "message", &frame);
    bob.close().await;
    server.await_connections("bob", 0).await;

    // A replay: as many missed as the limit allows.
    let mut missed = Vec::new();
    for i in 0..2 {
        missed.push(
            server
                .send_ok("alice", &["alice", "bob"], &format!("missed {i}"))
                .await,
        );
    }
    let since = format!("&since={}", live["id"].as_str().unwrap());
    let mut bob = server.ws_with_query("bob", &since).await;
    for expected in &missed {
        let frame = bob.next_message().await;
        assert_eq!(&frame, expected);
        check(&frames, "message", &frame);
    }
    bob.close().await;
    server.await_connections("bob", 0).await;

    // One more than the limit: the notice instead.
    for i in 0..3 {
        server
            .send_ok("alice", &["alice", "bob"], &format!("too many {i}"))
            .await;
    }
    let since = format!("&since={}", missed[1]["id"].as_str().unwrap());
    let mut bob = server.ws_with_query("bob", &since).await;
    let notice = bob.next_message().await;
    assert_eq!(notice["type"], "recovery_limit_exceeded");
    assert_eq!(notice["limit"], 2);
    check(&frames, "recovery_limit_exceeded", &notice);

    // The shutdown's close: the code and reason the document gives for it.
    let close = doc["channels"]["ws"]["x-close-codes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["code"] == 1001)
        .expect("1001 is documented")
        .clone();
    let closing = tokio::spawn(async move {
        loop {
            match bob.next().await {
                Seen::Closed(frame) => return frame,
                Seen::Ping => continue,
                Seen::Message(m) => panic!("a frame after the notice: {m}"),
            }
        }
    });
    server.shutdown().await;
    let frame = closing.await.unwrap().expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(frame.reason.as_str(), close["reason"].as_str().unwrap());
}
