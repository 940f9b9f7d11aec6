//! `GET /health`: the original's liveness answer, plus the store and the outbox.

use axum::Json;
use axum::extract::State;
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use super::AppState;

pub async fn health(State(state): State<AppState>) -> Json<Value> {
    let outbox = state.outbox.counts();
    Json(json!({
        "status": "ok",
        "time": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "store": { "backend": state.store.backend(), "up": state.store_health.is_up() },
        "outbox": { "pending": outbox.pending, "dead_lettered": outbox.dead_lettered },
        "sockets": state.hub.open(),
    }))
}
