//! A connection's transport together with its admission [`Ticket`], so the connection keeps its
//! place among the open ones for exactly as long as the transport lives, through an upgrade to a
//! WebSocket included; and a connection refused for being slow says 503 as it closes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::admission::{Refusal, Ticket};

/// A transport that can be told no without waiting.
pub trait Refusable {
    /// Writes `response` if the socket takes it at once; never waits.
    fn refuse_now(&self, response: &[u8]);
}

impl Refusable for TcpStream {
    fn refuse_now(&self, response: &[u8]) {
        // What the client already sent is read first: closing a socket with unread input
        // resets the connection, and the reset can overtake the answer.
        let mut unread = [0u8; 4096];
        for _ in 0..16 {
            if !matches!(self.try_read(&mut unread), Ok(n) if n > 0) {
                break;
            }
        }
        let _ = self.try_write(response);
    }
}

impl Refusable for TlsStream<TcpStream> {
    /// Plain text inside TLS would be garbage, and encrypting takes a write that may wait: the
    /// close says enough.
    fn refuse_now(&self, _response: &[u8]) {}
}

pub struct Admitted<IO: Refusable> {
    io: IO,
    ticket: Arc<Ticket>,
}

impl<IO: Refusable> Admitted<IO> {
    pub fn new(io: IO, ticket: Arc<Ticket>) -> Self {
        Self { io, ticket }
    }
}

impl<IO: Refusable> Drop for Admitted<IO> {
    fn drop(&mut self) {
        if self.ticket.is_refused() {
            self.io.refuse_now(&Refusal::PendingPerClient.response());
        }
    }
}

impl<IO: AsyncRead + Refusable + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Refusable + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
