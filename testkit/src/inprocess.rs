//! roomcast's own `run` on a thread of this process, for tests that need no process boundary.
//!
//! It binds 127.0.0.1:0 and runs `roomcast::run(listener, config, shutdown)` on a runtime of
//! its own, so the server shares nothing with the test's runtime; clients still go through
//! real sockets. Signals, exit codes and log lines need the binary: see `process`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use roomcast::config::Config;
use tokio::sync::oneshot;

use crate::endpoint::Endpoint;

/// Under the caller's `env`: the process tests' quiet defaults.
const TEST_DEFAULTS: [(&str, &str); 3] = [
    ("ROOMCAST_SHUTDOWN_DELAY_MS", "0"),
    ("ROOMCAST_WORKERS", "2"),
    // Log lines go straight to this process's stderr, past the test harness's capture, and
    // the level is process-wide: errors only.
    ("ROOMCAST_LOG", "error"),
];

/// A server running in this process; dropping it shuts it down and waits for it.
pub struct InProcess {
    addr: SocketAddr,
    /// Sending (or dropping) it resolves the server's shutdown future.
    trigger: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl InProcess {
    /// Starts a server configured by the test defaults and `env`, as the binary would be by
    /// its environment.
    pub fn start(env: &[(&str, &str)]) -> InProcess {
        let vars: HashMap<String, String> = TEST_DEFAULTS
            .iter()
            .chain(env)
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let config = Config::from_lookup(|name| vars.get(name).cloned())
            .unwrap_or_else(|error| panic!("bad test configuration: {error}"));
        roomcast::log::set_level(config.log_level);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the bound address");
        let (trigger, shutdown) = oneshot::channel::<()>();
        let workers = config.workers.max(1);
        let thread = std::thread::Builder::new()
            .name(format!("roomcast {addr}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    roomcast::run(listener, config, async move {
                        let _ = shutdown.await;
                    })
                    .await
                })
            })
            .expect("spawn the server thread");
        InProcess {
            addr,
            trigger: Some(trigger),
            thread: Some(thread),
        }
    }

    /// Starts the shutdown, as SIGTERM does for the binary.
    pub fn begin_shutdown(&mut self) {
        if let Some(trigger) = self.trigger.take() {
            let _ = trigger.send(());
        }
    }

    /// Shuts down (if not begun) and waits for `run` to return, failing the test after
    /// `limit`; what `run` returned.
    pub fn join(&mut self, limit: Duration) -> io::Result<()> {
        self.begin_shutdown();
        let thread = self
            .thread
            .take()
            .expect("the server was joined once already");
        let started = Instant::now();
        while !thread.is_finished() {
            assert!(
                started.elapsed() < limit,
                "the server at {} still runs {limit:?} after its shutdown began",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        thread.join().expect("the server thread panicked")
    }
}

impl Endpoint for InProcess {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.begin_shutdown();
        // A failing test should report, not wait for a drain; the thread ends with the process.
        if let Some(thread) = self.thread.take()
            && !std::thread::panicking()
        {
            let _ = thread.join();
        }
    }
}
