//! Test harness: the real `roomcast` binary on a free port, and real clients.
#![allow(dead_code)]

pub mod redis;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single expectation may wait before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running `roomcast serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the binary on 127.0.0.1 port 0 with `env` on top of quiet test defaults.
    pub fn start(env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_roomcast"));
        command
            .env_clear()
            .env("ROOMCAST_ADDR", "127.0.0.1:0")
            .env("ROOMCAST_SHUTDOWN_DELAY_MS", "0")
            .env("ROOMCAST_WORKERS", "2")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start roomcast");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_sender, addr_receiver) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let log_copy = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(entry) = serde_json::from_str::<Value>(&line)
                    && entry["msg"] == "listening"
                {
                    let _ = addr_sender.send(
                        entry["addr"]
                            .as_str()
                            .unwrap()
                            .parse::<SocketAddr>()
                            .unwrap(),
                    );
                }
                log_copy.lock().unwrap().push(line);
            }
        });
        let addr = match addr_receiver.recv_timeout(WAIT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("roomcast did not start: {:?}", logs.lock().unwrap());
            }
        };
        Server { child, addr, logs }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, failing the test after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "roomcast still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// One sample from `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let response = http_get(self.addr, "/metrics").await;
        response
            .lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .unwrap_or_else(|| panic!("no {name} in {response}"))
            .parse()
            .unwrap()
    }

    /// Polls a metric until it equals `value`.
    pub async fn wait_metric(&self, name: &str, value: u64) {
        let started = Instant::now();
        loop {
            let current = self.metric(name).await;
            if current == value {
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "{name} stayed {current}, expected {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes and returns everything the server writes until it closes (or `WAIT`).
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

/// A chat client; `extended` offers the `roomcast.v1` subprotocol.
pub async fn connect(url: &str, extended: bool) -> Ws {
    let mut request = url.into_client_request().unwrap();
    if extended {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "roomcast.v1".parse().unwrap());
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    ws
}

pub async fn send_chat(ws: &mut Ws, message: &str) {
    let frame = serde_json::json!({ "message": message }).to_string();
    ws.send(Message::text(frame)).await.unwrap();
}

/// The next text frame as JSON; fails on anything else.
pub async fn recv_json(ws: &mut Ws) -> Value {
    match next_message(ws).await {
        Some(Ok(Message::Text(text))) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The next message that is not a ping or pong.
pub async fn next_message(ws: &mut Ws) -> Option<Result<Message, WsError>> {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("no message in time")
}

/// Reads until the close frame and returns its code and reason.
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match next_message(ws).await {
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return (code.into(), reason.to_string());
            }
            Some(Ok(Message::Text(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// The chat messages in `frames` as (message, seq).
pub fn chat(frame: &Value) -> (String, u64) {
    assert!(frame.get("type").is_none(), "not a chat frame: {frame}");
    (
        frame["message"].as_str().unwrap().to_string(),
        frame["seq"].as_u64().unwrap(),
    )
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `name` found on PATH (or `name` itself if it is a path to a file).
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    if name.contains('/') {
        let path = std::path::PathBuf::from(name);
        return path.is_file().then_some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// For a test that cannot run here: prints why and returns, so the caller can skip; when the
/// `CI` environment variable is set, fails the test instead.
pub fn skip_unless_ci(reason: &str) {
    if std::env::var_os("CI").is_some_and(|value| !value.is_empty()) {
        panic!("{reason} (CI is set, so this fails instead of skipping)");
    }
    eprintln!("SKIPPED: {reason}");
}

/// Runs the binary to its exit with only `env` set, failing the test if it is still running
/// after `WAIT`; returns its output and how long it ran.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start roomcast");
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > WAIT {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "roomcast {args:?} still running after {WAIT:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed();
    (child.wait_with_output().unwrap(), elapsed)
}
