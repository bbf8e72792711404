//! What the bench prints: the plan, a few lines per configuration as it ends, then the CPU
//! table over every configuration (the command table is in [`commands`](crate::commands)).

use testkit::bench::{count, print_table};

use crate::Plan;
use crate::load::MEMBERS_PER_ROOM;
use crate::run::Outcome;

pub fn print_plan(plan: &Plan) {
    let split = match plan.pin {
        Some((servers, generator)) => format!(
            "both instances pinned to CPU {servers} with taskset, load generator pinned to CPU \
             {generator}, redis-server not pinned"
        ),
        None => "not pinned".into(),
    };
    let rate = if plan.per_master {
        format!("{} msg/s per master", plan.rate)
    } else {
        format!("{} msg/s in total", plan.rate)
    };
    println!(
        "load:    {} rooms x {MEMBERS_PER_ROOM} members (one on each of 2 instances, one of the \
         two publishing, both receiving), {rate}, round-robin over the rooms, for {} s after a \
         {} s warm-up; idle window {:.1} s",
        plan.rooms,
        plan.secs,
        plan.warmup_secs,
        plan.idle.as_secs_f64()
    );
    let history = history(plan);
    println!(
        "config:  instances: ROOMCAST_WORKERS={}, ROOMCAST_LOG=info, ROOMCAST_HISTORY={history}, \
         the load generator's limits lifted (rate, per-address caps); CPU split: \
         {split}",
        plan.server_workers
    );
}

/// ROOMCAST_HISTORY as the instances have it.
fn history(plan: &Plan) -> usize {
    plan.history
        .unwrap_or(roomcast::config::Config::default().history)
}

/// Whether the window's publishes trim the rooms' streams.
fn trimming(plan: &Plan, o: &Outcome) -> &'static str {
    let history = history(plan) as f64;
    let per_room = |secs: f64| secs * o.rate / plan.rooms as f64;
    if history == 0.0 {
        "streams off"
    } else if per_room(plan.warmup_secs) >= history {
        "every stream full before the window: each publish trims one entry"
    } else if per_room(plan.warmup_secs + plan.secs) > history {
        "streams fill during the window: later publishes trim"
    } else {
        "no stream fills: no publish trims"
    }
}

/// A configuration's lines, as it ends.
pub fn print_run(plan: &Plan, o: &Outcome) {
    let names = |values: Vec<String>| {
        values
            .iter()
            .enumerate()
            .map(|(i, value)| format!("{} {value}", o.setup.node_name(i)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "-- {}: {} node(s); rooms per master {}; started with members connected in {:.2} s; {}",
        o.setup.name(),
        o.setup.nodes(),
        join(o.rooms_per_master.iter().map(|n| n.to_string())),
        o.startup_secs,
        trimming(plan, o)
    );
    println!(
        "   published {} in {:.2} s ({:.0} msg/s of {}, {} errors); delivered {} of {} in {:.2} s; \
         over the whole run {} missing, {} extra, {} connections ended",
        count(o.published),
        o.publish_secs,
        o.published as f64 / o.publish_secs.max(1e-9),
        o.rate,
        o.publish_errors,
        count(o.delivered),
        count(o.expected),
        o.window_secs,
        o.missing,
        o.extra,
        o.connections_ended
    );
    println!(
        "   Redis CPU ms: {}; idle ms/s: {}",
        names(
            o.window
                .iter()
                .map(|r| format!("{:.1}", r.cpu_secs * 1e3))
                .collect()
        ),
        names(
            o.idle_cpu_per_sec
                .iter()
                .map(|secs| format!("{:.2}", secs * 1e3))
                .collect()
        )
    );
    let percent = |secs: f64| secs / o.window_secs * 100.0;
    let ours = percent(o.roomcast_cpu_secs + o.generator_cpu_secs + o.redis_cpu());
    println!(
        "   CPU over the window, % of one core: instances {:.0}, generator {:.0}, Redis {:.0}; \
         machine {:.0} busy, so other processes and interrupts {:.0}",
        percent(o.roomcast_cpu_secs),
        percent(o.generator_cpu_secs),
        percent(o.redis_cpu()),
        o.machine_busy,
        (o.machine_busy - ours).max(0.0)
    );
}

impl Outcome {
    fn redis_cpu(&self) -> f64 {
        self.window.iter().map(|r| r.cpu_secs).sum()
    }

    /// Node `i`'s CPU over the window less what it spends idle in as long.
    fn net_cpu(&self, i: usize) -> f64 {
        (self.window[i].cpu_secs - self.idle_cpu_per_sec[i] * self.window_secs).max(0.0)
    }

    /// Net µs per message to the rooms each node serves (a replica: its master's), for the
    /// masters or for the replicas.
    fn per_node_us(&self, replicas: bool) -> Vec<f64> {
        (0..self.setup.nodes())
            .filter(|&i| (i >= self.setup.masters()) == replicas)
            .map(|i| {
                let sent = self.published_per_master[self.setup.master_of_node(i)];
                self.net_cpu(i) * 1e6 / sent.max(1) as f64
            })
            .collect()
    }
}

pub fn print_summary(plan: &Plan, outcomes: &[Outcome]) {
    if outcomes.is_empty() {
        return;
    }
    println!(
        "Redis CPU per message at {} msg/s {} over {} rooms (CPU: used_cpu_sys + \
         used_cpu_user of every node, over the window from the first publish to the last \
         delivery)",
        plan.rate,
        if plan.per_master {
            "per master"
        } else {
            "in total"
        },
        plan.rooms
    );
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let total = o.redis_cpu();
            let idle: f64 = o.idle_cpu_per_sec.iter().sum::<f64>() * o.window_secs;
            let masters = o.setup.masters();
            let master_cpu: f64 = (0..masters).map(|i| o.net_cpu(i)).sum();
            let master_us = master_cpu * 1e6 / o.published.max(1) as f64;
            let replicas = o.per_node_us(true);
            vec![
                o.setup.name(),
                count(o.published),
                format!("{} / {}", count(o.delivered), count(o.expected)),
                format!("{:.1}", total * 1e3),
                format!("{:.1}", total * 1e6 / o.published.max(1) as f64),
                format!("{:.1}", total * 1e6 / o.delivered.max(1) as f64),
                format!("{:.1}", idle * 1e3),
                format!("{:.1}", (total - idle) * 1e6 / o.published.max(1) as f64),
                join(o.per_node_us(false).iter().map(|us| format!("{us:.1}"))),
                if replicas.is_empty() {
                    "-".into()
                } else {
                    join(replicas.iter().map(|us| format!("{us:.1}")))
                },
                count((masters as f64 * 1e6 / master_us.max(1e-9)).round() as u64),
                format!(
                    "{:.1}",
                    o.roomcast_cpu_secs * 1e6 / o.published.max(1) as f64
                ),
            ]
        })
        .collect();
    print_table(
        &[
            "config",
            "published",
            "delivered / expected",
            "Redis CPU ms",
            "Redis us/msg",
            "us/delivery",
            "of it idle ms",
            "net us/msg",
            "net us/msg on each master",
            "on each replica",
            "capacity msg/s",
            "roomcast us/msg",
        ],
        &rows,
    );
    println!(
        "\nnet: less each node's idle CPU (measured with the members connected, nobody \
         publishing) for as long as the window; a master's figure is per message to its own \
         rooms, a replica's per message to its master's. capacity: masters x (1 s / net us per \
         message on a master), what the cluster could take if each master had a core of its own \
         (replicas need theirs too); on this machine everything shares {} cores. It is a lower \
         bound: at a few thousand messages/s a node wakes up for nearly every message, and \
         nearer its limit messages share reads and wake-ups and cost less (compare \
         --per-master). roomcast: both instances' user + system time from /proc/PID/stat (10 ms \
         ticks)",
        plan.cores
    );
    println!();
    crate::commands::print(outcomes);
}

fn join(values: impl Iterator<Item = String>) -> String {
    values.collect::<Vec<_>>().join(" / ")
}
