//! Cluster mode (`NATS_URL`): several chatd instances on one NATS server with JetStream (a
//! real `nats-server -js` per test, on its own port and store) and one MongoDB-wire store.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::mongo::MongoServer;
use crate::common::nats::NatsServer;
use crate::common::process::Chatd;
use crate::common::{DEADLINE, TestServer, WsClient, eventually, process_target};
use crate::scenarios;
use async_nats::jetstream::stream;
use serde_json::{Value, json};

/// The stream's size in the tests: JetStream wants it free on disk when it creates the stream.
const TEST_STREAM_BYTES: &str = "268435456";

/// Instances sharing one NATS server, one database and one token secret.
struct Cluster {
    instances: Vec<TestServer>,
    nats: NatsServer,
    mongo: MongoServer,
    database: String,
    secret: String,
}

impl Cluster {
    async fn start(size: usize) -> Self {
        Self::start_with(size, &[]).await
    }

    async fn start_with(size: usize, extra: &[(&str, &str)]) -> Self {
        let (nats, mongo) = (NatsServer::start().await, MongoServer::start().await);
        let database = MongoServer::database();
        let secret = format!("cluster-secret-{}", rand::random::<u64>());
        let mut instances = Vec::new();
        for i in 0..size {
            let name = format!("instance-{i}");
            let mut vars = vec![
                ("NATS_URL", nats.url.as_str()),
                ("MONGO_URI", mongo.uri.as_str()),
                ("MONGO_DB", database.as_str()),
                ("JWT_SECRET", secret.as_str()),
                ("INSTANCE_ID", name.as_str()),
                ("STORE_TIMEOUT", "2s"),
                ("RETRY_BASE_MS", "20"),
                ("RETRY_MAX_MS", "500"),
                // JetStream reserves the stream's whole size on disk: keep tests off 8 GiB.
                ("NATS_MAX_BYTES", TEST_STREAM_BYTES),
            ];
            vars.extend_from_slice(extra);
            instances.push(TestServer::start_with(&vars).await);
        }
        Self {
            instances,
            nats,
            mongo,
            database,
            secret,
        }
    }

    /// Another instance of this cluster, as a `chatd` child process (which a test can kill).
    fn spawn(&self, name: &str, data_dir: &Path) -> Chatd {
        let env = [
            ("NATS_MAX_BYTES", TEST_STREAM_BYTES),
            ("NATS_URL", self.nats.url.as_str()),
            ("MONGO_URI", self.mongo.uri.as_str()),
            ("MONGO_DB", self.database.as_str()),
            ("INSTANCE_ID", name),
        ];
        Chatd::start(data_dir, &self.secret, &env)
    }
}

/// Polls `POST /api/connections` on `instance` until it answers `expected`.
async fn await_counts(instance: &TestServer, expected: Value) {
    let users: Vec<&str> = expected
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    eventually(&format!("counts {expected}"), || async {
        (instance.connections(&users).await == expected).then_some(())
    })
    .await
}

/// A socket that reconnects with `since` to another instance while messages keep coming
/// through every instance gets each message after `since` once: the replay and the live
/// stream meet at the stream's sequence, not at any one instance's ids.
#[tokio::test]
async fn a_reconnect_to_another_instance_under_traffic_misses_nothing_and_repeats_nothing() {
    const SENT: usize = 60;
    let cluster = Cluster::start(3).await;
    let instances = &cluster.instances;
    let mut first = instances[0].ws("bob").await;
    instances[0].await_connections("bob", 1).await;
    for i in 0..10 {
        let via = &instances[i % 3];
        via.send_ok("alice", &["alice", "bob"], &format!("m{i}"))
            .await;
    }
    // What a client does: `since` is the last message it got, in the order it got them.
    let mut since = String::new();
    for _ in 0..10 {
        since = first.next_message().await["id"]
            .as_str()
            .unwrap()
            .to_string();
    }
    first.close().await;

    let (progress, mut sent) = tokio::sync::watch::channel(10);
    let sender = async {
        for i in 10..SENT {
            let via = &instances[i % 3];
            via.send_ok("alice", &["alice", "bob"], &format!("m{i}"))
                .await;
            progress.send_replace(i + 1);
        }
    };
    let reconnect = async {
        sent.wait_for(|sent| *sent >= 25).await.unwrap();
        let mut again = instances[2]
            .ws_with_query("bob", &format!("&since={since}"))
            .await;
        let got = contents(&mut again, SENT - 10).await;
        (got, again)
    };
    let ((), (got, mut again)) = tokio::join!(sender, reconnect);
    assert_eq!(got, numbered(10..SENT));
    instances[1]
        .send_ok("alice", &["alice", "bob"], "after")
        .await;
    assert_eq!(again.next_message().await["content"], "after");
}

/// More missed than `RECOVERY_LIMIT`: the notice, as in one process, then the live stream
/// from where the replay would have ended.
#[tokio::test]
async fn a_reconnect_that_missed_too_much_is_told_to_page_history() {
    let cluster = Cluster::start_with(2, &[("RECOVERY_LIMIT", "3")]).await;
    let [a, b] = &cluster.instances[..] else {
        unreachable!()
    };
    let group = ["alice", "bob", "carol"];
    let (mut first, mut carol) = (a.ws("bob").await, b.ws("carol").await);
    await_counts(a, json!({"bob": 1, "carol": 1})).await;
    b.send_ok("alice", &group, "m0").await;
    let since = first.next_message().await["id"]
        .as_str()
        .unwrap()
        .to_string();
    first.close().await;
    for i in 1..5 {
        a.send_ok("alice", &group, &format!("m{i}")).await;
    }
    // Carol's socket on b has them all: b's bus has read them.
    assert_eq!(contents(&mut carol, 5).await, numbered(0..5));

    let mut again = b.ws_with_query("bob", &format!("&since={since}")).await;
    assert_eq!(
        again.next_message().await["type"],
        "recovery_limit_exceeded"
    );
    a.send_ok("alice", &group, "after").await;
    assert_eq!(again.next_message().await["content"], "after");
}

/// The contents of the next `count` messages, failing on a repeated id.
async fn contents(socket: &mut WsClient, count: usize) -> BTreeSet<String> {
    contents_in_order(socket, count).await.into_iter().collect()
}

fn numbered(range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("m{i}")).collect()
}

#[tokio::test]
async fn a_message_accepted_by_any_instance_reaches_every_other_participant_on_every_instance_once()
{
    let cluster = Cluster::start(2).await;
    let [a, b] = &cluster.instances[..] else {
        unreachable!()
    };
    let (mut bob_on_b, mut carol_on_a) = (b.ws("bob").await, a.ws("carol").await);
    let (mut alice_on_a, mut alice_on_b) = (a.ws("alice").await, b.ws("alice").await);
    await_counts(a, json!({"alice": 2, "bob": 1, "carol": 1})).await;

    let everyone = ["alice", "bob", "carol"];
    for i in 0..20 {
        let via = if i % 2 == 0 { a } else { b };
        via.send_ok("alice", &everyone, &format!("m{i}")).await;
    }
    // Each instance commits and publishes its own in order; across instances only the
    // stream's order holds, so each reader is checked for the set, each message once.
    assert_eq!(contents(&mut bob_on_b, 20).await, numbered(0..20));
    assert_eq!(contents(&mut carol_on_a, 20).await, numbered(0..20));

    // Nothing more: the next frame each reader gets is the one sent after, and the sender's
    // own sockets, on both instances, got none of hers.
    b.send_ok("bob", &everyone, "after").await;
    a.send_ok("carol", &["bob", "carol"], "for bob").await;
    assert_eq!(carol_on_a.next_message().await["content"], "after");
    assert_eq!(bob_on_b.next_message().await["content"], "for bob");
    assert_eq!(alice_on_a.next_message().await["content"], "after");
    assert_eq!(alice_on_b.next_message().await["content"], "after");
}

#[tokio::test]
async fn the_original_scenarios_through_three_instances_one_to_one() {
    let cluster = Cluster::start(3).await;
    scenarios::ten_users_message_the_other_nine(&cluster.instances).await;
}

#[tokio::test]
async fn the_original_scenarios_through_three_instances_a_group() {
    let cluster = Cluster::start(3).await;
    scenarios::group_of_five_each_sending_one(&cluster.instances).await;
}

#[tokio::test]
async fn the_original_scenarios_through_three_instances_paging_and_refusals() {
    let cluster = Cluster::start(3).await;
    scenarios::twenty_five_messages_paged(&cluster.instances).await;
    scenarios::non_participant_refused(&cluster.instances).await;
    for instance in &cluster.instances {
        scenarios::invalid_token_refused(instance).await;
    }
}

/// While NATS is away no instance can make a message durable: sends are refused with 503 at
/// once, never answered 202, and nothing refused shows up later. Once it is back, sends and
/// live delivery resume by themselves.
#[tokio::test]
async fn sends_while_nats_is_down_are_refused_and_delivery_resumes_once_it_is_back() {
    let mut cluster = Cluster::start(2).await;
    let mut bob_on_b = cluster.instances[1].ws("bob").await;
    cluster.instances[1].await_connections("bob", 1).await;
    let a = &cluster.instances[0];
    let m0 = a.send_ok("alice", &["alice", "bob"], "m0").await;
    assert_eq!(bob_on_b.next_message().await["content"], "m0");

    cluster.nats.kill();
    let a = &cluster.instances[0];
    let bus_lost = |(status, body): (u16, Value)| {
        (status == 503 && body["error"].as_str()?.contains("NATS")).then_some(())
    };
    eventually("/ready says NATS is lost", || async {
        bus_lost(a.ready().await)
    })
    .await;
    assert_eq!(
        a.health().await["bus"],
        json!({"kind": "nats", "connected": false})
    );
    for i in 1..4 {
        let response = a
            .send("alice", &["alice", "bob"], &format!("refused{i}"))
            .await;
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("durable"),
            "{body}"
        );
    }
    cluster.nats.restart().await;

    let a = &cluster.instances[0];
    eventually("/ready again", || async {
        (a.ready().await.0 == 200).then_some(())
    })
    .await;
    let after = a.send_ok("alice", &["alice", "bob"], "after").await;
    assert_eq!(bob_on_b.next_message().await["content"], "after");
    let stored: Vec<Value> = a.stored("bob", "alice,bob", 2).await;
    assert_eq!(
        stored.iter().map(|m| &m["id"]).collect::<Vec<_>>(),
        [&after["id"], &m0["id"]],
        "none of the refused sends"
    );
    // The restarted server forgot the heartbeats (kept in memory); the next ones bring them back.
    await_counts(a, json!({"bob": 1})).await;
}

/// Sends `content` with an `Idempotency-Key`: the status and the JSON body.
async fn send_keyed(
    via: &TestServer,
    sender: &str,
    participants: &[&str],
    content: &str,
    key: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = via
        .http
        .post(via.url("/api/messages"))
        .bearer_auth(via.token(sender))
        .header("Idempotency-Key", key)
        .json(&json!({ "participants": participants, "content": content }))
        .send()
        .await
        .expect("POST /api/messages");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.json().await.expect("a JSON body"))
}

/// What a careful client does while the cluster refuses sends: sends again, with the same
/// `Idempotency-Key`, until it hears 202, counting each refusal in `refusals`. Returns the
/// accepted message.
async fn send_until_accepted(
    via: &TestServer,
    participants: &[&str],
    content: &str,
    refusals: &tokio::sync::watch::Sender<usize>,
) -> Value {
    let key = format!("key-{content}");
    let mut refused = 0;
    loop {
        let (status, _, body) = send_keyed(via, "alice", participants, content, &key).await;
        match status {
            202 => return body["message"].clone(),
            503 => refused += 1,
            other => panic!("send answered {other}: {body}"),
        }
        refusals.send_modify(|n| *n += 1);
        assert!(
            refused < 3_000,
            "{content} was refused for too long: {body}"
        );
        // The client's own pace between attempts (sooner than the 1 s `Retry-After`).
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// NATS killed while one instance takes sends, and started again once both instances have
/// noticed and sends were refused: the client sends each again with its `Idempotency-Key`
/// until accepted, every accepted message is stored once, the other instance's socket gets
/// each once, in order, and a reconnect with `since` to that other instance replays the
/// stretch of the outage.
#[tokio::test]
async fn nats_stopped_under_send_load_loses_nothing_and_doubles_nothing() {
    const SENDS: usize = 150;
    let mut cluster = Cluster::start(2).await;
    let Cluster {
        instances,
        nats,
        mongo,
        database,
        ..
    } = &mut cluster;
    let (a, b) = (&instances[0], &instances[1]);
    let mut bob = b.ws("bob").await;
    b.await_connections("bob", 1).await;

    let (progress, mut sent) = tokio::sync::watch::channel(0);
    let (refusals, mut refused) = tokio::sync::watch::channel(0);
    let sender = async {
        let mut ids = Vec::new();
        for i in 0..SENDS {
            let message =
                send_until_accepted(a, &["alice", "bob"], &format!("m{i}"), &refusals).await;
            ids.push(message["id"].as_str().unwrap().to_string());
            progress.send_replace(i + 1);
        }
        ids
    };
    let outage = async {
        sent.wait_for(|sent| *sent >= 50).await.unwrap();
        nats.kill();
        for instance in [a, b] {
            eventually("the instance notices", || async {
                (instance.ready().await.0 == 503).then_some(())
            })
            .await;
        }
        refused.wait_for(|refused| *refused >= 3).await.unwrap();
        nats.restart().await;
    };
    let (ids, ()) = tokio::join!(sender, outage);

    let live: Vec<String> = contents_in_order(&mut bob, SENDS).await;
    assert_eq!(
        live,
        (0..SENDS).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );

    let messages = mongo
        .client()
        .await
        .database(database)
        .collection::<mongodb::bson::Document>("messages");
    let stored = eventually("every message stored", || async {
        let count = messages
            .count_documents(mongodb::bson::doc! { "participants": ["alice", "bob"] })
            .await
            .unwrap();
        (count as usize == SENDS).then_some(count)
    })
    .await;
    assert_eq!(stored as usize, SENDS, "each once: ids are _id");

    let since = format!("&since={}", ids[49]);
    let mut again = b.ws_with_query("bob", &since).await;
    let replayed = contents_in_order(&mut again, SENDS - 50).await;
    assert_eq!(
        replayed,
        (50..SENDS).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
}

/// An instance killed with SIGKILL right after acknowledging a run of sends, and its disk lost
/// with it: the other keeps serving and delivering, and every message the dead one
/// acknowledged is stored, each once, by the relay of the one that lives. Nothing waited for
/// the dead instance's disk: the stream held every message from its 202 on.
#[tokio::test]
async fn an_instance_killed_with_its_disk_lost_loses_no_acknowledged_message() {
    let cluster = Cluster::start(1).await;
    let a = &cluster.instances[0];
    let data_dir = tempfile::tempdir().unwrap();
    let mut doomed = cluster.spawn("doomed", data_dir.path());
    let mut bob = a.ws("bob").await;
    a.await_connections("bob", 1).await;

    let mut acknowledged = BTreeSet::new();
    for i in 0..30 {
        let message = doomed
            .send("alice", &["alice", "bob"], &format!("m{i}"))
            .await;
        acknowledged.insert(message["id"].as_str().unwrap().to_string());
    }
    doomed.child.kill().expect("SIGKILL");
    doomed.child.wait().unwrap();
    drop(data_dir);

    let after = a.send_ok("alice", &["alice", "bob"], "after").await;
    // What the killed instance acknowledged comes first, each once.
    let live = bob.messages_until("after").await;
    let ids: BTreeSet<&str> = live.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), live.len(), "nothing twice: {live:?}");
    assert_eq!(live.len(), 31, "every one live: {live:?}");
    acknowledged.insert(after["id"].as_str().unwrap().to_string());

    let stored: BTreeSet<String> = a
        .stored("bob", "alice,bob", acknowledged.len())
        .await
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored, acknowledged);
}

/// An `Idempotency-Key` answers across instances: the same send through another instance gets
/// the first message back, a different one under the same key is refused, and the message is
/// stored once.
#[tokio::test]
async fn an_idempotency_key_answers_on_every_instance() {
    let cluster = Cluster::start(2).await;
    let [a, b] = &cluster.instances[..] else {
        unreachable!()
    };
    let mut bob = b.ws("bob").await;
    b.await_connections("bob", 1).await;
    let send = |via, content| send_keyed(via, "alice", &["alice", "bob"], content, "order-7");
    let (status, headers, first) = send(a, "hello").await;
    assert_eq!(status, 202, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    let (status, headers, again) = send(b, "hello").await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(again["message"], first["message"]);
    let (status, _, other) = send(b, "something else").await;
    assert_eq!(status, 422, "{other}");

    assert_eq!(bob.next_message().await["id"], first["message"]["id"]);
    b.send_ok("alice", &["alice", "bob"], "after").await;
    assert_eq!(bob.next_message().await["content"], "after");
    assert_eq!(a.stored("bob", "alice,bob", 2).await.len(), 2);
    // Both stored: nothing waits in the stream, as /health tells once it has read it again.
    eventually("the stream has nothing waiting", || async {
        (a.health().await["stream"] == json!({"pending": 0})).then_some(())
    })
    .await;
}

/// A reconnect to an instance that started after `since` (its bus remembers nothing before)
/// is replayed from the store and the stream by sequence: what other instances accepted
/// before and after it started, each once, then the live stream.
#[tokio::test]
async fn a_reconnect_to_an_instance_that_never_saw_since_is_replayed_from_the_store_and_stream() {
    let cluster = Cluster::start(2).await;
    let [a, b] = &cluster.instances[..] else {
        unreachable!()
    };
    let mut first = a.ws("bob").await;
    a.await_connections("bob", 1).await;
    for i in 0..12 {
        let via = [a, b][i % 2];
        via.send_ok("alice", &["alice", "bob"], &format!("m{i}"))
            .await;
    }
    let got = contents_in_order(&mut first, 12).await;
    assert_eq!(got, (0..12).map(|i| format!("m{i}")).collect::<Vec<_>>());
    first.close().await;
    let since = a.stored("bob", "alice,bob", 12).await[8]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let data_dir = tempfile::tempdir().unwrap();
    let late = cluster.spawn("late", data_dir.path());
    let late = process_target(&late, &cluster.secret);
    late.ready().await;
    for i in 12..15 {
        b.send_ok("alice", &["alice", "bob"], &format!("m{i}"))
            .await;
    }
    // m3 is the ninth newest: the replay is m4 to m14.
    let mut again = late.ws_with_query("bob", &format!("&since={since}")).await;
    let replayed = contents_in_order(&mut again, 11).await;
    assert_eq!(
        replayed,
        (4..15).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    a.send_ok("alice", &["alice", "bob"], "after").await;
    assert_eq!(again.next_message().await["content"], "after");
}

/// A message the store refuses on every attempt, wherever JetStream delivers it, becomes one
/// dead letter; the others are stored.
#[tokio::test]
async fn a_poison_message_is_dead_lettered_once_across_instances() {
    let cluster = Cluster::start_with(2, &[("RETRY_ATTEMPTS", "3")]).await;
    let [a, b] = &cluster.instances[..] else {
        unreachable!()
    };
    let database = cluster.mongo.client().await.database(&cluster.database);
    // A unique index on content: a second message with the same text is refused.
    database
        .collection::<mongodb::bson::Document>("messages")
        .create_index(
            mongodb::IndexModel::builder()
                .keys(mongodb::bson::doc! { "content": 1 })
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    a.send_ok("alice", &["alice", "bob"], "same").await;
    a.stored("bob", "alice,bob", 1).await;
    let poison = b.send_ok("alice", &["alice", "bob"], "same").await;
    b.send_ok("alice", &["alice", "bob"], "fine").await;

    let dead_letters = database.collection::<mongodb::bson::Document>("dead_letters");
    let letter = eventually("the dead letter is stored", || async {
        dead_letters.find_one(mongodb::bson::doc! {}).await.unwrap()
    })
    .await;
    assert_eq!(
        letter.get_str("_id").unwrap(),
        poison["id"].as_str().unwrap()
    );
    assert_eq!(letter.get_i64("attempts").unwrap(), 3);
    assert_eq!(a.stored("bob", "alice,bob", 2).await.len(), 2);
    assert_eq!(
        dead_letters
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap(),
        1
    );
}

/// The contents of the next `count` messages, in the order they came, failing on a repeated id.
async fn contents_in_order(socket: &mut WsClient, count: usize) -> Vec<String> {
    let mut ids = BTreeSet::new();
    let mut contents = Vec::new();
    for _ in 0..count {
        let message = socket.next_message().await;
        assert!(
            ids.insert(message["id"].as_str().unwrap().to_string()),
            "{message} arrived twice"
        );
        contents.push(message["content"].as_str().unwrap().to_string());
    }
    contents
}

/// A publish repeated after JetStream's duplicate window (NATS away for longer than it) is
/// stored in the stream a second time; no socket may get it twice.
#[tokio::test]
async fn a_repeat_past_the_duplicate_window_reaches_no_socket_twice() {
    let cluster = Cluster::start(2).await;
    let [a, b] = &cluster.instances[..] else {
        unreachable!()
    };
    let mut bob = b.ws("bob").await;
    b.await_connections("bob", 1).await;
    a.send_ok("alice", &["alice", "bob"], "once").await;
    assert_eq!(bob.next_message().await["content"], "once");

    let jetstream = cluster.nats.jetstream().await;
    let stream = jetstream.get_stream("CHATD_MESSAGES").await.unwrap();
    let first = stream
        .get_last_raw_message_by_subject("CHATD_MESSAGES.messages")
        .await
        .unwrap();
    let mut headers = first.headers.clone();
    // What the duplicate window no longer remembers: the same message under a new publish id.
    headers.insert("Nats-Msg-Id", "a-later-retry");
    jetstream
        .publish_with_headers(first.subject.clone(), headers, first.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();

    a.send_ok("alice", &["alice", "bob"], "after").await;
    assert_eq!(bob.next_message().await["content"], "after");
}

#[tokio::test]
async fn connection_counts_add_up_every_live_instance() {
    let cluster = Cluster::start(3).await;
    let [a, b, c] = &cluster.instances[..] else {
        unreachable!()
    };
    let _sockets = [
        a.ws("bob").await,
        b.ws("bob").await,
        c.ws("bob").await,
        c.ws("bob").await,
        b.ws("carol").await,
    ];
    assert_eq!(c.health().await["instance"], "instance-2");
    let expected = json!({"bob": 4, "carol": 1, "dave": 0});
    await_counts(a, expected.clone()).await;
    // Every instance answers the same.
    assert_eq!(b.connections(&["bob", "carol", "dave"]).await, expected);
    assert_eq!(c.connections(&["bob", "carol", "dave"]).await, expected);
}

/// Instances tell each other apart by process, not by `INSTANCE_ID`: two given one id by
/// mistake still count each other's sockets and deliver each other's messages.
#[tokio::test]
async fn two_instances_given_one_instance_id_still_see_each_other() {
    let cluster = Cluster::start_with(2, &[("INSTANCE_ID", "same")]).await;
    let [a, b] = &cluster.instances[..] else {
        unreachable!()
    };
    let (mut bob_on_a, mut bob_on_b) = (a.ws("bob").await, b.ws("bob").await);
    await_counts(a, json!({"bob": 2})).await;
    await_counts(b, json!({"bob": 2})).await;
    for (i, via) in [a, b, a, b].into_iter().enumerate() {
        via.send_ok("alice", &["alice", "bob"], &format!("m{i}"))
            .await;
    }
    assert_eq!(contents(&mut bob_on_a, 4).await, numbered(0..4));
    assert_eq!(contents(&mut bob_on_b, 4).await, numbered(0..4));
}

#[tokio::test]
async fn a_killed_instance_stops_being_counted() {
    let cluster = Cluster::start(1).await;
    let a = &cluster.instances[0];
    let data_dir = tempfile::tempdir().unwrap();
    let mut doomed = cluster.spawn("doomed", data_dir.path());
    let _on_a = a.ws("bob").await;
    let _on_doomed = process_target(&doomed, &cluster.secret).ws("bob").await;
    await_counts(a, json!({"bob": 2})).await;

    doomed.child.kill().expect("SIGKILL");
    doomed.child.wait().unwrap();
    // It cannot answer any more; its heartbeat lives on for a while, and a count waits for
    // it at most the gather timeout meanwhile.
    assert_eq!(a.connections(&["bob"]).await, json!({"bob": 1}));
}

/// Starts chatd in cluster mode with `vars` on a store of its own, expecting start-up to
/// fail by itself; returns the error with its causes.
async fn start_up_error(vars: &[(&str, &str)]) -> String {
    let mongo = MongoServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let mut all = vec![
        ("MONGO_URI", mongo.uri.as_str()),
        ("DATA_DIR", data_dir.as_str()),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("JWT_SECRET", "a-test-secret"),
    ];
    all.extend_from_slice(vars);
    let lookup = |name: &str| {
        all.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let config = chatd::config::Config::from_lookup(lookup).unwrap();
    let started = tokio::time::timeout(DEADLINE, chatd::app::start(config))
        .await
        .expect("start-up gave up by itself");
    format!("{:#}", started.err().expect("start-up fails"))
}

#[tokio::test]
async fn start_up_gives_up_on_a_nats_that_never_answers() {
    // Accepts connections and says nothing, as a stuck server or a black-holing proxy would.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("nats://{}", silent.local_addr().unwrap());
    let error = start_up_error(&[("NATS_URL", &url), ("NATS_CONNECT_TIMEOUT", "1s")]).await;
    assert!(error.contains("did not answer within 1s"), "{error}");
}

#[tokio::test]
async fn a_stream_of_that_name_that_takes_other_subjects_is_refused_with_its_name() {
    let nats = NatsServer::start().await;
    nats.jetstream()
        .await
        .create_stream(stream::Config {
            name: "TAKEN".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let error = start_up_error(&[("NATS_URL", &nats.url), ("NATS_STREAM", "TAKEN")]).await;
    assert!(
        error.contains("TAKEN") && error.contains("does not take subject TAKEN.messages"),
        "{error}"
    );
}
