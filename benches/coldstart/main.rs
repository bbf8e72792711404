//! Cold start: spawn → first `200` from `GET /readyz`, for the release `roomcast` and for the
//! floor (a static program that only binds and answers one request); with `--docker`, for the
//! container image instead.
//!
//!   cargo bench --bench coldstart -- [--runs 50] [--poll-us 200] [--workers N]
//!   cargo bench --bench coldstart -- --docker [--runs 10]
//!
//! Each run picks a free port, spawns the binary with ROOMCAST_ADDR=127.0.0.1:PORT in a cleared
//! environment, polls `/readyz` over a fresh std TcpStream every `--poll-us` microseconds until
//! it answers 200, then kills the child by its PID and reaps it ([`ready`]). roomcast and the
//! floor ([`floor`]) runs alternate so that drift on the machine hits both alike. The
//! container runs are in [`docker`].

mod docker;
mod floor;
mod ready;

use std::path::PathBuf;
use std::time::Duration;

use testkit::bench::{self, Args, fail, file_size, ms, percentile, print_table};
use testkit::cpu::{CpuWindow, Whose};
use testkit::paths;

const USAGE: &str = "\
cold start: spawn -> first 200 from GET /readyz, roomcast beside a trivial static floor binary

usage: cargo bench --bench coldstart -- [options]
  --runs N        measured runs of each binary (default 50; 3 more of each warm up first)
  --poll-us N     pause between readiness polls in microseconds (default 200)
  --timeout-ms N  give up on one run after this long (default 5000)
  --workers N     ROOMCAST_WORKERS for roomcast (default: unset, one per core)
  --docker        time the container image built from the binary instead: `docker run`
                  to exit, to return, and to the first 200 (default 10 runs, no warm-up)

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
    let args = Args::parse(
        &["runs", "poll-us", "timeout-ms", "workers"],
        &["docker"],
        USAGE,
    );
    if args.flag("docker") {
        docker::main(args.or("runs", 10));
        return;
    }
    let runs: usize = args.or("runs", 50);
    let poll = Duration::from_micros(args.or("poll-us", 200));
    let limit = Duration::from_millis(args.or("timeout-ms", 5000));
    let workers: Option<usize> = args.get("workers");
    if runs == 0 {
        fail("--runs must be at least 1");
    }

    let bin = paths::static_binary().unwrap_or_else(|error| fail(error));
    let floor = floor::build();

    bench::print_machine("cold start: spawn -> first 200 from GET /readyz");
    let cores = bench::cores();
    bench::print_binary(&bin);
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

    // This bench and what it spawned (every run's child is reaped), and the machine.
    let window = CpuWindow::start(&[Whose::MeAndReaped]);
    for round in 0..WARMUP + runs {
        // Alternate which goes first, so neither always follows the other's teardown.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for index in order {
            let subject = &mut subjects[index];
            let (elapsed, reported) = match ready::one_run(&subject.bin, &subject.env, poll, limit)
            {
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

    let cpu = window.finish();
    let (wall, machine, own) = (cpu.secs, cpu.machine, cpu.processes[0]);

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
