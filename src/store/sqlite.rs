use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, params};

use super::{HistoryPage, MessageStore, StoreError, WriteOutcome};
use crate::model::{Channel, Message};
use crate::sqlite::{self, Migration, ReadPool, message_from_row, participants_json};

const MIGRATIONS: &[Migration] = &[Migration {
    name: "0001_messages",
    sql: include_str!("../../migrations/sqlite/0001_messages.sql"),
}];

const READERS: usize = 4;

/// The embedded store: history in a SQLite file in `DATA_DIR`.
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<ReadPool>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let mut writer = sqlite::open(path)?;
        sqlite::migrate(&mut writer, MIGRATIONS)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(ReadPool::new(path, READERS)),
        })
    }
}

#[async_trait]
impl MessageStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn insert_batch(&self, messages: &[Message]) -> Result<Vec<WriteOutcome>, StoreError> {
        let writer = self.writer.clone();
        let messages = messages.to_vec();
        blocking(move || {
            let mut conn = writer.lock().expect("store writer lock");
            insert_all(&mut conn, &messages)
        })
        .await?
        .map_err(classify)
    }

    async fn history(
        &self,
        channel: &Channel,
        page: &HistoryPage,
    ) -> Result<Vec<Message>, StoreError> {
        let readers = self.readers.clone();
        let key = channel.key();
        let page = page.clone();
        blocking(move || readers.read(|conn| read_page(conn, &key, &page)))
            .await?
            .map_err(classify)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Failed(format!("store task failed: {e}")))
}

/// One transaction for the batch. A row that breaks a constraint fails alone; any other error
/// (disk full, I/O) rolls the whole batch back.
fn insert_all(conn: &mut Connection, messages: &[Message]) -> rusqlite::Result<Vec<WriteOutcome>> {
    let tx = conn.transaction()?;
    let mut outcomes = Vec::with_capacity(messages.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (id, channel, sender, content, participants, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
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
                Ok(_) => outcomes.push(Ok(())),
                Err(e) if is_constraint(&e) => outcomes.push(Err(e.to_string())),
                Err(e) => return Err(e),
            }
        }
    }
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

fn is_constraint(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
}

/// Errors that waiting cures (a locked, full or unreadable database) make the store
/// unavailable; the rest are failures of the request.
fn classify(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::ReadOnly,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UserId;
    use crate::store::Cursor;

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

    #[tokio::test]
    async fn writes_are_idempotent_and_history_pages_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
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
    }
}
