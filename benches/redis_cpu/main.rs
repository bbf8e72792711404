//! Redis CPU per message: one redis-server against a Redis Cluster of 1, 2 and 3 masters (and
//! 3 masters with a replica each), under the same chat load; and the publish capacity that
//! makes for a cluster whose masters each have a core of their own.
//!
//!   cargo static && cargo bench --bench redis_cpu -- --config all [--rate 2000] [--secs 10]
//!
//! Each configuration gets a fresh Redis without persistence ([`nodes`]), two roomcast
//! instances on it (`ROOMCAST_REDIS_URL`, or `ROOMCAST_REDIS_CLUSTER` naming every master),
//! R rooms named so that every master serves as many as the next, one member per room on each
//! instance and one of the two publishing ([`load`]). [`run`] warms up (every room's keys and
//! the scripts in place), measures what Redis spends idle (gossip, health pings, presence),
//! then publishes at the fixed rate for D seconds and waits for every member to receive every
//! message. Each node's CPU time (`INFO cpu`: used_cpu_sys + used_cpu_user, to the
//! microsecond where /proc counts 10 ms ticks), command statistics (`INFO commandstats`),
//! reads, traffic and context switches are taken before and after that window; the
//! instances' CPU comes from /proc/PID/stat. [`report`] prints the CPU table, [`commands`]
//! the command table. Every process is stopped by its PID when its configuration ends.

mod commands;
mod load;
mod nodes;
mod report;
mod run;

use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use testkit::bench::{self, Args, fail};
use testkit::paths;
use testkit::redis::RedisServer;

use nodes::Setup;

const USAGE: &str = "\
redis CPU: Redis CPU time per published message, one redis-server against a Redis Cluster

usage: cargo bench --bench redis_cpu -- [options]
  --config C          all (default): single, cluster-1, cluster-2, cluster-3, cluster-3x1;
                      or one of them: single (one redis-server, ROOMCAST_REDIS_URL),
                      cluster-N (N masters), cluster-NxR (N masters with R replicas each)
  --rooms R           rooms, spread evenly over the masters (default 64); 2 members each,
                      one per instance, one of them publishing
  --rate M            total publish rate in messages/s (default 2000)
  --per-master        --rate is per master instead: a cluster of N masters gets N times it,
                      so every master works at the rate a single one does
  --secs D            measured publishing time per configuration (default 10)
  --warmup-secs W     publishing before it, not measured (default 1)
  --idle-secs I       Redis CPU with the members connected and nobody publishing, measured
                      after the warm-up and subtracted in the net figures (default 2)
  --history N         ROOMCAST_HISTORY: entries each room's stream keeps (default: the
                      server's, 1000). A publish to a full stream also trims its oldest
                      entry; each configuration's first line says whether the window's
                      publishes do
  --drain-ms N        after publishing, wait at most this long for deliveries (default 5000)
  --server-workers N  ROOMCAST_WORKERS per instance (default 1)
  --no-pin            do not pin the instances to CPU 0 and the load generator to CPU 1

env: ROOMCAST_BIN  the roomcast binary (default target/x86_64-unknown-linux-musl/release/roomcast)";

/// `--config all`.
const ALL: [Setup; 5] = [
    Setup::Single,
    Setup::Cluster(1, 0),
    Setup::Cluster(2, 0),
    Setup::Cluster(3, 0),
    Setup::Cluster(3, 1),
];

/// What every configuration runs.
pub struct Plan {
    pub rooms: usize,
    pub rate: f64,
    /// `rate` is per master.
    pub per_master: bool,
    pub secs: f64,
    pub warmup_secs: f64,
    pub idle: Duration,
    pub drain: Duration,
    /// ROOMCAST_HISTORY, when not the server's default.
    pub history: Option<usize>,
    pub server_workers: usize,
    /// (instances' CPU, generator's CPU) when pinned.
    pub pin: Option<(usize, usize)>,
    pub cores: usize,
}

fn main() {
    let args = Args::parse(
        &[
            "config",
            "rooms",
            "rate",
            "secs",
            "warmup-secs",
            "idle-secs",
            "history",
            "drain-ms",
            "server-workers",
        ],
        &["no-pin", "per-master"],
        USAGE,
    );
    let setups = match args.text("config").unwrap_or("all") {
        "all" => ALL.to_vec(),
        name => match Setup::parse(name) {
            Some(setup) => vec![setup],
            None => fail(format!(
                "--config: expected all, single, cluster-N or cluster-NxR, got {name:?}"
            )),
        },
    };
    let rooms: usize = args.or("rooms", 64);
    let rate: f64 = args.or("rate", 2000.0);
    let secs: f64 = args.or("secs", 10.0);
    if rooms == 0 || rate <= 0.0 || secs <= 0.0 {
        fail("--rooms, --rate and --secs must be above 0");
    }
    if let Some(setup) = setups.iter().find(|setup| setup.masters() > rooms) {
        fail(format!("{}: fewer rooms than masters", setup.name()));
    }
    let Some(version) = RedisServer::version() else {
        fail("no redis-server on PATH (apt-get install -y redis-server)");
    };
    let bin = paths::static_binary().unwrap_or_else(|error| fail(error));
    paths::warn_if_stale(&bin);

    // Before pinning: the core count reads this process's CPU affinity.
    bench::print_machine("redis CPU: Redis CPU per message, one redis-server against a cluster");
    let cores = bench::cores();
    let pin = if args.flag("no-pin") {
        None
    } else if cores >= 2 && bench::has_command("taskset") && bench::pin_self(1) {
        Some((0, 1))
    } else {
        eprintln!("note: not pinning (needs 2 cores and taskset)");
        None
    };
    let plan = Plan {
        rooms,
        rate,
        per_master: args.flag("per-master"),
        secs,
        warmup_secs: args.or("warmup-secs", 1.0),
        idle: Duration::from_secs_f64(args.or("idle-secs", 2.0)),
        drain: Duration::from_millis(args.or("drain-ms", 5000)),
        history: args.get("history"),
        server_workers: args.or("server-workers", 1),
        pin,
        cores,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("cannot build the runtime: {e}")));

    println!("command: {}", command_line());
    bench::print_binary(&bin);
    let version: Vec<&str> = version.split_whitespace().take(3).collect();
    println!(
        "redis:   {}, started by this bench per configuration on free loopback ports, no \
         persistence (appendonly no, save \"\"), not pinned; cluster nodes with the testkit's \
         settings (cluster-node-timeout 1000)",
        version.join(" ")
    );
    report::print_plan(&plan);

    let mut outcomes = Vec::new();
    for setup in setups {
        println!();
        // The testkit's Redis helpers panic when a server or cluster will not start: that
        // configuration fails, its processes are stopped as it unwinds, and the rest still run.
        let ran = panic::catch_unwind(AssertUnwindSafe(|| run::run(&plan, setup, &bin, &runtime)));
        match ran {
            Ok(Ok(outcome)) => {
                report::print_run(&plan, &outcome);
                outcomes.push(outcome);
            }
            Ok(Err(error)) => println!("-- {}: FAILED: {error}", setup.name()),
            Err(_) => println!("-- {}: FAILED (the panic is above)", setup.name()),
        }
    }
    println!();
    report::print_summary(&plan, &outcomes);
    if outcomes.is_empty() {
        fail("no configuration ran");
    }
}

impl Plan {
    /// The total publish rate for `setup`.
    pub fn rate_of(&self, setup: Setup) -> f64 {
        if self.per_master {
            self.rate * setup.masters() as f64
        } else {
            self.rate
        }
    }
}

/// How this report was made, as one would type it.
fn command_line() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    if args.is_empty() {
        "cargo bench --bench redis_cpu".into()
    } else {
        format!("cargo bench --bench redis_cpu -- {}", args.join(" "))
    }
}
