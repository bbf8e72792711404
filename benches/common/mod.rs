//! What the three benchmark programs share: arguments, the release binary, starting and
//! stopping `roomcast`, `/proc` readings, small HTTP requests over std, statistics, tables.
//!
//! Benchmarks only ever talk to 127.0.0.1 and only stop processes they started, by PID.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DEFAULT_BIN: &str = "target/x86_64-unknown-linux-musl/release/roomcast";
pub const BUILD_COMMAND: &str = "cargo build --release --locked --target x86_64-unknown-linux-musl";

/// Exits the benchmark with a message (status 2): setup problems, not measurements.
pub fn fail(message: impl AsRef<str>) -> ! {
    eprintln!("error: {}", message.as_ref());
    std::process::exit(2);
}

// ------------------------------------------------------------------ arguments

/// `--name value` options and `--flag` switches. Cargo adds `--bench` when it runs a
/// `harness = false` target; it is accepted and ignored.
pub struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    pub fn parse(valued: &[&str], switches: &[&str], usage: &str) -> Args {
        let mut values = HashMap::new();
        let mut flags = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let name = arg.as_str();
            if name == "--bench" {
                continue;
            }
            if name == "-h" || name == "--help" {
                println!("{usage}");
                std::process::exit(0);
            }
            let (key, inline) = match name.split_once('=') {
                Some((key, value)) => (key, Some(value.to_string())),
                None => (name, None),
            };
            let key = key.trim_start_matches("--");
            if valued.contains(&key) {
                let value = inline.or_else(|| args.next()).unwrap_or_else(|| {
                    eprintln!("--{key} needs a value\n\n{usage}");
                    std::process::exit(2)
                });
                values.insert(key.to_string(), value);
            } else if switches.contains(&key) && inline.is_none() {
                flags.push(key.to_string());
            } else {
                eprintln!("unknown argument {arg:?}\n\n{usage}");
                std::process::exit(2);
            }
        }
        Args { values, flags }
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|flag| flag == name)
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn get<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.text(name).map(|value| {
            value
                .parse()
                .unwrap_or_else(|_| fail(format!("--{name}: cannot read {value:?}")))
        })
    }

    pub fn or<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        self.get(name).unwrap_or(default)
    }
}

// ------------------------------------------------------------------ the binary

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `ROOMCAST_BIN`, or the static release build; relative paths are from the crate root.
pub fn roomcast_bin() -> PathBuf {
    let (path, from_env) = match std::env::var("ROOMCAST_BIN") {
        Ok(path) if !path.trim().is_empty() => (PathBuf::from(path), true),
        _ => (PathBuf::from(DEFAULT_BIN), false),
    };
    let path = if path.is_relative() {
        manifest_dir().join(path)
    } else {
        path
    };
    if !path.is_file() {
        let origin = if from_env {
            "ROOMCAST_BIN points to"
        } else {
            "no release binary at"
        };
        fail(format!(
            "{origin} {}\n  build it first:  {BUILD_COMMAND}\n  (or set ROOMCAST_BIN to a roomcast binary)",
            path.display()
        ));
    }
    path
}

pub fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The first line of `file PATH`, or an empty string where `file` is missing.
pub fn describe_file(path: &Path) -> String {
    Command::new("file")
        .arg("-b")
        .arg(path)
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default()
}

// ------------------------------------------------------------------ the machine

pub fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn has_command(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Date, cores, CPU model and kernel, printed at the top of every report.
pub fn print_machine(title: &str) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    let date = command_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]).unwrap_or_default();
    println!("== {title} ==");
    println!(
        "machine: {} cores ({cpu}), Linux {kernel}, {date}, load average {}",
        cores(),
        load_average()
    );
}

pub fn print_binary(bin: &Path) {
    println!("binary:  {} ({} bytes)", bin.display(), file_size(bin));
    let kind = describe_file(bin);
    if !kind.is_empty() {
        println!("         {kind}");
    }
}

// ------------------------------------------------------------------ limits, CPUs, /proc

/// (soft, hard) RLIMIT_NOFILE of a process, from /proc/PID/limits.
pub fn nofile_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap_or("");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    match numbers[..] {
        [soft, hard, ..] => (soft, hard),
        _ => (1024, 1024),
    }
}

/// Raises this process's soft fd limit to at least `need` (children inherit it), with
/// `prlimit` from util-linux since the bench uses no libc. Returns the soft limit now set.
pub fn raise_nofile(need: u64) -> u64 {
    let me = std::process::id().to_string();
    let (soft, hard) = nofile_limits(&me);
    if soft >= need {
        return soft;
    }
    if hard < need {
        fail(format!(
            "need {need} file descriptors but the hard limit is {hard} (ulimit -Hn); \
             raise it (e.g. prlimit --nofile={need}:{need} or docker --ulimit nofile={need}) \
             or ask for fewer connections"
        ));
    }
    let status = Command::new("prlimit")
        .args(["--pid", &me, &format!("--nofile={hard}:")])
        .status();
    let (now, _) = nofile_limits(&me);
    if !status.is_ok_and(|s| s.success()) || now < need {
        fail(format!(
            "could not raise the fd limit from {soft} to {need} with prlimit; run `ulimit -n {hard}` first"
        ));
    }
    now
}

/// Pins every thread of this process (and what it spawns later) to `cpu` with `taskset`.
pub fn pin_self(cpu: usize) -> bool {
    Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// VmRSS (and the rest of /proc/PID/status) in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// Machine-wide CPU time from the first line of /proc/stat, in clock ticks.
#[derive(Clone, Copy, Default)]
pub struct MachineTicks {
    /// Everything but idle and iowait.
    pub busy: u64,
    /// irq + softirq: on loopback, most of the TCP receive path lands here.
    pub irq: u64,
}

pub fn machine_ticks() -> MachineTicks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    MachineTicks {
        busy: get(0) + get(1) + get(2) + get(5) + get(6) + get(7),
        irq: get(5) + get(6),
    }
}

/// The 1-minute load average, as a hint of what else the machine was doing.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_default()
}

/// utime + stime of a process and of its children that it has waited for, in clock ticks.
pub fn cpu_ticks_with_children(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.iter().sum()
}

pub fn clock_ticks_per_second() -> f64 {
    command_line("getconf", &["CLK_TCK"])
        .and_then(|t| t.parse().ok())
        .unwrap_or(100.0)
}

// ------------------------------------------------------------------ HTTP over std

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|error| fail(format!("cannot find a free port: {error}")))
}

/// One `GET` with `Connection: close`: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// One sample of `/metrics` (the first series named exactly `name`).
pub fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    let (status, body) = http_get(addr, "/metrics").ok()?;
    if status != 200 {
        return None;
    }
    body.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

// ------------------------------------------------------------------ the server

/// How to start one `roomcast`.
pub struct ServerSpec {
    pub bin: PathBuf,
    /// On top of ROOMCAST_ADDR=127.0.0.1:0 and ROOMCAST_LOG=info, in a cleared environment.
    pub env: Vec<(String, String)>,
    /// Pin to this CPU with `taskset -c` (which execs the server: the PID stays the same).
    pub cpu: Option<usize>,
}

/// A running `roomcast`, killed by its PID and reaped when dropped.
pub struct Server {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    /// The `broker` field of the `listening` line.
    pub broker: String,
    pub startup_us: u64,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts it and waits for its `listening` line (at most 10 s).
    pub fn start(spec: &ServerSpec) -> Result<Server, String> {
        let mut command = match spec.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(&spec.bin);
                c
            }
            None => Command::new(&spec.bin),
        };
        command
            .env_clear()
            .env("ROOMCAST_ADDR", "127.0.0.1:0")
            .env("ROOMCAST_LOG", "info")
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", spec.bin.display()))?;
        let pid = child.id();
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (sender, receiver) = mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(entry) = serde_json::from_str::<Value>(&line)
                    && entry["msg"] == "listening"
                {
                    let _ = sender.send(entry);
                    continue;
                }
                let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                if lines.len() < 200 {
                    lines.push(line);
                }
            }
        });
        let mut server = Server {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            broker: String::new(),
            startup_us: 0,
            log,
        };
        let entry = match receiver.recv_timeout(Duration::from_secs(10)) {
            Ok(entry) => entry,
            Err(_) => {
                let exited = server.child.try_wait().ok().flatten();
                // The reader thread may still be copying the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Err(format!(
                    "roomcast did not log `listening` within 10 s (exit status {exited:?}); stderr: {:?}",
                    server.log_lines()
                ));
            }
        };
        server.addr = entry["addr"]
            .as_str()
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| format!("no address in the listening line {entry}"))?;
        server.broker = entry["broker"].as_str().unwrap_or("?").to_string();
        server.startup_us = entry["startup_us"].as_u64().unwrap_or(0);
        Ok(server)
    }

    /// Lines it wrote to stderr besides `listening` (warnings, errors).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn rss_kib(&self) -> u64 {
        status_kib(self.pid, "VmRSS").unwrap_or(0)
    }

    pub fn metric(&self, name: &str) -> Option<u64> {
        metric(self.addr, name)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ statistics

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A log-linear histogram of non-negative integers (here microseconds): exact below 128,
/// then 64 buckets per power of two (under 1.6 % error). Cheap to record and to merge.
#[derive(Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    pub total: u64,
    pub max: u64,
}

impl Histogram {
    fn index(value: u64) -> usize {
        if value < 128 {
            return value as usize;
        }
        let exponent = 63 - value.leading_zeros();
        let sub = (value >> (exponent - 6)) as usize & 63;
        128 + (exponent as usize - 7) * 64 + sub
    }

    fn lower_bound(index: usize) -> u64 {
        if index < 128 {
            return index as u64;
        }
        let k = index - 128;
        (64 + (k % 64) as u64) << (k / 64 + 1)
    }

    pub fn record(&mut self, value: u64) {
        let index = Self::index(value);
        if index >= self.counts.len() {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The upper edge of the bucket holding the p-th percentile (never above the max).
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = (((p / 100.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return (Self::lower_bound(index + 1) - 1).min(self.max);
            }
        }
        self.max
    }
}

// ------------------------------------------------------------------ output

/// Prints rows as a table: the first column left-aligned, the others right-aligned.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    print_table_with(header, rows, 1);
}

/// Prints rows as a table: the first `left` columns left-aligned, the others right-aligned.
pub fn print_table_with(header: &[&str], rows: &[Vec<String>], left: usize) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i < left {
                out.push_str(&format!("| {cell:<w$} ", w = widths[i]));
            } else {
                out.push_str(&format!("| {cell:>w$} ", w = widths[i]));
            }
        }
        out.push('|');
        out
    };
    println!("{}", line(header.to_vec()));
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i < left {
                format!(":{}", "-".repeat(*w + 1))
            } else {
                format!("{}:", "-".repeat(*w + 1))
            }
        })
        .collect();
    println!("|{}|", rule.join("|"));
    for row in rows {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
}

pub fn ms(seconds: f64) -> String {
    format!("{:.3}", seconds * 1000.0)
}

/// Thousands separators, for counts.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|group| std::str::from_utf8(group).unwrap_or("?"))
        .collect();
    groups.join(",")
}

pub fn elapsed_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}
