//! `GET /openapi.json`: the document lists exactly the routes chatd serves, documents every
//! operation's refusals with the contract's error body, and describes the bodies chatd really
//! sends.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::common::TestServer;

const METHODS: &[&str] = &["get", "post", "put", "delete", "patch"];

/// `GET /openapi.json`, checked to be JSON.
pub(crate) async fn document(server: &TestServer) -> Value {
    let response = server
        .http
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.expect("a JSON document")
}

/// Every `(path, METHOD)` the document describes.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(*method).is_some() {
                operations.insert((path.clone(), method.to_uppercase()));
            }
        }
    }
    operations
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_lists_exactly_the_routes_served() {
    // Everything mounted: the admin API, and (no JWT_SECRET: the generated development
    // secret) the page's development sign-in.
    let server =
        TestServer::start_with(&[("ADMIN_TOKEN", "the-admin-token"), ("JWT_SECRET", "")]).await;
    let doc = document(&server).await;
    let version = doc["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "{version}");

    let served: BTreeSet<(String, String)> = chatd::routes()
        .into_iter()
        .map(|(path, method)| (path.to_string(), method.to_string()))
        .collect();
    assert_eq!(operations(&doc), served);

    // And the router does serve each: none is an unknown route or a wrong method. Without
    // credentials every guarded one is refused, which is enough to show it is there.
    for (path, method) in operations(&doc) {
        let url = server.url(&path.replace("{id}", "some-id").replace("{file}", "app.js"));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = server
            .http
            .request(method.clone(), url)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!(
            status != 404 && status != 405,
            "{method} {path}: {status} {}",
            response.text().await.unwrap()
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn every_operation_documents_its_refusals_with_the_error_body() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    for (path, method) in operations(&doc) {
        let responses = doc["paths"][&path][method.to_lowercase()]["responses"]
            .as_object()
            .unwrap();
        let refusals: Vec<&String> = responses
            .iter()
            .filter(|(status, answer)| {
                status.as_str() >= "400"
                    && answer["content"]["application/json"]["schema"]["$ref"]
                        == "#/components/schemas/ErrorBody"
            })
            .map(|(status, _)| status)
            .collect();
        assert!(!refusals.is_empty(), "{method} {path} documents no refusal");
        for status in ["429", "503"] {
            if let Some(answer) = responses.get(status) {
                assert!(
                    answer["headers"].get("Retry-After").is_some(),
                    "{method} {path} {status}: no Retry-After"
                );
            }
        }
    }
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["properties"]["error"]["type"], "string");
    assert_eq!(error["required"], json!(["error"]));
    for scheme in ["bearerAuth", "tokenQuery", "adminToken"] {
        assert!(
            doc["components"]["securitySchemes"].get(scheme).is_some(),
            "{scheme}"
        );
    }
    server.shutdown().await;
}

/// The schema of `path`'s `method` answer with `status` as a JSON body, its `$ref`s resolved
/// within the document's components.
fn validator(doc: &Value, path: &str, method: &str, status: u16) -> jsonschema::Validator {
    let schema = &doc["paths"][path][method]["responses"][status.to_string()]["content"]["application/json"]
        ["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status}: no JSON schema"
    );
    schema_validator(doc, schema)
}

/// A validator for `schema`, a schema of the document, its `$ref`s resolved within the
/// document's components.
fn schema_validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut schema = schema.clone();
    schema["components"] = doc["components"].clone();
    schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("a valid JSON Schema")
}

fn check(doc: &Value, path: &str, method: &str, status: u16, body: &Value) {
    let validator = validator(doc, path, method, status);
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: {body} does not match: {errors:?}"
    );
}

#[tokio::test]
async fn real_answers_match_the_document_s_schemas() {
    let server = TestServer::start().await;
    let doc = document(&server).await;

    let response = server.send("alice", &["alice", "bob"], "hello").await;
    assert_eq!(response.status(), 202);
    check(
        &doc,
        "/api/messages",
        "post",
        202,
        &response.json().await.unwrap(),
    );
    server.stored("alice", "alice,bob", 1).await;

    let (status, page) = server.get_history("bob", "participants=alice,bob").await;
    assert_eq!(status, 200);
    assert_eq!(page.as_array().unwrap().len(), 1);
    check(&doc, "/api/messages/get", "get", 200, &page);

    let (status, refusal) = server
        .get_history("bob", "participants=alice,bob&size=0")
        .await;
    assert_eq!(status, 400);
    check(&doc, "/api/messages/get", "get", 400, &refusal);

    let response = server.send("carol", &["alice", "bob"], "hello").await;
    assert_eq!(response.status(), 403);
    check(
        &doc,
        "/api/messages",
        "post",
        403,
        &response.json().await.unwrap(),
    );

    check(&doc, "/health", "get", 200, &server.health().await);
    let (status, ready) = server.ready().await;
    assert_eq!(status, 200);
    check(&doc, "/ready", "get", 200, &ready);
    check(
        &doc,
        "/api/connections",
        "post",
        200,
        &server.connections(&["alice", "bob"]).await,
    );

    // The schemas do refuse what does not match.
    let validator = validator(&doc, "/api/messages", "post", 202);
    assert!(!validator.is_valid(&json!({"status": "message queued"})));
    assert!(!validator.is_valid(&json!({"status": "message queued", "message": {"id": 1}})));
    server.shutdown().await;
}

/// The schema of `path`'s `method` parameter `name`.
fn parameter<'a>(doc: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
    doc["paths"][path][method]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| &p["schema"])
        .unwrap_or_else(|| panic!("{method} {path}: no parameter {name}"))
}

/// The status and JSON body of `request`'s answer.
async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Each sample, checked to be valid or not by `schema`, then sent: a valid one must not be
/// refused as malformed (400), an invalid one must be.
async fn admits_what_chatd_accepts<F, Fut>(
    doc: &Value,
    schema: &Value,
    samples: &[(&str, bool)],
    send: F,
) where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = (u16, Value)>,
{
    let schema = schema_validator(doc, schema);
    for (sample, valid) in samples {
        assert_eq!(
            schema.is_valid(&json!(sample)),
            *valid,
            "{sample:?}: the document"
        );
        let (status, body) = send(sample.to_string()).await;
        assert_eq!(
            status == 400,
            !valid,
            "{sample:?}: chatd answered {status} {body}"
        );
    }
}

/// What the document admits, chatd accepts; what it forbids, chatd refuses with 400. These are
/// Schemathesis's findings (`tests/schemathesis/run`), kept: empty and over-long user ids, a
/// `before` chatd would not take or an unknown one answered 400, an `Idempotency-Key` with a
/// space, and a replay body that was neither of the two documented forms.
#[tokio::test]
async fn requests_the_document_admits_are_accepted_and_those_it_forbids_refused() {
    const ADMIN: &str = "the-admin-token";
    let server = TestServer::start_with(&[("ADMIN_TOKEN", ADMIN)]).await;
    let doc = document(&server).await;
    let alice = server.token("alice");

    // JSON Schema counts characters: 32 four-byte ones are 128 bytes, the most an id may have.
    let crabs = "🦀".repeat(32);
    let (ascii_max, too_long) = ("a".repeat(128), "a".repeat(129));
    let crabs_too_many = "🦀".repeat(33);
    let ids = [
        ("alice", true),
        ("élodie 🦀", true),
        (crabs.as_str(), true),
        (ascii_max.as_str(), true),
        ("", false),
        ("a,b", false),
        ("a\u{85}b", false),
        (too_long.as_str(), false),
        (crabs_too_many.as_str(), false),
    ];
    let schema = &doc["components"]["schemas"]["UserId"];
    admits_what_chatd_accepts(&doc, schema, &ids, |id| {
        answer(
            server
                .http
                .post(server.url("/api/connections"))
                .json(&json!({ "users": [id] })),
        )
    })
    .await;

    let history = |name: &'static str| {
        let (alice, server) = (alice.clone(), &server);
        move |value: String| {
            let mut query = vec![("participants", "alice,bob".to_string())];
            match name {
                "participants" => query[0].1 = value,
                _ => query.push((name, value)),
            }
            answer(
                server
                    .http
                    .get(server.url("/api/messages/get"))
                    .query(&query)
                    .bearer_auth(&alice),
            )
        }
    };
    let participants = [
        ("alice", true),
        ("alice,bob,🦀", true),
        ("alice,", false),
        ("alice,,bob", false),
        ("alice,b\nob", false),
    ];
    let schema = parameter(&doc, "/api/messages/get", "get", "participants");
    admits_what_chatd_accepts(&doc, schema, &participants, history("participants")).await;

    let v7 = uuid::Uuid::now_v7();
    let (upper, simple, braced) = (
        v7.to_string().to_uppercase(),
        v7.simple().to_string(),
        v7.braced().to_string(),
    );
    let before = [
        (upper.as_str(), true),
        // Well-formed, but no message has it: 404, not 400.
        ("65f1c0ffee00000000000001", true),
        ("", false),
        (simple.as_str(), false),
        (braced.as_str(), false),
        ("67e55044-10b1-426f-9247-bb680e5fe0c8", false),
    ];
    let schema = parameter(&doc, "/api/messages/get", "get", "before");
    admits_what_chatd_accepts(&doc, schema, &before, history("before")).await;
    let (status, body) = history("before")("65F1C0FFEE00000000000001".into()).await;
    assert_eq!(status, 404, "{body}");
    let documented = &doc["paths"]["/api/messages/get"]["get"]["responses"]["404"];
    assert!(documented.is_object(), "the 404 is documented");

    // Sizes and pages are integers in the document, with the bounds chatd parses: whatever it
    // admits is taken (a size is capped), whatever it forbids is a 400. Schemathesis found a
    // limit of 2147483648 answered 200 while the document said int32.
    let channels = |limit: String| {
        answer(
            server
                .http
                .get(server.url("/api/channels"))
                .query(&[("limit", limit)])
                .bearer_auth(&alice),
        )
    };
    let sizes = [
        (1, true),
        (2_147_483_648, true),
        (u64::from(u32::MAX), true),
        (u64::from(u32::MAX) + 1, false),
        (0, false),
    ];
    let pages = [
        (0, true),
        (i64::MAX as u64, true),
        (i64::MAX as u64 + 1, false),
    ];
    for (route, name, samples) in [
        ("/api/channels", "limit", &sizes[..]),
        ("/api/messages/get", "size", &sizes[..]),
        ("/api/messages/get", "page", &pages[..]),
    ] {
        let validator = schema_validator(&doc, parameter(&doc, route, "get", name));
        for &(n, valid) in samples {
            assert_eq!(
                validator.is_valid(&json!(n)),
                valid,
                "{route} {name}={n}: the document"
            );
            let (status, body) = match route {
                "/api/channels" => channels(n.to_string()).await,
                _ => history(name)(n.to_string()).await,
            };
            assert_eq!(
                status == 400,
                !valid,
                "{route} {name}={n}: chatd answered {status} {body}"
            );
        }
    }

    let long_key = "k".repeat(256);
    let keys = [
        ("retry-1", true),
        ("~!", true),
        ("a b", false),
        ("", false),
        (long_key.as_str(), false),
    ];
    let schema = parameter(&doc, "/api/messages", "post", "Idempotency-Key");
    admits_what_chatd_accepts(&doc, schema, &keys, |key| {
        answer(
            server
                .http
                .post(server.url("/api/messages"))
                .bearer_auth(&alice)
                .header("Idempotency-Key", key)
                .json(&json!({"participants": ["alice", "bob"], "content": "hi"})),
        )
    })
    .await;

    let replays = [
        (r#"{"ids": ["x"], "dry_run": null}"#, true),
        (r#"{"all": true, "dry_run": true}"#, true),
        (r#"{"ids": [""], "all": false, "dry_run": null}"#, false),
        (r#"{"ids": ["x"], "all": false}"#, false),
        // A misspelt dry_run must not replay for real.
        (r#"{"all": true, "dryrun": true}"#, false),
    ];
    let schema = &doc["paths"]["/admin/dead-letters/replay"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    let schema_validator = schema_validator(&doc, schema);
    for (body, valid) in replays {
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            schema_validator.is_valid(&body),
            valid,
            "{body}: the document"
        );
        let request = server
            .http
            .post(server.url("/admin/dead-letters/replay"))
            .bearer_auth(ADMIN)
            .json(&body);
        let (status, answer) = answer(request).await;
        assert_eq!(status, if valid { 200 } else { 400 }, "{body}: {answer}");
    }
    server.shutdown().await;
}
