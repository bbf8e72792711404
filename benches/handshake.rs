//! Handshake cost of signed tokens: N sequential WebSocket upgrades against the release binary
//! with `ROOMCAST_AUTH=off`, with `off` and a token sent anyway (the bytes without the check),
//! and with `required` and an HS256 token in the `Authorization` header, in alternation.
//!
//!   cargo static && cargo bench --bench handshake -- [--runs 5000] [--warmup 500]
//!
//! Each upgrade is one blocking client on a fresh TCP connection: connect, send the upgrade
//! request, read the 101 (the handshake, timed), then send a close frame and read until the
//! server closes (the whole cycle, timed too) before the next one starts; each server's CPU
//! time over the measured cycles comes from /proc. The three servers run with
//! ROOMCAST_WORKERS=1 pinned to CPU 0 and the client is pinned to CPU 1 where there are two
//! cores and `taskset`; they are killed by their PIDs at the end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use testkit::bench::{self, Args, fail, percentile, print_table};
use testkit::{Endpoint, Roomcast, Server, paths, procfs};

const USAGE: &str = "\
handshake: WebSocket upgrades per mode, ROOMCAST_AUTH=off against required with a bearer token

usage: cargo bench --bench handshake -- [options]
  --runs N     measured upgrades per mode (default 5000)
  --warmup N   unmeasured upgrades per mode first (default 500)

env: ROOMCAST_BIN  the roomcast binary (default target/x86_64-unknown-linux-musl/release/roomcast)";

const SECRET: &str = "handshake-bench-secret-of-at-least-32-bytes";
const ROOM_PATH: &str = "/ws/chat/bench-1/";

struct Mode {
    name: &'static str,
    server: Server,
    /// Extra request header lines, each ending in CRLF.
    headers: String,
    handshake_us: Vec<f64>,
    cycle_us: Vec<f64>,
    /// The server's CPU ticks (user + system) when the measured upgrades started.
    ticks_at_start: u64,
}

fn main() {
    let args = Args::parse(&["runs", "warmup"], &[], USAGE);
    let runs: usize = args.or("runs", 5000);
    let warmup: usize = args.or("warmup", 500);
    if runs == 0 {
        fail("--runs must be at least 1");
    }
    let bin = paths::static_binary().unwrap_or_else(|error| fail(error));
    paths::warn_if_stale(&bin);
    bench::print_machine("handshake: WebSocket upgrades, auth off against required");
    bench::print_binary(&bin);

    let pinned = bench::cores() >= 2 && bench::has_command("taskset") && bench::pin_self(1);
    let token = token();
    let start = |auth: &str| {
        let mut server = Roomcast::binary(&bin)
            .env("ROOMCAST_ADDR", "127.0.0.1:0")
            .env("ROOMCAST_WORKERS", "1")
            .env("ROOMCAST_AUTH", auth)
            .env("ROOMCAST_AUTH_SECRET", SECRET);
        for (name, value) in bench::LOAD_GENERATOR_LIMITS {
            server = server.env(name, value);
        }
        if pinned {
            server = server.cpu(0);
        }
        server.spawn().unwrap_or_else(|error| fail(error))
    };
    let mut modes = [
        Mode {
            name: "off",
            server: start("off"),
            headers: String::new(),
            handshake_us: Vec::with_capacity(runs),
            cycle_us: Vec::with_capacity(runs),
            ticks_at_start: 0,
        },
        Mode {
            name: "off, token sent anyway",
            server: start("off"),
            headers: format!("Authorization: Bearer {token}\r\n"),
            handshake_us: Vec::with_capacity(runs),
            cycle_us: Vec::with_capacity(runs),
            ticks_at_start: 0,
        },
        Mode {
            name: "required + bearer token",
            server: start("required"),
            headers: format!("Authorization: Bearer {token}\r\n"),
            handshake_us: Vec::with_capacity(runs),
            cycle_us: Vec::with_capacity(runs),
            ticks_at_start: 0,
        },
    ];
    println!(
        "config:  {runs} measured upgrades per mode after {warmup} warm-up, alternating modes, one \
         at a time to {ROOM_PATH} (plain protocol, no frames but the close); token {} bytes \
         (HS256: sub, name, aud, iat, exp, rooms [\"bench-*\"]); servers ROOMCAST_WORKERS=1 {}, \
         client {}; per-address limits lifted",
        token.len(),
        if pinned { "on CPU 0" } else { "not pinned" },
        if pinned { "on CPU 1" } else { "not pinned" },
    );
    println!();

    for round in 0..warmup + runs {
        for mode in modes.iter_mut() {
            if round == warmup {
                mode.ticks_at_start = procfs::cpu_ticks(mode.server.pid());
            }
            let (handshake, cycle) = upgrade(mode.server.addr(), &mode.headers)
                .unwrap_or_else(|error| fail(format!("{} upgrade {round}: {error}", mode.name)));
            if round >= warmup {
                mode.handshake_us.push(handshake.as_secs_f64() * 1e6);
                mode.cycle_us.push(cycle.as_secs_f64() * 1e6);
            }
        }
    }

    let mut rows = Vec::new();
    let mut medians = Vec::new();
    let tick_us = 1e6 / procfs::clock_ticks_per_second();
    for mode in modes.iter_mut() {
        let ticks = procfs::cpu_ticks(mode.server.pid()) - mode.ticks_at_start;
        let cpu_us = ticks as f64 * tick_us / runs as f64;
        mode.handshake_us.sort_by(f64::total_cmp);
        mode.cycle_us.sort_by(f64::total_cmp);
        let (handshake, cycle) = (&mode.handshake_us, &mode.cycle_us);
        medians.push((percentile(handshake, 50.0), percentile(handshake, 99.0)));
        rows.push(vec![
            mode.name.to_string(),
            handshake.len().to_string(),
            format!("{:.1}", percentile(handshake, 50.0)),
            format!("{:.1}", percentile(handshake, 99.0)),
            format!("{:.1}", percentile(cycle, 50.0)),
            format!("{:.1}", percentile(cycle, 99.0)),
            format!("{cpu_us:.1}"),
        ]);
    }
    for (name, base) in [("required - off", 0), ("required - off, token sent", 1)] {
        rows.push(vec![
            name.into(),
            String::new(),
            format!("{:+.1}", medians[2].0 - medians[base].0),
            format!("{:+.1}", medians[2].1 - medians[base].1),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    print_table(
        &[
            "ROOMCAST_AUTH",
            "upgrades",
            "handshake median us",
            "handshake p99 us",
            "cycle median us",
            "cycle p99 us",
            "server CPU us",
        ],
        &rows,
    );
    println!(
        "\nhandshake: connect -> 101 read; cycle: connect -> 101 -> close frame -> the server's \
         close and EOF; server CPU: its user + system time per measured cycle ({:.0} us ticks)",
        tick_us
    );
}

/// An HS256 token like a backend's, for the room the bench joins.
fn token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let claims = json!({
        "sub": "100042",
        "name": "Bench User",
        "aud": "roomcast",
        "iat": now,
        "exp": now + 3600,
        "rooms": ["bench-*"],
    });
    roomcast::auth::jwt::sign(&claims, SECRET.as_bytes())
}

/// One upgrade and close: (connect -> 101, connect -> server's close and EOF).
fn upgrade(addr: SocketAddr, headers: &str) -> Result<(Duration, Duration), String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {ROOM_PATH} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed before a head: {:?}",
                String::from_utf8_lossy(&head)
            ));
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let handshake = started.elapsed();
    if !head.starts_with(b"HTTP/1.1 101 ") {
        return Err(format!("not a 101: {:?}", String::from_utf8_lossy(&head)));
    }
    // A masked close frame with status 1000 (mask 0: the payload goes as it is).
    stream
        .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
        .map_err(|e| format!("close: {e}"))?;
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(error) => return Err(format!("waiting for the close: {error}")),
        }
    }
    Ok((handshake, started.elapsed()))
}
