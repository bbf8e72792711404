//! Readings from /proc: a process's memory, CPU time and limits; the machine's CPU time.
//!
//! A `pid` is anything that names a /proc entry: a number, or `self`.

use std::fmt::Display;
use std::process::Command;

/// A field of /proc/PID/status in KiB (`VmRSS`, `RssAnon`, `VmHWM`, ...).
pub fn status_kib(pid: impl Display, field: &str) -> Option<u64> {
    status_field(pid, field)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The text after `field:` in /proc/PID/status, e.g. `Uid`.
pub fn status_field(pid: impl Display, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(|rest| rest.trim().to_string())
}

/// (soft, hard) `RLIMIT_NOFILE`, from /proc/PID/limits.
pub fn nofile_limits(pid: impl Display) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    match numbers[..] {
        [soft, hard, ..] => Some((soft, hard)),
        _ => None,
    }
}

/// The first process whose command name is `comm`.
pub fn pid_of(comm: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .find(|entry| {
            std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == comm)
        })?
        .file_name()
        .to_str()?
        .parse()
        .ok()
}

/// Fields 14 onwards of /proc/PID/stat: utime, stime, cutime, cstime, in clock ticks.
fn stat_times(pid: impl Display) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|field| field.parse().unwrap_or(0))
        .collect()
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: impl Display) -> u64 {
    stat_times(pid).iter().take(2).sum()
}

/// utime + stime of a process and of the children it has waited for, in clock ticks.
pub fn cpu_ticks_with_children(pid: impl Display) -> u64 {
    stat_times(pid).iter().sum()
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

/// Clock ticks per second (`getconf CLK_TCK`), the unit of every tick count here.
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The 1-minute load average, as a hint of what else the machine was doing.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_default()
}

/// The CPU's model name from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_default()
}
