//! `POST /api/connections`: how many sockets each of some users has open, on every instance
//! of a cluster.

use axum::Json;
use axum::extract::State;
use serde_json::{Map, Value};

use super::extract::{JsonBody, user_ids};
use super::{ApiError, AppState, Caller};

/// Most users one request may ask about.
const MAX_USERS: usize = 1000;

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
