//! chatd: a real-time chat service.
//!
//! A message travels accept → durable outbox → broadcast bus → WebSocket fan-out, while the
//! outbox relay drains it into the store. [`app`] wires those parts together.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod fds;
pub mod http;
pub mod hub;
pub mod integrity;
pub mod model;
pub mod pipeline;
pub mod ready_file;
pub mod sqlite_file;
pub mod store;
pub mod telemetry;
