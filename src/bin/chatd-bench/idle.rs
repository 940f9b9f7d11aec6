//! Idle sockets: what an open socket that receives nothing costs the server in memory.

use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::{StreamExt, stream};
use indicatif::ProgressBar;
use serde_json::Value;

use crate::report::Summary;
use crate::target::Target;

pub async fn run(target: &Target, sockets: usize, hold: Duration) -> anyhow::Result<Summary> {
    let Some(before) = target.rss_kib() else {
        bail!("idle measures the server's memory: run it without --url so it starts chatd itself");
    };
    let client = reqwest::Client::new();
    let progress = ProgressBar::new(sockets as u64).with_message("opening sockets");
    let started = Instant::now();
    let opened: Vec<_> = stream::iter(0..sockets)
        .map(|i| {
            let url = format!(
                "{}/ws?token={}",
                target.ws,
                target.token(&format!("idle{i}"))
            );
            async move {
                tokio_tungstenite::connect_async(url)
                    .await
                    .map(|(socket, _)| socket)
            }
        })
        .buffer_unordered(200)
        .inspect(|_| progress.inc(1))
        .collect()
        .await;
    progress.finish_and_clear();
    let opened = opened.into_iter().collect::<Result<Vec<_>, _>>()?;
    let opening_secs = started.elapsed().as_secs_f64();
    let health: Value = client
        .get(format!("{}/health", target.http))
        .send()
        .await?
        .json()
        .await?;
    if health["sockets"].as_u64() != Some(sockets as u64) {
        bail!(
            "the server counts {} sockets, not {sockets}",
            health["sockets"]
        );
    }
    tokio::time::sleep(hold).await;
    let after = target.rss_kib().unwrap_or(before);
    drop(opened);

    let mut extra = serde_json::Map::new();
    let per_socket = after.saturating_sub(before) as f64 / sockets as f64;
    extra.insert("rss_before_kib".into(), before.into());
    extra.insert("rss_after_kib".into(), after.into());
    extra.insert(
        "rss_per_socket_kib".into(),
        Value::from((per_socket * 100.0).round() / 100.0),
    );
    extra.insert(
        "sockets_per_sec".into(),
        Value::from((sockets as f64 / opening_secs).round()),
    );
    Ok(Summary {
        scenario: "idle".into(),
        target: target.http.clone(),
        duration_secs: hold.as_secs_f64(),
        sockets,
        server_rss_kib: Some(after),
        extra,
        ..Summary::default()
    })
}
