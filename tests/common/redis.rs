//! A real `redis-server` on a free port for the tests that need one.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child, killed when dropped. Data survives `restart` (append-only file).
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

/// Finds `redis-server`. Outside CI a missing one skips the test (returns `None`, after
/// saying so); in CI (`CI` set) it fails the test.
pub fn redis_available(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: redis-server is required in CI but was not found"
        );
        eprintln!("SKIPPED {test}: redis-server not found (apt-get install redis-server)");
    }
    found
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = super::free_port();
        let dir =
            std::env::temp_dir().join(format!("roomcast-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            child: None,
            port,
            dir,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let started = Instant::now();
        while self.command(&["PING"]).is_none() {
            assert!(
                started.elapsed() < super::WAIT,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (its data stays on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP) for `how_long` on a thread; it then carries on (SIGCONT).
    pub fn stall(&self, how_long: Duration) -> std::thread::JoinHandle<()> {
        let pid = self
            .child
            .as_ref()
            .expect("redis-server running")
            .id()
            .to_string();
        let signal = |name: &str| {
            let status = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(&pid)
                .status()
                .unwrap();
            assert!(status.success(), "kill -{name} {pid}");
        };
        signal("STOP");
        let pid_again = pid.clone();
        std::thread::spawn(move || {
            std::thread::sleep(how_long);
            let _ = Command::new("kill").arg("-CONT").arg(&pid_again).status();
        })
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs one command over RESP and returns the reply's lines (simple parsing, enough for
    /// integers, bulk strings and flat arrays), or `None` when Redis is not there.
    pub fn command(&self, args: &[&str]) -> Option<Vec<String>> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reader = BufReader::new(stream);
        let mut read_line = || {
            let mut line = String::new();
            reader.read_line(&mut line).ok().filter(|n| *n > 0)?;
            Some(line.trim_end().to_string())
        };
        let first = read_line()?;
        let mut values = Vec::new();
        let mut pending = match first.as_bytes().first() {
            Some(b'*') => first[1..].parse::<i64>().ok()?.max(0) as usize,
            _ => {
                values.push(first);
                0
            }
        };
        while pending > 0 {
            let line = read_line()?;
            if line.starts_with('$') {
                values.push(read_line()?);
            } else {
                values.push(line);
            }
            pending -= 1;
        }
        // Bulk-string replies: drop the "$len" header line.
        if values.len() == 2 && values[0].starts_with('$') {
            values.remove(0);
        }
        Some(values)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
