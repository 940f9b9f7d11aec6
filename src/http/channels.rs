//! `GET /api/channels` (beyond the original): the caller's conversations, the most recent
//! first. The listing itself, and what it promises while a client pages, is
//! `pipeline::channels`'.

use axum::Json;
use axum::extract::{RawQuery, State};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::ErrorBody;
use super::extract::QueryParams;
use super::paging;
use super::{ApiError, AppState, Caller};
use crate::error::Chain;
use crate::model::Message;
use crate::pipeline::channels::{self, ChannelsError, Sources};

const DEFAULT_LIMIT: u32 = 20;

/// One conversation: a channel the caller is in and its last message.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ChannelSummary {
    /// The channel: its canonical (sorted, de-duplicated) user ids.
    #[schema(example = json!(["alice", "bob"]))]
    participants: Vec<String>,
    /// The channel's newest message, stored or still on its way to the store.
    last_message: Message,
    /// RFC 3339, UTC, to the millisecond: `last_message.created_at`.
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "crate::model::rfc3339_millis")]
    last_activity: DateTime<Utc>,
}

impl From<Message> for ChannelSummary {
    fn from(last_message: Message) -> Self {
        Self {
            participants: last_message.participants.clone(),
            last_activity: last_message.created_at,
            last_message,
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/channels",
    tag = "messages",
    description = "The channels the caller is in, each with its last message, the most recent \
                   activity first (the last message's `created_at`, ties broken by id). A \
                   message accepted a moment ago already counts, before it is stored. Page \
                   with `before`: the id of the previous page's last item's `last_message`. \
                   A channel that gets a new message while a client pages moves to the top: \
                   it is never listed twice, and later pages do not list it.",
    params(
        ("limit" = inline(Option<paging::PageSize>), Query, description = "Channels per page, default 20, capped at 100."),
        ("before" = inline(Option<paging::BeforeId>), Query, description = "Only channels whose last message is older than the message with this \
            id: a chatd UUID v7 (hyphenated), or a 24-hex id of the original's, which must name \
            a stored message."),
    ),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The page: a JSON array, `[]` when there are none.",
            body = Vec<ChannelSummary>),
        (status = 400, description = "A bad `limit`, or a `before` that is not the id of a \
            message.", body = ErrorBody),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
        (status = 404, description = "`before` is a 24-hex id that no stored message has: there \
            is no place to page from.", body = ErrorBody),
        (status = 429, description = "Rate limited.", body = ErrorBody),
        (status = 500, description = "The store failed in a way that waiting will not fix.", body = ErrorBody),
        (status = 503, description = "The store or the outbox cannot be read right now.", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    Caller(user): Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<ChannelSummary>>, ApiError> {
    let params = QueryParams::parse(query.as_deref())?;
    let limit = paging::page_size(&params, "limit", DEFAULT_LIMIT)?;
    let before = paging::before(&params)?;
    let before = paging::locate(state.store.as_ref(), before).await?;
    let sources = Sources {
        store: &state.store,
        outbox: &state.outbox,
        bus: state.bus.as_ref(),
    };
    let lasts = channels::list(sources, &user, before.as_ref(), limit)
        .await
        .map_err(|e| match e {
            ChannelsError::Store(e) => ApiError::from(e),
            ChannelsError::Outbox(e) => {
                tracing::warn!(error = %Chain(&e), "the outbox could not be read");
                ApiError::unavailable("the outbox cannot be read right now, try again")
            }
        })?;
    Ok(Json(lasts.into_iter().map(ChannelSummary::from).collect()))
}
