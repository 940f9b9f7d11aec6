//! Idle sockets: what an open socket that receives nothing costs the server in memory.
//!
//! The sockets counted are the bench's own, not the server's word for them (chatd's `/health`
//! is not in the contract): every upgrade must succeed, and the memory per socket is divided
//! over those still open when the memory is read. Each socket is read while it is held, so it
//! answers the server's pings and a socket the server closes is seen to close.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::{StreamExt, stream};
use indicatif::ProgressBar;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::report::Summary;
use crate::target::{Socket, Target};

pub async fn run(target: &Target, sockets: usize, hold: Duration) -> anyhow::Result<Summary> {
    let Some(before) = target.rss_kib() else {
        bail!(
            "idle measures the server's memory: with --url, give the server's process id as --pid"
        );
    };
    let progress = ProgressBar::new(sockets as u64).with_message("opening sockets");
    let started = Instant::now();
    let opened: Vec<_> = stream::iter(0..sockets)
        .map(|i| async move { target.connect(&format!("idle{i}"), i).await })
        .buffer_unordered(200)
        .inspect(|_| progress.inc(1))
        .collect()
        .await;
    progress.finish_and_clear();
    let opened = opened.into_iter().collect::<Result<Vec<_>, _>>()?;
    let opening_secs = started.elapsed().as_secs_f64();

    let open = Arc::new(AtomicUsize::new(opened.len()));
    let release = CancellationToken::new();
    let held: Vec<_> = opened
        .into_iter()
        .map(|socket| tokio::spawn(hold_open(socket, open.clone(), release.clone())))
        .collect();
    tokio::time::sleep(hold).await;
    let after = target.rss_kib().unwrap_or(before);
    let still_open = open.load(Ordering::Relaxed);
    release.cancel();
    for socket in held {
        socket.await?;
    }
    if still_open == 0 {
        bail!("the server closed all {sockets} sockets while they were held");
    }

    let mut extra = serde_json::Map::new();
    let per_socket = after.saturating_sub(before) as f64 / still_open as f64;
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
    extra.insert(
        "sockets_closed_by_server".into(),
        (sockets - still_open).into(),
    );
    Ok(Summary {
        scenario: "idle".into(),
        target: target.describe(),
        duration_secs: hold.as_secs_f64(),
        sockets: still_open,
        server_rss_kib: Some(after),
        extra,
        ..Summary::default()
    })
}

/// Reads `socket` until `release`, so that pings are answered; if the server ends the socket
/// first, it no longer counts as `open`.
async fn hold_open(mut socket: Socket, open: Arc<AtomicUsize>, release: CancellationToken) {
    loop {
        tokio::select! {
            () = release.cancelled() => return,
            frame = socket.next() => {
                if matches!(frame, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                    open.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}
