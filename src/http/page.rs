//! `GET /` and `GET /assets/{file}`: the chat page of [`crate::web`], when `WEB_UI` is on.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::ApiError;
use super::error::ErrorBody;

#[utoipa::path(
    get,
    path = "/",
    tag = "page",
    description = "The chat page, when `WEB_UI` is on (the default); with `WEB_UI=false` this \
                   is an unknown route (404). Served with a Content-Security-Policy that allows \
                   this origin's own files only.",
    responses((status = 200, description = "The page.", body = String, content_type = "text/html")),
)]
pub async fn index(State(page): State<Arc<str>>) -> Response {
    crate::web::index(&page)
}

#[utoipa::path(
    get,
    path = "/assets/{file}",
    tag = "page",
    description = "The page's style sheet and ES modules, when `WEB_UI` is on.",
    params(("file" = String, Path, description = "A file name, such as `app.js`.")),
    responses(
        (status = 200, description = "The file (`text/javascript` or `text/css`).", body = String,
            content_type = "text/javascript"),
        (status = 404, description = "No such file.", body = ErrorBody),
    ),
)]
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    crate::web::asset(&name).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such file"))
}
