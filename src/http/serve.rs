//! The accept loop: `axum::serve` with what it lacks, a deadline for a request's headers, so
//! connections that open and say nothing (or say it one byte a minute) cannot pile up, and caps
//! on the connections open in all and per client address ([`Admission`]), so they cannot use up
//! the file descriptors either. It speaks HTTP/1.1 only: WebSocket upgrades are HTTP/1.1, and HTTP/2's version sniffing would
//! wait for a silent client's first byte with no deadline at all. With `TLS_CERT` and
//! `TLS_KEY` it serves HTTPS and WSS itself, for deployments without a proxy in front.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::admission::{Admission, Refusal, Ticket};
use super::admitted::{Admitted, Refusable};
use crate::error::Chain;

/// How long to wait before accepting again after the listener failed (out of file
/// descriptors, say), so a full table does not become a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `shutdown`, then waits for the requests in flight.
/// With `tls`, every connection is a TLS one. Upgraded connections (WebSockets) leave this
/// loop's care once upgraded, but keep their place in `admission` until they close.
pub async fn serve_connections(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
    admission: Arc<Admission>,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let ticket = match admission.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                refuse(stream, tls.is_some(), refusal);
                continue;
            }
        };
        let (router, builder, shutdown, tls) = (
            router.clone(),
            builder.clone(),
            shutdown.clone(),
            tls.clone(),
        );
        connections.spawn(async move {
            let Some(tls) = tls else {
                let io = Admitted::new(stream, ticket.clone());
                return serve_connection(io, peer, &ticket, router, builder, shutdown).await;
            };
            // The handshake is part of what must arrive before the headers' deadline, and of
            // what a slow client is slow at.
            let handshake = tokio::time::timeout(header_timeout, tls.accept(stream));
            let stream = tokio::select! {
                handshake = handshake => match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %Chain(&e), "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                },
                refusal = ticket.refused_when_slow() => return count_refusal(refusal),
            };
            let io = Admitted::new(stream, ticket.clone());
            serve_connection(io, peer, &ticket, router, builder, shutdown).await;
        });
    }
    connections.close();
    connections.wait().await;
}

/// Turns a connection away at once: a minimal 503 (over plain HTTP; a TLS client would need
/// the handshake first, so it is only closed) and the socket closed.
fn refuse(stream: TcpStream, tls: bool, refusal: Refusal) {
    if !tls {
        stream.refuse_now(&refusal.response());
    }
    count_refusal(refusal);
}

fn count_refusal(refusal: Refusal) {
    refusal.reason().count();
}

async fn serve_connection<IO>(
    io: Admitted<IO>,
    peer: SocketAddr,
    ticket: &Arc<Ticket>,
    router: Router,
    builder: http1::Builder,
    shutdown: CancellationToken,
) where
    Admitted<IO>: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    IO: Refusable,
{
    let first_head = ticket.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // The service is called once a whole request head has arrived.
        first_head.head_received();
        request
            .extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(peer));
        let router = router.clone();
        async move {
            Ok::<_, Infallible>(
                router
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|never| match never {}),
            )
        }
    });
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    // A client that goes away mid-request is not the server's error, so results are not kept.
    // At shutdown the request in flight is finished and the connection closed. A connection
    // refused for being slow is dropped, and its transport answers 503 as it closes.
    tokio::select! {
        _ = connection.as_mut() => return,
        () = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
        refusal = ticket.refused_when_slow() => return count_refusal(refusal),
    }
    let _ = connection.await;
}

/// Why `TLS_CERT` and `TLS_KEY` give no TLS acceptor.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS_CERT {}", .0.display())]
    Cert(PathBuf, #[source] pem::Error),
    #[error("TLS_KEY {}", .0.display())]
    Key(PathBuf, #[source] pem::Error),
    #[error("TLS_CERT and TLS_KEY")]
    Config(#[source] rustls::Error),
}

/// A TLS acceptor for a certificate chain and its private key, both PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert(cert.to_owned(), e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key(key.to_owned(), e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
