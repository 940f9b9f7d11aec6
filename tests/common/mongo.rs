//! A real MongoDB-wire server for the tests: SecantusDB (MongoDB's wire protocol on WiredTiger),
//! installed from PyPI into a virtual environment under `target/` the first time a test needs
//! it, and started per test on a free port with its own storage. `MONGO_TEST_URI` points the
//! tests that need no control over the server at another one (a real mongod, say) instead.

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use mongodb::Client;
use mongodb::bson::doc;
use mongodb::options::ClientOptions;
use tempfile::TempDir;

const SECANTUS: &str = "SecantusDB==0.7.0b3";

pub struct MongoServer {
    pub uri: String,
    /// `None` for a server named by `MONGO_TEST_URI`, which the tests do not control.
    local: Option<LocalServer>,
}

struct LocalServer {
    child: Option<Child>,
    port: u16,
    storage: TempDir,
}

impl MongoServer {
    /// The server named by `MONGO_TEST_URI`, or else a fresh local SecantusDB.
    pub async fn start() -> Self {
        match std::env::var("MONGO_TEST_URI") {
            Ok(uri) if !uri.is_empty() => Self { uri, local: None },
            _ => Self::start_local().await,
        }
    }

    /// Always a local SecantusDB, for tests that stop and restart the server.
    pub async fn start_local() -> Self {
        let port = free_port();
        let local = LocalServer {
            child: None,
            port,
            storage: tempfile::tempdir().expect("temp dir"),
        };
        let mut server = Self {
            uri: format!("mongodb://127.0.0.1:{port}"),
            local: Some(local),
        };
        server.restart().await;
        server
    }

    /// A database name no other test uses.
    pub fn database() -> String {
        format!("chatd_test_{:016x}", rand::random::<u64>())
    }

    pub async fn client(&self) -> Client {
        let mut options = ClientOptions::parse(&self.uri)
            .await
            .expect("a MongoDB URI");
        options.server_selection_timeout = Some(Duration::from_secs(10));
        Client::with_options(options).expect("a client")
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        let local = self.local.as_mut().expect("a local server");
        if let Some(mut child) = local.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port and storage and waits until it answers.
    pub async fn restart(&mut self) {
        let local = self.local.as_mut().expect("a local server");
        assert!(local.child.is_none(), "the server is already running");
        let log = File::create(local.storage.path().with_extension("log")).expect("a log file");
        let child = Command::new(secantus_binary())
            .args(["--host", "127.0.0.1", "--port", &local.port.to_string()])
            .arg("--storage-path")
            .arg(local.storage.path())
            .args(["--log-level", "WARNING", "--sync-on-commit"])
            // `configureFailPoint`, for tests that make the server answer as a failing-over
            // replica set would.
            .arg("--enable-test-commands")
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .expect("secantusd-py starts");
        local.child = Some(child);
        self.await_ready().await;
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        let child = self
            .local
            .as_ref()
            .and_then(|l| l.child.as_ref())
            .expect("a running local server");
        let pid = i32::try_from(child.id()).expect("a pid");
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    async fn await_ready(&self) {
        let client = self.client().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match client
                .database("admin")
                .run_command(doc! { "ping": 1 })
                .await
            {
                Ok(_) => return,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!(
                        "the MongoDB-wire server at {} did not answer: {e}",
                        self.uri
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        if let Some(local) = &mut self.local
            && let Some(mut child) = local.child.take()
        {
            let pid = i32::try_from(child.id()).expect("a pid");
            // A paused server must be woken to die. SAFETY: as in `signal`.
            unsafe { libc::kill(pid, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("an address")
        .port()
}

/// `secantusd-py`, installed on first use into `target/tmp/secantus-venv`. A file lock makes
/// concurrent test binaries install it once.
fn secantus_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
            let venv = root.join("secantus-venv");
            let binary = venv.join("bin").join("secantusd-py");
            if binary.exists() {
                return binary;
            }
            fs::create_dir_all(root).expect("target/tmp");
            let lock = File::create(root.join("secantus-venv.lock")).expect("a lock file");
            lock.lock().expect("the install lock");
            if !binary.exists() {
                eprintln!(
                    "installing {SECANTUS} into {} (first run only)",
                    venv.display()
                );
                run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
                run(Command::new(venv.join("bin").join("pip"))
                    .args(["install", "--quiet", SECANTUS]));
            }
            binary
        })
        .clone()
}

fn run(command: &mut Command) {
    let status = command.stdin(Stdio::null()).status();
    match status {
        Ok(status) if status.success() => {}
        other => panic!(
            "{command:?} failed ({other:?}): the MongoDB tests need python3 with venv and pip, \
             and PyPI to install {SECANTUS}"
        ),
    }
}
