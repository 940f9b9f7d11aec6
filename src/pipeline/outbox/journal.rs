//! The outbox's only writer: a thread that applies queued commands in group commits.
//!
//! Appends get their ids here, in the order they are committed, and are published (through
//! [`OnCommit`]) in that same order once their commit is on disk. So id order, commit order and
//! the order in which sockets see messages are one order, and a reconnecting client's `since`
//! (the last id it saw) cuts the stream exactly.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::fresh::Fresh;
use super::{Appended, Draft, OnCommit, OutboxCounts, OutboxError, PendingEntry};
use crate::error::Chain;
use crate::integrity::Watch;
use crate::model::{Event, Failure, Message};
use crate::sqlite_file::{WalRestart, participants_json};
use crate::telemetry;

/// Most commands applied in one transaction.
const MAX_GROUP: usize = 1024;
/// How often idempotency keys older than their window are deleted.
const PRUNE_KEYS_EVERY: Duration = Duration::from_secs(60);

type Done = oneshot::Sender<Result<(), OutboxError>>;

pub(super) enum Command {
    Append {
        draft: Draft,
        done: oneshot::Sender<Result<Appended, OutboxError>>,
    },
    Stored {
        seqs: Vec<i64>,
        done: Done,
    },
    Failed {
        seq: i64,
        failure: Failure,
        attempts: u32,
        dead: bool,
        done: Done,
    },
    /// These dead entries are in the store's dead letters now.
    Forgotten {
        seqs: Vec<i64>,
        done: Done,
    },
}

pub(super) struct Journal {
    conn: Connection,
    /// Named in the failures this journal records.
    instance: String,
    /// How long an idempotency key keeps answering with its first message.
    key_window: Duration,
    /// Told of a commit that failed because the file is corrupted, before the senders hear.
    watch: Watch,
    outlets: Outlets,
    last_pruned: Option<std::time::Instant>,
    commit_duration: metrics::Histogram,
    /// The checkpointer's request to start the WAL over, served between groups.
    wal_restart: WalRestart,
}

/// Whom the journal tells about each durable commit, in this order.
pub(super) struct Outlets {
    pub counts: watch::Sender<OutboxCounts>,
    /// The last committed id, moved before the new messages are published.
    pub horizon: Arc<std::sync::Mutex<Arc<str>>>,
    /// Live delivery.
    pub on_commit: OnCommit,
    /// The relay: the new entries in memory, then a wake-up.
    pub fresh: Arc<Fresh>,
    pub new_work: Arc<Notify>,
}

/// What one command came to inside a group's transaction.
enum Applied {
    /// An append's answer: a new message (published once the commit is durable), an
    /// idempotency key's first message, or a refusal of this append alone. A new message
    /// comes with its `seq`.
    Append(Result<Appended, OutboxError>, Option<i64>),
    Update,
}

/// How a group commit changed the counts.
#[derive(Default)]
struct Delta {
    appended: u64,
    stored: u64,
    dead_lettered: u64,
    forgotten: u64,
}

impl Journal {
    pub(super) fn new(
        conn: Connection,
        instance: String,
        key_window: Duration,
        watch: Watch,
        outlets: Outlets,
        wal_restart: WalRestart,
    ) -> Self {
        Self {
            conn,
            instance,
            key_window,
            watch,
            outlets,
            last_pruned: None,
            commit_duration: metrics::histogram!(telemetry::OUTBOX_COMMIT_DURATION),
            wal_restart,
        }
    }

    pub(super) fn spawn(self, commands: mpsc::Receiver<Command>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("outbox-journal".into())
            .spawn(move || self.run(commands))
            .map(drop)
    }

    /// Takes whatever has queued while the previous commit was syncing and commits it as one
    /// transaction: under load many sends share one disk sync. Ends when every sender is gone.
    fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = commands.blocking_recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match commands.try_recv() {
                    Ok(command) => group.push(command),
                    Err(_) => break,
                }
            }
            match self.commit(&group) {
                Ok((applied, delta)) => self.committed(group.drain(..), applied, &delta),
                Err(e) => {
                    self.watch.check(&e);
                    tracing::error!(error = %Chain(&e), commands = group.len(), "outbox commit failed");
                    let e = Arc::new(e);
                    for command in group.drain(..) {
                        command.fail(OutboxError::Storage(e.clone()));
                    }
                }
            }
            self.prune_keys();
            self.wal_restart.between_transactions(&self.conn);
        }
    }

    /// Applies `group` in one transaction and commits it, timing the whole (what its senders
    /// wait for) into [`telemetry::OUTBOX_COMMIT_DURATION`].
    fn commit(&mut self, group: &[Command]) -> rusqlite::Result<(Vec<Applied>, Delta)> {
        let started = std::time::Instant::now();
        let tx = self.conn.transaction()?;
        let mut delta = Delta::default();
        let key_window_ms = i64::try_from(self.key_window.as_millis()).unwrap_or(i64::MAX);
        let applied = group
            .iter()
            .map(|command| apply(&tx, command, &self.instance, key_window_ms, &mut delta))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        tx.commit()?;
        self.commit_duration.record(started.elapsed());
        Ok((applied, delta))
    }

    /// After a durable commit: counts first, so a sender that got its 202 never sees a count
    /// without its message; then the new messages go to the bus in commit order, and to the
    /// relay; then replies.
    fn committed(
        &self,
        group: impl Iterator<Item = Command>,
        applied: Vec<Applied>,
        delta: &Delta,
    ) {
        let outlets = &self.outlets;
        outlets.counts.send_modify(|c| {
            c.pending =
                (c.pending + delta.appended).saturating_sub(delta.stored + delta.dead_lettered);
            c.dead_lettered =
                (c.dead_lettered + delta.dead_lettered).saturating_sub(delta.forgotten);
        });
        let last_appended = applied.iter().rev().find_map(|applied| match applied {
            Applied::Append(Ok(new), Some(_)) => Some(new.message.id.as_str()),
            _ => None,
        });
        if let Some(id) = last_appended {
            // Before publishing: a reader of the horizon never waits for a frame up to it.
            *outlets.horizon.lock().expect("horizon lock") = Arc::from(id);
        }
        let mut fresh = Vec::with_capacity(usize::try_from(delta.appended).unwrap_or(0));
        for (command, applied) in group.zip(applied) {
            if let (Command::Append { draft, .. }, Applied::Append(Ok(new), Some(seq))) =
                (&command, &applied)
            {
                (outlets.on_commit)(Arc::new(Event {
                    message: new.message.clone(),
                    accepted_at: draft.accepted_at,
                }));
                fresh.push(PendingEntry {
                    seq: *seq,
                    message: new.message.clone(),
                    attempts: 0,
                });
            }
            command.reply(applied);
        }
        if !fresh.is_empty() {
            outlets.fresh.push(fresh);
            outlets.new_work.notify_one();
        }
    }

    /// Keys past their window answer no more (see [`apply`]); this only frees their rows.
    fn prune_keys(&mut self) {
        if self
            .last_pruned
            .is_some_and(|at| at.elapsed() < PRUNE_KEYS_EVERY)
        {
            return;
        }
        self.last_pruned = Some(std::time::Instant::now());
        let cutoff = Utc::now().timestamp_millis()
            - i64::try_from(self.key_window.as_millis()).unwrap_or(i64::MAX);
        if let Err(e) = self.conn.execute(
            "DELETE FROM idempotency_keys WHERE created_at < ?1",
            [cutoff],
        ) {
            tracing::warn!(error = %Chain(&e), "pruning expired idempotency keys failed");
        }
    }
}

impl Command {
    /// Tells the caller how its command went. A caller that stopped waiting no longer needs it.
    fn reply(self, applied: Applied) {
        match (self, applied) {
            (Command::Append { done, .. }, Applied::Append(result, _)) => {
                let _ = done.send(result);
            }
            (command, _) => command.fail_or_ok(Ok(())),
        }
    }

    /// The group's transaction failed: nothing in it happened.
    fn fail(self, e: OutboxError) {
        match self {
            Command::Append { done, .. } => {
                let _ = done.send(Err(e));
            }
            command => command.fail_or_ok(Err(e)),
        }
    }

    fn fail_or_ok(self, result: Result<(), OutboxError>) {
        if let Command::Stored { done, .. }
        | Command::Failed { done, .. }
        | Command::Forgotten { done, .. } = self
        {
            let _ = done.send(result);
        }
    }
}

fn apply(
    tx: &Transaction<'_>,
    command: &Command,
    instance: &str,
    key_window_ms: i64,
    delta: &mut Delta,
) -> rusqlite::Result<Applied> {
    match command {
        Command::Append { draft, .. } => append(tx, draft, key_window_ms, delta),
        Command::Stored { seqs, .. } => {
            let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1 AND dead = 0")?;
            for seq in seqs {
                delta.stored += delete.execute([seq])? as u64;
            }
            Ok(Applied::Update)
        }
        Command::Failed {
            seq,
            failure,
            attempts,
            dead,
            ..
        } => {
            let now = Utc::now().timestamp_millis();
            let changed = tx
                .prepare_cached(
                    "UPDATE outbox SET attempts = ?2, error_kind = ?3, last_error = ?4, dead = ?5,
                         first_failed_at = COALESCE(first_failed_at, ?6), last_failed_at = ?6,
                         failed_by = ?7
                     WHERE seq = ?1 AND dead = 0",
                )?
                .execute(params![
                    seq,
                    attempts,
                    failure.kind,
                    failure.message,
                    dead,
                    now,
                    instance
                ])?;
            if *dead {
                delta.dead_lettered += changed as u64;
            }
            Ok(Applied::Update)
        }
        Command::Forgotten { seqs, .. } => {
            let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1 AND dead = 1")?;
            for seq in seqs {
                delta.forgotten += delete.execute([seq])? as u64;
            }
            Ok(Applied::Update)
        }
    }
}

/// Gives a draft its id (here, in commit order) and appends it, unless its idempotency key
/// already answered within the window.
fn append(
    tx: &Transaction<'_>,
    draft: &Draft,
    key_window_ms: i64,
    delta: &mut Delta,
) -> rusqlite::Result<Applied> {
    let now = Utc::now().timestamp_millis();
    if let Some(key) = &draft.idempotency_key {
        let first: Option<String> = tx
            .prepare_cached(
                "SELECT message FROM idempotency_keys
                 WHERE sender = ?1 AND key = ?2 AND created_at >= ?3",
            )?
            .query_row(
                params![
                    draft.sender.as_str(),
                    key,
                    now.saturating_sub(key_window_ms)
                ],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(first) = first {
            let first: Message = serde_json::from_str(&first).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
            })?;
            let answer = if draft.matches(&first) {
                Ok(Appended {
                    message: first,
                    repeated: true,
                })
            } else {
                Err(OutboxError::KeyReused)
            };
            return Ok(Applied::Append(answer, None));
        }
    }
    let m = Message::accept(&draft.sender, &draft.channel, draft.content.clone());
    tx.prepare_cached(
        "INSERT INTO outbox (id, sender, content, participants, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        m.id,
        m.sender,
        m.content,
        participants_json(&m.participants),
        m.created_at.timestamp_millis(),
    ])?;
    let seq = tx.last_insert_rowid();
    if let Some(key) = &draft.idempotency_key {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO idempotency_keys (sender, key, message, created_at)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            m.sender,
            key,
            serde_json::to_string(&m).expect("a message always serializes"),
            now
        ])?;
    }
    delta.appended += 1;
    let appended = Appended {
        message: m,
        repeated: false,
    };
    Ok(Applied::Append(Ok(appended), Some(seq)))
}
