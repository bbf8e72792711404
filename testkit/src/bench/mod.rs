//! What only the benchmark programs need: [`Args`], the machine they run on, their clients'
//! settings, statistics and the tables they print.
//!
//! Benchmarks only ever talk to 127.0.0.1 and only stop processes they started, by PID.

mod args;
mod clients;
mod machine;
mod report;
mod stats;

pub use args::Args;
pub use clients::{client_config, wait_for_websockets};
pub use machine::{cores, has_command, pin_self, raise_nofile};
pub use report::{count, ms, print_binary, print_machine, print_table, print_table_with};
pub use stats::{Histogram, percentile};

/// A load generator is one address sending far more than a person: these lift the
/// per-connection publish rate and the per-address caps, so a benchmark measures delivery,
/// not the limits (which still run, and cost what they cost).
pub const LOAD_GENERATOR_LIMITS: &[(&str, &str)] = &[
    ("ROOMCAST_RATE", "1000000"),
    ("ROOMCAST_BURST", "1000000"),
    ("ROOMCAST_MAX_CONNECTIONS_PER_IP", "1000000"),
    ("ROOMCAST_UPGRADE_RATE", "1000000"),
    ("ROOMCAST_UPGRADE_BURST", "1000000"),
];

/// Exits the benchmark with a message (status 2): setup problems, not measurements.
pub fn fail(message: impl AsRef<str>) -> ! {
    eprintln!("error: {}", message.as_ref());
    std::process::exit(2);
}

pub fn file_size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
