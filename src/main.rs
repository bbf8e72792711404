//! The `roomcast` command: `serve` (the default), `probe`, `--help`, `--version`.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::sync::oneshot;

use roomcast::config::{Config, ENV_ADDR};
use roomcast::{log, nofile, probe};

/// Bad configuration or usage, as in sysexits.h.
const EXIT_USAGE: u8 = 64;

const HELP: &str = "\
roomcast: WebSocket chat rooms over one port, with /healthz, /readyz and /metrics

usage:
  roomcast [serve]        run the server (configured by ROOMCAST_* environment variables)
  roomcast probe [URL]    GET URL (default http://127.0.0.1:<port of ROOMCAST_ADDR>/readyz);
                          exit 0 on 200, 1 otherwise, within 1 s
  roomcast --help | --version

The README lists every variable and its default.";

fn main() -> ExitCode {
    roomcast::process_start();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] | ["serve"] => serve(),
        ["probe"] => run_probe(None),
        ["probe", url] => run_probe(Some(url)),
        ["-h" | "--help" | "help"] => {
            println!("{HELP}");
            ExitCode::SUCCESS
        }
        ["-V" | "--version"] => {
            println!("roomcast {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("roomcast: unknown arguments {args:?}; see roomcast --help");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn serve() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("roomcast: bad configuration: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    log::set_level(config.log_level);
    let nofile = nofile::raise();
    let fitted = nofile::fit(config.max_connections, nofile);
    if fitted < config.max_connections {
        log::warn(
            "connection cap lowered to fit the open-file limit",
            json!({
                "configured": config.max_connections,
                "cap": fitted,
                "nofile": nofile,
                "reserve": nofile::RESERVE,
            }),
        );
    }
    let config = Config {
        max_connections: fitted,
        ..config
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if config.workers > 0 {
        runtime.worker_threads(config.workers);
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            log::error(
                "cannot start the runtime",
                json!({ "error": error.to_string() }),
            );
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|error| format!("cannot listen on {}: {error}", config.addr))?;
        let signals = Signals::new([SIGTERM, SIGINT])
            .map_err(|error| format!("cannot watch signals: {error}"))?;
        let signals_handle = signals.handle();
        let (first_signal, shutdown) = oneshot::channel();
        let watcher = tokio::spawn(watch_signals(signals, first_signal));
        let served = roomcast::run(listener, config, shutdown)
            .await
            .map_err(|error| error.to_string());
        signals_handle.close();
        let _ = watcher.await;
        served
    });
    // Tasks still running past the drain deadline are dropped here, not awaited.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error("exiting", json!({ "error": error }));
            ExitCode::FAILURE
        }
    }
}

/// The first SIGTERM or SIGINT starts the drain; a second one exits at once.
async fn watch_signals(mut signals: Signals, first_signal: oneshot::Sender<()>) {
    let Some(signal) = signals.next().await else {
        return;
    };
    log::info(
        "signal received, shutting down",
        json!({ "signal": signal }),
    );
    let _ = first_signal.send(());
    if let Some(signal) = signals.next().await {
        log::warn("second signal, exiting now", json!({ "signal": signal }));
        std::process::exit(128 + signal);
    }
}

fn run_probe(url: Option<&str>) -> ExitCode {
    let url = match url {
        Some(url) => url.to_string(),
        None => {
            // Only the port matters here; a bad ROOMCAST_ADDR falls back to the default.
            let listen = std::env::var(ENV_ADDR)
                .ok()
                .and_then(|addr| addr.parse().ok());
            probe::default_url(listen.unwrap_or(Config::default().addr))
        }
    };
    match probe::probe(&url, probe::DEFAULT_TIMEOUT) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("roomcast probe {url}: {error}");
            ExitCode::FAILURE
        }
    }
}
