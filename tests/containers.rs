//! The container layer on a real Docker engine: the image, and compose.yml's blue-green swap.
//!
//! - The image is built from the host's static binary with deploy/image-from-binary (the
//!   documented no-registry way) and checked: size, non-root numeric user, exec-form
//!   HEALTHCHECK, read-only root fs, Docker reports it healthy, `docker stop` exits 0 in time.
//! - compose.yml runs as users run it, with stand-in `redis:7` and `haproxy:2.6` images built
//!   FROM scratch from the host's binaries (tests/standin/build), because this engine cannot
//!   pull. deploy/swap deploys blue, clients connect through the proxy, and deploy/swap moves
//!   them to green under steady traffic: every client must see every seq exactly once.
//!
//! Needs docker, docker-compose (or `docker compose`), the static binary (build it first:
//! `cargo build --release --locked --target x86_64-unknown-linux-musl`; or point
//! ROOMCAST_BINARY at one), and for the stand-ins redis-server and haproxy
//! (`apt-get install -y redis-server haproxy`). Without them the tests are skipped, or fail
//! when `CI` is set. Every container, project, network, volume and app image a test creates is
//! removed on the way out, also on failure. Run them alone for steadier timings:
//! `cargo test --test containers -- --test-threads=1 --nocapture`.

mod common;
#[path = "common/traffic.rs"]
mod traffic;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{find_program, free_port, skip_unless_ci};
use traffic::{Traffic, check};

/// The app image holds one static binary; anything near this means something else got in.
const IMAGE_SIZE_LIMIT: u64 = 20 * 1024 * 1024;
/// compose.yml's stop_grace_period for the app.
const GRACE: Duration = Duration::from_secs(15);
const MEMBERS: usize = 10;
// A person typing fast: under the default publish rate (5/s), as a real deploy sees it.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

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
    let image = env.build_app_image("img");
    let size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", &image.0])
        .parse()
        .unwrap();
    let inspect = |format: &str| docker(&["image", "inspect", "-f", format, &image.0]);
    assert!(
        size <= IMAGE_SIZE_LIMIT,
        "image is {size} bytes, over {IMAGE_SIZE_LIMIT}"
    );
    let user = inspect("{{.Config.User}}");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid.parse::<u32>().is_ok_and(|uid| uid != 0),
        "USER must be a numeric non-root user, not {user:?}"
    );
    assert_eq!(
        inspect("{{json .Config.Healthcheck.Test}}"),
        r#"["CMD","/roomcast","probe"]"#
    );
    assert_eq!(inspect("{{.Config.StopSignal}}"), "SIGTERM");
    assert_eq!(inspect("{{json .Config.Entrypoint}}"), r#"["/roomcast"]"#);
    assert!(inspect("{{json .Config.ExposedPorts}}").contains("8000/tcp"));

    // Read-only root fs, no capabilities, the image's own healthcheck at a shorter interval.
    let mut containers = Containers::default();
    let port = free_port();
    let name = containers.name("single");
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--health-interval",
        "500ms",
        "-p",
        &format!("127.0.0.1:{port}:8000"),
        &image.0,
    ]);
    wait_healthy(&name, Duration::from_secs(30));
    assert_eq!(container(&name, "{{.HostConfig.ReadonlyRootfs}}"), "true");
    let pid = container(&name, "{{.State.Pid}}");
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => {
            for key in ["Uid:", "Gid:"] {
                let line = status.lines().find(|l| l.starts_with(key)).unwrap();
                assert!(
                    line.split_whitespace().skip(1).all(|id| id == "65532"),
                    "the process runs as {line}"
                );
            }
        }
        Err(_) => eprintln!("(no /proc/{pid} here: the engine is remote; uid not checked)"),
    }
    let readyz = http_get(SocketAddr::from(([127, 0, 0, 1], port)), "/readyz");
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");

    let started = Instant::now();
    docker(&["stop", "-t", &GRACE.as_secs().to_string(), &name]);
    let stop_took = started.elapsed();
    assert_eq!(container(&name, "{{.State.ExitCode}}"), "0");
    assert!(
        stop_took < GRACE,
        "docker stop took {stop_took:?}, the grace period is {GRACE:?}"
    );
    let logs = docker_output(&["logs", &name]);
    assert!(logs.contains("\"msg\":\"stopped\""), "{logs}");

    let runs: usize = std::env::var("ROOMCAST_MEASURE_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let timings = measure_startup(&image.0, runs, &mut containers);
    eprintln!(
        "containers: image {:.2} MB ({size} bytes); `docker stop` {stop_took:.2?} (exit 0)",
        size as f64 / 1e6
    );
    if let Some(timings) = timings {
        eprintln!("{timings}");
    }
}

#[test]
fn compose_swap_moves_every_client_to_green_without_loss() {
    let Some(env) = Env::find() else { return };
    let image_present = |tag: &str| {
        Command::new("docker")
            .args(["image", "inspect", tag])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let host_has =
        |name: &str, dir: &str| find_program(name).is_some() || Path::new(dir).join(name).is_file();
    if !(image_present("redis:7") || host_has("redis-server", "/usr/bin"))
        || !(image_present("haproxy:2.6") || host_has("haproxy", "/usr/sbin"))
    {
        skip_unless_ci(
            "no redis:7 or haproxy:2.6 image, and no redis-server or haproxy here to build              stand-ins from (`apt-get install -y redis-server haproxy`)",
        );
        return;
    }
    let image = env.build_app_image("compose");
    let standin = Command::new(root().join("tests/standin/build"))
        .output()
        .expect("run tests/standin/build");
    assert!(
        standin.status.success(),
        "tests/standin/build failed:\n{}{}",
        String::from_utf8_lossy(&standin.stdout),
        String::from_utf8_lossy(&standin.stderr)
    );
    let project = ProjectGuard(Project::new(&env, &image.0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(300), swap_under_traffic(&project.0))
            .await
            .expect("the compose test took longer than 5 minutes")
    });
    drop(project);
    drop(image);
}

async fn swap_under_traffic(project: &Project) {
    let first = project.swap();
    assert!(first.contains("live: blue"), "{first}");
    let blue = project.container("blue");
    for service in ["blue", "redis", "proxy"] {
        let id = project.container(service);
        assert_eq!(
            container(&id, "{{.HostConfig.ReadonlyRootfs}}"),
            "true",
            "{service}"
        );
        assert_eq!(
            container(&id, "{{json .HostConfig.CapDrop}}"),
            r#"["ALL"]"#,
            "{service}"
        );
        assert_ne!(
            container(&id, "{{.HostConfig.Memory}}"),
            "0",
            "{service} mem_limit"
        );
        let user = container(&id, "{{.Config.User}}");
        assert!(
            !user.is_empty() && !user.starts_with("0") && !user.starts_with("root"),
            "{service} runs as {user:?}"
        );
    }
    assert!(container(&blue, "{{json .HostConfig.Ulimits}}").contains("nofile"));
    let front = project.front;
    let readyz = http_get(front, "/readyz");
    assert!(
        readyz.starts_with("HTTP/1.1 200"),
        "through the proxy: {readyz}"
    );

    let room = format!("swap-{}", project.name);
    let traffic = Traffic::connect(front, &room, MEMBERS, PUBLISH_EVERY).await;
    if let Some(open) = websockets_open(&blue) {
        assert_eq!(open, MEMBERS as u64 + 1, "every client starts on blue");
    }
    traffic.start_publishing();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The swap, under traffic: green up and healthy, then blue stopped (1012 to its clients).
    let swap_started = Instant::now();
    let swap = {
        let project = project.clone();
        tokio::task::spawn_blocking(move || project.swap())
    };
    let swapped = swap.await.unwrap();
    let swap_took = swap_started.elapsed();
    assert!(swapped.contains("live: green"), "{swapped}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let last_seq = traffic.finish(Duration::from_secs(60)).await;

    let blue_logs = docker_output(&["logs", &blue]);
    let hint = format!(
        "blue's log: {}",
        blue_logs
            .lines()
            .find(|l| l.contains("\"listening\""))
            .unwrap_or("(no listening line)")
    );
    assert_eq!(container(&blue, "{{.State.Status}}"), "exited");
    assert_eq!(
        container(&blue, "{{.State.ExitCode}}"),
        "0",
        "blue did not drain cleanly:\n{blue_logs}"
    );
    let green = project.container("green");
    if let Some(open) = websockets_open(&green) {
        assert_eq!(
            open,
            MEMBERS as u64 + 1,
            "every client ends on green\n{}",
            traffic.describe()
        );
    }

    // `docker stop` of the live colour, clients connected: it drains them and exits 0 in time.
    traffic.hold_reconnects();
    let stop = {
        let green = green.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            docker(&["stop", "-t", &GRACE.as_secs().to_string(), &green]);
            started.elapsed()
        })
    };
    let tallies = traffic.stop(GRACE).await;
    let stop_took = stop.await.unwrap();
    assert_eq!(
        container(&green, "{{.State.ExitCode}}"),
        "0",
        "green's exit code"
    );
    assert!(stop_took < GRACE, "docker stop took {stop_took:?}");

    let outcome = check(&tallies, last_seq, 1012, &hint);
    let steps: Vec<&str> = swapped
        .lines()
        .filter(|l| l.starts_with("swap: "))
        .collect();
    eprintln!(
        "containers: deploy/swap under traffic:\n  {}",
        steps.join("\n  ")
    );
    eprintln!(
        "containers: swap took {swap_took:.1?} (deploy/swap, start to old colour stopped); \
         {outcome}; `docker stop` of green with clients: {stop_took:.2?}, exit 0"
    );
}

/// What the container tests need; `None` (after printing why) when they cannot run here.
struct Env {
    compose: Vec<String>,
    binary: PathBuf,
    /// A lower open-file limit for compose.yml, when this engine cannot give 20000.
    nofile: Option<String>,
}

impl Env {
    fn find() -> Option<Env> {
        if find_program("docker").is_none() {
            skip_unless_ci("no docker on PATH");
            return None;
        }
        let server = Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .output();
        if !server.as_ref().is_ok_and(|o| o.status.success()) {
            skip_unless_ci("the Docker engine does not answer (`docker version` failed)");
            return None;
        }
        let compose = match std::env::var("COMPOSE") {
            Ok(command) if !command.trim().is_empty() => {
                command.split_whitespace().map(String::from).collect()
            }
            _ if Command::new("docker")
                .args(["compose", "version"])
                .output()
                .is_ok_and(|o| o.status.success()) =>
            {
                vec!["docker".into(), "compose".into()]
            }
            _ if find_program("docker-compose").is_some() => vec!["docker-compose".into()],
            _ => {
                skip_unless_ci("neither `docker compose` nor docker-compose is installed");
                return None;
            }
        };
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target"));
        let binary = std::env::var_os("ROOMCAST_BINARY")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("x86_64-unknown-linux-musl/release/roomcast"));
        if !binary.is_file() {
            skip_unless_ci(&format!(
                "no static roomcast binary at {}; build it first with \
                 `cargo build --release --locked --target x86_64-unknown-linux-musl` \
                 (or set ROOMCAST_BINARY)",
                binary.display()
            ));
            return None;
        }
        warn_if_stale(&binary);
        let nofile = nofile_override();
        Some(Env {
            compose,
            binary,
            nofile,
        })
    }

    /// The app image from the host binary, the documented way; removed on drop.
    fn build_app_image(&self, purpose: &str) -> Image {
        let tag = format!("roomcast-test:{purpose}-{}", unique());
        let output = Command::new(root().join("deploy/image-from-binary"))
            .arg(&self.binary)
            .arg(&tag)
            .output()
            .expect("run deploy/image-from-binary");
        assert!(
            output.status.success(),
            "deploy/image-from-binary failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Image(tag)
    }
}

/// A rebuilt source tree with an old binary tests old code: say so (CI builds it first).
fn warn_if_stale(binary: &Path) {
    fn newest(dir: &Path) -> Option<SystemTime> {
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let meta = entry.metadata().ok()?;
                if meta.is_dir() {
                    newest(&entry.path())
                } else {
                    meta.modified().ok()
                }
            })
            .max()
    }
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok();
    let changed = [root().join("src"), root().join("Cargo.lock")]
        .iter()
        .filter_map(|p| {
            if p.is_dir() {
                newest(p)
            } else {
                std::fs::metadata(p).and_then(|m| m.modified()).ok()
            }
        })
        .max();
    if let (Some(built), Some(changed)) = (built, changed)
        && changed > built
    {
        eprintln!(
            "WARNING: {} is older than the sources; rebuild it with \
             `cargo build --release --locked --target x86_64-unknown-linux-musl`",
            binary.display()
        );
    }
}

/// compose.yml asks for nofile 20000 by default; an engine whose own hard limit is lower cannot start
/// such a container (runc: "error setting rlimit type 7"). Then use the engine's limit, read
/// from dockerd's /proc entry when it runs on this host.
fn nofile_override() -> Option<String> {
    let dockerd_limit = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .find(|entry| {
            std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == "dockerd")
        })
        .and_then(|entry| std::fs::read_to_string(entry.path().join("limits")).ok())
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).map(String::from))
        })?;
    match dockerd_limit.parse::<u64>() {
        Ok(limit) if limit < 20000 => {
            eprintln!(
                "note: dockerd's open-file limit is {limit}; running compose.yml with \
                 ROOMCAST_NOFILE={limit} instead of its default 20000"
            );
            Some(limit.to_string())
        }
        _ => None,
    }
}

/// An image tag removed on drop.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// Named containers removed on drop.
#[derive(Default)]
struct Containers(Vec<String>);

impl Containers {
    fn name(&mut self, purpose: &str) -> String {
        let name = format!("roomcast-test-{purpose}-{}", unique());
        self.0.push(name.clone());
        name
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&self.0)
                .output();
        }
    }
}

/// A compose project on its own ports; see [`ProjectGuard`].
#[derive(Clone)]
struct Project {
    compose: Vec<String>,
    name: String,
    image: String,
    nofile: Option<String>,
    front: SocketAddr,
    stats: SocketAddr,
}

impl Project {
    fn new(env: &Env, image: &str) -> Project {
        Project {
            compose: env.compose.clone(),
            name: format!("rctest{}", unique()),
            image: image.to_string(),
            nofile: env.nofile.clone(),
            front: SocketAddr::from(([127, 0, 0, 1], free_port())),
            stats: SocketAddr::from(([127, 0, 0, 1], free_port())),
        }
    }

    /// The environment compose.yml and deploy/swap read.
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(root())
            .env_remove("COMPOSE_FILE")
            .env("COMPOSE_PROJECT_NAME", &self.name)
            .env("COMPOSE", self.compose.join(" "))
            .env("ROOMCAST_IMAGE", &self.image)
            .env("ROOMCAST_PUBLISH", self.front.to_string())
            .env("ROOMCAST_STATS_PUBLISH", self.stats.to_string());
        if let Some(nofile) = &self.nofile {
            command.env("ROOMCAST_NOFILE", nofile);
        }
        command
    }

    fn compose(&self, args: &[&str]) -> Output {
        let mut words: Vec<&str> = self.compose.iter().map(String::as_str).collect();
        let program = PathBuf::from(words.remove(0));
        words.extend_from_slice(&["-f", "compose.yml"]);
        words.extend_from_slice(args);
        self.command(&program, &words)
            .output()
            .expect("run compose")
    }

    /// Runs deploy/swap; its output (stdout and stderr), failing the test if it fails.
    fn swap(&self) -> String {
        let output = self
            .command(&root().join("deploy/swap"), &[])
            .output()
            .expect("run deploy/swap");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "deploy/swap failed:\n{text}");
        text
    }

    fn container(&self, service: &str) -> String {
        let output = self.compose(&["ps", "-q", service]);
        let id = String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(!id.is_empty(), "no container for {service}");
        id
    }
}

/// Tears its project down (`down -v`: containers, network, volumes) on drop, after printing
/// the project's logs if the test is failing.
struct ProjectGuard(Project);

impl Drop for ProjectGuard {
    fn drop(&mut self) {
        let project = &self.0;
        if std::thread::panicking() {
            let logs = project.compose(&["logs", "--no-color", "--tail", "40"]);
            eprintln!(
                "---- compose logs of {} ----\n{}",
                project.name,
                String::from_utf8_lossy(&logs.stdout)
            );
        }
        let down = project.compose(&["down", "-v", "--remove-orphans", "-t", "5"]);
        if !down.status.success() {
            eprintln!(
                "compose down of {} failed:\n{}",
                project.name,
                String::from_utf8_lossy(&down.stderr)
            );
        }
    }
}

/// `docker ARGS`: its stdout, trimmed; fails the test if it fails.
fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        output.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `docker ARGS`: stdout and stderr together, whatever the status.
fn docker_output(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn container(id: &str, format: &str) -> String {
    docker(&["container", "inspect", "-f", format, id])
}

fn wait_healthy(id: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let health = container(
            id,
            "{{if .State.Health}}{{.State.Health.Status}}{{end}} {{.State.Status}}",
        );
        if health == "healthy running" {
            return;
        }
        assert!(
            !health.starts_with("unhealthy") && !health.ends_with("exited"),
            "{id} is {health}: {}",
            docker_output(&["logs", id])
        );
        assert!(
            started.elapsed() < limit,
            "{id} not healthy after {limit:?} ({health})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET over plain TCP with short timeouts; "" if nothing came back.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

/// roomcast_websockets_open of a container, read from the host through its bridge address;
/// `None` if the host cannot reach container addresses (e.g. a remote engine).
fn websockets_open(id: &str) -> Option<u64> {
    let ip = container(
        id,
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
    );
    let ip = ip.split_whitespace().next()?;
    let metrics = http_get(SocketAddr::new(ip.parse().ok()?, 8000), "/metrics");
    let value = metrics
        .lines()
        .find_map(|line| line.strip_prefix("roomcast_websockets_open "))
        .and_then(|v| v.trim().parse().ok());
    if value.is_none() {
        eprintln!("(cannot read /metrics at {ip}:8000 from here; client placement not checked)");
    }
    value
}

/// Medians over `runs` of: `docker run` of the image with `--version` (the engine's own
/// overhead for a scratch container that exits at once), `docker run -d` returning, and
/// `docker run -d` to the first 200 from /readyz through the published port.
fn measure_startup(image: &str, runs: usize, containers: &mut Containers) -> Option<String> {
    if runs == 0 {
        return None;
    }
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
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--read-only",
            "-p",
            &format!("127.0.0.1:{port}:8000"),
            image,
        ]);
        started.push(t0.elapsed());
        loop {
            if http_get(addr, "/readyz").starts_with("HTTP/1.1 200") {
                ready.push(t0.elapsed());
                break;
            }
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
    Some(format!(
        "containers: startup, median of {runs}: `docker run IMAGE --version` (scratch container, \
         exits at once) {:.0?}; `docker run -d` returns {:.0?}; `docker run -d` to first 200 \
         on /readyz {:.0?}",
        median(&mut noop),
        median(&mut started),
        median(&mut ready)
    ))
}

/// A short suffix unique to this process and moment, for names that may not collide.
fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{}x{:x}", std::process::id(), nanos)
}
