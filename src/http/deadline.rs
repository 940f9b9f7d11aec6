//! `HTTP_REQUEST_TIMEOUT`: a request that takes too long (a body trickling in, say) is answered
//! 408, unless its handler already did what the answer must report.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// A request's deadline, in its extensions: a handler disarms it once the request has done
/// something that must be answered truthfully (a message appended), so the answer is never a
/// 408 for work that happened.
#[derive(Clone, Default)]
pub struct Deadline(Arc<AtomicBool>);

impl Deadline {
    pub fn disarm(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn disarmed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A request that takes longer than this (a body trickling in, say) is answered 408, unless
/// its handler disarmed the [`Deadline`] first.
pub async fn request_deadline(
    State(timeout): State<Duration>,
    mut request: Request,
    next: Next,
) -> Response {
    let deadline = Deadline::default();
    request.extensions_mut().insert(deadline.clone());
    let response = next.run(request);
    tokio::pin!(response);
    tokio::select! {
        response = &mut response => response,
        () = tokio::time::sleep(timeout) => {
            if deadline.disarmed() {
                response.await
            } else {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "the request took too long")
                    .into_response()
            }
        }
    }
}
