//! The probes: `GET /health`, the original's liveness answer plus the store and the outbox, and
//! `GET /ready`, what a load balancer asks before sending traffic.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{ApiError, AppState};

pub async fn health(State(state): State<AppState>) -> Json<Value> {
    let outbox = state.outbox.counts();
    let mut health = json!({
        "status": "ok",
        "time": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "store": { "backend": state.store.backend(), "up": state.store_health.is_up() },
        "outbox": { "pending": outbox.pending, "dead_lettered": outbox.dead_lettered },
        "sockets": state.hub.open(),
        "instance": state.instance.as_ref(),
        "bus": match &state.cluster {
            Some(cluster) => json!({ "kind": "nats", "connected": cluster.is_connected() }),
            None => json!({ "kind": "local" }),
        },
    });
    if let Some(stream) = &state.stream {
        // The outbox the instances share, and what waits in it to be stored.
        health["stream"] = json!({ "pending": stream.waiting() });
    }
    Json(health)
}

/// `GET /ready`: 200 once the store is reachable and its migrations are applied. A database
/// file found corrupted while running makes it 503 for good, naming the file and what to do:
/// a load balancer takes the instance out, and only an operator can bring it back. In cluster
/// mode, losing NATS makes it 503 too: the instance can make no message durable and its
/// sockets would miss the other instances' messages, so a load balancer should send traffic
/// elsewhere until it is back.
pub async fn ready(State(state): State<AppState>) -> Response {
    let corrupted = state.integrity.found();
    if !corrupted.is_empty() {
        let advice: Vec<String> = corrupted.iter().map(|c| c.advice()).collect();
        let files: Vec<Value> = corrupted
            .iter()
            .map(|c| {
                json!({
                    "file": c.database.label(),
                    "path": c.path.display().to_string(),
                    "error": c.error,
                })
            })
            .collect();
        let body = json!({
            "error": format!("not ready: {}", advice.join(" ")),
            "corrupted": files,
        });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    if let Some(cluster) = &state.cluster
        && !cluster.is_connected()
    {
        return ApiError::unavailable(
            "not ready: NATS (the cluster's outbox and bus) is unreachable, sends are refused; chatd reconnects by itself",
        )
        .into_response();
    }
    if state.store_health.is_ready() {
        Json(json!({ "status": "ready" })).into_response()
    } else if state.store_health.is_up() {
        ApiError::unavailable("not ready: the store's migrations are not applied yet")
            .into_response()
    } else {
        ApiError::unavailable("not ready: the store is unreachable").into_response()
    }
}
