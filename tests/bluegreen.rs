//! Blue-green at process level (no Docker): redis-server, HAProxy and two roomcast processes.
//!
//! Clients connect through HAProxy while only blue is up; green starts; blue gets SIGTERM
//! mid-traffic: `/readyz` turns 503, HAProxy takes blue out, blue closes every WebSocket with
//! 1012, and the clients resume through HAProxy on green with `since`/`epoch`. With the Redis
//! broker both colours share seqs and history, so every client sees every seq exactly once.
//!
//! Needs `redis-server` and `haproxy` on PATH (`apt-get install -y redis-server haproxy`);
//! without them the test is skipped, or fails when `CI` is set.

mod common;
#[path = "common/traffic.rs"]
mod traffic;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{Server, find_program, free_port, http_get, skip_unless_ci};
use traffic::{Traffic, check};

const MEMBERS: usize = 12;
// A person typing fast: under the default publish rate (5/s), as a real deploy sees it.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// Blue's and green's `/readyz` turns 503 this long before they stop listening; HAProxy
/// (inter 200ms, fastinter 100ms, fall 2) needs about 300 ms to take a colour out.
const SHUTDOWN_DELAY_MS: &str = "1000";
const DRAIN_DEADLINE_MS: &str = "5000";

#[test]
fn clients_move_from_blue_to_green_without_losing_a_message() {
    // Debian puts haproxy in /usr/sbin, which is not on every user's PATH.
    let haproxy = find_program("haproxy").or_else(|| find_program("/usr/sbin/haproxy"));
    let (Some(_), Some(haproxy)) = (find_program("redis-server"), haproxy) else {
        skip_unless_ci(
            "redis-server or haproxy is not on PATH; install them with \
             `apt-get install -y redis-server haproxy`",
        );
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), swap_under_traffic(&haproxy))
            .await
            .expect("the blue-green test took longer than 2 minutes")
    });
}

async fn swap_under_traffic(haproxy: &Path) {
    let dir = TempDir::new("bluegreen");
    let redis = RedisServer::start();
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let (blue_port, green_port) = (free_port(), free_port());
    let env = |port: u16| {
        vec![
            ("ROOMCAST_ADDR".to_string(), format!("127.0.0.1:{port}")),
            ("ROOMCAST_REDIS_URL".to_string(), redis_url.clone()),
            (
                "ROOMCAST_SHUTDOWN_DELAY_MS".to_string(),
                SHUTDOWN_DELAY_MS.to_string(),
            ),
            (
                "ROOMCAST_DRAIN_DEADLINE_MS".to_string(),
                DRAIN_DEADLINE_MS.to_string(),
            ),
            // HAProxy on loopback names each client in a PROXY header.
            (
                "ROOMCAST_TRUSTED_PROXIES".to_string(),
                "127.0.0.1".to_string(),
            ),
        ]
    };
    let start = |port: u16| {
        let env = env(port);
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Server::start(&pairs)
    };

    let mut blue = start(blue_port);
    wait_ready(blue.addr).await;
    let proxy = Haproxy::start(haproxy, &dir, blue_port, green_port);
    // Green is not running yet: HAProxy must see it down and blue up before anyone connects.
    proxy.wait_status("blue", "UP").await;
    proxy.wait_status("green", "DOWN").await;

    let room = format!("bluegreen-{}", std::process::id());
    let traffic = Traffic::connect(proxy.front, &room, MEMBERS, PUBLISH_EVERY).await;
    blue.wait_metric("roomcast_websockets_open", MEMBERS as u64 + 1)
        .await;
    traffic.start_publishing();

    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut green = start(green_port);
    wait_ready(green.addr).await;
    proxy.wait_status("green", "UP").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The swap: SIGTERM to blue under traffic.
    let swap_started = Instant::now();
    blue.signal("TERM");
    let (status, took) = blue.wait_exit(Duration::from_secs(15));
    let swap_took = swap_started.elapsed();
    tokio::time::sleep(Duration::from_millis(700)).await;

    let last_seq = traffic.finish(Duration::from_secs(30)).await;
    let on_green = green.metric("roomcast_websockets_open").await;
    let broker = broker_of(&blue.logs());
    let hint = format!(
        "blue ran the {broker} broker{}",
        if broker == "redis" {
            ""
        } else {
            ": with it each colour has its own rooms and history, so a client moved to green \
             cannot resume; this test needs the Redis broker"
        }
    );
    assert!(
        status.success(),
        "blue exited with {status} after SIGTERM ({took:?}); its logs:\n{}",
        blue.logs().join("\n")
    );
    assert_eq!(
        on_green,
        MEMBERS as u64 + 1,
        "every client should end on green\n{}",
        traffic.describe()
    );

    // Green drains its clients too (they stop instead of reconnecting) and exits 0.
    traffic.hold_reconnects();
    green.signal("TERM");
    let tallies = traffic.stop(Duration::from_secs(15)).await;
    let (green_status, _) = green.wait_exit(Duration::from_secs(15));
    assert!(green_status.success(), "green exited with {green_status}");

    let outcome = check(&tallies, last_seq, 1012, &hint);
    eprintln!(
        "bluegreen: {outcome}; blue exited {status} {took:?} after SIGTERM (swap {swap_took:?})"
    );
    drop(proxy);
    drop(redis);
}

/// The `broker` field of the "listening" log line.
fn broker_of(logs: &[String]) -> String {
    logs.iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|entry| entry["msg"] == "listening")
        .and_then(|entry| entry["broker"].as_str().map(String::from))
        .unwrap_or_else(|| "unknown".into())
}

async fn wait_ready(addr: SocketAddr) {
    let started = Instant::now();
    loop {
        let response =
            tokio::time::timeout(Duration::from_secs(2), http_get(addr, "/readyz")).await;
        if response.is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{addr} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A scratch folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "roomcast-{prefix}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop, with its output kept for failure messages.
struct Process {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn spawn(command: &mut Command) -> Process {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap().push(line);
                }
            });
        }
        Process { child, output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{what} exited with {status}:\n{}", self.output());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy in front of blue and green, configured like deploy/haproxy.cfg but with fixed
/// addresses and shorter check intervals.
struct Haproxy {
    process: Mutex<Process>,
    front: SocketAddr,
    stats: SocketAddr,
}

impl Haproxy {
    fn start(program: &Path, dir: &TempDir, blue: u16, green: u16) -> Haproxy {
        let (front, stats) = (free_port(), free_port());
        let config = format!(
            "global
    log stdout format raw local0 notice
defaults
    mode http
    log global
    option redispatch
    retries 3
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-request 5s
    timeout check 1s
    timeout tunnel 1h
frontend chat
    bind 127.0.0.1:{front}
    option forwardfor
    http-request deny deny_status 404 if {{ path_beg /metrics }}
    default_backend roomcast
backend roomcast
    balance leastconn
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host roomcast
    http-check expect status 200
    default-server check inter 200ms fastinter 100ms downinter 200ms fall 2 rise 2 send-proxy-v2 check-send-proxy
    server blue 127.0.0.1:{blue}
    server green 127.0.0.1:{green}
frontend stats
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /stats
    no log
"
        );
        let path = dir.0.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let mut process = Process::spawn(Command::new(program).arg("-db").arg("-f").arg(&path));
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", stats)).is_err() {
            process.assert_running("haproxy");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "haproxy did not start:\n{}",
                process.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy {
            process: Mutex::new(process),
            front: SocketAddr::from(([127, 0, 0, 1], front)),
            stats: SocketAddr::from(([127, 0, 0, 1], stats)),
        }
    }

    /// The `status` column of `server` in the stats CSV.
    async fn status(&self, server: &str) -> String {
        let response = http_get(self.stats, "/stats;csv").await;
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        let mut lines = body.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = header
            .iter()
            .position(|name| *name == "status")
            .unwrap_or(17);
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&"roomcast") && fields.get(1) == Some(&server))
            .and_then(|fields| fields.get(column).map(|s| s.to_string()))
            .unwrap_or_default()
    }

    async fn wait_status(&self, server: &str, wanted: &str) {
        let started = Instant::now();
        loop {
            let status = self.status(server).await;
            if status.starts_with(wanted) {
                return;
            }
            self.process.lock().unwrap().assert_running("haproxy");
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "haproxy shows {server} as {status:?}, not {wanted}:\n{}",
                self.process.lock().unwrap().output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
