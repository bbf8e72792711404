//! The Docker engine through its command line: whether it answers, commands that fail the
//! test when they fail, the app image from a host binary, named containers. Whatever is
//! created is removed on drop.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::paths;
use crate::tools;
use crate::wait;

/// Why Docker cannot be used here, or `None` when it can.
pub fn unavailable() -> Option<String> {
    if tools::find_program("docker").is_none() {
        return Some("no docker on PATH".into());
    }
    let server = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    if !server.is_ok_and(|output| output.status.success()) {
        return Some("the Docker engine does not answer (`docker version` failed)".into());
    }
    None
}

/// `docker ARGS`: its stdout, trimmed; fails the test if it fails.
pub fn docker(args: &[&str]) -> String {
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
pub fn docker_output(args: &[&str]) -> String {
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

/// `docker container inspect -f FORMAT ID`.
pub fn inspect(id: &str, format: &str) -> String {
    docker(&["container", "inspect", "-f", format, id])
}

/// `docker run -d` of `image` as `name`, read-only, its port 8000 published on
/// 127.0.0.1:`port`, with `options` before the image; the container's id.
pub fn run_published(name: &str, image: &str, port: u16, options: &[&str]) -> String {
    let publish = format!("127.0.0.1:{port}:8000");
    let mut args = vec!["run", "-d", "--name", name, "--read-only", "-p", &publish];
    args.extend_from_slice(options);
    args.push(image);
    docker(&args)
}

/// Waits until Docker reports the container healthy; fails early if it turns unhealthy or
/// exits.
pub fn wait_healthy(id: &str, limit: Duration) {
    wait::until_blocking(&format!("{id} to be healthy"), limit, || {
        let health = inspect(
            id,
            "{{if .State.Health}}{{.State.Health.Status}}{{end}} {{.State.Status}}",
        );
        assert!(
            !health.starts_with("unhealthy") && !health.ends_with("exited"),
            "{id} is {health}: {}",
            docker_output(&["logs", id])
        );
        if health == "healthy running" {
            Ok(())
        } else {
            Err(health)
        }
    });
}

/// A short suffix unique to this process and moment, for names that may not collide.
pub fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{}x{:x}", std::process::id(), nanos)
}

/// An image tag, removed on drop.
pub struct Image(String);

impl Image {
    /// The app image from a host binary with deploy/image-from-binary, the documented
    /// no-registry way, tagged `roomcast-test:<purpose>-<unique>`.
    pub fn from_binary(binary: &Path, purpose: &str) -> Image {
        let tag = format!("roomcast-test:{purpose}-{}", unique());
        let output = Command::new(paths::workspace_root().join("deploy/image-from-binary"))
            .arg(binary)
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

    pub fn tag(&self) -> &str {
        &self.0
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// Names for containers, each removed (with its volumes) on drop.
#[derive(Default)]
pub struct Containers(Vec<String>);

impl Containers {
    /// `roomcast-test-<purpose>-<unique>`, remembered for the removal.
    pub fn name(&mut self, purpose: &str) -> String {
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
