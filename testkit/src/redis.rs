//! A real `redis-server` on a free loopback port: start (with extra arguments), stop, restart
//! with its data, stall, and a small RESP client. Killed on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::child::Child;
use crate::net::free_port;
use crate::tempdir::TempDir;
use crate::tools;
use crate::wait::{self, WAIT};

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Its working folder: the append-only file that survives a restart.
    dir: TempDir,
    /// Arguments after the defaults; where they repeat one, the later wins.
    extra: Vec<String>,
}

impl RedisServer {
    /// Whether `redis-server` is here; when it is not, [`tools::skip_or_fail`] has said so.
    pub fn available() -> bool {
        tools::require_program(&["redis-server"], "apt-get install -y redis-server").is_some()
    }

    /// The first line of `redis-server --version`.
    pub fn version() -> Option<String> {
        let output = Command::new("redis-server")
            .arg("--version")
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        output
            .status
            .success()
            .then(|| text.lines().next().unwrap_or_default().trim().to_string())
    }

    /// Persistent (append-only, fsync always), so a restart keeps the data.
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port(), &[])
    }

    /// With `extra` arguments, e.g. `["--maxmemory", "1mb"]` or `["--appendonly", "no"]`.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::start_on(free_port(), extra)
    }

    /// On `port`, e.g. one a server under test already tries.
    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port,
            dir: TempDir::new("redis"),
            extra: extra.iter().map(|arg| arg.to_string()).collect(),
        };
        server.spawn();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::pid)
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra);
        let child = Child::spawn(&mut command)
            .unwrap_or_else(|error| panic!("cannot start redis-server: {error}"));
        self.child = Some(child);
        wait::until_blocking("redis-server to answer PING", WAIT, || {
            match self.command(&["PING"]) {
                Some(_) => Ok(()),
                None => Err(format!("no answer; its output: {:?}", self.output())),
            }
        });
    }

    fn output(&self) -> Vec<String> {
        self.child.as_ref().map(Child::output).unwrap_or_default()
    }

    /// Kills the server (SIGKILL, so it saves nothing on the way out); its data stays on disk
    /// for [`restart`](RedisServer::restart).
    pub fn stop(&mut self) {
        self.child = None;
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Freezes the server (SIGSTOP) now; a thread lets it carry on (SIGCONT) after `how_long`.
    pub fn stall(&self, how_long: Duration) -> JoinHandle<()> {
        let child = self.child.as_ref().expect("redis-server running");
        child.signal("STOP");
        let pid = child.pid().to_string();
        std::thread::spawn(move || {
            std::thread::sleep(how_long);
            let _ = Command::new("kill").arg("-CONT").arg(&pid).status();
        })
    }

    /// Runs one command over RESP and returns the reply flattened: each bulk string's text
    /// (several lines, as `INFO` gives, stay one value; a nil adds none), each other reply's
    /// line as sent (`+OK`, `:3`, `-ERR …`), the elements of arrays in order. `None` when
    /// Redis does not answer.
    pub fn command(&self, args: &[&str]) -> Option<Vec<String>> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut values = Vec::new();
        read_reply(&mut BufReader::new(stream), &mut values)?;
        Some(values)
    }

    /// A field of `INFO section` as a number, e.g. `used_memory` of `memory`.
    pub fn info_number(&self, section: &str, field: &str) -> Option<u64> {
        let text = self.command(&["INFO", section])?.into_iter().next()?;
        text.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    }
}

/// Reads one reply into `values`, arrays element by element.
fn read_reply(reader: &mut BufReader<TcpStream>, values: &mut Vec<String>) -> Option<()> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|n| *n > 0)?;
    let line = line.trim_end();
    let count = || line[1..].parse::<i64>().ok();
    match line.as_bytes().first() {
        Some(b'*') => {
            for _ in 0..count()?.max(0) {
                read_reply(reader, values)?;
            }
        }
        Some(b'$') => {
            if let Ok(length) = usize::try_from(count()?) {
                let mut text = vec![0u8; length + 2];
                reader.read_exact(&mut text).ok()?;
                text.truncate(length);
                values.push(String::from_utf8_lossy(&text).into_owned());
            }
        }
        _ => values.push(line.to_string()),
    }
    Some(())
}
