//! The HTTP surface: routes, the API guard and the contract's errors.

mod admin;
mod admission;
mod admitted;
mod channels;
mod connections;
mod deadline;
mod dev_token;
mod error;
mod extract;
mod guard;
mod health;
mod messages;
mod newline;
mod openapi;
mod origins;
mod page;
mod paging;
mod rate_limit;
mod request_id;
mod request_metrics;
mod scrape;
mod serve;
mod ws;

use std::sync::Arc;

use axum::Router;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, Verifier};
use crate::cluster::Cluster;
use crate::cluster::census::Census;
use crate::config::{Limits, SocketSettings};
use crate::hub::Hub;
use crate::integrity::Integrity;
use crate::pipeline::accept::Acceptor;
use crate::pipeline::bus::EventBus;
use crate::pipeline::outbox::{Outbox, StreamOutbox};
use crate::store::DeadLetters;
use crate::store::MessageStore;
use crate::store::StoreHealth;
use crate::telemetry::Metrics;

pub use admission::Admission;
pub use error::ApiError;
pub use extract::Caller;
pub use origins::AllowedOrigins;
pub use rate_limit::RateLimiter;
pub use serve::{serve_connections, tls_acceptor};

/// What the handlers share, behind one `Arc`: axum clones the state into every request's
/// handler and middleware, and one reference count costs less than one per field (profiled:
/// cloning and dropping the fields was 4 % of a send's CPU).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub auth: Arc<Verifier>,
    /// Signs the page's development sign-ins (`POST /api/dev/token`): only while chatd signs
    /// with its generated development secret; `None` leaves the route unmounted.
    pub dev_tokens: Option<Arc<Authenticator>>,
    /// `index.html` as served; `None` (`WEB_UI=false`): the page is not mounted.
    pub web_page: Option<Arc<str>>,
    pub acceptor: Arc<Acceptor>,
    pub outbox: Arc<Outbox>,
    pub store: Arc<dyn MessageStore>,
    pub store_health: Arc<StoreHealth>,
    /// Files found corrupted while running: not ready, and sends refused.
    pub integrity: Arc<Integrity>,
    pub hub: Arc<Hub>,
    /// Counts sockets for `POST /api/connections`: this instance's, or the cluster's.
    pub census: Arc<Census>,
    /// `INSTANCE_ID`.
    pub instance: Arc<str>,
    /// `None`: one process, on the in-process bus.
    pub cluster: Option<Cluster>,
    /// What reconnect recovery asks for the events it remembers.
    pub bus: Arc<dyn EventBus>,
    /// Cluster mode: the outbox the instances share.
    pub stream: Option<Arc<StreamOutbox>>,
    pub limiter: Arc<RateLimiter>,
    pub dead_letters: Arc<DeadLetters>,
    pub metrics: Metrics,
    /// Serve `/metrics` on the main router (else on its own listener, `METRICS_PORT`).
    pub metrics_on_main: bool,
    /// `None`: the admin API is not mounted.
    pub admin_token: Option<Arc<str>>,
    pub limits: Limits,
    pub socket: SocketSettings,
    pub connections_require_auth: bool,
    /// Most missed messages a reconnecting socket is sent.
    pub recovery_limit: u32,
    /// Turns for reconnect recoveries: each holds its missed messages until they are written.
    pub recoveries: Arc<tokio::sync::Semaphore>,
    /// Web origins allowed to call chatd; empty: none.
    pub origins: Arc<AllowedOrigins>,
    /// A request taking longer is answered 408.
    pub request_timeout: Duration,
    /// Socket tasks, so shutdown can wait for their close handshakes.
    pub sockets: TaskTracker,
    pub shutdown: CancellationToken,
}

/// The routes of [`router`] and their methods, always mounted, for their request series at
/// zero (`request_metrics::register_route`). A route added there belongs here too, and in
/// `/openapi.json` (`openapi::ApiDoc`): a test holds the document to these tables.
const ROUTES: &[(&str, Method)] = &[
    ("/health", Method::GET),
    ("/ready", Method::GET),
    ("/ws", Method::GET),
    ("/api/messages", Method::POST),
    ("/api/messages/get", Method::GET),
    ("/api/channels", Method::GET),
    ("/api/connections", Method::POST),
    ("/openapi.json", Method::GET),
];
/// The chat page, when `WEB_UI` is on.
const PAGE_ROUTES: &[(&str, Method)] = &[("/", Method::GET), ("/assets/{file}", Method::GET)];
/// The page's development sign-in, when chatd signs with its generated development secret.
const DEV_ROUTES: &[(&str, Method)] = &[("/api/dev/token", Method::POST)];
/// `/metrics`, on the main router or the internal one.
const METRICS_ROUTES: &[(&str, Method)] = &[("/metrics", Method::GET)];
/// The admin API, when it is mounted.
const ADMIN_ROUTES: &[(&str, Method)] = &[
    ("/admin/dead-letters", Method::GET),
    ("/admin/dead-letters/replay", Method::POST),
    ("/admin/dead-letters/{id}", Method::GET),
    ("/admin/dead-letters/{id}", Method::DELETE),
];

/// Every route chatd can serve and its method, on whichever port: what `/openapi.json` must
/// document, no more and no less.
pub fn routes() -> Vec<(&'static str, Method)> {
    [
        ROUTES,
        PAGE_ROUTES,
        DEV_ROUTES,
        METRICS_ROUTES,
        ADMIN_ROUTES,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect()
}

pub fn router(state: AppState) -> Router {
    let mounted = [
        (ROUTES, true),
        (PAGE_ROUTES, state.web_page.is_some()),
        (DEV_ROUTES, state.dev_tokens.is_some()),
        (METRICS_ROUTES, true),
        (ADMIN_ROUTES, state.admin_token.is_some()),
    ];
    for (route, method) in mounted
        .into_iter()
        .filter_map(|(routes, on)| on.then_some(routes))
        .flatten()
    {
        request_metrics::register_route(route, method);
    }
    let mut api = Router::new()
        .route("/messages", post(messages::send))
        .route("/messages/get", get(messages::history))
        .route("/channels", get(channels::list))
        .route("/connections", post(connections::connections));
    if state.dev_tokens.is_some() {
        api = api.route("/dev/token", post(dev_token::issue));
    }
    let api = api.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        guard::api_guard,
    ));
    let mut router = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/ws", get(ws::upgrade))
        .route("/openapi.json", get(openapi::document))
        .nest("/api", api);
    if let Some(page) = &state.web_page {
        router = router.merge(
            Router::new()
                .route("/", get(page::index))
                .route("/assets/{file}", get(page::asset))
                .with_state(page.clone()),
        );
    }
    // With METRICS_PORT, /metrics and the admin API live on that internal port only.
    if state.metrics_on_main {
        router = router.route("/metrics", get(scrape::render));
        if let Some(admin) = admin_routes(&state) {
            router = router.nest("/admin", admin);
        }
    }
    router
        .route_layer(axum::middleware::from_fn(request_metrics::record))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.request_timeout,
            deadline::request_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.origins.clone(),
            origins::check_origin,
        ))
        .layer(axum::middleware::from_fn(request_id::assign))
        .layer(axum::middleware::from_fn(newline::end_json_with_newline))
        .with_state(state)
}

/// The admin API, when `ADMIN_TOKEN` turns it on.
fn admin_routes(state: &AppState) -> Option<Router<AppState>> {
    state.admin_token.as_ref()?;
    let admin = Router::new()
        .route("/dead-letters", get(admin::list))
        .route("/dead-letters/replay", post(admin::replay))
        .route("/dead-letters/{id}", get(admin::show).delete(admin::purge))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::admin_guard,
        ));
    Some(admin)
}

/// The internal port's (`METRICS_PORT`): `/metrics`, and the admin API when it is on, kept off
/// the port clients reach. Requests here are counted, logged and given ids like the main
/// port's.
pub fn internal_router(state: AppState) -> Router {
    let mut router = Router::new().route("/metrics", get(scrape::render));
    if let Some(admin) = admin_routes(&state) {
        router = router.nest("/admin", admin);
    }
    router
        .route_layer(axum::middleware::from_fn(request_metrics::record))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(request_id::assign))
        .layer(axum::middleware::from_fn(newline::end_json_with_newline))
        .with_state(state)
}

/// Unmatched requests miss the route layer, so they are counted here.
async fn not_found(method: Method) -> ApiError {
    request_metrics::record_request(
        "unmatched".into(),
        request_metrics::method_label(&method),
        StatusCode::NOT_FOUND,
        Duration::ZERO,
    );
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}
