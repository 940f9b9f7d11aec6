//! Each chatd-bench scenario, run briefly and small, only to prove that it still runs and that
//! what it counts adds up. Benchmarks are not tests: nothing here looks at a timing.
//!
//! Its own test binary, apart from the in-process tests of `api/`: it runs the built
//! `chatd-bench` against the built `chatd`, each a child process.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;

use serde_json::Value;

use common::mongo::MongoServer;
use common::nats::NatsServer;
use common::process::Chatd;
use common::{DEADLINE, metric};

fn bench(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_chatd-bench"))
        .args(args)
        .arg("--json")
        .output()
        .expect("chatd-bench runs");
    assert!(
        output.status.success(),
        "chatd-bench {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON summary")
}

fn assert_delivered_everything(summary: &Value) {
    assert!(summary["sent"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["accepted"], summary["sent"], "{summary}");
    assert_eq!(
        summary["delivered"], summary["expected_deliveries"],
        "{summary}"
    );
    for field in [
        "deliveries_per_sec",
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_p999_ms",
        "rest_p99_ms",
        "rest_p999_ms",
    ] {
        assert!(
            summary[field].as_f64().is_some(),
            "{field} missing from {summary}"
        );
    }
}

/// The bare chat server `--ceiling` compares chatd with delivered what it was sent, so its
/// figures are of the same work.
fn assert_ceiling_delivered_everything(summary: &Value) {
    let extra = &summary["extra"];
    assert!(
        extra["ceiling_delivered"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert_eq!(
        extra["ceiling_delivered"], extra["ceiling_expected_deliveries"],
        "{summary}"
    );
    assert!(extra["fraction_of_ceiling"].as_f64().is_some(), "{summary}");
}

#[test]
fn one_to_one_runs_beside_its_ceiling() {
    let summary = bench(&[
        "one-to-one",
        "--users",
        "20",
        "--rate",
        "100",
        "--duration",
        "1",
        "--ceiling",
    ]);
    assert_delivered_everything(&summary);
    assert_ceiling_delivered_everything(&summary);
}

#[test]
fn fanout_runs_beside_its_ceiling() {
    let summary = bench(&[
        "fanout",
        "--members",
        "20",
        "--rate",
        "20",
        "--duration",
        "1",
        "--ceiling",
    ]);
    assert_delivered_everything(&summary);
    assert_eq!(
        summary["expected_deliveries"].as_u64().unwrap(),
        summary["accepted"].as_u64().unwrap() * 20
    );
    assert_ceiling_delivered_everything(&summary);
}

#[test]
fn idle_runs() {
    let summary = bench(&["idle", "--sockets", "100", "--duration", "0.2"]);
    assert_eq!(summary["sockets"], 100, "{summary}");
    assert_eq!(summary["extra"]["sockets_closed_by_server"], 0, "{summary}");
    assert!(
        summary["extra"]["rss_per_socket_kib"].as_f64().is_some(),
        "{summary}"
    );
}

/// `--pid` reports the CPU time and memory of a server the bench did not start: here a chatd
/// started by the test, as an operator would point the bench at one already running.
#[test]
fn a_server_it_did_not_start_is_measured_through_its_pid() {
    let data_dir = tempfile::tempdir().unwrap();
    let secret = "bench-pid-secret";
    let chatd = Chatd::start(data_dir.path(), secret, &[]);
    let (url, pid) = (chatd.url(""), chatd.child.id().to_string());
    let remote = ["--url", &url, "--pid", &pid, "--secret", secret];

    let idle = bench(
        &[
            &["idle", "--sockets", "20", "--duration", "0.2"],
            &remote[..],
        ]
        .concat(),
    );
    assert_eq!(idle["sockets"], 20, "{idle}");
    assert!(idle["server_rss_kib"].as_u64().unwrap() > 0, "{idle}");
    assert!(
        idle["extra"]["rss_before_kib"].as_u64().unwrap() > 0,
        "{idle}"
    );

    // 200 messages cost chatd far more than one clock tick of CPU.
    let load = bench(
        &[
            &[
                "one-to-one",
                "--users",
                "10",
                "--rate",
                "200",
                "--duration",
                "1",
            ],
            &remote[..],
        ]
        .concat(),
    );
    assert_delivered_everything(&load);
    assert!(
        load["server_cpu_us_per_delivery"].as_f64().unwrap() > 0.0,
        "{load}"
    );
    assert!(load["server_rss_kib"].as_u64().unwrap() > 0, "{load}");
    // One pid's part is the whole: the report has no per-pid lines, as before several.
    assert!(load.get("servers").is_none(), "{load}");
}

/// Two `--url`s and two `--pid`s: the bench spreads its sockets and senders over two instances
/// of one cluster (their own `nats-server -js` and MongoDB-wire store, as in
/// tests/api/cluster.rs), so about half the messages cross from one instance to the other.
/// Every message must still be delivered, each instance must have opened its half of the
/// sockets and accepted its share of the sends (by its own metrics, not the bench's word), and
/// the server figures must be the sum of both processes'.
#[tokio::test]
async fn the_load_is_spread_over_the_instances_of_a_cluster() {
    let (nats, mongo) = (NatsServer::start().await, MongoServer::start().await);
    let database = MongoServer::database();
    let secret = "bench-cluster-secret";
    let data_dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let instances: Vec<Chatd> = data_dirs
        .iter()
        .enumerate()
        .map(|(i, data_dir)| {
            let name = format!("bench-instance-{i}");
            let env = [
                ("NATS_URL", nats.url.as_str()),
                // JetStream reserves the stream's whole size on disk: not the default 8 GiB.
                ("NATS_MAX_BYTES", "268435456"),
                ("MONGO_URI", mongo.uri.as_str()),
                ("MONGO_DB", database.as_str()),
                ("INSTANCE_ID", name.as_str()),
            ];
            Chatd::start(data_dir.path(), secret, &env)
        })
        .collect();
    let (urls, pids): (Vec<String>, Vec<String>) = instances
        .iter()
        .map(|chatd| (chatd.url(""), chatd.child.id().to_string()))
        .unzip();

    // 10 users: sockets 0, 2, .. 8 and the sends of users 0, 2, .. 8 go to the first url.
    let summary = bench(&[
        "one-to-one",
        "--users",
        "10",
        "--rate",
        "100",
        "--duration",
        "1",
        "--secret",
        secret,
        "--url",
        &urls[0],
        "--url",
        &urls[1],
        "--pid",
        &pids[0],
        "--pid",
        &pids[1],
    ]);
    assert_delivered_everything(&summary);
    assert_eq!(summary["target"], format!("{}, {}", urls[0], urls[1]));

    let mut accepted = 0.0;
    for chatd in &instances {
        let scrape = chatd.metrics().await;
        assert_eq!(
            metric(&scrape, "chat_ws_connections_opened_total"),
            5.0,
            "{}",
            chatd.url("")
        );
        let here = metric(&scrape, "chat_messages_accepted_total");
        assert!(here > 0.0, "{} accepted no send", chatd.url(""));
        accepted += here;
    }
    assert_eq!(accepted, summary["accepted"].as_f64().unwrap(), "{summary}");

    let servers = summary["servers"].as_array().expect("each pid's part");
    assert_eq!(servers.len(), 2, "{summary}");
    let mut cpu = 0.0;
    for (server, pid) in servers.iter().zip(&pids) {
        assert_eq!(server["pid"].to_string(), *pid, "{summary}");
        assert!(server["rss_kib"].as_u64().unwrap() > 0, "{summary}");
        cpu += server["cpu_us_per_delivery"].as_f64().unwrap();
    }
    let total = summary["server_cpu_us_per_delivery"].as_f64().unwrap();
    assert!(total > 0.0, "{summary}");
    assert!((cpu - total).abs() < 1e-6 * total, "{summary}");
    assert_eq!(
        summary["server_rss_kib"].as_u64().unwrap(),
        servers
            .iter()
            .map(|s| s["rss_kib"].as_u64().unwrap())
            .sum::<u64>(),
        "{summary}"
    );
}

/// The original Go service reads the token only from the `Authorization` header, so the bench
/// must send it there: a listener that records the upgrade request and refuses it shows how.
#[test]
fn sockets_send_the_token_as_a_bearer_header_not_in_the_query() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (heads, head) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut request = Vec::new();
        let mut byte = [0u8];
        while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
            request.push(byte[0]);
        }
        heads
            .send(String::from_utf8_lossy(&request).to_lowercase())
            .unwrap();
        let _ = stream.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n");
    });
    // Any live process will do for --pid: only the upgrade is looked at.
    let pid = std::process::id().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_chatd-bench"))
        .args(["idle", "--url", &url, "--pid", &pid, "--sockets", "1"])
        .output()
        .expect("chatd-bench runs");
    assert!(!output.status.success(), "the upgrade was refused");
    let head = head.recv_timeout(DEADLINE).expect("an upgrade request");
    assert!(head.starts_with("get /ws http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nauthorization: bearer "), "{head}");
    assert!(!head.contains("token="), "{head}");
}

#[test]
fn help_does_not_show_the_secret_from_the_environment() {
    let secret = "do-not-print-this-secret";
    let help = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_chatd-bench"))
            .args(args)
            .arg("--help")
            .env("JWT_SECRET", secret)
            .output()
            .expect("chatd-bench runs");
        assert!(output.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(!help.contains(secret), "{args:?}: {help}");
        help
    };
    // Every scenario that takes --secret names the variable, never its value.
    for scenario in ["one-to-one", "fanout", "idle", "drain"] {
        let help = help(&[scenario]);
        assert!(help.contains("JWT_SECRET"), "{scenario}: {help}");
    }
    help(&[]);
    help(&["recovery"]);
}

#[test]
fn drain_runs() {
    let summary = bench(&["drain", "--messages", "500"]);
    assert!(
        summary["extra"]["embedded_drain_msgs_per_sec"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{summary}"
    );
}

#[test]
fn recovery_runs_and_every_reconnect_gets_its_replay() {
    let summary = bench(&[
        "recovery",
        "--messages",
        "3000",
        "--reconnects",
        "4",
        "--replayed",
        "150",
        "--rate",
        "50",
        "--baseline",
        "2",
    ]);
    assert_eq!(summary["sockets"], 4, "{summary}");
    assert_eq!(summary["extra"]["reconnects"], 4, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["accepted"], summary["sent"], "{summary}");
    for field in [
        "send_before_p99_ms",
        "send_during_p99_ms",
        "replay_max_ms",
        "rss_after_close_kib",
    ] {
        assert!(
            summary["extra"][field].is_number(),
            "{field} missing from {summary}"
        );
    }
}
