//! One task per socket: it writes queued frames, pings, watches for pongs and closes the socket
//! when it is evicted, silent too long, or the server shuts down.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{BoxStream, SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use metrics::{counter, histogram};
use tokio::time::{Instant, interval_at, timeout};
use tokio_util::sync::CancellationToken;

use super::{Early, Frame, Interrupted, Prelude, Receiver, Registration};
use crate::config::SocketSettings;
use crate::telemetry::{self, CloseReason};

/// How long a closing handshake may take before the connection is simply dropped. A slow
/// consumer's close frame waits behind what it has not read yet, so this is generous.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Most frames written with one flush: queued frames go out together, one syscall for many.
const MAX_BATCH: usize = 256;

pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Frames meant for the socket were dropped (its queue was over its bound though it kept
/// reading, or the fan-out fell behind the bus): reconnect with `since` to get them.
pub const CLOSE_MISSED_FRAMES: u16 = 4009;

/// Why the socket ended.
#[derive(Clone)]
enum End {
    Shutdown,
    SlowConsumer,
    /// Frames were lost after the one with this id (`None`: before any was sent).
    MissedFrames(Option<Arc<str>>),
    /// No pong for `WS_PONG_TIMEOUT`: the peer is gone and would not read a close frame.
    PongTimeout,
    /// The peer closed the socket or went away.
    ClientClosed,
    /// Writing failed or the peer broke the protocol (an oversized frame, say).
    Broken,
}

impl End {
    /// The close frame to send, if the peer is still there to read one.
    fn close_frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            End::Shutdown => (CLOSE_GOING_AWAY, "server shutting down".into()),
            End::SlowConsumer => (CLOSE_SLOW_CONSUMER, "slow consumer".into()),
            // A close reason has room for 123 bytes: an id is 36.
            End::MissedFrames(Some(last)) => (
                CLOSE_MISSED_FRAMES,
                format!("missed frames: reconnect with since={last}").into(),
            ),
            End::MissedFrames(None) => (
                CLOSE_MISSED_FRAMES,
                "missed frames: reconnect with since=<the last id you got>".into(),
            ),
            End::PongTimeout | End::ClientClosed | End::Broken => return None,
        };
        Some(CloseFrame { code, reason })
    }

    /// Its series of `chat_ws_connections_closed_total`.
    fn reason(&self) -> CloseReason {
        match self {
            End::Shutdown => CloseReason::Shutdown,
            End::SlowConsumer => CloseReason::SlowConsumer,
            End::MissedFrames(_) => CloseReason::MissedFrames,
            End::PongTimeout => CloseReason::PongTimeout,
            End::ClientClosed => CloseReason::Client,
            End::Broken => CloseReason::Error,
        }
    }
}

/// Runs one socket until it ends: replays its prelude, writes its queued frames (as many as
/// are waiting per flush), pings it, and closes it with the code its end calls for.
pub async fn run_socket(
    socket: WebSocket,
    registration: Registration,
    mut frames: Receiver,
    settings: SocketSettings,
    shutdown: CancellationToken,
    prelude: Prelude,
) {
    let (mut sink, mut stream) = socket.split();
    let mut ping = interval_at(
        Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    let mut last_pong = Instant::now();
    // Looked up once: these are touched for every frame.
    let delivered = counter!(telemetry::MESSAGES_DELIVERED);
    let latency = histogram!(telemetry::DELIVERY_LATENCY);

    // Either of these may fire while a write is stuck on a peer that does not read.
    let stop = async {
        tokio::select! {
            () = shutdown.cancelled() => End::Shutdown,
            () = registration.evicted() => End::SlowConsumer,
        }
    };
    tokio::pin!(stop);

    // A reconnecting client first gets what it missed (or word that it missed too much).
    let Prelude {
        frames: mut early,
        mut seam,
    } = prelude;
    let mut last_sent: Option<Arc<str>> = None;
    let written = tokio::select! {
        written = write_prelude(&mut sink, &mut early, &mut last_sent) => written.err(),
        end = &mut stop => Some(end),
    };
    // Whatever the prelude's producer holds (a recovery's turn, its next page) goes now.
    drop(early);
    if let Some(end) = written {
        finish(&mut sink, &mut stream, end).await;
        return;
    }

    let mut batch: Vec<Frame> = Vec::with_capacity(MAX_BATCH);
    let end = loop {
        tokio::select! {
            end = &mut stop => break end,
            taken = frames.recv_many(&mut batch, MAX_BATCH) => {
                if taken == 0 {
                    // The hub let go of the socket after it lost frames, and all that was
                    // queued before the loss has been written.
                    break if frames.lost() { End::MissedFrames(last_sent) } else { End::Broken };
                }
                // Everything taken leaves the queue's account, written or skipped.
                let bytes: usize = batch.iter().map(|frame| frame.text.len()).sum();
                // Up to the seam the recovery sent them; once one is past it, all are.
                if let Some(covered) = &seam {
                    batch.retain(|frame| !covered.covers(frame));
                    if !batch.is_empty() {
                        seam = None;
                    }
                }
                let written = {
                    let write = async {
                        for frame in &batch {
                            sink.feed(Message::Text(frame.text.clone())).await?;
                        }
                        sink.flush().await
                    };
                    tokio::pin!(write);
                    loop {
                        tokio::select! {
                            written = &mut write => break Ok(written),
                            end = &mut stop => break Err(end),
                            () = tokio::time::sleep(frames.stall_check_interval()) => {
                                // No new frame may come to tell the fan-out that this reader
                                // stopped: the writer notices by itself.
                                if frames.stalled() {
                                    break Err(End::SlowConsumer);
                                }
                            }
                        }
                    }
                };
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break End::Broken,
                    Err(end) => break end,
                }
                frames.written(bytes);
                delivered.increment(batch.len() as u64);
                for frame in &batch {
                    latency.record(frame.accepted_at.elapsed());
                }
                if let Some(frame) = batch.last() {
                    last_sent = Some(frame.id.clone());
                }
                batch.clear();
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

    finish(&mut sink, &mut stream, end).await;
}

/// Writes the frames that come before the live stream, pulling each as the socket can take it:
/// what is ready goes out in one flush, and the socket flushes before it waits for more.
/// `last_sent` follows the last message written. `Err` is how the socket ends instead of going
/// live.
async fn write_prelude(
    sink: &mut SplitSink<WebSocket, Message>,
    early: &mut BoxStream<'static, Result<Early, Interrupted>>,
    last_sent: &mut Option<Arc<str>>,
) -> Result<(), End> {
    loop {
        let next = match early.next().now_or_never() {
            Some(next) => next,
            None => {
                sink.flush().await.map_err(|_| End::Broken)?;
                early.next().await
            }
        };
        let frame = match next {
            Some(Ok(frame)) => frame,
            Some(Err(Interrupted)) => {
                sink.flush().await.map_err(|_| End::Broken)?;
                return Err(End::MissedFrames(last_sent.clone()));
            }
            None => return sink.flush().await.map_err(|_| End::Broken),
        };
        sink.feed(Message::Text(frame.text))
            .await
            .map_err(|_| End::Broken)?;
        if frame.id.is_some() {
            *last_sent = frame.id;
        }
    }
}

/// Counts the end, and closes the socket with a close frame if the peer can still read one.
/// The connection is kept until the peer answers the close (or the grace runs out): dropping
/// it while the peer still sends (a pong, its own close) would reset it, and a reset throws
/// away what the peer has not read yet, the close frame included.
async fn finish(
    sink: &mut SplitSink<WebSocket, Message>,
    stream: &mut SplitStream<WebSocket>,
    end: End,
) {
    end.reason().count();
    if matches!(end, End::SlowConsumer) {
        counter!(telemetry::SLOW_CONSUMERS).increment(1);
    }
    let Some(frame) = end.close_frame() else {
        let _ = timeout(CLOSE_GRACE, sink.close()).await;
        return;
    };
    let _ = timeout(CLOSE_GRACE, async {
        sink.send(Message::Close(Some(frame))).await?;
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Close(_) = message {
                break;
            }
        }
        sink.close().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// asyncapi.yaml lists every close chatd sends, with its reason: none missing, none wrong.
    #[test]
    fn the_asyncapi_document_lists_every_close_code_and_reason() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/asyncapi.yaml");
        let doc: serde_json::Value =
            serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let documented = doc["channels"]["ws"]["x-close-codes"].as_array().unwrap();
        let id = "0193a0c4-7a2e-7c1e-9b55-4f0d3c2a1b10";
        let ends = [
            End::Shutdown,
            End::SlowConsumer,
            End::MissedFrames(Some(id.into())),
            End::MissedFrames(None),
            End::PongTimeout,
            End::ClientClosed,
            End::Broken,
        ];
        let mut codes = Vec::new();
        for end in ends {
            let Some(frame) = end.close_frame() else {
                continue;
            };
            let entry = documented
                .iter()
                .find(|c| c["code"] == frame.code)
                .unwrap_or_else(|| panic!("close code {} is not documented", frame.code));
            let reason = entry["reason"].as_str().unwrap();
            let expected = match &end {
                End::MissedFrames(Some(_)) => reason.replace("<id>", id),
                End::MissedFrames(None) => reason.replace("<id>", "<the last id you got>"),
                _ => reason.to_string(),
            };
            assert_eq!(frame.reason.as_str(), expected, "close code {}", frame.code);
            codes.push(frame.code);
        }
        codes.dedup();
        let listed: Vec<u64> = documented
            .iter()
            .map(|c| c["code"].as_u64().unwrap())
            .collect();
        assert_eq!(
            codes.iter().map(|&c| u64::from(c)).collect::<Vec<_>>(),
            listed,
            "asyncapi.yaml documents a close chatd never sends"
        );
    }
}
