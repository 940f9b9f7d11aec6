//! `POST /api/dev/token`: the page's development sign-in. Mounted only while chatd signs with
//! the development secret it generated itself (no `JWT_SECRET`, no external keys): there,
//! anyone who can read `DATA_DIR` can mint tokens anyway with `chatd token`. With a real
//! secret the route does not exist (404), so no deployment can be signed into by name.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::error::ErrorBody;
use super::extract::JsonBody;
use super::{ApiError, AppState};
use crate::model::UserId;

/// How long a development token lives: a sitting at the page, not a day.
pub const TTL: Duration = Duration::from_secs(60 * 60);

/// `POST /api/dev/token`'s body, as documented.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema only
pub struct DevTokenRequest {
    /// The user id to sign in as.
    #[schema(example = "alice")]
    id: UserId,
}

/// A token for the user asked for.
#[derive(utoipa::ToSchema)]
#[schema(example = json!({"token": "eyJ…"}))]
#[allow(dead_code)] // a schema only
pub struct DevToken {
    token: String,
}

#[utoipa::path(
    post,
    path = "/api/dev/token",
    tag = "page",
    description = "The chat page's development sign-in: a JWT for any user id, valid for an \
                   hour. Exists only while chatd signs with the development secret it \
                   generated in `DATA_DIR` (no `JWT_SECRET`, `JWT_PUBLIC_KEY`, `JWKS_URL`, \
                   `JWT_ISSUER` or `JWT_AUDIENCE`); otherwise this is an unknown route (404).",
    request_body(content = DevTokenRequest, content_type = "application/json"),
    security(()),
    responses(
        (status = 200, description = "The token.", body = DevToken),
        (status = 400, description = "Malformed JSON, or `id` missing or not a valid user id.",
            body = ErrorBody),
        (status = 404, description = "chatd has a real secret or keys: no development sign-in.",
            body = ErrorBody),
        (status = 413, description = "The body is larger than `MAX_BODY_BYTES`.", body = ErrorBody),
        (status = 429, description = "Rate limited (by the client address).", body = ErrorBody),
    ),
)]
pub async fn issue(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = match body.get("id") {
        Some(Value::String(id)) => {
            UserId::parse(id.as_str()).map_err(|e| ApiError::bad_request(format!("id: {e}")))?
        }
        None | Some(Value::Null) => return Err(ApiError::bad_request("id is required")),
        Some(_) => return Err(ApiError::bad_request("id must be a string")),
    };
    let issuer = state
        .dev_tokens
        .as_ref()
        .ok_or_else(|| ApiError::new(axum::http::StatusCode::NOT_FOUND, "no such route"))?;
    Ok(Json(json!({ "token": issuer.issue(&id, TTL) })))
}
