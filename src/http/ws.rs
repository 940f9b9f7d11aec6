//! `GET /ws`: the upgrade. The token is checked first, so a refused upgrade is an HTTP 401,
//! never an accepted socket that closes at once.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{RawQuery, State, WebSocketUpgrade};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::Duration;
use uuid::Uuid;

use super::error::ErrorBody;
use super::extract::QueryParams;
use super::{ApiError, AppState};
use crate::auth::bearer_token;
use crate::error::Chain;
use crate::hub::{self, Full, Prelude};
use crate::pipeline::recovery;

const SOCKET_READ_BUFFER: usize = 4 * 1024;
/// How long an upgrade with `since` waits for a recovery turn before it is refused with 503.
const RECOVERY_TURN_WAIT: Duration = Duration::from_secs(1);

#[utoipa::path(
    get,
    path = "/ws",
    tag = "sockets",
    description = "The WebSocket upgrade (RFC 6455): the socket receives every message of every \
                   channel the user is in, sent by others, as text frames of one message each \
                   (the frames and the close codes are described in AsyncAPI 3.0 by \
                   `asyncapi.yaml` at the root of the repository). The token is checked before \
                   the upgrade, so a refusal is an HTTP status on this request, never a socket \
                   that closes at once.",
    params(
        ("token" = Option<String>, Query, description = "The JWT, for clients that cannot set \
            `Authorization` on a WebSocket (browsers). The header wins when both are sent."),
        ("since" = Option<String>, Query, description = "A message id (UUID v7): first replays \
            what the user missed after it, then the live stream."),
    ),
    security(("bearerAuth" = []), ("tokenQuery" = [])),
    responses(
        (status = 101, description = "Switching Protocols: the socket is open."),
        (status = 400, description = "`since` is not a message id, or the request is not a \
            WebSocket upgrade (its `Connection`, `Upgrade`, `Sec-WebSocket-Version` or \
            `Sec-WebSocket-Key` header is missing or wrong).", body = ErrorBody),
        (status = 401, description = "No token, or an invalid one.", body = ErrorBody),
        (status = 426, description = "The connection cannot be upgraded.", body = ErrorBody),
        (status = 429, description = "The user already has `MAX_SOCKETS_PER_USER` sockets open.", body = ErrorBody),
        (status = 503, description = "`MAX_CONNECTIONS` sockets are open, too many reconnects \
            are recovering at once, or missed messages cannot be read right now.", body = ErrorBody),
    ),
)]
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Leniently: an unreadable query carries no token (401), and no `since`.
    let params = QueryParams::parse(query.as_deref()).unwrap_or_default();
    let token = match headers.get(AUTHORIZATION) {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(bearer_token)
            .map(str::to_owned),
        None => params
            .get("token")
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
    }
    .ok_or_else(|| {
        ApiError::unauthorized("missing token: send Authorization: Bearer <JWT> or ?token=<JWT>")
    })?;
    let user = state
        .auth
        .verify(&token)
        .await
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    let upgrade = upgrade.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let since = params
        .get("since")
        .filter(|since| !since.is_empty())
        .map(|since| match Uuid::parse_str(since) {
            Ok(id) if id.get_version_num() == 7 => Ok(id.to_string()),
            _ => Err(ApiError::bad_request("since must be the id of a message")),
        })
        .transpose()?;

    // Registered before the 101 goes out: a message sent the moment the client sees its socket
    // open is queued for it, not lost.
    let (registration, frames) = state.hub.register(user).map_err(|full| match full {
        Full::User(_) => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, full.to_string()).retry_after(1)
        }
        Full::Server(_) => ApiError::unavailable(full.to_string()),
    })?;
    // Looked up once the socket is registered, so nothing falls between lookup and live stream.
    let prelude = match &since {
        None => Prelude::default(),
        Some(since) => {
            // Recoveries take turns, so a burst of reconnects with ancient `since`s cannot
            // crowd out live sends; one that cannot get a turn soon is told to come back.
            let turn =
                tokio::time::timeout(RECOVERY_TURN_WAIT, state.recoveries.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .ok_or_else(|| {
                        ApiError::unavailable(
                            "too many reconnects are recovering at once, try again",
                        )
                    })?;
            let sources = recovery::Sources {
                store: state.store.clone(),
                outbox: &state.outbox,
                bus: state.bus.as_ref(),
                stream: state.stream.as_deref(),
            };
            recovery::missed(
                sources,
                registration.user(),
                since,
                state.recovery_limit,
                turn,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %Chain(&e), "reconnect recovery failed");
                ApiError::unavailable("missed messages cannot be read right now, try again")
            })?
        }
    };
    metrics::counter!(crate::telemetry::WS_OPENED).increment(1);
    let settings = state.socket;
    let shutdown = state.shutdown.clone();
    let sockets = state.sockets.clone();
    Ok(upgrade
        // Clients send nothing but pongs and the odd ignored frame: a small read buffer (the
        // default is 128 KiB per socket) keeps an idle socket cheap.
        .read_buffer_size(SOCKET_READ_BUFFER)
        .max_message_size(settings.max_inbound_bytes)
        .max_frame_size(settings.max_inbound_bytes)
        .on_upgrade(move |socket| {
            sockets.track_future(hub::run_socket(
                socket,
                registration,
                frames,
                settings,
                shutdown,
                prelude,
            ))
        })
        .into_response())
}
