//! The real `chatd` binary as a child process, and its command line.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};

use chatd::ready_file::Ready;
use serde_json::{Value, json};
use tempfile::TempDir;

use super::{DEADLINE, token_for};

/// The name of a started chatd's `--ready-file`, in a directory of its own.
const READY_FILE: &str = "ready.json";

pub struct Chatd {
    pub child: Child,
    pub addr: SocketAddr,
    secret: String,
    http: reqwest::Client,
    logs: Arc<Mutex<Vec<String>>>,
    /// Holds the `--ready-file`, apart from the data directory the test looks into.
    ready_dir: TempDir,
}

/// `ulimit -n` for a child: its soft and hard limits on open files.
#[derive(Debug, Clone, Copy)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

/// `chatd` serving on 127.0.0.1, a free port and `data_dir`, with `env` on top.
pub fn serve_command(data_dir: &Path, secret: &str, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatd"));
    command
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("DATA_DIR", data_dir)
        .env("JWT_SECRET", secret)
        .env("RATE_LIMIT_RPS", "0")
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "pretty")
        .envs(env.iter().copied());
    command
}

/// Starts `command`'s process with `limit` as its `ulimit -n`.
pub fn limit_fds(command: &mut Command, limit: FdLimit) -> &mut Command {
    let limit = libc::rlimit {
        rlim_cur: limit.soft,
        rlim_max: limit.hard,
    };
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit, which
    // is async-signal-safe, on a value copied in beforehand.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
}

/// Runs `command`, which must end by itself (a chatd that refuses to start), and returns how it
/// exited and what it wrote to stderr. Fails the test, killing it, if it is still running after
/// [`DEADLINE`].
pub fn run_to_exit(command: &mut Command) -> (ExitStatus, String) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chatd starts");
    let pid = i32::try_from(child.id()).unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (done, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = done.send((child.wait(), text));
    });
    match exited.recv_timeout(DEADLINE) {
        Ok((status, stderr)) => (status.expect("waiting for chatd"), stderr),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("chatd is still running: it was expected to refuse to start");
        }
    }
}

impl Chatd {
    /// Starts the binary on `data_dir` and waits for it to say where it listens.
    pub fn start(data_dir: &Path, secret: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(&mut serve_command(data_dir, secret, env), secret)
    }

    /// Like [`Chatd::start`], with `limit` as the process's `ulimit -n`.
    pub fn start_with_fd_limit(
        data_dir: &Path,
        secret: &str,
        env: &[(&str, &str)],
        limit: FdLimit,
    ) -> Self {
        let mut command = serve_command(data_dir, secret, env);
        Self::spawn(limit_fds(&mut command, limit), secret)
    }

    /// Starts `command` with a `--ready-file` and reads its address from there once chatd
    /// writes it.
    fn spawn(command: &mut Command, secret: &str) -> Self {
        let ready_dir = tempfile::tempdir().unwrap();
        let ready_file = ready_dir.path().join(READY_FILE);
        let mut child = command
            .arg("--ready-file")
            .arg(&ready_file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chatd starts");
        // Forward the log so the pipe never fills, and keep it for tests that read it.
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let kept = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[chatd] {line}");
                kept.lock().unwrap().push(line);
            }
        });
        let ready = Ready::wait_for(&ready_file, &mut child, DEADLINE)
            .unwrap_or_else(|e| panic!("chatd did not start: {e:#}"));
        Self {
            child,
            addr: ready.addr,
            secret: secret.to_string(),
            http: reqwest::Client::new(),
            logs,
            ready_dir,
        }
    }

    /// The `--ready-file` this chatd was started with.
    pub fn ready_file(&self) -> PathBuf {
        self.ready_dir.path().join(READY_FILE)
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
