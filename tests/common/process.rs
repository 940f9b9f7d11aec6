//! The real `chatd` binary as a child process, and its command line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};

use serde_json::{Value, json};

use super::{DEADLINE, token_for};

pub struct Chatd {
    pub child: Child,
    pub addr: SocketAddr,
    secret: String,
    http: reqwest::Client,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Chatd {
    /// Starts the binary on `data_dir` and waits for it to say where it listens.
    pub fn start(data_dir: &Path, secret: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("DATA_DIR", data_dir)
            .env("JWT_SECRET", secret)
            .env("RATE_LIMIT_RPS", "0")
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "pretty")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chatd starts");
        // Forward the log so the pipe never fills, and pick out the listening address.
        let (lines, listening) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let kept = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[chatd] {line}");
                kept.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("listening addr=").nth(1) {
                    let _ = lines.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
            }
        });
        let addr = listening
            .recv_timeout(DEADLINE)
            .expect("chatd logs its address");
        Self {
            child,
            addr: addr.parse().expect("a socket address"),
            secret: secret.to_string(),
            http: reqwest::Client::new(),
            logs,
        }
    }

    /// chatd's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("/proc");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// Every line chatd has logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub async fn metrics(&self) -> String {
        let response = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn send(&self, sender: &str, participants: &[&str], content: &str) -> Value {
        let response = self
            .http
            .post(self.url("/api/messages"))
            .bearer_auth(token_for(&self.secret, sender))
            .json(&json!({"participants": participants, "content": content}))
            .send()
            .await
            .expect("POST /api/messages");
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        body["message"].clone()
    }

    /// Every message of a channel, newest first, walking the `before` cursor.
    pub async fn whole_history(&self, reader: &str, participants: &str) -> Vec<Value> {
        let mut all: Vec<Value> = Vec::new();
        loop {
            let mut url = self.url(&format!(
                "/api/messages/get?participants={participants}&size=100"
            ));
            if let Some(last) = all.last() {
                url.push_str(&format!("&before={}", last["id"].as_str().unwrap()));
            }
            let response = self
                .http
                .get(url)
                .bearer_auth(token_for(&self.secret, reader))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let page: Vec<Value> = response.json().await.unwrap();
            if page.is_empty() {
                return all;
            }
            all.extend(page);
        }
    }

    pub async fn pending(&self) -> u64 {
        let health: Value = self
            .http
            .get(self.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        health["outbox"]["pending"].as_u64().unwrap()
    }
}

impl Drop for Chatd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `chatd <args>` to completion with `env` and returns what it did.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("chatd runs")
}
