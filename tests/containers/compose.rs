//! compose.yml (and compose.cluster.yml) as users run them: the project on its own ports,
//! deploy/swap, and what the container tests need from this host to run them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::docker::{self, unique};
use testkit::tempdir::TempDir;
use testkit::{free_port, paths, procfs, skip_or_fail, tools};

use super::root;

/// What the container tests need; `None` (after [`skip_or_fail`]) when they cannot run here.
pub struct Env {
    compose: Vec<String>,
    pub binary: PathBuf,
    /// A lower open-file limit for compose.yml, when this engine cannot give 20000.
    nofile: Option<String>,
}

impl Env {
    pub fn find() -> Option<Env> {
        if let Some(reason) = docker::unavailable() {
            skip_or_fail(&reason);
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
            _ if tools::find_program("docker-compose").is_some() => vec!["docker-compose".into()],
            _ => {
                skip_or_fail("neither `docker compose` nor docker-compose is installed");
                return None;
            }
        };
        let binary = match paths::static_binary() {
            Ok(binary) => binary,
            Err(reason) => {
                skip_or_fail(&reason);
                return None;
            }
        };
        paths::warn_if_stale(&binary);
        Some(Env {
            compose,
            binary,
            nofile: nofile_override(),
        })
    }
}

/// compose.yml asks for nofile 20000 by default; an engine whose own hard limit is lower
/// cannot start such a container (runc: "error setting rlimit type 7"). Then use the
/// engine's limit, read from dockerd's /proc entry when it runs on this host.
fn nofile_override() -> Option<String> {
    let (_, limit) = procfs::nofile_limits(procfs::pid_of("dockerd")?)?;
    if limit >= 20000 {
        return None;
    }
    eprintln!(
        "note: dockerd's open-file limit is {limit}; running compose.yml with \
         ROOMCAST_NOFILE={limit} instead of its default 20000"
    );
    Some(limit.to_string())
}

/// A compose project on its own ports; see [`ProjectGuard`].
pub struct Project {
    compose: Vec<String>,
    /// The compose file, relative to the repository root.
    file: &'static str,
    pub name: String,
    image: String,
    nofile: Option<String>,
    /// The proxy's published address.
    pub front: SocketAddr,
    /// HAProxy's stats page, which deploy/swap reads.
    stats: SocketAddr,
}

impl Project {
    pub fn new(env: &Env, image: &str) -> Project {
        Project::of_file(env, image, "compose.yml")
    }

    /// A project of another compose file in the repository root.
    pub fn of_file(env: &Env, image: &str, file: &'static str) -> Project {
        Project {
            compose: env.compose.clone(),
            file,
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

    fn compose_command(&self, args: &[&str]) -> Command {
        let mut words: Vec<&str> = self.compose.iter().map(String::as_str).collect();
        let program = PathBuf::from(words.remove(0));
        words.extend_from_slice(&["-f", self.file]);
        words.extend_from_slice(args);
        self.command(&program, &words)
    }

    fn compose(&self, args: &[&str]) -> Output {
        self.compose_command(args).output().expect("run compose")
    }

    /// `compose ARGS`, failing the test if it fails or takes longer than `limit` (then it is
    /// killed); its output.
    pub fn compose_within(&self, args: &[&str], limit: Duration) -> String {
        // To a file: a pipe nobody reads while waiting could fill up and stall compose.
        let folder = TempDir::new("compose");
        let log = folder.path().join("output");
        let file = std::fs::File::create(&log).expect("create the compose log");
        let mut child = self
            .compose_command(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the compose log"))
            .stderr(file)
            .spawn()
            .expect("run compose");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for compose") {
                break Some(status);
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        match status {
            Some(status) if status.success() => output,
            Some(status) => panic!("compose {} failed ({status}):\n{output}", args.join(" ")),
            None => panic!("compose {} took over {limit:?}:\n{output}", args.join(" ")),
        }
    }

    /// Runs deploy/swap; its output (stdout and stderr), failing the test if it fails.
    pub fn swap(&self) -> String {
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

    pub fn container(&self, service: &str) -> String {
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
pub struct ProjectGuard(pub Project);

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
