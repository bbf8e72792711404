//! The command table: for each configuration's masters, and its replicas, what every command
//! costs per call and how often it runs per message, from `INFO commandstats`; with the CPU,
//! reads, traffic and wake-ups per message beside them.

use std::collections::BTreeMap;

use testkit::bench::print_table_with;

use crate::nodes::{Calls, Reading};
use crate::run::Outcome;

/// Commands below this many calls per message in every configuration are left out of the
/// command table (they are in the CPU figures all the same).
const FEW_CALLS: f64 = 0.005;

/// Commands that clients send (roomcast's scripts, its health checks, a replica's stream):
/// the ones whose time is not inside another's.
const TOP_LEVEL: &[&str] = &["evalsha", "eval", "ping", "exec", "multi", "select"];

/// One column of the command table: a configuration's masters, or its replicas.
struct Column<'a> {
    label: String,
    outcome: &'a Outcome,
    nodes: Vec<&'a Reading>,
    /// Over the window, these nodes together.
    commands: BTreeMap<String, Calls>,
    /// Over the whole run, for the subscribes made before the window.
    lifetime: BTreeMap<String, Calls>,
}

impl Column<'_> {
    /// `value` per published message.
    fn per_msg(&self, value: f64) -> f64 {
        value / self.outcome.published.max(1) as f64
    }

    fn sum(&self, value: impl Fn(&Reading) -> f64) -> f64 {
        self.nodes.iter().map(|r| value(r)).sum()
    }
}

fn columns(outcomes: &[Outcome]) -> Vec<Column<'_>> {
    let mut columns = Vec::new();
    for o in outcomes {
        let masters = o.setup.masters();
        for replicas in [false, true] {
            let picked: Vec<usize> = (0..o.setup.nodes())
                .filter(|&i| (i >= masters) == replicas)
                .collect();
            if picked.is_empty() {
                continue;
            }
            columns.push(Column {
                label: if replicas {
                    format!("{} replicas", o.setup.name())
                } else {
                    o.setup.name()
                },
                outcome: o,
                nodes: picked.iter().map(|&i| &o.window[i]).collect(),
                commands: sum_commands(picked.iter().map(|&i| &o.window[i].commands)),
                lifetime: sum_commands(picked.iter().map(|&i| &o.lifetime[i].commands)),
            });
        }
    }
    columns
}

/// Per command, for each configuration's masters (and replicas): µs per call and calls per
/// message, over the window.
pub fn print(outcomes: &[Outcome]) {
    let columns = columns(outcomes);
    // The commands that matter somewhere, the costliest per message first.
    let mut names: Vec<(f64, String)> = Vec::new();
    for column in &columns {
        for (name, calls) in &column.commands {
            if column.per_msg(calls.calls as f64) < FEW_CALLS {
                continue;
            }
            let cost = column.per_msg(calls.usec as f64);
            match names.iter_mut().find(|(_, known)| known == name) {
                Some((most, _)) => *most = most.max(cost),
                None => names.push((cost, name.clone())),
            }
        }
    }
    names.sort_by(|a, b| b.0.total_cmp(&a.0));
    let row = |label: String, cell: &dyn Fn(&Column) -> String| {
        std::iter::once(label)
            .chain(columns.iter().map(cell))
            .collect::<Vec<String>>()
    };
    let mut rows: Vec<Vec<String>> = names
        .iter()
        .map(|(_, name)| {
            let label = match name.as_str() {
                "evalsha" => "evalsha (the whole script)".to_string(),
                _ => name.clone(),
            };
            row(label, &|column| match column.commands.get(name) {
                Some(calls) if column.per_msg(calls.calls as f64) >= FEW_CALLS => format!(
                    "{:.2} x {:.2}",
                    calls.usec as f64 / calls.calls as f64,
                    column.per_msg(calls.calls as f64)
                ),
                _ => "-".into(),
            })
        })
        .collect();
    for name in ["ssubscribe", "subscribe"] {
        if columns.iter().any(|c| c.lifetime.contains_key(name)) {
            rows.push(row(
                format!("{name} (whole run: us/call x calls)"),
                &|column| match column.lifetime.get(name) {
                    Some(calls) if calls.calls > 0 => format!(
                        "{:.2} x {}",
                        calls.usec as f64 / calls.calls as f64,
                        calls.calls
                    ),
                    _ => "-".into(),
                },
            ));
        }
    }
    rows.push(row("CPU us/msg: user + sys".into(), &|column| {
        let (cpu, sys) = (column.sum(|r| r.cpu_secs), column.sum(|r| r.sys_secs));
        format!(
            "{:.1} + {:.1}",
            column.per_msg((cpu - sys) * 1e6),
            column.per_msg(sys * 1e6)
        )
    }));
    rows.push(row("  in commands (top level)".into(), &|column| {
        let usec: u64 = column
            .commands
            .iter()
            .filter(|(name, _)| TOP_LEVEL.contains(&name.as_str()))
            .map(|(_, calls)| calls.usec)
            .sum();
        format!("{:.1}", column.per_msg(usec as f64))
    }));
    rows.push(row("reads per msg".into(), &|column| {
        format!("{:.2}", column.per_msg(column.sum(|r| r.reads as f64)))
    }));
    rows.push(row("client bytes in / out per msg".into(), &|column| {
        format!(
            "{:.0} / {:.0}",
            column.per_msg(column.sum(|r| r.bytes_in as f64)),
            column.per_msg(column.sum(|r| r.bytes_out as f64))
        )
    }));
    rows.push(row("wake-ups / preemptions per msg".into(), &|column| {
        format!(
            "{:.2} / {:.2}",
            column.per_msg(column.sum(|r| r.sleeps as f64)),
            column.per_msg(column.sum(|r| r.preempted as f64))
        )
    }));
    let header: Vec<String> = std::iter::once("command: us/call x calls/msg".to_string())
        .chain(columns.iter().map(|column| column.label.clone()))
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    println!(
        "Commands over the window (INFO commandstats), every master of a configuration together, \
         then its replicas. A script's commands are counted on their own as well, and their time \
         is inside the script's; times are wall-clock time inside the command, without reading, \
         parsing or replying, and grow when the node is preempted. A replica applies what its \
         master's scripts wrote in MULTI/EXEC. Per message: per message published in all"
    );
    print_table_with(&header, &rows, 1);
    println!(
        "\ntop level: {}, as clients send them; the rest of the CPU is the event loop, reading, \
         parsing, replying and publishing to subscribers. client bytes: what the nodes read and \
         wrote on client connections (a master's stream to its replica is one; the cluster bus \
         is not). wake-ups: voluntary context switches of the main thread (a wait in epoll that \
         had to sleep); preemptions: involuntary ones",
        TOP_LEVEL.join(", ")
    );
}

fn sum_commands<'a>(
    readings: impl Iterator<Item = &'a BTreeMap<String, Calls>>,
) -> BTreeMap<String, Calls> {
    let mut sum: BTreeMap<String, Calls> = BTreeMap::new();
    for commands in readings {
        for (name, calls) in commands {
            let total = sum.entry(name.clone()).or_default();
            total.calls += calls.calls;
            total.usec += calls.usec;
        }
    }
    sum
}
