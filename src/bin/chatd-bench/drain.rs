//! Drain: how fast the relay empties an outbox full of messages into the store.
//!
//! The outbox is filled by a chatd whose store is unreachable (so nothing drains while it
//! fills), stopped, and started again with a reachable store; the time from that start until
//! the outbox is empty gives the drain rate. For MongoDB the same documents are also written by
//! a bare `insert_many` loop into a fresh database with the same index, as the yardstick.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::{StreamExt, stream};
use indicatif::ProgressBar;
use mongodb::bson::{self, Document, doc};
use serde_json::Value;

use crate::report::Summary;
use crate::target::{Server, Target};

const SECRET: &str = "chatd-bench-drain";
const BATCH: usize = 256;
const SENDERS: usize = 100;

pub async fn run(messages: usize, mongo_uri: Option<&str>) -> anyhow::Result<Summary> {
    let mut extra = serde_json::Map::new();
    let embedded_dir = tempfile::tempdir()?;
    let filled = fill(embedded_dir.path(), messages).await?;
    extra.insert("fill_msgs_per_sec".into(), Value::from(filled.round()));
    let embedded = drain(embedded_dir.path(), messages, &[]).await?;
    extra.insert(
        "embedded_drain_msgs_per_sec".into(),
        Value::from(embedded.round()),
    );

    match mongo_uri {
        Some(uri) => {
            let stamp = Utc::now().format("%Y%m%d%H%M%S").to_string();
            let baseline =
                bare_insert_many(uri, &format!("bench_baseline_{stamp}"), messages).await?;
            extra.insert(
                "mongo_bare_insert_many_docs_per_sec".into(),
                Value::from(baseline.round()),
            );
            let mongo_dir = tempfile::tempdir()?;
            fill(mongo_dir.path(), messages).await?;
            let database = format!("bench_chatd_{stamp}");
            let env = [("MONGO_URI", uri.to_string()), ("MONGO_DB", database)];
            let mongo = drain(mongo_dir.path(), messages, &env).await?;
            extra.insert(
                "mongo_drain_msgs_per_sec".into(),
                Value::from(mongo.round()),
            );
            extra.insert(
                "mongo_fraction_of_bare".into(),
                Value::from((mongo / baseline * 100.0).round() / 100.0),
            );
            extra.insert(
                "mongo_starting_state".into(),
                "baseline first, then chatd, each into a fresh database on the same server".into(),
            );
        }
        None => {
            extra.insert(
                "mongo".into(),
                "skipped: pass --mongo-uri to measure MongoDB".into(),
            );
        }
    }
    Ok(Summary {
        scenario: "drain".into(),
        target: "self-started chatd".into(),
        sent: messages as u64,
        accepted: messages as u64,
        extra,
        ..Summary::default()
    })
}

/// Accepts `messages` into the outbox of a chatd whose store does not answer, then stops it.
/// Returns the accept rate.
async fn fill(data_dir: &Path, messages: usize) -> anyhow::Result<f64> {
    let nowhere = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let env = [
        ("JWT_SECRET", SECRET.to_string()),
        ("MONGO_URI", format!("mongodb://{nowhere}")),
        ("STORE_TIMEOUT", "200ms".into()),
        ("SHUTDOWN_TIMEOUT", "0s".into()),
    ];
    let server = Server::chatd(Some(data_dir.to_path_buf()), &env)?;
    let target = Target::local(server, SECRET)?;
    let tokens: Vec<String> = (0..SENDERS)
        .map(|i| target.token(&format!("sender{i}")))
        .collect();
    let client = reqwest::Client::new();
    let url = format!("{}/api/messages", target.http(0));
    let progress = ProgressBar::new(messages as u64).with_message("filling the outbox");
    let started = Instant::now();
    let failures = stream::iter(0..messages)
        .map(|i| {
            let body = serde_json::json!({
                "participants": [format!("sender{}", i % SENDERS), "reader"],
                "content": format!("drain message {i}"),
            });
            let request = client
                .post(&url)
                .bearer_auth(&tokens[i % SENDERS])
                .json(&body);
            async move {
                request
                    .send()
                    .await
                    .map(|r| r.status() == reqwest::StatusCode::ACCEPTED)
            }
        })
        .buffer_unordered(64)
        .inspect(|_| progress.inc(1))
        .filter(|accepted| std::future::ready(!matches!(accepted, Ok(true))))
        .count()
        .await;
    progress.finish_and_clear();
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(failures == 0, "{failures} sends were not accepted");
    target.process.expect("started here").terminate()?;
    Ok(rate)
}

/// Starts chatd on a filled outbox and returns messages per second until it is empty.
async fn drain(data_dir: &Path, messages: usize, env: &[(&str, String)]) -> anyhow::Result<f64> {
    let mut env = env.to_vec();
    env.push(("JWT_SECRET", SECRET.to_string()));
    let started = Instant::now();
    let server = Server::chatd(Some(data_dir.to_path_buf()), &env)?;
    let url = format!("http://{}/health", server.addr);
    let client = reqwest::Client::new();
    let progress = ProgressBar::new(messages as u64).with_message("draining");
    loop {
        let health: Value = client.get(&url).send().await?.json().await?;
        let pending = health["outbox"]["pending"].as_u64().unwrap_or(u64::MAX);
        progress.set_position(messages as u64 - pending.min(messages as u64));
        if pending == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the outbox did not drain in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.finish_and_clear();
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    drop(server);
    Ok(rate)
}

/// The yardstick: the same documents, written by sequential unordered `insert_many` calls of
/// chatd's batch size into a fresh database with chatd's history index.
async fn bare_insert_many(uri: &str, database: &str, messages: usize) -> anyhow::Result<f64> {
    let client = mongodb::Client::with_uri_str(uri).await?;
    let collection = client.database(database).collection::<Document>("messages");
    let index = mongodb::IndexModel::builder()
        .keys(doc! { "participants": 1, "created_at": -1, "_id": -1 })
        .build();
    collection.create_index(index).await?;
    let docs: Vec<Document> = (0..messages)
        .map(|i| {
            let sender = format!("sender{}", i % SENDERS);
            let mut participants = vec![sender.clone(), "reader".to_string()];
            participants.sort();
            doc! {
                "_id": uuid::Uuid::now_v7().to_string(),
                "sender": sender,
                "content": format!("drain message {i}"),
                "created_at": bson::DateTime::now(),
                "participants": participants,
            }
        })
        .collect();
    let started = Instant::now();
    for batch in docs.chunks(BATCH) {
        collection
            .insert_many(batch.to_vec())
            .ordered(false)
            .await?;
    }
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}
