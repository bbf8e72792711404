//! Cold start: spawn → first `200` from `GET /readyz`, for the release `roomcast` and for the
//! floor (a static program that only binds and answers one request).
//!
//!   cargo bench --bench coldstart -- [--runs 50] [--poll-us 200] [--workers N]
//!
//! Each run picks a free port, spawns the binary with ROOMCAST_ADDR=127.0.0.1:PORT in a cleared
//! environment, polls `/readyz` over a fresh std TcpStream every `--poll-us` microseconds until
//! it answers 200, then kills the child by its PID and reaps it. roomcast and the floor runs
//! alternate so that drift on the machine hits both alike.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Args, fail, file_size, ms, percentile, print_table};

const USAGE: &str = "\
cold start: spawn -> first 200 from GET /readyz, roomcast beside a trivial static floor binary

usage: cargo bench --bench coldstart -- [options]
  --runs N        measured runs of each binary (default 50; 3 more of each warm up first)
  --poll-us N     pause between readiness polls in microseconds (default 200)
  --timeout-ms N  give up on one run after this long (default 5000)
  --workers N     ROOMCAST_WORKERS for roomcast (default: unset, one per core)

env: ROOMCAST_BIN  the roomcast binary (default target/x86_64-unknown-linux-musl/release/roomcast)
     RUSTC         the compiler for the floor binary (default rustc)";

const WARMUP: usize = 3;

struct Subject {
    name: &'static str,
    bin: PathBuf,
    env: Vec<(String, String)>,
    times: Vec<f64>,
    /// roomcast's own `startup_us` (main → listening), from its log line.
    self_reported_us: Vec<f64>,
}

fn main() {
    let args = Args::parse(&["runs", "poll-us", "timeout-ms", "workers"], &[], USAGE);
    let runs: usize = args.or("runs", 50);
    let poll = Duration::from_micros(args.or("poll-us", 200));
    let limit = Duration::from_millis(args.or("timeout-ms", 5000));
    let workers: Option<usize> = args.get("workers");
    if runs == 0 {
        fail("--runs must be at least 1");
    }

    let bin = common::roomcast_bin();
    let floor = build_floor();

    common::print_machine("cold start: spawn -> first 200 from GET /readyz");
    let cores = common::cores();
    common::print_binary(&bin);
    println!(
        "floor:   {} ({} bytes), source benches/floor/floor.rs",
        floor.display(),
        file_size(&floor)
    );
    let mut roomcast_env = vec![];
    if let Some(workers) = workers {
        roomcast_env.push(("ROOMCAST_WORKERS".to_string(), workers.to_string()));
    }
    let shown: Vec<String> = roomcast_env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "config:  {runs} runs each (+{WARMUP} warm-up), poll every {} us over a new TCP connection, \
         cleared env + ROOMCAST_ADDR=127.0.0.1:<free port>{}{}, processes not pinned",
        poll.as_micros(),
        if shown.is_empty() { "" } else { " " },
        shown.join(" ")
    );
    println!();

    let mut subjects = [
        Subject {
            name: "roomcast",
            bin,
            env: roomcast_env,
            times: vec![],
            self_reported_us: vec![],
        },
        Subject {
            name: "floor",
            bin: floor,
            env: vec![],
            times: vec![],
            self_reported_us: vec![],
        },
    ];

    let started = Instant::now();
    let machine_before = common::machine_ticks();
    let own_before = common::cpu_ticks_with_children("self");
    for round in 0..WARMUP + runs {
        // Alternate which goes first, so neither always follows the other's teardown.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for index in order {
            let subject = &mut subjects[index];
            let (elapsed, reported) = match one_run(subject, poll, limit) {
                Ok(result) => result,
                Err(error) => fail(format!("{} run {}: {error}", subject.name, round + 1)),
            };
            if round >= WARMUP {
                subject.times.push(elapsed.as_secs_f64());
                if let Some(us) = reported {
                    subject.self_reported_us.push(us as f64);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    let wall = started.elapsed().as_secs_f64();
    let tick = common::clock_ticks_per_second();
    let machine = (common::machine_ticks().busy - machine_before.busy) as f64 / tick / wall * 100.0;
    let own = (common::cpu_ticks_with_children("self") - own_before) as f64 / tick / wall * 100.0;

    let mut rows = Vec::new();
    let mut medians = Vec::new();
    for subject in &mut subjects {
        subject.times.sort_by(f64::total_cmp);
        let t = &subject.times;
        medians.push((percentile(t, 50.0), percentile(t, 95.0), t[0]));
        rows.push(vec![
            subject.name.to_string(),
            file_size(&subject.bin).to_string(),
            t.len().to_string(),
            ms(t[0]),
            ms(percentile(t, 50.0)),
            ms(percentile(t, 95.0)),
            ms(t[t.len() - 1]),
        ]);
    }
    let (rc, fl) = (medians[0], medians[1]);
    rows.push(vec![
        "roomcast - floor".into(),
        (file_size(&subjects[0].bin) as i64 - file_size(&subjects[1].bin) as i64).to_string(),
        String::new(),
        ms(rc.2 - fl.2),
        ms(rc.0 - fl.0),
        ms(rc.1 - fl.1),
        String::new(),
    ]);
    print_table(
        &[
            "binary",
            "size (bytes)",
            "runs",
            "min ms",
            "median ms",
            "p95 ms",
            "max ms",
        ],
        &rows,
    );
    let mut reported = subjects[0].self_reported_us.clone();
    reported.sort_by(f64::total_cmp);
    if !reported.is_empty() {
        println!(
            "\nroomcast's own startup_us (main -> listening, from its log): median {:.0} us, p95 {:.0} us; \
             the rest of spawn -> 200 is exec, loading, runtime threads and the first request",
            percentile(&reported, 50.0),
            percentile(&reported, 95.0)
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets: median < 3 ms: {} ({} ms); within 1 ms of the floor: {} (+{} ms)",
        verdict(rc.0 < 0.003),
        ms(rc.0),
        verdict(rc.0 - fl.0 <= 0.001),
        ms(rc.0 - fl.0)
    );
    println!(
        "machine busy during the runs: {machine:.0} % of {} % (this bench and what it spawned: \
         {own:.0} %); total time {wall:.1} s",
        cores * 100
    );
    if machine - own > 20.0 {
        println!(
            "WARNING: other processes used about {:.0} % of a core meanwhile: the machine was \
             shared, so these times are pessimistic",
            machine - own
        );
    }
}

/// Compiles benches/floor/floor.rs into a static musl binary under target/roomcast-bench/.
fn build_floor() -> PathBuf {
    let source = common::manifest_dir().join("benches/floor/floor.rs");
    let out_dir = common::manifest_dir().join("target/roomcast-bench");
    let out = out_dir.join("floor");
    if let Err(error) = std::fs::create_dir_all(&out_dir) {
        fail(format!("cannot create {}: {error}", out_dir.display()));
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let args = [
        "--edition",
        "2021",
        "-C",
        "opt-level=3",
        "-C",
        "strip=symbols",
        "--target",
        "x86_64-unknown-linux-musl",
        "-C",
        "target-feature=+crt-static",
    ];
    let output = Command::new(&rustc)
        .args(args)
        .arg("-o")
        .arg(&out)
        .arg(&source)
        .output();
    match output {
        Ok(output) if output.status.success() => {}
        Ok(output) => fail(format!(
            "building the floor binary failed ({rustc} {} -o {} {}):\n{}\n\
             (the musl target is needed: rustup target add x86_64-unknown-linux-musl)",
            args.join(" "),
            out.display(),
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        )),
        Err(error) => fail(format!("cannot run {rustc}: {error}")),
    }
    out
}

/// One spawn → 200, then kill by PID and reap. Returns the time and roomcast's `startup_us`.
fn one_run(
    subject: &Subject,
    poll: Duration,
    limit: Duration,
) -> Result<(Duration, Option<u64>), String> {
    let port = common::free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut command = Command::new(&subject.bin);
    command
        .env_clear()
        .env("ROOMCAST_ADDR", addr.to_string())
        .envs(subject.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|error| format!("cannot spawn {}: {error}", subject.bin.display()))?;
    let result = poll_ready(addr, &mut child, start, poll, limit);
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut log);
    }
    let elapsed = result.map_err(|error| format!("{error}; stderr: {log:?}"))?;
    let reported = log.lines().find_map(|line| {
        let entry: serde_json::Value = serde_json::from_str(line).ok()?;
        (entry["msg"] == "listening")
            .then(|| entry["startup_us"].as_u64())
            .flatten()
    });
    Ok((elapsed, reported))
}

fn poll_ready(
    addr: SocketAddr,
    child: &mut Child,
    start: Instant,
    poll: Duration,
    limit: Duration,
) -> Result<Duration, String> {
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut attempts = 0u32;
    let mut last;
    loop {
        attempts += 1;
        match TcpStream::connect(addr) {
            Ok(mut stream) => match ask(&mut stream, request.as_bytes(), start) {
                Ok((200, at)) => return Ok(at),
                Ok((status, _)) => last = format!("status {status}"),
                Err(error) => last = error,
            },
            Err(error) => last = error.to_string(),
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status} before answering 200"));
        }
        if start.elapsed() > limit {
            return Err(format!(
                "no 200 within {} ms after {attempts} polls (last: {last})",
                limit.as_millis()
            ));
        }
        std::thread::sleep(poll);
    }
}

/// Sends the request and reads the head (and body, so the close is a clean FIN).
/// Returns the status and the time from `start` at which the head arrived.
fn ask(stream: &mut TcpStream, request: &[u8], start: Instant) -> Result<(u16, Duration), String> {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    stream.write_all(request).map_err(|e| e.to_string())?;
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a response".into());
        }
        buffer.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let at = start.elapsed();
                let status = response.code.unwrap_or(0);
                let body_len = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0usize);
                while buffer.len() < head_len + body_len {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
                return Ok((status, at));
            }
            Ok(httparse::Status::Partial) => continue,
            Err(error) => return Err(format!("bad response: {error}")),
        }
    }
}
