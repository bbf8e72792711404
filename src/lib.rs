//! roomcast: a WebSocket chat and room-broadcast server.
//!
//! One request's path: [`server`] accepts under the connection cap → [`http`] reads the head
//! and answers health, metrics and the page, or validates an upgrade → [`session`] runs the
//! WebSocket against a room of the [`broker`] → frames are [`protocol`] types.
//! [`config`] is read once before the runtime; [`shutdown`] and [`health`] carry the drain;
//! [`metrics`] and [`log`] report; [`probe`] is the health client the container runs.
#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod config;
pub mod health;
pub mod http;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod nofile;
pub mod probe;
pub mod protocol;
pub mod server;
pub mod session;
pub mod shared;
pub mod shutdown;

pub use server::run;

use std::sync::OnceLock;
use std::time::Instant;

static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// The instant `main` started (or the first call), for the startup time in logs and metrics.
pub fn process_start() -> Instant {
    *PROCESS_START.get_or_init(Instant::now)
}
