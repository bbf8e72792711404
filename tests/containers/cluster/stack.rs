//! The cross-host stack on one private Docker network: six `redis:7` containers joined into a
//! cluster of three masters and three replicas with `redis-cli --cluster create`, and
//! roomcast containers, each published on its own loopback port. And what the scenario does
//! to it: cut one container's route to one node, kill a node. Everything is removed on drop,
//! after the logs are printed if the test is failing.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::docker::{self, Containers, docker, docker_output, inspect, unique};
use testkit::{free_port, http, wait};

/// Every node: cluster mode, memory only, quick to fail over. `cluster-config-file` is on a
/// tmpfs the image's user (999) owns.
const NODE_ARGS: &[&str] = &[
    "redis-server",
    "--port",
    "6379",
    "--protected-mode",
    "no",
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "/data/nodes.conf",
    // A master silent for 1 s is suspected; failed once most masters agree.
    "--cluster-node-timeout",
    "1000",
    // The slots of a failed master stop; the others' go on.
    "--cluster-require-full-coverage",
    "no",
    // Replicas stay with the master they were given.
    "--cluster-allow-replica-migration",
    "no",
    "--appendonly",
    "no",
    "--save",
    "",
    // A replica syncs at once, not 5 s later: the cluster is whole sooner.
    "--repl-diskless-sync-delay",
    "0",
];

/// How long the cluster may take to form, or a replica to take over.
const SETTLE: Duration = Duration::from_secs(30);

pub struct Node {
    pub name: String,
    pub ip: String,
}

pub struct App {
    pub name: String,
    /// Its port 8000, published on the host's loopback.
    pub addr: SocketAddr,
}

/// Who serves which slots, as a node's `CLUSTER NODES` says.
#[derive(Debug, Clone)]
pub struct Topology {
    pub masters: Vec<Master>,
}

#[derive(Debug, Clone)]
pub struct Master {
    /// The node's index in [`Stack::nodes`].
    pub node: usize,
    pub slots: Vec<(u16, u16)>,
    pub replicas: Vec<usize>,
}

impl Topology {
    pub fn master_of(&self, slot: u16) -> Option<usize> {
        self.masters
            .iter()
            .find(|m| m.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|m| m.node)
    }
}

pub struct Stack {
    /// Dropped before `network`: the containers go first.
    containers: Containers,
    network: Network,
    pub nodes: Vec<Node>,
    pub apps: Vec<App>,
}

impl Stack {
    /// Six nodes joined into a cluster, every replica in sync, then `apps` roomcast
    /// containers of `image` with `env`, each ready.
    pub fn start(image: &str, apps: usize, env: &[(&str, &str)]) -> Stack {
        // Made first, so that a failure on the way still removes whatever was created.
        let mut stack = Stack {
            containers: Containers::default(),
            network: Network::create(),
            nodes: Vec::new(),
            apps: Vec::new(),
        };
        let label = format!("org.roomcast.test={}", stack.network.0);
        for index in 0..6 {
            let name = stack.containers.name(&format!("redis{index}"));
            let mut args = vec![
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                &stack.network.0,
                "--label",
                &label,
                "--tmpfs",
                "/data:uid=999,gid=999,mode=0700",
                "redis:7",
            ];
            args.extend_from_slice(NODE_ARGS);
            docker(&args);
            let ip = inspect(
                &name,
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            );
            stack.nodes.push(Node { name, ip });
        }
        stack.create_cluster();
        let seeds: Vec<String> = stack.nodes[..3]
            .iter()
            .map(|node| format!("redis://{}:6379", node.name))
            .collect();
        let seeds = format!("ROOMCAST_REDIS_CLUSTER={}", seeds.join(","));
        for index in 0..apps {
            let name = stack.containers.name(&format!("app{index}"));
            let port = free_port();
            let mut options = vec![
                "--network".to_string(),
                stack.network.0.clone(),
                "--label".into(),
                label.clone(),
                "--cap-drop".into(),
                "ALL".into(),
                "-e".into(),
                seeds.clone(),
            ];
            for (key, value) in env {
                options.extend(["-e".into(), format!("{key}={value}")]);
            }
            let options: Vec<&str> = options.iter().map(String::as_str).collect();
            docker::run_published(&name, image, port, &options);
            stack.apps.push(App {
                name,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            });
        }
        for app in &stack.apps {
            wait::until_blocking(&format!("{} to be ready", app.name), SETTLE, || {
                match http::get_blocking(app.addr, "/readyz") {
                    Ok(response) if response.status == 200 => Ok(()),
                    Ok(response) => Err(format!("/readyz answers {}", response.status)),
                    Err(error) => Err(error.to_string()),
                }
            });
        }
        stack
    }

    /// `redis-cli --cluster create` over the nodes' addresses, then waits until every node
    /// says the cluster is ok and every replica is in sync with its master.
    fn create_cluster(&self) {
        let addresses: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("{}:6379", node.ip))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        if let Err(error) = self.cli(0, &args) {
            panic!("redis-cli --cluster create failed: {error}");
        }
        wait::until_blocking("the cluster to form", SETTLE, || {
            for index in 0..self.nodes.len() {
                let info = self.cli(index, &["CLUSTER", "INFO"])?;
                if !info.contains("cluster_state:ok") {
                    return Err(format!("node {index}: {}", first_line(&info)));
                }
            }
            let topology = self.topology(0)?;
            let replicas: Vec<usize> = topology
                .masters
                .iter()
                .flat_map(|m| m.replicas.iter().copied())
                .collect();
            if topology.masters.len() != 3 || replicas.len() != 3 {
                return Err(format!(
                    "not yet 3 masters with a replica each: {topology:?}"
                ));
            }
            for replica in replicas {
                let info = self.cli(replica, &["INFO", "replication"])?;
                if !info.contains("master_link_status:up") {
                    return Err(format!("replica {replica} is not in sync yet"));
                }
            }
            Ok(())
        });
    }

    /// `redis-cli ARGS` inside node `index`: its output, or why it failed.
    pub fn cli(&self, index: usize, args: &[&str]) -> Result<String, String> {
        let mut command = vec!["exec", self.nodes[index].name.as_str(), "redis-cli"];
        command.extend_from_slice(args);
        let output = Command::new("docker")
            .args(&command)
            .output()
            .map_err(|error| format!("docker exec: {error}"))?;
        let text = String::from_utf8_lossy(&output.stdout).replace('\r', "");
        if !output.status.success() || text.starts_with("ERR") {
            return Err(format!(
                "redis-cli {} on node {index}: {text}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(text)
    }

    /// Masters, their slots and replicas as node `asked` sees them; nodes it flags as failed
    /// are left out.
    pub fn topology(&self, asked: usize) -> Result<Topology, String> {
        let text = self.cli(asked, &["CLUSTER", "NODES"])?;
        let mut masters = Vec::new();
        let mut replicas = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || fields[2].split(',').any(|flag| flag == "fail") {
                continue;
            }
            let ip = fields[1].split(':').next().unwrap_or_default();
            let Some(node) = self.nodes.iter().position(|n| n.ip == ip) else {
                return Err(format!("an unknown node in {line}"));
            };
            if fields[2].contains("master") {
                let slots: Vec<(u16, u16)> = fields[8..]
                    .iter()
                    .filter(|range| !range.starts_with('['))
                    .filter_map(|range| {
                        let (a, b) = range.split_once('-').unwrap_or((range, range));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect();
                if !slots.is_empty() {
                    masters.push((
                        fields[0].to_string(),
                        Master {
                            node,
                            slots,
                            replicas: Vec::new(),
                        },
                    ));
                }
            } else if fields[2].contains("slave") {
                replicas.push((fields[3].to_string(), node));
            }
        }
        for (master_id, node) in replicas {
            if let Some((_, master)) = masters.iter_mut().find(|(id, _)| *id == master_id) {
                master.replicas.push(node);
            }
        }
        let mut masters: Vec<Master> = masters.into_iter().map(|(_, m)| m).collect();
        masters.sort_by_key(|m| m.slots[0]);
        Ok(Topology { masters })
    }

    /// The slot of `key` by the cluster's own reckoning.
    pub fn keyslot(&self, key: &str) -> u16 {
        let reply = self.cli(0, &["CLUSTER", "KEYSLOT", key]).unwrap();
        reply
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("KEYSLOT {key}: {reply}"))
    }

    /// Inside app `app`'s network namespace, a blackhole route to node `node` (or its
    /// removal): packets to it vanish, as through a broken link.
    pub fn cut(&self, app: usize, node: usize, cut: bool) {
        let pid = inspect(&self.apps[app].name, "{{.State.Pid}}");
        let target = format!("{}/32", self.nodes[node].ip);
        let verb = if cut { "add" } else { "del" };
        let output = Command::new("nsenter")
            .args(["-t", &pid, "-n", "ip", "route", verb, "blackhole", &target])
            .output()
            .expect("run nsenter");
        assert!(
            output.status.success(),
            "ip route {verb} blackhole {target} in {}: {}",
            self.apps[app].name,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `docker kill` of node `node`.
    pub fn kill(&self, node: usize) {
        docker(&["kill", &self.nodes[node].name]);
    }

    /// Waits until a surviving node (not `killed`) sees one of `replicas` serve `slot`; which
    /// one, and how long that took from `since`.
    pub fn wait_promoted(
        &self,
        killed: usize,
        slot: u16,
        replicas: &[usize],
        since: Instant,
    ) -> (usize, Duration) {
        let survivor = (0..self.nodes.len())
            .find(|index| *index != killed && !replicas.contains(index))
            .expect("a survivor");
        wait::until_blocking("a replica to take over", SETTLE, || {
            let topology = self.topology(survivor)?;
            match topology.master_of(slot) {
                Some(master) if replicas.contains(&master) => Ok((master, since.elapsed())),
                other => Err(format!("slot {slot} is on {other:?}")),
            }
        })
    }

    /// The log lines of app `app` that are not `info`.
    pub fn app_warnings(&self, app: usize) -> Vec<String> {
        docker_output(&["logs", &self.apps[app].name])
            .lines()
            .filter(|line| !line.contains("\"level\":\"info\""))
            .map(String::from)
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, tail) in self
                .apps
                .iter()
                .map(|app| (&app.name, "60"))
                .chain(self.nodes.iter().map(|node| (&node.name, "15")))
            {
                eprintln!(
                    "---- docker logs {name} (last {tail} lines) ----\n{}",
                    docker_output(&["logs", "--tail", tail, name])
                );
            }
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// A private bridge network, removed on drop (after the containers on it).
struct Network(String);

impl Network {
    fn create() -> Network {
        let name = format!("roomcast-test-cluster-{}", unique());
        docker(&[
            "network",
            "create",
            "--label",
            &format!("org.roomcast.test={name}"),
            &name,
        ]);
        Network(name)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.0])
            .output();
    }
}
