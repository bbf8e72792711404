//! Fan-out: N rooms × S members, P of them publishing, at a fixed total publish rate for D
//! seconds; every member counts what it receives per room by seq.
//!
//!   cargo bench --bench fanout -- --shape 1x50 [--rate R] [--secs D] [--pubs P]
//!   cargo bench --bench fanout -- --shape 1x50 --search
//!   cargo bench --bench fanout -- --shape all --redis start
//!
//! Each run starts a fresh server (two with `--redis`; `--redis start` also runs a private
//! `redis-server` on a free port for the whole invocation), connects every member, waits for
//! `roomcast_websockets_open` to count them, publishes for D seconds, waits for the deliveries
//! to drain, then kills the servers by PID. A message's text is `<ns since bench start>:<member>:<n>`,
//! so the receiving member knows its latency from publish to receive.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::{self, SelectAll, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use common::{Args, Histogram, Server, ServerSpec, count, fail, print_table, print_table_with};

type Ws = WebSocketStream<TcpStream>;

const USAGE: &str = "\
fan-out: N rooms x S members (P of each room publishing) at a fixed total publish rate

usage: cargo bench --bench fanout -- [options]
  --shape NxS         rooms x members per room; presets 1x50, 10x20, 1x1000, 1000x2,
                      or `all` for those four in turn (default 1x50)
  --rooms N --subs S  the same, one at a time (override --shape)
  --pubs P            publishing members per room, among the S (default 2, at most S)
  --rate R            total publish rate in messages/s over all rooms
                      (default 150000/S: the 150,000 deliveries/s target)
  --secs D            publishing time per run (default 10; 5 per step with --search)
  --search            find the highest rate with zero loss and p99 < 100 ms: double from
                      --rate while it passes, then bisect to 5 %
  --max-steps N       search runs at most (default 14); a failed run during which other
                      processes used > 20 % of a core is repeated (twice at most)
  --budget-secs T     search time per shape at most (default 300)
  --redis URL         two server instances on the Redis at URL (127.0.0.1 only); members
                      alternate between them. `--redis start` runs a private redis-server
                      on a free port (no persistence) and stops it at the end
  --server-workers N  ROOMCAST_WORKERS per server (default 1)
  --gen-threads N     load generator tokio worker threads (default 1)
  --tasks N           reader tasks in the load generator (default 4)
  --send-queue N      ROOMCAST_SEND_QUEUE (default: the server's, 256)
  --drain-ms N        after publishing, wait at most this long for deliveries (default 3000)
  --no-pin            do not pin server and generator to separate CPUs

env: ROOMCAST_BIN  the roomcast binary (default target/x86_64-unknown-linux-musl/release/roomcast)";

/// Above this share of a core used by other processes, a run is flagged as disturbed.
const BUSY_OTHERS: f64 = 20.0;
/// How often the search repeats a failed rate that ran on a busy machine.
const SEARCH_RETRIES: usize = 2;
/// The search's pass mark.
const P99_LIMIT_US: u64 = 100_000;
const PRESETS: [(usize, usize); 4] = [(1, 50), (10, 20), (1, 1000), (1000, 2)];

#[derive(Clone)]
struct Plan {
    rooms: usize,
    subs: usize,
    pubs: usize,
    secs: f64,
    redis: Option<String>,
    server_workers: usize,
    gen_threads: usize,
    tasks: usize,
    /// CPUs this bench may use (read before pinning itself).
    cores: usize,
    /// (server CPU, generator CPU) when pinned.
    pin: Option<(usize, usize)>,
    send_queue: Option<usize>,
    drain: Duration,
}

impl Plan {
    fn members(&self) -> usize {
        self.rooms * self.subs
    }

    fn instances(&self) -> usize {
        if self.redis.is_some() { 2 } else { 1 }
    }

    fn shape(&self) -> String {
        format!("{}x{}", self.rooms, self.subs)
    }
}

fn main() {
    let args = Args::parse(
        &[
            "shape",
            "rooms",
            "subs",
            "pubs",
            "rate",
            "secs",
            "max-steps",
            "budget-secs",
            "redis",
            "server-workers",
            "gen-threads",
            "tasks",
            "send-queue",
            "drain-ms",
        ],
        &["search", "no-pin"],
        USAGE,
    );
    let search = args.flag("search");
    let shapes: Vec<(usize, usize)> = match args.text("shape").unwrap_or("1x50") {
        "all" => PRESETS.to_vec(),
        shape => {
            let parsed = shape
                .split_once('x')
                .and_then(|(n, s)| Some((n.parse().ok()?, s.parse().ok()?)));
            match parsed {
                Some((n, s)) if n > 0 && s > 0 => {
                    vec![(args.or("rooms", n), args.or("subs", s))]
                }
                _ => fail(format!("--shape: expected NxS such as 1x50, got {shape:?}")),
            }
        }
    };
    let bin = common::roomcast_bin();
    // Before pinning: the core count reads this process's CPU affinity.
    common::print_machine("fan-out");
    let cores = common::cores();
    let gen_threads: usize = args.or("gen-threads", 1).max(1);
    let pin = if args.flag("no-pin") {
        None
    } else if cores >= 2 && common::has_command("taskset") {
        Some((0, 1))
    } else {
        eprintln!("note: not pinning (needs 2 cores and taskset)");
        None
    };
    if let Some((_, generator)) = pin
        && !common::pin_self(generator)
    {
        fail("taskset could not pin the load generator; use --no-pin");
    }
    let redis = match args.text("redis") {
        Some("start") => Some(RedisServer::start()),
        _ => None,
    };
    let base = Plan {
        rooms: 0,
        subs: 0,
        pubs: args.or("pubs", 2),
        secs: args.or("secs", if search { 5.0 } else { 10.0 }),
        redis: match &redis {
            Some(own) => Some(own.url.clone()),
            None => args.text("redis").map(String::from),
        },
        server_workers: args.or("server-workers", 1),
        gen_threads,
        tasks: args.or("tasks", 4).max(1),
        cores,
        pin,
        send_queue: args.get("send-queue"),
        drain: Duration::from_millis(args.or("drain-ms", 3000)),
    };
    if let Some(url) = &base.redis
        && !(url.starts_with("redis://127.0.0.1") || url.starts_with("redis://localhost"))
    {
        fail("--redis: only a Redis on 127.0.0.1 is allowed (redis://127.0.0.1:PORT/)");
    }
    let largest = shapes.iter().map(|(n, s)| n * s).max().unwrap_or(0) as u64;
    let fds = common::raise_nofile(largest + 256);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(gen_threads)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("cannot build the runtime: {e}")));

    common::print_binary(&bin);
    print_split(&base);
    println!("fd limit (soft) of the bench and the servers it starts: {fds}");
    if let Some(own) = &redis {
        println!(
            "redis:   {} started by this bench at {} (pid {}, no persistence, not pinned)",
            own.version, own.url, own.pid
        );
    }

    // The receive path's parser must read what roomcast writes, or every run counts as lost.
    assert_eq!(
        parse_delivery(r#"{"message":"123:4:5","seq":678}"#),
        Some((123, 678))
    );
    let result = run_shapes(&args, &shapes, &base, search, &bin, &runtime);
    // Stop our redis-server (if any) before exiting, also on failure.
    drop(redis);
    if let Err(error) = result {
        fail(error);
    }
}

fn run_shapes(
    args: &Args,
    shapes: &[(usize, usize)],
    base: &Plan,
    search: bool,
    bin: &Path,
    runtime: &Runtime,
) -> Result<(), String> {
    for &(rooms, subs) in shapes {
        let plan = Plan {
            rooms,
            subs,
            pubs: base.pubs.clamp(1, subs),
            ..base.clone()
        };
        let default_rate = (150_000.0 / subs as f64).round().max(1.0);
        let rate: f64 = args.or("rate", default_rate);
        println!();
        print_plan(&plan);
        if search {
            let steps = args.or("max-steps", 14);
            let budget = Duration::from_secs(args.or("budget-secs", 300));
            run_search(&plan, rate, steps, budget, bin, runtime)?;
        } else {
            println!("rate:    {rate} messages/s in total for {} s", plan.secs);
            let outcome = run(&plan, rate, bin, runtime, 0)?;
            print_outcome(&plan, &outcome);
        }
    }
    Ok(())
}

/// A private `redis-server` on a free 127.0.0.1 port, killed by its PID when dropped.
struct RedisServer {
    child: std::process::Child,
    pid: u32,
    url: String,
    version: String,
}

impl RedisServer {
    fn start() -> RedisServer {
        let version = common::command_line("redis-server", &["--version"])
            .unwrap_or_else(|| fail("--redis start: no redis-server on PATH"));
        let version = version
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let port = common::free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| fail(format!("cannot start redis-server: {e}")));
        let server = RedisServer {
            pid: child.id(),
            child,
            url: format!("redis://127.0.0.1:{port}/"),
            version,
        };
        let started = Instant::now();
        while !redis_ping(port) {
            if started.elapsed() > Duration::from_secs(5) {
                drop(server);
                fail("redis-server did not answer PING within 5 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

fn print_split(plan: &Plan) {
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

fn print_plan(plan: &Plan) {
    let broker = match &plan.redis {
        Some(url) => format!("Redis at {url}, 2 instances, members alternate between them"),
        None => "embedded, 1 instance".into(),
    };
    println!(
        "-- shape {}: {} room(s) x {} members = {} connections; {} of each room's members publish \
         ({} publishers; they receive their own messages and count like any member); broker {broker}",
        plan.shape(),
        plan.rooms,
        plan.subs,
        plan.members(),
        plan.pubs,
        plan.rooms * plan.pubs,
    );
    println!(
        "config:  generator: {} reader tasks + 1 publisher task (1 ms ticks); server env: \
         ROOMCAST_WORKERS={} ROOMCAST_SEND_QUEUE={} ROOMCAST_LOG=info; drain wait <= {} ms",
        plan.tasks,
        plan.server_workers,
        plan.send_queue
            .map_or("(default 256)".to_string(), |q| q.to_string()),
        plan.drain.as_millis()
    );
}

// ------------------------------------------------------------------ one run

#[derive(Default)]
struct Outcome {
    rate: f64,
    sent: u64,
    publish_secs: f64,
    publish_errors: u64,
    expected: u64,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    unexpected: u64,
    malformed: u64,
    /// From the first publish to the last delivery.
    window_secs: f64,
    latency_us: Histogram,
    /// How members' connections ended during the run: "close 4008", "error ...", "eof".
    ended: BTreeMap<String, u64>,
    /// Percent of one core, over the publish and drain window.
    server_cpu: f64,
    generator_cpu: f64,
    /// Machine-wide irq + softirq (loopback TCP processing, mostly). With tick-based
    /// accounting it is also charged to whichever process it interrupted.
    irq_cpu: f64,
    /// Machine-wide busy time, of at most 100 % per core.
    machine_cpu: f64,
    /// At least this much went to other processes and kernel threads:
    /// machine − server − generator − irq (irq may sit inside the process figures).
    other_cpu: f64,
    connect_secs: f64,
    server_metrics: Vec<(String, u64)>,
    server_log: Vec<String>,
}

impl Outcome {
    fn deliveries_per_sec(&self) -> f64 {
        if self.window_secs > 0.0 {
            self.delivered as f64 / self.window_secs
        } else {
            0.0
        }
    }

    fn achieved_rate(&self) -> f64 {
        self.sent as f64 / self.publish_secs.max(1e-9)
    }

    fn closed(&self) -> u64 {
        self.ended.values().sum()
    }

    /// Why this run does not count as zero loss with p99 < 100 ms, if it does not.
    fn failures(&self) -> Vec<String> {
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

fn run(
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
    if let Some(url) = &plan.redis {
        env.push(("ROOMCAST_REDIS_URL".into(), url.clone()));
    }
    let spec = ServerSpec {
        bin: PathBuf::from(bin),
        env,
        cpu: plan.pin.map(|(server, _)| server),
    };
    let mut servers = Vec::new();
    for _ in 0..plan.instances() {
        servers.push(Server::start(&spec)?);
    }
    if plan.redis.is_some()
        && let Some(server) = servers.iter().find(|s| s.broker != "redis")
    {
        return Err(format!(
            "this roomcast does not use ROOMCAST_REDIS_URL: its listening line says broker={:?}; \
             build one with the Redis broker",
            server.broker
        ));
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let pids: Vec<String> = servers.iter().map(|s| s.pid.to_string()).collect();
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let tag = format!("b{stamp:x}-{step}");
    let mut outcome = runtime.block_on(drive(plan, rate, &addrs, &pids, &tag))?;
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
            let value = server.metric(name).unwrap_or(0);
            match outcome.server_metrics.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) => *sum += value,
                None => outcome.server_metrics.push((name.to_string(), value)),
            }
        }
        outcome.server_log.extend(server.log_lines());
    }
    drop(servers);
    Ok(outcome)
}

struct Member {
    room: usize,
    instance: usize,
    publisher: bool,
}

async fn drive(
    plan: &Plan,
    rate: f64,
    addrs: &[SocketAddr],
    pids: &[String],
    tag: &str,
) -> Result<Outcome, String> {
    let epoch = Instant::now();
    let members: Vec<Member> = (0..plan.members())
        .map(|m| {
            let (room, index) = (m / plan.subs, m % plan.subs);
            Member {
                room,
                instance: (room + index) % addrs.len(),
                publisher: index < plan.pubs,
            }
        })
        .collect();

    let connecting = Instant::now();
    let attempts = stream::iter(members.iter().enumerate().map(|(m, member)| {
        let addr = addrs[member.instance];
        let path = format!("/ws/chat/{tag}-{}/", member.room);
        async move { (m, connect(addr, &path).await) }
    }))
    .buffer_unordered(64)
    .collect::<Vec<_>>()
    .await;
    let mut sockets: Vec<Option<Ws>> = (0..members.len()).map(|_| None).collect();
    for (m, result) in attempts {
        sockets[m] = Some(result.map_err(|error| format!("member {m}: {error}"))?);
    }
    wait_for_websockets(addrs, members.len() as u64).await?;
    let connect_secs = connecting.elapsed().as_secs_f64();

    let mut readers: Vec<Vec<(usize, usize, SplitStream<Ws>)>> =
        (0..plan.tasks).map(|_| Vec::new()).collect();
    let mut publishers = Vec::new();
    let mut quiet_sinks = Vec::new();
    for (m, socket) in sockets.into_iter().enumerate() {
        let (sink, stream) = socket.expect("every member connected").split();
        readers[m % plan.tasks].push((m, members[m].room, stream));
        if members[m].publisher {
            publishers.push(Publisher {
                room: members[m].room,
                member: m,
                sink,
                n: 0,
                alive: true,
                dirty: false,
            });
        } else {
            quiet_sinks.push(sink);
        }
    }
    // Interleave rooms, so consecutive messages go to different rooms.
    publishers.sort_by_key(|p| (p.member % plan.subs, p.room));

    let delivered = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    // No room can see more seqs than the run publishes in all; a larger one is not ours.
    let max_seq = (rate * plan.secs).round() as u64 + 1;
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|conns| {
            let delivered = Arc::clone(&delivered);
            tokio::spawn(read(conns, epoch, max_seq, delivered, stopped.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let server_ticks: u64 = pids.iter().map(|pid| common::cpu_ticks(pid)).sum();
    let own_ticks = common::cpu_ticks("self");
    let machine_ticks = common::machine_ticks();
    let publish_start = epoch.elapsed().as_nanos() as u64;
    let window_start = Instant::now();
    let published = publish(publishers, rate, plan.secs, epoch, plan.rooms).await;
    let expected: u64 = published.sent_per_room.iter().sum::<u64>() * plan.subs as u64;

    // Drain: until everything arrived, the deadline passed, or nothing arrived for 1 s.
    let drain_start = Instant::now();
    let (mut last_count, mut last_change) = (delivered.load(Ordering::Relaxed), Instant::now());
    while drain_start.elapsed() < plan.drain {
        let now = delivered.load(Ordering::Relaxed);
        if now >= expected {
            break;
        }
        if now != last_count {
            (last_count, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = window_start.elapsed().as_secs_f64();
    let tick = common::clock_ticks_per_second();
    let server_cpu = (pids.iter().map(|pid| common::cpu_ticks(pid)).sum::<u64>() - server_ticks)
        as f64
        / tick
        / wall
        * 100.0;
    let generator_cpu = (common::cpu_ticks("self") - own_ticks) as f64 / tick / wall * 100.0;
    let machine = common::machine_ticks();
    let irq_cpu = (machine.irq - machine_ticks.irq) as f64 / tick / wall * 100.0;
    let machine_cpu = (machine.busy - machine_ticks.busy) as f64 / tick / wall * 100.0;
    let other_cpu = (machine_cpu - server_cpu - generator_cpu - irq_cpu).max(0.0);
    let _ = stop.send(true);

    let mut outcome = Outcome {
        rate,
        sent: published.sent_per_room.iter().sum(),
        publish_secs: published.secs,
        publish_errors: published.errors,
        expected,
        server_cpu,
        generator_cpu,
        irq_cpu,
        machine_cpu,
        other_cpu,
        connect_secs,
        ..Outcome::default()
    };
    let mut last_ns = publish_start;
    for task in tasks {
        let read = task.await.map_err(|e| format!("reader task failed: {e}"))?;
        outcome.latency_us.merge(&read.latency_us);
        outcome.malformed += read.malformed;
        last_ns = last_ns.max(read.last_ns);
        for state in read.members {
            let want = published.sent_per_room[state.room];
            let got = state.unique_up_to(want);
            outcome.delivered += got;
            outcome.lost += want - got;
            outcome.unexpected += state.unique - got;
            outcome.duplicated += state.duplicated;
            outcome.reordered += state.reordered;
            if let Some(end) = state.end {
                *outcome.ended.entry(end).or_default() += 1;
            }
        }
    }
    outcome.window_secs = (last_ns - publish_start) as f64 / 1e9;
    drop(published.publishers);
    drop(quiet_sinks);
    Ok(outcome)
}

/// tungstenite 0.30 zero-fills `read_buffer_size` bytes before every read (WouldBlock ones
/// too), so a chat-sized buffer keeps the generator from spending its time in memset.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(16 * 1024)
}

async fn connect(addr: SocketAddr, path: &str) -> Result<Ws, String> {
    let url = format!("ws://{addr}{path}");
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            url.as_str(),
            stream,
            Some(client_config()),
        )
        .await
        .map_err(|e| format!("handshake {url}: {e}"))?;
        Ok(ws)
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| format!("{url}: no handshake within 10 s"))?
}

/// Waits until the servers' `roomcast_websockets_open` add up to `want`.
async fn wait_for_websockets(addrs: &[SocketAddr], want: u64) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let addrs = addrs.to_vec();
        let open = tokio::task::spawn_blocking(move || {
            addrs
                .iter()
                .map(|addr| common::metric(*addr, "roomcast_websockets_open").unwrap_or(0))
                .sum::<u64>()
        })
        .await
        .unwrap_or(0);
        if open == want {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "roomcast_websockets_open stayed at {open}, expected {want}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------ publishing

struct Publisher {
    room: usize,
    member: usize,
    sink: SplitSink<Ws, Message>,
    n: u64,
    alive: bool,
    /// Written to since the last flush.
    dirty: bool,
}

struct Published {
    sent_per_room: Vec<u64>,
    errors: u64,
    secs: f64,
    /// Kept open until the run is counted.
    publishers: Vec<Publisher>,
}

/// Sends `rate × secs` messages round-robin over the publishers: every 1 ms tick sends what
/// is due by then, then flushes each socket written to once.
async fn publish(
    mut publishers: Vec<Publisher>,
    rate: f64,
    secs: f64,
    epoch: Instant,
    rooms: usize,
) -> Published {
    let total = (rate * secs).round() as u64;
    let count = publishers.len() as u64;
    let mut sent_per_room = vec![0u64; rooms];
    let mut errors = 0;
    let mut dirty: Vec<usize> = Vec::new();
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut k = 0u64;
    while k < total {
        ticker.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
        while k < due {
            let index = (k % count) as usize;
            k += 1;
            let publisher = &mut publishers[index];
            if !publisher.alive {
                continue;
            }
            publisher.n += 1;
            let text = format!(
                "{{\"message\":\"{}:{}:{}\"}}",
                epoch.elapsed().as_nanos(),
                publisher.member,
                publisher.n
            );
            match publisher.sink.feed(Message::text(text)).await {
                Ok(()) => {
                    sent_per_room[publisher.room] += 1;
                    if !publisher.dirty {
                        publisher.dirty = true;
                        dirty.push(index);
                    }
                }
                Err(_) => {
                    publisher.alive = false;
                    errors += 1;
                }
            }
        }
        for index in dirty.drain(..) {
            let publisher = &mut publishers[index];
            publisher.dirty = false;
            if publisher.sink.flush().await.is_err() {
                publisher.alive = false;
                errors += 1;
            }
        }
    }
    Published {
        sent_per_room,
        errors,
        secs: start.elapsed().as_secs_f64(),
        publishers,
    }
}

// ------------------------------------------------------------------ receiving

/// What one member received: which seqs (a bitset), and how its connection ended.
struct MemberState {
    room: usize,
    seen: Vec<u64>,
    unique: u64,
    duplicated: u64,
    reordered: u64,
    highest: u64,
    end: Option<String>,
}

impl MemberState {
    /// Marks `seq` received; false when it was a duplicate.
    fn mark(&mut self, seq: u64) -> bool {
        let index = seq as usize - 1;
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicated += 1;
            return false;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        if seq < self.highest {
            self.reordered += 1;
        }
        self.highest = self.highest.max(seq);
        true
    }

    /// How many distinct seqs in 1..=last it received.
    fn unique_up_to(&self, last: u64) -> u64 {
        let full = (last / 64) as usize;
        let mut total: u64 = self
            .seen
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = last % 64;
        if rest > 0
            && let Some(word) = self.seen.get(full)
        {
            total += u64::from((word & ((1u64 << rest) - 1)).count_ones());
        }
        total
    }
}

struct Read {
    members: Vec<MemberState>,
    latency_us: Histogram,
    malformed: u64,
    last_ns: u64,
}

/// One reader task: many members' streams polled together until `stop`.
async fn read(
    conns: Vec<(usize, usize, SplitStream<Ws>)>,
    epoch: Instant,
    max_seq: u64,
    delivered: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Read {
    let mut members = Vec::with_capacity(conns.len());
    let mut all = SelectAll::new();
    for (slot, (_, room, stream)) in conns.into_iter().enumerate() {
        members.push(MemberState {
            room,
            seen: Vec::new(),
            unique: 0,
            duplicated: 0,
            reordered: 0,
            highest: 0,
            end: None,
        });
        all.push(
            stream
                .map(move |item| (slot, Some(item)))
                .chain(stream::once(futures_util::future::ready((slot, None)))),
        );
    }
    let mut read = Read {
        members: Vec::new(),
        latency_us: Histogram::default(),
        malformed: 0,
        last_ns: 0,
    };
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.changed() => break,
            next = all.next() => next,
        };
        let Some((slot, event)) = next else {
            // Every connection ended: nothing left but the stop.
            let _ = stop.changed().await;
            break;
        };
        let member = &mut members[slot];
        match event {
            Some(Ok(Message::Text(text))) => {
                let now = epoch.elapsed().as_nanos() as u64;
                match parse_delivery(text.as_str()) {
                    Some((sent, seq)) if seq > 0 && seq <= max_seq => {
                        read.latency_us.record(now.saturating_sub(sent) / 1000);
                        if member.mark(seq) {
                            delivered.fetch_add(1, Ordering::Relaxed);
                            read.last_ns = now;
                        }
                    }
                    _ => read.malformed += 1,
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or("close (no code)".to_string(), |f| {
                    format!("close {}", u16::from(f.code))
                });
                member.end.get_or_insert(code);
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                member.end.get_or_insert(format!("error: {error}"));
            }
            None => {
                member.end.get_or_insert("eof".to_string());
            }
        }
    }
    read.members = members;
    read
}

/// (send time in ns since the bench epoch, seq) from `{"message":"<ns>:<member>:<n>","seq":N}`.
/// Scans bytes for the frame roomcast writes; anything else goes through serde_json.
fn parse_delivery(text: &str) -> Option<(u64, u64)> {
    fn digits(bytes: &[u8]) -> Option<u64> {
        if bytes.is_empty() || bytes.len() > 19 {
            return None;
        }
        bytes.iter().try_fold(0u64, |n, b| {
            b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
        })
    }
    let fast = || {
        let rest = text.as_bytes().strip_prefix(b"{\"message\":\"")?;
        let colon = rest.iter().position(|&b| b == b':')?;
        let sent = digits(&rest[..colon])?;
        let body = rest.strip_suffix(b"}")?;
        let start = body.iter().rposition(|b| !b.is_ascii_digit())? + 1;
        body[..start].ends_with(b",\"seq\":").then_some(())?;
        Some((sent, digits(&body[start..])?))
    };
    fast().or_else(|| {
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let message = value["message"].as_str()?;
        Some((
            message.split(':').next()?.parse().ok()?,
            value["seq"].as_u64()?,
        ))
    })
}

// ------------------------------------------------------------------ reports

fn ms_of_us(us: u64) -> String {
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

fn print_outcome(plan: &Plan, o: &Outcome) {
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
fn print_server_log(o: &Outcome) {
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

fn step_row(step: usize, o: &Outcome) -> Vec<String> {
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

const STEP_HEADER: [&str; 16] = [
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

fn run_search(
    plan: &Plan,
    start_rate: f64,
    max_steps: usize,
    budget: Duration,
    bin: &Path,
    runtime: &Runtime,
) -> Result<(), String> {
    println!(
        "search:  from {start_rate} msg/s, double while clean, then bisect to 5 %; {} s per step, \
         at most {max_steps} steps and {} s; clean = zero loss, no duplicate, no close, \
         p99 < 100 ms, publish rate reached",
        plan.secs,
        budget.as_secs()
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut best: Option<Outcome> = None;
    let mut lowest_fail: Option<f64> = None;
    let mut rate = start_rate.round().max(1.0);
    let mut retries = 0;
    for step in 1..=max_steps {
        let expected_time = plan.secs + plan.drain.as_secs_f64() + 3.0;
        if step > 1 && started.elapsed().as_secs_f64() + expected_time > budget.as_secs_f64() {
            println!("(time budget reached)");
            break;
        }
        let outcome = run(plan, rate, bin, runtime, step)?;
        let row = step_row(step, &outcome);
        eprintln!("  step {step}: {}", row[1..].join("  "));
        rows.push(row);
        print_server_log(&outcome);
        let clean = outcome.failures().is_empty();
        // A failure while other processes took CPU says little about roomcast: repeat it.
        if !clean && outcome.other_cpu > BUSY_OTHERS && retries < SEARCH_RETRIES {
            retries += 1;
            eprintln!("    (other processes were busy during that run: repeating {rate} msg/s)");
            continue;
        }
        retries = 0;
        if clean {
            if best.as_ref().is_none_or(|b| rate > b.rate) {
                best = Some(outcome);
            }
            // A pass above an earlier failure makes that failure noise.
            if lowest_fail.is_some_and(|fail| rate >= fail) {
                lowest_fail = None;
            }
        } else if lowest_fail.is_none_or(|fail| rate < fail) {
            lowest_fail = Some(rate);
        }
        let highest_pass = best.as_ref().map(|b| b.rate);
        rate = match (highest_pass, lowest_fail) {
            (Some(pass), None) => pass * 2.0,
            (None, Some(fail)) => (fail / 2.0).floor(),
            (Some(pass), Some(fail)) => {
                if fail - pass <= 0.05 * pass {
                    break;
                }
                ((pass + fail) / 2.0).round()
            }
            (None, None) => unreachable!(),
        };
        if rate < 1.0 {
            break;
        }
    }
    print_table(&STEP_HEADER, &rows);
    match best {
        Some(best) => println!(
            "highest clean rate for {}: {:.0} msg/s = {:.0} deliveries/s (p99 {} ms){} [{:.0} s]",
            plan.shape(),
            best.rate,
            best.deliveries_per_sec(),
            ms_of_us(best.latency_us.percentile(99.0)),
            lowest_fail.map_or(" (upper bound not reached)".to_string(), |f| format!(
                "; {f:.0} msg/s was not clean"
            )),
            started.elapsed().as_secs_f64()
        ),
        None => println!(
            "no clean rate found for {} [{:.0} s]",
            plan.shape(),
            started.elapsed().as_secs_f64()
        ),
    }
    Ok(())
}
