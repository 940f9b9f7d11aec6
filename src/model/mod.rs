//! The data that flows through chatd: who may talk (user ids), where (channels) and what
//! (messages, and the events that carry them through the pipeline).

mod channel;
mod dead_letter;
mod message;
mod user_id;

pub use channel::{Channel, ChannelError};
pub use dead_letter::{DeadLetter, Failure};
pub use message::{Event, Message, rfc3339_millis, uuid_timestamp};
pub use user_id::{InvalidUserId, UserId};
