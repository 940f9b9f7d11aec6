//! Request extractors that refuse with the contract's JSON errors.

use std::convert::Infallible;

use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequestParts, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::http::request::Parts;
use futures_util::StreamExt;
use serde_json::Value;

use super::{ApiError, AppState};
use crate::model::UserId;

/// The caller's verified user id, put in the request by the API guard.
#[derive(Debug, Clone)]
pub struct Caller(pub UserId);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::unauthorized("missing token: send Authorization: Bearer <JWT>")
        })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Infallible> {
        Ok(parts.extensions.get::<Caller>().cloned())
    }
}

/// A JSON object body of at most `MAX_BODY_BYTES`. A body that declares or turns out to be
/// larger is refused with 413 as soon as that is known, without reading the rest.
pub struct JsonBody(pub serde_json::Map<String, Value>);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.limits.max_body_bytes;
        let too_large =
            || ApiError::too_large(format!("the request body is larger than {limit} bytes"));
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(too_large());
        }
        let mut body = req.into_body().into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
            if bytes.len() + chunk.len() > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(object)) => Ok(Self(object)),
            Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
            Err(e) => Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
        }
    }
}

/// A query string's parameters; of a repeated key the first counts.
#[derive(Debug, Default)]
pub struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(query.unwrap_or(""))
            .map(Self)
            .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The user ids in field `name` of a JSON object: an array of valid user-id strings.
pub fn user_ids(
    body: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Vec<UserId>, ApiError> {
    let items = match body.get(name) {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(format!("{name} is required")));
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "{name} must be an array of user ids"
            )));
        }
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(id) => UserId::parse(id.as_str())
                .map_err(|e| ApiError::bad_request(format!("{name}: {e}"))),
            _ => Err(ApiError::bad_request(format!(
                "{name} must contain only strings"
            ))),
        })
        .collect()
}
