//! Reconnect recovery (beyond the original): a client that reconnects with `?since=<id>` first
//! gets, in order, what its user's channels received after that message, then the live stream,
//! with nothing missing and nothing twice at the seam.
//!
//! The socket is registered before the missed messages are looked up, so everything published
//! from then on is queued live. The lookup reads the outbox (what the relay has not written
//! yet) and then the store, in that order: a row leaves the outbox only after the store has it,
//! so a message the relay moves between the two reads is in the second answer if it is not in
//! the first. (Read at the same time, or store first, a message moving in between was in
//! neither.) A message can be in both the lookup and the live queue, so the seam is cut by id:
//! a live frame whose message was replayed is skipped.
//!
//! `since` is an id, and ids are given in commit order, which is also the order messages reach
//! the bus (see `outbox::journal`): "every message after `since`" is exactly what a client that
//! saw `since` last has not seen. That holds for one instance, whose journal orders them;
//! instances of a cluster order their own ids only, so a cluster needs a cluster-wide cursor
//! (the broker's sequence) instead.

use std::collections::{BTreeMap, HashSet};

use axum::extract::ws::Utf8Bytes;

use crate::model::{Message, UserId};
use crate::outbox::{Outbox, OutboxError};
use crate::store::{MessageStore, StoreError};

/// What a reconnecting socket is sent before the live stream.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The missed messages, oldest first, serialized.
    pub frames: Vec<Utf8Bytes>,
    /// Their ids: live frames of these messages are not sent again.
    pub replayed: HashSet<String>,
    /// More were missed than the limit: the client is told to page history instead.
    pub over_limit: Option<u32>,
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
    let fetch = limit.saturating_add(1);
    // The outbox first: see the module's doc.
    let pending = outbox.pending_for(user, since, fetch).await?;
    let stored = store.missed_by(user, since, fetch).await?;
    // Either list cut short means there may be more than the limit: say so rather than replay
    // a history with a hole in it.
    if stored.len() > limit as usize || pending.len() > limit as usize {
        return Ok(Recovery {
            over_limit: Some(limit),
            ..Recovery::default()
        });
    }
    let missed: BTreeMap<String, Message> = stored
        .into_iter()
        .chain(pending)
        .filter(|m| m.sender != user.as_str())
        .map(|m| (m.id.clone(), m))
        .collect();
    if missed.len() > limit as usize {
        return Ok(Recovery {
            over_limit: Some(limit),
            ..Recovery::default()
        });
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
        replayed: missed.into_keys().collect(),
        over_limit: None,
    })
}
