//! What the load goes to: a chatd (or the ceiling server) this process starts on a temporary
//! data directory, or servers already running at one or more `--url`s (with `--pid`s, whose CPU
//! and memory to report). Several urls are instances of one cluster: clients are spread over
//! them round robin, client i on the i-th modulo their number.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use chatd::auth::Authenticator;
use chatd::model::UserId;
use chatd::ready_file::Ready;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::process_usage::ProcessUsage;

/// How long a server the bench starts may take to say where it listens.
const READY_WITHIN: Duration = Duration::from_secs(30);

pub struct Target {
    /// Where each server listens, in the order of the `--url`s; one when the bench started it.
    endpoints: Vec<Endpoint>,
    auth: Authenticator,
    pub process: Option<Server>,
    /// The servers' CPU and memory: the process this bench started, or each `--pid`.
    usage: Vec<ProcessUsage>,
}

struct Endpoint {
    /// `http://host:port`
    http: String,
    /// `ws://host:port`
    ws: String,
}

/// One watched process's part of the figures, for a report on several.
pub struct Usage {
    pub pid: u32,
    pub cpu_seconds: Option<f64>,
    pub rss_kib: Option<u64>,
}

/// A client's WebSocket, as `connect_async` opens it.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Target {
    /// Servers already running at `urls` (at least one), sharing `secret`; `pids` are the
    /// processes whose CPU and memory to report, summed (none: neither is reported).
    pub fn remote(urls: &[String], secret: &str, pids: &[u32]) -> anyhow::Result<Self> {
        anyhow::ensure!(!urls.is_empty(), "no server to load");
        let endpoints = urls
            .iter()
            .map(|url| {
                let http = url.trim_end_matches('/').to_string();
                Endpoint {
                    ws: http.replacen("http", "ws", 1),
                    http,
                }
            })
            .collect();
        Ok(Self {
            endpoints,
            auth: Authenticator::new(secret.as_bytes()),
            process: None,
            usage: pids
                .iter()
                .map(|pid| ProcessUsage::watch(*pid))
                .collect::<anyhow::Result<_>>()?,
        })
    }

    pub fn local(server: Server, secret: &str) -> anyhow::Result<Self> {
        Ok(Self {
            endpoints: vec![Endpoint {
                http: format!("http://{}", server.addr),
                ws: format!("ws://{}", server.addr),
            }],
            auth: Authenticator::new(secret.as_bytes()),
            usage: vec![ProcessUsage::watch(server.child.id())?],
            process: Some(server),
        })
    }

    /// `http://host:port` of the server that client `i` (a socket, or a sender) uses: the
    /// servers in turn, so that with several the clients are spread evenly over them.
    pub fn http(&self, i: usize) -> &str {
        &self.endpoint(i).http
    }

    /// `ws://host:port` of the server that client `i` uses, as [`Self::http`].
    pub fn ws(&self, i: usize) -> &str {
        &self.endpoint(i).ws
    }

    fn endpoint(&self, i: usize) -> &Endpoint {
        &self.endpoints[i % self.endpoints.len()]
    }

    /// How many servers the clients are spread over.
    pub fn servers(&self) -> usize {
        self.endpoints.len()
    }

    /// The servers as a report names them: the url, or the urls separated by commas.
    pub fn describe(&self) -> String {
        let urls: Vec<&str> = self.endpoints.iter().map(|e| e.http.as_str()).collect();
        urls.join(", ")
    }

    pub fn token(&self, user: &str) -> String {
        let user = UserId::parse(user).expect("bench user ids are valid");
        self.auth.issue(&user, Duration::from_secs(24 * 3600))
    }

    /// Opens `/ws` as `user` on client `i`'s server (see [`Self::http`]) with the token in an
    /// `Authorization: Bearer` header, as the original Go service's clients do: that service
    /// never reads `?token=`, and the bench must measure any server that speaks the contract.
    pub async fn connect(&self, user: &str, i: usize) -> anyhow::Result<Socket> {
        let ws = self.ws(i);
        let mut request = format!("{ws}/ws").into_client_request()?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.token(user)))?;
        request.headers_mut().insert(AUTHORIZATION, bearer);
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("opening {ws}/ws as {user}"))?;
        Ok(socket)
    }

    /// The servers' resident memory in KiB, summed over every pid, when their pids are known
    /// and each still reads.
    pub fn rss_kib(&self) -> Option<u64> {
        sum(self.usage.iter().map(ProcessUsage::rss_kib))
    }

    /// Each watched process's CPU time so far (user + system) and memory now, in the order of
    /// the `--pid`s.
    pub fn usage_each(&self) -> Vec<Usage> {
        self.usage
            .iter()
            .map(|usage| Usage {
                pid: usage.pid(),
                cpu_seconds: usage.cpu_seconds(),
                rss_kib: usage.rss_kib(),
            })
            .collect()
    }
}

/// A server process this bench started; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    /// The data directory, when the bench made it; removed with the server.
    _temp: Option<TempDir>,
    /// Holds the server's `--ready-file`.
    _ready_dir: TempDir,
}

impl Server {
    /// `chatd` from beside this binary, with `env` on top of bench-friendly settings.
    pub fn chatd(data_dir: Option<PathBuf>, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let (temp, data_dir) = match data_dir {
            Some(dir) => (None, dir),
            None => {
                let temp = tempfile::tempdir()?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let mut command = Command::new(sibling("chatd")?);
        command
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("DATA_DIR", &data_dir)
            .env("RATE_LIMIT_RPS", "0")
            .env("RUST_LOG", "warn")
            .env("LOG_FORMAT", "pretty");
        for (name, value) in env {
            command.env(name, value);
        }
        Self::spawn(command, temp)
    }

    /// The bare broadcast server the fan-out figure is compared with.
    pub fn ceiling() -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command.arg("ceiling-server");
        Self::spawn(command, None)
    }

    /// Starts `command` with a `--ready-file` and waits for the address the server writes
    /// there once listening (chatd documents the file as its interface for this). Its log goes
    /// to this process's stderr.
    fn spawn(mut command: Command, temp: Option<TempDir>) -> anyhow::Result<Self> {
        let ready_dir = tempfile::tempdir()?;
        let ready_file = ready_dir.path().join("ready.json");
        let mut child = command
            .arg("--ready-file")
            .arg(&ready_file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
            }
        });
        let ready = Ready::wait_for(&ready_file, &mut child, READY_WITHIN)?;
        Ok(Self {
            child,
            addr: ready.addr.to_string(),
            _temp: temp,
            _ready_dir: ready_dir,
        })
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(mut self) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of `values`, or `None` when there are none or any is missing: a total that left a
/// process out would pass for the whole.
pub fn sum<T: std::iter::Sum<T>>(values: impl Iterator<Item = Option<T>>) -> Option<T> {
    let values: Option<Vec<T>> = values.collect();
    values
        .filter(|v| !v.is_empty())
        .map(|v| v.into_iter().sum())
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found: build it too (cargo build --release --features bench)",
            path.display()
        );
    }
    Ok(path)
}
