mod channels;

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use chrono::DateTime;
use rusqlite::{Connection, ErrorCode, OptionalExtension, ffi, params};

use super::{Cursor, DeadLetterQuery, HistoryPage, MessageStore, StoreError, WriteOutcome};
use crate::integrity::{Database, Integrity, Watch};
use crate::model::{Channel, DeadLetter, Failure, Message, UserId};
use crate::sqlite_file::{
    self, Checkpointer, Migration, ReadPool, dead_letter_from_row, message_from_row,
    participants_json,
};

const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "0001_messages",
        sql: include_str!("../../migrations/sqlite/0001_messages.sql"),
    },
    Migration {
        name: "0002_dead_letters",
        sql: include_str!("../../migrations/sqlite/0002_dead_letters.sql"),
    },
    Migration {
        name: "0003_message_participants",
        sql: include_str!("../../migrations/sqlite/0003_message_participants.sql"),
    },
    Migration {
        name: "0004_dead_letter_replays",
        sql: include_str!("../../migrations/sqlite/0004_dead_letter_replays.sql"),
    },
    Migration {
        name: "0005_channel_activity",
        sql: include_str!("../../migrations/sqlite/0005_channel_activity.sql"),
    },
];

const READERS: usize = 4;

/// What the embedded store's file holds, for the advice on a corrupted one.
const HOLDS: &str =
    "the embedded store's history and dead letters (a file moved aside starts empty)";

const DEAD_LETTER_COLUMNS: &str = "id, sender, content, participants, created_at, error_kind, \
     error_message, attempts, first_failed_at, last_failed_at, instance";

/// The embedded store: history and dead letters in a SQLite file in `DATA_DIR`.
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<ReadPool>,
    /// Where corruption met on the file, writing or reading, is reported.
    watch: Watch,
    /// Keeps the WAL small; asks this writer, between its transactions, to start it over.
    checkpointer: Checkpointer,
}

impl SqliteStore {
    /// Opens the store at `path`, checked first; corruption met while running is reported to
    /// `integrity`.
    pub fn open(path: &Path, integrity: Arc<Integrity>) -> Result<Self, sqlite_file::OpenError> {
        sqlite_file::check_integrity(path, HOLDS)?;
        let watch = Watch::new(integrity, Database::Store, path, HOLDS);
        let (writer, checkpointer) = sqlite_file::open_writer(path)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(ReadPool::new(path, READERS, watch.clone())),
            watch,
            checkpointer,
        })
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (writer, watch) = (self.writer.clone(), self.watch.clone());
        let restart = self.checkpointer.restart();
        blocking(move || {
            let mut conn = writer.lock().expect("store writer lock");
            let written = f(&mut conn)
                .inspect_err(|e| watch.check(e))
                .map_err(|e| classify(&conn, e));
            restart.between_transactions(&conn);
            written
        })
        .await?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (readers, watch) = (self.readers.clone(), self.watch.clone());
        // The outer error is opening a connection, which no message can cause. The inner one
        // is classified here, so the pool never sees it: it passes the watch first.
        blocking(move || {
            readers.read(|conn| {
                Ok(f(conn)
                    .inspect_err(|e| watch.check(e))
                    .map_err(|e| classify(conn, e)))
            })
        })
        .await?
        .context("opening a connection")
        .map_err(|e| StoreError::Unavailable(e.into()))?
    }
}

#[async_trait]
impl MessageStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    /// Answers while chatd's tables are there as it migrated them, so `/ready` says the store
    /// is down when one was dropped or renamed, not only when the file cannot be read.
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(check_schema).await
    }

    async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        self.write(|conn| sqlite_file::migrate(conn, MIGRATIONS))
            .await
    }

    async fn insert_batch(&self, messages: &[Message]) -> Result<Vec<WriteOutcome>, StoreError> {
        let messages = messages.to_vec();
        self.write(move |conn| insert_all(conn, &messages)).await
    }

    async fn history(
        &self,
        channel: &Channel,
        page: &HistoryPage,
    ) -> Result<Vec<Message>, StoreError> {
        let key = channel.key();
        let page = page.clone();
        self.read(move |conn| read_page(conn, &key, &page)).await
    }

    async fn missed_by(
        &self,
        user: &UserId,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let (user, after) = (user.to_string(), after.to_string());
        self.read(move |conn| {
            // The (user, id) index reads exactly the rows returned, however old `after` is.
            conn.prepare_cached(
                "SELECT m.id, m.sender, m.content, m.participants, m.created_at
                 FROM message_participants p JOIN messages m ON m.id = p.id
                 WHERE p.user = ?2 AND p.id > ?1
                 ORDER BY p.id LIMIT ?3",
            )?
            .query_map(params![after, user, limit], |row| message_from_row(row, 0))?
            .collect()
        })
        .await
    }

    async fn missed_ids(
        &self,
        user: &UserId,
        after: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let (user, after) = (user.to_string(), after.to_string());
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id FROM message_participants WHERE user = ?2 AND id > ?1
                 ORDER BY id LIMIT ?3",
            )?
            .query_map(params![after, user, limit], |row| row.get(0))?
            .collect()
        })
        .await
    }

    async fn locate(&self, id: &str) -> Result<Option<Cursor>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            conn.query_row(
                "SELECT created_at FROM messages WHERE id = ?1",
                [&id],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|at| {
                at.and_then(DateTime::from_timestamp_millis)
                    .map(|created_at| Cursor { created_at, id })
            })
        })
        .await
    }

    async fn channels(
        &self,
        user: &UserId,
        before: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let (user, before) = (user.to_string(), before.cloned());
        self.read(move |conn| channels::page(conn, &user, before.as_ref(), limit))
            .await
    }

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let letter = letter.clone();
        self.write(move |conn| {
            let m = &letter.message;
            conn.execute(
                &format!(
                    "INSERT OR REPLACE INTO dead_letters ({DEAD_LETTER_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ),
                params![
                    m.id,
                    m.sender,
                    m.content,
                    participants_json(&m.participants),
                    m.created_at.timestamp_millis(),
                    letter.error.kind,
                    letter.error.message,
                    letter.attempts,
                    letter.first_failed_at.timestamp_millis(),
                    letter.last_failed_at.timestamp_millis(),
                    letter.instance,
                ],
            )
            .map(drop)
        })
        .await
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        let query = query.clone();
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters
                 WHERE (?1 IS NULL OR id > ?1)
                   AND (?2 IS NULL OR instr(lower(error_message), lower(?2)) > 0)
                 ORDER BY id LIMIT ?3"
            ))?
            .query_map(
                params![query.after, query.error_contains, query.limit],
                |row| dead_letter_from_row(row, 0),
            )?
            .collect()
        })
        .await
    }

    async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            conn.query_row(
                &format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?1"),
                [&id],
                |row| dead_letter_from_row(row, 0),
            )
            .optional()
        })
        .await
    }

    async fn count_dead_letters(&self) -> Result<u64, StoreError> {
        self.read(|conn| conn.query_row("SELECT COUNT(*) FROM dead_letters", [], |row| row.get(0)))
            .await
    }

    async fn remove_dead_letters(&self, ids: &[String]) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let mut removed = 0;
            {
                let mut delete = tx.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?;
                for id in &ids {
                    removed += delete.execute([id])? as u64;
                }
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn count_replays(&self, result: &str, count: u64) -> Result<(), StoreError> {
        let (result, count) = (result.to_string(), i64::try_from(count).unwrap_or(i64::MAX));
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO dead_letter_replays (result, count) VALUES (?1, ?2)
                 ON CONFLICT (result) DO UPDATE SET count = count + excluded.count",
                rusqlite::params![result, count],
            )
            .map(drop)
        })
        .await
    }

    async fn replay_totals(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT result, count FROM dead_letter_replays")?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .context("store task failed")
        .map_err(|e| StoreError::Failed(e.into()))
}

/// One transaction for the batch. A row that breaks a constraint fails alone; any other error
/// (disk full, I/O) rolls the whole batch back.
fn insert_all(conn: &mut Connection, messages: &[Message]) -> rusqlite::Result<Vec<WriteOutcome>> {
    let tx = conn.transaction()?;
    let mut outcomes = Vec::with_capacity(messages.len());
    let mut inserted_messages = Vec::with_capacity(messages.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (id, channel, sender, content, participants, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
        )?;
        let mut index = tx.prepare_cached(
            "INSERT OR IGNORE INTO message_participants (user, id) VALUES (?1, ?2)",
        )?;
        for m in messages {
            let result = insert.execute(params![
                m.id,
                m.participants.join(","),
                m.sender,
                m.content,
                participants_json(&m.participants),
                m.created_at.timestamp_millis(),
            ]);
            match result {
                Ok(inserted) => {
                    // A message already stored has its index rows already.
                    if inserted > 0 {
                        for user in &m.participants {
                            index.execute(params![user, m.id])?;
                        }
                        inserted_messages.push(m);
                    }
                    outcomes.push(Ok(()));
                }
                Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                    outcomes.push(Err(Failure::new("constraint", e.to_string())));
                }
                Err(e) => return Err(e),
            }
        }
    }
    channels::note_newest(&tx, inserted_messages)?;
    tx.commit()?;
    Ok(outcomes)
}

fn read_page(
    conn: &Connection,
    channel: &str,
    page: &HistoryPage,
) -> rusqlite::Result<Vec<Message>> {
    let offset = i64::try_from(page.offset).unwrap_or(i64::MAX);
    let limit = i64::from(page.limit);
    match &page.before {
        None => conn
            .prepare_cached(
                "SELECT id, sender, content, participants, created_at FROM messages
                 WHERE channel = ?1
                 ORDER BY created_at DESC, id DESC LIMIT ?2 OFFSET ?3",
            )?
            .query_map(params![channel, limit, offset], |row| {
                message_from_row(row, 0)
            })?
            .collect(),
        Some(cursor) => conn
            .prepare_cached(
                "SELECT id, sender, content, participants, created_at FROM messages
                 WHERE channel = ?1 AND (created_at, id) < (?2, ?3)
                 ORDER BY created_at DESC, id DESC LIMIT ?4 OFFSET ?5",
            )?
            .query_map(
                params![
                    channel,
                    cursor.created_at.timestamp_millis(),
                    cursor.id,
                    limit,
                    offset
                ],
                |row| message_from_row(row, 0),
            )?
            .collect(),
    }
}

/// Result codes that mean the database itself cannot be used now, whatever is written to it:
/// no message is to blame, so the relay holds its batch in the outbox and marks the store down
/// instead of spending attempts. Matched on the primary code, so every extended code (each
/// kind of I/O error, say) counts.
const OUTAGE_CODES: &[ErrorCode] = &[
    // SQLITE_IOERR: the disk or the file system failed.
    ErrorCode::SystemIoFailure,
    ErrorCode::DatabaseCorrupt, // SQLITE_CORRUPT
    // SQLITE_NOTADB: the file was replaced or damaged.
    ErrorCode::NotADatabase,
    ErrorCode::DiskFull, // SQLITE_FULL
    // SQLITE_BUSY, SQLITE_LOCKED: still locked after the busy timeout.
    ErrorCode::DatabaseBusy,
    ErrorCode::DatabaseLocked,
    // SQLITE_READONLY: the file or its directory.
    ErrorCode::ReadOnly,
    ErrorCode::CannotOpen,                // SQLITE_CANTOPEN
    ErrorCode::PermissionDenied,          // SQLITE_PERM
    ErrorCode::OutOfMemory,               // SQLITE_NOMEM
    ErrorCode::FileLockingProtocolFailed, // SQLITE_PROTOCOL
    ErrorCode::NoLargeFileSupport,        // SQLITE_NOLFS
];

/// The tables chatd reads and writes, with the columns it migrated them with.
const TABLES: &[(&str, &str)] = &[
    (
        "messages",
        "id, channel, sender, content, participants, created_at",
    ),
    ("dead_letters", DEAD_LETTER_COLUMNS),
    ("message_participants", "user, id"),
    (
        "channel_activity",
        "user, channel, last_created_at, last_id",
    ),
];

/// Errors that mean the store cannot be used now ([`OUTAGE_CODES`], and a schema that is no
/// longer the one chatd migrated: [`check_schema`]) make it unavailable; the rest are failures
/// of the request, which the relay narrows down to the message that causes them.
fn classify(conn: &Connection, e: rusqlite::Error) -> StoreError {
    if is_outage(&e) || (may_be_schema(&e) && check_schema(conn).is_err()) {
        StoreError::Unavailable(e.into())
    } else {
        StoreError::Failed(e.into())
    }
}

fn is_outage(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(ffi::Error { code, .. }, _) => OUTAGE_CODES.contains(code),
        _ => false,
    }
}

/// SQLITE_ERROR ("no such table", "no such column", among others) and SQLITE_SCHEMA: the
/// codes a statement fails with when the schema changed under it.
fn may_be_schema(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(
            ffi::Error {
                code,
                extended_code,
            },
            _,
        ) => *code == ErrorCode::SchemaChanged || extended_code & 0xff == ffi::SQLITE_ERROR,
        _ => false,
    }
}

/// Whether a statement reading every column of [`TABLES`] compiles. A message is only ever a
/// bound parameter and cannot stop a statement from compiling, so when this fails the schema is
/// broken (a table dropped or renamed), not the message. Prepared afresh, not from the
/// statement cache, so it is compiled against the schema as it is now.
fn check_schema(conn: &Connection) -> rusqlite::Result<()> {
    for (table, columns) in TABLES {
        conn.prepare(&format!("SELECT {columns} FROM {table} LIMIT 0"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::model::UserId;

    fn channel(names: &[&str]) -> Channel {
        Channel::new(
            names.iter().map(|n| UserId::parse(*n).unwrap()).collect(),
            10,
        )
        .unwrap()
    }

    fn page(before: Option<&Message>, offset: u64, limit: u32) -> HistoryPage {
        HistoryPage {
            before: before.map(|m| Cursor {
                created_at: m.created_at,
                id: m.id.clone(),
            }),
            offset,
            limit,
        }
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("store.db"), Arc::default()).unwrap();
        assert_eq!(
            store.migrate().await.unwrap(),
            [
                "0001_messages",
                "0002_dead_letters",
                "0003_message_participants",
                "0004_dead_letter_replays",
                "0005_channel_activity"
            ]
        );
        assert!(store.migrate().await.unwrap().is_empty());
        (dir, store)
    }

    fn ids(messages: &[Message]) -> Vec<&str> {
        messages.iter().map(|m| m.id.as_str()).collect()
    }

    #[tokio::test]
    async fn the_channels_index_is_backfilled_and_keeps_each_channels_last_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let mut conn = crate::sqlite_file::open(&path).unwrap();
            crate::sqlite_file::migrate(&mut conn, &MIGRATIONS[..4]).unwrap();
            // The newer first: the backfill keeps the greatest (created_at, id) whatever the
            // order it meets them in, ties broken by id.
            for m in [
                Message::at("m3", 30, &["a", "b"]),
                Message::at("m1", 10, &["a", "b"]),
                Message::at("m2", 20, &["a", "c"]),
                Message::at("m2b", 20, &["a", "c"]),
            ] {
                conn.execute(
                    "INSERT INTO messages (id, channel, sender, content, participants, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        m.id,
                        m.participants.join(","),
                        m.sender,
                        m.content,
                        participants_json(&m.participants),
                        m.created_at.timestamp_millis()
                    ],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path, Arc::default()).unwrap();
        assert_eq!(store.migrate().await.unwrap(), ["0005_channel_activity"]);
        let user = |id: &str| UserId::parse(id).unwrap();
        let list = |id: &'static str, before: Option<Cursor>, limit| {
            let store = &store;
            async move {
                store
                    .channels(&user(id), before.as_ref(), limit)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(ids(&list("a", None, 10).await), ["m3", "m2b"]);
        assert_eq!(ids(&list("b", None, 10).await), ["m3"]);
        assert_eq!(ids(&list("c", None, 10).await), ["m2b"]);
        assert!(list("d", None, 10).await.is_empty());

        // Written again, or an older one written late: nothing moves. A newer one moves its
        // channel, for each participant.
        let replays = [
            Message::at("m3", 30, &["a", "b"]),
            Message::at("m0", 5, &["a", "b"]),
        ];
        store.insert_batch(&replays).await.unwrap();
        assert_eq!(ids(&list("a", None, 10).await), ["m3", "m2b"]);
        store
            .insert_batch(&[Message::at("m4", 40, &["a", "c"])])
            .await
            .unwrap();
        assert_eq!(ids(&list("a", None, 10).await), ["m4", "m3"]);
        assert_eq!(ids(&list("c", None, 10).await), ["m4"]);
        // One batch, the newer first: its channel's newest is what is noted.
        let batch = [
            Message::at("m6", 60, &["a", "b"]),
            Message::at("m5", 50, &["a", "b"]),
        ];
        store.insert_batch(&batch).await.unwrap();
        assert_eq!(ids(&list("b", None, 10).await), ["m6"]);

        // Paged by the previous page's last message.
        assert_eq!(ids(&list("a", None, 1).await), ["m6"]);
        let after_m6 = Some(Cursor {
            created_at: DateTime::from_timestamp_millis(60).unwrap(),
            id: "m6".into(),
        });
        assert_eq!(ids(&list("a", after_m6, 1).await), ["m4"]);
        let after_m4 = Some(Cursor {
            created_at: DateTime::from_timestamp_millis(40).unwrap(),
            id: "m4".into(),
        });
        assert!(list("a", after_m4, 1).await.is_empty());
    }

    #[tokio::test]
    async fn the_recovery_index_covers_messages_stored_before_it_existed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let (alice, bob) = (
            UserId::parse("alice").unwrap(),
            UserId::parse("bob").unwrap(),
        );
        let old = Message::accept(&alice, &channel(&["alice", "bob"]), "old".into());
        {
            let mut conn = crate::sqlite_file::open(&path).unwrap();
            crate::sqlite_file::migrate(&mut conn, &MIGRATIONS[..2]).unwrap();
            conn.execute(
                "INSERT INTO messages (id, channel, sender, content, participants, created_at)
                 VALUES (?1, 'alice,bob', 'alice', 'old', '[\"alice\",\"bob\"]', ?2)",
                params![old.id, old.created_at.timestamp_millis()],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path, Arc::default()).unwrap();
        assert_eq!(
            store.migrate().await.unwrap(),
            [
                "0003_message_participants",
                "0004_dead_letter_replays",
                "0005_channel_activity"
            ]
        );
        let new = Message::accept(&alice, &channel(&["alice", "bob"]), "new".into());
        store
            .insert_batch(std::slice::from_ref(&new))
            .await
            .unwrap();
        let before_both = "00000000-0000-7000-8000-000000000000";
        let missed = store.missed_by(&bob, before_both, 10).await.unwrap();
        assert_eq!(missed, [old.clone(), new.clone()]);
        assert_eq!(
            store.missed_ids(&bob, before_both, 10).await.unwrap(),
            [old.id.clone(), new.id.clone()]
        );
        assert_eq!(
            store.missed_ids(&bob, before_both, 1).await.unwrap(),
            std::slice::from_ref(&old.id)
        );
        assert_eq!(store.missed_by(&bob, &old.id, 10).await.unwrap(), [new]);
        let carol = UserId::parse("carol").unwrap();
        assert!(
            store
                .missed_by(&carol, before_both, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn writes_are_idempotent_and_history_pages_newest_first() {
        let (_dir, store) = store().await;
        let ab = channel(&["a", "b"]);
        let alice = UserId::parse("a").unwrap();
        let sent: Vec<Message> = (0..5)
            .map(|i| Message::accept(&alice, &ab, format!("m{i}")))
            .collect();
        assert_eq!(store.insert_batch(&sent).await.unwrap(), vec![Ok(()); 5]);
        assert_eq!(
            store.insert_batch(&sent[..2]).await.unwrap(),
            vec![Ok(()); 2]
        );

        let newest_first: Vec<Message> = sent.iter().rev().cloned().collect();
        assert_eq!(
            store.history(&ab, &page(None, 0, 10)).await.unwrap(),
            newest_first
        );
        assert_eq!(
            store.history(&ab, &page(None, 3, 10)).await.unwrap(),
            newest_first[3..]
        );
        let older = store
            .history(&ab, &page(Some(&sent[2]), 0, 10))
            .await
            .unwrap();
        assert_eq!(older, newest_first[3..]);
        assert!(
            store
                .history(&channel(&["a"]), &page(None, 0, 10))
                .await
                .unwrap()
                .is_empty()
        );
        let located = store.locate(&sent[2].id).await.unwrap().unwrap();
        assert_eq!(
            located,
            Cursor {
                created_at: sent[2].created_at,
                id: sent[2].id.clone()
            }
        );
        assert_eq!(store.locate("nope").await.unwrap(), None);
    }

    #[tokio::test]
    async fn dead_letters_are_kept_listed_filtered_and_removed() {
        let (_dir, store) = store().await;
        let alice = UserId::parse("a").unwrap();
        let notes = channel(&["a"]);
        let letters: Vec<DeadLetter> = ["disk on fire", "Duplicate key", "duplicate KEY"]
            .into_iter()
            .map(|error| DeadLetter {
                message: Message::accept(&alice, &notes, "x".into()),
                error: Failure::new("constraint", error),
                attempts: 5,
                first_failed_at: DateTime::from_timestamp_millis(Utc::now().timestamp_millis())
                    .unwrap(),
                last_failed_at: DateTime::from_timestamp_millis(Utc::now().timestamp_millis())
                    .unwrap(),
                instance: "host:1".into(),
            })
            .collect();
        for letter in &letters {
            store.put_dead_letter(letter).await.unwrap();
        }
        store.put_dead_letter(&letters[0]).await.unwrap();
        let all = DeadLetterQuery {
            limit: 10,
            error_contains: None,
            after: None,
        };
        assert_eq!(store.dead_letters(&all).await.unwrap(), letters);
        let duplicates = DeadLetterQuery {
            error_contains: Some("duplicate key".into()),
            ..all.clone()
        };
        assert_eq!(store.dead_letters(&duplicates).await.unwrap(), letters[1..]);
        let after_first = DeadLetterQuery {
            after: Some(letters[0].id().into()),
            limit: 1,
            ..all.clone()
        };
        assert_eq!(
            store.dead_letters(&after_first).await.unwrap(),
            letters[1..2]
        );
        assert_eq!(
            store.dead_letter(letters[2].id()).await.unwrap().as_ref(),
            Some(&letters[2])
        );

        let ids = vec![letters[0].id().to_string(), "missing".to_string()];
        assert_eq!(store.remove_dead_letters(&ids).await.unwrap(), 1);
        assert_eq!(store.dead_letters(&all).await.unwrap(), letters[1..]);
    }

    #[tokio::test]
    async fn replay_totals_add_up_by_result() {
        let (_dir, store) = store().await;
        assert!(store.replay_totals().await.unwrap().is_empty());
        store.count_replays("replayed", 2).await.unwrap();
        store.count_replays("failed", 1).await.unwrap();
        store.count_replays("replayed", 3).await.unwrap();
        let mut totals = store.replay_totals().await.unwrap();
        totals.sort();
        assert_eq!(
            totals,
            [("failed".to_string(), 1), ("replayed".to_string(), 5)]
        );
    }

    fn failure(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some("from SQLite".into()))
    }

    #[tokio::test]
    async fn errors_of_the_database_itself_are_outages_by_code() {
        let (dir, _store) = store().await;
        let conn = Connection::open(dir.path().join("store.db")).unwrap();
        for code in [
            ffi::SQLITE_IOERR_WRITE,
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_CORRUPT,
            ffi::SQLITE_NOTADB,
            ffi::SQLITE_FULL,
            ffi::SQLITE_BUSY,
            ffi::SQLITE_LOCKED,
            ffi::SQLITE_READONLY,
            ffi::SQLITE_READONLY_DBMOVED,
            ffi::SQLITE_CANTOPEN,
        ] {
            assert!(
                matches!(classify(&conn, failure(code)), StoreError::Unavailable(_)),
                "{code}"
            );
        }
        // About what was written, or a plain error while the schema is as migrated.
        for code in [
            ffi::SQLITE_CONSTRAINT_UNIQUE,
            ffi::SQLITE_TOOBIG,
            ffi::SQLITE_MISMATCH,
            ffi::SQLITE_ERROR,
        ] {
            assert!(
                matches!(classify(&conn, failure(code)), StoreError::Failed(_)),
                "{code}"
            );
        }
    }

    #[tokio::test]
    async fn a_table_renamed_away_makes_the_store_unavailable_until_it_is_back() {
        let (dir, store) = store().await;
        let alice = UserId::parse("a").unwrap();
        let notes = channel(&["a"]);
        let first = Message::accept(&alice, &notes, "first".into());
        // Also caches the insert statement, which must not hide the change.
        assert_eq!(store.insert_batch(&[first]).await.unwrap(), [Ok(())]);
        let other = Connection::open(dir.path().join("store.db")).unwrap();
        other
            .execute_batch("ALTER TABLE messages RENAME TO messages_away")
            .unwrap();

        let second = Message::accept(&alice, &notes, "second".into());
        let written = store.insert_batch(std::slice::from_ref(&second)).await;
        assert!(
            matches!(written, Err(StoreError::Unavailable(_))),
            "{written:?}"
        );
        let read = store.history(&notes, &page(None, 0, 10)).await;
        assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
        assert!(matches!(
            store.ping().await,
            Err(StoreError::Unavailable(_))
        ));

        other
            .execute_batch("ALTER TABLE messages_away RENAME TO messages")
            .unwrap();
        store.ping().await.unwrap();
        assert_eq!(store.insert_batch(&[second]).await.unwrap(), [Ok(())]);
        assert_eq!(
            store
                .history(&notes, &page(None, 0, 10))
                .await
                .unwrap()
                .len(),
            2
        );
    }
}
