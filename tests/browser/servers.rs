//! What a scenario runs against: roomcast processes on fixed loopback ports (so one can stop and
//! come back at the same address), a redis-server, blue and green behind HAProxy; and the
//! commands a scenario's script gives them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use testkit::haproxy::{self, Haproxy};
use testkit::net::loopback;
use testkit::redis::RedisServer;
use testkit::{Roomcast, Server, free_port, http, metrics};

/// How long a roomcast may take to exit after SIGTERM, drain included.
const EXIT_LIMIT: Duration = Duration::from_secs(15);
/// How long a started roomcast may take to answer `/readyz` with 200.
const READY_LIMIT: Duration = Duration::from_secs(15);

/// One roomcast on a fixed loopback port: stopped with SIGTERM, started again at the same
/// address, as a restart or a deploy does it.
pub struct Node {
    env: Vec<(String, String)>,
    addr: SocketAddr,
    server: Option<Server>,
}

impl Node {
    fn new(env: &[(&str, &str)]) -> Node {
        Node {
            env: env
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            addr: loopback(free_port()),
            server: None,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts it; when its `/readyz` first answered 200, in ms since the Unix epoch.
    fn start(&mut self) -> u64 {
        assert!(self.server.is_none(), "{} is already running", self.addr);
        let server = Roomcast::debug()
            .envs(&self.env)
            .env("ROOMCAST_ADDR", &self.addr.to_string())
            .start();
        self.server = Some(server);
        ready_at(self.addr)
    }

    /// SIGTERM, then its exit, which must be a clean one; when it exited, in ms since the epoch.
    fn stop(&mut self) -> u64 {
        let mut server = self.server.take().expect("a running roomcast to stop");
        server.signal("TERM");
        let (status, took) = server.wait_exit(EXIT_LIMIT);
        assert!(
            status.success(),
            "roomcast at {} exited with {status} {took:?} after SIGTERM; its logs:\n{}",
            self.addr,
            server.logs().join("\n")
        );
        now_ms()
    }
}

/// Polls `/readyz` closely: the first 200 is what the reconnect delay is measured from.
fn ready_at(addr: SocketAddr) -> u64 {
    let started = Instant::now();
    loop {
        match http::get_blocking(addr, "/readyz") {
            Ok(response) if response.status == 200 => return now_ms(),
            other => assert!(
                started.elapsed() < READY_LIMIT,
                "{addr} not ready after {READY_LIMIT:?}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Blue and green on one Redis behind HAProxy, as `compose.yml` runs them (and as
/// `tests/bluegreen.rs` does without containers): HAProxy checks `/readyz` and names each client
/// in a PROXY v2 header, which the colours trust from loopback.
struct BlueGreen {
    blue: Node,
    green: Node,
    proxy: Haproxy,
    front: SocketAddr,
}

/// Blue's and green's `/readyz` turns 503 this long before they stop listening, so HAProxy
/// (checks every 200 ms, 100 ms after a failure, down after 2) moves new clients first.
const SHUTDOWN_DELAY_MS: &str = "1000";

impl BlueGreen {
    fn start(redis_url: &str, env: &[(&str, &str)]) -> BlueGreen {
        let haproxy = Haproxy::program().expect("the caller checked that HAProxy is here");
        let colour = || {
            let mut node = Node::new(env);
            node.env.extend(
                [
                    ("ROOMCAST_REDIS_URL", redis_url),
                    ("ROOMCAST_SHUTDOWN_DELAY_MS", SHUTDOWN_DELAY_MS),
                    ("ROOMCAST_TRUSTED_PROXIES", "127.0.0.1"),
                ]
                .map(|(name, value)| (name.to_string(), value.to_string())),
            );
            node
        };
        let (mut blue, green) = (colour(), colour());
        blue.start();
        let (front, stats) = (loopback(free_port()), loopback(free_port()));
        let config = haproxy::blue_green_config(front, stats, blue.addr.port(), green.addr.port());
        let mut proxy = Haproxy::start(&haproxy, &config, stats);
        proxy.wait_status("roomcast", "blue", "UP");
        proxy.wait_status("roomcast", "green", "DOWN");
        BlueGreen {
            blue,
            green,
            proxy,
            front,
        }
    }

    /// Green up and routed to, then blue stopped: its clients get 1012 and come back through
    /// HAProxy to green.
    fn swap(&mut self) -> Value {
        let green_ready_ms = self.green.start();
        self.proxy.wait_status("roomcast", "green", "UP");
        let blue_exited_ms = self.blue.stop();
        json!({ "green_ready_ms": green_ready_ms, "blue_exited_ms": blue_exited_ms })
    }
}

/// Everything one scenario runs against, by the names its script uses.
pub struct Stack {
    nodes: BTreeMap<String, Node>,
    blue_green: Option<BlueGreen>,
    /// Dropped last: the roomcasts above use it.
    _redis: Option<RedisServer>,
    /// More for the script's setup: users, secrets, the token endpoint's port.
    extra: Map<String, Value>,
}

impl Stack {
    /// One roomcast, `a`, with the embedded broker and `env`.
    pub fn embedded(env: &[(&str, &str)]) -> Stack {
        let mut node = Node::new(env);
        node.start();
        Stack::of(BTreeMap::from([("a".to_string(), node)]), None, None)
    }

    /// Roomcasts `a` and `b` on one redis-server, or `None` when there is no redis-server (the
    /// skip-or-fail rule has spoken).
    pub fn redis_pair(env: &[(&str, &str)]) -> Option<Stack> {
        if !RedisServer::available() {
            return None;
        }
        let redis = RedisServer::start();
        let mut nodes = BTreeMap::new();
        for name in ["a", "b"] {
            let mut node = Node::new(env);
            node.env
                .push(("ROOMCAST_REDIS_URL".to_string(), redis.url()));
            node.start();
            nodes.insert(name.to_string(), node);
        }
        Some(Stack::of(nodes, None, Some(redis)))
    }

    /// Blue (running) and green (not yet) on one redis-server behind HAProxy, or `None` when
    /// redis-server or HAProxy is missing.
    pub fn blue_green(env: &[(&str, &str)]) -> Option<Stack> {
        if !RedisServer::available() || Haproxy::program().is_none() {
            return None;
        }
        let redis = RedisServer::start();
        let pair = BlueGreen::start(&redis.url(), env);
        Some(Stack::of(BTreeMap::new(), Some(pair), Some(redis)))
    }

    fn of(
        nodes: BTreeMap<String, Node>,
        blue_green: Option<BlueGreen>,
        redis: Option<RedisServer>,
    ) -> Stack {
        Stack {
            nodes,
            blue_green,
            _redis: redis,
            extra: Map::new(),
        }
    }

    /// Adds `value` to the script's setup under `key`.
    pub fn with(mut self, key: &str, value: Value) -> Stack {
        self.extra.insert(key.to_string(), value);
        self
    }

    /// What the script is told: each node's base URL, the proxy's, and the extras.
    pub fn setup(&self) -> Value {
        let mut setup = self.extra.clone();
        let nodes: Map<String, Value> = self
            .nodes
            .iter()
            .map(|(name, node)| (name.clone(), Value::from(node.url())))
            .collect();
        setup.insert("nodes".into(), Value::Object(nodes));
        if let Some(pair) = &self.blue_green {
            setup.insert(
                "front".into(),
                Value::from(format!("http://{}", pair.front)),
            );
        }
        Value::Object(setup)
    }

    /// Carries out one of the script's requests.
    pub fn command(&mut self, ask: &str, args: &Value) -> Result<Value, String> {
        match ask {
            "swap" => {
                let pair = self.blue_green.as_mut().ok_or("no blue and green here")?;
                Ok(pair.swap())
            }
            "stop" => Ok(json!({ "stopped_ms": self.node(args)?.stop() })),
            "start" => Ok(json!({ "ready_ms": self.node(args)?.start() })),
            "restart" => {
                let node = self.node(args)?;
                let stopped_ms = node.stop();
                Ok(json!({ "stopped_ms": stopped_ms, "ready_ms": node.start() }))
            }
            "metric" => {
                let name = args["name"].as_str().ok_or("metric needs a name")?;
                let node = self.node(args)?;
                let value = metrics::read_blocking(node.addr, name)
                    .ok_or_else(|| format!("no {name} at {}", node.addr))?;
                Ok(json!({ "value": value }))
            }
            other => Err(format!("unknown request {other:?}")),
        }
    }

    fn node(&mut self, args: &Value) -> Result<&mut Node, String> {
        let name = args["node"].as_str().ok_or("which node?")?;
        self.nodes
            .get_mut(name)
            .ok_or_else(|| format!("no node {name:?}"))
    }
}
