use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Message;

/// A message that spent every persistence attempt, kept for operators to inspect, replay or
/// purge. The message is kept exactly as it was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub message: Message,
    pub error: Failure,
    pub attempts: u32,
    #[serde(with = "super::message::rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub first_failed_at: DateTime<Utc>,
    #[serde(with = "super::message::rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub last_failed_at: DateTime<Utc>,
    /// The chatd instance that gave up on it.
    pub instance: String,
}

impl DeadLetter {
    pub fn id(&self) -> &str {
        &self.message.id
    }
}

/// Why the store refused one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failure {
    /// A stable, short name: `duplicate_key`, `document_validation`, `constraint`, …
    pub kind: String,
    pub message: String,
}

impl Failure {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
        }
    }
}
