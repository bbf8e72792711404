//! The scenario script as a child process: finding Chromium, chromedriver and a Python with
//! selenium; the line protocol between the script and this test; stopping the script and the
//! browsers it started.
//!
//! The protocol: the script writes one JSON line per request on its stdout,
//! `{"ask": "stop", "args": {"node": "a"}}`, and reads one JSON line back on its stdin, the
//! answer or `{"error": "…"}`; its last line is `{"done": {<measurements>}}`. Its stderr is kept
//! and shown when it fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{paths, tools};

use crate::servers::Stack;

/// One scenario at a time: two Chromiums already fill this machine's two cores, and scenarios
/// side by side would measure each other.
static TURN: Mutex<()> = Mutex::new(());

/// How long one scenario may take, browsers' start included.
const SCENARIO_LIMIT: Duration = Duration::from_secs(120);
/// How long the script has to close its browsers once told to stop.
const QUIT_GRACE: Duration = Duration::from_secs(15);

const INSTALL_CHROMIUM: &str = "apt-get install -y chromium chromium-driver";
const INSTALL_PYTHON: &str =
    "python3 -m venv target/py-venv && target/py-venv/bin/pip install -r .ci/requirements.txt";

/// What a browser scenario needs, found; holding it is this test's turn.
pub struct Browser {
    python: PathBuf,
    chromium: PathBuf,
    chromedriver: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

impl Browser {
    /// Waits for this test's turn and finds the tools; `None` (after the skip-or-fail rule)
    /// when one is missing.
    pub fn prepare() -> Option<Browser> {
        let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let chromium = tools::require_program(&["chromium", "chromium-browser"], INSTALL_CHROMIUM)?;
        let chromedriver = tools::require_program(
            &["chromedriver", "/usr/lib/chromium/chromedriver"],
            INSTALL_CHROMIUM,
        )?;
        let python = python_with_selenium()?;
        Some(Browser {
            python,
            chromium,
            chromedriver,
            _turn: turn,
        })
    }

    /// Runs `scenario` of `scenarios.py` against `stack`, carrying out its requests; its
    /// measurements. Fails the test with the script's output if the scenario fails.
    pub fn run(&self, scenario: &str, stack: &mut Stack) -> Value {
        let shots = paths::target_dir().join("screenshots");
        std::fs::create_dir_all(&shots)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", shots.display()));
        let mut setup = stack.setup();
        setup["screenshots"] = Value::from(shots.display().to_string());
        let mut script = Script::spawn(self, scenario, &setup);
        let deadline = Instant::now() + SCENARIO_LIMIT;
        while let Some(line) = script.next_line(deadline) {
            let Ok(message) = serde_json::from_str::<Value>(&line) else {
                script.fail(&format!("a line that is not JSON on its stdout: {line:?}"));
            };
            if let Some(done) = message.get("done") {
                script.finish();
                eprintln!("browser {scenario}: {done}");
                return done.clone();
            }
            let ask = message["ask"].as_str().unwrap_or_default();
            let answer = catch_unwind(AssertUnwindSafe(|| stack.command(ask, &message["args"])));
            let reply = match answer {
                Ok(Ok(reply)) => reply,
                Ok(Err(error)) => json!({ "error": error }),
                Err(panic) => json!({ "error": panic_text(&panic) }),
            };
            script.reply(&reply);
        }
        script.fail("it ended without reporting its measurements")
    }
}

/// `ROOMCAST_PYTHON`, else the venv `.ci/run` builds, if it imports selenium and PyJWT.
fn python_with_selenium() -> Option<PathBuf> {
    let python = match std::env::var("ROOMCAST_PYTHON") {
        Ok(path) if !path.trim().is_empty() => PathBuf::from(path),
        _ => paths::workspace_root().join("target/py-venv/bin/python"),
    };
    let imports = Command::new(&python)
        .args(["-c", "import selenium, jwt"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !imports {
        tools::skip_or_fail(&format!(
            "no Python with selenium and PyJWT at {} (set ROOMCAST_PYTHON, or: {INSTALL_PYTHON})",
            python.display()
        ));
        return None;
    }
    Some(python)
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
        .unwrap_or_else(|| "a panic".to_string())
}

/// The running script, in a process group of its own with the chromedriver and Chromium
/// processes it starts, so that whatever it leaves behind is stopped by that group's id.
struct Script {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Script {
    fn spawn(browser: &Browser, scenario: &str, setup: &Value) -> Script {
        let path = paths::workspace_root().join("tests/browser/scenarios.py");
        let mut child = Command::new(&browser.python)
            .arg(&path)
            .arg(scenario)
            .arg(setup.to_string())
            .env("ROOMCAST_CHROMIUM", &browser.chromium)
            .env("ROOMCAST_CHROMEDRIVER", &browser.chromedriver)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", browser.python.display()));
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        keep_lines(
            child.stderr.take().expect("piped stderr"),
            Arc::clone(&stderr),
        );
        Script {
            name: scenario.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    /// The next line on its stdout; `None` when it closed it.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                self.fail(&format!("still running after {SCENARIO_LIMIT:?}"))
            }
        }
    }

    fn reply(&mut self, reply: &Value) {
        let stdin = self
            .stdin
            .as_mut()
            .expect("stdin open while the script runs");
        // A script that died meanwhile shows up as the end of its stdout.
        let _ = writeln!(stdin, "{reply}").and_then(|()| stdin.flush());
    }

    /// Waits for its exit after `done`, which must be a clean one.
    fn finish(&mut self) {
        self.stdin = None;
        if !self.wait_exit(QUIT_GRACE) {
            self.fail("it did not exit after reporting");
        }
        // Anything its browsers left behind.
        signal("-KILL", &format!("-{}", self.child.id()));
        match self.child.wait() {
            Ok(status) if status.success() => {}
            status => self.fail(&format!("it exited with {status:?} after reporting")),
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        self.stop();
        let status = self.child.wait().ok();
        let stderr = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        let start = stderr.len().saturating_sub(120);
        panic!(
            "browser scenario {:?} failed: {why} (exit status {status:?}); its output:\n{}",
            self.name,
            stderr[start..].join("\n")
        );
    }

    /// SIGTERM (the script quits its browsers), then SIGKILL to whatever of its group is
    /// left. It is not reaped here: until it is, its id cannot name anyone else's group.
    fn stop(&mut self) {
        self.stdin = None;
        let pid = self.child.id();
        if !exited(pid) {
            signal("-TERM", &pid.to_string());
            self.wait_exit(QUIT_GRACE);
        }
        signal("-KILL", &format!("-{pid}"));
    }

    /// Whether it exited (without reaping it) within `limit`.
    fn wait_exit(&self, limit: Duration) -> bool {
        let started = Instant::now();
        while !exited(self.child.id()) {
            if started.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
            let _ = self.child.wait();
        }
    }
}

/// Whether `pid` has exited: gone, or a zombie waiting to be reaped.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// `kill <signal> -- <target>`; a target already gone is no error.
fn signal(signal: &str, target: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", target])
        .stderr(Stdio::null())
        .status();
}

fn keep_lines(stream: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut lines = into.lock().unwrap_or_else(|e| e.into_inner());
            if lines.len() < 10_000 {
                lines.push(line);
            }
        }
    });
}
