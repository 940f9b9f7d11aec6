//! The outbox's read path for reconnect recovery: the pending messages of one user's channels,
//! through the (user, id) index of `migrations/outbox/0004_outbox_recipients.sql`, which the
//! outbox's triggers keep in step with every append, removal and dead letter.

use rusqlite::params;

use super::{Outbox, OutboxError};
use crate::model::{Message, UserId};
use crate::sqlite_file;

/// The (user, id) index reads exactly the rows returned, however old `?1` is. It holds
/// pending rows only; `dead = 0` is a safeguard.
const PENDING_FOR: &str = "SELECT o.id, o.sender, o.content, o.participants, o.created_at
     FROM outbox_recipients r JOIN outbox o ON o.seq = r.seq
     WHERE r.user = ?2 AND r.id > ?1 AND o.dead = 0
     ORDER BY r.id LIMIT ?3";

/// The same index read from its newest end: the conversations listing's pending messages.
const LATEST_FOR: &str = "SELECT o.id, o.sender, o.content, o.participants, o.created_at
     FROM outbox_recipients r JOIN outbox o ON o.seq = r.seq
     WHERE r.user = ?1 AND o.dead = 0
     ORDER BY r.id DESC LIMIT ?2";

impl Outbox {
    /// Up to `limit` messages waiting for the store, of any channel `user` is in, accepted after
    /// the message `after`, oldest first: what a reconnecting client missed that history does
    /// not have yet.
    pub async fn pending_for(
        &self,
        user: &UserId,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Message>, OutboxError> {
        let readers = self.readers.clone();
        let (user, after) = (user.to_string(), after.to_string());
        tokio::task::spawn_blocking(move || {
            readers.read(|conn| {
                conn.prepare_cached(PENDING_FOR)?
                    .query_map(params![after, user, limit], |row| {
                        sqlite_file::message_from_row(row, 0)
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
        })
        .await?
        .map_err(OutboxError::from)
    }

    /// The newest `limit` messages waiting for the store of any channel `user` is in, newest
    /// first: what the conversations listing adds to the store's answer.
    pub async fn latest_for(&self, user: &UserId, limit: u32) -> Result<Vec<Message>, OutboxError> {
        let readers = self.readers.clone();
        let user = user.to_string();
        tokio::task::spawn_blocking(move || {
            readers.read(|conn| {
                conn.prepare_cached(LATEST_FOR)?
                    .query_map(params![user, limit], |row| {
                        sqlite_file::message_from_row(row, 0)
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
        })
        .await?
        .map_err(OutboxError::from)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::model::{Channel, Failure};
    use crate::pipeline::outbox::Draft;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    fn channel(ids: &[&str]) -> Channel {
        Channel::new(ids.iter().map(|id| user(id)).collect(), 10).unwrap()
    }

    fn open(dir: &tempfile::TempDir) -> Outbox {
        Outbox::open(
            &dir.path().join("outbox.db"),
            64,
            "test",
            Duration::from_secs(60),
            Box::new(|_| {}),
            Arc::default(),
        )
        .unwrap()
    }

    async fn contents(outbox: &Outbox, id: &str, after: &str) -> Vec<String> {
        let pending = outbox.pending_for(&user(id), after, 100).await.unwrap();
        pending.into_iter().map(|m| m.content).collect()
    }

    /// Before every id the outbox will give.
    const ANCIENT: &str = "00000000-0000-7000-8000-000000000000";

    #[tokio::test]
    async fn the_index_follows_appends_removals_and_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir);
        let (ab, bc) = (channel(&["a", "b"]), channel(&["b", "c"]));
        let mut sent = Vec::new();
        for (sender, channel, content) in [("a", &ab, "1"), ("c", &bc, "2"), ("a", &ab, "3")] {
            let draft = Draft::new(&user(sender), channel, content);
            sent.push(outbox.append(draft).await.unwrap().message);
        }
        assert_eq!(contents(&outbox, "b", ANCIENT).await, ["1", "2", "3"]);
        assert_eq!(contents(&outbox, "a", ANCIENT).await, ["1", "3"]);
        assert_eq!(contents(&outbox, "c", ANCIENT).await, ["2"]);
        assert_eq!(contents(&outbox, "b", &sent[0].id).await, ["2", "3"]);
        let latest = outbox.latest_for(&user("b"), 2).await.unwrap();
        let latest: Vec<&str> = latest.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(latest, ["3", "2"], "newest first");
        assert_eq!(
            outbox
                .pending_for(&user("b"), ANCIENT, 2)
                .await
                .unwrap()
                .len(),
            2
        );

        let seqs: Vec<i64> = outbox
            .pending_after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|entry| entry.seq)
            .collect();
        // The store has the first: it leaves the outbox, and the index with it.
        outbox.mark_stored(vec![seqs[0]]).await.unwrap();
        assert_eq!(contents(&outbox, "b", ANCIENT).await, ["2", "3"]);
        assert_eq!(contents(&outbox, "a", ANCIENT).await, ["3"]);
        // The second spends its attempts: a dead letter is not pending.
        let failure = Failure::new("constraint", "refused");
        outbox
            .record_failure(seqs[1], failure, 3, true)
            .await
            .unwrap();
        assert_eq!(contents(&outbox, "b", ANCIENT).await, ["3"]);
        assert!(contents(&outbox, "c", ANCIENT).await.is_empty());

        // Reopened, the migration is not applied again and the index is as it was.
        drop(outbox);
        let outbox = open(&dir);
        assert_eq!(contents(&outbox, "b", ANCIENT).await, ["3"]);
        let rows: i64 = outbox
            .readers
            .read(|conn| {
                conn.query_row("SELECT COUNT(*) FROM outbox_recipients", [], |row| {
                    row.get(0)
                })
            })
            .unwrap();
        assert_eq!(
            rows, 2,
            "one row per participant of the one pending message"
        );
    }

    #[test]
    fn a_recovery_and_a_listing_read_the_index_not_every_pending_row() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir);
        let plan = |query: &str, params: &[&dyn rusqlite::ToSql]| -> Vec<String> {
            outbox
                .readers
                .read(|conn| {
                    conn.prepare(&format!("EXPLAIN QUERY PLAN {query}"))?
                        .query_map(params, |row| row.get::<_, String>(3))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .unwrap()
        };
        for plan in [
            plan(PENDING_FOR, params![ANCIENT, "b", 10]),
            plan(LATEST_FOR, params!["b", 10]),
        ] {
            assert!(
                plan.iter()
                    .any(|step| step.contains("SEARCH r USING PRIMARY KEY")),
                "{plan:?}"
            );
            assert!(
                !plan.iter().any(|step| step.starts_with("SCAN")),
                "nothing is scanned: {plan:?}"
            );
            assert!(
                !plan.iter().any(|step| step.contains("TEMP B-TREE")),
                "read in index order: {plan:?}"
            );
        }
    }
}
