//! The two colours of a compose project as the swap scenario drives them: deploy/swap moves
//! the traffic, `docker stop` ends it.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use testkit::docker::{docker, docker_output, inspect};
use testkit::swap::Deployment;
use testkit::{http, metrics};

use super::GRACE;
use super::compose::Project;

pub struct Colours<'a> {
    project: &'a Project,
    /// The live colour's container.
    live: String,
    /// Blue's `listening` line, once it has exited.
    blue_listening: String,
    /// `docker stop` of the live colour, on a thread: how long it took.
    stopping: Option<JoinHandle<Duration>>,
}

impl<'a> Colours<'a> {
    /// The first deploy/swap: blue live behind the proxy, each service locked down as
    /// compose.yml says.
    pub fn deploy(project: &'a Project) -> Colours<'a> {
        let first = project.swap();
        assert!(first.contains("live: blue"), "{first}");
        for service in ["blue", "redis", "proxy"] {
            let id = project.container(service);
            assert_eq!(
                inspect(&id, "{{.HostConfig.ReadonlyRootfs}}"),
                "true",
                "{service}"
            );
            assert_eq!(
                inspect(&id, "{{json .HostConfig.CapDrop}}"),
                r#"["ALL"]"#,
                "{service}"
            );
            assert_ne!(
                inspect(&id, "{{.HostConfig.Memory}}"),
                "0",
                "{service} mem_limit"
            );
            let user = inspect(&id, "{{.Config.User}}");
            assert!(
                !user.is_empty() && !user.starts_with("0") && !user.starts_with("root"),
                "{service} runs as {user:?}"
            );
        }
        let blue = project.container("blue");
        assert!(inspect(&blue, "{{json .HostConfig.Ulimits}}").contains("nofile"));
        let readyz = http::get_blocking(project.front, "/readyz");
        assert!(
            readyz.as_ref().is_ok_and(|r| r.status == 200),
            "through the proxy: {readyz:?}"
        );
        Colours {
            project,
            live: blue,
            blue_listening: String::new(),
            stopping: None,
        }
    }
}

impl Deployment for Colours<'_> {
    /// deploy/swap: green up and healthy, then blue stopped (1012 to its clients).
    fn swap(&mut self) -> String {
        let swapped = self.project.swap();
        assert!(swapped.contains("live: green"), "{swapped}");
        let blue = std::mem::replace(&mut self.live, self.project.container("green"));
        let blue_logs = docker_output(&["logs", &blue]);
        self.blue_listening = blue_logs
            .lines()
            .find(|l| l.contains("\"listening\""))
            .unwrap_or("(no listening line)")
            .to_string();
        assert_eq!(inspect(&blue, "{{.State.Status}}"), "exited");
        assert_eq!(
            inspect(&blue, "{{.State.ExitCode}}"),
            "0",
            "blue did not drain cleanly:\n{blue_logs}"
        );
        let steps: Vec<&str> = swapped
            .lines()
            .filter(|l| l.starts_with("swap: "))
            .collect();
        steps.join("\n  ")
    }

    /// Read from the host through the container's bridge address; `None` where the host
    /// cannot reach container addresses (e.g. a remote engine).
    fn live_websockets(&self) -> Option<u64> {
        let ip = inspect(
            &self.live,
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        );
        let ip = ip.split_whitespace().next()?;
        let value = metrics::read_blocking(
            SocketAddr::new(ip.parse().ok()?, 8000),
            "roomcast_websockets_open",
        );
        if value.is_none() {
            eprintln!(
                "(cannot read /metrics at {ip}:8000 from here; client placement not checked)"
            );
        }
        value
    }

    /// `docker stop` of the live colour, clients connected.
    fn begin_stop(&mut self) {
        let live = self.live.clone();
        self.stopping = Some(std::thread::spawn(move || {
            let started = Instant::now();
            docker(&["stop", "-t", &GRACE.as_secs().to_string(), &live]);
            started.elapsed()
        }));
    }

    /// It drains them and exits 0 within the grace period.
    fn finish_stop(&mut self) -> String {
        let stopping = self.stopping.take().expect("the stop began");
        let stop_took = stopping.join().expect("docker stop");
        assert_eq!(
            inspect(&self.live, "{{.State.ExitCode}}"),
            "0",
            "green's exit code"
        );
        assert!(stop_took < GRACE, "docker stop took {stop_took:?}");
        format!("`docker stop` of green with clients: {stop_took:.2?}, exit 0")
    }

    fn hint(&self) -> String {
        format!("blue's log: {}", self.blue_listening)
    }
}
