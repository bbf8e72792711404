//! Idle memory: the server's RSS after start, and with C idle chat connections open.
//!
//!   cargo bench --bench idle_memory -- [--conns 10000] [--rooms 10]
//!
//! Starts the release binary, reads VmRSS from /proc/PID/status once it is listening, opens C
//! WebSockets to /ws/chat/<room>/ spread over a few rooms, waits until `/metrics` counts them
//! all in `roomcast_websockets_open`, reads VmRSS again, closes them, reads it a third time,
//! then kills the server by its PID. Also reports the binary's size.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use testkit::bench::{self, Args, count, fail, print_table_with};
use testkit::process::Listening;
use testkit::procfs::status_kib;
use testkit::ws::{TunedWs, connect_tuned};
use testkit::{Endpoint, Roomcast, Server, metrics, paths};

const USAGE: &str = "\
idle memory: roomcast's RSS after start and with C idle chat connections

usage: cargo bench --bench idle_memory -- [options]
  --conns C           idle chat connections (default 10000)
  --rooms N           rooms they are spread over (default 10)
  --server-workers N  ROOMCAST_WORKERS (default: unset, one per core)
  --settle-ms N       pause before each RSS reading (default 1000)

env: ROOMCAST_BIN  the roomcast binary (default target/x86_64-unknown-linux-musl/release/roomcast)";

fn main() {
    let args = Args::parse(
        &["conns", "rooms", "server-workers", "settle-ms"],
        &[],
        USAGE,
    );
    let conns: usize = args.or("conns", 10_000);
    let rooms: usize = args.or("rooms", 10).max(1);
    let workers: Option<usize> = args.get("server-workers");
    let settle = Duration::from_millis(args.or("settle-ms", 1000));
    if conns == 0 {
        fail("--conns must be at least 1");
    }
    let bin = paths::static_binary().unwrap_or_else(|error| fail(error));
    bench::print_machine("idle memory");
    bench::print_binary(&bin);

    // The bench holds one fd per connection and so does the server, which inherits the limit.
    let fds = bench::raise_nofile(conns as u64 + 256);
    let mut env = vec![(
        "ROOMCAST_MAX_CONNECTIONS".to_string(),
        (conns + 100).max(20_000).to_string(),
    )];
    if let Some(workers) = workers {
        env.push(("ROOMCAST_WORKERS".into(), workers.to_string()));
    }
    for (name, value) in bench::LOAD_GENERATOR_LIMITS {
        env.push((name.to_string(), value.to_string()));
    }
    let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "config:  {conns} idle chat connections over {rooms} rooms (no messages; the server's \
         20 s heartbeat has not started when RSS is read); server env {} ROOMCAST_LOG=info, \
         not pinned; fd limit (soft) {fds} for the bench and the server; RSS read {} ms after \
         each step",
        shown.join(" "),
        settle.as_millis()
    );
    println!();

    let server = Roomcast::binary(&bin)
        .env("ROOMCAST_ADDR", "127.0.0.1:0")
        .env("ROOMCAST_LOG", "info")
        .envs(&env)
        .spawn()
        .unwrap_or_else(|error| fail(error));
    std::thread::sleep(settle);
    let start = Reading::of(server.pid());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("cannot build the runtime: {e}")));
    let connecting = Instant::now();
    let sockets = runtime
        .block_on(open_all(server.addr(), conns, rooms))
        .unwrap_or_else(|error| fail(error));
    wait_for_open(&server, conns as u64, Duration::from_secs(60));
    let connect_secs = connecting.elapsed().as_secs_f64();
    std::thread::sleep(settle);
    let loaded = Reading::of(server.pid());
    let own_rss = status_kib(std::process::id(), "VmRSS").unwrap_or(0);

    drop(sockets);
    wait_for_open(&server, 0, Duration::from_secs(30));
    std::thread::sleep(settle);
    let after = Reading::of(server.pid());
    let log: Vec<String> = server
        .logs()
        .into_iter()
        .filter(|line| Listening::parse(line).is_none())
        .collect();
    drop(server);

    let per_conn = (loaded.rss as f64 - start.rss as f64) / conns as f64;
    let size = bench::file_size(&bin);
    let kib = |k: u64| format!("{} KiB ({:.2} MiB)", count(k), k as f64 / 1024.0);
    let rows = vec![
        vec![
            "binary size".into(),
            format!("{} bytes ({:.2} MiB)", count(size), size as f64 / 1048576.0),
        ],
        vec!["RSS after start (idle)".into(), kib(start.rss)],
        vec![
            "  of which anonymous / file".into(),
            format!("{} / {} KiB", count(start.anon), count(start.file)),
        ],
        vec![
            format!("RSS with {} idle connections", count(conns as u64)),
            kib(loaded.rss),
        ],
        vec![
            "  of which anonymous / file".into(),
            format!("{} / {} KiB", count(loaded.anon), count(loaded.file)),
        ],
        vec!["per connection".into(), format!("{per_conn:.2} KiB")],
        vec!["peak RSS (VmHWM)".into(), kib(loaded.hwm.max(after.hwm))],
        vec!["RSS after they all closed".into(), kib(after.rss)],
        vec![
            "connect time".into(),
            format!("{connect_secs:.2} s (until roomcast_websockets_open = {conns})"),
        ],
        vec![
            "bench's own RSS (client side)".into(),
            format!(
                "{} ({:.2} KiB per connection)",
                kib(own_rss),
                own_rss as f64 / conns as f64
            ),
        ],
    ];
    print_table_with(&["idle memory", "result"], &rows, 2);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets: < 8 KiB per idle connection: {} ({per_conn:.2}); idle RSS < 4 MiB: {} ({:.2} MiB); \
         binary < 3 MiB: {} ({:.2} MiB)",
        verdict(per_conn < 8.0),
        verdict(start.rss < 4096),
        start.rss as f64 / 1024.0,
        verdict(size < 3 * 1024 * 1024),
        size as f64 / 1048576.0
    );
    for line in log.iter().take(10) {
        println!("server log: {line}");
    }
}

struct Reading {
    rss: u64,
    anon: u64,
    file: u64,
    hwm: u64,
}

impl Reading {
    fn of(pid: u32) -> Reading {
        let get = |field| status_kib(pid, field).unwrap_or(0);
        Reading {
            rss: get("VmRSS"),
            anon: get("RssAnon"),
            file: get("RssFile"),
            hwm: get("VmHWM"),
        }
    }
}

async fn open_all(addr: SocketAddr, conns: usize, rooms: usize) -> Result<Vec<TunedWs>, String> {
    // Small client buffers: the bench holds as many connections as the server.
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    let results = stream::iter((0..conns).map(|i| async move {
        let path = format!("/ws/chat/idle-{}/", i % rooms);
        connect_tuned(addr, &path, config, &[])
            .await
            .map_err(|error| format!("connection {i}: {error}"))
    }))
    .buffer_unordered(128)
    .collect::<Vec<_>>()
    .await;
    results.into_iter().collect()
}

fn wait_for_open(server: &Server, want: u64, limit: Duration) {
    let started = Instant::now();
    loop {
        let open = metrics::read_blocking(server.addr(), "roomcast_websockets_open");
        if open == Some(want) {
            return;
        }
        if started.elapsed() > limit {
            fail(format!(
                "roomcast_websockets_open is {open:?} after {} s, expected {want}",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
