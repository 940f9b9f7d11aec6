//! The probes: `GET /health`, the original's liveness answer plus the store and the outbox, and
//! `GET /ready`, what a load balancer asks before sending traffic.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use serde::Serialize;

use super::{ApiError, AppState};

/// `GET /health`'s body: the original's `status` and `time`, then what chatd adds.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`: the process answers.
    #[schema(example = "ok")]
    status: &'static str,
    /// RFC 3339, UTC, to the millisecond.
    #[schema(format = DateTime)]
    time: String,
    store: StoreStatus,
    outbox: OutboxStatus,
    /// WebSockets open on this instance.
    sockets: usize,
    /// `INSTANCE_ID`.
    instance: String,
    bus: BusStatus,
    /// Cluster mode only: the outbox the instances share.
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<StreamStatus>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StoreStatus {
    /// `sqlite` (embedded) or `mongodb`.
    backend: &'static str,
    up: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OutboxStatus {
    /// Accepted messages not yet in the store.
    pending: u64,
    /// Dead letters not yet moved into the store (normally 0).
    dead_lettered: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BusStatus {
    /// `local` (one process) or `nats` (cluster mode).
    kind: &'static str,
    /// Cluster mode only: whether NATS is reachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    connected: Option<bool>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StreamStatus {
    /// Messages in the shared stream waiting to be stored; `null` until first known.
    pending: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "probes",
    description = "Liveness, the original's answer, plus the store, the outbox, the sockets and \
                   the bus. Always 200 while the process serves.",
    responses((status = 200, description = "The process is up; what it knows of its parts.", body = Health)),
)]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let outbox = state.outbox.counts();
    Json(Health {
        status: "ok",
        time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        store: StoreStatus {
            backend: state.store.backend(),
            up: state.store_health.is_up(),
        },
        outbox: OutboxStatus {
            pending: outbox.pending,
            dead_lettered: outbox.dead_lettered,
        },
        sockets: state.hub.open(),
        instance: state.instance.to_string(),
        bus: match &state.cluster {
            Some(cluster) => BusStatus {
                kind: "nats",
                connected: Some(cluster.is_connected()),
            },
            None => BusStatus {
                kind: "local",
                connected: None,
            },
        },
        // The outbox the instances share, and what waits in it to be stored.
        stream: state.stream.as_ref().map(|stream| StreamStatus {
            pending: stream.waiting(),
        }),
    })
}

/// `GET /ready`'s 200 body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Ready {
    #[schema(example = "ready")]
    status: &'static str,
}

/// `GET /ready`'s 503 body: the contract's error body, and the corrupted files if any.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NotReady {
    /// Why, and what to do.
    error: String,
    /// The database files found corrupted while running; only then.
    #[serde(skip_serializing_if = "Option::is_none")]
    corrupted: Option<Vec<CorruptedFile>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CorruptedFile {
    /// Which database: `store` or `outbox`.
    file: &'static str,
    path: String,
    error: String,
}

/// `GET /ready`: 200 once the store is reachable and its migrations are applied. A database
/// file found corrupted while running makes it 503 for good, naming the file and what to do:
/// a load balancer takes the instance out, and only an operator can bring it back. In cluster
/// mode, losing NATS makes it 503 too: the instance can make no message durable and its
/// sockets would miss the other instances' messages, so a load balancer should send traffic
/// elsewhere until it is back.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "probes",
    description = "Readiness, for a load balancer: 200 once the store answers and its \
                   migrations are applied.",
    responses(
        (status = 200, description = "Ready for traffic.", body = Ready),
        (status = 503, description = "Not ready: the store is unreachable or its migrations are \
            not applied, or (cluster mode) NATS is unreachable; with `Retry-After: 1`. For good, \
            without `Retry-After`, once a database file was found corrupted while running: then \
            the body also lists the `corrupted` files.", body = NotReady),
    ),
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    let corrupted = state.integrity.found();
    if !corrupted.is_empty() {
        let advice: Vec<String> = corrupted.iter().map(|c| c.advice()).collect();
        let files: Vec<CorruptedFile> = corrupted
            .iter()
            .map(|c| CorruptedFile {
                file: c.database.label(),
                path: c.path.display().to_string(),
                error: c.error.clone(),
            })
            .collect();
        let body = NotReady {
            error: format!("not ready: {}", advice.join(" ")),
            corrupted: Some(files),
        };
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
        Json(Ready { status: "ready" }).into_response()
    } else if state.store_health.is_up() {
        ApiError::unavailable("not ready: the store's migrations are not applied yet")
            .into_response()
    } else {
        ApiError::unavailable("not ready: the store is unreachable").into_response()
    }
}
