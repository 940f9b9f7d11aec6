//! Each chatd-bench scenario, run briefly and small, only to prove that it still runs and that
//! what it counts adds up. Benchmarks are not tests: nothing here looks at a timing.

use std::process::Command;

use serde_json::Value;

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

#[test]
fn one_to_one_runs() {
    let summary = bench(&[
        "one-to-one",
        "--users",
        "20",
        "--rate",
        "100",
        "--duration",
        "1",
    ]);
    assert_delivered_everything(&summary);
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
    assert!(
        summary["extra"]["fraction_of_ceiling"].as_f64().is_some(),
        "{summary}"
    );
}

#[test]
fn idle_runs() {
    let summary = bench(&["idle", "--sockets", "100", "--duration", "0.2"]);
    assert!(
        summary["extra"]["rss_per_socket_kib"].as_f64().is_some(),
        "{summary}"
    );
}

#[test]
fn help_does_not_show_the_secret_from_the_environment() {
    let secret = "do-not-print-this-secret";
    let output = Command::new(env!("CARGO_BIN_EXE_chatd-bench"))
        .args(["one-to-one", "--help"])
        .env("JWT_SECRET", secret)
        .output()
        .expect("chatd-bench runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("JWT_SECRET"), "{help}");
    assert!(!help.contains(secret), "{help}");
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
