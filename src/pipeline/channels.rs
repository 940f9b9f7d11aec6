//! The conversations listing (`GET /api/channels`, beyond the original): the channels a user is
//! in, each as its last message, the most recent first, a page at a time.
//!
//! The store answers from its index of channels' last messages ([`MessageStore::channels`]),
//! which knows only what the relay wrote. The messages accepted and not stored yet are merged
//! in, so that a message sent a moment ago already is its channel's last: one process reads
//! them from its outbox (the newest [`PENDING_MOST`] of the user's, through the outbox's
//! (user, id) index); in cluster mode, where they wait in the stream, from what the bus
//! remembers of it (as reconnect recovery does). A message the relays have not stored and the
//! bus no longer remembers (the store has been away longer than the bus remembers) shows once
//! it is stored. As in recovery, the unstored messages are read before the store: one that the
//! relay moves in between is in the first answer if it is not in the second.
//!
//! A channel's place is its last message's `(created_at, id)`, which only grows, and a page
//! holds only channels placed before the cursor (the previous page's last message). So a
//! channel that gets a new message while a client pages moves above the cursor: it is not
//! listed again if it was, and is not listed by the later pages if it was not yet (the first
//! page, or the socket, shows it). The one exception: a channel placed by a message that was
//! not stored yet, and which then fails for good (a dead letter), falls back to its stored last
//! message and may be listed again by a later page.
//!
//! The merge, for a page of `limit` before cursor `C`: every unstored message is at most one
//! per channel (the channel's newest), and a channel's place is the greater of that and the
//! store's. The store is asked for `limit` more channels than there are unstored channels at
//! or above `C`, which are the only ones whose stored place below `C` is not their place: so
//! every channel of the true page is among those returned. An unstored channel below `C` that
//! the store did not return may have a stored last message at or above `C` (placing it above
//! the cursor): that message is looked up by the channel's history index, one read per such
//! channel, and only when paging with a cursor (without one, nothing is above it).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::bus::{EventBus, Since};
use super::outbox::{Outbox, OutboxError};
use crate::model::{Channel, Message, UserId};
use crate::store::{Cursor, HistoryPage, MessageStore, StoreError};

/// The most unstored messages of one user a listing reads from the outbox, newest first: a
/// channel whose unstored messages are all older than these shows its stored last message
/// until the relay catches up.
pub const PENDING_MOST: u32 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum ChannelsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// Where a listing reads.
pub struct Sources<'a> {
    pub store: &'a Arc<dyn MessageStore>,
    pub outbox: &'a Outbox,
    pub bus: &'a dyn EventBus,
}

/// Up to `limit` of `user`'s channels placed before `before`, each as its last message, the
/// most recent first.
pub async fn list(
    sources: Sources<'_>,
    user: &UserId,
    before: Option<&Cursor>,
    limit: u32,
) -> Result<Vec<Message>, ChannelsError> {
    // Unstored first: see the module's doc.
    let mut unstored = sources.outbox.latest_for(user, PENDING_MOST).await?;
    let mine = |message: &Message| message.participants.iter().any(|p| p == user.as_str());
    if let Some(recent) = sources
        .bus
        .recent(Since::Sequence(0), &|event| mine(&event.message))
    {
        unstored.extend(recent.events.iter().map(|event| event.message.clone()));
    }
    let unstored = newest_by_channel(unstored);
    let above = unstored
        .values()
        .filter(|m| !sorts_before(m, before))
        .count();
    let fetch = limit.saturating_add(u32::try_from(above).unwrap_or(u32::MAX));
    let stored = sources.store.channels(user, before, fetch).await?;
    let mut looked_up = Vec::new();
    if before.is_some() {
        for message in to_look_up(&unstored, &stored, before) {
            looked_up.extend(stored_last(sources.store.as_ref(), message).await?);
        }
    }
    Ok(merge(
        stored.into_iter().chain(looked_up),
        unstored.into_values(),
        before,
        limit,
    ))
}

/// A message's place: history's order.
fn place(message: &Message) -> (DateTime<Utc>, &str) {
    (message.created_at, &message.id)
}

fn sorts_before(message: &Message, cursor: Option<&Cursor>) -> bool {
    cursor.is_none_or(|c| place(message) < (c.created_at, c.id.as_str()))
}

fn channel_key(message: &Message) -> String {
    message.participants.join(",")
}

/// The newest of `messages` in each channel, by channel key.
fn newest_by_channel(messages: impl IntoIterator<Item = Message>) -> BTreeMap<String, Message> {
    let mut newest: BTreeMap<String, Message> = BTreeMap::new();
    for message in messages {
        match newest.get(&channel_key(&message)) {
            Some(kept) if place(kept) >= place(&message) => {}
            _ => {
                newest.insert(channel_key(&message), message);
            }
        }
    }
    newest
}

/// The unstored channels placed before the cursor by their unstored message whose stored last
/// message the store did not return: it may sort at or above the cursor.
fn to_look_up<'a>(
    unstored: &'a BTreeMap<String, Message>,
    stored: &[Message],
    before: Option<&Cursor>,
) -> impl Iterator<Item = &'a Message> {
    let returned: Vec<String> = stored.iter().map(channel_key).collect();
    unstored
        .iter()
        .filter(move |(key, m)| sorts_before(m, before) && !returned.contains(key))
        .map(|(_, m)| m)
}

/// The stored last message of `message`'s channel, through its history index.
async fn stored_last(
    store: &dyn MessageStore,
    message: &Message,
) -> Result<Option<Message>, StoreError> {
    let ids = message
        .participants
        .iter()
        .map(|p| UserId::parse(p.as_str()))
        .collect::<Result<Vec<_>, _>>();
    let Some(channel) = ids
        .ok()
        .and_then(|ids| Channel::new(ids, message.participants.len()).ok())
    else {
        return Ok(None);
    };
    let page = HistoryPage {
        before: None,
        offset: 0,
        limit: 1,
    };
    Ok(store.history(&channel, &page).await?.into_iter().next())
}

/// Each channel placed by the greatest of its messages from every source, those before the
/// cursor, the most recent first, `limit` at most.
fn merge(
    stored: impl IntoIterator<Item = Message>,
    unstored: impl IntoIterator<Item = Message>,
    before: Option<&Cursor>,
    limit: u32,
) -> Vec<Message> {
    let mut lasts: Vec<Message> = newest_by_channel(stored.into_iter().chain(unstored))
        .into_values()
        .filter(|m| sorts_before(m, before))
        .collect();
    lasts.sort_by(|a, b| place(b).cmp(&place(a)));
    lasts.truncate(limit as usize);
    lasts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(m: &Message) -> Cursor {
        Cursor {
            created_at: m.created_at,
            id: m.id.clone(),
        }
    }

    fn ids(messages: &[Message]) -> Vec<&str> {
        messages.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn places_order_by_time_then_id() {
        let (a, b, c) = (
            Message::at("a", 10, &["x"]),
            Message::at("b", 10, &["x"]),
            Message::at("a", 11, &["x"]),
        );
        assert!(place(&a) < place(&b) && place(&b) < place(&c));
        assert!(sorts_before(&a, Some(&cursor(&b))));
        assert!(
            !sorts_before(&b, Some(&cursor(&b))),
            "the cursor is excluded"
        );
        assert!(!sorts_before(&c, Some(&cursor(&b))));
        assert!(sorts_before(&c, None));
    }

    #[test]
    fn an_unstored_message_moves_its_channel_and_the_newest_of_a_channel_counts() {
        let stored = vec![
            Message::at("s3", 30, &["a", "c"]),
            Message::at("s2", 20, &["a", "b"]),
            Message::at("s1", 10, &["a", "d"]),
        ];
        let unstored = vec![
            Message::at("u1", 40, &["a", "d"]),
            Message::at("u0", 5, &["a", "b"]),
            Message::at("u2", 50, &["a", "e"]),
        ];
        let merged = merge(stored, newest_by_channel(unstored).into_values(), None, 10);
        assert_eq!(ids(&merged), ["u2", "u1", "s3", "s2"]);
    }

    #[test]
    fn channels_at_or_above_the_cursor_stay_off_the_page() {
        let top = Message::at("u9", 90, &["a", "b"]);
        // The store still places a,b by an older message, below the cursor.
        let stored = vec![
            Message::at("s5", 50, &["a", "b"]),
            Message::at("s4", 40, &["a", "c"]),
        ];
        let at = cursor(&Message::at("s6", 60, &["a", "z"]));
        let merged = merge(stored, [top], Some(&at), 10);
        assert_eq!(ids(&merged), ["s4"]);
    }

    #[test]
    fn only_unstored_channels_the_store_did_not_return_are_looked_up() {
        let unstored = newest_by_channel([
            Message::at("u1", 10, &["a", "b"]),
            Message::at("u2", 20, &["a", "c"]),
            Message::at("u3", 99, &["a", "d"]),
        ]);
        let stored = vec![Message::at("s1", 15, &["a", "b"])];
        let at = cursor(&Message::at("s9", 90, &["a", "z"]));
        let looked: Vec<&str> = to_look_up(&unstored, &stored, Some(&at))
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(looked, ["u2"], "a,b was returned; a,d is above the cursor");
        // a,c's stored last is above the cursor: the channel is not on this page.
        let merged = merge(
            stored
                .into_iter()
                .chain([Message::at("s8", 95, &["a", "c"])]),
            unstored.into_values(),
            Some(&at),
            10,
        );
        assert_eq!(ids(&merged), ["s1"]);
    }

    #[test]
    fn a_page_is_cut_at_its_limit() {
        let stored: Vec<Message> = (0..5)
            .map(|i| Message::at(&format!("s{i}"), i, &["a", &format!("u{i}")]))
            .collect();
        let merged = merge(stored, [], None, 3);
        assert_eq!(ids(&merged), ["s4", "s3", "s2"]);
    }
}
