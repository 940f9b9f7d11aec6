//! SQLite as chatd opens it, for the outbox and the embedded store alike: WAL so readers never
//! wait for the writer, `synchronous = FULL` so a commit is on disk when it returns, and
//! ordered, recorded migrations.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row};

use crate::model::{DeadLetter, Failure, Message};

pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// A connection for a database's one writer. Its commits never checkpoint: SQLite's automatic
/// checkpoint runs inside the commit that crosses the threshold and syncs the whole database
/// file, stalling every sender waiting on that commit for tens of milliseconds. A
/// [`Checkpointer`] does that work beside the writer instead.
pub fn open_writer(path: &Path) -> rusqlite::Result<(Connection, Checkpointer)> {
    let conn = open(path)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok((conn, Checkpointer::start(path)?))
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// A thread that checkpoints a database's WAL in PASSIVE mode, which never waits for (or
/// blocks) the writer, so the WAL stays small without the writer paying for it. It stops when
/// dropped.
pub struct Checkpointer {
    _stop: std::sync::mpsc::Sender<()>,
}

impl Checkpointer {
    fn start(path: &Path) -> rusqlite::Result<Self> {
        let conn = open(path)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let name = format!(
            "checkpoint-{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                // Runs until the sender is dropped (recv_timeout reports Disconnected).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                    }
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Self { _stop: stop })
    }
}

pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

/// Applies, in order, each migration not yet recorded in `_migrations`, each in its own
/// transaction with its record, and returns the names of those it applied.
pub fn migrate(conn: &mut Connection, migrations: &[Migration]) -> rusqlite::Result<Vec<String>> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _migrations (
             name TEXT PRIMARY KEY NOT NULL,
             applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
         )",
    )?;
    let mut applied_now = Vec::new();
    for migration in migrations {
        let tx = conn.transaction()?;
        let applied = tx
            .query_row(
                "SELECT 1 FROM _migrations WHERE name = ?1",
                [migration.name],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !applied {
            tx.execute_batch(migration.sql)?;
            tx.execute(
                "INSERT INTO _migrations (name) VALUES (?1)",
                [migration.name],
            )?;
            applied_now.push(migration.name.to_string());
        }
        tx.commit()?;
    }
    Ok(applied_now)
}

/// Read connections for blocking tasks: one is taken per read and put back after, so concurrent
/// reads do not queue behind one connection. At most `max_idle` are kept between reads.
pub struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl ReadPool {
    pub fn new(path: &Path, max_idle: usize) -> Self {
        Self {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let taken = self.idle.lock().expect("read pool lock").pop();
        let conn = match taken {
            Some(conn) => conn,
            None => open(&self.path)?,
        };
        let result = f(&conn);
        let mut idle = self.idle.lock().expect("read pool lock");
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
        result
    }
}

/// Participants as both tables keep them: a JSON array of the canonical ids.
pub fn participants_json(participants: &[String]) -> String {
    serde_json::to_string(participants).expect("a list of strings always serializes")
}

/// A message from the columns `id, sender, content, participants, created_at` (milliseconds),
/// starting at column `first`.
pub fn message_from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<Message> {
    let participants: String = row.get(first + 3)?;
    Ok(Message {
        id: row.get(first)?,
        sender: row.get(first + 1)?,
        content: row.get(first + 2)?,
        participants: serde_json::from_str(&participants).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(first + 3, Type::Text, e.into())
        })?,
        created_at: timestamp(row, first + 4)?,
    })
}

/// A dead letter from the columns of [`message_from_row`] followed by `error_kind,
/// error_message, attempts, first_failed_at, last_failed_at, instance`, starting at `first`.
pub fn dead_letter_from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        message: message_from_row(row, first)?,
        error: Failure::new(
            row.get::<_, String>(first + 5)?,
            row.get::<_, String>(first + 6)?,
        ),
        attempts: row.get(first + 7)?,
        first_failed_at: timestamp(row, first + 8)?,
        last_failed_at: timestamp(row, first + 9)?,
        instance: row.get(first + 10)?,
    })
}

/// A column of milliseconds since the Unix epoch.
fn timestamp(row: &Row<'_>, column: usize) -> rusqlite::Result<DateTime<Utc>> {
    let millis: i64 = row.get(column)?;
    DateTime::from_timestamp_millis(millis)
        .ok_or(rusqlite::Error::IntegralValueOutOfRange(column, millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let migrations = [
            Migration {
                name: "0001_t",
                sql: "CREATE TABLE t (x INTEGER)",
            },
            Migration {
                name: "0002_u",
                sql: "CREATE TABLE u (x INTEGER)",
            },
        ];
        let mut conn = open(&dir.path().join("db")).unwrap();
        assert_eq!(migrate(&mut conn, &migrations[..1]).unwrap(), ["0001_t"]);
        assert_eq!(migrate(&mut conn, &migrations).unwrap(), ["0002_u"]);
        assert!(migrate(&mut conn, &migrations).unwrap().is_empty());
        let names: Vec<String> = conn
            .prepare("SELECT name FROM _migrations ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(names, ["0001_t", "0002_u"]);
    }
}
