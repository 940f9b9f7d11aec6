//! Recovery: what a burst of reconnects with an ancient `since` costs everyone else. A steady
//! stream of sends runs throughout; its latency (request to 202) is measured before and during
//! the burst, beside how long each reconnect took to be upgraded and replayed, and the server's
//! memory before, at its peak during, and after the sockets closed (after each burst, when
//! there are several).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use crate::history::{self, Layout};
use crate::report::{Summary, millis};
use crate::target::{Server, Target};

const SECRET: &str = "chatd-bench-recovery";

pub struct Options {
    pub layout: Layout,
    /// Sends per second throughout.
    pub rate: f64,
    /// Seconds of sending before the burst, measured as the baseline.
    pub baseline: f64,
    /// Where the store is built (and kept, to be reused by the next run); a temporary
    /// directory without it.
    pub data_dir: Option<PathBuf>,
    /// chatd's `RECOVERY_CONCURRENCY`, when not its default.
    pub concurrency: Option<u32>,
    /// How long memory may settle after the sockets closed before it is read.
    pub settle: Duration,
    /// Bursts one after the other, each once the last one's sockets closed and memory settled:
    /// memory that a burst leaves behind shows as a rise from one to the next.
    pub bursts: u32,
}

/// One send: when it was posted, and how long its 202 took (`None`: it was refused).
type Sample = (Instant, Option<Duration>);

/// One reconnect of the burst.
struct Reconnect {
    /// From the first attempt to the 101.
    upgraded: Duration,
    /// From the first attempt to the last replayed frame.
    replayed: Duration,
    /// Upgrades refused with 503 (no recovery turn within a second) before this one.
    refused: u32,
}

pub async fn run(options: Options) -> anyhow::Result<Summary> {
    let temp = tempfile::tempdir()?;
    let data_dir = options
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let building = Instant::now();
    let since = history::build(&data_dir, &options.layout).await?;
    let built_secs = building.elapsed().as_secs_f64();

    let mut env = vec![("JWT_SECRET", SECRET.to_string())];
    if let Some(concurrency) = options.concurrency {
        env.push(("RECOVERY_CONCURRENCY", concurrency.to_string()));
    }
    let starting = Instant::now();
    let target = Target::local(Server::chatd(Some(data_dir), &env)?, SECRET)?;
    let started_secs = starting.elapsed().as_secs_f64();
    let target = Arc::new(target);

    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = CancellationToken::new();
    let sender = tokio::spawn(send(
        target.clone(),
        options.rate,
        samples.clone(),
        stop.clone(),
    ));
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(options.baseline)).await;
    let rss_before = target.rss_kib();

    let mut rss_peak = rss_before.unwrap_or(0);
    let mut rss_after = Vec::new();
    let mut bursts = Vec::new();
    let mut done = Vec::new();
    for _ in 0..options.bursts {
        let burst = Instant::now();
        let mut reconnects = JoinSet::new();
        for i in 0..options.layout.recovering {
            let (target, since) = (target.clone(), since.clone());
            let replayed = options.layout.replayed;
            reconnects.spawn(async move {
                reconnect(&target, &Layout::recovering_user(i), &since, replayed).await
            });
        }
        let mut sockets = Vec::new();
        let mut watch = tokio::time::interval(Duration::from_millis(100));
        while !reconnects.is_empty() {
            tokio::select! {
                finished = reconnects.join_next() => {
                    let (reconnect, socket) = finished.expect("not empty")??;
                    done.push(reconnect);
                    sockets.push(socket);
                }
                _ = watch.tick() => rss_peak = rss_peak.max(target.rss_kib().unwrap_or(0)),
            }
        }
        bursts.push((burst, Instant::now()));
        rss_peak = rss_peak.max(target.rss_kib().unwrap_or(0));
        for mut socket in sockets {
            socket.close(None).await?;
        }
        let users: Vec<String> = (0..options.layout.recovering)
            .map(Layout::recovering_user)
            .collect();
        await_closed(&target, &users).await?;
        tokio::time::sleep(options.settle).await;
        rss_after.push(target.rss_kib().unwrap_or(0));
    }
    stop.cancel();
    sender.await??;

    let samples = samples.lock().expect("samples lock");
    // The first second warms connection pools and caches up.
    let before = window(&samples, began + Duration::from_secs(1), bursts[0].0);
    let mut during = histogram();
    for (from, to) in &bursts {
        during.add(window(&samples, *from, *to))?;
    }
    let burst_max = bursts
        .iter()
        .map(|(from, to)| to.duration_since(*from))
        .max()
        .unwrap_or_default();
    let refused = samples.iter().filter(|(_, took)| took.is_none()).count();
    let mut replays = histogram();
    for reconnect in &done {
        replays.saturating_record(reconnect.replayed.as_micros() as u64);
    }
    let upgraded_max = done.iter().map(|r| r.upgraded).max().unwrap_or_default();
    let mut extra = serde_json::Map::new();
    let mut put = |key: &str, value: Value| extra.insert(key.into(), value);
    put("store_messages", options.layout.messages.into());
    put("store_build_secs", round(built_secs).into());
    put("server_start_secs", round(started_secs).into());
    put("reconnects", done.len().into());
    put("replayed_per_reconnect", options.layout.replayed.into());
    put("send_before_p50_ms", millis(&before, 0.5).into());
    put("send_before_p99_ms", millis(&before, 0.99).into());
    put("send_during_p50_ms", millis(&during, 0.5).into());
    put("send_during_p99_ms", millis(&during, 0.99).into());
    put("send_during_count", during.len().into());
    put("sends_refused", refused.into());
    put("bursts", options.bursts.into());
    put("burst_max_secs", round(burst_max.as_secs_f64()).into());
    put("replay_p50_ms", millis(&replays, 0.5).into());
    put("replay_max_ms", millis(&replays, 1.0).into());
    put(
        "upgrade_max_ms",
        round(upgraded_max.as_secs_f64() * 1000.0).into(),
    );
    put(
        "upgrades_refused_503",
        done.iter().map(|r| r.refused).sum::<u32>().into(),
    );
    put("rss_before_kib", rss_before.into());
    put("rss_peak_during_kib", rss_peak.into());
    put("rss_after_close_kib", rss_after.last().copied().into());
    put("rss_after_each_burst_kib", rss_after.clone().into());
    Ok(Summary {
        scenario: "recovery".into(),
        target: target.describe(),
        duration_secs: began.elapsed().as_secs_f64(),
        sockets: done.len(),
        sent: samples.len() as u64,
        accepted: (samples.len() - refused) as u64,
        errors: refused as u64,
        sends_per_sec: samples.len() as f64 / began.elapsed().as_secs_f64(),
        server_rss_kib: rss_after.last().copied(),
        extra,
        ..Summary::default()
    })
}

/// Posts at `rate` until `stop`, each request on its own task so a slow answer delays no other.
async fn send(
    target: Arc<Target>,
    rate: f64,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let url = format!("{}/api/messages", target.http(0));
    let tokens: Vec<String> = (0..16).map(|i| target.token(&format!("s{i}"))).collect();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sending = JoinSet::new();
    for n in 0.. {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let from = n % tokens.len();
        let request = client
            .post(&url)
            .bearer_auth(&tokens[from])
            .json(&serde_json::json!({
                "participants": [format!("s{from}"), "listener"],
                "content": format!("live {n}"),
            }));
        let samples = samples.clone();
        sending.spawn(async move {
            let posted = Instant::now();
            let accepted = matches!(
                request.send().await,
                Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED
            );
            let took = accepted.then(|| posted.elapsed());
            samples.lock().expect("samples lock").push((posted, took));
        });
        while sending.try_join_next().is_some() {}
    }
    while sending.join_next().await.is_some() {}
    Ok(())
}

/// Reconnects as `user` with `since`, coming back after each 503 as told, and reads the replay.
async fn reconnect(
    target: &Target,
    user: &str,
    since: &str,
    replayed: usize,
) -> anyhow::Result<(Reconnect, crate::target::Socket)> {
    let url = format!(
        "{}/ws?token={}&since={since}",
        target.ws(0),
        target.token(user)
    );
    let first_attempt = Instant::now();
    let mut refused = 0;
    let mut socket = loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((socket, _)) => break socket,
            Err(tungstenite::Error::Http(response)) if response.status() == 503 => {
                refused += 1;
                let wait = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("reconnecting as {user}")),
        }
    };
    let upgraded = first_attempt.elapsed();
    for got in 0..replayed {
        let frame = socket
            .next()
            .await
            .with_context(|| format!("{user}'s socket ended after {got} replayed frames"))??;
        if let Message::Text(text) = frame {
            anyhow::ensure!(
                !text.contains("recovery_limit_exceeded"),
                "{user} missed more than RECOVERY_LIMIT: raise it to at least {replayed}"
            );
        }
    }
    Ok((
        Reconnect {
            upgraded,
            replayed: first_attempt.elapsed(),
            refused,
        },
        socket,
    ))
}

/// Waits until the server counts no socket of `users`.
async fn await_closed(target: &Target, users: &[String]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let url = format!("{}/api/connections", target.http(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts: Value = client
            .post(&url)
            .json(&serde_json::json!({ "users": users }))
            .send()
            .await?
            .json()
            .await?;
        let open: u64 = users.iter().filter_map(|u| counts[u].as_u64()).sum();
        if open == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{open} sockets still open after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Latencies of the sends posted in `[from, to)`, in microseconds.
fn window(samples: &[Sample], from: Instant, to: Instant) -> Histogram<u64> {
    let mut latencies = histogram();
    for (posted, took) in samples {
        if let (true, Some(took)) = (*posted >= from && *posted < to, took) {
            latencies.saturating_record(took.as_micros() as u64);
        }
    }
    latencies
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
