//! The outbox's only writer: a thread that applies queued commands in group commits.

use std::sync::Arc;

use chrono::Utc;
use rusqlite::{Connection, Transaction, params};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::{OutboxCounts, OutboxError};
use crate::model::{Failure, Message};
use crate::sqlite::participants_json;

/// Most commands applied in one transaction.
const MAX_GROUP: usize = 1024;

type Done = oneshot::Sender<Result<(), OutboxError>>;

pub(super) enum Command {
    Append {
        message: Message,
        done: Done,
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

impl Command {
    fn done(self) -> Done {
        match self {
            Command::Append { done, .. }
            | Command::Stored { done, .. }
            | Command::Failed { done, .. }
            | Command::Forgotten { done, .. } => done,
        }
    }
}

pub(super) struct Journal {
    conn: Connection,
    /// Named in the failures this journal records.
    instance: String,
    counts: watch::Sender<OutboxCounts>,
    new_work: Arc<Notify>,
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
        counts: watch::Sender<OutboxCounts>,
        new_work: Arc<Notify>,
    ) -> Self {
        Self {
            conn,
            instance,
            counts,
            new_work,
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
            let outcome = self.commit(&group);
            match &outcome {
                // The counts move before anyone hears of the commit, so a sender that got its
                // 202 never sees a count without its message.
                Ok(delta) => {
                    self.counts.send_modify(|c| {
                        c.pending = (c.pending + delta.appended)
                            .saturating_sub(delta.stored + delta.dead_lettered);
                        c.dead_lettered =
                            (c.dead_lettered + delta.dead_lettered).saturating_sub(delta.forgotten);
                    });
                    if delta.appended > 0 {
                        self.new_work.notify_one();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, commands = group.len(), "outbox commit failed")
                }
            }
            for command in group.drain(..) {
                let reply = match &outcome {
                    Ok(_) => Ok(()),
                    Err(e) => Err(OutboxError::Storage(e.to_string())),
                };
                // A caller that stopped waiting no longer needs the answer.
                let _ = command.done().send(reply);
            }
        }
    }

    fn commit(&mut self, group: &[Command]) -> rusqlite::Result<Delta> {
        let tx = self.conn.transaction()?;
        let mut delta = Delta::default();
        for command in group {
            apply(&tx, command, &self.instance, &mut delta)?;
        }
        tx.commit()?;
        Ok(delta)
    }
}

fn apply(
    tx: &Transaction<'_>,
    command: &Command,
    instance: &str,
    delta: &mut Delta,
) -> rusqlite::Result<()> {
    match command {
        Command::Append { message: m, .. } => {
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
            delta.appended += 1;
        }
        Command::Stored { seqs, .. } => {
            let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1 AND dead = 0")?;
            for seq in seqs {
                delta.stored += delete.execute([seq])? as u64;
            }
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
        }
        Command::Forgotten { seqs, .. } => {
            let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1 AND dead = 1")?;
            for seq in seqs {
                delta.forgotten += delete.execute([seq])? as u64;
            }
        }
    }
    Ok(())
}
