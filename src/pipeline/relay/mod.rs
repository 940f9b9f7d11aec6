//! Drains the outbox into the store. The relay reads the durable outbox, never the broadcast
//! bus, so a lagging bus receiver cannot cost it an event.
//!
//! One dispatcher hands batches to at most `workers` concurrent [`BatchWriter`]s. A writer
//! writes its batch once and hands back what the store refused; those entries wait out their
//! backoff in the dispatcher's [`RetrySet`] and go out again beside new entries, so a message
//! the store keeps refusing never keeps a writer from new work.

mod backoff;
mod dead_letter_mover;
mod outbox_ledger;
mod retries;
pub mod stream;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::outbox::{Outbox, PendingEntry};
use crate::config::RelaySettings;
use crate::error::Chain;
use crate::store::{MessageStore, StoreHealth};
use crate::telemetry;
pub use backoff::Backoff;
use dead_letter_mover::DeadLetterMover;
use outbox_ledger::OutboxLedger;
use retries::RetrySet;
use writer::BatchWriter;

/// How long the dispatcher lets a batch gather after a short one.
const LINGER: Duration = Duration::from_millis(10);
/// How long the dispatcher waits before reading the outbox again after a read failed.
const READ_RETRY: Duration = Duration::from_secs(1);
/// The fewest refused entries that wait for a retry before the dispatcher stops reading new
/// ones, however few writers of however small batches there are: about 4 MiB of messages at
/// most, so that a handful of poison messages never holds up new ones.
const MIN_RETRY_CAPACITY: usize = 1024;

pub struct Relay {
    outbox: Arc<Outbox>,
    writer: Arc<BatchWriter<OutboxLedger>>,
    mover: DeadLetterMover,
    backoff: Backoff,
    settings: RelaySettings,
}

/// When the dispatcher next reads new entries from the outbox.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// As soon as a writer is free.
    Now,
    /// Not before then: a batch gathers after a short read, and a failed read waits.
    At(Instant),
    /// Once entries are appended: the last read found none.
    OnNewWork,
}

impl Relay {
    pub fn new(
        outbox: Arc<Outbox>,
        store: Arc<dyn MessageStore>,
        health: Arc<StoreHealth>,
        settings: RelaySettings,
        backoff: Backoff,
    ) -> Self {
        let dead_letters = Arc::new(Notify::new());
        let writer = BatchWriter {
            ledger: OutboxLedger {
                outbox: outbox.clone(),
                backoff,
                dead_letters: dead_letters.clone(),
            },
            store: store.clone(),
            health,
            backoff,
            max_attempts: settings.retry_attempts,
        };
        let mover = DeadLetterMover {
            outbox: outbox.clone(),
            store,
            wake: dead_letters,
            backoff,
        };
        Self {
            outbox,
            writer: Arc::new(writer),
            mover,
            backoff,
            settings,
        }
    }

    /// Hands batches of pending entries, oldest first, and refused entries once their backoff
    /// has passed, to at most `workers` concurrent writers until `stop`. New entries are only
    /// read when a writer is free, so under load batches fill up. Entries still pending at
    /// `stop` stay in the outbox for the next start.
    pub async fn run(self, stop: CancellationToken) {
        let Self {
            outbox,
            writer,
            mover,
            backoff,
            settings,
        } = self;
        let mover = tokio::spawn(mover.run(stop.clone()));
        let mut dispatcher = Dispatcher {
            outbox,
            batch_size: settings.batch_size,
            // At least as many as the writers can have in flight, so that a whole round of
            // refused batches fits. Past that, new entries wait in the outbox until refused ones
            // are stored or dead (see `RetrySet` for the bound).
            retries: RetrySet::new(
                (settings.workers * settings.batch_size).max(MIN_RETRY_CAPACITY),
            ),
            cursor: 0,
            reading: Reading::Now,
        };
        let mut writers = JoinSet::new();
        loop {
            let free = writers.len() < settings.workers;
            if free {
                let batch = dispatcher.next_batch().await;
                if !batch.is_empty() {
                    let (writer, stop) = (writer.clone(), stop.clone());
                    writers.spawn(async move { writer.write(batch, &stop).await });
                    continue;
                }
            }
            let gathered = match dispatcher.reading {
                Reading::At(at) => Some(at),
                Reading::Now | Reading::OnNewWork => None,
            };
            let next_due = dispatcher.retries.next_due();
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(written) = writers.join_next() => dispatcher.retry_later(written, &backoff),
                () = dispatcher.outbox.new_work(),
                    if free && matches!(dispatcher.reading, Reading::OnNewWork) =>
                {
                    // Let the next batch gather rather than write the first message alone.
                    dispatcher.reading = Reading::At(Instant::now() + LINGER);
                }
                () = tokio::time::sleep_until(gathered.unwrap_or_else(Instant::now)),
                    if free && gathered.is_some() => dispatcher.reading = Reading::Now,
                () = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)),
                    if free && next_due.is_some() => {}
            }
        }
        while writers.join_next().await.is_some() {}
        if let Err(e) = mover.await {
            tracing::error!(error = %Chain(&e), "the dead-letter mover failed");
        }
    }
}

/// The dispatcher's own state: where it is in the outbox and what waits for a retry.
struct Dispatcher {
    outbox: Arc<Outbox>,
    batch_size: usize,
    retries: RetrySet,
    /// The last outbox entry read; entries at or below it are written, waiting or done.
    cursor: i64,
    reading: Reading,
}

impl Dispatcher {
    /// The next batch for a free writer: due retries beside new entries, possibly empty.
    /// Retries take at most half a batch while new entries may be waiting, and fill whatever
    /// room the new ones leave, so neither can crowd the other out.
    async fn next_batch(&mut self) -> Vec<PendingEntry> {
        let now = Instant::now();
        let mut batch = self.retries.take_due(now, self.batch_size.div_ceil(2));
        let may_read = match self.reading {
            Reading::Now => true,
            Reading::At(at) => at <= now,
            Reading::OnNewWork => false,
        };
        let wanted = self.batch_size - batch.len();
        if may_read && wanted > 0 && self.retries.has_room() {
            match self.outbox.next_pending(self.cursor, wanted).await {
                Ok(new) => {
                    // After a short read, let the next batch gather for a few milliseconds:
                    // fewer, fuller store transactions (each one a disk sync) for a little more
                    // time on the way to history.
                    self.reading = if new.is_empty() {
                        Reading::OnNewWork
                    } else if new.len() < wanted {
                        Reading::At(now + LINGER)
                    } else {
                        Reading::Now
                    };
                    if let Some(last) = new.last() {
                        self.cursor = last.seq;
                    }
                    batch.extend(new);
                }
                Err(e) => {
                    tracing::error!(error = %Chain(&e), "reading the outbox failed");
                    self.reading = Reading::At(now + READ_RETRY);
                }
            }
        }
        let room = self.batch_size - batch.len();
        batch.extend(self.retries.take_due(now, room));
        batch
    }

    /// Schedules what a writer's store refused for another attempt after its backoff.
    fn retry_later(&mut self, written: Result<Vec<PendingEntry>, JoinError>, backoff: &Backoff) {
        let refused = match written {
            Ok(refused) => refused,
            Err(e) => {
                // Its entries are still pending in the outbox, behind the cursor: the next
                // start writes them.
                tracing::error!(error = %Chain(&e), "a relay writer failed");
                return;
            }
        };
        counter!(telemetry::PERSIST_RETRIES).increment(refused.len() as u64);
        let now = Instant::now();
        for entry in refused {
            let due = now + backoff.delay(entry.attempts);
            self.retries.schedule(entry, due);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::model::{Channel, DeadLetter, Failure, Message, UserId};
    use crate::pipeline::outbox::{Draft, OutboxCounts};
    use crate::store::{Cursor, DeadLetterQuery, HistoryPage, StoreError, WriteOutcome};

    /// A store that is down for its first `outages` writes, always refuses "poison", fails any
    /// batch that holds "breaks-batch" as a whole, and takes dead letters only while
    /// `takes_dead_letters` is set.
    struct FakeStore {
        outages: AtomicU32,
        stored: Mutex<Vec<String>>,
        poison_attempts: AtomicUsize,
        takes_dead_letters: AtomicBool,
        dead_letters: Mutex<Vec<DeadLetter>>,
    }

    impl FakeStore {
        fn new(outages: u32, takes_dead_letters: bool) -> Arc<Self> {
            Arc::new(Self {
                outages: AtomicU32::new(outages),
                stored: Mutex::default(),
                poison_attempts: AtomicUsize::new(0),
                takes_dead_letters: AtomicBool::new(takes_dead_letters),
                dead_letters: Mutex::default(),
            })
        }
    }

    #[async_trait]
    impl MessageStore for FakeStore {
        fn backend(&self) -> &'static str {
            "fake"
        }

        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }

        async fn migrate(&self) -> Result<Vec<String>, StoreError> {
            Ok(Vec::new())
        }

        async fn insert_batch(
            &self,
            messages: &[Message],
        ) -> Result<Vec<WriteOutcome>, StoreError> {
            let down = self
                .outages
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if down.is_ok() {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            if messages.iter().any(|m| m.content == "breaks-batch") {
                return Err(StoreError::Failed("the batch is malformed".into()));
            }
            let mut stored = self.stored.lock().unwrap();
            Ok(messages
                .iter()
                .map(|m| {
                    if m.content == "poison" {
                        self.poison_attempts.fetch_add(1, Ordering::SeqCst);
                        return Err(Failure::new("duplicate_key", "E11000 on content"));
                    }
                    if !stored.contains(&m.id) {
                        stored.push(m.id.clone());
                    }
                    Ok(())
                })
                .collect())
        }

        async fn history(&self, _: &Channel, _: &HistoryPage) -> Result<Vec<Message>, StoreError> {
            unreachable!("the relay never reads history")
        }

        async fn missed_by(&self, _: &UserId, _: &str, _: u32) -> Result<Vec<Message>, StoreError> {
            unreachable!("the relay never reads history")
        }

        async fn missed_ids(&self, _: &UserId, _: &str, _: u32) -> Result<Vec<String>, StoreError> {
            unreachable!("the relay never reads history")
        }

        async fn locate(&self, _: &str) -> Result<Option<Cursor>, StoreError> {
            unreachable!("the relay never reads history")
        }

        async fn channels(
            &self,
            _: &UserId,
            _: Option<&Cursor>,
            _: u32,
        ) -> Result<Vec<Message>, StoreError> {
            unreachable!("the relay never reads history")
        }

        async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
            if !self.takes_dead_letters.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            self.dead_letters.lock().unwrap().push(letter.clone());
            Ok(())
        }

        async fn dead_letters(&self, _: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
            Ok(self.dead_letters.lock().unwrap().clone())
        }

        async fn dead_letter(&self, _: &str) -> Result<Option<DeadLetter>, StoreError> {
            unreachable!("the relay never reads dead letters back")
        }

        async fn count_dead_letters(&self) -> Result<u64, StoreError> {
            Ok(self.dead_letters.lock().unwrap().len() as u64)
        }

        async fn remove_dead_letters(&self, _: &[String]) -> Result<u64, StoreError> {
            unreachable!("the relay never removes dead letters")
        }

        async fn count_replays(&self, _: &str, _: u64) -> Result<(), StoreError> {
            unreachable!("the relay never replays dead letters")
        }

        async fn replay_totals(&self) -> Result<Vec<(String, u64)>, StoreError> {
            unreachable!("the relay never replays dead letters")
        }
    }

    struct Running {
        outbox: Arc<Outbox>,
        health: Arc<StoreHealth>,
        stop: CancellationToken,
        relay: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    impl Running {
        async fn append(&self, content: &str) -> Message {
            let alice = UserId::parse("alice").unwrap();
            let channel = Channel::new(vec![alice.clone()], 1).unwrap();
            let draft = Draft::new(&alice, &channel, content);
            self.outbox.append(draft).await.unwrap().message
        }

        async fn stop(self) {
            self.stop.cancel();
            self.relay.await.unwrap();
        }
    }

    /// Two writers of two messages, retrying within milliseconds.
    fn quick(attempts: u32) -> RelaySettings {
        RelaySettings {
            workers: 2,
            batch_size: 2,
            retry_attempts: attempts,
            retry_base: Duration::from_millis(1),
            retry_max: Duration::from_millis(5),
        }
    }

    /// Appends `contents` to a new outbox and starts a relay on it.
    async fn start(store: Arc<FakeStore>, contents: &[&str], settings: RelaySettings) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Arc::new(
            Outbox::open(
                &dir.path().join("outbox.db"),
                64,
                "test:1",
                Duration::from_secs(60),
                Box::new(|_| {}),
                Arc::default(),
            )
            .unwrap(),
        );
        let health = Arc::new(StoreHealth::default());
        let stop = CancellationToken::new();
        let backoff = Backoff::new(settings.retry_base, settings.retry_max);
        let relay = Relay::new(outbox.clone(), store, health.clone(), settings, backoff);
        let running = Running {
            outbox,
            health,
            stop: stop.clone(),
            relay: tokio::spawn(relay.run(stop)),
            _dir: dir,
        };
        for content in contents {
            running.append(content).await;
        }
        running
    }

    /// Relays `contents` and returns once nothing is pending.
    async fn relay_through(
        store: Arc<FakeStore>,
        contents: &[&str],
        settings: RelaySettings,
    ) -> Running {
        let running = start(store, contents, settings).await;
        tokio::time::timeout(Duration::from_secs(10), running.outbox.drained())
            .await
            .expect("the outbox drains");
        assert!(running.health.is_up());
        running
    }

    /// Polls a condition every few milliseconds for up to ten seconds.
    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_poison_message_is_dead_lettered_into_the_store_after_its_attempts() {
        let store = FakeStore::new(0, true);
        let running = relay_through(store.clone(), &["a", "poison", "b", "c", "d"], quick(3)).await;
        until("the dead letter reaches the store", || {
            store.dead_letters.lock().unwrap().len() == 1
        })
        .await;
        until("it leaves the outbox", || {
            running.outbox.counts() == OutboxCounts::default()
        })
        .await;
        assert_eq!(store.poison_attempts.load(Ordering::SeqCst), 3);
        assert_eq!(store.stored.lock().unwrap().len(), 4);
        let letter = store.dead_letters.lock().unwrap()[0].clone();
        assert_eq!(letter.message.content, "poison");
        assert_eq!(letter.attempts, 3);
        assert_eq!(
            letter.error,
            Failure::new("duplicate_key", "E11000 on content")
        );
        assert!(letter.first_failed_at <= letter.last_failed_at);
        assert_eq!(letter.instance, "test:1");
        running.stop().await;
    }

    #[tokio::test]
    async fn a_dead_letter_the_store_cannot_take_stays_in_the_outbox_until_it_can() {
        let store = FakeStore::new(0, false);
        let running = relay_through(store.clone(), &["poison"], quick(1)).await;
        until("the entry is dead", || {
            running.outbox.counts().dead_lettered == 1
        })
        .await;
        store.takes_dead_letters.store(true, Ordering::SeqCst);
        until("the dead letter reaches the store", || {
            store.dead_letters.lock().unwrap().len() == 1
        })
        .await;
        until("it leaves the outbox", || {
            running.outbox.counts().dead_lettered == 0
        })
        .await;
        running.stop().await;
    }

    #[tokio::test]
    async fn an_outage_spends_no_attempts() {
        // One attempt each: had the outage cost an attempt, every message would be dead.
        let store = FakeStore::new(6, true);
        let running = relay_through(store.clone(), &["a", "b", "c", "d", "e"], quick(1)).await;
        assert_eq!(store.stored.lock().unwrap().len(), 5);
        assert_eq!(running.outbox.counts(), OutboxCounts::default());
        assert!(store.dead_letters.lock().unwrap().is_empty());
        running.stop().await;
    }

    #[tokio::test]
    async fn more_appends_than_memory_holds_during_an_outage_are_all_stored_once() {
        // Down while more is appended than the journal hands the relay in memory, so the
        // relay reads the rest from the file.
        let store = FakeStore::new(u32::MAX, true);
        let settings = RelaySettings {
            workers: 2,
            batch_size: 64,
            ..quick(1)
        };
        let running = start(store.clone(), &[], settings).await;
        let appends = 4400;
        let mut sent = Vec::with_capacity(appends);
        for i in 0..appends {
            sent.push(running.append(&format!("m{i}")).await.id);
        }
        store.outages.store(0, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(30), running.outbox.drained())
            .await
            .expect("the outbox drains");
        let stored = store.stored.lock().unwrap().clone();
        assert_eq!(stored.len(), appends, "every message stored");
        let stored: std::collections::HashSet<_> = stored.into_iter().collect();
        assert!(sent.iter().all(|id| stored.contains(id)));
        running.stop().await;
    }

    #[tokio::test]
    async fn a_refused_message_waits_for_its_retry_without_holding_a_writer() {
        // One writer, and retries so far off that a writer waiting for one would time out the
        // wait for the healthy message below.
        let settings = RelaySettings {
            workers: 1,
            batch_size: 2,
            retry_attempts: 5,
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(60),
        };
        let store = FakeStore::new(0, true);
        let running = start(store.clone(), &["poison", "poison", "poison"], settings).await;
        until("every poison message was refused once", || {
            store.poison_attempts.load(Ordering::SeqCst) == 3
        })
        .await;
        let healthy = running.append("healthy").await;
        until("the healthy message is stored", || {
            store.stored.lock().unwrap().contains(&healthy.id)
        })
        .await;
        // The outbox forgets the healthy message once the store answered: a moment later.
        until("only the poison messages are pending", || {
            let counts = running.outbox.counts();
            (counts.pending, counts.dead_lettered) == (3, 0)
        })
        .await;
        assert_eq!(store.poison_attempts.load(Ordering::SeqCst), 3);
        running.stop().await;
    }

    #[tokio::test]
    async fn a_batch_failing_as_a_whole_is_split_until_the_message_at_fault_is_alone() {
        let settings = RelaySettings {
            workers: 1,
            batch_size: 8,
            ..quick(1)
        };
        let store = FakeStore::new(0, true);
        // One attempt each: had the batch's failure been charged to every message in it, all
        // eight would be dead.
        let contents = ["a", "b", "c", "d", "e", "breaks-batch", "f", "g"];
        let running = relay_through(store.clone(), &contents, settings).await;
        until("the dead letter reaches the store", || {
            store.dead_letters.lock().unwrap().len() == 1
        })
        .await;
        assert_eq!(store.stored.lock().unwrap().len(), 7);
        let letter = store.dead_letters.lock().unwrap()[0].clone();
        assert_eq!(letter.message.content, "breaks-batch");
        assert_eq!(letter.attempts, 1);
        assert_eq!(
            letter.error,
            Failure::new("store_error", "the batch is malformed")
        );
        running.stop().await;
    }
}
