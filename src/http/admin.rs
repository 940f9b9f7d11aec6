//! `/admin/dead-letters`: the operators' API over the dead letters, behind `ADMIN_TOKEN`.
//! Mounted only when `ADMIN_TOKEN` is set; without it every `/admin` path is a 404.

use axum::Json;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;
use subtle::ConstantTimeEq;

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
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeadLetterView>, ApiError> {
    match state.dead_letters.show(&id).await? {
        Some(letter) => Ok(Json(letter.into())),
        None => Err(no_such(&id)),
    }
}

#[derive(Serialize)]
pub struct ReplayReport {
    replayed: usize,
    failed: usize,
    not_found: usize,
    dry_run: bool,
    outcomes: Vec<ReplayOutcome>,
}

/// `POST /admin/dead-letters/replay` with `{"ids": [...]}` or `{"all": true}`, and optionally
/// `"dry_run": true`.
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
pub async fn purge(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state
        .dead_letters
        .purge(Selection::Ids(vec![id.clone()]))
        .await?
    {
        0 => Err(no_such(&id)),
        purged => Ok(Json(serde_json::json!({ "purged": purged }))),
    }
}

fn selection(body: &serde_json::Map<String, Value>) -> Result<Selection, ApiError> {
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
