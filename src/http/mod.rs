//! The HTTP surface: routes, the API guard and the contract's errors.

mod admin;
mod connections;
mod error;
mod extract;
mod guard;
mod health;
mod messages;
mod rate_limit;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::{Limits, SocketSettings};
use crate::hub::Hub;
use crate::ingest::Ingest;
use crate::outbox::{DeadLetters, Outbox, StoreHealth};
use crate::store::MessageStore;

pub use error::ApiError;
pub use extract::Caller;
pub use rate_limit::RateLimiter;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<Authenticator>,
    pub ingest: Arc<Ingest>,
    pub outbox: Arc<Outbox>,
    pub store: Arc<dyn MessageStore>,
    pub store_health: Arc<StoreHealth>,
    pub hub: Arc<Hub>,
    pub limiter: Arc<RateLimiter>,
    pub dead_letters: Arc<DeadLetters>,
    /// `None`: the admin API is not mounted.
    pub admin_token: Option<Arc<str>>,
    pub limits: Limits,
    pub socket: SocketSettings,
    pub connections_require_auth: bool,
    /// Socket tasks, so shutdown can wait for their close handshakes.
    pub sockets: TaskTracker,
    pub shutdown: CancellationToken,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/messages", post(messages::send))
        .route("/messages/get", get(messages::history))
        .route("/connections", post(connections::connections))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::api_guard,
        ));
    let mut router = Router::new()
        .route("/health", get(health::health))
        .route("/ws", get(ws::upgrade))
        .nest("/api", api);
    if state.admin_token.is_some() {
        let admin = Router::new()
            .route("/dead-letters", get(admin::list))
            .route("/dead-letters/replay", post(admin::replay))
            .route("/dead-letters/{id}", get(admin::show).delete(admin::purge))
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                admin::admin_guard,
            ));
        router = router.nest("/admin", admin);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}
