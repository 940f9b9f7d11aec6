//! SQLite as chatd opens it, for the outbox and the embedded store alike: an integrity check
//! before anything is served, WAL so readers never wait for the writer, `synchronous = FULL` so
//! a commit is on disk when it returns, and ordered, recorded migrations.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::types::Type;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row};

use crate::error::Chain;
use crate::integrity::Watch;
use crate::model::{DeadLetter, Failure, Message};

/// What the outbox holds, for [`check_integrity`]'s advice: it lives here so that the outbox's
/// own file needs one line for its check.
pub const OUTBOX_HOLDS: &str = "messages acknowledged (202) but not yet in the store: moving it \
     aside loses them, so restore it from a backup if you can";

/// What to do about a corrupted file, at start-up and while running alike.
pub const REMEDY: &str = "restore the file from a backup, or move it aside (with its -wal and \
     -shm files) to start with an empty one";

/// How long the start-up integrity check may take: a huge file is checked only this far rather
/// than holding up the start.
const INTEGRITY_CHECK_BUDGET: Duration = Duration::from_secs(5);
/// Steps (virtual-machine instructions, and pages and cells the check walks) between looks at
/// the clock during the check.
const STEPS_PER_LOOK: i32 = 100;
/// Most problems `quick_check` reports.
const PROBLEMS_SHOWN: u32 = 5;

/// How far the integrity check got.
#[derive(Debug, PartialEq, Eq)]
enum Checked {
    Whole,
    CutShort,
}

/// Runs SQLite's `quick_check` on the database at `path` before it is used, for at most a few
/// seconds. A corrupted file is an error that names it and says what to do; `holds` says what
/// is in it, which is what moving it aside would lose. A check cut short by its time budget is
/// logged and start-up goes on.
pub fn check_integrity(path: &Path, holds: &str) -> rusqlite::Result<()> {
    if check_within(path, holds, INTEGRITY_CHECK_BUDGET)? == Checked::CutShort {
        tracing::warn!(
            file = %path.display(),
            budget = ?INTEGRITY_CHECK_BUDGET,
            "the start-up integrity check was cut short: the file is too large to check in time; \
             run `sqlite3 <file> 'PRAGMA quick_check'` while chatd is stopped to check it whole"
        );
    }
    Ok(())
}

fn check_within(path: &Path, holds: &str, budget: Duration) -> rusqlite::Result<Checked> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let started = std::time::Instant::now();
    conn.progress_handler(STEPS_PER_LOOK, Some(move || started.elapsed() >= budget));
    let checked = conn
        .prepare(&format!("PRAGMA quick_check({PROBLEMS_SHOWN})"))
        .and_then(|mut check| {
            check
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        });
    let problems = match checked {
        Ok(rows) if rows == ["ok"] => return Ok(Checked::Whole),
        // Its report spans lines; the error is one.
        Ok(rows) => rows
            .iter()
            .flat_map(|row| row.lines())
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => match e.sqlite_error_code() {
            Some(ErrorCode::OperationInterrupted) => return Ok(Checked::CutShort),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => e.to_string(),
            _ => return Err(e),
        },
    };
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
        Some(format!(
            "{} is corrupted ({problems}). It holds {holds}. chatd will not start on it: \
             {REMEDY}",
            path.display()
        )),
    ))
}

/// Whether an error means the database file itself is damaged, so that no query touching the
/// damaged pages will ever succeed until an operator replaces the file: SQLITE_CORRUPT (with
/// its extended codes), SQLITE_NOTADB, a short read (the file was truncated under chatd:
/// its pages are gone) and SQLITE_IOERR_CORRUPTFS (the file system reports the damage).
///
/// Other I/O errors (a failed read, write or sync, a full disk) are not: they may pass, and
/// the store treats them as an outage that waiting can fix. A sticky verdict on one of those
/// would take a sound instance out of service for good.
pub fn is_corruption(e: &rusqlite::Error) -> bool {
    const IOERR_CORRUPTFS: std::ffi::c_int = rusqlite::ffi::SQLITE_IOERR | (33 << 8);
    match e {
        rusqlite::Error::SqliteFailure(error, _) => {
            matches!(
                error.code,
                ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase
            ) || matches!(
                error.extended_code,
                rusqlite::ffi::SQLITE_IOERR_SHORT_READ | IOERR_CORRUPTFS
            )
        }
        _ => false,
    }
}

/// How long a statement waits for a lock another connection holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a writer's RESTART checkpoint waits for readers to leave the WAL: the writer (the
/// journal, which senders wait for) is held that long at most, and is asked again next round
/// if the readers stayed.
const RESTART_WAIT: Duration = Duration::from_millis(100);

/// The page cache of a database's one writer, in KiB: the index pages its inserts land on. A
/// one-to-one load among 1,000 users touches about 3,000 of them in the store, one per user
/// or channel; in SQLite's default 2 MiB most inserts read their page back from the file first
/// (measured: 3.5 `pread`s per message, 1.1 with this cache). Memory only grows to it as pages
/// are used.
const WRITER_CACHE_KIB: i64 = 32 * 1024;

pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// A connection for a database's one writer. Its commits never checkpoint: SQLite's automatic
/// checkpoint runs inside the commit that crosses the threshold and syncs the whole database
/// file, stalling every sender waiting on that commit for tens of milliseconds. A
/// [`Checkpointer`] does that work beside the writer instead.
pub fn open_writer(path: &Path) -> Result<(Connection, Checkpointer), OpenError> {
    let conn = open(path)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Negative: a size in KiB rather than a number of pages.
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    Ok((conn, Checkpointer::start(path)?))
}

/// Why a database's writer could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("starting the checkpoint thread")]
    Thread(#[source] std::io::Error),
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// WAL frames (pages) past which a checkpoint makes sure the WAL starts over: about 32 MiB of
/// 4 KiB pages.
const WAL_RESTART_FRAMES: i64 = 8_192;

/// A thread that checkpoints a database's WAL in PASSIVE mode, which never waits for (or
/// blocks) the writer, so the writer does not pay for it. It stops when dropped.
///
/// PASSIVE alone does not keep the WAL small under a steady stream of commits: SQLite writes
/// the WAL from its start again only once a checkpoint has copied every frame, and a writer
/// that never pauses always leaves a few behind. The WAL then grew without end (850 MB beside
/// a 31 MB store after 50,000 messages in the one-to-one bench), and every commit extended the
/// file, paying the kernel to allocate and zero new pages. Past [`WAL_RESTART_FRAMES`] the
/// thread asks the writer ([`WalRestart`]) to checkpoint in RESTART mode between two of its
/// transactions: it copies the few frames PASSIVE left, so the next commit writes the WAL
/// from its start, over pages the file already has. (From this thread, RESTART waits for the
/// writer's lock and misses the short gaps between its transactions.)
pub struct Checkpointer {
    _stop: std::sync::mpsc::Sender<()>,
    restart: WalRestart,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Self, OpenError> {
        let conn = open(path)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let restart = WalRestart::default();
        let wanted = restart.clone();
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
                    match wal_frames(&conn, "PASSIVE") {
                        Ok(frames) if frames > WAL_RESTART_FRAMES => wanted.ask(),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %Chain(&e), "WAL checkpoint failed"),
                    }
                }
            })
            .map_err(OpenError::Thread)?;
        Ok(Self {
            _stop: stop,
            restart,
        })
    }

    /// What the writer checks between its transactions.
    pub fn restart(&self) -> WalRestart {
        self.restart.clone()
    }
}

/// The [`Checkpointer`]'s request that the writer start the WAL over.
#[derive(Clone, Default)]
pub struct WalRestart(Arc<AtomicBool>);

impl WalRestart {
    fn ask(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Called by the writer on its own connection, outside any transaction: checkpoints in
    /// RESTART mode if the checkpointer asked. Says whether it did.
    pub fn between_transactions(&self, writer: &Connection) -> bool {
        if !self.0.swap(false, Ordering::Relaxed) {
            return false;
        }
        let restarted = writer
            .busy_timeout(RESTART_WAIT)
            .and_then(|()| wal_frames(writer, "RESTART"));
        if let Err(e) = restarted.and(writer.busy_timeout(BUSY_TIMEOUT)) {
            tracing::warn!(error = %Chain(&e), "WAL restart failed");
        }
        true
    }
}

/// Checkpoints in `mode` and returns how many frames the WAL holds.
fn wal_frames(conn: &Connection, mode: &str) -> rusqlite::Result<i64> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        row.get(1)
    })
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
/// reads do not queue behind one connection. At most `max_idle` are kept between reads. Every
/// error passes its file's [`Watch`], so a read that meets a damaged page reports it.
pub struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    watch: Watch,
}

impl ReadPool {
    pub fn new(path: &Path, max_idle: usize, watch: Watch) -> Self {
        Self {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            max_idle,
            watch,
        }
    }

    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let taken = self.idle.lock().expect("read pool lock").pop();
        let conn = match taken {
            Some(conn) => conn,
            None => open(&self.path).inspect_err(|e| self.watch.check(e))?,
        };
        let result = f(&conn).inspect_err(|e| self.watch.check(e));
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
        sequence: None,
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
    fn a_wal_past_its_bound_is_written_from_its_start_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let writer = open(&path).unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        // A reader in the middle of a read holds the WAL as it is: PASSIVE copies what it can
        // and leaves the WAL to grow, which is what a writer that never pauses does.
        let reader = open(&path).unwrap();
        let write = |rows: i64| {
            writer
                .execute(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
                     INSERT INTO t SELECT zeroblob(4000) FROM n",
                    [rows],
                )
                .unwrap();
        };
        let wal_bytes = || std::fs::metadata(dir.path().join("db-wal")).unwrap().len();
        write(200);
        let grown = wal_bytes();
        let mut rows = reader.prepare("SELECT x FROM t").unwrap();
        let mut reading = rows.query([]).unwrap();
        reading.next().unwrap();
        write(200);
        let grown_more = wal_bytes();
        assert!(
            grown_more > grown,
            "the reader kept the WAL from starting over"
        );
        drop(reading);

        // Nothing asked: nothing done. Asked, the writer restarts the WAL itself.
        let restart = WalRestart::default();
        assert!(!restart.between_transactions(&writer));
        restart.ask();
        assert!(restart.between_transactions(&writer));
        write(200);
        assert_eq!(
            wal_bytes(),
            grown_more,
            "written from its start again, over the file's own pages"
        );
    }

    #[test]
    fn a_sound_file_passes_and_a_corrupted_one_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (x TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO t SELECT printf('%0100d', i) FROM n;",
        )
        .unwrap();
        let root: i64 = conn
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 't'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        drop(conn);
        assert_eq!(
            check_within(&path, "rows", Duration::from_secs(60)).unwrap(),
            Checked::Whole
        );
        // Past its budget the check gives up rather than holding up the start.
        assert_eq!(
            check_within(&path, "rows", Duration::ZERO).unwrap(),
            Checked::CutShort
        );

        // The table's root page (an interior page over 20,000 rows) becomes garbage.
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 4096 * (root as usize - 1);
        bytes[page..page + 4096].fill(0xA5);
        std::fs::write(&path, bytes).unwrap();
        let err = check_within(&path, "the rows", Duration::from_secs(60))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{} is corrupted", path.display())),
            "{err}"
        );
        assert!(err.contains("It holds the rows"), "{err}");
        assert!(err.contains("restore the file from a backup"), "{err}");
    }

    #[test]
    fn only_errors_that_mean_a_damaged_file_are_corruption() {
        let failure = |code| {
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some("x".into()))
        };
        for code in [
            rusqlite::ffi::SQLITE_CORRUPT,
            rusqlite::ffi::SQLITE_CORRUPT_INDEX,
            rusqlite::ffi::SQLITE_CORRUPT_SEQUENCE,
            rusqlite::ffi::SQLITE_CORRUPT_VTAB,
            rusqlite::ffi::SQLITE_NOTADB,
            rusqlite::ffi::SQLITE_IOERR_SHORT_READ,
            rusqlite::ffi::SQLITE_IOERR | (33 << 8), // SQLITE_IOERR_CORRUPTFS
        ] {
            assert!(is_corruption(&failure(code)), "{code}");
        }
        // Outages that may pass, and errors about a statement or a row.
        for code in [
            rusqlite::ffi::SQLITE_IOERR,
            rusqlite::ffi::SQLITE_IOERR_READ,
            rusqlite::ffi::SQLITE_IOERR_WRITE,
            rusqlite::ffi::SQLITE_IOERR_FSYNC,
            rusqlite::ffi::SQLITE_FULL,
            rusqlite::ffi::SQLITE_BUSY,
            rusqlite::ffi::SQLITE_READONLY,
            rusqlite::ffi::SQLITE_CANTOPEN,
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE,
            rusqlite::ffi::SQLITE_ERROR,
        ] {
            assert!(!is_corruption(&failure(code)), "{code}");
        }
        assert!(!is_corruption(&rusqlite::Error::QueryReturnedNoRows));
    }

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
