//! roomcast as a child process: how to start it, its `listening` line, the running server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::child::Child;
use crate::endpoint::Endpoint;
use crate::paths;
use crate::wait::WAIT;

/// What the `listening` log line says.
#[derive(Debug, Clone)]
pub struct Listening {
    pub addr: SocketAddr,
    /// `local` or `redis`.
    pub broker: String,
    /// From process start to listening, as the server measured it.
    pub startup_us: u64,
}

impl Listening {
    /// Reads one stderr line; `None` unless it is the `listening` line.
    pub fn parse(line: &str) -> Option<Listening> {
        let entry: Value = serde_json::from_str(line).ok()?;
        if entry["msg"] != "listening" {
            return None;
        }
        Some(Listening {
            addr: entry["addr"].as_str()?.parse().ok()?,
            broker: entry["broker"].as_str().unwrap_or("?").to_string(),
            startup_us: entry["startup_us"].as_u64().unwrap_or(0),
        })
    }
}

/// How to start one roomcast: the binary, a cleared environment plus `env`, and optional
/// limits. Build it, then [`start`](Roomcast::start) or [`run_to_exit`](Roomcast::run_to_exit).
pub struct Roomcast {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Soft and hard `RLIMIT_NOFILE`, set by `prlimit`.
    nofile: Option<u64>,
    /// The CPU to pin it to with `taskset`.
    cpu: Option<usize>,
}

impl Roomcast {
    /// The debug binary next to the running test, with quiet test defaults: loopback port 0,
    /// no shutdown delay, two workers.
    pub fn debug() -> Roomcast {
        Roomcast::binary(paths::debug_binary())
            .env("ROOMCAST_ADDR", "127.0.0.1:0")
            .env("ROOMCAST_SHUTDOWN_DELAY_MS", "0")
            .env("ROOMCAST_WORKERS", "2")
    }

    /// The static release binary with the same test defaults, for figures that must be the
    /// shipped build's; `None` (skipped, or failed in CI) when it has not been built.
    pub fn release() -> Option<Roomcast> {
        let binary = match paths::static_binary() {
            Ok(binary) => binary,
            Err(why) => {
                crate::tools::skip_or_fail(&why);
                return None;
            }
        };
        paths::warn_if_stale(&binary);
        Some(
            Roomcast::binary(binary)
                .env("ROOMCAST_ADDR", "127.0.0.1:0")
                .env("ROOMCAST_SHUTDOWN_DELAY_MS", "0")
                .env("ROOMCAST_WORKERS", "2"),
        )
    }

    /// `program` in a cleared environment, nothing set.
    pub fn binary(program: impl Into<PathBuf>) -> Roomcast {
        Roomcast {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            nofile: None,
            cpu: None,
        }
    }

    /// Sets `name`, replacing an earlier value.
    pub fn env(mut self, name: &str, value: &str) -> Roomcast {
        self.env.retain(|(existing, _)| existing != name);
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    pub fn envs<K: AsRef<str>, V: AsRef<str>>(self, pairs: &[(K, V)]) -> Roomcast {
        pairs.iter().fold(self, |roomcast, (name, value)| {
            roomcast.env(name.as_ref(), value.as_ref())
        })
    }

    pub fn args(mut self, args: &[&str]) -> Roomcast {
        self.args.extend(args.iter().map(|arg| arg.to_string()));
        self
    }

    /// Runs it under `ulimit -n limit` (soft and hard), through `prlimit`, which execs it: the
    /// PID stays the server's.
    pub fn nofile(mut self, limit: u64) -> Roomcast {
        self.nofile = Some(limit);
        self
    }

    /// Pins it to `cpu` through `taskset`, which execs it too.
    pub fn cpu(mut self, cpu: usize) -> Roomcast {
        self.cpu = Some(cpu);
        self
    }

    fn command(&self) -> Command {
        let mut words: Vec<String> = Vec::new();
        if let Some(cpu) = self.cpu {
            words.extend(["taskset".into(), "-c".into(), cpu.to_string()]);
        }
        if let Some(limit) = self.nofile {
            words.extend([
                "prlimit".into(),
                format!("--nofile={limit}:{limit}"),
                "--".into(),
            ]);
        }
        let mut command = match words.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        command
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Starts it and waits (at most [`WAIT`]) for its `listening` line.
    pub fn spawn(self) -> Result<Server, String> {
        let mut child = Child::spawn(&mut self.command())
            .map_err(|error| format!("cannot start {}: {error}", self.program.display()))?;
        match child.wait_for_line(WAIT, Listening::parse) {
            Some(listening) => Ok(Server { child, listening }),
            None => {
                let status = child.try_wait();
                child.kill();
                Err(format!(
                    "roomcast did not log `listening` (exit status {status:?}); stderr: {:?}",
                    child.output()
                ))
            }
        }
    }

    /// [`spawn`](Roomcast::spawn), failing the test if it does not start.
    pub fn start(self) -> Server {
        self.spawn().unwrap_or_else(|error| panic!("{error}"))
    }

    /// Runs it to its exit, failing the test if it still runs after [`WAIT`]; its output and
    /// how long it ran.
    pub fn run_to_exit(self) -> (Output, Duration) {
        let started = Instant::now();
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", self.program.display()));
        while child.try_wait().ok().flatten().is_none() {
            if started.elapsed() > WAIT {
                let _ = child.kill();
                let output = child.wait_with_output().expect("its output");
                panic!(
                    "roomcast {:?} still running after {WAIT:?}: {}",
                    self.args,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let elapsed = started.elapsed();
        (child.wait_with_output().expect("its output"), elapsed)
    }
}

/// A running `roomcast serve`, killed by its PID when dropped.
pub struct Server {
    child: Child,
    listening: Listening,
}

impl Server {
    /// The debug binary with the quiet test defaults and `env` on top.
    pub fn start(env: &[(&str, &str)]) -> Server {
        Roomcast::debug().envs(env).start()
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Its `listening` line: address, broker, startup time.
    pub fn listening(&self) -> &Listening {
        &self.listening
    }

    /// Every line it wrote to stderr so far, the `listening` line included.
    pub fn logs(&self) -> Vec<String> {
        self.child.output()
    }

    pub fn signal(&self, name: &str) {
        self.child.signal(name);
    }

    /// Waits for it to exit, failing the test after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        self.child.wait_exit(limit)
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().is_none()
    }
}

impl Endpoint for Server {
    fn addr(&self) -> SocketAddr {
        self.listening.addr
    }
}
