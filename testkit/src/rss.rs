//! A process's resident memory as a test bounds it: a baseline once it holds still, then the
//! growth since, in KiB, from /proc/PID/status.

use std::time::Duration;

use crate::procfs::status_kib;

/// Readings this close count as holding still...
const STILL_KIB: u64 = 64;
/// ...taken this far apart...
const STEP: Duration = Duration::from_millis(100);
/// ...for at most this long.
const SETTLE_FOR: Duration = Duration::from_secs(2);

pub struct Rss {
    pid: u32,
    baseline_kib: u64,
}

impl Rss {
    /// Reads the baseline once VmRSS holds still.
    pub async fn baseline(pid: u32) -> Rss {
        Rss {
            pid,
            baseline_kib: settled_kib(pid).await,
        }
    }

    pub fn baseline_kib(&self) -> u64 {
        self.baseline_kib
    }

    /// VmRSS now, once it holds still.
    pub async fn settled_kib(&self) -> u64 {
        settled_kib(self.pid).await
    }

    /// VmRSS now over the baseline, once it holds still.
    pub async fn growth_kib(&self) -> u64 {
        self.settled_kib().await.saturating_sub(self.baseline_kib)
    }

    /// The highest VmRSS so far (VmHWM) over the baseline: transient peaks included.
    pub fn peak_growth_kib(&self) -> u64 {
        status_kib(self.pid, "VmHWM")
            .unwrap_or_else(|| panic!("no VmHWM for pid {}", self.pid))
            .saturating_sub(self.baseline_kib)
    }
}

/// VmRSS of `pid` in KiB; fails the test if the process is gone.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS").unwrap_or_else(|| panic!("no VmRSS for pid {pid}: has it exited?"))
}

/// VmRSS once two readings [`STEP`] apart are within [`STILL_KIB`] (or after [`SETTLE_FOR`]):
/// the larger of the last two.
pub async fn settled_kib(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    let started = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(STEP).await;
        let now = rss_kib(pid);
        if now.abs_diff(last) <= STILL_KIB || started.elapsed() >= SETTLE_FOR {
            return now.max(last);
        }
        last = now;
    }
}
