//! What a socket writes before its live stream: for a reconnecting client, what it missed.
//!
//! The socket knows nothing of where those frames come from. It pulls them one at a time as it
//! writes them, so whoever produces them (the reconnect recovery) holds only what is about to
//! be written, never the whole replay; dropping the stream (the socket closed) frees it all.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use futures_util::stream::{self, BoxStream};

/// One frame written before the live stream.
#[derive(Debug, Clone)]
pub struct Early {
    /// The message's id, when the frame is a message: a socket closed after losing frames
    /// names the last one it wrote, for the client's `since`.
    pub id: Option<Arc<str>>,
    pub text: Utf8Bytes,
}

/// The frames before the live stream could not all be produced: after those already written
/// the socket is closed with 4009 ("reconnect with since").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

/// What a socket writes first, and where its live stream starts.
pub struct Prelude {
    /// Written in order before any live frame.
    pub frames: BoxStream<'static, Result<Early, Interrupted>>,
    /// Live frames with ids up to this one are skipped: the prelude covered them.
    pub seam: Option<Arc<str>>,
}

impl Default for Prelude {
    /// Nothing before the live stream, which is sent whole.
    fn default() -> Self {
        Self {
            frames: Box::pin(stream::empty()),
            seam: None,
        }
    }
}
