//! A real chatd per test: started through `chatd::app::start` on 127.0.0.1 with a random port
//! and its own data directory, driven over real TCP with HTTP and WebSocket clients.
#![allow(dead_code)] // each test binary uses its own share of these helpers

pub mod mongo;
pub mod nats;
pub mod process;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use chatd::app::{self, RunningApp};
use chatd::auth::Authenticator;
use chatd::config::Config;
use chatd::model::UserId;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct TestServer {
    app: Option<RunningApp>,
    pub addr: SocketAddr,
    pub data_dir: TempDir,
    vars: HashMap<String, String>,
    secret: String,
    pub http: reqwest::Client,
}

impl TestServer {
    /// A chatd with the rate limit off; `overrides` set any other variable.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(overrides: &[(&str, &str)]) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let secret = format!("test-secret-{}", rand::random::<u64>());
        let mut vars: HashMap<String, String> = [
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("RATE_LIMIT_RPS", "0"),
            ("JWT_SECRET", secret.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        vars.insert("DATA_DIR".into(), data_dir.path().display().to_string());
        for (k, v) in overrides {
            vars.insert(k.to_string(), v.to_string());
        }
        // Instances of one cluster share theirs.
        let secret = vars["JWT_SECRET"].clone();
        let app = launch(&vars).await;
        Self {
            addr: app.addr(),
            app: Some(app),
            data_dir,
            vars,
            secret,
            http: reqwest::Client::new(),
        }
    }

    /// Stops gracefully and starts again on the same data directory (and a new port).
    pub async fn restart(&mut self) {
        self.app.take().expect("running").shutdown().await;
        let app = launch(&self.vars).await;
        self.addr = app.addr();
        self.app = Some(app);
    }

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn scrape(&self) -> String {
        let response = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// `/metrics` on its own listener, when `METRICS_PORT` is set.
    pub fn metrics_url(&self) -> Option<String> {
        let addr = self.app.as_ref()?.metrics_addr()?;
        Some(format!("http://{addr}/metrics"))
    }

    /// `GET /ready`'s status and body, whichever it is.
    pub async fn ready(&self) -> (u16, Value) {
        let response = self
            .http
            .get(self.url("/ready"))
            .send()
            .await
            .expect("GET /ready");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    pub async fn health(&self) -> Value {
        let response = self
            .http
            .get(self.url("/health"))
            .send()
            .await
            .expect("GET /health");
        assert_eq!(response.status(), 200);
        response.json().await.expect("JSON body")
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn token(&self, user: &str) -> String {
        token_for(&self.secret, user)
    }

    pub async fn send(
        &self,
        sender: &str,
        participants: &[&str],
        content: &str,
    ) -> reqwest::Response {
        self.http
            .post(self.url("/api/messages"))
            .bearer_auth(self.token(sender))
            .json(&json!({ "participants": participants, "content": content }))
            .send()
            .await
            .expect("POST /api/messages")
    }

    /// Sends and returns the accepted message, failing the test unless the answer is 202.
    pub async fn send_ok(&self, sender: &str, participants: &[&str], content: &str) -> Value {
        let response = self.send(sender, participants, content).await;
        let status = response.status();
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(status, 202, "send refused: {body}");
        assert_eq!(body["status"], "message queued");
        body["message"].clone()
    }

    /// `GET {path}` as `user`: the status and the JSON body.
    pub async fn get_as(&self, user: &str, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(self.token(user))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// `GET /api/messages/get?{query}` as `reader`: the status and the JSON body.
    pub async fn get_history(&self, reader: &str, query: &str) -> (u16, Value) {
        self.get_as(reader, &format!("/api/messages/get?{query}"))
            .await
    }

    pub async fn history(&self, reader: &str, query: &str) -> Vec<Value> {
        let (status, body) = self.get_history(reader, query).await;
        assert_eq!(status, 200, "history refused: {body}");
        body.as_array().expect("an array").clone()
    }

    /// Waits until the channel's history holds `count` messages and returns them (newest first).
    pub async fn stored(&self, reader: &str, participants: &str, count: usize) -> Vec<Value> {
        eventually(
            &format!("{count} messages stored for {participants}"),
            || async {
                let page = self
                    .history(reader, &format!("participants={participants}&size=100"))
                    .await;
                (page.len() == count).then_some(page)
            },
        )
        .await
    }

    pub async fn connections(&self, users: &[&str]) -> Value {
        let response = self
            .http
            .post(self.url("/api/connections"))
            .json(&json!({ "users": users }))
            .send()
            .await
            .expect("POST /api/connections");
        assert_eq!(response.status(), 200);
        response.json().await.expect("JSON body")
    }

    /// Waits until `user` has exactly `count` sockets registered.
    pub async fn await_connections(&self, user: &str, count: u64) {
        eventually(&format!("{user} has {count} sockets"), || async {
            (self.connections(&[user]).await[user] == count).then_some(())
        })
        .await
    }

    pub async fn ws(&self, user: &str) -> WsClient {
        self.ws_with_query(user, "").await
    }

    /// A socket whose upgrade URL carries more parameters, e.g. `&since=<id>`.
    pub async fn ws_with_query(&self, user: &str, query: &str) -> WsClient {
        let url = format!("ws://{}/ws?token={}{query}", self.addr, self.token(user));
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket upgrade");
        WsClient { stream }
    }

    /// A socket whose kernel receive buffer is small, so that a client that stops reading
    /// backs up into the server quickly and has little to read once it starts again.
    pub async fn ws_with_small_buffer(&self, user: &str) -> WsClient {
        self.ws_with_small_buffer_and_query(user, "").await
    }

    /// [`Self::ws_with_small_buffer`] with more parameters, e.g. `&since=<id>`.
    pub async fn ws_with_small_buffer_and_query(&self, user: &str, query: &str) -> WsClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
        let tcp = socket.connect(self.addr).await.expect("connect");
        let url = format!("ws://{}/ws?token={}{query}", self.addr, self.token(user));
        let (stream, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .expect("WebSocket upgrade");
        WsClient { stream }
    }

    /// Watches, in the background, for `user`'s socket to be evicted (it leaves
    /// `/api/connections` at once), then reads it to its close frame: within the server's close
    /// grace, however long the flood that caused it goes on.
    pub fn close_code_after_eviction(
        &self,
        user: &str,
        mut socket: WsClient,
    ) -> tokio::task::JoinHandle<Option<u16>> {
        let (http, url, user) = (
            self.http.clone(),
            self.url("/api/connections"),
            user.to_string(),
        );
        tokio::spawn(async move {
            // Watching starts with the flood and must outlast it, however long a busy machine
            // takes to send it: the eviction comes when the socket's queue overflows.
            eventually_within(
                5 * DEADLINE,
                &format!("{user}'s socket is evicted"),
                || async {
                    let request = http.post(&url).json(&json!({ "users": [&user] }));
                    let counts: Value = request.send().await.ok()?.json().await.ok()?;
                    (counts[&user] == 0).then_some(())
                },
            )
            .await;
            socket.close_code().await
        })
    }

    /// The upgrade's refusal status, for a URL that must be refused.
    pub async fn ws_refused(&self, query: &str) -> u16 {
        let url = format!("ws://{}/ws{}", self.addr, query);
        match tokio_tungstenite::connect_async(url).await {
            Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
            Err(e) => panic!("expected an HTTP refusal, got {e}"),
            Ok(_) => panic!("the upgrade was accepted"),
        }
    }

    /// This server's configuration, for starting another chatd beside it.
    pub fn config(&self) -> Config {
        config(&self.vars)
    }
}

fn config(vars: &HashMap<String, String>) -> Config {
    Config::from_lookup(|name| vars.get(name).cloned()).expect("valid test config")
}

/// A [`TestServer`]-like view of a chatd child process, for its socket helpers.
pub fn process_target(chatd: &process::Chatd, secret: &str) -> TestServer {
    TestServer {
        app: None,
        addr: chatd.addr,
        data_dir: tempfile::tempdir().expect("temp dir"),
        vars: HashMap::new(),
        secret: secret.to_string(),
        http: reqwest::Client::new(),
    }
}

async fn launch(vars: &HashMap<String, String>) -> RunningApp {
    app::start(config(vars)).await.expect("chatd starts")
}

/// Runs statements on the embedded store's own file in `data_dir`, beside a running chatd.
pub fn on_store(data_dir: &std::path::Path, sql: &str) {
    let conn = rusqlite::Connection::open(data_dir.join(chatd::store::SQLITE_FILE)).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch(sql).unwrap();
}

pub fn token_for(secret: &str, user: &str) -> String {
    let user = UserId::parse(user).expect("valid user id");
    Authenticator::new(secret.as_bytes()).issue(&user, Duration::from_secs(3600))
}

/// The value of one exact series line of a Prometheus scrape, e.g.
/// `chat_messages_rejected_total{reason="forbidden"}`.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} is not in\n{text}"))
        .parse()
        .unwrap()
}

/// Polls `check` until it yields a value, failing the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(DEADLINE, what, check).await
}

/// [`eventually`] with a deadline of its own.
pub async fn eventually_within<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What a socket saw next.
#[derive(Debug)]
pub enum Seen {
    Message(Value),
    Ping,
    Closed(Option<CloseFrame>),
}

impl WsClient {
    /// The next text frame, control frames aside, as JSON.
    pub async fn next_message(&mut self) -> Value {
        loop {
            match self.next().await {
                Seen::Message(message) => return message,
                Seen::Ping => continue,
                Seen::Closed(frame) => {
                    panic!("socket closed while a message was expected: {frame:?}")
                }
            }
        }
    }

    /// Every message up to and including the first whose content is `marker`.
    pub async fn messages_until(&mut self, marker: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let message = self.next_message().await;
            let done = message["content"] == marker;
            seen.push(message);
            if done {
                return seen;
            }
        }
    }

    pub async fn next(&mut self) -> Seen {
        let frame = tokio::time::timeout(DEADLINE, self.stream.next())
            .await
            .expect("timed out waiting for a frame");
        match frame {
            Some(Ok(WsMessage::Text(text))) => {
                Seen::Message(serde_json::from_str(&text).expect("JSON frame"))
            }
            Some(Ok(WsMessage::Ping(_))) => Seen::Ping,
            Some(Ok(WsMessage::Close(frame))) => Seen::Closed(frame),
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            Some(Err(_)) | None => Seen::Closed(None),
        }
    }

    /// Counts frames in the background up to the message whose content is `marker`, telling
    /// how far it has got, so a test can keep its senders within a stated distance of this
    /// reader instead of assuming the reader keeps up.
    pub fn spawn_counter(mut self, marker: &str) -> Counter {
        let (progress, seen) = tokio::sync::watch::channel(0);
        let needle = format!("\"content\":{}", serde_json::to_string(marker).unwrap());
        let done = tokio::spawn(async move {
            let mut count = 0;
            loop {
                let frame = tokio::time::timeout(DEADLINE, self.stream.next())
                    .await
                    .expect("timed out waiting for a frame");
                match frame {
                    Some(Ok(WsMessage::Text(text))) => {
                        count += 1;
                        progress.send_replace(count);
                        if text.contains(&needle) {
                            return (count, self);
                        }
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("socket ended while counting frames: {other:?}"),
                }
            }
        });
        Counter { seen, done }
    }

    /// Reads past everything else, unparsed, until the close frame and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.stream.next())
                .await
                .expect("timed out waiting for the close frame");
            match frame {
                Some(Ok(WsMessage::Close(frame))) => return frame.map(|f| f.code.into()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        // Drain until the server's reply, so the server has seen the close.
        while let Some(Ok(_)) = self.stream.next().await {}
    }

    pub async fn send_raw(&mut self, message: WsMessage) {
        self.stream.send(message).await.expect("send a frame");
    }
}

/// A socket being read in the background by [`WsClient::spawn_counter`].
pub struct Counter {
    seen: tokio::sync::watch::Receiver<usize>,
    done: tokio::task::JoinHandle<(usize, WsClient)>,
}

impl Counter {
    /// Waits until the reader has counted at least `frames` frames.
    pub async fn reached(&mut self, frames: usize) {
        tokio::time::timeout(DEADLINE, self.seen.wait_for(|seen| *seen >= frames))
            .await
            .unwrap_or_else(|_| panic!("a reader did not reach {frames} frames"))
            .expect("the reader ended early");
    }

    /// The frames counted up to and including the marker, and the socket, still open.
    pub async fn finish(self) -> (usize, WsClient) {
        self.done.await.expect("the reader")
    }
}

/// A `MONGO_URI` nobody listens on: a port that was free a moment ago, its listener closed.
pub fn unreachable_mongo_uri() -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    format!("mongodb://{closed}")
}
