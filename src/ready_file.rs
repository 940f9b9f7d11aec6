//! `--ready-file`, an interface documented in the README: once listening, a server writes the
//! addresses it actually bound to a file its starter named, so that no program has to parse
//! logs to find a `PORT=0` server. chatd writes it, and so does the bench's ceiling server; the
//! bench and the process tests read it through [`Ready::wait_for`].

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// How often [`Ready::wait_for`] looks for the file.
const POLL: Duration = Duration::from_millis(10);

/// What the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// HTTP and WebSocket.
    pub addr: SocketAddr,
    /// `/metrics` on its own listener (`METRICS_PORT`), if any.
    pub metrics_addr: Option<SocketAddr>,
}

impl Ready {
    /// Writes beside `path`, then renames over it, so that a reader never sees half a file.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        std::fs::write(&partial, serde_json::to_vec(self)?)
            .and_then(|()| std::fs::rename(&partial, path))
            .with_context(|| format!("writing the ready file {}", path.display()))
    }

    /// Waits for `server`, started with `--ready-file path`, to write it: an error if the
    /// server exits first or `within` passes.
    pub fn wait_for(path: &Path, server: &mut Child, within: Duration) -> anyhow::Result<Self> {
        let started = Instant::now();
        loop {
            match std::fs::read(path) {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes)
                        .with_context(|| format!("reading the ready file {}", path.display()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("reading the server's ready file"),
            }
            if let Some(status) = server.try_wait()? {
                bail!("the server exited ({status}) before writing its ready file");
            }
            if started.elapsed() > within {
                bail!("the server wrote no ready file within {within:?}");
            }
            std::thread::sleep(POLL);
        }
    }
}
