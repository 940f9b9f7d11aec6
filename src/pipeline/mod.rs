//! The path of a message, in reading order:
//!
//! ```text
//!   POST /api/messages
//!          │
//!   accept ── validates, and waits for the durable append ─► 202
//!          │
//!   outbox ── the journal gives the id, commits (fsync), then, in commit order:
//!          ├──────────────────────────────┐
//!          ▼                              ▼
//!         bus (in-process broadcast)    relay (dispatcher → batch writers, retries,
//!          │                              │        dead-letter mover)
//!          ▼                              ▼
//!       fanout ─► hub ─► sockets        store (SQLite or MongoDB) ─► history
//!
//!   recovery: a reconnect with ?since= replays from the outbox, then the store, up to the
//!   outbox's horizon, before the socket's live frames
//!   channels: GET /api/channels lists a user's channels from the store's index of last
//!   messages, with what the outbox (or, in cluster mode, the bus) holds merged in
//! ```
//!
//! [`accept`] → [`outbox`] → [`bus`] → [`fanout`]; [`outbox`] → [`relay`] → the
//! [store](crate::store); [`recovery`] reads both for a reconnecting socket, and [`channels`]
//! for the conversations listing. HTTP and the CLI sit on top ([`crate::http`], [`crate::cli`]),
//! and [`crate::app`] builds and wires the stages.

// In reading order, which is why each stands alone (rustfmt would sort a run of them).

pub(crate) mod accept;

pub mod outbox;

pub(crate) mod bus;

pub(crate) mod fanout;

pub(crate) mod relay;

pub mod recovery;

pub mod channels;
