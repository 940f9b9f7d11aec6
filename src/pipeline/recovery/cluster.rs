//! Reconnect recovery in cluster mode, in the order of the NATS stream (the cluster's outbox),
//! cut at one stream sequence whichever instance accepted each message.
//!
//! The socket is registered first, as in one process. Then:
//! 1. The bus's memory ([`EventBus::recent`]) is read under the lock its reader hands events
//!    on with: the newest events, and `through`, the sequence of the last one handed on. Every
//!    later message reaches the socket live; the replay is what lies in `(since, through]`.
//!    When the bus remembers `since` itself, what followed it there is the whole replay.
//! 2. Otherwise `since` is placed by the sequence the store keeps beside it, and the replay is
//!    made of what may not be stored yet, read first (as the outbox is read first in one
//!    process): the relays' ack floor (every message up to it is stored), then whatever lies
//!    between the floor and the bus's memory, scanned from the stream (nothing, unless the
//!    relays lag behind by more than the bus remembers); and then the store, a page at a time,
//!    by sequence. A message the relays store between these reads is either above the floor
//!    read (so among what was read first) or at or below it, stored before the floor moved
//!    past it and so in every page read later. One in both parts is sent once.
//! 3. A `since` the store has no sequence for (stored before cluster mode, an id chatd never
//!    gave, or one not stored yet that the bus forgot) cannot be placed in the stream's
//!    order: the socket gets the over-limit notice and pages history.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream;
use tokio::sync::OwnedSemaphorePermit;

use super::replay::{self, Range};
use super::{RecoveryError, from_the_bus, over_limit_notice, theirs};
use crate::hub::{Prelude, Seam};
use crate::model::{Event, Message, UserId};
use crate::pipeline::bus::{EventBus, Since};
use crate::pipeline::outbox::StreamOutbox;
use crate::store::MessageStore;

/// The most messages a recovery reads from the stream between the relays' floor and what the
/// bus remembers: beyond, the relays are far behind (the store is away) and the socket is
/// told to page history instead.
const SCAN_MOST: u64 = 100_000;
/// How long that read may take.
const SCAN_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn missed(
    store: Arc<dyn MessageStore>,
    stream: &StreamOutbox,
    bus: &dyn EventBus,
    user: &UserId,
    since: &str,
    limit: u32,
    turn: OwnedSemaphorePermit,
) -> Result<Prelude, RecoveryError> {
    let keep = |message: &Message| theirs(user, message);
    let theirs = |event: &Event| keep(&event.message);
    if let Some(recent) = bus.recent(Since::Id(since), &theirs) {
        return Ok(from_the_bus(recent, limit, turn));
    }
    let Some(after) = store.sequence_of(since).await? else {
        return Ok(notice(bus, limit));
    };
    let Some(recent) = bus.recent(Since::Sequence(after), &theirs) else {
        return Ok(notice(bus, limit));
    };
    let through = recent.through;
    let floor = stream
        .progress()
        .await
        .map_err(RecoveryError::Stream)?
        .floor;
    let unstored_after = after.max(floor);
    let scanned = tokio::time::timeout(
        SCAN_TIMEOUT,
        stream.scan(unstored_after, recent.from, SCAN_MOST, &keep),
    )
    .await
    .map_err(|elapsed| RecoveryError::Stream(elapsed.into()))?
    .map_err(RecoveryError::Stream)?;
    let Some(mut pending) = scanned else {
        return Ok(notice(bus, limit));
    };
    pending.extend(recent.events.iter().map(|event| event.message.clone()));
    let fetch = limit.saturating_add(1);
    let stored = store.missed_sequences(user, after, through, fetch).await?;
    let missed: BTreeSet<u64> = stored
        .into_iter()
        .chain(pending.iter().filter_map(|m| m.sequence))
        .collect();
    // This instance's reader may lag behind the store (`since` stored, not read here yet): the
    // client has every message up to `since`, so none of them comes live again.
    let seam = Some(Seam::Sequence(through.max(after)));
    if missed.len() > limit as usize {
        return Ok(Prelude {
            frames: Box::pin(stream::iter([Ok(over_limit_notice(limit))])),
            seam,
        });
    }
    let range = Range::Sequences {
        cursor: after,
        through,
    };
    Ok(Prelude {
        frames: Box::pin(replay::Replay::new(store, user, range, pending, turn).frames()),
        seam,
    })
}

/// The over-limit notice, cut where the live stream stands now.
fn notice(bus: &dyn EventBus, limit: u32) -> Prelude {
    let through = bus.recent(Since::Sequence(u64::MAX), &|_| false);
    Prelude {
        frames: Box::pin(stream::iter([Ok(over_limit_notice(limit))])),
        seam: through.map(|recent| Seam::Sequence(recent.through)),
    }
}
