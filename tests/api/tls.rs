//! TLS_CERT and TLS_KEY: chatd serves HTTPS and WSS itself, with a certificate generated here.

use std::sync::Arc;

use crate::common::TestServer;
use futures_util::StreamExt;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

struct Tls {
    server: TestServer,
    connector: TlsConnector,
    _files: tempfile::TempDir,
}

impl Tls {
    async fn start() -> Self {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let files = tempfile::tempdir().unwrap();
        let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        let server = TestServer::start_with(&[
            ("TLS_CERT", cert.to_str().unwrap()),
            ("TLS_KEY", key.to_str().unwrap()),
        ])
        .await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(generated.cert.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Self {
            server,
            connector: TlsConnector::from(Arc::new(config)),
            _files: files,
        }
    }

    async fn connect(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.server.addr).await.unwrap();
        self.connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("a TLS handshake")
    }

    /// One HTTP/1.1 request over TLS; the whole answer.
    async fn request(&self, method: &str, path: &str, token: &str, body: &str) -> String {
        let mut stream = self.connect().await;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }
}

#[tokio::test]
async fn https_and_wss_are_served_with_the_configured_certificate() {
    let tls = Tls::start().await;
    let health = tls.request("GET", "/health", "", "").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let url = format!(
        "wss://localhost:{}/ws?token={}",
        tls.server.addr.port(),
        tls.server.token("bob")
    );
    let (mut bob, _) = tokio_tungstenite::client_async(url, tls.connect().await)
        .await
        .expect("a WSS upgrade");
    let body = r#"{"participants":["alice","bob"],"content":"over TLS"}"#;
    let sent = tls
        .request("POST", "/api/messages", &tls.server.token("alice"), body)
        .await;
    assert!(sent.starts_with("HTTP/1.1 202"), "{sent}");
    let Some(Ok(Message::Text(frame))) = bob.next().await else {
        panic!("no frame")
    };
    let frame: serde_json::Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(frame["content"], "over TLS");
}

#[tokio::test]
async fn plain_http_to_the_tls_port_is_refused() {
    let tls = Tls::start().await;
    let plain = tls.server.http.get(tls.server.url("/health")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // And the server keeps serving TLS clients.
    assert!(
        tls.request("GET", "/health", "", "")
            .await
            .starts_with("HTTP/1.1 200")
    );
}
