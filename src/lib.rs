//! chatd: a real-time chat service.
//!
//! A message travels accept → durable outbox → broadcast bus → WebSocket fan-out, while the
//! outbox relay drains it into the store. [`app`] wires those parts together.

pub mod app;
pub mod auth;
pub mod cli;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod error;
pub(crate) mod fds;
pub(crate) mod http;
/// Every route and method chatd serves, for tests that hold `/openapi.json` to them.
pub use http::routes;
pub(crate) mod hub;
pub(crate) mod integrity;
pub mod model;
pub mod pipeline;
pub mod ready_file;
pub(crate) mod sqlite_file;
pub mod store;
pub(crate) mod telemetry;
pub(crate) mod web;
