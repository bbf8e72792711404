//! A child process that is killed by its PID when dropped, with its output lines kept.

use std::io::{self, BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Lines kept per child; later ones are dropped, so a chatty child cannot fill memory.
const MAX_LINES: usize = 10_000;

pub struct Child {
    child: std::process::Child,
    output: Arc<Output>,
}

/// What the reader threads share with the owner.
#[derive(Default)]
struct Output {
    state: Mutex<Lines>,
    /// Notified on every line and when a stream ends.
    changed: Condvar,
}

#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    /// stdout and stderr that have reached their end.
    ended: usize,
}

impl Child {
    /// Spawns `command` with stdin closed and stdout and stderr read line by line.
    pub fn spawn(command: &mut Command) -> io::Result<Child> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let output = Arc::new(Output::default());
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("piped stdout")),
            Box::new(child.stderr.take().expect("piped stderr")),
        ];
        for stream in streams {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut state = output.state.lock().unwrap_or_else(|e| e.into_inner());
                    if state.lines.len() < MAX_LINES {
                        state.lines.push(line);
                    }
                    output.changed.notify_all();
                }
                let mut state = output.state.lock().unwrap_or_else(|e| e.into_inner());
                state.ended += 1;
                output.changed.notify_all();
            });
        }
        Ok(Child { child, output })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The lines it wrote so far, stdout and stderr interleaved as they arrived.
    pub fn output(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// Waits at most `limit` for a line that `pick` makes something of; `None` when the time
    /// passes or the child closes its output first.
    pub fn wait_for_line<T>(&self, limit: Duration, pick: impl Fn(&str) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + limit;
        let mut state = self.lock();
        let mut checked = 0;
        loop {
            if let Some(found) = state.lines[checked..].iter().find_map(|line| pick(line)) {
                return Some(found);
            }
            checked = state.lines.len();
            let left = deadline.saturating_duration_since(Instant::now());
            if state.ended == 2 || left.is_zero() {
                return None;
            }
            state = self
                .output
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sends signal `name` (`TERM`, `INT`, `STOP`, `CONT`, ...) to this child's PID.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(&pid)
            .status()
            .unwrap_or_else(|error| panic!("cannot run kill: {error}"));
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the exit, failing the test after `limit`; the status and how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "pid {} still running after {limit:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL to its PID, then reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.output.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}
