//! CPU use over a window: chosen processes' time and the machine's, in percent of one core.

use std::time::Instant;

use crate::procfs::{self, MachineTicks};

/// Whose CPU time a window counts.
#[derive(Clone, Copy, Debug)]
pub enum Whose {
    Pid(u32),
    /// This process.
    Me,
    /// This process and the children it has waited for.
    MeAndReaped,
}

impl Whose {
    fn ticks(self) -> u64 {
        match self {
            Whose::Pid(pid) => procfs::cpu_ticks(pid),
            Whose::Me => procfs::cpu_ticks("self"),
            Whose::MeAndReaped => procfs::cpu_ticks_with_children("self"),
        }
    }
}

/// Readings at the start of a window; [`finish`](CpuWindow::finish) reads again.
pub struct CpuWindow {
    whose: Vec<Whose>,
    before: Vec<u64>,
    machine: MachineTicks,
    started: Instant,
}

/// What a window measured.
#[derive(Clone, Debug, Default)]
pub struct CpuUse {
    /// The window's length.
    pub secs: f64,
    /// Percent of one core for each of `whose`, in order.
    pub processes: Vec<f64>,
    /// Machine-wide busy time, of at most 100 % per core.
    pub machine: f64,
    /// Machine-wide irq + softirq. With tick-based accounting it is also charged to whichever
    /// process it interrupted.
    pub irq: f64,
}

impl CpuWindow {
    pub fn start(whose: &[Whose]) -> CpuWindow {
        CpuWindow {
            whose: whose.to_vec(),
            before: whose.iter().map(|w| w.ticks()).collect(),
            machine: procfs::machine_ticks(),
            started: Instant::now(),
        }
    }

    pub fn finish(&self) -> CpuUse {
        let secs = self.started.elapsed().as_secs_f64();
        let tick = procfs::clock_ticks_per_second();
        let percent = |ticks: u64| ticks as f64 / tick / secs * 100.0;
        let processes = self
            .whose
            .iter()
            .zip(&self.before)
            .map(|(w, before)| percent(w.ticks().saturating_sub(*before)))
            .collect();
        let machine = procfs::machine_ticks();
        CpuUse {
            secs,
            processes,
            machine: percent(machine.busy - self.machine.busy),
            irq: percent(machine.irq - self.machine.irq),
        }
    }
}
