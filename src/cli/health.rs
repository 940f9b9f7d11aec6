//! `chatd health`: asks a running chatd whether it is alive, for the container's health check
//! (which needs no curl, and works over TLS).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde_json::Value;

use crate::config::Config;

/// Succeeds when `/health` answers 200 with `"status":"ok"`.
pub(super) async fn run(
    config: &Config,
    url: Option<String>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let explicit = url.is_some();
    let url = url.unwrap_or_else(|| local_url(config));
    let url = format!("{}/health", url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(timeout)
        // Its own port over TLS: the certificate names the public host, not the loopback.
        .danger_accept_invalid_certs(!explicit)
        .build()?;
    let response = client.get(&url).send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() && body["status"] == "ok" {
        println!("ok");
        return Ok(());
    }
    anyhow::bail!("{url} answered {status}: {body}")
}

/// This machine's chatd: `HOST` (the loopback when it listens on every address) and `PORT`.
fn local_url(config: &Config) -> String {
    let scheme = if config.http.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = match config.host {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let host = match host {
        IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("{scheme}://{host}:{}", config.port)
}
