//! The load: sockets that listen and time every frame they receive, and a sender that posts
//! over keep-alive connections at a fixed rate. The send time rides in the content, so the
//! latency measured is end to end: from just before the POST to the frame read from a socket.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::report::{ServerShare, Summary, millis};
use crate::target::{Target, Usage, sum};

/// Requests in flight at once.
const IN_FLIGHT: usize = 512;
/// How long deliveries may trail the last send before the run ends.
const DELIVERY_GRACE: Duration = Duration::from_secs(5);
const CONTENT_PREFIX: &str = "bench:";

/// Who sends what: message number → (sender, participants).
pub type Pick = Box<dyn Fn(u64) -> (usize, Vec<usize>) + Send + Sync>;

pub struct Plan {
    pub scenario: &'static str,
    /// Users with a socket, by index; `Pick` may name users past the end, who have none.
    pub users: Vec<String>,
    pub listeners: usize,
    pub rate: f64,
    pub duration: Duration,
    /// Sent before this much time has passed, messages load the system but are not measured:
    /// connection pools fill and caches warm.
    pub warmup: Duration,
    pub pick: Pick,
    pub deliveries_per_message: u64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

fn latency_histogram() -> Histogram<u64> {
    // Microseconds, up to a minute, three significant figures.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// The send time carried in a frame's content, found without parsing the JSON.
fn sent_at(frame: &str) -> Option<u64> {
    let start = frame.find(CONTENT_PREFIX)? + CONTENT_PREFIX.len();
    let digits = frame[start..].split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

struct Counters {
    delivered: AtomicU64,
    last_delivery_ns: AtomicU64,
    accepted: AtomicU64,
    errors: AtomicU64,
    /// The errors by what they were (a status, or why the request got none), so a run's
    /// report says what failed, not only how much.
    error_kinds: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn refused(&self, outcome: &reqwest::Result<reqwest::Response>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .error_kinds
            .lock()
            .expect("error kinds lock")
            .entry(error_kind(outcome))
            .or_default() += 1;
    }
}

/// A send that got no 202: its status, or the innermost cause of a failed request (a closed
/// or reset connection, say), which names no address or id.
fn error_kind(outcome: &reqwest::Result<reqwest::Response>) -> String {
    match outcome {
        Ok(response) => format!("status {}", response.status().as_u16()),
        Err(e) => {
            let mut cause: &dyn std::error::Error = e;
            while let Some(source) = cause.source() {
                cause = source;
            }
            format!("request failed: {cause}")
        }
    }
}

pub async fn run(target: &Target, plan: Plan) -> anyhow::Result<Summary> {
    epoch();
    let counters = Arc::new(Counters {
        delivered: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        error_kinds: Mutex::default(),
    });
    let stop = CancellationToken::new();
    let measured_from_ns = Arc::new(AtomicU64::new(u64::MAX));

    let connecting = ProgressBar::new(plan.listeners as u64).with_message("connecting sockets");
    // Socket i opens on server i (round robin), so with several servers each has its share.
    let sockets: Vec<_> = stream::iter(plan.users.iter().take(plan.listeners).enumerate())
        .map(|(i, user)| target.connect(user, i))
        .buffer_unordered(100)
        .inspect(|_| connecting.inc(1))
        .collect()
        .await;
    connecting.finish_and_clear();
    let mut readers = Vec::with_capacity(sockets.len());
    for socket in sockets {
        let mut socket = socket?;
        let (counters, stop, measured_from_ns) =
            (counters.clone(), stop.clone(), measured_from_ns.clone());
        readers.push(tokio::spawn(async move {
            let mut latencies = latency_histogram();
            loop {
                let frame = tokio::select! {
                    frame = socket.next() => frame,
                    () = stop.cancelled() => break,
                };
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(sent) = sent_at(&text) {
                            let now = now_ns();
                            if sent >= measured_from_ns.load(Ordering::Relaxed) {
                                latencies.saturating_record(now.saturating_sub(sent) / 1000);
                            }
                            counters.delivered.fetch_add(1, Ordering::Relaxed);
                            counters.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
            latencies
        }));
    }

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()?;
    // User j sends through server j, so a message to a user whose socket is on another server
    // crosses instances.
    let urls: Vec<String> = (0..target.servers())
        .map(|i| format!("{}/api/messages", target.http(i)))
        .collect();
    let tokens: Arc<Vec<String>> = Arc::new(plan.users.iter().map(|u| target.token(u)).collect());
    let users = Arc::new(plan.users.clone());
    let rest = Arc::new(Mutex::new(latency_histogram()));
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    // Each process is read once before and once after, and the totals are summed from those
    // readings, so that the parts reported add up to the whole.
    let before = target.usage_each();

    let progress = ProgressBar::new(plan.duration.as_secs().max(1));
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
            .expect("a valid template"),
    );
    let start = Instant::now();
    let start_ns = now_ns();
    measured_from_ns.store(start_ns + plan.warmup.as_nanos() as u64, Ordering::Relaxed);
    let measured_from = start + plan.warmup;
    let mut sent = 0u64;
    let mut last_tick = start;
    while start.elapsed() < plan.duration {
        let due = (start.elapsed().as_secs_f64() * plan.rate) as u64;
        while sent < due {
            let permit = permits.clone().acquire_owned().await?;
            let (from, to) = (plan.pick)(sent);
            let body = serde_json::json!({
                "participants": to.iter().map(|i| users[*i].as_str()).collect::<Vec<_>>(),
                "content": format!("{CONTENT_PREFIX}{}", now_ns()),
            });
            let request = client
                .post(&urls[from % urls.len()])
                .bearer_auth(&tokens[from])
                .json(&body);
            let (counters, rest) = (counters.clone(), rest.clone());
            tokio::spawn(async move {
                let posted = Instant::now();
                let outcome = request.send().await;
                match &outcome {
                    Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                        counters.accepted.fetch_add(1, Ordering::Relaxed);
                        if posted >= measured_from {
                            let micros = posted.elapsed().as_micros() as u64;
                            rest.lock()
                                .expect("histogram lock")
                                .saturating_record(micros);
                        }
                    }
                    _ => counters.refused(&outcome),
                }
                drop(permit);
            });
            sent += 1;
        }
        if last_tick.elapsed() >= Duration::from_millis(200) {
            last_tick = Instant::now();
            let secs = start.elapsed().as_secs_f64();
            progress.set_position(secs as u64);
            let delivered = counters.delivered.load(Ordering::Relaxed);
            progress.set_message(format!(
                "sent {sent} ({:.0}/s), delivered {delivered} ({:.0}/s)",
                sent as f64 / secs,
                delivered as f64 / secs
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let send_secs = start.elapsed().as_secs_f64();
    let _all = permits.acquire_many(IN_FLIGHT as u32).await?;
    let expected = counters.accepted.load(Ordering::Relaxed) * plan.deliveries_per_message;
    let grace = Instant::now();
    while counters.delivered.load(Ordering::Relaxed) < expected && grace.elapsed() < DELIVERY_GRACE
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    progress.finish_and_clear();
    let after = target.usage_each();
    stop.cancel();
    let mut latencies = latency_histogram();
    for reader in readers {
        latencies.add(reader.await?)?;
    }

    let delivered = counters.delivered.load(Ordering::Relaxed);
    let delivering_secs = (counters
        .last_delivery_ns
        .load(Ordering::Relaxed)
        .saturating_sub(start_ns)) as f64
        / 1e9;
    let rest = rest.lock().expect("histogram lock");
    Ok(Summary {
        scenario: plan.scenario.to_string(),
        target: target.describe(),
        duration_secs: send_secs,
        sockets: plan.listeners,
        sent,
        accepted: counters.accepted.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        expected_deliveries: expected,
        delivered,
        sends_per_sec: sent as f64 / send_secs,
        deliveries_per_sec: if delivering_secs > 0.0 {
            delivered as f64 / delivering_secs
        } else {
            0.0
        },
        latency_p50_ms: millis(&latencies, 0.5),
        latency_p90_ms: millis(&latencies, 0.9),
        latency_p99_ms: millis(&latencies, 0.99),
        latency_p999_ms: millis(&latencies, 0.999),
        latency_max_ms: latencies.max() as f64 / 1000.0,
        rest_p50_ms: millis(&rest, 0.5),
        rest_p99_ms: millis(&rest, 0.99),
        rest_p999_ms: millis(&rest, 0.999),
        server_cpu_us_per_delivery: cpu_per_delivery(
            sum(before.iter().map(|u| u.cpu_seconds)),
            sum(after.iter().map(|u| u.cpu_seconds)),
            delivered,
        ),
        server_rss_kib: sum(after.iter().map(|u| u.rss_kib)),
        servers: shares(&before, &after, delivered),
        extra: errors_by_kind(&counters),
    })
}

/// What the errors were, when there were any.
fn errors_by_kind(counters: &Counters) -> serde_json::Map<String, serde_json::Value> {
    let kinds = counters.error_kinds.lock().expect("error kinds lock");
    let mut extra = serde_json::Map::new();
    if !kinds.is_empty() {
        extra.insert("errors_by_kind".into(), serde_json::json!(*kinds));
    }
    extra
}

/// Each watched process's part of the server figures, when there are several (one process's
/// part is the whole, already reported).
fn shares(before: &[Usage], after: &[Usage], delivered: u64) -> Vec<ServerShare> {
    if after.len() < 2 {
        return Vec::new();
    }
    before
        .iter()
        .zip(after)
        .map(|(before, after)| ServerShare {
            pid: after.pid,
            cpu_us_per_delivery: cpu_per_delivery(before.cpu_seconds, after.cpu_seconds, delivered),
            rss_kib: after.rss_kib,
        })
        .collect()
}

fn cpu_per_delivery(before: Option<f64>, after: Option<f64>, delivered: u64) -> Option<f64> {
    match (before, after) {
        (Some(before), Some(after)) if delivered > 0 => {
            Some((after - before) * 1e6 / delivered as f64)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_time_is_found_in_a_frame() {
        let frame = r#"{"id":"x","sender":"a","content":"bench:123456","participants":["a"]}"#;
        assert_eq!(sent_at(frame), Some(123_456));
        assert_eq!(sent_at(r#"{"content":"hello"}"#), None);
    }

    #[tokio::test]
    async fn an_error_is_named_by_its_status_or_by_why_the_request_failed() {
        let unavailable = axum::http::Response::builder()
            .status(503)
            .body("")
            .unwrap();
        assert_eq!(
            error_kind(&Ok(reqwest::Response::from(unavailable))),
            "status 503"
        );
        // A port nobody listens on: the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let refused = reqwest::get(format!("http://127.0.0.1:{port}/")).await;
        let kind = error_kind(&refused);
        assert!(
            kind.starts_with("request failed: ") && kind.contains("refused"),
            "{kind}"
        );
    }
}
