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
            ("NATS_URL", self.nats.url.as_str()),
            ("MONGO_URI", self.mongo.uri.as_str()),
            ("MONGO_DB", self.database.as_str()),
            ("INSTANCE_ID", name),
        ];
        Chatd::start(data_dir, &self.secret, &env)
    }
}

async fn ready(instance: &TestServer) -> (u16, Value) {
    let response = instance
        .http
        .get(instance.url("/ready"))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
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

/// The contents of the next `count` messages, failing on a repeated id.
async fn contents(socket: &mut WsClient, count: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut contents = BTreeSet::new();
    for _ in 0..count {
        let message = socket.next_message().await;
        assert!(
            ids.insert(message["id"].as_str().unwrap().to_string()),
            "{message} arrived twice"
        );
        contents.insert(message["content"].as_str().unwrap().to_string());
    }
    contents
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

#[tokio::test]
async fn messages_accepted_while_nats_is_down_are_delivered_once_it_is_back() {
    let mut cluster = Cluster::start(2).await;
    let mut bob_on_b = cluster.instances[1].ws("bob").await;
    cluster.instances[1].await_connections("bob", 1).await;
    let a = &cluster.instances[0];
    a.send_ok("alice", &["alice", "bob"], "m0").await;
    assert_eq!(bob_on_b.next_message().await["content"], "m0");

    cluster.nats.kill();
    let a = &cluster.instances[0];
    let bus_lost = |(status, body): (u16, Value)| {
        (status == 503 && body["error"].as_str()?.contains("NATS")).then_some(())
    };
    eventually("/ready says NATS is lost", || async {
        bus_lost(ready(a).await)
    })
    .await;
    assert_eq!(
        a.health().await["bus"],
        json!({"kind": "nats", "connected": false})
    );
    for i in 1..6 {
        // Accepted all the same: the local outbox has them, and the relay stores them.
        a.send_ok("alice", &["alice", "bob"], &format!("m{i}"))
            .await;
    }
    cluster.nats.restart().await;

    let a = &cluster.instances[0];
    eventually("/ready again", || async {
        (ready(a).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(contents(&mut bob_on_b, 5).await, numbered(1..6));
    a.send_ok("alice", &["alice", "bob"], "after").await;
    assert_eq!(bob_on_b.next_message().await["content"], "after");
    // The restarted server forgot the heartbeats (kept in memory); the next ones bring them back.
    await_counts(a, json!({"bob": 1})).await;
}

#[tokio::test]
async fn a_message_the_bus_cannot_carry_is_stored_and_its_sockets_are_told_to_recover() {
    let mut cluster = Cluster::start_with(1, &[("BUS_CAPACITY", "1")]).await;
    let chat = &cluster.instances[0];
    let mut bob = chat.ws("bob").await;
    chat.await_connections("bob", 1).await;
    chat.send_ok("alice", &["alice", "bob"], "m0").await;
    assert_eq!(bob.next_message().await["content"], "m0");

    cluster.nats.kill();
    let chat = &cluster.instances[0];
    // The publisher holds m1 until NATS acknowledges it, the queue of one holds m2: m3 finds
    // no room, and no instance can deliver it live.
    for i in 1..4 {
        chat.send_ok("alice", &["alice", "bob"], &format!("m{i}"))
            .await;
    }
    assert_eq!(bob.close_code().await, Some(4009));
    assert_eq!(chat.stored("bob", "alice,bob", 4).await.len(), 4);
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

#[tokio::test]
async fn start_up_gives_up_on_a_nats_that_never_answers() {
    // Accepts connections and says nothing, as a stuck server or a black-holing proxy would.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("nats://{}", silent.local_addr().unwrap());
    let mongo = MongoServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = chatd::config::Config::from_lookup(|name| match name {
        "NATS_URL" => Some(url.clone()),
        "NATS_CONNECT_TIMEOUT" => Some("1s".into()),
        "MONGO_URI" => Some(mongo.uri.clone()),
        "DATA_DIR" => Some(dir.path().display().to_string()),
        "HOST" => Some("127.0.0.1".into()),
        "PORT" => Some("0".into()),
        "JWT_SECRET" => Some("s".repeat(32)),
        _ => None,
    })
    .unwrap();
    let started = tokio::time::timeout(DEADLINE, chatd::app::start(config))
        .await
        .expect("start-up gave up by itself");
    let error = format!("{:#}", started.err().expect("start-up fails"));
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
    let mongo = MongoServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = chatd::config::Config::from_lookup(|name| match name {
        "NATS_URL" => Some(nats.url.clone()),
        "NATS_STREAM" => Some("TAKEN".into()),
        "MONGO_URI" => Some(mongo.uri.clone()),
        "DATA_DIR" => Some(dir.path().display().to_string()),
        "HOST" => Some("127.0.0.1".into()),
        "PORT" => Some("0".into()),
        "JWT_SECRET" => Some("s".repeat(32)),
        _ => None,
    })
    .unwrap();
    let error = format!(
        "{:#}",
        chatd::app::start(config).await.err().expect("refused")
    );
    assert!(
        error.contains("TAKEN") && error.contains("does not take subject TAKEN.messages"),
        "{error}"
    );
}
