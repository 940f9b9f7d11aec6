//! Drains the outbox into the store. The relay reads the durable outbox, never the broadcast
//! bus, so a lagging bus receiver cannot cost it an event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::metrics::{counter, histogram};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dead_letters::DeadLetterMover;
use super::{Backoff, Outbox, OutboxError, PendingEntry};
use crate::config::RelaySettings;
use crate::metrics;
use crate::model::Failure;
use crate::store::{MessageStore, StoreError, StoreHealth};

/// How long the dispatcher lets a batch gather after a short one.
const LINGER: Duration = Duration::from_millis(10);

pub struct Relay {
    outbox: Arc<Outbox>,
    writer: Arc<BatchWriter>,
    mover: DeadLetterMover,
    settings: RelaySettings,
}

impl Relay {
    pub fn new(
        outbox: Arc<Outbox>,
        store: Arc<dyn MessageStore>,
        health: Arc<StoreHealth>,
        settings: RelaySettings,
    ) -> Self {
        let backoff = Backoff::new(settings.retry_base, settings.retry_max);
        let dead_letters = Arc::new(Notify::new());
        let writer = BatchWriter {
            outbox: outbox.clone(),
            store: store.clone(),
            health,
            backoff,
            max_attempts: settings.retry_attempts,
            dead_letters: dead_letters.clone(),
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
            settings,
        }
    }

    /// Hands batches of pending entries, oldest first, to at most `workers` concurrent writers
    /// until `stop`. A batch is only taken when a writer is free, so under load batches fill up.
    /// Entries still pending at `stop` stay in the outbox for the next start.
    pub async fn run(self, stop: CancellationToken) {
        let workers = Arc::new(Semaphore::new(self.settings.workers));
        let tasks = TaskTracker::new();
        tasks.spawn(self.mover.run(stop.clone()));
        let mut cursor = 0;
        let mut last_batch_full = true;
        loop {
            // After a short batch, let the next one gather: fewer, fuller store transactions
            // (each one a disk sync) for a few milliseconds more on the way to history.
            if !last_batch_full && !sleep_unless_stopped(LINGER, &stop).await {
                break;
            }
            let permit = tokio::select! {
                permit = workers.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = stop.cancelled() => break,
            };
            let batch = match self
                .outbox
                .pending_after(cursor, self.settings.batch_size)
                .await
            {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(error = %e, "reading the outbox failed");
                    if !sleep_unless_stopped(Duration::from_secs(1), &stop).await {
                        break;
                    }
                    continue;
                }
            };
            let Some(last) = batch.last() else {
                last_batch_full = false;
                drop(permit);
                tokio::select! {
                    () = self.outbox.new_work() => continue,
                    () = stop.cancelled() => break,
                }
            };
            cursor = last.seq;
            last_batch_full = batch.len() >= self.settings.batch_size;
            let writer = self.writer.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                writer.write(batch, &stop).await;
                drop(permit);
            });
        }
        tasks.close();
        tasks.wait().await;
    }
}

struct BatchWriter {
    outbox: Arc<Outbox>,
    store: Arc<dyn MessageStore>,
    health: Arc<StoreHealth>,
    backoff: Backoff,
    max_attempts: u32,
    /// Woken when an entry is dead-lettered, so it moves to the store's dead letters at once.
    dead_letters: Arc<Notify>,
}

impl BatchWriter {
    /// Writes a batch until every entry is stored or dead-lettered, or `stop`.
    ///
    /// An unreachable store is nobody's fault: the batch waits (backing off as the outage goes
    /// on) without spending attempts. Only a message the store refuses spends its own attempts.
    async fn write(&self, mut batch: Vec<PendingEntry>, stop: &CancellationToken) {
        while !batch.is_empty() {
            let messages: Vec<_> = batch.iter().map(|e| e.message.clone()).collect();
            let writing = Instant::now();
            let written = self.store.insert_batch(&messages).await;
            histogram!(metrics::PERSIST_DURATION).record(writing.elapsed());
            let outcomes = match written {
                Ok(outcomes) if outcomes.len() == batch.len() => {
                    self.health.reachable();
                    let result = if outcomes.iter().all(Result::is_ok) {
                        "ok"
                    } else {
                        "partial"
                    };
                    counter!(metrics::PERSIST_BATCHES, "result" => result).increment(1);
                    outcomes
                }
                Ok(outcomes) => {
                    let e = format!(
                        "store answered {} outcomes for {} messages",
                        outcomes.len(),
                        batch.len()
                    );
                    counter!(metrics::PERSIST_BATCHES, "result" => "failed").increment(1);
                    vec![Err(Failure::new("store_error", e)); batch.len()]
                }
                Err(StoreError::Unavailable(reason)) => {
                    counter!(metrics::PERSIST_BATCHES, "result" => "unavailable").increment(1);
                    let outages = self.health.unreachable();
                    tracing::warn!(%reason, outages, "store unavailable, batch waits in the outbox");
                    if !sleep_unless_stopped(self.backoff.delay(outages), stop).await {
                        return;
                    }
                    continue;
                }
                Err(StoreError::Failed(reason)) => {
                    counter!(metrics::PERSIST_BATCHES, "result" => "failed").increment(1);
                    vec![Err(Failure::new("store_error", reason)); batch.len()]
                }
            };

            let mut stored = Vec::new();
            let mut retry = Vec::new();
            for (mut entry, outcome) in batch.into_iter().zip(outcomes) {
                match outcome {
                    Ok(()) => stored.push(entry.seq),
                    Err(failure) => {
                        entry.attempts += 1;
                        let dead = entry.attempts >= self.max_attempts;
                        // The store's text can quote the message (a duplicate key's value), so
                        // only its kind is logged above debug.
                        let (id, attempts, kind) =
                            (&entry.message.id, entry.attempts, &failure.kind);
                        tracing::debug!(%id, error = %failure.message, "store refused a message");
                        if dead {
                            counter!(metrics::DEAD_LETTERS).increment(1);
                            tracing::error!(%id, attempts, %kind, "message dead-lettered");
                        } else {
                            tracing::warn!(%id, attempts, %kind, "message write failed, will retry");
                        }
                        let (seq, attempts) = (entry.seq, entry.attempts);
                        let recorded = self
                            .until_recorded(stop, || {
                                self.outbox
                                    .record_failure(seq, failure.clone(), attempts, dead)
                            })
                            .await;
                        if !recorded {
                            return;
                        }
                        if dead {
                            self.dead_letters.notify_one();
                        } else {
                            retry.push(entry);
                        }
                    }
                }
            }
            if !stored.is_empty()
                && !self
                    .until_recorded(stop, || self.outbox.mark_stored(stored.clone()))
                    .await
            {
                return;
            }
            let Some(fewest) = retry.iter().map(|e| e.attempts).min() else {
                return;
            };
            counter!(metrics::PERSIST_RETRIES).increment(retry.len() as u64);
            if !sleep_unless_stopped(self.backoff.delay(fewest), stop).await {
                return;
            }
            batch = retry;
        }
    }

    /// Retries an outbox update until it succeeds; false if `stop` came first. The dispatcher's
    /// cursor has moved past these entries, so giving up would strand them until a restart.
    async fn until_recorded<F, Fut>(&self, stop: &CancellationToken, mut update: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), OutboxError>>,
    {
        let mut failures = 0;
        loop {
            match update().await {
                Ok(()) => return true,
                Err(e) => {
                    failures += 1;
                    tracing::error!(error = %e, failures, "updating the outbox failed, retrying");
                    if !sleep_unless_stopped(self.backoff.delay(failures), stop).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// Sleeps for `delay`; false if `stop` came first.
async fn sleep_unless_stopped(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = stop.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::model::{Channel, DeadLetter, Message, UserId};
    use crate::outbox::{Draft, OutboxCounts};
    use crate::store::{Cursor, DeadLetterQuery, HistoryPage, WriteOutcome};

    /// A store that is down for its first `outages` writes, always refuses "poison", and takes
    /// dead letters only while `takes_dead_letters` is set.
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

        async fn locate(&self, _: &str) -> Result<Option<Cursor>, StoreError> {
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
    }

    struct Running {
        outbox: Arc<Outbox>,
        stop: CancellationToken,
        relay: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    async fn relay_through(store: Arc<FakeStore>, contents: &[&str], attempts: u32) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Arc::new(
            Outbox::open(
                &dir.path().join("outbox.db"),
                64,
                "test:1",
                Duration::from_secs(60),
                Box::new(|_| {}),
            )
            .unwrap(),
        );
        let alice = UserId::parse("alice").unwrap();
        let channel = Channel::new(vec![alice.clone()], 1).unwrap();
        for content in contents {
            outbox
                .append(Draft::new(&alice, &channel, *content))
                .await
                .unwrap();
        }
        let settings = RelaySettings {
            workers: 2,
            batch_size: 2,
            retry_attempts: attempts,
            retry_base: Duration::from_millis(1),
            retry_max: Duration::from_millis(5),
        };
        let health = Arc::new(StoreHealth::default());
        let stop = CancellationToken::new();
        let relay = Relay::new(outbox.clone(), store, health.clone(), settings);
        let relay = tokio::spawn(relay.run(stop.clone()));
        tokio::time::timeout(Duration::from_secs(10), outbox.drained())
            .await
            .expect("the outbox drains");
        assert!(health.is_up());
        Running {
            outbox,
            stop,
            relay,
            _dir: dir,
        }
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
        let running = relay_through(store.clone(), &["a", "poison", "b", "c", "d"], 3).await;
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
        running.stop.cancel();
        running.relay.await.unwrap();
    }

    #[tokio::test]
    async fn a_dead_letter_the_store_cannot_take_stays_in_the_outbox_until_it_can() {
        let store = FakeStore::new(0, false);
        let running = relay_through(store.clone(), &["poison"], 1).await;
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
        running.stop.cancel();
        running.relay.await.unwrap();
    }

    #[tokio::test]
    async fn an_outage_spends_no_attempts() {
        // One attempt each: had the outage cost an attempt, every message would be dead.
        let store = FakeStore::new(6, true);
        let running = relay_through(store.clone(), &["a", "b", "c", "d", "e"], 1).await;
        assert_eq!(store.stored.lock().unwrap().len(), 5);
        assert_eq!(running.outbox.counts(), OutboxCounts::default());
        assert!(store.dead_letters.lock().unwrap().is_empty());
        running.stop.cancel();
        running.relay.await.unwrap();
    }
}
