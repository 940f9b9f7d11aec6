//! The outbox's read path for reconnect recovery and the conversations listing: the pending
//! messages of one user's channels. Channels of at most 32 participants are read through the
//! (user, id) index of `migrations/outbox/0004_outbox_recipients.sql`, which the outbox's
//! triggers keep in step with every append, removal and dead letter; wider ones through the
//! partial index of `0005_wide_channels.sql`, checking membership row by row, because a
//! per-user row for each of their members cost every send its wait in the journal.

use rusqlite::params;

use super::{Outbox, OutboxError};
use crate::model::{Message, UserId};
use crate::sqlite_file;

/// The (user, id) index reads exactly the narrow rows returned, however old `?1` is; the
/// partial index reads the wide messages pending after `?1` (`INDEXED BY`: the planner would
/// rather take `outbox_pending`; the `32` must stay the migration's for the index to apply). Both hold pending rows only; `dead = 0` is also
/// part of the partial index's condition.
const PENDING_FOR: &str = "SELECT id, sender, content, participants, created_at FROM (
         SELECT r.id, o.sender, o.content, o.participants, o.created_at
         FROM outbox_recipients r JOIN outbox o ON o.seq = r.seq
         WHERE r.user = ?2 AND r.id > ?1 AND o.dead = 0
         UNION ALL
         SELECT o.id, o.sender, o.content, o.participants, o.created_at
         FROM outbox o INDEXED BY outbox_wide
         WHERE o.dead = 0 AND json_array_length(o.participants) > 32 AND o.id > ?1
           AND EXISTS (SELECT 1 FROM json_each(o.participants) WHERE value = ?2)
     )
     ORDER BY id LIMIT ?3";

/// The same indexes read from their newest end: the conversations listing's pending messages.
const LATEST_FOR: &str = "SELECT id, sender, content, participants, created_at FROM (
         SELECT r.id, o.sender, o.content, o.participants, o.created_at
         FROM outbox_recipients r JOIN outbox o ON o.seq = r.seq
         WHERE r.user = ?1 AND o.dead = 0
         UNION ALL
         SELECT o.id, o.sender, o.content, o.participants, o.created_at
         FROM outbox o INDEXED BY outbox_wide
         WHERE o.dead = 0 AND json_array_length(o.participants) > 32
           AND EXISTS (SELECT 1 FROM json_each(o.participants) WHERE value = ?1)
     )
     ORDER BY id DESC LIMIT ?2";

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

    async fn pending_seqs(outbox: &Outbox) -> Vec<i64> {
        let pending = outbox.pending_after(0, 10).await.unwrap();
        pending.iter().map(|entry| entry.seq).collect()
    }

    fn index_rows(outbox: &Outbox) -> i64 {
        outbox
            .readers
            .read(|conn| {
                conn.query_row("SELECT COUNT(*) FROM outbox_recipients", [], |row| {
                    row.get(0)
                })
            })
            .unwrap()
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

        let seqs = pending_seqs(&outbox).await;
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
        assert_eq!(
            index_rows(&outbox),
            2,
            "one row per participant of the one pending message"
        );
    }

    #[tokio::test]
    async fn a_wide_channel_is_found_without_a_row_per_member() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir);
        let mut members: Vec<UserId> = (0..40).map(|i| user(&format!("m{i:02}"))).collect();
        members.push(user("a"));
        let wide = Channel::new(members, 100).unwrap();
        let ab = channel(&["a", "b"]);
        let mut sent = Vec::new();
        for (channel, content) in [(&wide, "wide 1"), (&ab, "narrow"), (&wide, "wide 2")] {
            let draft = Draft::new(&user("a"), channel, content);
            sent.push(outbox.append(draft).await.unwrap().message);
        }
        assert_eq!(
            contents(&outbox, "a", ANCIENT).await,
            ["wide 1", "narrow", "wide 2"]
        );
        assert_eq!(
            contents(&outbox, "m07", ANCIENT).await,
            ["wide 1", "wide 2"]
        );
        assert_eq!(contents(&outbox, "m07", &sent[0].id).await, ["wide 2"]);
        assert_eq!(contents(&outbox, "b", ANCIENT).await, ["narrow"]);
        assert!(contents(&outbox, "nobody", ANCIENT).await.is_empty());
        let latest = outbox.latest_for(&user("a"), 2).await.unwrap();
        let latest: Vec<&str> = latest.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(latest, ["wide 2", "narrow"], "newest first, both kinds");
        assert_eq!(
            index_rows(&outbox),
            2,
            "rows for the narrow channel's two members only"
        );

        let seqs = pending_seqs(&outbox).await;
        outbox.mark_stored(vec![seqs[0]]).await.unwrap();
        assert_eq!(contents(&outbox, "m07", ANCIENT).await, ["wide 2"]);
        let failure = Failure::new("constraint", "refused");
        outbox
            .record_failure(seqs[2], failure, 3, true)
            .await
            .unwrap();
        assert!(contents(&outbox, "m07", ANCIENT).await.is_empty(), "dead");
    }

    #[test]
    fn a_recovery_and_a_listing_read_the_indexes_not_every_pending_row() {
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
                plan.iter()
                    .any(|step| step.contains("USING INDEX outbox_wide")),
                "{plan:?}"
            );
            // Only the wide messages pending (after the cursor) are walked, in the partial
            // index's order, each one's participants read to check membership; no table is
            // scanned.
            assert!(
                !plan.iter().any(|step| step.starts_with("SCAN")
                    && !step.contains("json_each")
                    && !step.contains("USING INDEX outbox_wide")),
                "nothing else is scanned: {plan:?}"
            );
            assert!(
                !plan.iter().any(|step| step.contains("TEMP B-TREE")),
                "read in index order: {plan:?}"
            );
        }
    }
}
