//! MongoDB's conversations index: a summary collection beside the messages (`<messages>_channels`),
//! one document per (participant, channel) holding the channel's last message,
//! `{_id: {u: user, p: participants}, user, last: <the message document>}`, read through
//! `{user: 1, last.created_at: -1, last._id: -1}` (`migrations/mongo/0004_channels_index.json`).
//!
//! Why a summary rather than an aggregation over the messages: the last message of each of a
//! user's channels is a `$group` over every message of the user, which no index bounds (the
//! `participants` index is multikey, so it cannot hand out one channel's newest message per
//! step); the cost would grow with the user's history, not with the page. The summary costs a
//! page what the page returns. It is kept by the relay's batch write, after the messages are
//! inserted: a batch that fails in between is written again, idempotently, before it leaves
//! the outbox. `migrations/mongo/0005_channels_backfill.json` builds it for the documents
//! already there, the original service's `{_id: ObjectId, sender, content, created_at,
//! participants}` included, with the same rule, so it may run while the relay writes. Documents
//! another writer inserts later (the original service, still running beside chatd) reach the
//! summary only when a chatd message of their channel does, or when the backfill is run again.

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};

use super::{DUPLICATE_KEY, MongoStore, malformed, message_doc, message_from_doc, sorts_before};
use crate::model::{Message, UserId};
use crate::store::{Cursor, StoreError};

impl MongoStore {
    /// Makes each message its channel's last for every participant, unless a later one is:
    /// one update per participant of each channel of the batch, with the batch's newest.
    /// The filter matches the summary only when it holds an earlier message; when it holds a
    /// later one the upsert collides with it on `_id` and changes nothing, which is success.
    pub(super) async fn note_channels(&self, messages: &[&Message]) -> Result<(), StoreError> {
        let updates: Vec<Document> = newest_by_channel(messages)
            .into_iter()
            .flat_map(|m| {
                let last = message_doc(&Message {
                    sequence: None,
                    ..m.clone()
                });
                let earlier = sorts_before("last.", m.created_at, &m.id);
                m.participants.iter().map(move |user| {
                    doc! {
                        "q": {
                            "_id": { "u": user, "p": &m.participants },
                            "$or": earlier.clone(),
                        },
                        "u": { "$set": { "user": user, "last": last.clone() } },
                        "upsert": true,
                    }
                })
            })
            .collect();
        if updates.is_empty() {
            return Ok(());
        }
        let reply = self
            .call(self.database.run_command(doc! {
                "update": self.channels.name(),
                "updates": updates,
                "ordered": false,
                "writeConcern": { "w": "majority", "j": true },
            }))
            .await?;
        if reply.contains_key("writeConcernError") {
            // Applied, but not made durable as asked: as the messages' insert counts it.
            let e = "the channels summary's update did not meet its write concern";
            return Err(StoreError::Unavailable(e.into()));
        }
        let refused: Vec<&Document> = reply
            .get_array("writeErrors")
            .map(|errors| errors.iter().filter_map(Bson::as_document).collect())
            .unwrap_or_default();
        match refused
            .iter()
            .find(|e| e.get_i32("code").ok() != Some(DUPLICATE_KEY))
        {
            None => Ok(()),
            Some(error) => Err(StoreError::Failed(
                format!(
                    "updating the channels summary: code {}",
                    error.get_i32("code").unwrap_or_default()
                )
                .into(),
            )),
        }
    }

    /// A page of `user`'s channels by their last message, from the summary's index.
    pub(super) async fn channel_page(
        &self,
        user: &UserId,
        before: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let mut filter = doc! { "user": user.as_str() };
        if let Some(cursor) = before {
            filter.insert("$or", sorts_before("last.", cursor.created_at, &cursor.id));
        }
        let found = self
            .call(
                self.channels
                    .find(filter)
                    .sort(doc! { "last.created_at": -1, "last._id": -1 })
                    .limit(i64::from(limit)),
            )
            .await?;
        let docs: Vec<Document> = self.call(found.try_collect()).await?;
        docs.iter()
            .map(|doc| {
                let last = doc
                    .get_document("last")
                    .map_err(|_| malformed(doc, "last"))?;
                message_from_doc(last)
            })
            .collect()
    }
}

/// The newest of `messages` in each channel: a batch of one busy channel is one update per
/// participant, not one per message.
fn newest_by_channel<'a>(messages: &[&'a Message]) -> Vec<&'a Message> {
    let mut newest: BTreeMap<&[String], &Message> = BTreeMap::new();
    for &m in messages {
        let place = |m: &Message| (m.created_at, m.id.clone());
        match newest.get(m.participants.as_slice()) {
            Some(kept) if place(kept) >= place(m) => {}
            _ => {
                newest.insert(&m.participants, m);
            }
        }
    }
    newest.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_updates_each_channel_once_with_its_newest() {
        let batch = [
            Message::at("b", 20, &["a", "b"]),
            Message::at("c", 20, &["a", "b"]),
            Message::at("a", 10, &["a", "b"]),
            Message::at("d", 5, &["a", "c"]),
        ];
        let refs: Vec<&Message> = batch.iter().collect();
        let ids: Vec<&str> = newest_by_channel(&refs)
            .iter()
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(ids, ["c", "d"]);
    }
}
