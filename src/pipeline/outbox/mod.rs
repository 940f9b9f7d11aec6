//! The durable local outbox (in cluster mode, the shared stream instead: [`StreamOutbox`]). A message is appended here, and committed to disk, before its
//! sender hears 202; the [relay](crate::pipeline::relay) then drains it into the store. What
//! the store refuses on every attempt is marked dead here until it is safe in the store's dead
//! letters, which operators manage through [`DeadLetters`](crate::store::DeadLetters).

mod fresh;
mod journal;
mod read_around;
mod recipients;
mod stream;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::integrity::{Database, Integrity, Watch};
use crate::model::{Channel, DeadLetter, Event, Failure, Message, UserId};
use crate::sqlite_file::{self, Checkpointer, Migration, ReadPool};

use fresh::{Fresh, Next};
use journal::{Command, Journal, Outlets};
use read_around::Unreadable;
pub use stream::{OpenError, Progress, StreamOutbox};

const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "0001_outbox",
        sql: include_str!("../../../migrations/outbox/0001_outbox.sql"),
    },
    Migration {
        name: "0002_failure_details",
        sql: include_str!("../../../migrations/outbox/0002_failure_details.sql"),
    },
    Migration {
        name: "0003_idempotency_keys",
        sql: include_str!("../../../migrations/outbox/0003_idempotency_keys.sql"),
    },
    Migration {
        name: "0004_outbox_recipients",
        sql: include_str!("../../../migrations/outbox/0004_outbox_recipients.sql"),
    },
    Migration {
        name: "0005_wide_channels",
        sql: include_str!("../../../migrations/outbox/0005_wide_channels.sql"),
    },
];

/// Called by the journal with each new message once its commit is durable, in commit order
/// (the order of the messages' ids): live delivery hangs here.
pub type OnCommit = Box<dyn Fn(Arc<Event>) + Send>;

/// A message as its sender asked for it, before the outbox gives it an id.
#[derive(Debug, Clone)]
pub struct Draft {
    pub sender: UserId,
    pub channel: Channel,
    pub content: String,
    /// The sender's `Idempotency-Key`: a repeat within the window gets the first message back.
    pub idempotency_key: Option<String>,
    /// When the request was accepted, to measure delivery latency from.
    pub accepted_at: Instant,
}

impl Draft {
    /// A send without an idempotency key, accepted now.
    pub fn new(sender: &UserId, channel: &Channel, content: impl Into<String>) -> Self {
        Self {
            sender: sender.clone(),
            channel: channel.clone(),
            content: content.into(),
            idempotency_key: None,
            accepted_at: Instant::now(),
        }
    }

    /// Whether `message` is what this draft asks for: a reused key must name the same send.
    fn matches(&self, message: &Message) -> bool {
        message.sender == self.sender.as_str()
            && message.content == self.content
            && message.participants.iter().map(String::as_str).eq(self
                .channel
                .participants()
                .iter()
                .map(UserId::as_str))
    }
}

/// An append's answer.
#[derive(Debug, Clone)]
pub struct Appended {
    pub message: Message,
    /// The idempotency key had answered before: this is that first message, nothing new.
    pub repeated: bool,
}

/// How many messages wait in the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Appended and not yet in the store.
    pub pending: u64,
    /// Spent every attempt and not yet moved to the store's dead letters.
    pub dead_lettered: u64,
}

/// A message the store does not have yet, with its place in the outbox.
#[derive(Debug, Clone)]
pub struct PendingEntry {
    pub seq: i64,
    pub message: Message,
    pub attempts: u32,
}

#[cfg(test)]
impl PendingEntry {
    /// A note from alice to herself at `seq`, for the relay's unit tests.
    pub(crate) fn for_test(seq: i64, attempts: u32) -> Self {
        let alice = UserId::parse("alice").expect("a valid user id");
        let channel = Channel::new(vec![alice.clone()], 1).expect("a valid channel");
        Self {
            seq,
            message: Message::accept(&alice, &channel, format!("m{seq}")),
            attempts,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The journal's queue is full: the sender should try again shortly.
    #[error("the outbox is overloaded")]
    Overloaded,
    #[error("the outbox is closed")]
    Closed,
    /// An idempotency key came back with a different message.
    #[error("this Idempotency-Key was used for a different message")]
    KeyReused,
    /// Its file could not be read or written. Shared, because one failed group commit fails
    /// every command in it.
    #[error("the outbox's file could not be read or written")]
    Storage(#[source] Arc<rusqlite::Error>),
    #[error("starting the outbox's {0} thread")]
    Thread(&'static str, #[source] std::io::Error),
    /// A read on the blocking pool did not finish: it panicked, or the runtime is shutting down.
    #[error("an outbox read did not finish")]
    Read(#[from] tokio::task::JoinError),
    /// Cluster mode: JetStream did not confirm that it stored the message (NATS away, slow, or
    /// the stream full), or the idempotency keys' bucket did not answer.
    #[error("the cluster's stream did not take the message")]
    Stream(#[source] async_nats::Error),
}

impl From<rusqlite::Error> for OutboxError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Storage(Arc::new(e))
    }
}

impl From<sqlite_file::OpenError> for OutboxError {
    fn from(e: sqlite_file::OpenError) -> Self {
        match e {
            sqlite_file::OpenError::Sqlite(e) => e.into(),
            sqlite_file::OpenError::Thread(e) => Self::Thread("checkpoint", e),
        }
    }
}

pub struct Outbox {
    commands: mpsc::Sender<Command>,
    /// The id of the last message committed (see [`Outbox::horizon`]).
    horizon: Arc<std::sync::Mutex<Arc<str>>>,
    readers: Arc<ReadPool>,
    counts: watch::Receiver<OutboxCounts>,
    new_work: Arc<Notify>,
    /// New entries on their way to the relay in memory.
    fresh: Arc<Fresh>,
    /// Where corruption met on this file is reported.
    watch: Watch,
    /// The `seq`s found unreadable on damaged pages, which reads skip from then on.
    unreadable: Arc<Unreadable>,
    _checkpointer: Checkpointer,
}

impl Outbox {
    /// Opens (or creates) the outbox at `path` and starts its journal thread. At most `queue`
    /// commands wait for the next commit; failures it records name `instance`; idempotency
    /// keys answer for `key_window`; every new message goes to `on_commit` once durable.
    /// Corruption met while running is reported to `integrity`.
    pub fn open(
        path: &Path,
        queue: usize,
        instance: &str,
        key_window: Duration,
        on_commit: OnCommit,
        integrity: Arc<Integrity>,
    ) -> Result<Self, OutboxError> {
        let watch = Watch::new(integrity, Database::Outbox, path, sqlite_file::OUTBOX_HOLDS);
        sqlite_file::check_integrity(path, sqlite_file::OUTBOX_HOLDS)?;
        let (mut conn, checkpointer) = sqlite_file::open_writer(path)?;
        sqlite_file::migrate(&mut conn, MIGRATIONS)?;
        let initial = count(&conn)?;
        let (counts_tx, counts) = watch::channel(initial);
        let new_work = Arc::new(Notify::new());
        let (commands, receiver) = mpsc::channel(queue);
        // Before the first commit: an id made now, after every id of an earlier run (they are
        // time-ordered) and before every id this run's journal will give.
        let horizon = Arc::new(std::sync::Mutex::new(Arc::from(
            uuid::Uuid::now_v7().to_string(),
        )));
        let fresh = Arc::new(Fresh::new());
        let outlets = Outlets {
            counts: counts_tx,
            horizon: horizon.clone(),
            on_commit,
            fresh: fresh.clone(),
            new_work: new_work.clone(),
        };
        Journal::new(
            conn,
            instance.to_string(),
            key_window,
            watch.clone(),
            outlets,
            checkpointer.restart(),
        )
        .spawn(receiver)
        .map_err(|e| OutboxError::Thread("journal", e))?;
        Ok(Self {
            commands,
            horizon,
            readers: Arc::new(ReadPool::new(path, 2, watch.clone())),
            counts,
            new_work,
            fresh,
            watch,
            unreadable: Arc::default(),
            _checkpointer: checkpointer,
        })
    }

    /// Gives a draft its id and appends it, returning once it is committed to disk (and on
    /// its way to the bus). Concurrent appends share one commit. A full queue is refused at
    /// once rather than queued without bound.
    pub async fn append(&self, draft: Draft) -> Result<Appended, OutboxError> {
        let (done, committed) = oneshot::channel();
        self.commands
            .try_send(Command::Append { draft, done })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => OutboxError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => OutboxError::Closed,
            })?;
        committed.await.map_err(|_| OutboxError::Closed)?
    }

    /// The relay's next new entries: up to `limit` pending entries after `seq`, oldest first,
    /// from memory when the journal could hand them over, else from the file (see `fresh`).
    pub async fn next_pending(
        &self,
        seq: i64,
        limit: usize,
    ) -> Result<Vec<PendingEntry>, OutboxError> {
        match self.fresh.next(seq, limit) {
            Next::Entries(entries) => Ok(entries),
            Next::ReadDisk { drops } => {
                let read = self.pending_after(seq, limit).await?;
                self.fresh.read_from_disk(drops, read.len() < limit);
                Ok(read)
            }
        }
    }

    /// Up to `limit` pending (not dead) entries after `seq`, oldest first. In a corrupted
    /// outbox, the entries that can still be read, skipping those on damaged pages.
    async fn pending_after(
        &self,
        seq: i64,
        limit: usize,
    ) -> Result<Vec<PendingEntry>, OutboxError> {
        let readers = self.readers.clone();
        let (watch, unreadable, wanted) = (self.watch.clone(), self.unreadable.clone(), limit);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = tokio::task::spawn_blocking(move || {
            readers.read(|conn| {
                let read = conn
                    .prepare_cached(
                        "SELECT seq, id, sender, content, participants, created_at, attempts
                     FROM outbox WHERE dead = 0 AND seq > ?1 ORDER BY seq LIMIT ?2",
                    )
                    .and_then(|mut pending| {
                        pending
                            .query_map(params![seq, limit], |row| {
                                Ok(PendingEntry {
                                    seq: row.get(0)?,
                                    message: sqlite_file::message_from_row(row, 1)?,
                                    attempts: row.get(6)?,
                                })
                            })?
                            .collect::<rusqlite::Result<Vec<_>>>()
                    });
                match read {
                    Err(e) if sqlite_file::is_corruption(&e) => {
                        watch.check(&e);
                        read_around::pending_around(conn, seq, wanted, &unreadable)
                    }
                    read => read,
                }
            })
        })
        .await??;
        Ok(rows)
    }

    /// Whether this outbox was found corrupted while running: its bookkeeping may fail for
    /// good, and nothing may be appended to it.
    pub fn is_corrupted(&self) -> bool {
        self.watch.is_corrupted()
    }

    /// The store has these entries: they leave the outbox.
    pub async fn mark_stored(&self, seqs: Vec<i64>) -> Result<(), OutboxError> {
        self.command(|done| Command::Stored { seqs, done }).await
    }

    /// One more failed attempt for an entry; with `dead` it stops being retried and waits to
    /// be moved to the store's dead letters.
    pub async fn record_failure(
        &self,
        seq: i64,
        failure: Failure,
        attempts: u32,
        dead: bool,
    ) -> Result<(), OutboxError> {
        self.command(|done| Command::Failed {
            seq,
            failure,
            attempts,
            dead,
            done,
        })
        .await
    }

    /// Up to `limit` dead entries, oldest first, as dead letters signed by `instance`.
    pub async fn dead_entries(&self, limit: usize) -> Result<Vec<(i64, DeadLetter)>, OutboxError> {
        let readers = self.readers.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        tokio::task::spawn_blocking(move || {
            readers.read(|conn| {
                conn.prepare_cached(
                    "SELECT seq, id, sender, content, participants, created_at,
                            COALESCE(error_kind, 'unknown'), COALESCE(last_error, ''), attempts,
                            first_failed_at, last_failed_at, COALESCE(failed_by, '')
                     FROM outbox WHERE dead = 1 ORDER BY seq LIMIT ?1",
                )?
                .query_map([limit], |row| {
                    Ok((row.get(0)?, sqlite_file::dead_letter_from_row(row, 1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
        })
        .await?
        .map_err(OutboxError::from)
    }

    /// These dead entries are safe in the store's dead letters: they leave the outbox.
    pub async fn forget_dead(&self, seqs: Vec<i64>) -> Result<(), OutboxError> {
        self.command(|done| Command::Forgotten { seqs, done }).await
    }

    /// When the oldest message still waiting for the store was accepted.
    pub async fn oldest_pending(&self) -> Result<Option<DateTime<Utc>>, OutboxError> {
        let readers = self.readers.clone();
        let millis: Option<i64> = tokio::task::spawn_blocking(move || {
            readers.read(|conn| {
                conn.query_row(
                    "SELECT created_at FROM outbox WHERE dead = 0 ORDER BY seq LIMIT 1",
                    [],
                    |row| row.get(0),
                )
                .optional()
            })
        })
        .await??;
        Ok(millis.and_then(DateTime::from_timestamp_millis))
    }

    /// An id such that every message with an id up to it is committed (in the outbox, or
    /// already moved to the store) and every message after it will be published after this
    /// call: the exact seam between reading what a reconnecting socket missed and its live
    /// stream. Ids are given in commit order, so the last committed id is such an id.
    pub fn horizon(&self) -> Arc<str> {
        self.horizon.lock().expect("horizon lock").clone()
    }

    pub fn counts(&self) -> OutboxCounts {
        *self.counts.borrow()
    }

    /// Resolves once nothing is pending (dead letters do not count).
    pub async fn drained(&self) {
        let mut counts = self.counts.clone();
        // The sender lives in the journal thread for as long as this outbox does.
        let _ = counts.wait_for(|c| c.pending == 0).await;
    }

    /// Resolves when entries were appended since the last call returned.
    pub async fn new_work(&self) {
        self.new_work.notified().await;
    }

    async fn command(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), OutboxError>>) -> Command,
    ) -> Result<(), OutboxError> {
        let (done, applied) = oneshot::channel();
        self.commands
            .send(command(done))
            .await
            .map_err(|_| OutboxError::Closed)?;
        applied.await.map_err(|_| OutboxError::Closed)?
    }
}

fn count(conn: &rusqlite::Connection) -> rusqlite::Result<OutboxCounts> {
    conn.query_row(
        "SELECT COALESCE(SUM(dead = 0), 0), COALESCE(SUM(dead = 1), 0) FROM outbox",
        [],
        |row| {
            Ok(OutboxCounts {
                pending: row.get(0)?,
                dead_lettered: row.get(1)?,
            })
        },
    )
}
