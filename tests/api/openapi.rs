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
    let mut schema =
        doc["paths"][path][method]["responses"][status.to_string()]["content"]["application/json"]
            ["schema"]
            .clone();
    assert!(
        schema.is_object(),
        "{method} {path} {status}: no JSON schema"
    );
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
