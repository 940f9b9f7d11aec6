//! `POST /api/connections`: how many sockets each of some users has open, on every instance
//! of a cluster.

use axum::Json;
use axum::extract::State;
use serde_json::{Map, Value};

use super::error::ErrorBody;
use super::extract::{JsonBody, user_ids};
use super::{ApiError, AppState, Caller};
use crate::model::UserId;

/// Most users one request may ask about.
const MAX_USERS: usize = 1000;

/// `POST /api/connections`' body, as documented.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema only
pub struct ConnectionsRequest {
    /// At most 1000 user ids.
    #[schema(example = json!(["alice", "bob"]), max_items = 1000)]
    users: Vec<UserId>,
}

/// Open sockets per user asked about.
#[derive(utoipa::ToSchema)]
#[schema(example = json!({"alice": 2, "bob": 0}))]
#[allow(dead_code)] // a schema only
pub struct ConnectionCounts(std::collections::HashMap<String, u64>);

#[utoipa::path(
    post,
    path = "/api/connections",
    tag = "messages",
    description = "How many sockets each user has open; in cluster mode, summed over the live \
                   instances. Unauthenticated, as in the original, unless \
                   `CONNECTIONS_REQUIRE_AUTH=true`.",
    request_body(content = ConnectionsRequest, content_type = "application/json"),
    security((), ("bearerAuth" = [])),
    responses(
        (status = 200, description = "Open sockets per user.", body = ConnectionCounts),
        (status = 400, description = "Malformed JSON, `users` missing or not an array of valid \
            user ids, or more than 1000 of them.", body = ErrorBody),
        (status = 401, description = "An invalid token, or none while \
            `CONNECTIONS_REQUIRE_AUTH=true`.", body = ErrorBody),
        (status = 413, description = "The body is larger than `MAX_BODY_BYTES`.", body = ErrorBody),
        (status = 429, description = "Rate limited (by the token's user, else the client address).", body = ErrorBody),
    ),
)]
pub async fn connections(
    State(state): State<AppState>,
    caller: Option<Caller>,
    JsonBody(body): JsonBody,
) -> Result<Json<Map<String, Value>>, ApiError> {
    if state.connections_require_auth && caller.is_none() {
        return Err(ApiError::unauthorized(
            "missing token: send Authorization: Bearer <JWT>",
        ));
    }
    let users = user_ids(&body, "users")?;
    if users.len() > MAX_USERS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_USERS} users per request"
        )));
    }
    let counts = state.census.count(&users).await;
    let counts = users
        .into_iter()
        .zip(counts)
        .map(|(user, open)| (user.into_string(), Value::from(open)))
        .collect();
    Ok(Json(counts))
}
