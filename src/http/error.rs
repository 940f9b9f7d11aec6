use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Chain;
use crate::pipeline::outbox::OutboxError;
use crate::store::StoreError;

/// The contract's error body: what is wrong, in words.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": "you are not a participant of this channel"}))]
pub struct ErrorBody {
    pub error: String,
}

/// Every refusal: the contract's `{"error": "..."}` body with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message).retry_after(1)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_secs = Some(seconds);
        self
    }
}

/// A store that is away is worth retrying (503); any other store error is ours (500). The
/// details go to the log, not to the client.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %Chain(&e), "store unavailable");
                Self::unavailable("the store is unavailable right now, try again")
            }
            StoreError::Failed(_) => {
                tracing::error!(error = %Chain(&e), "store error");
                Self::internal("the store could not answer")
            }
        }
    }
}

/// A full or closing outbox is worth retrying soon (503), and so is one that could not write:
/// the message was not accepted. A reused idempotency key is the client's (422).
impl From<OutboxError> for ApiError {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::Overloaded => Self::unavailable("overloaded, try again shortly"),
            OutboxError::Closed => Self::unavailable("shutting down"),
            OutboxError::KeyReused => Self::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            OutboxError::Stream(_) => {
                tracing::warn!(error = %Chain(&e), "the cluster's stream did not take a message");
                Self::unavailable("the message could not be made durable in the cluster, try again")
            }
            OutboxError::Storage(_) | OutboxError::Thread(..) | OutboxError::Read(_) => {
                tracing::error!(error = %Chain(&e), "could not append to the outbox");
                Self::unavailable("the message could not be stored, try again")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: self.message,
        });
        let mut response = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
