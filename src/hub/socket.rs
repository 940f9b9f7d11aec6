//! One task per socket: it writes queued frames, pings, watches for pongs and closes the socket
//! when it is evicted, silent too long, or the server shuts down.

use std::time::Duration;

use ::metrics::{counter, histogram};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, interval_at, timeout};
use tokio_util::sync::CancellationToken;

use super::{Frame, Registration};
use crate::config::SocketSettings;
use crate::metrics;
use crate::recovery::Recovery;

/// How long a closing handshake may take before the connection is simply dropped. A slow
/// consumer's close frame waits behind what it has not read yet, so this is generous.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// Why the socket ended.
#[derive(Clone, Copy)]
enum End {
    Shutdown,
    SlowConsumer,
    /// No pong for `WS_PONG_TIMEOUT`: the peer is gone and would not read a close frame.
    PongTimeout,
    /// The peer closed the socket or went away.
    ClientClosed,
    /// Writing failed or the peer broke the protocol (an oversized frame, say).
    Broken,
}

impl End {
    /// The close frame to send, if the peer is still there to read one.
    fn close_frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            End::Shutdown => (CLOSE_GOING_AWAY, "server shutting down"),
            End::SlowConsumer => (CLOSE_SLOW_CONSUMER, "slow consumer"),
            End::PongTimeout | End::ClientClosed | End::Broken => return None,
        };
        Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })
    }

    /// The `reason` label of `chat_ws_connections_closed_total`.
    fn label(self) -> &'static str {
        match self {
            End::Shutdown => "shutdown",
            End::SlowConsumer => "slow_consumer",
            End::PongTimeout => "pong_timeout",
            End::ClientClosed => "client",
            End::Broken => "error",
        }
    }
}

pub async fn serve(
    socket: WebSocket,
    registration: Registration,
    mut frames: mpsc::Receiver<Frame>,
    settings: SocketSettings,
    shutdown: CancellationToken,
    recovery: Recovery,
) {
    let (mut sink, mut stream) = socket.split();
    let mut ping = interval_at(
        Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    let mut last_pong = Instant::now();
    // Looked up once: these are touched for every frame.
    let delivered = counter!(metrics::MESSAGES_DELIVERED);
    let latency = histogram!(metrics::DELIVERY_LATENCY);

    // Either of these may fire while a write is stuck on a peer that does not read.
    let stop = async {
        tokio::select! {
            () = shutdown.cancelled() => End::Shutdown,
            () = registration.evicted() => End::SlowConsumer,
        }
    };
    tokio::pin!(stop);

    // A reconnecting client first gets what it missed (or word that it missed too much).
    let Recovery {
        frames: missed,
        mut replayed,
        over_limit,
    } = recovery;
    let first = over_limit
        .map(Recovery::over_limit_notice)
        .into_iter()
        .chain(missed);
    let replay = async {
        for text in first {
            sink.feed(Message::Text(text)).await?;
        }
        sink.flush().await
    };
    let replayed_ok = tokio::select! {
        sent = replay => sent.is_ok(),
        end = &mut stop => {
            finish(&mut sink, end).await;
            return;
        }
    };
    if !replayed_ok {
        finish(&mut sink, End::Broken).await;
        return;
    }

    let end = loop {
        tokio::select! {
            end = &mut stop => break end,
            frame = frames.recv() => {
                let Some(frame) = frame else { break End::Broken };
                // Already sent by the recovery: the seam between replay and live stream.
                if !replayed.is_empty() && replayed.remove(&*frame.id) {
                    continue;
                }
                tokio::select! {
                    sent = sink.send(Message::Text(frame.text)) => {
                        if sent.is_err() {
                            break End::Broken;
                        }
                        delivered.increment(1);
                        latency.record(frame.accepted_at.elapsed());
                    }
                    end = &mut stop => break end,
                }
            }
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                // Clients have nothing to say on this socket: data frames are read and dropped.
                Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Ping(_))) => {}
                Some(Ok(Message::Close(_))) | None => break End::ClientClosed,
                Some(Err(_)) => break End::Broken,
            },
            _ = ping.tick() => {
                if last_pong.elapsed() >= settings.pong_timeout {
                    break End::PongTimeout;
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break End::Broken;
                }
            }
        }
    };

    finish(&mut sink, end).await;
}

/// Counts the end, and closes the socket with a close frame if the peer can still read one.
async fn finish(sink: &mut SplitSink<WebSocket, Message>, end: End) {
    counter!(metrics::WS_CLOSED, "reason" => end.label()).increment(1);
    let _ = timeout(CLOSE_GRACE, async {
        if let Some(frame) = end.close_frame() {
            sink.send(Message::Close(Some(frame))).await?;
        }
        sink.close().await
    })
    .await;
}
