//! What operators see: metrics, request ids, readiness, and the dashboard and alerts that
//! depend on them.
//!
//! Its own test binary, for the metrics recorder: there is one per process, shared by the
//! chatds these tests start side by side, so counters are compared before and after while no
//! other test sends, and gauges (which each scrape sets from its own chatd) are checked on the
//! real binary in `process.rs`.

mod common;

use std::collections::BTreeSet;

use common::{TestServer, eventually, metric};
use serde_json::Value;

/// Held by the tests that send messages: the counters are the process's, so the test that
/// compares them before and after must not see another test's messages in between.
static SENDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The series the observability issue names, each of which must exist from start-up.
const REQUIRED: &[&str] = &[
    "chat_ws_connections",
    "chat_ws_connections_opened_total",
    "chat_ws_connections_closed_total",
    "chat_slow_consumer_disconnects_total",
    "chat_messages_accepted_total",
    "chat_messages_rejected_total",
    "chat_messages_delivered_total",
    "chat_delivery_latency_seconds",
    "chat_outbox_depth",
    "chat_outbox_oldest_age_seconds",
    "chat_outbox_commit_duration_seconds",
    "chat_persist_batches_total",
    "chat_persist_retries_total",
    "chat_persist_duration_seconds",
    "chat_store_up",
    "chat_dead_letters_total",
    "chat_dead_letter_backlog",
    "chat_dlq_replays_total",
    "chat_rate_limited_total",
    "chat_http_connections_refused_total",
    "chat_build_info",
    "chat_storage_corrupted",
    "chat_outbox_rows_skipped_total",
    "chat_instance_info",
    "chat_bus_published_total",
    "chat_bus_publish_failures_total",
    "chat_bus_received_total",
    "chat_bus_connected",
    "chat_stream_pending",
    "chat_ws_connections_max",
    "chat_http_connections_max",
    "chat_http_requests_total",
    // The process's own, from metrics-process.
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_threads",
    "process_start_time_seconds",
];

async fn scrape(server: &TestServer, url: &str) -> String {
    let response = server.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// Metric names in an exposition, histograms under their own name too.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = line.split(['{', ' ']).next().unwrap();
        names.insert(name.to_string());
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                names.insert(base.to_string());
            }
        }
    }
    names
}

/// Every `chat_…` and `process_…` identifier in a text: chatd's series and the process's.
/// (Prometheus's own, such as `up`, are not chatd's to export.)
fn referenced(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    for prefix in ["chat_", "process_"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix).map(|at| from + at) {
            let name: String = text[at..].chars().take_while(|&c| is_name(c)).collect();
            from = at + name.len();
            // A whole identifier, not the tail of another one.
            if !text[..at].ends_with(is_name) {
                names.insert(name);
            }
        }
    }
    names
}

#[tokio::test]
async fn every_series_exists_from_start_up() {
    let server = TestServer::start().await;
    let names = exported(&scrape(&server, &server.url("/metrics")).await);
    for name in REQUIRED {
        assert!(names.contains(*name), "{name} is not exported");
    }
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_name_only_exported_metrics() {
    let server = TestServer::start().await;
    let names = exported(&scrape(&server, &server.url("/metrics")).await);
    let ops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ops");
    let dashboard = std::fs::read_to_string(ops.join("grafana/dashboards/chatd.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut expressions: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        // A row has no targets of its own.
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .map(|target| target["expr"].as_str().unwrap())
        .collect();
    // The template variables' queries name metrics too.
    expressions.extend(
        dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|variable| variable["definition"].as_str()),
    );
    let alerts = std::fs::read_to_string(ops.join("alerts.yml")).unwrap();
    for (source, text) in [
        ("the dashboard", expressions.join("\n")),
        ("alerts.yml", alerts),
    ] {
        let used = referenced(&text);
        assert!(used.len() >= 5, "{source} names too few metrics: {used:?}");
        for name in used {
            assert!(
                names.contains(&name),
                "{source} names {name}, which chatd does not export"
            );
        }
    }
}

/// Every panel reads the data source chosen in `$datasource` and only the instances chosen in
/// `$instance`, so one dashboard serves the single Prometheus and the cluster's.
#[test]
fn every_panel_follows_the_datasource_and_instance_variables() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/grafana/dashboards/chatd.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    let instance = variable("instance");
    assert_eq!(instance["type"], "query");
    assert_eq!(instance["datasource"]["uid"], "${datasource}");
    let mut ids = BTreeSet::new();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id taken"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let units = panel["fieldConfig"]["defaults"]["unit"].as_str();
        assert!(units.is_some_and(|u| !u.is_empty()), "{title}: no unit");
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"].as_str().unwrap();
            for selector in selectors(expr) {
                assert!(
                    selector.contains("instance=~\"$instance\""),
                    "{title}: {selector} in {expr} ignores $instance"
                );
                checked += 1;
            }
        }
        if panel["type"] == "stat" {
            let defaults = &panel["fieldConfig"]["defaults"];
            assert!(
                defaults["thresholds"]["steps"]
                    .as_array()
                    .is_some_and(|s| !s.is_empty()),
                "{title}: a stat without thresholds"
            );
            assert!(
                defaults["mappings"].is_array(),
                "{title}: no value mappings"
            );
        }
    }
    assert!(checked >= 20, "only {checked} selectors checked");
}

/// Each metric selector in a PromQL expression (`name` or `name{…}`), for `chat_…`,
/// `process_…` and Prometheus's `up`.
fn selectors(expr: &str) -> Vec<&str> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    let mut at = 0;
    while at < expr.len() {
        let rest = &expr[at..];
        let len = rest.find(|c: char| !is_name(c)).unwrap_or(rest.len());
        if len == 0 {
            at += rest.chars().next().unwrap().len_utf8();
            continue;
        }
        let name = &rest[..len];
        let after = &rest[len..];
        let is_metric = name.starts_with("chat_") || name.starts_with("process_") || name == "up";
        // `up(` would be a function; a label name inside braces is never one of these.
        if is_metric && !after.starts_with('(') {
            let end = if after.starts_with('{') {
                len + after.find('}').unwrap() + 1
            } else {
                len
            };
            found.push(&rest[..end]);
            at += end;
        } else {
            at += len;
        }
    }
    found
}

#[tokio::test]
async fn the_pipeline_is_counted() {
    let _sends = SENDS.lock().await;
    let server = TestServer::start().await;
    let url = server.url("/metrics");
    let before = scrape(&server, &url).await;
    let mut bob = server.ws("bob").await;
    for i in 0..3 {
        let sent = server
            .send_ok("alice", &["alice", "bob"], &format!("m{i}"))
            .await;
        assert_eq!(bob.next_message().await, sent);
    }
    assert_eq!(
        server
            .send("mallory", &["alice", "bob"], "no")
            .await
            .status(),
        403
    );
    server.stored("bob", "alice,bob", 3).await;

    let after = eventually("the writes are counted", || async {
        let after = scrape(&server, &url).await;
        (metric(&after, "chat_persist_batches_total{result=\"ok\"}")
            > metric(&before, "chat_persist_batches_total{result=\"ok\"}"))
        .then_some(after)
    })
    .await;
    let delta = |series: &str| metric(&after, series) - metric(&before, series);
    assert_eq!(delta("chat_messages_accepted_total"), 3.0);
    assert_eq!(
        delta("chat_messages_rejected_total{reason=\"forbidden\"}"),
        1.0
    );
    assert_eq!(delta("chat_messages_delivered_total"), 3.0);
    assert_eq!(delta("chat_delivery_latency_seconds_count"), 3.0);
    assert_eq!(delta("chat_ws_connections_opened_total"), 1.0);
    assert!(delta("chat_persist_duration_seconds_count") >= 1.0);
    // Each send waited for its 202, so each append was a commit of its own, timed before the
    // reply (the removals of what was stored may add more).
    assert!(delta("chat_outbox_commit_duration_seconds_count") >= 3.0);
    let posted =
        "chat_http_requests_total{route=\"/api/messages\",method=\"POST\",status_class=\"2xx\"}";
    assert_eq!(delta(posted), 3.0);
    let refused =
        "chat_http_requests_total{route=\"/api/messages\",method=\"POST\",status_class=\"4xx\"}";
    assert_eq!(delta(refused), 1.0);
}

/// Every route's request series, in each class the dashboard and the alerts read, exist before
/// the route's first request, so its first 5xx is an increase `rate()` sees.
#[tokio::test]
async fn request_series_exist_before_the_first_request() {
    let server = TestServer::start_with(&[("ADMIN_TOKEN", "observability-admin-token")]).await;
    let text = scrape(&server, &server.url("/metrics")).await;
    let routes = [
        ("/health", "GET"),
        ("/ready", "GET"),
        ("/ws", "GET"),
        ("/api/messages", "POST"),
        ("/api/messages/get", "GET"),
        ("/api/connections", "POST"),
        ("/metrics", "GET"),
        ("/admin/dead-letters", "GET"),
        ("/admin/dead-letters/replay", "POST"),
        ("/admin/dead-letters/{id}", "GET"),
        ("/admin/dead-letters/{id}", "DELETE"),
    ];
    for (route, method) in routes {
        for class in ["2xx", "4xx", "5xx"] {
            let series = format!(
                "chat_http_requests_total{{route=\"{route}\",method=\"{method}\",status_class=\"{class}\"}}"
            );
            // Another test of this binary may have counted into it: that it is there is the
            // point, whatever it counts.
            assert!(metric(&text, &series) >= 0.0, "{series}");
        }
    }
    // No series counts by code any more: a code's first request would start its series at 1.
    assert!(
        !text.contains("status=\""),
        "a series labelled by code in\n{text}"
    );
}

#[tokio::test]
async fn every_request_carries_an_id() {
    let server = TestServer::start().await;
    let fresh = server.http.get(server.url("/health")).send().await.unwrap();
    let id = fresh.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32, "{id}");
    let kept = server
        .http
        .get(server.url("/nowhere"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.status(), 404);
    assert_eq!(kept.headers()["x-request-id"], "trace-abc-123");
    let replaced = server
        .http
        .get(server.url("/health"))
        .header("x-request-id", "x".repeat(65))
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.headers()["x-request-id"].len(), 32);
}

#[tokio::test]
async fn ready_waits_for_a_reachable_store_while_sends_are_still_accepted() {
    let _sends = SENDS.lock().await;
    let embedded = TestServer::start().await;
    assert_eq!(embedded.ready().await.0, 200);

    // A MongoDB nobody listens for: chatd starts anyway and keeps messages in its outbox.
    let uri = common::unreachable_mongo_uri();
    let away = TestServer::start_with(&[("MONGO_URI", &uri), ("STORE_TIMEOUT", "300ms")]).await;
    let (status, body) = away.ready().await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "not ready: the store is unreachable");
    away.send_ok("alice", &["alice"], "kept in the outbox")
        .await;
    let health = away.health().await;
    assert_eq!(health["store"]["up"], false);
    assert_eq!(health["outbox"]["pending"], 1);
}

#[tokio::test]
async fn metrics_port_moves_metrics_to_its_own_listener() {
    let server = TestServer::start_with(&[("METRICS_PORT", "0")]).await;
    let on_main = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(on_main.status(), 404);
    let url = server.metrics_url().expect("a metrics listener");
    assert!(exported(&scrape(&server, &url).await).contains("chat_build_info"));
}
