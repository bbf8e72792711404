//! Fan-out: N rooms × S members, P of them publishing, at a fixed total publish rate for D
//! seconds; every member counts what it receives per room by seq.
//!
//!   cargo bench --bench fanout -- --shape 1x50 [--rate R] [--secs D] [--pubs P]
//!   cargo bench --bench fanout -- --shape 1x50 --search
//!   cargo bench --bench fanout -- --shape all --redis start
//!
//! Each run starts a fresh server (two with `--redis`; `--redis start` also runs a private
//! `redis-server` on a free port for the whole invocation), connects every member, waits for
//! `roomcast_websockets_open` to count them, publishes for D seconds, waits for the deliveries
//! to drain, then kills the servers by PID. A message's text is `<ns since bench start>:<member>:<n>`,
//! so the receiving member knows its latency from publish to receive.
//!
//! The command line is in [`args`]; [`run`] is one run, driven by [`load`] (connect,
//! publish, drain) and counted by [`receive`]; [`search`] looks for the highest clean rate;
//! [`report`] prints it all.

mod args;
mod load;
mod receive;
mod report;
mod run;
mod search;

use std::path::Path;
use std::time::Duration;

use tokio::runtime::Runtime;

use testkit::bench::{self, Args, fail};
use testkit::paths;
use testkit::redis::RedisServer;

use args::Plan;

/// Above this share of a core used by other processes, a run is flagged as disturbed.
const BUSY_OTHERS: f64 = 20.0;

fn main() {
    let args = args::parse();
    let shapes = args::shapes(&args);
    let bin = paths::static_binary().unwrap_or_else(|error| fail(error));
    // Before pinning: the core count reads this process's CPU affinity.
    bench::print_machine("fan-out");
    let cores = bench::cores();
    let pin = if args.flag("no-pin") {
        None
    } else if cores >= 2 && bench::has_command("taskset") {
        Some((0, 1))
    } else {
        eprintln!("note: not pinning (needs 2 cores and taskset)");
        None
    };
    if let Some((_, generator)) = pin
        && !bench::pin_self(generator)
    {
        fail("taskset could not pin the load generator; use --no-pin");
    }
    let redis = match args.text("redis") {
        Some("start") => Some(start_redis()),
        _ => None,
    };
    let base = Plan::from_args(&args, cores, pin, redis.as_ref().map(RedisServer::url));
    let largest = shapes.iter().map(|(n, s)| n * s).max().unwrap_or(0) as u64;
    let fds = bench::raise_nofile(largest + 256);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(base.gen_threads)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("cannot build the runtime: {e}")));

    bench::print_binary(&bin);
    report::print_split(&base);
    println!("fd limit (soft) of the bench and the servers it starts: {fds}");
    if let Some(own) = &redis {
        let version = RedisServer::version().unwrap_or_default();
        let version: Vec<&str> = version.split_whitespace().take(3).collect();
        println!(
            "redis:   {} started by this bench at {} (pid {}, no persistence, not pinned)",
            version.join(" "),
            own.url(),
            own.pid().unwrap_or(0)
        );
    }

    // The receive path's parser must read what roomcast writes, without falling back to a
    // full JSON parse, or the generator measures itself instead of the server.
    assert_eq!(
        receive::parse_fast(r#"{"message":"123:4:5","seq":678,"ts":1764000000000}"#),
        Some((123, 678))
    );
    let result = run_shapes(&args, &shapes, &base, &bin, &runtime);
    // Stop our redis-server (if any) before exiting, also on failure.
    drop(redis);
    if let Err(error) = result {
        fail(error);
    }
}

/// `--redis start`: a private redis-server on a free port, without persistence.
fn start_redis() -> RedisServer {
    if RedisServer::version().is_none() {
        fail("--redis start: no redis-server on PATH");
    }
    RedisServer::start_with(&["--appendonly", "no", "--loglevel", "warning"])
}

fn run_shapes(
    args: &Args,
    shapes: &[(usize, usize)],
    base: &Plan,
    bin: &Path,
    runtime: &Runtime,
) -> Result<(), String> {
    for &(rooms, subs) in shapes {
        let plan = base.with_shape(rooms, subs);
        let default_rate = (150_000.0 / subs as f64).round().max(1.0);
        let rate: f64 = args.or("rate", default_rate);
        println!();
        report::print_plan(&plan);
        if args.flag("search") {
            let steps = args.or("max-steps", 14);
            let budget = Duration::from_secs(args.or("budget-secs", 300));
            search::run(&plan, rate, steps, budget, bin, runtime)?;
        } else {
            println!("rate:    {rate} messages/s in total for {} s", plan.secs);
            let outcome = run::run(&plan, rate, bin, runtime, 0)?;
            report::print_outcome(&plan, &outcome);
        }
    }
    Ok(())
}
