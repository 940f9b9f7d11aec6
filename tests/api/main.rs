//! The in-process tests, in one test binary: each test starts its own chatd through
//! `chatd::app::start` (see `common`), on 127.0.0.1 with a random port and a data directory of
//! its own, so the tests of every module run side by side in one process without meeting.
//! One binary, rather than one per file, links the crate once instead of a dozen times.
//!
//! What they do share is the process's metrics recorder (`Metrics::install`: one per process),
//! so no test here asserts a series that another test's chatd moves too. The one exact count,
//! `floods`' refusals of pending connections, only `floods` provokes. Tests that compare the
//! recorder's counters or gauges (`churn`, `corruption`, `observability`, `relay`) are binaries
//! of their own, as are the tests of the built binaries themselves, run as child processes
//! (`process`, `bench`); each says why at its top.
//!
//! One module: `cargo test --test api sockets::`.

#[path = "../common/mod.rs"]
mod common;

mod asyncapi;
mod channels;
mod cluster;
mod contract;
mod dead_letters;
mod floods;
mod hostile;
mod identity;
mod mongo;
mod openapi;
mod origins;
mod page;
mod recovery;
mod scenarios;
mod sockets;
mod tls;
