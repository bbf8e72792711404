//! The machine a benchmark runs on: cores, commands, the fd limit, CPU pinning.

use std::process::{Command, Stdio};

use super::fail;
use crate::procfs;

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn has_command(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Raises this process's soft fd limit to at least `need` (children inherit it), with
/// `prlimit` from util-linux since the benchmarks use no libc. Returns the soft limit now set.
pub fn raise_nofile(need: u64) -> u64 {
    let me = std::process::id();
    // Linux's usual default where /proc cannot tell.
    let limits = || procfs::nofile_limits(me).unwrap_or((1024, 1024));
    let (soft, hard) = limits();
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
        .args(["--pid", &me.to_string(), &format!("--nofile={hard}:")])
        .status();
    let (now, _) = limits();
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
