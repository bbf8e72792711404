//! A real Redis Cluster on loopback: masters with their replicas, each a [`RedisServer`] in
//! cluster mode, the slots split evenly between the masters; and what tests do to a cluster:
//! kill a master and wait for its replica to take over, move a slot with its keys. Every node
//! is killed on drop.
//!
//! It is built by hand (`ADDSLOTSRANGE`, `MEET`, `REPLICATE`) rather than with `redis-cli
//! --cluster create`, which refuses fewer than three masters and sleeps where this polls.

mod view;

use std::time::{Duration, Instant};

use crate::net::free_port;
use crate::redis::RedisServer;
use crate::wait;

/// Hash slots in every Redis Cluster.
pub const SLOTS: u16 = 16384;

/// How long a cluster may take to form, to fail over, or to agree on a moved slot.
const SETTLE: Duration = Duration::from_secs(15);

/// Every node's settings, chosen so that failover is quick and goes the same way every run.
const NODE_ARGS: &[(&str, &str)] = &[
    ("--cluster-enabled", "yes"),
    ("--cluster-config-file", "nodes.conf"),
    // A master silent for 1 s is suspected; failed once most masters suspect it.
    ("--cluster-node-timeout", "1000"),
    ("--appendonly", "no"),
    ("--save", ""),
    // A replica may take over however long ago it last heard from its master...
    ("--cluster-replica-validity-factor", "0"),
    ("--repl-ping-replica-period", "1"),
    // ...and it syncs at once instead of waiting 5 s for others to share the transfer.
    ("--repl-diskless-sync-delay", "0"),
    // Replicas stay with the master they were given.
    ("--cluster-allow-replica-migration", "no"),
    // One failed master stops its own slots only. Redis's default stops every slot on every
    // node until a replica has taken over: about a second here (`start_with` restores it).
    ("--cluster-require-full-coverage", "no"),
];

pub struct RedisCluster {
    /// Masters first (`0..masters`), then each master's replicas in turn.
    nodes: Vec<Node>,
}

struct Node {
    server: RedisServer,
    /// Its cluster id, as `CLUSTER NODES` names it.
    id: String,
    /// Where the other nodes gossip with it.
    bus_port: u16,
}

/// How a failover went.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// The replica that now serves the killed master's slots.
    pub new_master: usize,
    /// When the master was killed.
    pub killed_at: Instant,
    /// From the kill to the first moment a surviving node saw the replica own those slots.
    pub without_master: Duration,
}

impl RedisCluster {
    /// Whether `redis-server` is here; when it is not, [`skip_or_fail`](crate::skip_or_fail)
    /// has said so. (`redis-cli` is not needed: the cluster is built over RESP.)
    pub fn available() -> bool {
        RedisServer::available()
    }

    /// `masters` masters (1 or more), each with `replicas` replicas, once every node agrees
    /// on who serves and replicates what and every replica is in sync. Nodes `0..masters` are
    /// the masters, in slot order; replica `r` of master `m` is node `masters + m * replicas + r`.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        RedisCluster::start_with(masters, replicas, &[])
    }

    /// With `extra` arguments for every node, after the defaults, e.g.
    /// `["--cluster-require-full-coverage", "yes"]`.
    pub fn start_with(masters: usize, replicas: usize, extra: &[&str]) -> RedisCluster {
        assert!(masters >= 1, "a cluster needs a master");
        let count = masters * (1 + replicas);
        // The bus port is chosen too: the default, port + 10000, may be past 65535.
        let ports = distinct_free_ports(2 * count);
        let nodes = ports
            .chunks(2)
            .map(|pair| {
                let bus_port = pair[1].to_string();
                let mut args: Vec<&str> = NODE_ARGS
                    .iter()
                    .flat_map(|(name, value)| [*name, *value])
                    .collect();
                args.extend(["--cluster-port", &bus_port]);
                args.extend_from_slice(extra);
                let server = RedisServer::start_on(pair[0], &args);
                let id = server
                    .command(&["CLUSTER", "MYID"])
                    .and_then(|reply| reply.into_iter().next())
                    .expect("CLUSTER MYID answered");
                Node {
                    server,
                    id,
                    bus_port: pair[1],
                }
            })
            .collect();
        let cluster = RedisCluster { nodes };
        let slots = usize::from(SLOTS);
        for master in 0..masters {
            // Distinct config epochs up front, as redis-cli sets them: no collision to resolve.
            cluster.expect_ok(
                master,
                &["CLUSTER", "SET-CONFIG-EPOCH", &(master + 1).to_string()],
            );
            let first = (master * slots / masters).to_string();
            let last = ((master + 1) * slots / masters - 1).to_string();
            cluster.expect_ok(master, &["CLUSTER", "ADDSLOTSRANGE", &first, &last]);
        }
        for other in &cluster.nodes[1..] {
            let (port, bus_port) = (other.server.port().to_string(), other.bus_port.to_string());
            cluster.expect_ok(0, &["CLUSTER", "MEET", "127.0.0.1", &port, &bus_port]);
        }
        wait::until_blocking("every node to know every other", SETTLE, || {
            match (0..count).find(|&index| {
                cluster.cluster_info(index, "cluster_known_nodes") != Some(count.to_string())
            }) {
                Some(index) => Err(format!("node {index} knows fewer than {count}")),
                None => Ok(()),
            }
        });
        for replica in masters..count {
            let master = &cluster.nodes[(replica - masters) / replicas].id;
            cluster.expect_ok(replica, &["CLUSTER", "REPLICATE", master]);
        }
        cluster.wait_until_settled("the cluster to form");
        cluster
    }

    /// `redis://127.0.0.1:PORT` of every live master, comma-separated.
    pub fn seeds(&self) -> String {
        let urls: Vec<String> = self
            .masters()
            .into_iter()
            .map(|index| format!("redis://127.0.0.1:{}", self.node(index).port()))
            .collect();
        urls.join(",")
    }

    /// The hash slot of `key`: of the text inside its first `{…}` if that is not empty, else
    /// of the whole key, as Redis hashes it.
    pub fn slot_of(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let tag = bytes
            .iter()
            .position(|&byte| byte == b'{')
            .and_then(|open| {
                let inside = &bytes[open + 1..];
                let close = inside.iter().position(|&byte| byte == b'}')?;
                (close > 0).then(|| &inside[..close])
            });
        crc16_xmodem(tag.unwrap_or(bytes)) % SLOTS
    }

    /// The live master that serves `slot`, by its own account.
    pub fn master_of(&self, slot: u16) -> usize {
        self.live()
            .find(|&index| self.own_line(index).is_some_and(|own| own.serves(slot)))
            .unwrap_or_else(|| panic!("no live master serves slot {slot}"))
    }

    /// The live nodes that are masters now, in index order.
    pub fn masters(&self) -> Vec<usize> {
        self.live()
            .filter(|&index| {
                self.own_line(index)
                    .is_some_and(|own| own.replica_of.is_none())
            })
            .collect()
    }

    pub fn node(&self, index: usize) -> &RedisServer {
        &self.nodes[index].server
    }

    /// [`RedisServer::command`] on node `index`.
    pub fn command(&self, index: usize, args: &[&str]) -> Option<Vec<String>> {
        self.node(index).command(args)
    }

    /// SIGKILLs node `index` and returns at once, whatever becomes of its slots.
    pub fn kill_node(&mut self, index: usize) {
        self.nodes[index].server.stop();
    }

    /// SIGKILLs master `index`, then waits until one of its replicas serves its slots and
    /// every surviving node agrees on it.
    pub fn kill_master_and_fail_over(&mut self, index: usize) -> Failover {
        let master = self
            .own_line(index)
            .unwrap_or_else(|| panic!("node {index} does not answer"));
        assert!(
            master.replica_of.is_none() && !master.slots.is_empty(),
            "node {index} serves no slots: {master:?}"
        );
        let replicas: Vec<String> = self
            .live()
            .filter_map(|other| self.own_line(other))
            .filter(|line| line.replica_of.as_deref() == Some(master.id.as_str()))
            .map(|line| line.id)
            .collect();
        assert!(
            !replicas.is_empty(),
            "master {index} has no replica to take over"
        );
        let killed_at = Instant::now();
        self.kill_node(index);
        let new_master = wait::until_blocking("a replica to take over the slots", SETTLE, || {
            self.heir(&replicas, &master.slots)
                .ok_or("no surviving node sees it yet".to_string())
        });
        let without_master = killed_at.elapsed();
        self.wait_until_settled("the cluster to agree after the failover");
        Failover {
            new_master,
            killed_at,
            without_master,
        }
    }

    /// Moves `slot` and its keys to master `to` the way an operator does, under whatever
    /// traffic there is: mark it importing and migrating, `MIGRATE` its keys until the source
    /// has none, then assign it on the target, the source and every other master. Returns
    /// how long that took; before returning it waits until every node agrees.
    pub fn migrate_slot(&self, slot: u16, to: usize) -> Duration {
        let from = self.master_of(slot);
        assert_ne!(from, to, "slot {slot} is on node {to} already");
        let (source_id, target_id) = (&self.nodes[from].id, &self.nodes[to].id);
        let slot_text = slot.to_string();
        let started = Instant::now();
        self.expect_ok(
            to,
            &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", source_id],
        );
        self.expect_ok(
            from,
            &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", target_id],
        );
        let target_port = self.node(to).port().to_string();
        // No pause between rounds: the slot's multi-key commands get TRYAGAIN until it is done.
        loop {
            assert!(
                started.elapsed() < SETTLE,
                "slot {slot}'s keys still moving after {SETTLE:?}"
            );
            let keys = self
                .command(from, &["CLUSTER", "GETKEYSINSLOT", &slot_text, "100"])
                .expect("the source answers");
            if keys.is_empty() {
                break;
            }
            // To database 0 (the only one in a cluster), within 5 s, these keys.
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &target_port, "", "0", "5000"];
            migrate.extend(["KEYS"].into_iter().chain(keys.iter().map(String::as_str)));
            let reply = self.command(from, &migrate);
            assert!(
                matches!(reply.as_deref(), Some([ok]) if ok == "+OK" || ok == "+NOKEY"),
                "MIGRATE of {} keys in slot {slot}: {reply:?}",
                keys.len()
            );
        }
        let others = self
            .masters()
            .into_iter()
            .filter(|&index| index != from && index != to);
        for index in [to, from].into_iter().chain(others) {
            self.expect_ok(
                index,
                &["CLUSTER", "SETSLOT", &slot_text, "NODE", target_id],
            );
        }
        let took = started.elapsed();
        self.wait_until_settled(&format!("every node to see slot {slot} on node {to}"));
        took
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&index| self.node(index).pid().is_some())
    }

    fn index_of(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|node| node.id == id)
            .unwrap_or_else(|| panic!("no node has id {id}"))
    }

    fn expect_ok(&self, index: usize, args: &[&str]) {
        let reply = self.command(index, args);
        assert!(
            reply.as_deref() == Some(&["+OK".to_string()]),
            "{args:?} on node {index}: {reply:?}"
        );
    }
}

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0), Redis Cluster's key hash.
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0, |crc, &byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            }
        })
    })
}

/// `count` free loopback ports, no two the same.
fn distinct_free_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(count);
    while ports.len() < count {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}
