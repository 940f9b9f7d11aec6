//! Where history and dead letters live. The relay writes batches through [`MessageStore`], the
//! history endpoint reads through it, and the dead-letter tools manage what could not be
//! written. The embedded SQLite store is the default; MongoDB is used when `MONGO_URI` is set.

mod dead_letters;
mod health;
mod mongo;
mod sqlite;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::StoreSettings;
use crate::integrity::Integrity;
use crate::model::{Channel, DeadLetter, Failure, Message, UserId};

pub use dead_letters::{
    DeadLetterView, DeadLetters, Operator, ReplayOutcome, ReplayResult, Selection,
};
pub use health::StoreHealth;
pub use mongo::MongoStore;
pub use sqlite::SqliteStore;

/// The embedded store's file inside `DATA_DIR`.
pub const SQLITE_FILE: &str = "messages.db";

/// One message's outcome in a batch write: `Ok` when it is stored (or already was), else why
/// the store refused this message alone.
pub type WriteOutcome = Result<(), Failure>;

/// What a store error comes from: the backend's own error, with its causes.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or cannot write at all: waiting helps, and no single
    /// message is to blame.
    #[error("store unavailable")]
    Unavailable(#[source] Cause),
    /// The request itself failed.
    #[error("store error")]
    Failed(#[source] Cause),
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

/// Which dead letters to list, in id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterQuery {
    pub limit: u32,
    /// Only those whose error text contains this, ignoring case.
    pub error_contains: Option<String>,
    /// Only those with an id after this one (paging).
    pub after: Option<String>,
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// A short name for health reports and logs.
    fn backend(&self) -> &'static str;

    /// Answers when the store is reachable.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Applies the migrations not yet applied, in order, and returns their names.
    async fn migrate(&self) -> Result<Vec<String>, StoreError>;

    /// Writes a batch idempotently: an id that is already stored counts as written. `Err` means
    /// the batch as a whole failed; otherwise there is one outcome per message, in order.
    async fn insert_batch(&self, messages: &[Message]) -> Result<Vec<WriteOutcome>, StoreError>;

    /// A page of one channel's history, newest first, ties broken by id (descending).
    async fn history(
        &self,
        channel: &Channel,
        page: &HistoryPage,
    ) -> Result<Vec<Message>, StoreError>;

    /// Up to `limit` messages of any channel `user` is in, accepted after the message `after`
    /// (a UUID v7, so id order is acceptance order), oldest first.
    async fn missed_by(
        &self,
        user: &UserId,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError>;

    /// The ids of up to `limit` messages of any channel `user` is in after `after`, in order:
    /// what `missed_by` would return, so a reconnect can learn whether it missed more than it
    /// may replay. Answered from the store's index without sending the messages.
    async fn missed_ids(
        &self,
        user: &UserId,
        after: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;

    /// Up to `limit` of the channels `user` is in, each as its last message (the greatest
    /// `(created_at, id)`), the most recent first, ties broken by id (descending); only those
    /// whose last message sorts before `before`. Answered from an index of the channels' last
    /// messages, kept by [`Self::insert_batch`], never by reading every message of the user.
    async fn channels(
        &self,
        user: &UserId,
        before: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError>;

    /// The history position of a stored message, for ids that do not carry their own time.
    async fn locate(&self, id: &str) -> Result<Option<Cursor>, StoreError>;

    /// Cluster mode, whose store is MongoDB: the stream sequence stored with message `id`;
    /// `None` when it is not stored, or was stored without one (before cluster mode).
    async fn sequence_of(&self, _id: &str) -> Result<Option<u64>, StoreError> {
        Err(no_sequences(self.backend()))
    }

    /// Cluster mode: up to `limit` messages of any channel `user` is in whose stream sequence
    /// is in `(after, through]`, in sequence order: a reconnect's replay in the cluster's order.
    async fn missed_in_stream(
        &self,
        _user: &UserId,
        _after: u64,
        _through: u64,
        _limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        Err(no_sequences(self.backend()))
    }

    /// Cluster mode: the sequences alone of what [`Self::missed_in_stream`] would return, from
    /// the index, to learn whether a reconnect missed more than it may replay.
    async fn missed_sequences(
        &self,
        _user: &UserId,
        _after: u64,
        _through: u64,
        _limit: u32,
    ) -> Result<Vec<u64>, StoreError> {
        Err(no_sequences(self.backend()))
    }

    /// Keeps a dead letter, replacing an earlier one for the same message.
    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError>;

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError>;

    async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError>;

    async fn count_dead_letters(&self) -> Result<u64, StoreError>;

    /// Removes these dead letters and returns how many there were.
    async fn remove_dead_letters(&self, ids: &[String]) -> Result<u64, StoreError>;

    /// Adds `count` replays that ended as `result` to the totals the store keeps, which the
    /// CLI and every instance share.
    async fn count_replays(&self, result: &str, count: u64) -> Result<(), StoreError>;

    /// The replays' totals, by result.
    async fn replay_totals(&self) -> Result<Vec<(String, u64)>, StoreError>;
}

/// Cluster mode refuses to start on a store without stream sequences, so this is only met by
/// a caller that asked the wrong store.
fn no_sequences(backend: &str) -> StoreError {
    StoreError::Failed(format!("the {backend} store keeps no stream sequences").into())
}

/// Opens the configured store. Its migrations are applied separately ([`MessageStore::migrate`]),
/// so chatd can start while MongoDB is away. The embedded store reports a file found corrupted
/// while running to `integrity`.
pub async fn open(
    settings: &StoreSettings,
    data_dir: &Path,
    integrity: Arc<Integrity>,
) -> Result<Arc<dyn MessageStore>, StoreError> {
    Ok(match &settings.mongo {
        Some(mongo) => Arc::new(MongoStore::connect(mongo, settings.timeout).await?),
        None => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("creating DATA_DIR {}", data_dir.display()))
                .map_err(|e| StoreError::Failed(e.into()))?;
            Arc::new(
                SqliteStore::open(&data_dir.join(SQLITE_FILE), integrity)
                    .context("opening the embedded store")
                    .map_err(|e| StoreError::Failed(e.into()))?,
            )
        }
    })
}
