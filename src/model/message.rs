use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Channel, UserId};

/// A chat message in the contract's format: the REST reply, the WebSocket frame and the
/// history item are all this, serialized the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "0193a0c4-7a2e-7c1e-9b55-4f0d3c2a1b10", "sender": "alice",
    "content": "Hello everyone!", "participants": ["alice", "bob", "charlie"],
    "created_at": "2025-10-31T10:30:45.123Z"}))]
pub struct Message {
    /// A UUID v7 for messages chatd accepted; a 24-hex ObjectId for the original's documents.
    pub id: String,
    pub sender: String,
    pub content: String,
    /// Canonical (sorted, de-duplicated) participants.
    pub participants: Vec<String>,
    /// RFC 3339, UTC, to the millisecond.
    #[serde(with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// In cluster mode, the message's place in the stream the instances share: the one order
    /// every instance delivers in, and the recovery cursor's. `None` in one process, where ids
    /// are that order. Kept in the store beside the message, never sent to clients.
    #[serde(skip)]
    pub sequence: Option<u64>,
}

impl Message {
    /// A newly accepted message: its id is a UUID v7, strictly increasing within the process,
    /// and `created_at` is the id's own timestamp, so ordering by `(created_at, id)` and ordering
    /// by id agree.
    pub fn accept(sender: &UserId, channel: &Channel, content: String) -> Self {
        let id = Uuid::now_v7();
        Self {
            id: id.to_string(),
            sender: sender.to_string(),
            content,
            participants: channel
                .participants()
                .iter()
                .map(UserId::to_string)
                .collect(),
            created_at: uuid_timestamp(&id).unwrap_or_else(Utc::now),
            sequence: None,
        }
    }

    /// For tests that place messages by hand: a message of `participants` (the first sends it)
    /// with this id, at `millis` since the epoch, whose content is its id.
    #[cfg(test)]
    pub(crate) fn at(id: &str, millis: i64, participants: &[&str]) -> Self {
        Self {
            id: id.into(),
            sender: participants[0].into(),
            content: id.into(),
            participants: participants.iter().map(|p| p.to_string()).collect(),
            created_at: DateTime::from_timestamp_millis(millis).expect("a time in range"),
            sequence: None,
        }
    }
}

/// The moment a UUID v7 (or v1/v6) was made, to the millisecond.
pub fn uuid_timestamp(id: &Uuid) -> Option<DateTime<Utc>> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(secs as i64, nanos - nanos % 1_000_000)
}

/// An accepted message on its way through the pipeline, with the instant it was accepted so
/// delivery latency can be measured.
#[derive(Debug)]
pub struct Event {
    pub message: Message,
    pub accepted_at: Instant,
}

/// Timestamps as the contract writes them: RFC 3339, UTC, milliseconds.
pub mod rfc3339_millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|at| at.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(names: &[&str]) -> Channel {
        let ids = names.iter().map(|n| UserId::parse(*n).unwrap()).collect();
        Channel::new(ids, 100).unwrap()
    }

    #[test]
    fn serializes_in_the_contract_format() {
        let alice = UserId::parse("alice").unwrap();
        let message = Message::accept(&alice, &channel(&["bob", "alice"]), "hi".into());
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["participants"], serde_json::json!(["alice", "bob"]));
        assert_eq!(json["sender"], "alice");
        let created_at = json["created_at"].as_str().unwrap();
        assert_eq!(
            created_at.len(),
            "2025-10-31T10:30:45.123Z".len(),
            "{created_at}"
        );
        assert!(created_at.ends_with('Z'));
        let back: Message = serde_json::from_value(json).unwrap();
        assert_eq!(back, message);
    }

    #[test]
    fn ids_increase_strictly_and_created_at_follows_them() {
        let alice = UserId::parse("alice").unwrap();
        let notes = channel(&["alice"]);
        let messages: Vec<Message> = (0..20_000)
            .map(|_| Message::accept(&alice, &notes, "x".into()))
            .collect();
        for pair in messages.windows(2) {
            assert!(pair[0].id < pair[1].id, "{} !< {}", pair[0].id, pair[1].id);
            assert!(pair[0].created_at <= pair[1].created_at);
        }
        let id = Uuid::parse_str(&messages[0].id).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(uuid_timestamp(&id), Some(messages[0].created_at));
    }
}
