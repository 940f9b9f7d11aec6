//! `POST /api/messages` and `GET /api/messages/get`.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};

use super::deadline::Deadline;
use super::error::ErrorBody;
use super::extract::{JsonBody, QueryParams, user_ids};
use super::paging::{self, Before};
use super::{ApiError, AppState, Caller};
use crate::config::Limits;
use crate::model::{Channel, Message, UserId};
use crate::pipeline::outbox::OutboxError;
use crate::store::HistoryPage;

const DEFAULT_PAGE_SIZE: u32 = 50;
/// The de-facto header for making a POST safe to retry.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on a 202 that repeats an earlier one for the same key (Stripe's name for it).
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// The 202 body: the original's status line and the accepted message.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Queued {
    /// Always `message queued`.
    #[schema(example = "message queued")]
    status: &'static str,
    message: Message,
}

/// `POST /api/messages`' body, as documented; the handler reads it field by field so each
/// refusal can say what is wrong.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema only
pub struct SendRequest {
    /// The channel: user ids, in any order, duplicates allowed; the sender must be one of them.
    /// At most `MAX_PARTICIPANTS` distinct ids.
    #[schema(example = json!(["alice", "bob"]), min_items = 1)]
    participants: Vec<UserId>,
    /// At most `MAX_MESSAGE_BYTES` bytes of UTF-8.
    #[schema(example = "Hello everyone!", min_length = 1)]
    content: String,
}

/// `GET /api/messages/get`'s `participants`, as documented: user ids joined by `,`.
pub struct ParticipantList;

impl utoipa::PartialSchema for ParticipantList {
    fn schema() -> RefOr<Schema> {
        let id = UserId::schema_pattern();
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(format!("^{id}(?:,{id})*$")))
            .examples(["alice,bob"])
            .into()
    }
}

impl utoipa::ToSchema for ParticipantList {}

#[utoipa::path(
    post,
    path = "/api/messages",
    tag = "messages",
    description = "Sends a message to a channel. It is delivered at once to every open socket of \
                   every participant except the sender's, and stored asynchronously.",
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[\\x21-\\x7E]{1,255}$",
            description = "Makes the send safe to retry: 1 to 255 visible ASCII characters (no \
            spaces). A repeat with the same key and message answers \
            the first 202 again (with `Idempotent-Replayed: true`) and stores nothing new."),
    ),
    request_body(content = SendRequest, content_type = "application/json"),
    security(("bearerAuth" = [])),
    responses(
        (status = 202, description = "Accepted: queued for storage and delivered to the other \
            participants' sockets.", body = Queued,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answer \
                repeats an earlier send with the same `Idempotency-Key`; absent otherwise."))),
        (status = 400, description = "Malformed input: bad JSON, missing, empty or non-string \
            `participants`/`content`, an invalid user id, more than `MAX_PARTICIPANTS` \
            participants, or a malformed `Idempotency-Key`.", body = ErrorBody),
        (status = 401, description = "Missing or invalid token, or an `Authorization` header \
            that is not `Bearer <JWT>`.", body = ErrorBody),
        (status = 403, description = "The sender is not a participant of the channel.", body = ErrorBody),
        (status = 413, description = "The body is larger than `MAX_BODY_BYTES` (refused before it \
            is read whole), or `content` is larger than `MAX_MESSAGE_BYTES`.", body = ErrorBody),
        (status = 422, description = "This `Idempotency-Key` was already used by this sender for \
            a different message.", body = ErrorBody),
        (status = 429, description = "Rate limited (the sender's token bucket, or the client \
            address's without a token).", body = ErrorBody),
        (status = 503, description = "Overloaded (more than `OUTBOX_QUEUE` sends waiting), \
            shutting down, or the message could not be made durable; with `Retry-After: 1`. \
            Without `Retry-After` when a database file of this instance was found corrupted: \
            send to another instance.", body = ErrorBody),
    ),
)]
pub async fn send(
    State(state): State<AppState>,
    Caller(sender): Caller,
    deadline: Option<axum::Extension<Deadline>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, HeaderMap, Json<Queued>), ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    let channel = channel(user_ids(&body, "participants")?, &state.limits)?;
    let content = match body.get("content") {
        None | Some(Value::Null) => return Err(ApiError::bad_request("content is required")),
        Some(Value::String(content)) if content.is_empty() => {
            return Err(ApiError::bad_request("content must not be empty"));
        }
        Some(Value::String(content)) => content,
        Some(_) => return Err(ApiError::bad_request("content must be a string")),
    };
    if content.len() > state.limits.max_message_bytes {
        return Err(ApiError::too_large(format!(
            "content is larger than {} bytes",
            state.limits.max_message_bytes
        )));
    }
    require_participant(&channel, &sender)?;
    refuse_if_corrupted(&state)?;
    // From here the message may become durable: its sender must hear the 202, never a 408
    // that invites a retry of a message already accepted.
    if let Some(axum::Extension(deadline)) = deadline {
        deadline.disarm();
    }
    let appended = match state
        .acceptor
        .accept(&sender, &channel, content.clone(), idempotency_key)
        .await
    {
        Ok(appended) => appended,
        Err(e) => {
            let storage = matches!(e, OutboxError::Storage(_));
            let refused = ApiError::from(e);
            // The journal reports a corrupted file before its senders hear that the commit
            // failed: such a refusal says so.
            if storage {
                refuse_if_corrupted(&state)?;
            }
            return Err(refused);
        }
    };
    let mut reply_headers = HeaderMap::new();
    if appended.repeated {
        reply_headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    let queued = Queued {
        status: "message queued",
        message: appended.message,
    };
    Ok((StatusCode::ACCEPTED, reply_headers, Json(queued)))
}

/// Refuses every send once a database file was found corrupted while running: an outbox that
/// may lose what it holds cannot promise what a 202 promises, and a broken store would never
/// receive the message. 503 without `Retry-After`: retrying this instance will not help until
/// an operator restarts it on a sound file; `/ready` has already taken it out of rotation, so
/// a client or load balancer should send to another instance.
fn refuse_if_corrupted(state: &AppState) -> Result<(), ApiError> {
    match state.integrity.found().first() {
        None => Ok(()),
        Some(corrupted) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this instance accepts no messages: its {} database is corrupted; send to \
                 another instance",
                corrupted.database.label()
            ),
        )),
    }
}

/// The `Idempotency-Key` header, if sent: 1 to 255 visible ASCII characters, as the document's
/// pattern says (`[\x21-\x7E]`: no spaces).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"
        ))
    };
    let key = value.to_str().map_err(|_| invalid())?;
    let visible = key.bytes().all(|b| b.is_ascii_graphic());
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES || !visible {
        return Err(invalid());
    }
    Ok(Some(key.to_string()))
}

#[utoipa::path(
    get,
    path = "/api/messages/get",
    tag = "messages",
    description = "A channel's history, newest first (descending `created_at`, ties broken by \
                   id). Page with `page`/`size`, or with the cursor `before`, which stays correct \
                   while new messages arrive.",
    params(
        ("participants" = inline(ParticipantList), Query, description = "The channel: its user ids, \
            comma-separated, in any order. The caller must be one of them.", example = "alice,bob"),
        ("page" = Option<i64>, Query, description = "0-based page; `offset = page × size`.", minimum = 0, maximum = 9_223_372_036_854_775_807_i64),
        ("size" = inline(Option<paging::PageSize>), Query, description = "Messages per page, default 50, capped at 100."),
        ("before" = inline(Option<paging::BeforeId>), Query, description = "Only messages older than the message with this id: a chatd UUID v7 \
            (hyphenated), or a 24-hex id of the original's. A UUID v7 carries its own time, so \
            it works whether or not the message is stored; a 24-hex id must name a stored \
            message."),
    ),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The page: a JSON array of messages, `[]` when there are none.",
            body = Vec<Message>),
        (status = 400, description = "`participants` missing or invalid, a bad `page`/`size`, \
            or a `before` that is not a message id in either form.", body = ErrorBody),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
        (status = 403, description = "The caller is not a participant of the channel.", body = ErrorBody),
        (status = 404, description = "`before` is a 24-hex id that no stored message has: there \
            is no place in the history to page from.", body = ErrorBody),
        (status = 429, description = "Rate limited.", body = ErrorBody),
        (status = 500, description = "The store failed in a way that waiting will not fix.", body = ErrorBody),
        (status = 503, description = "The store is unavailable right now.", body = ErrorBody),
    ),
)]
pub async fn history(
    State(state): State<AppState>,
    Caller(reader): Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<Message>>, ApiError> {
    let request = parse_history_query(query.as_deref().unwrap_or(""))?;
    let channel = channel(request.participants, &state.limits)?;
    require_participant(&channel, &reader)?;
    let mut page = request.page;
    page.before = paging::locate(state.store.as_ref(), request.before).await?;
    Ok(Json(state.store.history(&channel, &page).await?))
}

fn channel(participants: Vec<UserId>, limits: &Limits) -> Result<Channel, ApiError> {
    Channel::new(participants, limits.max_participants)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

fn require_participant(channel: &Channel, user: &UserId) -> Result<(), ApiError> {
    if channel.contains(user) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "you are not a participant of this channel",
        ))
    }
}

struct HistoryRequest {
    participants: Vec<UserId>,
    /// Without its cursor, which [`paging::locate`] places.
    page: HistoryPage,
    before: Option<Before>,
}

/// `participants=a,b&page=0&size=50&before=<id>`; of a repeated key the first counts.
fn parse_history_query(query: &str) -> Result<HistoryRequest, ApiError> {
    let params = QueryParams::parse(Some(query))?;

    let participants = match params.get("participants") {
        None | Some("") => return Err(ApiError::bad_request("participants is required")),
        Some(list) => list
            .split(',')
            .map(|id| {
                UserId::parse(id).map_err(|e| ApiError::bad_request(format!("participants: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    // What the document admits (an int64, 0 or more), no more.
    let page: u64 = match params.get("page") {
        None => 0,
        Some(page) => page
            .parse::<i64>()
            .ok()
            .and_then(|page| u64::try_from(page).ok())
            .ok_or_else(|| ApiError::bad_request("page must be a whole number, 0 or more"))?,
    };
    let size = paging::page_size(&params, "size", DEFAULT_PAGE_SIZE)?;
    Ok(HistoryRequest {
        participants,
        page: HistoryPage {
            before: None,
            offset: page.saturating_mul(u64::from(size)),
            limit: size,
        },
        before: paging::before(&params)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_of(query: &str) -> HistoryPage {
        parse_history_query(query).unwrap().page
    }

    #[test]
    fn page_and_size_make_the_offset() {
        let page = page_of("participants=a,b");
        assert_eq!((page.offset, page.limit), (0, 50));
        let page = page_of("participants=a,b&page=2&size=10");
        assert_eq!((page.offset, page.limit), (20, 10));
        assert_eq!(page_of("participants=a&size=1000").limit, 100);
        // The largest page the document admits saturates rather than overflows.
        assert_eq!(
            page_of(&format!("participants=a&page={}&size=100", i64::MAX)).offset,
            u64::MAX
        );
        let beyond = format!("participants=a&page={}", u64::MAX);
        assert!(
            parse_history_query(&beyond).is_err(),
            "past the document's bound"
        );
    }

    #[test]
    fn participants_are_decoded_and_checked() {
        let ids = parse_history_query("participants=alice%20s,bob&participants=zed")
            .unwrap()
            .participants;
        let names: Vec<&str> = ids.iter().map(UserId::as_str).collect();
        assert_eq!(names, ["alice s", "bob"]);
        for bad in [
            "",
            "page=1",
            "participants=",
            "participants=a,,b",
            "participants=a%0Ab",
        ] {
            assert!(parse_history_query(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_numbers_are_refused() {
        for bad in ["page=-1", "page=x", "size=0", "size=-5", "size=1.5"] {
            assert!(
                parse_history_query(&format!("participants=a&{bad}")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn before_is_read_as_history_and_the_listing_read_it() {
        let legacy = parse_history_query("participants=a&before=65F1C0FFEE00000000000001").unwrap();
        assert_eq!(
            legacy.before,
            Some(Before::Stored("65f1c0ffee00000000000001".into()))
        );
        assert!(parse_history_query("participants=a&before=x").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_query_string_is_parsed_or_refused_never_panics(query in "\\PC{0,200}") {
            if let Ok(request) = parse_history_query(&query) {
                proptest::prop_assert!((1..=paging::MAX_PAGE_SIZE).contains(&request.page.limit));
                proptest::prop_assert!(!request.participants.is_empty());
            }
        }

        #[test]
        fn queries_built_from_parts_keep_their_meaning(page in 0u64..1_000_000, size in 1u32..1000) {
            let request = parse_history_query(&format!("participants=a,b&page={page}&size={size}")).unwrap();
            let size = size.min(paging::MAX_PAGE_SIZE);
            proptest::prop_assert_eq!(request.page.limit, size);
            proptest::prop_assert_eq!(request.page.offset, page * u64::from(size));
        }
    }
}
