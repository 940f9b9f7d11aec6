//! `/admin/dead-letters`: the operators' API over the dead letters, behind `ADMIN_TOKEN`.
//! Mounted only when `ADMIN_TOKEN` is set; without it every `/admin` path is a 404.

use axum::Json;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use utoipa::openapi::schema::{AdditionalProperties, SchemaType};
use utoipa::openapi::{ArrayBuilder, ObjectBuilder, OneOfBuilder, RefOr, Schema, Type};

use super::error::ErrorBody;
use super::extract::{JsonBody, QueryParams};
use super::{ApiError, AppState};
use crate::auth::bearer_token;
use crate::store::{DeadLetterView, ReplayOutcome, ReplayResult, Selection};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;
/// Most ids one replay request may name; `{"all": true}` has no such bound.
const MAX_IDS: usize = 1000;

/// Lets a request through only with `Authorization: Bearer <ADMIN_TOKEN>`, compared in
/// constant time.
pub async fn admin_guard(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let expected = state.admin_token.as_deref().unwrap_or_default().as_bytes();
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or_default()
        .as_bytes();
    if expected.is_empty() || !bool::from(given.ct_eq(expected)) {
        return Err(ApiError::unauthorized(
            "an admin token is required: Authorization: Bearer <ADMIN_TOKEN>",
        ));
    }
    Ok(next.run(req).await)
}

/// `GET /admin/dead-letters?limit=50&error=<text>`: in id order, optionally only those whose
/// error contains `text`.
#[utoipa::path(
    get,
    path = "/admin/dead-letters",
    tag = "admin",
    description = "The dead letters, oldest first. Exists only when `ADMIN_TOKEN` is set. With `METRICS_PORT` set, served on that internal port only, not on the main one.",
    params(
        ("limit" = Option<u32>, Query, description = "At most this many, 1 to 500; default 50.", minimum = 1, maximum = 500),
        ("error" = Option<String>, Query, description = "Only those whose error contains this text."),
    ),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The dead letters.", body = Vec<DeadLetterView>),
        (status = 400, description = "A `limit` outside 1–500, or a malformed query string.", body = ErrorBody),
        (status = 401, description = "A missing or wrong `ADMIN_TOKEN`.", body = ErrorBody),
        (status = 404, description = "No such route: while `ADMIN_TOKEN` is unset every `/admin` path is 404.", body = ErrorBody),
        (status = 500, description = "A store error that waiting will not fix.", body = ErrorBody),
        (status = 503, description = "The store is unavailable right now.", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<DeadLetterView>>, ApiError> {
    let params = QueryParams::parse(query.as_deref())?;
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(limit) => limit
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}"
                ))
            })?,
    };
    let letters = state
        .dead_letters
        .list(
            limit,
            params
                .get("error")
                .filter(|e| !e.is_empty())
                .map(str::to_owned),
        )
        .await?;
    Ok(Json(
        letters.into_iter().map(DeadLetterView::from).collect(),
    ))
}

/// `GET /admin/dead-letters/{id}`
#[utoipa::path(
    get,
    path = "/admin/dead-letters/{id}",
    tag = "admin",
    description = "One dead letter. With `METRICS_PORT` set, served on that internal port only, not on the main one.",
    params(("id" = String, Path, description = "The dead letter's id: its message's id.")),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The dead letter.", body = DeadLetterView),
        (status = 401, description = "A missing or wrong `ADMIN_TOKEN`.", body = ErrorBody),
        (status = 404, description = "No dead letter has this id; or while `ADMIN_TOKEN` is unset every `/admin` path is 404.", body = ErrorBody),
        (status = 500, description = "A store error that waiting will not fix.", body = ErrorBody),
        (status = 503, description = "The store is unavailable right now.", body = ErrorBody),
    ),
)]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeadLetterView>, ApiError> {
    match state.dead_letters.show(&id).await? {
        Some(letter) => Ok(Json(letter.into())),
        None => Err(no_such(&id)),
    }
}

/// `POST /admin/dead-letters/replay`'s body, as documented: `{"ids": [...]}` or
/// `{"all": true}`, not both, each with an optional `dry_run`. No other field: a misspelt
/// `dry_run` must not turn a rehearsal into a replay.
pub struct ReplayRequest;

/// The fields a replay request may have.
const REPLAY_FIELDS: &[&str] = &["ids", "all", "dry_run"];

impl utoipa::PartialSchema for ReplayRequest {
    fn schema() -> RefOr<Schema> {
        let dry_run: RefOr<Schema> = ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Boolean, Type::Null]))
            .description(Some(
                "`true`: report what would be replayed, change nothing.",
            ))
            .into();
        let ids = ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1)),
            )
            .min_items(Some(1))
            .max_items(Some(MAX_IDS))
            .description(Some("Dead-letter ids: their messages' ids."));
        let all = ObjectBuilder::new()
            .schema_type(Type::Boolean)
            .enum_values(Some([true]))
            .description(Some("Every dead letter."));
        let variant = |name: &str, field: RefOr<Schema>| {
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property(name, field)
                .property("dry_run", dry_run.clone())
                .required(name)
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        };
        OneOfBuilder::new()
            .item(variant("ids", ids.into()))
            .item(variant("all", all.into()))
            .examples([json!({"ids": ["0193a0c4-7a2e-7c1e-9b55-4f0d3c2a1b10"], "dry_run": true})])
            .into()
    }
}

impl utoipa::ToSchema for ReplayRequest {}

/// `DELETE /admin/dead-letters/{id}`'s body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Purged {
    #[schema(example = 1)]
    purged: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReplayReport {
    replayed: usize,
    failed: usize,
    not_found: usize,
    dry_run: bool,
    outcomes: Vec<ReplayOutcome>,
}

/// `POST /admin/dead-letters/replay` with `{"ids": [...]}` or `{"all": true}`, and optionally
/// `"dry_run": true`.
#[utoipa::path(
    post,
    path = "/admin/dead-letters/replay",
    tag = "admin",
    description = "Writes dead letters to the messages (a message already there counts as \
                   replayed) and removes them from the dead letters. With `METRICS_PORT` set, served on that internal port only, not on the main one.",
    request_body(content = ReplayRequest, content_type = "application/json"),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "What happened to each.", body = ReplayReport),
        (status = 400, description = "Malformed JSON, or a body that is neither `{\"ids\":[...]}` \
            (1–1000 non-empty ids) nor `{\"all\":true}`, a field other than those and \
            `dry_run`, or a `dry_run` that is not a boolean.", body = ErrorBody),
        (status = 401, description = "A missing or wrong `ADMIN_TOKEN`.", body = ErrorBody),
        (status = 404, description = "No such route: while `ADMIN_TOKEN` is unset every `/admin` path is 404.", body = ErrorBody),
        (status = 413, description = "The body is larger than `MAX_BODY_BYTES`.", body = ErrorBody),
        (status = 500, description = "A store error that waiting will not fix.", body = ErrorBody),
        (status = 503, description = "The store is unavailable right now.", body = ErrorBody),
    ),
)]
pub async fn replay(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<ReplayReport>, ApiError> {
    let selection = selection(&body)?;
    let dry_run = match body.get("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(dry_run)) => *dry_run,
        Some(_) => return Err(ApiError::bad_request("dry_run must be true or false")),
    };
    let outcomes = state.dead_letters.replay(selection, dry_run).await?;
    let count =
        |wanted: fn(&ReplayResult) -> bool| outcomes.iter().filter(|o| wanted(&o.result)).count();
    Ok(Json(ReplayReport {
        replayed: count(|r| matches!(r, ReplayResult::Replayed | ReplayResult::WouldReplay)),
        failed: count(|r| matches!(r, ReplayResult::Failed { .. })),
        not_found: count(|r| matches!(r, ReplayResult::NotFound)),
        dry_run,
        outcomes,
    }))
}

/// `DELETE /admin/dead-letters/{id}`: purges one dead letter for good.
#[utoipa::path(
    delete,
    path = "/admin/dead-letters/{id}",
    tag = "admin",
    description = "Purges one dead letter for good. With `METRICS_PORT` set, served on that internal port only, not on the main one.",
    params(("id" = String, Path, description = "The dead letter's id: its message's id.")),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "Purged.", body = Purged),
        (status = 401, description = "A missing or wrong `ADMIN_TOKEN`.", body = ErrorBody),
        (status = 404, description = "No dead letter has this id; or while `ADMIN_TOKEN` is unset every `/admin` path is 404.", body = ErrorBody),
        (status = 500, description = "A store error that waiting will not fix.", body = ErrorBody),
        (status = 503, description = "The store is unavailable right now.", body = ErrorBody),
    ),
)]
pub async fn purge(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Purged>, ApiError> {
    match state
        .dead_letters
        .purge(Selection::Ids(vec![id.clone()]))
        .await?
    {
        0 => Err(no_such(&id)),
        purged => Ok(Json(Purged { purged })),
    }
}

fn selection(body: &serde_json::Map<String, Value>) -> Result<Selection, ApiError> {
    if let Some(unknown) = body.keys().find(|k| !REPLAY_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown field {unknown:?}: send ids or all, and optionally dry_run"
        )));
    }
    match (body.get("ids"), body.get("all")) {
        (Some(Value::Array(ids)), None) if !ids.is_empty() && ids.len() <= MAX_IDS => ids
            .iter()
            .map(|id| match id {
                Value::String(id) if !id.is_empty() => Ok(id.clone()),
                _ => Err(ApiError::bad_request("ids must be non-empty strings")),
            })
            .collect::<Result<_, _>>()
            .map(Selection::Ids),
        (None, Some(Value::Bool(true))) => Ok(Selection::All),
        _ => Err(ApiError::bad_request(format!(
            "send either {{\"ids\": [1 to {MAX_IDS} ids]}} or {{\"all\": true}}"
        ))),
    }
}

fn no_such(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no dead letter has the id {id}"),
    )
}
