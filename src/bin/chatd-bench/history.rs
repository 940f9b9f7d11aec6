//! A large embedded store for the recovery scenario, written by chatd's own store code (its
//! schema, its migrations, its recovery index) before chatd starts on it.
//!
//! The layout makes every recovering user's replay as costly as it can be: each of them is in
//! exactly `replayed` messages, spread evenly over the whole store between messages of other
//! users, so an ancient `since` reads rows from the first to the last page of the file.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatd::model::Message;
use chatd::store::{MessageStore, SQLITE_FILE, SqliteStore};
use chrono::DateTime;
use indicatif::ProgressBar;
use uuid::{Timestamp, Uuid};

/// Users who only fill the store, each in one-to-one channels.
const FILLERS: usize = 1000;
/// Messages written per transaction.
const BATCH: usize = 10_000;
/// About the size of a chat line.
const CONTENT_BYTES: usize = 200;

/// Who is in the store and from where their replay starts.
pub struct Layout {
    pub messages: usize,
    /// `recovering` users (`r0`, `r1`, …), each in `replayed` messages.
    pub recovering: usize,
    pub replayed: usize,
}

impl Layout {
    pub fn recovering_user(i: usize) -> String {
        format!("r{i}")
    }

    /// Message `n`'s sender and participants: every `stride`-th message goes from a filler to
    /// a recovering user, in turn, until each has `replayed`; the rest between two fillers. The
    /// first message is a filler's, so its id is an ancient `since` before every replay.
    fn message(&self, n: usize) -> (String, Vec<String>) {
        let stride = (self.messages / (self.recovering * self.replayed)).max(2);
        let filler = |i: usize| format!("u{}", i % FILLERS);
        let sender = filler(n);
        let slot = n / stride;
        let to = if n % stride == stride - 1 && slot < self.recovering * self.replayed {
            Self::recovering_user(slot % self.recovering)
        } else {
            filler(n + 1 + n / FILLERS)
        };
        let mut participants = vec![sender.clone(), to];
        participants.sort();
        participants.dedup();
        (sender, participants)
    }
}

/// Writes the store into `data_dir` unless an earlier run built it there, and returns the id
/// to recover from (the first message's).
pub async fn build(data_dir: &Path, layout: &Layout) -> anyhow::Result<String> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(SQLITE_FILE);
    let store = SqliteStore::open(&path, Default::default())?;
    store.migrate().await?;
    let existing = count(&path)?;
    // Built by an earlier run, which added its live sends (between other users) on top.
    if existing >= layout.messages {
        return first_id(&path);
    }
    anyhow::ensure!(
        existing == 0,
        "{} holds {existing} messages, fewer than {}: use an empty directory",
        path.display(),
        layout.messages
    );
    // Time-ordered ids one millisecond apart, the newest a day old.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let first_ms = now.as_millis() as u64 - 86_400_000 - layout.messages as u64;
    let id = |n: usize| -> (String, u64) {
        let ms = first_ms + n as u64;
        let ts = Timestamp::from_unix_time(ms / 1000, (ms % 1000) as u32 * 1_000_000, 0, 0);
        (Uuid::new_v7(ts).to_string(), ms)
    };
    let content = "x".repeat(CONTENT_BYTES);
    let progress = ProgressBar::new(layout.messages as u64).with_message("building the store");
    for start in (0..layout.messages).step_by(BATCH) {
        let batch: Vec<Message> = (start..(start + BATCH).min(layout.messages))
            .map(|n| {
                let (sender, participants) = layout.message(n);
                let (id, ms) = id(n);
                Message {
                    id,
                    sender,
                    content: content.clone(),
                    participants,
                    created_at: DateTime::from_timestamp_millis(ms as i64).expect("a valid time"),
                    sequence: None,
                }
            })
            .collect();
        let written = store.insert_batch(&batch).await?;
        anyhow::ensure!(
            written.iter().all(Result::is_ok),
            "the store refused a message"
        );
        progress.inc(batch.len() as u64);
    }
    progress.finish_and_clear();
    drop(store);
    first_id(&path)
}

fn count(path: &Path) -> anyhow::Result<usize> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn.query_row("SELECT COUNT(*) FROM messages", [], |row| {
        row.get::<_, i64>(0)
    })? as usize)
}

fn first_id(path: &Path) -> anyhow::Result<String> {
    let conn = rusqlite::Connection::open(path)?;
    Ok(conn.query_row("SELECT MIN(id) FROM messages", [], |row| row.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recovering_user_is_in_exactly_replayed_messages_and_never_first() {
        let layout = Layout {
            messages: 10_000,
            recovering: 4,
            replayed: 100,
        };
        let mut counts = vec![0; layout.recovering];
        for n in 0..layout.messages {
            let (sender, participants) = layout.message(n);
            assert!(participants.contains(&sender));
            for (i, count) in counts.iter_mut().enumerate() {
                if participants.contains(&Layout::recovering_user(i)) {
                    assert!(n > 0, "the first message is the ancient `since`");
                    *count += 1;
                }
            }
        }
        assert_eq!(counts, [100; 4]);
    }
}
