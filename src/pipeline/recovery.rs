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
//! A recovery costs what it returns, however old `since` is:
//! 1. The outbox's pending messages in the range are read whole, through its (user, id) index,
//!    at most `limit + 1` of them. They are few: only what the relay has not written yet.
//! 2. The store is asked for the ids alone, through its (participant, id) index, at most
//!    `limit + 1`. With (1) they say whether more than `limit` were missed, the user's own
//!    messages counted too (that needs no message read), and then the client is told to page
//!    history instead (`over_limit_notice`).
//! 3. Otherwise the store's messages are read a page at a time ([`replay::PAGE`]) as the socket
//!    writes them, merged by id with (1); see `replay`. Every page is read after (1), so the
//!    argument above holds for each: a message of the range was in (1) or is in the store for
//!    every page read. One that is in both is sent once.
//!
//! That holds for one instance, whose journal orders its ids. In cluster mode the order is the
//! NATS stream's, and the cut is a stream sequence: see [`cluster`].

mod cluster;
mod replay;

use std::collections::BTreeSet;
use std::sync::Arc;

use futures_util::stream;
use tokio::sync::OwnedSemaphorePermit;

use super::bus::{EventBus, Recent};
use super::outbox::{Outbox, OutboxError, StreamOutbox};
use crate::hub::{Early, Prelude, Seam};
use crate::model::{Message, UserId};
use crate::store::{MessageStore, StoreError};

pub use replay::PAGE;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// Cluster mode: the stream could not say what it holds that the store may not have yet.
    #[error("reading the cluster's stream")]
    Stream(#[source] async_nats::Error),
}

/// The first frame when more than `limit` messages were missed.
pub fn over_limit_notice(limit: u32) -> Early {
    Early {
        id: None,
        text: serde_json::json!({
            "type": "recovery_limit_exceeded",
            "limit": limit,
            "error": "more messages were missed than can be replayed: page history instead",
        })
        .to_string()
        .into(),
    }
}

/// Where a recovery reads what was missed.
pub struct Sources<'a> {
    pub store: Arc<dyn MessageStore>,
    pub outbox: &'a Outbox,
    pub bus: &'a dyn EventBus,
    /// Cluster mode: the stream, which holds what no store has yet.
    pub stream: Option<&'a StreamOutbox>,
}

/// What a socket of `user` reconnecting with `since` is sent before the live stream: the
/// messages of its channels after `since`, not counting the user's own (a sender's sockets
/// never receive its messages live either), or the notice that they are more than `limit`.
/// `turn` (`RECOVERY_CONCURRENCY`) is held until the replay is written or the socket closes.
pub async fn missed(
    sources: Sources<'_>,
    user: &UserId,
    since: &str,
    limit: u32,
    turn: OwnedSemaphorePermit,
) -> Result<Prelude, RecoveryError> {
    if let Some(stream) = sources.stream {
        return cluster::missed(sources.store, stream, sources.bus, user, since, limit, turn).await;
    }
    let Sources { store, outbox, .. } = sources;
    let horizon = outbox.horizon();
    let fetch = limit.saturating_add(1);
    let within = |id: &str| id <= &*horizon;
    // The outbox first: see the module's doc.
    let mut pending = outbox.pending_for(user, since, fetch).await?;
    pending.retain(|m| within(&m.id));
    let stored = store.missed_ids(user, since, fetch).await?;
    // Both lists are in id order: what lies past the horizon comes live, and a list cut short
    // below the horizon means there may be more than the limit.
    let missed: BTreeSet<&str> = stored
        .iter()
        .map(String::as_str)
        .filter(|id| within(id))
        .chain(pending.iter().map(|m| m.id.as_str()))
        .collect();
    let over_limit = missed.len() > limit as usize;
    if over_limit {
        return Ok(Prelude {
            frames: Box::pin(stream::iter([Ok(over_limit_notice(limit))])),
            seam: Some(Seam::Id(horizon)),
        });
    }
    let range = replay::Range::Ids {
        cursor: since.to_string(),
        horizon: horizon.clone(),
    };
    Ok(Prelude {
        frames: Box::pin(replay::Replay::new(store, user, range, pending, turn).frames()),
        seam: Some(Seam::Id(horizon)),
    })
}

/// Whether `user`'s sockets receive `message` live: it is in one of the user's channels and was
/// not sent by the user.
fn theirs(user: &UserId, message: &Message) -> bool {
    message.sender != user.as_str() && message.participants.iter().any(|p| p == user.as_str())
}

/// The replay from what the bus remembers after `since` (cluster mode).
fn from_the_bus(recent: Recent, limit: u32, turn: OwnedSemaphorePermit) -> Prelude {
    let seam = Some(Seam::Sequence(recent.through));
    if recent.events.len() > limit as usize {
        return Prelude {
            frames: Box::pin(stream::iter([Ok(over_limit_notice(limit))])),
            seam,
        };
    }
    // The turn is held until the replay is written, as for a replay from the store.
    let frames = recent.events.into_iter().map(move |event| {
        let _turn = &turn;
        Ok(replay::frame(&event.message))
    });
    Prelude {
        frames: Box::pin(stream::iter(frames)),
        seam,
    }
}
