//! The Redis side of a run: one redis-server or a cluster, which master serves which room, and
//! readings of every node's CPU time, reads and command statistics.

use std::collections::BTreeMap;

use testkit::procfs;
use testkit::redis::RedisServer;
use testkit::redis_cluster::RedisCluster;

/// A configuration's Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// One redis-server, `ROOMCAST_REDIS_URL`.
    Single,
    /// (masters, replicas of each), `ROOMCAST_REDIS_CLUSTER`.
    Cluster(usize, usize),
}

impl Setup {
    /// `single`, `cluster-N` or `cluster-NxR`.
    pub fn parse(name: &str) -> Option<Setup> {
        if name == "single" {
            return Some(Setup::Single);
        }
        let shape = name.strip_prefix("cluster-")?;
        let (masters, replicas) = shape.split_once('x').unwrap_or((shape, "0"));
        let masters: usize = masters.parse().ok()?;
        (masters > 0).then_some(Setup::Cluster(masters, replicas.parse().ok()?))
    }

    pub fn name(&self) -> String {
        match self {
            Setup::Single => "single".into(),
            Setup::Cluster(masters, 0) => format!("cluster-{masters}"),
            Setup::Cluster(masters, replicas) => format!("cluster-{masters}x{replicas}"),
        }
    }

    pub fn masters(&self) -> usize {
        match self {
            Setup::Single => 1,
            Setup::Cluster(masters, _) => *masters,
        }
    }

    /// Every node: the masters, then each master's replicas in turn.
    pub fn nodes(&self) -> usize {
        match self {
            Setup::Single => 1,
            Setup::Cluster(masters, replicas) => masters * (1 + replicas),
        }
    }

    /// The master that node `index` is or replicates.
    pub fn master_of_node(&self, index: usize) -> usize {
        match self {
            Setup::Cluster(masters, replicas) if index >= *masters => (index - masters) / replicas,
            _ => index,
        }
    }

    /// Node `index`'s short name: `m0`…, or `r0`… for a replica of master 0.
    pub fn node_name(&self, index: usize) -> String {
        let role = if index < self.masters() { 'm' } else { 'r' };
        format!("{role}{}", self.master_of_node(index))
    }
}

/// The running Redis of one configuration; every node is killed on drop.
pub enum Redis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    pub fn start(setup: Setup) -> Redis {
        match setup {
            Setup::Single => Redis::Single(RedisServer::start_with(&[
                "--appendonly",
                "no",
                "--save",
                "",
                "--loglevel",
                "warning",
            ])),
            Setup::Cluster(masters, replicas) => {
                Redis::Cluster(RedisCluster::start(masters, replicas))
            }
        }
    }

    /// The variable that points roomcast here, and its value.
    pub fn roomcast_env(&self) -> (&'static str, String) {
        match self {
            Redis::Single(server) => ("ROOMCAST_REDIS_URL", server.url()),
            Redis::Cluster(cluster) => ("ROOMCAST_REDIS_CLUSTER", cluster.seeds()),
        }
    }

    fn node(&self, index: usize) -> &RedisServer {
        match self {
            Redis::Single(server) => server,
            Redis::Cluster(cluster) => cluster.node(index),
        }
    }

    /// The master that serves `room`'s keys and channel, `roomcast:room:{<room>}:…`.
    fn master_of(&self, room: &str) -> usize {
        match self {
            Redis::Single(_) => 0,
            Redis::Cluster(cluster) => {
                cluster.master_of(RedisCluster::slot_of(&format!("roomcast:room:{{{room}}}")))
            }
        }
    }

    /// `count` rooms `cpu-<n>`, in turn on master 0, 1, …: each master serves as many as the
    /// next (one more at most), and consecutive rooms are on different masters. Returns each
    /// room with its master.
    pub fn rooms(&self, setup: Setup, count: usize) -> Vec<(String, usize)> {
        let masters = setup.masters();
        let wanted = |master: usize| (count + masters - 1 - master) / masters;
        let mut found: Vec<Vec<String>> = vec![Vec::new(); masters];
        let mut n = 0;
        while (0..masters).any(|master| found[master].len() < wanted(master)) {
            let room = format!("cpu-{n}");
            n += 1;
            let master = self.master_of(&room);
            assert!(master < masters, "{room} is on node {master}, not a master");
            if found[master].len() < wanted(master) {
                found[master].push(room);
            }
        }
        let mut next = found.into_iter().map(Vec::into_iter).collect::<Vec<_>>();
        (0..count)
            .map(|i| {
                let master = i % masters;
                (next[master].next().expect("counted above"), master)
            })
            .collect()
    }

    /// Every node's reading, in [`Setup::nodes`] order.
    pub fn read(&self, setup: Setup) -> Result<Vec<Reading>, String> {
        (0..setup.nodes())
            .map(|index| {
                let node = self.node(index);
                let switches = |field| {
                    let pid = node.pid()?;
                    procfs::status_field(pid, field)?.parse::<u64>().ok()
                };
                let (voluntary, forced) = (
                    switches("voluntary_ctxt_switches"),
                    switches("nonvoluntary_ctxt_switches"),
                );
                node.command(&["INFO", "cpu", "stats", "commandstats"])
                    .and_then(|reply| reply.into_iter().next())
                    .and_then(|text| Reading::parse(&text))
                    .map(|reading| Reading {
                        sleeps: voluntary.unwrap_or(0),
                        preempted: forced.unwrap_or(0),
                        ..reading
                    })
                    .ok_or_else(|| {
                        format!(
                            "node {} (port {}) gave no INFO cpu/stats/commandstats",
                            setup.node_name(index),
                            node.port()
                        )
                    })
            })
            .collect()
    }
}

/// One command's count and time, as `INFO commandstats` gives them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Calls {
    pub calls: u64,
    pub usec: u64,
}

/// A node's counters at one moment, or their growth over a window.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// used_cpu_sys + used_cpu_user: the whole process, its background threads included.
    pub cpu_secs: f64,
    /// used_cpu_sys alone: system calls, and on loopback the receiving side's TCP work too.
    pub sys_secs: f64,
    /// total_reads_processed: reads from client sockets (a pipeline is often one).
    pub reads: u64,
    /// total_net_input_bytes and total_net_output_bytes: client traffic, not the cluster bus.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Voluntary context switches of its main thread (/proc/PID/status): each is a wait in
    /// epoll with nothing to do, so each is a wake-up too.
    pub sleeps: u64,
    /// Involuntary ones: another process took its core.
    pub preempted: u64,
    /// Keyed by command name (`evalsha`, `cluster|slots`, …); a script's commands are counted
    /// too, and its own time includes theirs.
    pub commands: BTreeMap<String, Calls>,
}

impl Reading {
    fn parse(text: &str) -> Option<Reading> {
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let seconds = |name: &str| field(name)?.parse::<f64>().ok();
        let mut commands = BTreeMap::new();
        for line in text.lines() {
            let Some((name, stats)) = line
                .strip_prefix("cmdstat_")
                .and_then(|rest| rest.split_once(':'))
            else {
                continue;
            };
            let stat = |key: &str| {
                stats
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(0)
            };
            let calls = Calls {
                calls: stat("calls"),
                usec: stat("usec"),
            };
            commands.insert(name.to_string(), calls);
        }
        let sys_secs = seconds("used_cpu_sys")?;
        Some(Reading {
            cpu_secs: sys_secs + seconds("used_cpu_user")?,
            sys_secs,
            reads: field("total_reads_processed")?.parse().ok()?,
            bytes_in: field("total_net_input_bytes")?.parse().ok()?,
            bytes_out: field("total_net_output_bytes")?.parse().ok()?,
            sleeps: 0,
            preempted: 0,
            commands,
        })
    }

    /// What grew from `before` to this one.
    pub fn since(&self, before: &Reading) -> Reading {
        let commands = self
            .commands
            .iter()
            .map(|(name, now)| {
                let was = before.commands.get(name).copied().unwrap_or_default();
                let grown = Calls {
                    calls: now.calls.saturating_sub(was.calls),
                    usec: now.usec.saturating_sub(was.usec),
                };
                (name.clone(), grown)
            })
            .filter(|(_, grown)| grown.calls > 0)
            .collect();
        Reading {
            cpu_secs: (self.cpu_secs - before.cpu_secs).max(0.0),
            sys_secs: (self.sys_secs - before.sys_secs).max(0.0),
            reads: self.reads.saturating_sub(before.reads),
            bytes_in: self.bytes_in.saturating_sub(before.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(before.bytes_out),
            sleeps: self.sleeps.saturating_sub(before.sleeps),
            preempted: self.preempted.saturating_sub(before.preempted),
            commands,
        }
    }
}
