//! What every `/api/*` request passes first: the bearer token, if any, is verified, then the
//! caller's token bucket is charged. Both refusals happen before the body is read.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use super::rate_limit::RateKey;
use super::{ApiError, AppState, Caller};
use crate::auth::bearer_token;

pub async fn api_guard(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = match req.headers().get(AUTHORIZATION) {
        None => None,
        Some(value) => {
            let token = value.to_str().ok().and_then(bearer_token).ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be 'Bearer <JWT>'")
            })?;
            let user = state
                .auth
                .verify(token)
                .await
                .map_err(|e| ApiError::unauthorized(e.to_string()))?;
            Some(user)
        }
    };
    let key = match &caller {
        Some(user) => RateKey::User(user.clone()),
        None => RateKey::Address(peer.ip()),
    };
    if let Err(wait) = state.limiter.check(key, Instant::now()) {
        metrics::counter!(crate::telemetry::RATE_LIMITED).increment(1);
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate limit exceeded, slow down",
        )
        .retry_after(seconds.max(1)));
    }
    if let Some(user) = caller {
        req.extensions_mut().insert(Caller(user));
    }
    Ok(next.run(req).await)
}
