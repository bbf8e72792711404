//! Blue-green at process level (no Docker): redis-server, HAProxy and two roomcast processes.
//!
//! Clients connect through HAProxy while only blue is up; green starts; blue gets SIGTERM
//! mid-traffic: `/readyz` turns 503, HAProxy takes blue out, blue closes every WebSocket with
//! 1012, and the clients resume through HAProxy on green with `since`/`epoch`. With the Redis
//! broker both colours share seqs and history, so every client sees every seq exactly once.
//!
//! Needs `redis-server` and `haproxy` (`apt-get install -y redis-server haproxy`); without
//! them the test is skipped, or fails when `CI` is set.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use testkit::haproxy::{self, Haproxy};
use testkit::net::loopback;
use testkit::redis::RedisServer;
use testkit::swap::{self, Deployment, Scenario};
use testkit::{Endpoint, Roomcast, Server, free_port, http, metrics, wait};

const MEMBERS: usize = 12;
// A person typing fast: under the default publish rate (5/s), as a real deploy sees it.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// Blue's and green's `/readyz` turns 503 this long before they stop listening; HAProxy
/// (inter 200ms, fastinter 100ms, fall 2) needs about 300 ms to take a colour out.
const SHUTDOWN_DELAY_MS: &str = "1000";
const DRAIN_DEADLINE_MS: &str = "5000";
/// How long a colour may take to exit after SIGTERM.
const EXIT_LIMIT: Duration = Duration::from_secs(15);

#[test]
fn clients_move_from_blue_to_green_without_losing_a_message() {
    if !RedisServer::available() {
        return;
    }
    let Some(haproxy) = Haproxy::program() else {
        return;
    };
    let redis = RedisServer::start();
    let mut colours = Colours::start(&haproxy, &redis);
    let scenario = Scenario {
        proxy: colours.front,
        room: format!("bluegreen-{}", std::process::id()),
        members: MEMBERS,
        publish_every: PUBLISH_EVERY,
        settle: Duration::from_millis(700),
        finish_within: Duration::from_secs(30),
        stop_within: EXIT_LIMIT,
        limit: Duration::from_secs(120),
        workers: 2,
    };
    let report = swap::run(&scenario, &mut colours);
    eprintln!(
        "bluegreen: {}; {} (swap {:?})",
        report.outcome, report.swap, report.swap_took
    );
}

/// Blue and green on one Redis behind HAProxy, configured like deploy/haproxy.cfg but with
/// fixed addresses and shorter check intervals.
struct Colours {
    redis_url: String,
    green_port: u16,
    /// Blue, then green after the swap.
    live: Server,
    /// Green, until the swap makes it live.
    idle: Option<Server>,
    /// The broker blue ran, from its `listening` line.
    broker: String,
    proxy: Haproxy,
    front: SocketAddr,
}

impl Colours {
    /// Blue up and HAProxy seeing blue up and green down, before anyone connects.
    fn start(haproxy: &Path, redis: &RedisServer) -> Colours {
        let redis_url = redis.url();
        let (blue_port, green_port) = (free_port(), free_port());
        let blue = colour(&redis_url, blue_port);
        let (front, stats) = (loopback(free_port()), loopback(free_port()));
        let mut proxy = Haproxy::start(
            haproxy,
            &haproxy::blue_green_config(front, stats, blue_port, green_port),
            stats,
        );
        proxy.wait_status("roomcast", "blue", "UP");
        proxy.wait_status("roomcast", "green", "DOWN");
        Colours {
            redis_url,
            green_port,
            broker: blue.listening().broker.clone(),
            live: blue,
            idle: None,
            proxy,
            front,
        }
    }
}

impl Deployment for Colours {
    fn start_idle(&mut self) {
        let green = colour(&self.redis_url, self.green_port);
        self.proxy.wait_status("roomcast", "green", "UP");
        self.idle = Some(green);
        std::thread::sleep(Duration::from_millis(500));
    }

    fn swap(&mut self) -> String {
        let green = self.idle.take().expect("green started");
        let mut blue = std::mem::replace(&mut self.live, green);
        blue.signal("TERM");
        let (status, took) = blue.wait_exit(EXIT_LIMIT);
        assert!(
            status.success(),
            "blue exited with {status} after SIGTERM ({took:?}); its logs:\n{}",
            blue.logs().join("\n")
        );
        format!("blue exited {status} {took:?} after SIGTERM")
    }

    fn live_websockets(&self) -> Option<u64> {
        metrics::read_blocking(self.live.addr(), "roomcast_websockets_open")
    }

    fn begin_stop(&mut self) {
        self.live.signal("TERM");
    }

    fn finish_stop(&mut self) -> String {
        let (status, _) = self.live.wait_exit(EXIT_LIMIT);
        assert!(status.success(), "green exited with {status}");
        format!("green exited {status}")
    }

    fn hint(&self) -> String {
        let why = if self.broker == "redis" {
            ""
        } else {
            ": with it each colour has its own rooms and history, so a client moved to green \
             cannot resume; this test needs the Redis broker"
        };
        format!("blue ran the {} broker{why}", self.broker)
    }
}

/// One colour on `port`, once its `/readyz` answers 200.
fn colour(redis_url: &str, port: u16) -> Server {
    let server = Roomcast::debug()
        .env("ROOMCAST_ADDR", &loopback(port).to_string())
        .env("ROOMCAST_REDIS_URL", redis_url)
        .env("ROOMCAST_SHUTDOWN_DELAY_MS", SHUTDOWN_DELAY_MS)
        .env("ROOMCAST_DRAIN_DEADLINE_MS", DRAIN_DEADLINE_MS)
        // HAProxy on loopback names each client in a PROXY header.
        .env("ROOMCAST_TRUSTED_PROXIES", "127.0.0.1")
        .start();
    let addr = server.addr();
    wait::until_blocking(
        &format!("{addr} to be ready"),
        Duration::from_secs(15),
        || match http::get_blocking(addr, "/readyz") {
            Ok(response) if response.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    server
}
