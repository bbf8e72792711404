//! One run: fresh servers, the load, and what it came to.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::runtime::Runtime;

use testkit::bench::Histogram;
use testkit::process::Listening;
use testkit::{Endpoint, Roomcast, Server, metrics};

use crate::args::Plan;
use crate::load;

/// The search's pass mark.
const P99_LIMIT_US: u64 = 100_000;

#[derive(Default)]
pub struct Outcome {
    pub rate: f64,
    pub sent: u64,
    pub publish_secs: f64,
    pub publish_errors: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub unexpected: u64,
    pub malformed: u64,
    /// From the first publish to the last delivery.
    pub window_secs: f64,
    pub latency_us: Histogram,
    /// How members' connections ended during the run: "close 4008", "error ...", "eof".
    pub ended: BTreeMap<String, u64>,
    /// Percent of one core, over the publish and drain window.
    pub server_cpu: f64,
    pub generator_cpu: f64,
    /// Machine-wide irq + softirq (loopback TCP processing, mostly). With tick-based
    /// accounting it is also charged to whichever process it interrupted.
    pub irq_cpu: f64,
    /// Machine-wide busy time, of at most 100 % per core.
    pub machine_cpu: f64,
    /// At least this much went to other processes and kernel threads:
    /// machine − server − generator − irq (irq may sit inside the process figures).
    pub other_cpu: f64,
    pub connect_secs: f64,
    pub server_metrics: Vec<(String, u64)>,
    pub server_log: Vec<String>,
}

impl Outcome {
    pub fn deliveries_per_sec(&self) -> f64 {
        if self.window_secs > 0.0 {
            self.delivered as f64 / self.window_secs
        } else {
            0.0
        }
    }

    pub fn achieved_rate(&self) -> f64 {
        self.sent as f64 / self.publish_secs.max(1e-9)
    }

    pub fn closed(&self) -> u64 {
        self.ended.values().sum()
    }

    /// Why this run does not count as zero loss with p99 < 100 ms, if it does not.
    pub fn failures(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.lost > 0 {
            why.push(format!("{} lost", self.lost));
        }
        if self.duplicated > 0 {
            why.push(format!("{} duplicated", self.duplicated));
        }
        if self.closed() > 0 {
            why.push(format!("{} closed", self.closed()));
        }
        if self.latency_us.percentile(99.0) >= P99_LIMIT_US {
            why.push("p99 >= 100 ms".into());
        }
        if self.publish_errors > 0 || self.malformed > 0 || self.unexpected > 0 {
            why.push("errors".into());
        }
        if self.achieved_rate() < 0.97 * self.rate {
            why.push(format!(
                "generator reached only {:.0} msg/s",
                self.achieved_rate()
            ));
        }
        why
    }
}

pub fn run(
    plan: &Plan,
    rate: f64,
    bin: &Path,
    runtime: &Runtime,
    step: usize,
) -> Result<Outcome, String> {
    let mut env = vec![
        (
            "ROOMCAST_WORKERS".to_string(),
            plan.server_workers.to_string(),
        ),
        (
            "ROOMCAST_MAX_CONNECTIONS".to_string(),
            (plan.members() + 100).max(20_000).to_string(),
        ),
    ];
    if let Some(queue) = plan.send_queue {
        env.push(("ROOMCAST_SEND_QUEUE".into(), queue.to_string()));
    }
    for (name, value) in testkit::bench::LOAD_GENERATOR_LIMITS {
        env.push((name.to_string(), value.to_string()));
    }
    if let Some(url) = &plan.redis {
        env.push(("ROOMCAST_REDIS_URL".into(), url.clone()));
    }
    if plan.auth {
        env.push(("ROOMCAST_AUTH".into(), "required".into()));
        env.push(("ROOMCAST_AUTH_SECRET".into(), crate::load::SECRET.into()));
    }
    let mut servers = Vec::new();
    for _ in 0..plan.instances() {
        let mut roomcast = Roomcast::binary(bin)
            .env("ROOMCAST_ADDR", "127.0.0.1:0")
            .env("ROOMCAST_LOG", "info")
            .envs(&env);
        if let Some((cpu, _)) = plan.pin {
            roomcast = roomcast.cpu(cpu);
        }
        servers.push(roomcast.spawn()?);
    }
    if plan.redis.is_some()
        && let Some(server) = servers.iter().find(|s| s.listening().broker != "redis")
    {
        return Err(format!(
            "this roomcast does not use ROOMCAST_REDIS_URL: its listening line says broker={:?}; \
             build one with the Redis broker",
            server.listening().broker
        ));
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(Server::addr).collect();
    let pids: Vec<u32> = servers.iter().map(Server::pid).collect();
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let tag = format!("b{stamp:x}-{step}");
    let mut outcome = runtime.block_on(load::drive(plan, rate, &addrs, &pids, &tag))?;
    for (i, server) in servers.iter_mut().enumerate() {
        if !server.alive() {
            outcome
                .server_log
                .push(format!("server {i} EXITED during the run"));
        }
        for name in [
            "roomcast_messages_in_total",
            "roomcast_messages_out_total",
            "roomcast_slow_reader_drops_total",
        ] {
            let value = metrics::read_blocking(server.addr(), name).unwrap_or(0);
            match outcome.server_metrics.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) => *sum += value,
                None => outcome.server_metrics.push((name.to_string(), value)),
            }
        }
        let logs = server.logs().into_iter();
        outcome
            .server_log
            .extend(logs.filter(|line| Listening::parse(line).is_none()));
    }
    drop(servers);
    Ok(outcome)
}
