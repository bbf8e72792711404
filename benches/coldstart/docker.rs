//! Container cold start: `docker run` of the app image built from the binary, to its exit
//! (`--version`), to `-d` returning, and to the first 200 from `/readyz` through the
//! published port. Every container and the image are removed at the end.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use testkit::bench::{self, fail};
use testkit::docker::{self, Containers, Image, docker, docker_output};
use testkit::{free_port, http, paths};

pub fn main(runs: usize) {
    if runs == 0 {
        fail("--runs must be at least 1");
    }
    if let Some(reason) = docker::unavailable() {
        fail(format!("--docker: {reason}"));
    }
    let bin = paths::static_binary().unwrap_or_else(|error| fail(error));
    bench::print_machine("cold start: docker run -> first 200 from GET /readyz");
    bench::print_binary(&bin);
    println!(
        "config:  {runs} runs, no warm-up; the image from deploy/image-from-binary, \
         containers read-only, published on 127.0.0.1, /readyz polled every 1 ms"
    );
    println!();
    let image = Image::from_binary(&bin, "coldstart");
    println!("{}", measure(image.tag(), runs));
}

/// Medians over `runs` of: `docker run` of the image with `--version` (the engine's own
/// overhead for a scratch container that exits at once), `docker run -d` returning, and
/// `docker run -d` to the first 200 from /readyz through the published port.
fn measure(image: &str, runs: usize) -> String {
    let mut containers = Containers::default();
    let (mut noop, mut started, mut ready) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let name = containers.name("noop");
        let t0 = Instant::now();
        docker(&["run", "--name", &name, image, "--version"]);
        noop.push(t0.elapsed());
        let _ = docker_output(&["rm", "-f", &name]);

        let name = containers.name("ready");
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let t0 = Instant::now();
        docker::run_published(&name, image, port, &[]);
        started.push(t0.elapsed());
        loop {
            if http::get_blocking(addr, "/readyz").is_ok_and(|r| r.status == 200) {
                ready.push(t0.elapsed());
                break;
            }
            // A panic, not `fail`: unwinding removes the containers and the image.
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{name} never became ready"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = docker_output(&["rm", "-f", &name]);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    format!(
        "containers: startup, median of {runs}: `docker run IMAGE --version` (scratch container, \
         exits at once) {:.0?}; `docker run -d` returns {:.0?}; `docker run -d` to first 200 \
         on /readyz {:.0?}",
        median(&mut noop),
        median(&mut started),
        median(&mut ready)
    )
}
