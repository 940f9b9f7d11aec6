//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP API, generated from the handlers'
//! `#[utoipa::path]` attributes and the bodies' types, so it cannot drift from the code.
//! Refusals that the layers give every route (an origin not allowed, a deadline, a method not
//! allowed, a connection turned away) are added to every operation here, once.

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, OpenApi as Document, Ref, RefOr, Response as Answer,
    ResponseBuilder, Type,
};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;

const DESCRIPTION: &str = "\
The HTTP API of chatd, a real-time chat service: REST senders, WebSocket listeners. \
Generated from the code. Every JSON body ends with a newline (`\\n`). Every refusal is a JSON \
body `{\"error\": \"<what is wrong>\"}` with the fitting status; a refusal changes no stored \
state. Every response carries `x-request-id` (the request's own, if it sent a valid one). \
With `METRICS_PORT` set, `/metrics` and `/admin/*` are served on that internal port only.";

#[derive(OpenApi)]
#[openapi(
    info(title = "chatd", description = DESCRIPTION, license(name = "MIT", identifier = "MIT")),
    paths(
        super::health::health,
        super::health::ready,
        super::ws::upgrade,
        super::messages::send,
        super::messages::history,
        super::channels::list,
        super::connections::connections,
        super::page::index,
        super::page::asset,
        super::dev_token::issue,
        super::admin::list,
        super::admin::show,
        super::admin::replay,
        super::admin::purge,
        super::scrape::render,
        document,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Refusals, &SecuritySchemes),
    tags(
        (name = "messages", description = "Sending, history and presence"),
        (name = "sockets", description = "The WebSocket upgrade"),
        (name = "probes", description = "Liveness and readiness"),
        (name = "page", description = "The chat page (`WEB_UI`) and its development sign-in"),
        (name = "admin", description = "Dead letters, behind `ADMIN_TOKEN`"),
        (name = "operations", description = "Metrics and this document"),
    ),
)]
pub struct ApiDoc;

/// The document, built once.
pub fn spec() -> &'static Document {
    static SPEC: OnceLock<Document> = OnceLock::new();
    SPEC.get_or_init(ApiDoc::openapi)
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    description = "This document: OpenAPI 3.1, generated from the code.",
    responses((status = 200, description = "The OpenAPI document.", body = Object,
        content_type = "application/json")),
)]
pub async fn document() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let json = JSON.get_or_init(|| spec().to_json().expect("the OpenAPI document serializes"));
    ([(CONTENT_TYPE, "application/json")], json.as_str()).into_response()
}

/// The bearer JWT (header, or `?token=` on `/ws`) and the admin token.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT whose `id` claim is the user id; `exp` is required (60 s of clock \
                         skew allowed). HS256 with `JWT_SECRET` unless chatd is configured for \
                         RS256/ES256 keys or a JWKS URL.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "tokenQuery",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The same JWT as `bearerAuth`, as `?token=`, on `/ws` only: browsers cannot set \
                 headers on a WebSocket.",
            ))),
        );
        components.add_security_scheme(
            "adminToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <ADMIN_TOKEN>`: the operators' token. Without \
                         `ADMIN_TOKEN` the admin API is not mounted.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The refusals of the layers around every route, and the headers every answer carries.
struct Refusals;

/// Refusals that every operation may get from the layers around the routes and the accept loop;
/// all but the 405 on the main port only (not on `METRICS_PORT`'s).
const LAYER_REFUSALS: &[(&str, &str)] = &[
    (
        "403",
        "A browser's `Origin` is not in `CORS_ALLOWED_ORIGINS` (refused before anything runs; \
         main port only).",
    ),
    ("405", "Wrong method on this route."),
    (
        "408",
        "The request was not finished within `HTTP_REQUEST_TIMEOUT` (a body trickling in, say); \
         never once a send's message may be durable. Main port only.",
    ),
    (
        "503",
        "A new connection beyond `HTTP_MAX_CONNECTIONS` or `HTTP_MAX_PENDING_PER_CLIENT` is \
         answered 503 and closed before its request is read (main port only).",
    ),
];

impl Modify for Refusals {
    fn modify(&self, openapi: &mut Document) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                for (status, why) in LAYER_REFUSALS {
                    match responses.get_mut(*status) {
                        Some(RefOr::T(answer)) => {
                            answer.description = format!("{} Or: {why}", answer.description);
                        }
                        Some(RefOr::Ref(_)) => {}
                        None => {
                            responses.insert(status.to_string(), RefOr::T(refusal(why)));
                        }
                    }
                }
                for (status, answer) in responses.iter_mut() {
                    let RefOr::T(answer) = answer else { continue };
                    add_headers(status, answer);
                }
            }
        }
    }
}

fn refusal(description: &str) -> Answer {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

fn add_headers(status: &str, answer: &mut Answer) {
    let string = || ObjectBuilder::new().schema_type(Type::String);
    answer.headers.insert(
        "x-request-id".into(),
        HeaderBuilder::new()
            .schema(string())
            .description(Some(
                "The request's id: the client's own `x-request-id` if it sent a valid one \
                 (1–64 visible ASCII characters), else a new one. It is on every log line of \
                 the request.",
            ))
            .build(),
    );
    if status == "429" || status == "503" {
        answer.headers.insert(
            "Retry-After".into(),
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                )
                .description(Some(
                    "Seconds to wait before retrying. Absent on a 503 that retrying this \
                     instance will not cure (a corrupted database file).",
                ))
                .build(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_exactly_the_routes_served() {
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in &spec().paths.paths {
            for (method, op) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
            ] {
                if op.is_some() {
                    documented.push((path.clone(), method.to_string()));
                }
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = super::super::routes()
            .into_iter()
            .map(|(path, method)| (path.to_string(), method.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }
}
