//! The harness roomcast's tests and benchmarks share.
//!
//! Starting servers: [`process`] (the binary as a child) and [`inprocess`] (the library's
//! `run` on a thread of this process), both reached through [`Endpoint`]; around them
//! [`redis`], a Redis Cluster of such servers in [`redis_cluster`], [`haproxy`] and
//! [`docker`]. Talking to them: [`http`], [`metrics`], [`ws`], and [`raw_ws`] for frames no
//! library client would send. Blue-green: [`traffic`] and the [`swap`] scenario. Measuring:
//! [`procfs`], [`rss`], [`cpu`] and the benchmark-only [`bench`]. Underneath: [`paths`] finds
//! binaries, [`tools`] holds the one skip-or-fail rule, [`wait`] bounds every wait, [`net`]
//! hands out ports, [`child`] and [`tempdir`] clean up on drop.

pub mod bench;
pub mod child;
pub mod cpu;
pub mod docker;
pub mod endpoint;
pub mod haproxy;
pub mod http;
pub mod inprocess;
pub mod metrics;
pub mod net;
pub mod paths;
pub mod process;
pub mod procfs;
pub mod raw_ws;
pub mod redis;
pub mod redis_cluster;
pub mod rss;
pub mod swap;
pub mod tempdir;
pub mod tools;
pub mod traffic;
pub mod wait;
pub mod ws;

pub use endpoint::Endpoint;
pub use inprocess::InProcess;
pub use net::free_port;
pub use process::{Roomcast, Server};
pub use tools::skip_or_fail;
pub use wait::WAIT;
