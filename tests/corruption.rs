//! A database file corrupted while chatd runs: the instance says it is not ready and why,
//! refuses sends without appending anything, shows it in `/metrics`, and the relay still
//! drains every acknowledged message it holds or can read from a damaged outbox.
//!
//! SQLite only sees damage when it reads a page from the file: so each test first checkpoints
//! the file's WAL away (every page is then in the file), overwrites pages with garbage, and
//! then commits a change to the file's header (`PRAGMA user_version`), after which every one
//! of chatd's connections drops its page cache at its next read. No timing is involved.
//!
//! Its own test binary, for the metrics recorder (one per process): the tests compare its
//! counters before and after, and read the `chat_storage_corrupted` gauges, which a scrape of
//! any chatd in the process sets from that chatd's files. So no other test's chatd runs beside
//! them, and they take turns.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chatd::app::OUTBOX_FILE;
use chatd::store::SQLITE_FILE;
use common::{DEADLINE, TestServer, eventually, metric};
use rusqlite::Connection;
use serde_json::Value;

/// The tests compare the process's counters before and after: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Content of about 300 bytes, so that a few dozen messages fill several pages.
fn content(i: usize) -> String {
    format!("{i:0300}")
}

fn connect(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(DEADLINE).unwrap();
    conn
}

/// Runs blocking SQLite work off the runtime that chatd's tasks share with the test.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Copies the file's WAL into it and empties the WAL: the file then holds every page.
fn checkpoint(conn: &Connection) {
    let deadline = std::time::Instant::now() + DEADLINE;
    // Busy (1) while chatd's own checkpointer holds the checkpoint lock: it lets go in a moment.
    while conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
        == 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL never emptied"
        );
        std::thread::yield_now();
    }
}

/// The leaf pages of `table`, in key order, with how many rows each holds.
fn leaves(conn: &Connection, table: &str) -> Vec<(u64, i64)> {
    conn.prepare(
        "SELECT pageno, ncell FROM dbstat WHERE name = ?1 AND pagetype = 'leaf' ORDER BY path",
    )
    .unwrap()
    .query_map([table], |row| Ok((row.get(0)?, row.get(1)?)))
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

/// Overwrites `pages` of the file with garbage, then commits a header change so that chatd's
/// connections read the file afresh.
fn garble(conn: &Connection, path: &Path, pages: &[u64]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for page in pages {
        file.seek(SeekFrom::Start(4096 * (page - 1))).unwrap();
        file.write_all(&[0xA5; 4096]).unwrap();
    }
    file.sync_all().unwrap();
    conn.execute_batch("PRAGMA user_version = 7").unwrap();
}

/// Waits for `/ready` to answer 503 naming the corrupted file, and returns the body.
async fn not_ready_because(server: &TestServer, file: &str, path: &Path) -> Value {
    let body = eventually(&format!("/ready names {file}"), || async {
        let (status, body) = server.ready().await;
        (status == 503 && body["corrupted"].is_array()).then_some(body)
    })
    .await;
    let corrupted = &body["corrupted"][0];
    assert_eq!(corrupted["file"], file, "{body}");
    assert_eq!(corrupted["path"], path.display().to_string(), "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("{} is corrupted", path.display())),
        "{error}"
    );
    assert!(error.contains("restore the file from a backup"), "{error}");
    assert!(error.contains("-wal and -shm files"), "{error}");
    body
}

/// The highest seq the outbox ever gave, which any append raises. It lives apart from the
/// outbox's rows, so it is readable even when they are damaged.
async fn last_seq(server: &TestServer) -> i64 {
    let path = server.data_dir.path().join(OUTBOX_FILE);
    blocking(move || {
        connect(&path)
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'",
                [],
                |row| row.get(0),
            )
            .unwrap()
    })
    .await
}

/// A send is refused with 503 and a JSON error, without `Retry-After`, and appends nothing:
/// the outbox gives no new seq and no message is accepted.
async fn sends_are_refused(server: &TestServer) {
    let seq = last_seq(server).await;
    let accepted = metric(&server.scrape().await, "chat_messages_accepted_total");
    let response = server.send("alice", &["alice", "bob"], "refused").await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_none());
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("corrupted"), "{error}");
    assert!(error.contains("another instance"), "{error}");
    assert_eq!(last_seq(server).await, seq);
    assert_eq!(
        metric(&server.scrape().await, "chat_messages_accepted_total"),
        accepted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_corrupted_while_running_is_named_and_sends_are_refused() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    for i in 0..60 {
        server
            .send_ok("alice", &["alice", "bob"], &content(i))
            .await;
    }
    server.stored("bob", "alice,bob", 60).await;
    let text = server.scrape().await;
    assert_eq!(metric(&text, "chat_storage_corrupted{file=\"store\"}"), 0.0);

    let path: PathBuf = server.data_dir.path().join(SQLITE_FILE);
    blocking({
        let path = path.clone();
        move || {
            let conn = connect(&path);
            checkpoint(&conn);
            let pages: Vec<u64> = leaves(&conn, "messages").iter().map(|l| l.0).collect();
            assert!(pages.len() >= 3, "{pages:?}");
            garble(&conn, &path, &pages);
        }
    })
    .await;

    // History reads the damaged pages: the store is unavailable, and that is corruption.
    let (status, body) = server.get_history("bob", "participants=alice,bob").await;
    assert_eq!(status, 503, "{body}");
    not_ready_because(&server, "store", &path).await;
    sends_are_refused(&server).await;
    let text = server.scrape().await;
    assert_eq!(metric(&text, "chat_storage_corrupted{file=\"store\"}"), 1.0);
    assert_eq!(
        metric(&text, "chat_storage_corrupted{file=\"outbox\"}"),
        0.0
    );
    server.shutdown().await;
}

/// An outbox whose leaf page in the middle of `messages` pending acknowledged messages was
/// garbled while chatd ran, and the store then let go: the server, the ids sent, the ids on the
/// damaged page, the outbox's path and the skipped-row count before.
struct DamagedOutbox {
    server: TestServer,
    sent: Vec<String>,
    on_damaged_page: BTreeSet<String>,
    path: PathBuf,
    skipped_before: f64,
}

async fn damage_the_outbox_under(messages: usize) -> DamagedOutbox {
    // One writer of small batches, backing off briefly while the store is held below. The
    // outbox never drains (its damaged rows stay), so shutdown does not wait for it.
    let server = TestServer::start_with(&[
        ("SHUTDOWN_TIMEOUT", "0s"),
        ("RELAY_WORKERS", "1"),
        ("RELAY_BATCH_SIZE", "4"),
        ("RETRY_BASE_MS", "10"),
        ("RETRY_MAX_MS", "100"),
    ])
    .await;
    let skipped_before = metric(&server.scrape().await, "chat_outbox_rows_skipped_total");

    // The store is held by another writer, so every message waits in the outbox (the relay's
    // one writer holds its first batch, waiting for the store).
    let store = server.data_dir.path().join(SQLITE_FILE);
    let holder = blocking(move || {
        let conn = connect(&store);
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        conn
    })
    .await;
    let mut sent = Vec::with_capacity(messages);
    // A few senders at once, so that thousands of sends take seconds, not minutes.
    for chunk in (0..messages).collect::<Vec<_>>().chunks(16) {
        let contents: Vec<String> = chunk.iter().map(|i| content(*i)).collect();
        let replies = futures_util::future::join_all(
            contents
                .iter()
                .map(|c| server.send_ok("alice", &["alice", "bob"], c)),
        )
        .await;
        sent.extend(
            replies
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string()),
        );
    }

    // A leaf of the outbox's table in the middle of the pending rows becomes garbage.
    let path: PathBuf = server.data_dir.path().join(OUTBOX_FILE);
    let on_damaged_page: BTreeSet<String> = blocking({
        let path = path.clone();
        move || {
            let conn = connect(&path);
            checkpoint(&conn);
            let ids: Vec<String> = conn
                .prepare("SELECT id FROM outbox ORDER BY seq")
                .unwrap()
                .query_map([], |row| row.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert_eq!(ids.len(), messages, "every message is pending");
            let leaves = leaves(&conn, "outbox");
            assert!(leaves.len() >= 6, "{leaves:?}");
            let first: i64 = leaves[..4].iter().map(|l| l.1).sum();
            let lost = ids[first as usize..(first + leaves[4].1) as usize].to_vec();
            garble(&conn, &path, &[leaves[4].0]);
            lost.into_iter().collect()
        }
    })
    .await;
    assert!(!on_damaged_page.is_empty());
    blocking(move || drop(holder)).await;
    DamagedOutbox {
        server,
        sent,
        on_damaged_page,
        path,
        skipped_before,
    }
}

/// Waits until the store holds exactly `expected`, read from its file.
async fn store_holds(server: &TestServer, expected: &BTreeSet<String>) {
    let store = server.data_dir.path().join(SQLITE_FILE);
    eventually(
        &format!("the store holds {} messages", expected.len()),
        || {
            let store = store.clone();
            async move {
                let stored: BTreeSet<String> = blocking(move || {
                    connect(&store)
                        .prepare("SELECT id FROM messages")
                        .unwrap()
                        .query_map([], |row| row.get(0))
                        .unwrap()
                        .collect::<rusqlite::Result<_>>()
                        .unwrap()
                })
                .await;
                (stored == *expected).then_some(())
            }
        },
    )
    .await;
}

/// The outbox is marked corrupted, `/ready` says so and sends are refused.
async fn refuses_for_the_damaged_outbox(damaged: &DamagedOutbox) {
    let text = damaged.server.scrape().await;
    assert_eq!(
        metric(&text, "chat_storage_corrupted{file=\"outbox\"}"),
        1.0
    );
    assert_eq!(metric(&text, "chat_storage_corrupted{file=\"store\"}"), 0.0);
    not_ready_because(&damaged.server, "outbox", &damaged.path).await;
    sends_are_refused(&damaged.server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_relay_holds_in_memory_reach_the_store_past_a_damaged_outbox_page() {
    let _serial = SERIAL.lock().await;
    // Fewer than the journal hands the relay in memory: it never reads them back.
    let damaged = damage_the_outbox_under(80).await;
    let all: BTreeSet<String> = damaged.sent.iter().cloned().collect();
    store_holds(&damaged.server, &all).await;
    // Removing the stored rows from the outbox reads the damaged page.
    eventually("the outbox is found corrupted", || async {
        let text = damaged.server.scrape().await;
        (metric(&text, "chat_storage_corrupted{file=\"outbox\"}") == 1.0).then_some(())
    })
    .await;
    let text = damaged.server.scrape().await;
    assert_eq!(
        metric(&text, "chat_outbox_rows_skipped_total"),
        damaged.skipped_before
    );
    refuses_for_the_damaged_outbox(&damaged).await;
    damaged.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_reading_a_damaged_outbox_skips_only_the_damaged_page() {
    let _serial = SERIAL.lock().await;
    // More than the journal hands the relay in memory (4,096): the relay reads the file.
    let damaged = damage_the_outbox_under(4400).await;
    let readable: BTreeSet<String> = damaged
        .sent
        .iter()
        .filter(|id| !damaged.on_damaged_page.contains(*id))
        .cloned()
        .collect();
    store_holds(&damaged.server, &readable).await;
    let text = damaged.server.scrape().await;
    assert_eq!(
        metric(&text, "chat_outbox_rows_skipped_total") - damaged.skipped_before,
        damaged.on_damaged_page.len() as f64
    );
    refuses_for_the_damaged_outbox(&damaged).await;
    damaged.server.shutdown().await;
}
