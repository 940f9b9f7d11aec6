//! A recovery's replay, produced a page at a time as the socket writes it: a recovering socket
//! holds the part of its range that may not be stored yet (read first, see `recovery`: the
//! outbox's, or in cluster mode the stream's) and one page of the store's, never the whole
//! replay.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::{Stream, stream};
use tokio::sync::OwnedSemaphorePermit;

use crate::error::Chain;
use crate::hub::{Early, Interrupted};
use crate::model::{Message, UserId};
use crate::store::{MessageStore, StoreError};

/// Messages read from the store at once. Small enough that 64 recovering sockets hold a few
/// MB between them; large enough that a replay of `RECOVERY_LIMIT` (1,000) is ten reads.
pub const PAGE: u32 = 100;

pub(super) struct Replay {
    store: Arc<dyn MessageStore>,
    user: UserId,
    range: Range,
    /// The part of the range that may not be stored yet, in the range's order, read before
    /// any page.
    pending: VecDeque<Message>,
    /// The store's current page, in the range's order, all within the range.
    page: VecDeque<Message>,
    /// The store has nothing more in the range.
    store_done: bool,
    /// The recovery's turn, given back when the replay is dropped: written, or the socket gone.
    _turn: OwnedSemaphorePermit,
}

/// The store's part of a replay, in the order it is cut in; the cursor moves through it
/// (keyset pagination).
pub(super) enum Range {
    /// One process: ids after `cursor` up to `horizon`.
    Ids { cursor: String, horizon: Arc<str> },
    /// Cluster mode: stream sequences after `cursor` up to `through`.
    Sequences { cursor: u64, through: u64 },
}

impl Range {
    /// The order of two messages in this range.
    fn order(&self, a: &Message, b: &Message) -> Ordering {
        match self {
            Self::Ids { .. } => a.id.cmp(&b.id),
            Self::Sequences { .. } => a.sequence.cmp(&b.sequence),
        }
    }
}

impl Replay {
    pub(super) fn new(
        store: Arc<dyn MessageStore>,
        user: &UserId,
        range: Range,
        pending: Vec<Message>,
        turn: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            store,
            user: user.clone(),
            range,
            pending: pending.into(),
            page: VecDeque::new(),
            store_done: false,
            _turn: turn,
        }
    }

    /// The missed messages as frames, oldest first. A store that fails part way ends them with
    /// [`Interrupted`]: the socket is closed with "reconnect with since" after the last one.
    pub(super) fn frames(self) -> impl Stream<Item = Result<Early, Interrupted>> + Send + 'static {
        stream::unfold(Some(self), |replay| async move {
            let mut replay = replay?;
            match replay.next().await {
                Ok(Some(message)) => Some((Ok(frame(&message)), Some(replay))),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "reconnect replay stopped: the store failed");
                    Some((Err(Interrupted), None))
                }
            }
        })
    }

    /// The next missed message, the user's own skipped.
    async fn next(&mut self) -> Result<Option<Message>, StoreError> {
        loop {
            // A page is there before the merge looks at it: a message in both parts must meet
            // itself at the front of both to be taken once.
            if self.page.is_empty() && !self.store_done {
                self.read_page().await?;
            }
            let range = &self.range;
            let order = |a: &Message, b: &Message| range.order(a, b);
            let Some(message) = take_first(&mut self.pending, &mut self.page, order) else {
                return Ok(None);
            };
            if message.sender != self.user.as_str() {
                return Ok(Some(message));
            }
        }
    }

    /// The next page after the cursor, within the range. Afterwards the page is not empty or
    /// the store is done.
    async fn read_page(&mut self) -> Result<(), StoreError> {
        let user = &self.user;
        match &mut self.range {
            Range::Ids { cursor, horizon } => {
                let read = self.store.missed_by(user, cursor, PAGE).await?;
                self.store_done = read.len() < PAGE as usize;
                for message in read {
                    if *message.id > **horizon {
                        // Later ones come live.
                        self.store_done = true;
                        break;
                    }
                    self.page.push_back(message);
                }
                if let Some(last) = self.page.back() {
                    cursor.clone_from(&last.id);
                }
            }
            Range::Sequences { cursor, through } => {
                let read = self
                    .store
                    .missed_in_stream(user, *cursor, *through, PAGE)
                    .await?;
                self.store_done = read.len() < PAGE as usize;
                if let Some(last) = read.last().and_then(|m| m.sequence) {
                    *cursor = last;
                }
                self.page.extend(read);
            }
        }
        Ok(())
    }
}

pub(super) fn frame(message: &Message) -> Early {
    Early {
        text: serde_json::to_string(message)
            .expect("a message always serializes")
            .into(),
        id: Some(Arc::from(message.id.as_str())),
    }
}

/// Takes the first message in `order` off the front of two queues in that order; one at the
/// front of both is taken off both and returned once.
fn take_first(
    a: &mut VecDeque<Message>,
    b: &mut VecDeque<Message>,
    order: impl Fn(&Message, &Message) -> Ordering,
) -> Option<Message> {
    let order = match (a.front(), b.front()) {
        (Some(x), Some(y)) => order(x, y),
        (Some(_), None) => Ordering::Less,
        (None, _) => Ordering::Greater,
    };
    match order {
        Ordering::Less => a.pop_front(),
        Ordering::Greater => b.pop_front(),
        Ordering::Equal => {
            b.pop_front();
            a.pop_front()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Channel;

    fn messages(n: usize) -> Vec<Message> {
        let alice = UserId::parse("alice").unwrap();
        let bob = UserId::parse("bob").unwrap();
        let channel = Channel::new(vec![alice.clone(), bob], 10).unwrap();
        (0..n)
            .map(|i| Message::accept(&alice, &channel, format!("m{i}")))
            .collect()
    }

    fn merged(mut a: VecDeque<Message>, mut b: VecDeque<Message>) -> Vec<String> {
        let by_id = |x: &Message, y: &Message| x.id.cmp(&y.id);
        std::iter::from_fn(|| take_first(&mut a, &mut b, by_id).map(|m| m.content)).collect()
    }

    #[test]
    fn two_id_ordered_parts_merge_in_id_order_with_shared_messages_once() {
        let all = messages(8);
        let pick = |indexes: &[usize]| -> VecDeque<Message> {
            indexes.iter().map(|&i| all[i].clone()).collect()
        };
        // The outbox's part and the store's overlap where the relay wrote a message but had
        // not removed it from the outbox yet.
        let outbox = pick(&[1, 3, 4, 7]);
        let store = pick(&[0, 2, 3, 4, 5, 6]);
        let expected: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
        assert_eq!(merged(outbox.clone(), store.clone()), expected);
        assert_eq!(merged(store, outbox), expected, "whichever part is which");
        assert_eq!(merged(pick(&[]), pick(&[2, 5])), ["m2", "m5"]);
        assert_eq!(merged(pick(&[2, 5]), pick(&[])), ["m2", "m5"]);
        assert!(merged(pick(&[]), pick(&[])).is_empty());
    }
}
