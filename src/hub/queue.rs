//! One socket's send queue, bounded in bytes, and the rule that judges its reader.
//!
//! A burst of the server's own (hundreds of messages accepted in one second after a pause)
//! fills every queue at once, and a reader that keeps reading drains its queue at its own pace:
//! counting frames would punish it for the server's burst. So the queue is bounded in bytes
//! (megabytes: room for a burst), and a socket is evicted as a slow consumer only when its
//! queue is over that bound *and* its writer has made no progress for `stall_timeout`: the
//! client stopped reading, not merely fell behind for a moment.
//!
//! A queue over its bound whose reader is still making progress drops the frame instead (and
//! every later one): if the writer then drains what was queued, the socket is told to
//! reconnect with `since` (close code 4009); if it stays stuck for `stall_timeout`, it is a
//! slow consumer after all (4008). Memory stays bounded and nothing is lost silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Frame;

/// How a queue is bounded.
#[derive(Debug, Clone, Copy)]
pub struct QueueBounds {
    /// Most bytes of frames waiting for one socket's writer.
    pub max_bytes: usize,
    /// How long a full queue's writer may go without progress before the socket is evicted.
    pub stall_timeout: Duration,
}

/// What became of a frame offered to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The queue was full and its reader stalled: the socket is evicted (4008).
    Evicted,
    /// The queue was full but its reader was making progress: the frame is dropped and the
    /// socket will be told to recover (4009).
    Lost,
    /// The writer is gone.
    Closed,
}

/// The fan-out's side of a socket's queue.
pub(super) struct SendQueue {
    frames: mpsc::UnboundedSender<Frame>,
    shared: Arc<Shared>,
}

/// The writer's side: the frames, and the bookkeeping it reports its progress to.
pub struct Receiver {
    frames: mpsc::UnboundedReceiver<Frame>,
    shared: Arc<Shared>,
}

struct Shared {
    bounds: QueueBounds,
    /// Bytes of the frames queued or being written. The unbounded channel is bounded by this.
    bytes: AtomicUsize,
    /// When the writer last finished a write, or the queue last became non-empty: a stall is
    /// measured from whichever came later. Milliseconds since `epoch`.
    progress_ms: AtomicU64,
    epoch: Instant,
    /// Frames were dropped: once the queue is drained the socket closes with 4009.
    lost: AtomicBool,
    evicted: CancellationToken,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn mark_progress(&self) {
        self.progress_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn stalled(&self) -> bool {
        let since = self
            .now_ms()
            .saturating_sub(self.progress_ms.load(Ordering::Relaxed));
        Duration::from_millis(since) >= self.bounds.stall_timeout
    }
}

pub(super) fn channel(bounds: QueueBounds) -> (SendQueue, Receiver) {
    let (frames, receiver) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        bounds,
        bytes: AtomicUsize::new(0),
        progress_ms: AtomicU64::new(0),
        epoch: Instant::now(),
        lost: AtomicBool::new(false),
        evicted: CancellationToken::new(),
    });
    (
        SendQueue {
            frames,
            shared: shared.clone(),
        },
        Receiver {
            frames: receiver,
            shared,
        },
    )
}

impl SendQueue {
    /// Queues a frame without waiting. Frames are only ever offered by the fan-out, one at a
    /// time, so the check and the add below do not race with another offer.
    pub(super) fn offer(&self, frame: &Frame) -> Offer {
        let shared = &self.shared;
        if shared.lost.load(Ordering::Relaxed) {
            return Offer::Lost;
        }
        let len = frame.text.len();
        let queued = shared.bytes.load(Ordering::Acquire);
        // An empty queue takes any frame, so a frame larger than the bound still goes out.
        if queued > 0 && queued + len > shared.bounds.max_bytes {
            if shared.stalled() {
                shared.evicted.cancel();
                return Offer::Evicted;
            }
            shared.lost.store(true, Ordering::Relaxed);
            return Offer::Lost;
        }
        if queued == 0 {
            // Work arrives: the stall clock starts now, not at the last write an hour ago.
            shared.mark_progress();
        }
        shared.bytes.fetch_add(len, Ordering::AcqRel);
        match self.frames.send(frame.clone()) {
            Ok(()) => Offer::Queued,
            Err(_) => {
                shared.bytes.fetch_sub(len, Ordering::AcqRel);
                Offer::Closed
            }
        }
    }

    /// Marks the socket as having missed frames (the bus skipped events it may have needed).
    pub(super) fn mark_lost(&self) {
        self.shared.lost.store(true, Ordering::Relaxed);
    }

    pub(super) fn evicted(&self) -> CancellationToken {
        self.shared.evicted.clone()
    }
}

impl Receiver {
    /// Waits for frames and moves up to `limit` of them into `batch`; 0 once the hub has let
    /// go of the socket and everything queued before was taken.
    pub async fn recv_many(&mut self, batch: &mut Vec<Frame>, limit: usize) -> usize {
        self.frames.recv_many(batch, limit).await
    }

    /// The writer wrote frames of this many bytes: they leave the queue's account.
    pub fn written(&self, bytes: usize) {
        self.shared.mark_progress();
        self.shared.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Whether frames meant for this socket were dropped.
    pub fn lost(&self) -> bool {
        self.shared.lost.load(Ordering::Relaxed)
    }

    /// Over its bound (frames were dropped) and no write finished for the stall timeout: the
    /// reader stopped reading.
    pub fn stalled(&self) -> bool {
        self.lost() && self.shared.stalled()
    }

    /// How often a writer stuck in a write checks whether it has [`stalled`](Self::stalled).
    pub fn stall_check_interval(&self) -> Duration {
        (self.shared.bounds.stall_timeout / 4).max(Duration::from_millis(10))
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::ws::Utf8Bytes;

    use super::*;

    fn frame(bytes: usize) -> Frame {
        Frame {
            id: Arc::from("id"),
            text: Utf8Bytes::from("x".repeat(bytes)),
            accepted_at: Instant::now(),
            sequence: None,
        }
    }

    fn bounds(max_bytes: usize, stall_timeout: Duration) -> QueueBounds {
        QueueBounds {
            max_bytes,
            stall_timeout,
        }
    }

    #[tokio::test]
    async fn a_full_queue_whose_reader_progresses_loses_frames_and_keeps_its_socket() {
        let (queue, mut receiver) = channel(bounds(100, Duration::from_secs(3600)));
        assert_eq!(queue.offer(&frame(60)), Offer::Queued);
        assert_eq!(queue.offer(&frame(60)), Offer::Lost);
        assert!(receiver.lost());
        // Once lost, later frames are dropped too: no hole in the middle of what it gets.
        let mut batch = Vec::new();
        assert_eq!(receiver.recv_many(&mut batch, 8).await, 1);
        receiver.written(60);
        assert_eq!(queue.offer(&frame(10)), Offer::Lost);
        assert!(!queue.evicted().is_cancelled());
    }

    #[tokio::test]
    async fn a_full_queue_whose_reader_stalled_is_evicted() {
        let (queue, _receiver) = channel(bounds(100, Duration::ZERO));
        assert_eq!(queue.offer(&frame(60)), Offer::Queued);
        assert_eq!(queue.offer(&frame(60)), Offer::Evicted);
        assert!(queue.evicted().is_cancelled());
    }

    #[tokio::test]
    async fn written_bytes_make_room_and_an_empty_queue_takes_any_frame() {
        let (queue, mut receiver) = channel(bounds(100, Duration::ZERO));
        assert_eq!(
            queue.offer(&frame(500)),
            Offer::Queued,
            "larger than the bound"
        );
        let mut batch = Vec::new();
        receiver.recv_many(&mut batch, 8).await;
        receiver.written(500);
        for _ in 0..2 {
            assert_eq!(queue.offer(&frame(50)), Offer::Queued);
        }
        assert_eq!(queue.offer(&frame(1)), Offer::Evicted);
    }

    #[tokio::test]
    async fn a_closed_writer_takes_nothing_and_keeps_no_account() {
        let (queue, receiver) = channel(bounds(100, Duration::ZERO));
        drop(receiver);
        assert_eq!(queue.offer(&frame(10)), Offer::Closed);
        assert_eq!(queue.shared.bytes.load(Ordering::Relaxed), 0);
    }
}
