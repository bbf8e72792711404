//! The container layer on a real Docker engine: the image, compose.yml's blue-green swap, and
//! cluster mode across containers.
//!
//! - The image is built from the host's static binary with deploy/image-from-binary (the
//!   documented no-registry way) and checked: size, non-root numeric user, exec-form
//!   HEALTHCHECK, read-only root fs, Docker reports it healthy, `docker stop` exits 0 in time.
//! - compose.yml runs as users run it ([`compose`]), with stand-in `redis:7` and `haproxy:2.6`
//!   images built FROM scratch from the host's binaries (tests/standin/build), because this
//!   engine cannot pull. deploy/swap deploys blue, clients connect through the proxy, and
//!   deploy/swap moves them to green under steady traffic ([`colours`]): every client must see
//!   every seq exactly once.
//! - A Redis Cluster of six `redis:7` containers and three roomcast containers on a private
//!   network ([`cluster`]): rooms on every master under steady traffic while one roomcast
//!   container loses its route to a master and then a master is killed, with the same
//!   zero-loss check; and compose.cluster.yml up, a message through it, up again, down.
//!
//! Needs docker, docker-compose (or `docker compose`), the static binary (`cargo static`
//! first, or point ROOMCAST_BIN at one), and for the stand-ins redis-server and haproxy
//! (`apt-get install -y redis-server haproxy`); the cluster test cuts routes as root with
//! `nsenter` and `ip` (util-linux, iproute2). Without them the tests are skipped, or fail when
//! `CI` is set. Every container, project, network, volume and app image a test creates is
//! removed on the way out, also on failure. How fast a container starts is a benchmark:
//! `cargo bench --bench coldstart -- --docker`.

mod cluster;
mod colours;
mod compose;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use testkit::docker::{self, Containers, Image, docker, docker_output, inspect, wait_healthy};
use testkit::swap::{self, Scenario};
use testkit::{free_port, http, procfs, skip_or_fail, tools};

use colours::Colours;
use compose::{Env, Project, ProjectGuard};

/// The app image holds one static binary; anything near this means something else got in.
const IMAGE_SIZE_LIMIT: u64 = 20 * 1024 * 1024;
/// compose.yml's stop_grace_period for the app.
const GRACE: Duration = Duration::from_secs(15);
const MEMBERS: usize = 10;
// A person typing fast: under the default publish rate (5/s), as a real deploy sees it.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// The tests that measure outages under traffic run one at a time, so they do not share two
/// cores.
static ONE_LOAD_AT_A_TIME: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The final stages of the two Dockerfiles must not drift apart (no Docker needed).
#[test]
fn host_dockerfile_is_the_same_final_stage() {
    let final_stage = |path: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines
            .iter()
            .rposition(|line| line.starts_with("FROM scratch"))
            .unwrap_or_else(|| panic!("no FROM scratch in {}", path.display()));
        lines[start..]
            .iter()
            .map(|line| line.trim())
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            // The binary comes from the builder stage in one and the context in the other.
            .filter(|line| !line.starts_with("COPY "))
            .map(String::from)
            .collect()
    };
    let from_source = final_stage(&root().join("Dockerfile"));
    let from_host = final_stage(&root().join("deploy/Dockerfile.host"));
    assert_eq!(from_source, from_host);
    assert!(from_source.iter().any(|l| l.starts_with("USER 65532")));
    assert!(
        from_source
            .iter()
            .any(|l| l.starts_with("HEALTHCHECK") && l.ends_with(r#"CMD ["/roomcast", "probe"]"#))
    );
}

#[test]
fn image_is_small_non_root_read_only_and_healthy() {
    let Some(env) = Env::find() else { return };
    let image = Image::from_binary(&env.binary, "img");
    let inspect_image = |format: &str| docker(&["image", "inspect", "-f", format, image.tag()]);
    let size: u64 = inspect_image("{{.Size}}").parse().unwrap();
    assert!(
        size <= IMAGE_SIZE_LIMIT,
        "image is {size} bytes, over {IMAGE_SIZE_LIMIT}"
    );
    let user = inspect_image("{{.Config.User}}");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid.parse::<u32>().is_ok_and(|uid| uid != 0),
        "USER must be a numeric non-root user, not {user:?}"
    );
    assert_eq!(
        inspect_image("{{json .Config.Healthcheck.Test}}"),
        r#"["CMD","/roomcast","probe"]"#
    );
    assert_eq!(inspect_image("{{.Config.StopSignal}}"), "SIGTERM");
    assert_eq!(
        inspect_image("{{json .Config.Entrypoint}}"),
        r#"["/roomcast"]"#
    );
    assert!(inspect_image("{{json .Config.ExposedPorts}}").contains("8000/tcp"));

    // Read-only root fs, no capabilities, the image's own healthcheck at a shorter interval.
    let mut containers = Containers::default();
    let port = free_port();
    let name = containers.name("single");
    let options = [
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--health-interval",
        "500ms",
    ];
    docker::run_published(&name, image.tag(), port, &options);
    wait_healthy(&name, Duration::from_secs(30));
    assert_eq!(inspect(&name, "{{.HostConfig.ReadonlyRootfs}}"), "true");
    let pid = inspect(&name, "{{.State.Pid}}");
    match procfs::status_field(&pid, "Uid").zip(procfs::status_field(&pid, "Gid")) {
        Some((uids, gids)) => {
            for (key, ids) in [("Uid", uids), ("Gid", gids)] {
                assert!(
                    ids.split_whitespace().all(|id| id == "65532"),
                    "the process runs as {key}: {ids}"
                );
            }
        }
        None => eprintln!("(no /proc/{pid} here: the engine is remote; uid not checked)"),
    }
    let readyz = http::get_blocking(SocketAddr::from(([127, 0, 0, 1], port)), "/readyz");
    assert!(readyz.as_ref().is_ok_and(|r| r.status == 200), "{readyz:?}");

    let started = Instant::now();
    docker(&["stop", "-t", &GRACE.as_secs().to_string(), &name]);
    let stop_took = started.elapsed();
    assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "0");
    assert!(
        stop_took < GRACE,
        "docker stop took {stop_took:?}, the grace period is {GRACE:?}"
    );
    let logs = docker_output(&["logs", &name]);
    assert!(logs.contains("\"msg\":\"stopped\""), "{logs}");
    eprintln!(
        "containers: image {:.2} MB ({size} bytes); `docker stop` {stop_took:.2?} (exit 0)",
        size as f64 / 1e6
    );
}

#[test]
fn compose_swap_moves_every_client_to_green_without_loss() {
    let Some(env) = Env::find() else { return };
    if !standins(&["redis", "haproxy"]) {
        return;
    }
    let _alone = ONE_LOAD_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let image = Image::from_binary(&env.binary, "compose");
    let project = ProjectGuard(Project::new(&env, image.tag()));
    let mut colours = Colours::deploy(&project.0);
    let scenario = Scenario {
        proxy: project.0.front,
        room: format!("swap-{}", project.0.name),
        members: MEMBERS,
        publish_every: PUBLISH_EVERY,
        settle: Duration::from_secs(1),
        finish_within: Duration::from_secs(60),
        stop_within: GRACE,
        limit: Duration::from_secs(300),
        workers: 3,
    };
    let report = swap::run(&scenario, &mut colours);
    eprintln!("containers: deploy/swap under traffic:\n  {}", report.swap);
    eprintln!(
        "containers: swap took {:.1?} (deploy/swap, start to old colour stopped); {}; {}",
        report.swap_took, report.outcome, report.stop
    );
    drop(project);
    drop(image);
}

/// Builds the stand-ins (tests/standin/build) for `names` (`redis`, `haproxy`), the images
/// compose.yml names, which this engine cannot pull; false, after [`skip_or_fail`], when there
/// is neither such an image nor the host program to build one from.
fn standins(names: &[&str]) -> bool {
    let image_present = |tag: &str| {
        Command::new("docker")
            .args(["image", "inspect", tag])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let host_has = |name: &str, dir: &str| {
        tools::find_program(name).is_some() || Path::new(dir).join(name).is_file()
    };
    for name in names {
        let (tag, program, dir) = match *name {
            "redis" => ("redis:7", "redis-server", "/usr/bin"),
            "haproxy" => ("haproxy:2.6", "haproxy", "/usr/sbin"),
            other => panic!("no stand-in for {other}"),
        };
        if !(image_present(tag) || host_has(program, dir)) {
            skip_or_fail(&format!(
                "no {tag} image, and no {program} here to build a stand-in from \
                 (`apt-get install -y redis-server haproxy`)"
            ));
            return false;
        }
    }
    let standin = Command::new(root().join("tests/standin/build"))
        .args(names)
        .output()
        .expect("run tests/standin/build");
    assert!(
        standin.status.success(),
        "tests/standin/build failed:\n{}{}",
        String::from_utf8_lossy(&standin.stdout),
        String::from_utf8_lossy(&standin.stderr)
    );
    true
}
