//! What a socket writes before its live stream: for a reconnecting client, what it missed.
//!
//! The socket knows nothing of where those frames come from. It pulls them one at a time as it
//! writes them, so whoever produces them (the reconnect recovery) holds only what is about to
//! be written, never the whole replay; dropping the stream (the socket closed) frees it all.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use futures_util::stream::{self, BoxStream};

use super::Frame;

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
    /// Live frames up to here are skipped: the prelude covered them.
    pub seam: Option<Seam>,
}

/// Where a socket's live stream starts after its prelude. Live frames come in the order the
/// seam is given in, so once one is past it, every later one is.
#[derive(Debug, Clone)]
pub enum Seam {
    /// Frames with ids up to this one: one process, whose ids are its commit order.
    Id(Arc<str>),
    /// Frames with stream sequences up to this one: cluster mode, whose order is the stream's.
    Sequence(u64),
}

impl Seam {
    /// Whether the prelude covered `frame`.
    pub fn covers(&self, frame: &Frame) -> bool {
        match self {
            Self::Id(last) => *frame.id <= **last,
            Self::Sequence(last) => frame.sequence.is_some_and(|sequence| sequence <= *last),
        }
    }
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
