//! A real NATS server with JetStream per test: Debian's `nats-server`, started on a free port
//! with a store directory of its own, so tests never share a stream.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

const NATS_SERVER: &str = "nats-server";

pub struct NatsServer {
    pub url: String,
    port: u16,
    store: TempDir,
    child: Option<Child>,
}

impl NatsServer {
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("an address")
            .port();
        let mut server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        server.restart().await;
        server
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store (streams survive), once killed.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the NATS server is running");
        let child = Command::new(NATS_SERVER)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {NATS_SERVER} (Debian's package nats-server; .ci/run installs it): {e}")
            });
        self.child = Some(child);
        self.await_jetstream().await;
    }

    /// A client of this server's JetStream.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.url.as_str())
            .await
            .expect("connect to NATS");
        async_nats::jetstream::new(client)
    }

    /// Until JetStream answers: the port opens before JetStream has read its store.
    async fn await_jetstream(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = async {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(1))
                    .connect(self.url.as_str())
                    .await
                    .ok()?;
                // Raw: nats-server 2.9's account info lacks fields async-nats's type requires.
                client.request("$JS.API.INFO", "".into()).await.ok()
            };
            if ready.await.is_some() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "NATS at {} did not start JetStream",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
