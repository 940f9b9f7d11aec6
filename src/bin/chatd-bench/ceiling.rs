//! The ceiling: a bare broadcast server on the same WebSocket stack (tokio-tungstenite, through
//! axum's upgrade) with no auth, no validation, no outbox and no store. Every POST body goes,
//! as it is, to every socket. chatd's fan-out is reported as a fraction of what this does
//! under the same load on the same machine.

use std::path::Path;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use chatd::ready_file::Ready;

/// Serves until killed, having written its address to `ready_file` once listening, as chatd
/// writes its `--ready-file`.
pub async fn serve(ready_file: &Path) -> anyhow::Result<()> {
    let (frames, _) = broadcast::channel::<Utf8Bytes>(4096);
    let app = Router::new()
        .route("/ws", get(upgrade))
        .route("/api/messages", post(publish))
        .with_state(frames);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let ready = Ready {
        addr: listener.local_addr()?,
        metrics_addr: None,
    };
    ready.write(ready_file)?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn publish(State(frames): State<broadcast::Sender<Utf8Bytes>>, body: Bytes) -> StatusCode {
    match Utf8Bytes::try_from(body) {
        Ok(text) => {
            let _ = frames.send(text);
            StatusCode::ACCEPTED
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

async fn upgrade(
    State(frames): State<broadcast::Sender<Utf8Bytes>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade.on_upgrade(move |socket| forward(socket, frames.subscribe()))
}

async fn forward(socket: WebSocket, mut frames: broadcast::Receiver<Utf8Bytes>) {
    let (mut sink, mut incoming) = socket.split();
    loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Ok(text) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
            message = incoming.next() => {
                if matches!(message, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                    break;
                }
            }
        }
    }
}
