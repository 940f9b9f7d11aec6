//! chatd with `MONGO_URI`, against a real MongoDB-wire server.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::mongo::MongoServer;
use crate::common::process::{Chatd, run_cli};
use crate::common::{Seen, TestServer, WsClient, eventually, token_for};
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const ADMIN_TOKEN: &str = "admin-test-token";

struct MongoChat {
    server: TestServer,
    database: String,
    messages: Collection<Document>,
    dead_letters: Collection<Document>,
}

impl MongoChat {
    async fn start(mongo: &MongoServer, extra: &[(&str, &str)]) -> Self {
        let database = MongoServer::database();
        let mut vars = vec![
            ("MONGO_URI", mongo.uri.as_str()),
            ("MONGO_DB", database.as_str()),
            ("STORE_TIMEOUT", "2s"),
            ("RETRY_BASE_MS", "20"),
            ("RETRY_MAX_MS", "500"),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
        ];
        vars.extend_from_slice(extra);
        let server = TestServer::start_with(&vars).await;
        let db = mongo.client().await.database(&database);
        Self {
            server,
            messages: db.collection("messages"),
            dead_letters: db.collection("dead_letters"),
            database,
        }
    }

    /// The environment the `chatd` command line needs to reach the same store.
    fn cli_env<'a>(&'a self, mongo: &'a MongoServer) -> Vec<(&'a str, &'a str)> {
        vec![
            ("MONGO_URI", mongo.uri.as_str()),
            ("MONGO_DB", self.database.as_str()),
        ]
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .server
            .http
            .request(method, self.server.url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

async fn all(collection: &Collection<Document>) -> Vec<Document> {
    collection
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

async fn await_count(collection: &Collection<Document>, filter: Document, count: u64) {
    eventually(
        &format!("{count} documents in {} match {filter}", collection.name()),
        || async {
            (collection.count_documents(filter.clone()).await.unwrap() == count).then_some(())
        },
    )
    .await;
}

fn millis(value: &Value) -> i64 {
    DateTime::parse_from_rfc3339(value.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

#[tokio::test]
async fn messages_are_stored_in_the_original_layout_and_read_back() {
    let mongo = MongoServer::start().await;
    let chat = MongoChat::start(&mongo, &[]).await;
    let sent = [
        chat.server
            .send_ok("alice", &["bob", "alice"], "hello bob")
            .await,
        chat.server
            .send_ok("bob", &["alice", "bob"], "hi alice")
            .await,
        chat.server
            .send_ok("carol", &["carol", "bob", "alice"], "group hello")
            .await,
    ];
    let pair = chat.server.stored("alice", "alice,bob", 2).await;
    assert_eq!(pair, vec![sent[1].clone(), sent[0].clone()]);
    let group = chat.server.stored("bob", "alice,bob,carol", 1).await;
    assert_eq!(group, vec![sent[2].clone()]);

    let docs = all(&chat.messages).await;
    assert_eq!(docs.len(), 3);
    for message in &sent {
        let id = message["id"].as_str().unwrap();
        let stored = docs
            .iter()
            .find(|d| d.get_str("_id") == Ok(id))
            .expect("stored under its id");
        let keys: Vec<&str> = stored.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["_id", "sender", "content", "created_at", "participants"]
        );
        assert_eq!(stored.get_str("sender").unwrap(), message["sender"]);
        assert_eq!(stored.get_str("content").unwrap(), message["content"]);
        let created_at = stored.get_datetime("created_at").expect("a BSON date");
        assert_eq!(
            created_at.timestamp_millis(),
            millis(&message["created_at"])
        );
        let participants: Vec<&str> = stored
            .get_array("participants")
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(json!(participants), message["participants"]);
    }
}

#[tokio::test]
async fn the_original_documents_and_index_are_read_and_kept() {
    let mongo = MongoServer::start().await;
    let database = MongoServer::database();
    let db = mongo.client().await.database(&database);
    let messages: Collection<Document> = db.collection("messages");
    // What the original service left behind: its index and its documents.
    messages
        .create_index(
            IndexModel::builder()
                .keys(doc! { "participants": 1 })
                .build(),
        )
        .await
        .unwrap();
    let day_ago = Utc::now().timestamp_millis() - 86_400_000;
    let legacy: Vec<ObjectId> = (0..3).map(|_| ObjectId::new()).collect();
    for (i, id) in legacy.iter().enumerate() {
        messages
            .insert_one(doc! {
                "_id": id,
                "sender": "alice",
                "content": format!("from the Go service {i}"),
                "created_at": bson::DateTime::from_millis(day_ago + i as i64 * 1000),
                "participants": ["alice", "bob"],
            })
            .await
            .unwrap();
    }

    let server =
        TestServer::start_with(&[("MONGO_URI", &mongo.uri), ("MONGO_DB", &database)]).await;
    let migrations: Collection<Document> = db.collection("_migrations");
    await_count(&migrations, doc! {}, 5).await;
    let history = server.history("bob", "participants=alice,bob").await;
    let ids: Vec<&str> = history.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let expected: Vec<String> = legacy.iter().rev().map(|id| id.to_hex()).collect();
    assert_eq!(
        ids, expected,
        "ObjectIds are rendered as 24-hex ids, newest first"
    );
    assert_eq!(history[2]["content"], "from the Go service 0");
    assert_eq!(millis(&history[2]["created_at"]), day_ago);

    let new = server.send_ok("bob", &["alice", "bob"], "from chatd").await;
    let history = server.stored("alice", "alice,bob", 4).await;
    assert_eq!(history[0], new);
    let before_middle = server
        .history(
            "alice",
            &format!("participants=alice,bob&before={}", legacy[1].to_hex()),
        )
        .await;
    assert_eq!(before_middle.len(), 1);
    assert_eq!(before_middle[0]["id"], legacy[0].to_hex());

    let indexes = messages.list_index_names().await.unwrap();
    assert!(
        indexes.contains(&"participants_1".to_string()),
        "{indexes:?}"
    );
    for index in [
        "participants_1_created_at_-1__id_-1",
        "participants_1__id_1",
        "participants_1_seq_1",
    ] {
        assert!(indexes.contains(&index.to_string()), "{indexes:?}");
    }
    let again = run_cli(
        &["migrate"],
        &[("MONGO_URI", &mongo.uri), ("MONGO_DB", &database)],
    );
    assert!(again.status.success(), "{again:?}");
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "mongodb: every migration was already applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_delays_messages_but_loses_none_and_dead_letters_none() {
    let mongo = MongoServer::start_local().await;
    // One attempt: had the outage spent an attempt, the message would be a dead letter.
    let chat = Arc::new(
        MongoChat::start(
            &mongo,
            &[("RETRY_ATTEMPTS", "1"), ("STORE_TIMEOUT", "500ms")],
        )
        .await,
    );
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let sending = Arc::new(AtomicBool::new(true));
    let sender = tokio::spawn({
        let (chat, accepted, sending) = (chat.clone(), accepted.clone(), sending.clone());
        async move {
            let mut i = 0;
            while sending.load(Ordering::SeqCst) {
                let message = chat
                    .server
                    .send_ok("alice", &["alice", "bob"], &format!("m{i}"))
                    .await;
                accepted
                    .lock()
                    .await
                    .push(message["id"].as_str().unwrap().to_string());
                i += 1;
            }
        }
    });
    let sent_at_least = |n: usize| {
        let accepted = accepted.clone();
        move || {
            let accepted = accepted.clone();
            async move { (accepted.lock().await.len() >= n).then_some(()) }
        }
    };
    let store_up = |up: bool| {
        let chat = chat.clone();
        move || {
            let chat = chat.clone();
            async move { (chat.server.health().await["store"]["up"] == up).then_some(()) }
        }
    };

    eventually("sends before the outage", sent_at_least(20)).await;
    mongo.pause();
    // The outage lasts at least this long, whatever else it takes: the scenario's length.
    let outage_ends = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    eventually("the relay notices the outage", store_up(false)).await;
    let during = accepted.lock().await.len() + 100;
    eventually("sends during the outage", sent_at_least(during)).await;
    tokio::time::sleep_until(outage_ends).await;
    mongo.resume();
    eventually("the store is back", store_up(true)).await;
    let after = accepted.lock().await.len() + 20;
    eventually("sends after the outage", sent_at_least(after)).await;
    sending.store(false, Ordering::SeqCst);
    sender.await.unwrap();

    let accepted: BTreeSet<String> = accepted.lock().await.iter().cloned().collect();
    await_count(&chat.messages, doc! {}, accepted.len() as u64).await;
    let stored: BTreeSet<String> = all(&chat.messages)
        .await
        .iter()
        .map(|d| d.get_str("_id").unwrap().to_string())
        .collect();
    assert_eq!(
        stored, accepted,
        "every acknowledged message is stored, once"
    );
    assert_eq!(chat.dead_letters.count_documents(doc! {}).await.unwrap(), 0);
    // Inserts that timed out during the pause may have landed when the server woke; the relay's
    // retries find them stored and empty the outbox.
    eventually("the outbox empties", || async {
        (chat.server.health().await["outbox"] == json!({"pending": 0, "dead_lettered": 0}))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn failover_answers_hold_messages_without_spending_attempts() {
    let mongo = MongoServer::start_local().await;
    // One attempt: had a failover answer spent an attempt, the message would be a dead letter.
    let chat = MongoChat::start(&mongo, &[("RETRY_ATTEMPTS", "1")]).await;
    let admin = mongo.client().await.database("admin");
    let mut sent = vec![
        chat.server
            .send_ok("alice", &["alice", "bob"], "before")
            .await,
    ];
    chat.server.stored("alice", "alice,bob", 1).await;

    // chatd's inserts only: as if the primary stepped down, then as if the write could not be
    // replicated (it is applied, but not durable as chatd asks).
    let failures = [
        doc! { "errorCode": 10107 },
        doc! { "writeConcernError": { "code": 64, "errmsg": "waiting for replication timed out" } },
    ];
    for failure in failures {
        let mut data = doc! { "failCommands": ["insert"], "appName": "chatd" };
        data.extend(failure.clone());
        admin
            .run_command(
                doc! { "configureFailPoint": "failCommand", "mode": "alwaysOn", "data": data },
            )
            .await
            .unwrap();
        for i in 0..5 {
            let content = format!("during {failure} {i}");
            sent.push(
                chat.server
                    .send_ok("alice", &["alice", "bob"], &content)
                    .await,
            );
        }
        eventually(&format!("the store is down after {failure}"), || async {
            (chat.server.health().await["store"]["up"] == false).then_some(())
        })
        .await;
        assert_eq!(
            chat.server.health().await["outbox"],
            json!({"pending": 5, "dead_lettered": 0}),
            "{failure}"
        );
        assert_eq!(chat.dead_letters.count_documents(doc! {}).await.unwrap(), 0);

        admin
            .run_command(doc! { "configureFailPoint": "failCommand", "mode": "off" })
            .await
            .unwrap();
        eventually(&format!("the outbox empties after {failure}"), || async {
            let health = chat.server.health().await;
            (health["outbox"] == json!({"pending": 0, "dead_lettered": 0})
                && health["store"]["up"] == true)
                .then_some(())
        })
        .await;
    }
    let stored: BTreeSet<String> = all(&chat.messages)
        .await
        .iter()
        .map(|d| d.get_str("_id").unwrap().to_string())
        .collect();
    let accepted: BTreeSet<String> = sent
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored, accepted, "every message is stored, once");
    assert_eq!(chat.dead_letters.count_documents(doc! {}).await.unwrap(), 0);
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_then_replayed_or_purged_by_operators() {
    let mongo = MongoServer::start().await;
    let chat = MongoChat::start(&mongo, &[("RETRY_ATTEMPTS", "3")]).await;
    let cli_env = chat.cli_env(&mongo);
    // The cause: a unique index on content, so a second message with the same text is refused.
    let unique_content = IndexModel::builder()
        .keys(doc! { "content": 1 })
        .options(
            IndexOptions::builder()
                .unique(true)
                .name("content_unique".to_string())
                .build(),
        )
        .build();
    chat.messages
        .create_index(unique_content.clone())
        .await
        .unwrap();

    let first = chat
        .server
        .send_ok("alice", &["alice", "bob"], "same")
        .await;
    chat.server.stored("alice", "alice,bob", 1).await;
    let second = chat
        .server
        .send_ok("alice", &["alice", "bob"], "same")
        .await;
    let third = chat.server.send_ok("bob", &["alice", "bob"], "same").await;
    await_count(&chat.dead_letters, doc! {}, 2).await;

    // The dead letter holds the message unchanged, the error, the attempts, when and who.
    let letter = chat
        .dead_letters
        .find_one(doc! { "_id": second["id"].as_str().unwrap() })
        .await
        .unwrap()
        .unwrap();
    let message = letter.get_document("message").unwrap();
    assert_eq!(message.get_str("content").unwrap(), "same");
    assert_eq!(
        message
            .get_datetime("created_at")
            .unwrap()
            .timestamp_millis(),
        millis(&second["created_at"])
    );
    assert_eq!(
        letter
            .get_document("error")
            .unwrap()
            .get_str("kind")
            .unwrap(),
        "duplicate_key"
    );
    assert!(
        letter
            .get_document("error")
            .unwrap()
            .get_str("message")
            .unwrap()
            .contains("E11000")
    );
    assert_eq!(letter.get("attempts"), Some(&Bson::Int64(3)));
    assert!(
        letter.get_datetime("first_failed_at").unwrap()
            <= letter.get_datetime("last_failed_at").unwrap()
    );
    assert!(!letter.get_str("instance").unwrap().is_empty());

    // Operators see them over HTTP and on the command line.
    let (status, listed) = chat
        .admin(
            reqwest::Method::GET,
            "/admin/dead-letters?error=DUPLICATE%20key",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let listed_ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed_ids,
        [
            second["id"].as_str().unwrap(),
            third["id"].as_str().unwrap()
        ]
    );
    assert_eq!(listed[0]["message"], second);
    assert_eq!(listed[0]["attempts"], 3);
    let (_, none) = chat
        .admin(reqwest::Method::GET, "/admin/dead-letters?error=disk", None)
        .await;
    assert_eq!(none, json!([]));
    let (status, shown) = chat
        .admin(
            reqwest::Method::GET,
            &format!("/admin/dead-letters/{}", third["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!((status, &shown["message"]), (200, &third));
    let listing = run_cli(&["dlq", "list"], &cli_env);
    assert!(listing.status.success(), "{listing:?}");
    assert_eq!(String::from_utf8_lossy(&listing.stdout).lines().count(), 2);

    // While the cause is there, a replay fails and keeps the dead letter.
    let (status, report) = chat
        .admin(
            reqwest::Method::POST,
            "/admin/dead-letters/replay",
            Some(json!({"ids": [second["id"]]})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (report["replayed"].as_u64(), report["failed"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(chat.dead_letters.count_documents(doc! {}).await.unwrap(), 2);

    // Cause removed: the CLI replays one, HTTP the rest; each is stored once.
    chat.messages.drop_index("content_unique").await.unwrap();
    let replayed = run_cli(&["dlq", "replay", second["id"].as_str().unwrap()], &cli_env);
    assert!(replayed.status.success(), "{replayed:?}");
    assert_eq!(
        String::from_utf8_lossy(&replayed.stdout).trim(),
        format!("replayed {}", second["id"].as_str().unwrap())
    );
    let (_, report) = chat
        .admin(
            reqwest::Method::POST,
            "/admin/dead-letters/replay",
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(
        (report["replayed"].as_u64(), report["failed"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(chat.dead_letters.count_documents(doc! {}).await.unwrap(), 0);
    let stored = chat.server.stored("bob", "alice,bob", 3).await;
    assert_eq!(stored, vec![third.clone(), second.clone(), first.clone()]);

    // Replaying a message that is already stored succeeds and stores nothing twice.
    let mut again = letter.clone();
    again.insert("_id", first["id"].as_str().unwrap());
    again
        .get_document_mut("message")
        .unwrap()
        .insert("_id", first["id"].as_str().unwrap());
    chat.dead_letters.insert_one(again).await.unwrap();
    let replayed = run_cli(&["dlq", "replay", "--all"], &cli_env);
    assert!(replayed.status.success(), "{replayed:?}");
    assert_eq!(
        chat.messages
            .count_documents(doc! { "_id": first["id"].as_str().unwrap() })
            .await
            .unwrap(),
        1
    );
    assert_eq!(chat.dead_letters.count_documents(doc! {}).await.unwrap(), 0);
    let (_, report) = chat
        .admin(
            reqwest::Method::POST,
            "/admin/dead-letters/replay",
            Some(json!({"ids": [second["id"]]})),
        )
        .await;
    assert_eq!(report["not_found"], 1);
    // The store adds up every replay, the CLI's and the API's alike.
    let totals: Vec<Document> = mongo
        .client()
        .await
        .database(&chat.database)
        .collection::<Document>("dead_letters_replays")
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        totals,
        [
            doc! { "_id": "failed", "count": 1_i64 },
            doc! { "_id": "not_found", "count": 1_i64 },
            doc! { "_id": "replayed", "count": 3_i64 },
        ]
    );

    // Purge: one over HTTP, the rest from the CLI, which insists on --yes.
    chat.messages
        .delete_many(doc! { "content": "same" })
        .await
        .unwrap();
    chat.messages.create_index(unique_content).await.unwrap();
    chat.server
        .send_ok("alice", &["alice", "bob"], "doomed")
        .await;
    chat.server.stored("alice", "alice,bob", 1).await;
    let doomed = [
        chat.server
            .send_ok("alice", &["alice", "bob"], "doomed")
            .await,
        chat.server
            .send_ok("bob", &["alice", "bob"], "doomed")
            .await,
    ];
    await_count(&chat.dead_letters, doc! {}, 2).await;
    let path = format!("/admin/dead-letters/{}", doomed[0]["id"].as_str().unwrap());
    assert_eq!(
        chat.admin(reqwest::Method::DELETE, &path, None).await,
        (200, json!({"purged": 1}))
    );
    assert_eq!(
        chat.admin(reqwest::Method::DELETE, &path, None).await.0,
        404
    );
    assert!(
        !run_cli(&["dlq", "purge", "--all"], &cli_env)
            .status
            .success()
    );
    let purged = run_cli(&["dlq", "purge", "--all", "--yes"], &cli_env);
    assert_eq!(
        String::from_utf8_lossy(&purged.stdout).trim(),
        "purged 1 dead letters"
    );
    assert_eq!(
        String::from_utf8_lossy(&run_cli(&["dlq", "list"], &cli_env).stdout).trim(),
        "no dead letters"
    );
    assert_eq!(
        chat.messages
            .count_documents(doc! { "content": "doomed" })
            .await
            .unwrap(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_chatd_while_mongodb_is_down_loses_nothing() {
    const MESSAGES: usize = 300;
    let mut mongo = MongoServer::start_local().await;
    let database = MongoServer::database();
    let data_dir = tempfile::tempdir().unwrap();
    let secret = "kill-9-mongo";
    let uri = mongo.uri.clone();
    let env = [
        ("MONGO_URI", uri.as_str()),
        ("MONGO_DB", database.as_str()),
        ("STORE_TIMEOUT", "1s"),
    ];
    let mut chatd = Chatd::start(data_dir.path(), secret, &env);

    mongo.kill();
    let mut accepted = HashSet::new();
    for i in 0..MESSAGES {
        let message = chatd
            .send("alice", &["alice", "bob"], &format!("while down {i}"))
            .await;
        accepted.insert(message["id"].as_str().unwrap().to_string());
    }
    chatd.child.kill().expect("SIGKILL");
    chatd.child.wait().unwrap();

    mongo.restart().await;
    let _chatd = Chatd::start(data_dir.path(), secret, &env);
    let messages: Collection<Document> = mongo
        .client()
        .await
        .database(&database)
        .collection("messages");
    await_count(&messages, doc! {}, MESSAGES as u64).await;
    let stored: HashSet<String> = all(&messages)
        .await
        .iter()
        .map(|d| d.get_str("_id").unwrap().to_string())
        .collect();
    assert_eq!(stored, accepted);
}

#[tokio::test]
async fn logs_at_info_hold_no_message_content_and_no_token() {
    let mongo = MongoServer::start().await;
    let database = MongoServer::database();
    let db = mongo.client().await.database(&database);
    let messages: Collection<Document> = db.collection("messages");
    let unique_content = IndexOptions::builder().unique(true).build();
    messages
        .create_index(
            IndexModel::builder()
                .keys(doc! { "content": 1 })
                .options(unique_content)
                .build(),
        )
        .await
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let secret = "logs-secret";
    let env = [
        ("MONGO_URI", mongo.uri.as_str()),
        ("MONGO_DB", database.as_str()),
        ("RETRY_ATTEMPTS", "2"),
        ("RETRY_BASE_MS", "10"),
    ];
    let chatd = Chatd::start(data_dir.path(), secret, &env);

    // MongoDB's refusal quotes the duplicate value: the content.
    let content = "top-secret-content-4f2a";
    chatd.send("alice", &["alice", "bob"], content).await;
    chatd.send("alice", &["alice", "bob"], content).await;
    let refused = token_for("some-other-secret", "mallory");
    let response = reqwest::Client::new()
        .post(chatd.url("/api/messages"))
        .bearer_auth(&refused)
        .json(&json!({"participants": ["mallory"], "content": content}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let dead_letters: Collection<Document> = db.collection("dead_letters");
    await_count(&dead_letters, doc! {}, 1).await;
    let letter = dead_letters.find_one(doc! {}).await.unwrap().unwrap();
    let error = letter
        .get_document("error")
        .unwrap()
        .get_str("message")
        .unwrap();
    assert!(
        error.contains(content),
        "the store's own text quotes the content: {error}"
    );

    let logs = chatd.logs();
    assert!(
        logs.iter().any(|l| l.contains("message dead-lettered")),
        "{logs:#?}"
    );
    let token = token_for(secret, "alice");
    for line in logs {
        assert!(
            !line.contains(content),
            "message content in the log: {line}"
        );
        assert!(!line.contains(&refused), "a token in the log: {line}");
        assert!(
            !line.contains(&token[token.len() - 20..]),
            "a token in the log: {line}"
        );
    }
}

#[tokio::test]
async fn a_reconnecting_socket_gets_what_mongodb_holds_for_it() {
    let mongo = MongoServer::start().await;
    let chat = MongoChat::start(&mongo, &[]).await;
    let seen = chat
        .server
        .send_ok("alice", &["alice", "bob"], "before")
        .await;
    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(
            chat.server
                .send_ok("alice", &["alice", "bob"], &format!("away {i}"))
                .await,
        );
    }
    chat.server
        .send_ok("bob", &["alice", "bob"], "bob's own")
        .await;
    // In MongoDB, not only in the outbox.
    chat.server.stored("bob", "alice,bob", 5).await;
    let since = format!("&since={}", seen["id"].as_str().unwrap());
    let mut bob = chat.server.ws_with_query("bob", &since).await;
    for expected in &missed {
        assert_eq!(&bob.next_message().await, expected);
    }
}

/// A replay from MongoDB is paged like the embedded store's and merged with what an outage left
/// in the outbox: messages MongoDB already had and messages the outbox held while it was down
/// arrive once each, in order, over more than one page, even while the relay is moving the
/// held ones over. One more than the limit is the notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_spans_mongodb_pages_and_what_an_outage_left_in_the_outbox() {
    let page = chatd::pipeline::recovery::PAGE as usize;
    let limit = 2 * page;
    let mut mongo = MongoServer::start_local().await;
    let chat = MongoChat::start(&mongo, &[("RECOVERY_LIMIT", &limit.to_string())]).await;
    let server = &chat.server;
    let since = server.send_ok("alice", &["alice", "bob"], "before").await;
    let mut sent = Vec::new();
    for i in 0..page + page / 2 {
        sent.push(
            server
                .send_ok("alice", &["alice", "bob"], &format!("m{i}"))
                .await,
        );
    }
    eventually("MongoDB has them all", || async {
        (server.health().await["outbox"]["pending"] == 0).then_some(())
    })
    .await;
    mongo.kill();
    for i in sent.len()..limit {
        sent.push(
            server
                .send_ok("alice", &["alice", "bob"], &format!("m{i}"))
                .await,
        );
    }
    assert_eq!(server.health().await["outbox"]["pending"], page / 2);
    mongo.restart().await;

    // At once: the held messages are in the outbox, in MongoDB, or moving between the two.
    let url = format!(
        "ws://{}/ws?token={}&since={}",
        server.addr,
        server.token("bob"),
        since["id"].as_str().unwrap()
    );
    let stream = eventually("a recovery can read MongoDB again", || async {
        tokio_tungstenite::connect_async(&url).await.ok()
    })
    .await
    .0;
    let mut bob = WsClient { stream };
    for (i, want) in sent.iter().enumerate() {
        assert_eq!(&bob.next_message().await, want, "replayed frame {i}");
    }
    let live = server.send_ok("alice", &["alice", "bob"], "live").await;
    assert_eq!(bob.next_message().await, live, "nothing twice at the seam");

    let mut over = server
        .ws_with_query("bob", &format!("&since={}", since["id"].as_str().unwrap()))
        .await;
    let notice = over.next_message().await;
    assert_eq!(notice["type"], "recovery_limit_exceeded");
    assert_eq!(notice["limit"], limit);
}

/// A store that stops answering part way through a replay: the socket gets every frame of the
/// pages already read, then `4009` naming the last one, and a reconnect from there gets the
/// rest. Messages of 200 KB make the first page (20 MB) far more than the socket's buffers
/// hold, so the replay is still writing it when MongoDB is frozen and the second page's read is
/// the one that fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failing_mid_replay_closes_the_socket_naming_where_to_resume() {
    let page = chatd::pipeline::recovery::PAGE as usize;
    let mongo = MongoServer::start_local().await;
    let chat = MongoChat::start(
        &mongo,
        &[
            ("MAX_BODY_BYTES", "262144"),
            ("MAX_MESSAGE_BYTES", "200000"),
        ],
    )
    .await;
    let server = &chat.server;
    let since = server.send_ok("alice", &["alice", "bob"], "before").await;
    let big = "x".repeat(199_000);
    let mut sent = Vec::new();
    for i in 0..page + page / 2 {
        let content = format!("{i}:{big}");
        sent.push(server.send_ok("alice", &["alice", "bob"], &content).await);
    }
    eventually("MongoDB has them all", || async {
        (server.health().await["outbox"]["pending"] == 0).then_some(())
    })
    .await;

    let query = format!("&since={}", since["id"].as_str().unwrap());
    let mut bob = server.ws_with_small_buffer_and_query("bob", &query).await;
    // The first frame: the first page has been read.
    let mut got = vec![bob.next_message().await];
    mongo.pause();
    let close = loop {
        match bob.next().await {
            Seen::Message(message) => got.push(message),
            Seen::Ping => {}
            Seen::Closed(frame) => break frame.expect("a close frame"),
        }
    };
    mongo.resume();
    assert_eq!(u16::from(close.code), 4009, "{close:?}");
    assert_eq!(
        got.len(),
        page,
        "the first page whole, nothing of the second"
    );
    assert!(got.iter().eq(sent[..page].iter()), "in order");
    let last = got.last().unwrap()["id"].as_str().unwrap();
    assert!(
        close.reason.ends_with(&format!("since={last}")),
        "{close:?}"
    );

    let url = format!(
        "ws://{}/ws?token={}&since={last}",
        server.addr,
        server.token("bob")
    );
    let stream = eventually("a recovery can read MongoDB again", || async {
        tokio_tungstenite::connect_async(&url).await.ok()
    })
    .await
    .0;
    let mut again = WsClient { stream };
    for (i, want) in sent[page..].iter().enumerate() {
        assert_eq!(&again.next_message().await, want, "the rest, frame {i}");
    }
}
