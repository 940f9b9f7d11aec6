//! One task per socket: it writes queued frames, pings, watches for pongs and closes the socket
//! when it is evicted, silent too long, or the server shuts down.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, interval_at, timeout};
use tokio_util::sync::CancellationToken;

use super::{Frame, Registration};
use crate::config::SocketSettings;

/// How long a closing handshake may take before the connection is simply dropped. A slow
/// consumer's close frame waits behind what it has not read yet, so this is generous.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// Why the socket ended.
enum End {
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The peer closed, vanished or broke the protocol: nothing more to say to it.
    Gone,
}

pub async fn serve(
    socket: WebSocket,
    registration: Registration,
    mut frames: mpsc::Receiver<Frame>,
    settings: SocketSettings,
    shutdown: CancellationToken,
) {
    let (mut sink, mut stream) = socket.split();
    let mut ping = interval_at(
        Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    let mut last_pong = Instant::now();

    // Either of these may fire while a write is stuck on a peer that does not read.
    let stop = async {
        tokio::select! {
            () = shutdown.cancelled() => End::Close(CLOSE_GOING_AWAY, "server shutting down"),
            () = registration.evicted() => End::Close(CLOSE_SLOW_CONSUMER, "slow consumer"),
        }
    };
    tokio::pin!(stop);

    let end = loop {
        tokio::select! {
            end = &mut stop => break end,
            frame = frames.recv() => {
                let Some(frame) = frame else { break End::Gone };
                tokio::select! {
                    sent = sink.send(Message::Text(frame.text)) => if sent.is_err() { break End::Gone },
                    end = &mut stop => break end,
                }
            }
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                // Clients have nothing to say on this socket: data frames are read and dropped.
                Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Ping(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => break End::Gone,
            },
            _ = ping.tick() => {
                if last_pong.elapsed() >= settings.pong_timeout {
                    break End::Gone;
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break End::Gone;
                }
            }
        }
    };

    let close = match end {
        End::Close(code, reason) => Some(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }))),
        End::Gone => None,
    };
    let _ = timeout(CLOSE_GRACE, async {
        if let Some(close) = close {
            sink.send(close).await?;
        }
        sink.close().await
    })
    .await;
}
