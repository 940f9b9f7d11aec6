//! Reconnect recovery (beyond the original): a client that reconnects with `?since=<id>` first
//! gets, in order, what its user's channels received after that message, then the live stream,
//! with nothing missing and nothing twice at the seam.
//!
//! The socket is registered before the missed messages are looked up, so everything published
//! from then on is queued live. Then the lookup takes the outbox's horizon: an id such that
//! every message up to it is committed and every later one is published after this moment
//! (ids are given in commit order; see `outbox::journal`). The replay is every message in
//! `(since, horizon]`; the live stream is every frame after the horizon. So the seam is cut
//! by one id comparison, exactly: nothing missing, nothing twice, in id order.
//!
//! The replay reads the outbox (what the relay has not written yet) and then the store, in
//! that order: a row leaves the outbox only after the store has it, so a message the relay
//! moves between the two reads is in the second answer if it is not in the first. (Read at
//! the same time, or store first, a message moving in between was in neither.)
//!
//! That holds for one instance, whose journal orders its ids; instances of a cluster order
//! their own ids only, so a cluster needs a cluster-wide cursor (the broker's sequence).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

use crate::model::{Message, UserId};
use crate::outbox::{Outbox, OutboxError};
use crate::store::{MessageStore, StoreError};

/// What a reconnecting socket is sent before the live stream.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The missed messages, oldest first, serialized.
    pub frames: Vec<Utf8Bytes>,
    /// Live frames up to this id are not sent: they were replayed, or seen before `since`.
    pub seam: Option<Arc<str>>,
    /// More were missed than the limit: the client is told to page history instead.
    pub over_limit: Option<u32>,
    /// This recovery's turn (`RECOVERY_CONCURRENCY`), given back once its frames are written,
    /// so the memory recoveries hold at once is bounded.
    pub turn: Option<tokio::sync::OwnedSemaphorePermit>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

impl Recovery {
    /// The first frame when more than `limit` messages were missed.
    pub fn over_limit_notice(limit: u32) -> Utf8Bytes {
        serde_json::json!({
            "type": "recovery_limit_exceeded",
            "limit": limit,
            "error": "more messages were missed than can be replayed: page history instead",
        })
        .to_string()
        .into()
    }
}

/// The messages `user` missed after `since`, not counting the user's own (a sender's sockets
/// never receive its messages live either).
pub async fn missed(
    store: &dyn MessageStore,
    outbox: &Outbox,
    user: &UserId,
    since: &str,
    limit: u32,
) -> Result<Recovery, RecoveryError> {
    let horizon = outbox.horizon();
    let fetch = limit.saturating_add(1);
    // The outbox first: see the module's doc.
    let pending = outbox.pending_for(user, since, fetch).await?;
    let stored = store.missed_by(user, since, fetch).await?;
    // Both lists are in id order: what lies past the horizon comes live, and a list cut short
    // below the horizon means there may be more than the limit.
    let within = |messages: Vec<Message>| -> Vec<Message> {
        messages.into_iter().filter(|m| *m.id <= *horizon).collect()
    };
    let (pending, stored) = (within(pending), within(stored));
    let over_limit = Recovery {
        over_limit: Some(limit),
        seam: Some(horizon.clone()),
        ..Recovery::default()
    };
    if stored.len() > limit as usize || pending.len() > limit as usize {
        return Ok(over_limit);
    }
    let missed: BTreeMap<String, Message> = stored
        .into_iter()
        .chain(pending)
        .filter(|m| m.sender != user.as_str())
        .map(|m| (m.id.clone(), m))
        .collect();
    if missed.len() > limit as usize {
        return Ok(over_limit);
    }
    Ok(Recovery {
        frames: missed
            .values()
            .map(|m| {
                serde_json::to_string(m)
                    .expect("a message always serializes")
                    .into()
            })
            .collect(),
        seam: Some(horizon),
        over_limit: None,
        turn: None,
    })
}
