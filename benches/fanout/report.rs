//! What the fan-out bench prints: the CPU split, each plan, each run's table, the search's
//! steps.

use testkit::bench::{count, print_table_with};

use crate::BUSY_OTHERS;
use crate::args::Plan;
use crate::run::Outcome;

pub fn print_split(plan: &Plan) {
    let servers = if plan.redis.is_some() {
        "2 servers"
    } else {
        "server"
    };
    match plan.pin {
        Some((server, generator)) => println!(
            "CPU split: {servers} pinned to CPU {server} with taskset (ROOMCAST_WORKERS={}), \
             load generator pinned to CPU {generator} ({} tokio worker thread(s)){}",
            plan.server_workers,
            plan.gen_threads,
            if plan.redis.is_some() {
                "; redis-server not pinned by this bench"
            } else {
                ""
            }
        ),
        None => println!(
            "CPU split: not pinned; {servers} with ROOMCAST_WORKERS={}, load generator with {} \
             tokio worker thread(s)",
            plan.server_workers, plan.gen_threads
        ),
    }
}

pub fn print_plan(plan: &Plan) {
    let broker = match &plan.redis {
        Some(url) => format!("Redis at {url}, 2 instances, members alternate between them"),
        None => "embedded, 1 instance".into(),
    };
    let auth = if plan.auth {
        "; tokens required, every frame names its sender"
    } else {
        ""
    };
    println!(
        "-- shape {}: {} room(s) x {} members = {} connections; {} of each room's members publish \
         ({} publishers; they receive their own messages and count like any member); broker {broker}{auth}",
        plan.shape(),
        plan.rooms,
        plan.subs,
        plan.members(),
        plan.pubs,
        plan.rooms * plan.pubs,
    );
    println!(
        "config:  generator: {} reader tasks + 1 publisher task (1 ms ticks); server env: \
         ROOMCAST_WORKERS={} ROOMCAST_SEND_QUEUE={} ROOMCAST_LOG=info and the load generator's \
         limits lifted (rate, per-address caps); drain wait <= {} ms",
        plan.tasks,
        plan.server_workers,
        plan.send_queue
            .map_or("(default 256)".to_string(), |q| q.to_string()),
        plan.drain.as_millis()
    );
}

pub fn ms_of_us(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

fn ended_summary(outcome: &Outcome) -> String {
    if outcome.ended.is_empty() {
        return "0".into();
    }
    let parts: Vec<String> = outcome
        .ended
        .iter()
        .map(|(how, n)| format!("{n} x {how}"))
        .collect();
    format!("{} ({})", outcome.closed(), parts.join(", "))
}

pub fn print_outcome(plan: &Plan, o: &Outcome) {
    let pct = if o.expected > 0 {
        100.0 * o.delivered as f64 / o.expected as f64
    } else {
        0.0
    };
    let mut rows = vec![
        vec![
            "published".into(),
            format!(
                "{} msgs in {:.2} s = {:.0} msg/s (target {:.0})",
                count(o.sent),
                o.publish_secs,
                o.achieved_rate(),
                o.rate
            ),
        ],
        vec![
            "delivered / expected".into(),
            format!(
                "{} / {} ({pct:.3} %)",
                count(o.delivered),
                count(o.expected)
            ),
        ],
        vec!["lost".into(), count(o.lost)],
        vec!["duplicated (by seq)".into(), count(o.duplicated)],
        vec!["out of order".into(), count(o.reordered)],
        vec![
            "deliveries/s".into(),
            format!(
                "{:.0} (first publish to last delivery, {:.2} s)",
                o.deliveries_per_sec(),
                o.window_secs
            ),
        ],
        vec![
            "latency p50 / p99 / max".into(),
            format!(
                "{} / {} / {} ms",
                ms_of_us(o.latency_us.percentile(50.0)),
                ms_of_us(o.latency_us.percentile(99.0)),
                ms_of_us(o.latency_us.max)
            ),
        ],
        vec!["connections closed".into(), ended_summary(o)],
        vec![
            "CPU (% of one core)".into(),
            format!(
                "server {:.0} %, generator {:.0} %; machine {:.0} % of {} % busy, \
                 irq+softirq {:.0} % of it; other processes >= {:.0} %",
                o.server_cpu,
                o.generator_cpu,
                o.machine_cpu,
                plan.cores * 100,
                o.irq_cpu,
                o.other_cpu
            ),
        ],
        vec![
            "connect time".into(),
            format!("{:.2} s for {} connections", o.connect_secs, plan.members()),
        ],
    ];
    if o.publish_errors + o.malformed + o.unexpected > 0 {
        rows.push(vec![
            "errors".into(),
            format!(
                "{} publish, {} malformed frames, {} unexpected seqs",
                o.publish_errors, o.malformed, o.unexpected
            ),
        ]);
    }
    for (name, value) in &o.server_metrics {
        rows.push(vec![format!("server {name}"), count(*value)]);
    }
    print_table_with(&["fan-out", "result"], &rows, 2);
    if o.other_cpu > BUSY_OTHERS {
        println!(
            "WARNING: other processes used {:.0} % of a core during the run: the machine was \
             shared, so these figures understate what roomcast can do",
            o.other_cpu
        );
    }
    let failures = o.failures();
    println!(
        "verdict: {}",
        if failures.is_empty() {
            "zero loss and p99 < 100 ms".to_string()
        } else {
            format!("NOT clean: {}", failures.join(", "))
        }
    );
    print_server_log(o);
}

/// The servers' stderr lines other than info-level log lines, the first few of them.
pub fn print_server_log(o: &Outcome) {
    let notable: Vec<&String> = o
        .server_log
        .iter()
        .filter(|line| !line.contains("\"level\":\"info\""))
        .collect();
    for line in notable.iter().take(5) {
        println!("server log: {line}");
    }
    if notable.len() > 5 {
        println!("server log: ... {} more lines", notable.len() - 5);
    }
}

pub fn step_row(step: usize, o: &Outcome) -> Vec<String> {
    let failures = o.failures();
    vec![
        step.to_string(),
        format!("{:.0}", o.rate),
        format!("{:.0}", o.achieved_rate()),
        format!("{:.0}", o.deliveries_per_sec()),
        format!("{}/{}", count(o.delivered), count(o.expected)),
        count(o.lost),
        count(o.duplicated),
        o.closed().to_string(),
        ms_of_us(o.latency_us.percentile(50.0)),
        ms_of_us(o.latency_us.percentile(99.0)),
        ms_of_us(o.latency_us.max),
        format!("{:.0}", o.server_cpu),
        format!("{:.0}", o.generator_cpu),
        format!("{:.0}", o.machine_cpu),
        format!("{:.0}", o.other_cpu),
        format!(
            "{}{}",
            if failures.is_empty() {
                "pass".to_string()
            } else {
                failures.join("; ")
            },
            if o.other_cpu > BUSY_OTHERS {
                " (machine busy)"
            } else {
                ""
            }
        ),
    ]
}

pub const STEP_HEADER: [&str; 16] = [
    "step",
    "rate msg/s",
    "sent msg/s",
    "deliveries/s",
    "delivered/expected",
    "lost",
    "dup",
    "closed",
    "p50 ms",
    "p99 ms",
    "max ms",
    "server CPU%",
    "gen CPU%",
    "machine CPU%",
    "others CPU%",
    "result",
];
