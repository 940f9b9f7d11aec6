//! Where history lives. The relay writes batches through [`MessageStore`] and the history
//! endpoint reads through it; the embedded SQLite store is the default backend.

mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::model::{Channel, Message};

pub use sqlite::SqliteStore;

/// One message's outcome in a batch write: `Ok` when it is stored (or already was), else why
/// this message alone could not be.
pub type WriteOutcome = Result<(), String>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or cannot write at all: waiting helps, and no single
    /// message is to blame.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The request itself failed.
    #[error("store error: {0}")]
    Failed(String),
}

/// Which slice of a channel's history to read, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// Only messages older than this one (cursor pagination).
    pub before: Option<Cursor>,
    pub offset: u64,
    pub limit: u32,
}

/// A position in a channel's history: the sort key of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: String,
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// A short name for health reports and logs.
    fn backend(&self) -> &'static str;

    /// Writes a batch idempotently: an id that is already stored counts as written. `Err` means
    /// the batch as a whole failed; otherwise there is one outcome per message, in order.
    async fn insert_batch(&self, messages: &[Message]) -> Result<Vec<WriteOutcome>, StoreError>;

    /// A page of one channel's history, newest first, ties broken by id (descending).
    async fn history(
        &self,
        channel: &Channel,
        page: &HistoryPage,
    ) -> Result<Vec<Message>, StoreError>;
}
