//! The ceiling: a bare chat server on the same HTTP and WebSocket stack (hyper through axum,
//! tokio-tungstenite through axum's upgrade) with no signature check, no validation, no outbox
//! and no store. A POST's participants are read from its body and its sender from its token's
//! claims; the frame (the contract's message object) goes to the socket of every participant
//! but the sender, and the sender gets the contract's 202 body. What chatd costs above it is
//! chatd's own; what the ceiling costs is the stack's and the machine's.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header::AUTHORIZATION};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use chatd::model::Message as ChatMessage;
use chatd::ready_file::Ready;

/// Frames a socket may have queued; more are dropped, as a bare server would.
const SOCKET_QUEUE: usize = 4096;

/// Each user's socket, by user id (the bench opens one per user).
type Sockets = Arc<Mutex<HashMap<String, mpsc::Sender<Utf8Bytes>>>>;

/// Serves until killed, having written its address to `ready_file` once listening, as chatd
/// writes its `--ready-file`.
pub async fn serve(ready_file: &Path) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/ws", get(upgrade))
        .route("/api/messages", post(publish))
        .with_state(Sockets::default());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let ready = Ready {
        addr: listener.local_addr()?,
        metrics_addr: None,
    };
    ready.write(ready_file)?;
    axum::serve(listener, app).await?;
    Ok(())
}

#[derive(Deserialize)]
struct Send {
    participants: Vec<String>,
    content: String,
}

#[derive(Deserialize)]
struct Claims {
    id: String,
}

/// The token's user, its signature unchecked.
fn caller(headers: &HeaderMap) -> Option<String> {
    let token = headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let claims = jsonwebtoken::dangerous::insecure_decode_claims::<Claims>(token).ok()?;
    Some(claims.id)
}

async fn publish(
    State(sockets): State<Sockets>,
    headers: HeaderMap,
    Json(send): Json<Send>,
) -> Response {
    let Some(sender) = caller(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let mut participants = send.participants;
    participants.sort_unstable();
    participants.dedup();
    let message = ChatMessage {
        id: uuid::Uuid::now_v7().to_string(),
        sender,
        content: send.content,
        participants,
        created_at: chrono::Utc::now(),
        sequence: None,
    };
    let Ok(text) = serde_json::to_string(&message) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let text = Utf8Bytes::from(text);
    {
        let sockets = sockets.lock().expect("sockets lock");
        let others = message
            .participants
            .iter()
            .filter(|user| **user != message.sender);
        for user in others {
            if let Some(socket) = sockets.get(user) {
                let _ = socket.try_send(text.clone());
            }
        }
    }
    let body = serde_json::json!({"status": "message queued", "message": message});
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

async fn upgrade(
    State(sockets): State<Sockets>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(user) = caller(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let (frames, queued) = mpsc::channel(SOCKET_QUEUE);
    sockets.lock().expect("sockets lock").insert(user, frames);
    upgrade.on_upgrade(move |socket| forward(socket, queued))
}

async fn forward(socket: WebSocket, mut frames: mpsc::Receiver<Utf8Bytes>) {
    let (mut sink, mut incoming) = socket.split();
    loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(text) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            message = incoming.next() => {
                if matches!(message, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                    break;
                }
            }
        }
    }
}
