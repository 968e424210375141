//! End-to-end tests: the real `pinion` binary, a real server on a free port,
//! real SQLite files in temporary directories.

// Tests fail by panicking; helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod support;

mod api;
mod browser;
mod canary;
mod deploy;
mod docs;
mod durability;
mod events;
mod faults;
mod fleet;
mod gate;
mod gate_failures;
mod history;
mod holds;
mod hostile;
mod neighbours;
mod oci;
mod offline;
mod pipeline;
mod postgres;
mod registry;
mod scopes;
mod soak;
mod status;
mod tls;
mod tokens;
mod ui;
