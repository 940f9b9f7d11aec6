//! The embedded store's conversations index (`migrations/sqlite/0005_channel_activity.sql`):
//! one row per (participant, channel) naming the channel's last message, written in the batch
//! insert's transaction and read by `GET /api/channels` a page at a time.

use std::collections::HashMap;

use rusqlite::{Connection, Transaction, params};

use crate::model::Message;
use crate::sqlite_file::message_from_row;
use crate::store::Cursor;

/// Keeps the greater `(created_at, id)`: a message written again, or after a newer one of its
/// channel (a retried or replayed one), leaves the row as it is.
const NOTE: &str = "INSERT INTO channel_activity (user, channel, last_created_at, last_id)
     VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (user, channel) DO UPDATE SET
         last_created_at = excluded.last_created_at,
         last_id = excluded.last_id
     WHERE (excluded.last_created_at, excluded.last_id) > (last_created_at, last_id)";

/// Through `channel_activity_recent`: the rows read are the rows returned.
const PAGE: &str = "SELECT m.id, m.sender, m.content, m.participants, m.created_at
     FROM channel_activity a JOIN messages m ON m.id = a.last_id
     WHERE a.user = ?1 AND (a.last_created_at, a.last_id) < (?2, ?3)
     ORDER BY a.last_created_at DESC, a.last_id DESC LIMIT ?4";

/// Records the newest of `messages` in each channel as that channel's last for each of its
/// participants, if it is. One write per participant per channel in the batch, not per
/// message: a busy 200-member channel's batch of 256 is 200 writes, not 51,200.
pub(super) fn note_newest<'a>(
    tx: &Transaction<'_>,
    messages: impl IntoIterator<Item = &'a Message>,
) -> rusqlite::Result<()> {
    let mut newest: HashMap<String, &Message> = HashMap::new();
    for message in messages {
        let place = |m: &Message| (m.created_at, m.id.clone());
        newest
            .entry(message.participants.join(","))
            .and_modify(|kept| {
                if place(message) > place(kept) {
                    *kept = message;
                }
            })
            .or_insert(message);
    }
    let mut note = tx.prepare_cached(NOTE)?;
    for (channel, message) in newest {
        for user in &message.participants {
            note.execute(params![
                user,
                channel,
                message.created_at.timestamp_millis(),
                message.id,
            ])?;
        }
    }
    Ok(())
}

/// Up to `limit` of `user`'s channels whose last message sorts before `before`, each as that
/// message, the most recent first.
pub(super) fn page(
    conn: &Connection,
    user: &str,
    before: Option<&Cursor>,
    limit: u32,
) -> rusqlite::Result<Vec<Message>> {
    // No cursor: before everything, which no stored message reaches.
    let (at, id) = before.map_or((i64::MAX, String::new()), |cursor| {
        (cursor.created_at.timestamp_millis(), cursor.id.clone())
    });
    conn.prepare_cached(PAGE)?
        .query_map(params![user, at, id, limit], |row| message_from_row(row, 0))?
        .collect()
}

#[cfg(test)]
mod tests {
    use rusqlite::params;

    use super::PAGE;
    use crate::sqlite_file;

    #[test]
    fn a_page_reads_the_index_not_the_messages() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = sqlite_file::open(&dir.path().join("store.db")).unwrap();
        sqlite_file::migrate(&mut conn, super::super::MIGRATIONS).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {PAGE}"))
            .unwrap()
            .query_map(params!["alice", i64::MAX, "", 20], |row| row.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("USING COVERING INDEX channel_activity_recent")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN")),
            "nothing is scanned: {plan:?}"
        );
    }
}
