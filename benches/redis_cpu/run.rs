//! One configuration: its Redis, two instances, the members; warm-up, idle window, measured
//! window; and what each process spent in it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use testkit::bench::LOAD_GENERATOR_LIMITS;
use testkit::{Endpoint, Roomcast, Server, metrics, procfs};

use crate::Plan;
use crate::load::{Load, MEMBERS_PER_ROOM};
use crate::nodes::{Reading, Redis, Setup};

/// How long the instances may take to say they are ready.
const READY_WITHIN: Duration = Duration::from_secs(15);

pub struct Outcome {
    pub setup: Setup,
    /// The total publish rate asked for.
    pub rate: f64,
    /// Rooms each master serves.
    pub rooms_per_master: Vec<usize>,
    /// Messages published in the measured window, in all and to each master's rooms.
    pub published: u64,
    pub published_per_master: Vec<u64>,
    pub publish_secs: f64,
    pub publish_errors: u64,
    /// Deliveries in the window: every member gets every message of its room, its own too.
    pub expected: u64,
    pub delivered: u64,
    /// Over the whole run, against what was sent to each member's room.
    pub missing: u64,
    pub extra: u64,
    pub connections_ended: u64,
    /// From the first publish to the last delivery (or the drain's end).
    pub window_secs: f64,
    /// Each node's growth over the measured window, in [`Setup::nodes`] order.
    pub window: Vec<Reading>,
    /// Each node's CPU seconds per second with the members connected and nobody publishing.
    pub idle_cpu_per_sec: Vec<f64>,
    /// Each node's counters at the end: what the subscribes cost happened before the window.
    pub lifetime: Vec<Reading>,
    /// CPU seconds over the window: both instances, this load generator.
    pub roomcast_cpu_secs: f64,
    pub generator_cpu_secs: f64,
    /// Machine-wide busy time over the window, in % of one core.
    pub machine_busy: f64,
    pub startup_secs: f64,
}

pub fn run(plan: &Plan, setup: Setup, bin: &Path, runtime: &Runtime) -> Result<Outcome, String> {
    let started = Instant::now();
    let redis = Redis::start(setup);
    let rooms = redis.rooms(setup, plan.rooms);
    let mut rooms_per_master = vec![0; setup.masters()];
    for (_, master) in &rooms {
        rooms_per_master[*master] += 1;
    }
    let servers = start_instances(plan, &redis, bin)?;
    let addrs: Vec<SocketAddr> = servers.iter().map(Server::addr).collect();
    let pids: Vec<u32> = servers.iter().map(Server::pid).collect();
    let names: Vec<String> = rooms.iter().map(|(name, _)| name.clone()).collect();
    // Sockets and reader tasks belong to the runtime, also when they are dropped here.
    let _runtime = runtime.enter();
    let mut load = runtime.block_on(Load::connect(&addrs, &names))?;
    let startup_secs = started.elapsed().as_secs_f64();

    runtime.block_on(load.publish(plan.rate_of(setup), plan.warmup_secs));
    if !runtime.block_on(load.drain(plan.drain)) {
        return Err(format!(
            "the warm-up's messages did not all arrive: {} missing",
            load.missing_and_extra().0
        ));
    }

    let before = redis.read(setup)?;
    let idle_started = Instant::now();
    std::thread::sleep(plan.idle);
    let idle_secs = idle_started.elapsed().as_secs_f64();
    let idle_cpu_per_sec = redis
        .read(setup)?
        .iter()
        .zip(&before)
        .map(|(after, before)| after.since(before).cpu_secs / idle_secs)
        .collect();

    let received_before: u64 = load.received().iter().sum();
    let before = redis.read(setup)?;
    let ticks_before: Vec<u64> = pids.iter().map(|&pid| procfs::cpu_ticks(pid)).collect();
    let generator_before = procfs::cpu_ticks("self");
    let machine_before = procfs::machine_ticks();
    let window_started = Instant::now();
    let published = runtime.block_on(load.publish(plan.rate_of(setup), plan.secs));
    runtime.block_on(load.drain(plan.drain));
    let window_secs = window_started.elapsed().as_secs_f64();
    let after = redis.read(setup)?;
    let tick = procfs::clock_ticks_per_second();
    let roomcast_ticks: u64 = pids
        .iter()
        .zip(&ticks_before)
        .map(|(&pid, before)| procfs::cpu_ticks(pid).saturating_sub(*before))
        .sum();
    let generator_ticks = procfs::cpu_ticks("self").saturating_sub(generator_before);
    let machine_ticks = procfs::machine_ticks().busy - machine_before.busy;
    let received_after: u64 = load.received().iter().sum();

    let mut published_per_master = vec![0; setup.masters()];
    for ((_, master), sent) in rooms.iter().zip(&published.per_room) {
        published_per_master[*master] += sent;
    }
    let sent: u64 = published.per_room.iter().sum();
    let (missing, extra) = load.missing_and_extra();
    let outcome = Outcome {
        setup,
        rate: plan.rate_of(setup),
        rooms_per_master,
        published: sent,
        published_per_master,
        publish_secs: published.secs,
        publish_errors: published.errors,
        expected: sent * MEMBERS_PER_ROOM as u64,
        delivered: received_after - received_before,
        missing,
        extra,
        connections_ended: load.ended(),
        window_secs,
        window: after.iter().zip(&before).map(|(a, b)| a.since(b)).collect(),
        idle_cpu_per_sec,
        lifetime: after,
        roomcast_cpu_secs: roomcast_ticks as f64 / tick,
        generator_cpu_secs: generator_ticks as f64 / tick,
        machine_busy: machine_ticks as f64 / tick / window_secs * 100.0,
        startup_secs,
    };
    // Members first, then the instances, then Redis.
    drop(load);
    for (i, mut server) in servers.into_iter().enumerate() {
        if !server.alive() {
            return Err(format!("instance {i} exited during the run"));
        }
    }
    drop(redis);
    Ok(outcome)
}

/// Two instances on `redis`, each ready (its broker up) before this returns.
fn start_instances(plan: &Plan, redis: &Redis, bin: &Path) -> Result<Vec<Server>, String> {
    let (variable, value) = redis.roomcast_env();
    let mut servers = Vec::new();
    for _ in 0..MEMBERS_PER_ROOM {
        let mut roomcast = Roomcast::binary(bin)
            .env("ROOMCAST_ADDR", "127.0.0.1:0")
            .env("ROOMCAST_LOG", "info")
            .env("ROOMCAST_WORKERS", &plan.server_workers.to_string())
            .envs(LOAD_GENERATOR_LIMITS)
            .env(variable, &value);
        if let Some(history) = plan.history {
            roomcast = roomcast.env("ROOMCAST_HISTORY", &history.to_string());
        }
        if let Some((cpu, _)) = plan.pin {
            roomcast = roomcast.cpu(cpu);
        }
        servers.push(roomcast.spawn()?);
    }
    let started = Instant::now();
    for (i, server) in servers.iter().enumerate() {
        if !server.listening().broker.starts_with("redis") {
            return Err(format!(
                "instance {i} does not use {variable}: its listening line says broker={:?}",
                server.listening().broker
            ));
        }
        while metrics::read_blocking(server.addr(), "roomcast_ready") != Some(1) {
            if started.elapsed() > READY_WITHIN {
                return Err(format!(
                    "instance {i} not ready after {READY_WITHIN:?}; its log: {:?}",
                    server.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(servers)
}
