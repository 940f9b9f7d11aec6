//! What the load goes to: a chatd (or the ceiling server) this process starts on a temporary
//! data directory, or one already running at `--url` (with `--pid`, whose CPU and memory to
//! report).

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
    /// `http://host:port`
    pub http: String,
    /// `ws://host:port`
    pub ws: String,
    auth: Authenticator,
    pub process: Option<Server>,
    /// The server's CPU and memory: the process this bench started, or `--pid`.
    usage: Option<ProcessUsage>,
}

/// A client's WebSocket, as `connect_async` opens it.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Target {
    /// A server already running at `url`; `pid`, when given, is whose CPU and memory to report.
    pub fn remote(url: &str, secret: &str, pid: Option<u32>) -> anyhow::Result<Self> {
        let http = url.trim_end_matches('/').to_string();
        Ok(Self {
            ws: http.replacen("http", "ws", 1),
            http,
            auth: Authenticator::new(secret.as_bytes()),
            process: None,
            usage: pid.map(ProcessUsage::watch).transpose()?,
        })
    }

    pub fn local(server: Server, secret: &str) -> anyhow::Result<Self> {
        let http = format!("http://{}", server.addr);
        Ok(Self {
            ws: format!("ws://{}", server.addr),
            http,
            auth: Authenticator::new(secret.as_bytes()),
            usage: Some(ProcessUsage::watch(server.child.id())?),
            process: Some(server),
        })
    }

    pub fn token(&self, user: &str) -> String {
        let user = UserId::parse(user).expect("bench user ids are valid");
        self.auth.issue(&user, Duration::from_secs(24 * 3600))
    }

    /// Opens `/ws` as `user` with the token in an `Authorization: Bearer` header, as the
    /// original Go service's clients do: that service never reads `?token=`, and the bench
    /// must measure any server that speaks the contract.
    pub async fn connect(&self, user: &str) -> anyhow::Result<Socket> {
        let mut request = format!("{}/ws", self.ws).into_client_request()?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.token(user)))?;
        request.headers_mut().insert(AUTHORIZATION, bearer);
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("opening {}/ws as {user}", self.ws))?;
        Ok(socket)
    }

    /// The server's CPU time so far (user + system), when its pid is known.
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.usage.as_ref()?.cpu_seconds()
    }

    /// The server's resident memory in KiB, when its pid is known.
    pub fn rss_kib(&self) -> Option<u64> {
        self.usage.as_ref()?.rss_kib()
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
