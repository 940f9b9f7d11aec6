//! `GET /api/channels`: the caller's conversations by last activity, paged by cursor, with
//! messages still in the outbox counted, on the embedded store and on MongoDB.

use std::collections::HashSet;

use chrono::Utc;
use mongodb::Collection;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{self, Document, doc};
use serde_json::Value;

use crate::common::mongo::MongoServer;
use crate::common::nats::NatsServer;
use crate::common::{TestServer, eventually};
use chatd::config::MongoSettings;
use chatd::model::{Message, UserId};
use chatd::store::{MessageStore, MongoStore};

/// `GET /api/channels?{query}` as `user`: the status and the JSON body.
async fn get_channels(server: &TestServer, user: &str, query: &str) -> (u16, Value) {
    server.get_as(user, &format!("/api/channels?{query}")).await
}

async fn channels(server: &TestServer, user: &str, query: &str) -> Vec<Value> {
    let (status, body) = get_channels(server, user, query).await;
    assert_eq!(status, 200, "listing refused: {body}");
    body.as_array().expect("an array").clone()
}

/// Each item's participants, joined by `,`.
fn keys(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| {
            let ids: Vec<&str> = item["participants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            ids.join(",")
        })
        .collect()
}

/// Every page of `user`'s listing, `limit` at a time, each cursor the previous page's last.
async fn all_pages(server: &TestServer, user: &str, limit: usize) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut query = format!("limit={limit}");
    loop {
        let page = channels(server, user, &query).await;
        let Some(last) = page.last() else { break };
        query = format!("limit={limit}&before={}", last["last_message"]["id"]);
        query.retain(|c| c != '"');
        pages.push(page);
    }
    pages
}

async fn await_empty_outbox(server: &TestServer) {
    eventually("the outbox is empty", || async {
        (server.health().await["outbox"]["pending"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn channels_are_listed_by_last_activity_to_their_participants_only() {
    let server = TestServer::start().await;
    let first = server.send_ok("alice", &["alice", "bob"], "hi bob").await;
    let group = server
        .send_ok("carol", &["carol", "alice", "dave"], "hi all")
        .await;
    let reply = server.send_ok("bob", &["bob", "alice"], "hi alice").await;
    let solo = server
        .send_ok("erin", &["erin", "frank"], "elsewhere")
        .await;
    await_empty_outbox(&server).await;

    let listed = channels(&server, "alice", "").await;
    assert_eq!(keys(&listed), ["alice,bob", "alice,carol,dave"]);
    assert_eq!(listed[0]["last_message"], reply);
    assert_eq!(listed[0]["last_activity"], reply["created_at"]);
    assert_eq!(listed[1]["last_message"], group);
    assert_ne!(
        listed[0]["last_message"], first,
        "the last message, not the first"
    );

    assert_eq!(
        keys(&channels(&server, "dave", "").await),
        ["alice,carol,dave"]
    );
    assert_eq!(keys(&channels(&server, "frank", "").await), ["erin,frank"]);
    assert_eq!(
        channels(&server, "frank", "").await[0]["last_message"],
        solo
    );
    assert!(
        channels(&server, "zed", "").await.is_empty(),
        "no channels: []"
    );

    // A new message moves its channel to the top.
    let later = server
        .send_ok("dave", &["alice", "carol", "dave"], "news")
        .await;
    let listed = channels(&server, "alice", "").await;
    assert_eq!(keys(&listed), ["alice,carol,dave", "alice,bob"]);
    assert_eq!(listed[0]["last_message"], later);
}

#[tokio::test]
async fn pages_cover_every_channel_once_and_a_moving_channel_is_never_listed_twice() {
    let server = TestServer::start().await;
    let others: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    for other in &others {
        server.send_ok("alice", &["alice", other], other).await;
    }
    // Newest first: u7 … u0.
    let whole: Vec<String> = others.iter().rev().map(|o| format!("alice,{o}")).collect();
    assert_eq!(keys(&channels(&server, "alice", "limit=100").await), whole);

    let pages = all_pages(&server, "alice", 3).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [3, 3, 2]);
    let paged: Vec<String> = pages.iter().flat_map(|p| keys(p)).collect();
    assert_eq!(paged, whole, "in order, no gaps, no duplicates");

    // Activity moves while a client pages: a channel already listed and one not yet listed
    // both get a new message after the first page.
    let first = channels(&server, "alice", "limit=3").await;
    assert_eq!(keys(&first), ["alice,u7", "alice,u6", "alice,u5"]);
    server.send_ok("u6", &["alice", "u6"], "again").await;
    server.send_ok("u1", &["alice", "u1"], "again").await;
    let mut seen: Vec<String> = keys(&first);
    let mut cursor = first[2]["last_message"]["id"].as_str().unwrap().to_string();
    loop {
        let page = channels(&server, "alice", &format!("limit=3&before={cursor}")).await;
        let Some(last) = page.last() else { break };
        cursor = last["last_message"]["id"].as_str().unwrap().to_string();
        seen.extend(keys(&page));
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "never listed twice: {seen:?}");
    assert!(
        !seen.contains(&"alice,u1".to_string()),
        "moved above the cursor: {seen:?}"
    );
    assert_eq!(seen.len(), 7);
    // A fresh listing has both at the top.
    let top = channels(&server, "alice", "limit=2").await;
    assert_eq!(keys(&top), ["alice,u1", "alice,u6"]);
}

#[tokio::test]
async fn bad_limits_and_cursors_are_refused_with_the_contracts_error() {
    let server = TestServer::start().await;
    server.send_ok("alice", &["alice", "bob"], "hi").await;
    for query in [
        "limit=0",
        "limit=-1",
        "limit=x",
        "limit=1.5",
        "before=x",
        "before=67e55044-10b1-426f-9247-bb680e5fe0c8",
    ] {
        let (status, body) = get_channels(&server, "alice", query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    // Well-formed, but an ObjectId no message has: history's refusal, 404.
    let (status, body) = get_channels(&server, "alice", "before=65f1c0ffee00000000000001").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = get_channels(&server, "alice", "limit=1000").await;
    assert_eq!(
        (status, body.as_array().map(Vec::len)),
        (200, Some(1)),
        "capped, not refused"
    );

    let unauthenticated = server
        .http
        .get(server.url("/api/channels"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let body: Value = unauthenticated.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
}

#[tokio::test]
async fn a_message_still_in_the_outbox_is_already_its_channels_last() {
    let server = TestServer::start().await;
    let stored = server.send_ok("alice", &["alice", "bob"], "stored").await;
    server
        .send_ok("alice", &["alice", "carol"], "stored too")
        .await;
    await_empty_outbox(&server).await;

    // Another connection holds the store's write lock: the relay cannot write, readers can read.
    let store = server.data_dir.path().join(chatd::store::SQLITE_FILE);
    let lock = rusqlite::Connection::open(&store).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let pending = server
        .send_ok("bob", &["alice", "bob"], "not stored yet")
        .await;
    let listed = channels(&server, "alice", "").await;
    assert_eq!(keys(&listed), ["alice,bob", "alice,carol"]);
    assert_eq!(listed[0]["last_message"], pending);
    assert_eq!(listed[0]["last_activity"], pending["created_at"]);
    assert_eq!(
        server.health().await["outbox"]["pending"],
        1,
        "it was still in the outbox"
    );
    // Paging from it reaches the stored channel; the pending one is not listed again.
    let cursor = pending["id"].as_str().unwrap();
    let next = channels(&server, "alice", &format!("before={cursor}")).await;
    assert_eq!(keys(&next), ["alice,carol"]);
    // Paging from an older message of the same channel does not list it either: its last
    // message is the pending one, above the cursor.
    let older = stored["id"].as_str().unwrap();
    let (_, body) = get_channels(&server, "alice", &format!("before={older}")).await;
    assert_eq!(body, Value::Array(Vec::new()));

    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    await_empty_outbox(&server).await;
    assert_eq!(
        channels(&server, "alice", "").await,
        listed,
        "the same once stored"
    );
}

#[tokio::test]
async fn mongodb_lists_original_documents_and_chatds_alike() {
    let mongo = MongoServer::start().await;
    let database = MongoServer::database();
    let db = mongo.client().await.database(&database);
    let messages: Collection<Document> = db.collection("messages");
    // Left by the original service before chatd ran: the migration indexes them.
    let day_ago = Utc::now().timestamp_millis() - 86_400_000;
    let before_chatd = ObjectId::new();
    messages
        .insert_one(doc! {
            "_id": before_chatd,
            "sender": "carol",
            "content": "from the Go service",
            "created_at": bson::DateTime::from_millis(day_ago),
            "participants": ["alice", "carol"],
        })
        .await
        .unwrap();
    let server =
        TestServer::start_with(&[("MONGO_URI", &mongo.uri), ("MONGO_DB", &database)]).await;
    let listed = eventually("the original's channel is listed", || async {
        let (status, body) = get_channels(&server, "alice", "").await;
        (status == 200 && body.as_array().is_some_and(|a| !a.is_empty())).then_some(body)
    })
    .await;
    assert_eq!(
        listed[0]["participants"],
        serde_json::json!(["alice", "carol"])
    );
    assert_eq!(listed[0]["last_message"]["id"], before_chatd.to_hex());
    assert_eq!(listed[0]["last_message"]["content"], "from the Go service");

    let mut sent = Vec::new();
    for other in ["u0", "u1", "u2", "u3"] {
        sent.push(server.send_ok(other, &["alice", other], other).await);
    }
    await_empty_outbox(&server).await;
    let whole = [
        "alice,u3",
        "alice,u2",
        "alice,u1",
        "alice,u0",
        "alice,carol",
    ];
    assert_eq!(keys(&channels(&server, "alice", "").await), whole);
    let pages = all_pages(&server, "alice", 2).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    let paged: Vec<String> = pages.iter().flat_map(|p| keys(p)).collect();
    assert_eq!(paged, whole);
    assert_eq!(pages[0][0]["last_message"], sent[3]);
    assert_eq!(keys(&channels(&server, "u1", "").await), ["alice,u1"]);
    assert!(channels(&server, "zed", "").await.is_empty());
    // One summary per (participant, channel), read through its own index.
    let summary: Collection<Document> = db.collection("messages_channels");
    assert_eq!(summary.count_documents(doc! {}).await.unwrap(), 10);
    let indexes = summary.list_index_names().await.unwrap();
    assert!(
        indexes.contains(&"user_1_last.created_at_-1_last._id_-1".to_string()),
        "{indexes:?}"
    );

    // The cursor takes an ObjectId as history's does.
    let by_object_id = channels(
        &server,
        "alice",
        &format!("before={}", before_chatd.to_hex()),
    )
    .await;
    assert!(by_object_id.is_empty(), "nothing is older than the oldest");
    let cursor = sent[1]["id"].as_str().unwrap();
    let older = channels(&server, "alice", &format!("before={cursor}")).await;
    assert_eq!(keys(&older), ["alice,u0", "alice,carol"]);

    // A reply in the original's channel, from chatd: it moves to the top.
    let reply = server.send_ok("alice", &["carol", "alice"], "back").await;
    await_empty_outbox(&server).await;
    let listed = channels(&server, "alice", "limit=1").await;
    assert_eq!(listed[0]["last_message"], reply);
}

/// Cluster mode: a message the relays have not stored yet waits in the stream, and any
/// instance's listing counts it from what its bus remembers.
#[tokio::test]
async fn in_cluster_mode_a_message_not_stored_yet_counts_on_every_instance() {
    let (nats, mongo) = (NatsServer::start().await, MongoServer::start_local().await);
    let database = MongoServer::database();
    let secret = format!("channels-secret-{}", rand::random::<u64>());
    let mut instances = Vec::new();
    for name in ["instance-0", "instance-1"] {
        let vars = [
            ("NATS_URL", nats.url.as_str()),
            ("MONGO_URI", mongo.uri.as_str()),
            ("MONGO_DB", database.as_str()),
            ("JWT_SECRET", secret.as_str()),
            ("INSTANCE_ID", name),
            ("STORE_TIMEOUT", "2s"),
            ("RETRY_BASE_MS", "20"),
            ("RETRY_MAX_MS", "500"),
            ("NATS_MAX_BYTES", "268435456"),
        ];
        instances.push(TestServer::start_with(&vars).await);
    }
    let (first, second) = (&instances[0], &instances[1]);
    let messages: Collection<Document> = mongo
        .client()
        .await
        .database(&database)
        .collection("messages");
    let stored = first.send_ok("alice", &["alice", "bob"], "stored").await;
    eventually("the first message is stored", || async {
        (messages.count_documents(doc! {}).await.unwrap() == 1).then_some(())
    })
    .await;

    // chatd's inserts fail with a lock timeout: the relays hold what follows. (A failover's
    // code would also send the driver's reads looking for a new primary.)
    let admin = mongo.client().await.database("admin");
    let data = doc! { "failCommands": ["insert"], "appName": "chatd", "errorCode": 24 };
    admin
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": "alwaysOn", "data": data })
        .await
        .unwrap();
    let reply = first
        .send_ok("bob", &["alice", "bob"], "not stored yet")
        .await;
    let other = second
        .send_ok("carol", &["alice", "carol"], "nor this")
        .await;
    for instance in [first, second] {
        let listed = eventually("both unstored messages are listed", || async {
            let listed = channels(instance, "alice", "").await;
            (keys(&listed) == ["alice,carol", "alice,bob"]).then_some(listed)
        })
        .await;
        assert_eq!(listed[0]["last_message"], other);
        assert_eq!(listed[1]["last_message"], reply);
    }
    assert_eq!(
        messages.count_documents(doc! {}).await.unwrap(),
        1,
        "neither was stored"
    );
    let cursor = other["id"].as_str().unwrap();
    let next = channels(second, "alice", &format!("before={cursor}")).await;
    assert_eq!(keys(&next), ["alice,bob"]);
    assert_ne!(next[0]["last_message"], stored);

    admin
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": "off" })
        .await
        .unwrap();
    eventually("both are stored", || async {
        (messages.count_documents(doc! {}).await.unwrap() == 3).then_some(())
    })
    .await;
    let listed = channels(second, "alice", "").await;
    assert_eq!(keys(&listed), ["alice,carol", "alice,bob"]);
    assert_eq!(listed[1]["last_message"], reply);
}

/// The summary keeps the newer message whatever order the relay writes them in: a message
/// written again, or an older one written late (a replayed dead letter), changes nothing.
#[tokio::test]
async fn mongodb_keeps_each_channels_newest_message_whatever_the_write_order() {
    let mongo = MongoServer::start().await;
    let settings = MongoSettings {
        uri: mongo.uri.clone(),
        database: MongoServer::database(),
        messages: "messages".into(),
        dead_letters: "dead_letters".into(),
    };
    let store = MongoStore::connect(&settings, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let at = |id: &str, millis: i64| Message {
        id: id.into(),
        sender: "alice".into(),
        content: id.into(),
        participants: vec!["alice".into(), "bob".into()],
        created_at: chrono::DateTime::from_timestamp_millis(millis).unwrap(),
        sequence: None,
    };
    let alice = UserId::parse("alice").unwrap();
    let last = async |store: &MongoStore| {
        let listed = store.channels(&alice, None, 10).await.unwrap();
        listed.iter().map(|m| m.id.clone()).collect::<Vec<_>>()
    };
    let (old, new) = (at("m-old", 1_000), at("m-new", 2_000));
    store
        .insert_batch(std::slice::from_ref(&new))
        .await
        .unwrap();
    assert_eq!(last(&store).await, ["m-new"]);
    let outcomes = store.insert_batch(&[old, new.clone()]).await.unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(last(&store).await, ["m-new"], "neither moved it back");
    let newer = at("m-newer", 2_000);
    store.insert_batch(&[newer]).await.unwrap();
    assert_eq!(last(&store).await, ["m-newer"], "same time: the greater id");
}
