//! Hostile clients: the publish [rate] limit, a [fairness] run with a flooder in its own
//! process (embedded and Redis brokers), per-address caps and trusted proxies
//! ([addresses], [haproxy]), strict [handshakes] and origins, malformed heads and frames
//! ([bad_input], [gate]), the metrics [listener], the [page]'s headers, and [logs] that stay
//! bounded while Redis refuses writes.
//!
//! Clients that must count as different people connect from different loopback addresses
//! (127.0.0.0/8 all reaches the server), since the per-address limits are the point here.

mod addresses;
mod bad_input;
mod fairness;
mod gate;
mod handshakes;
mod haproxy;
mod listener;
mod logs;
mod page;
mod rate;

use std::net::{IpAddr, SocketAddr};

use testkit::WAIT;
use testkit::http::Response;
use testkit::ws::{EXTENDED, Ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The fairness runs measure latency: they run alone, every other test of this binary
/// shares the machine with the rest.
static MACHINE: RwLock<()> = RwLock::const_new(());

async fn shared_machine() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().await
}

async fn whole_machine() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().await
}

/// The RFC 6455 sample key.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A loopback address of its own for one simulated client: `127.a.b.c`.
fn loopback(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::from([127, a, b, c])
}

/// A TCP connection to `server` from `source`.
async fn connect_from(source: IpAddr, server: SocketAddr) -> TcpStream {
    let attempt = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        socket.connect(server).await
    };
    let stream = tokio::time::timeout(WAIT, attempt)
        .await
        .unwrap_or_else(|_| panic!("connect {source} → {server} timed out"))
        .unwrap_or_else(|error| panic!("connect {source} → {server}: {error}"));
    let _ = stream.set_nodelay(true);
    stream
}

/// A chat client connected from `source`; the handshake's error as text.
async fn try_ws_from(
    source: IpAddr,
    server: SocketAddr,
    path: &str,
    extended: bool,
) -> Result<Ws, String> {
    let stream = connect_from(source, server).await;
    let mut request = format!("ws://{server}{path}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if extended {
        request
            .headers_mut()
            .insert(EXTENDED.0, HeaderValue::from_static(EXTENDED.1));
    }
    let handshake = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream));
    match tokio::time::timeout(WAIT, handshake).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// [`try_ws_from`], failing the test if it cannot connect.
async fn ws_from(source: IpAddr, server: SocketAddr, path: &str, extended: bool) -> Ws {
    try_ws_from(source, server, path, extended)
        .await
        .unwrap_or_else(|error| panic!("{path} from {source}: {error}"))
}

/// Sends `request` from `source` and parses what comes back until the server closes.
async fn exchange_from(source: IpAddr, server: SocketAddr, request: &[u8]) -> Response {
    let mut stream = connect_from(source, server).await;
    stream.write_all(request).await.expect("write the request");
    read_to_close(&mut stream).await
}

/// Everything until the server closes (or a reset), parsed as one response.
async fn read_to_close(stream: &mut TcpStream) -> Response {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read_all)
        .await
        .expect("the server did not close within WAIT");
    Response::parse(&bytes).unwrap_or_else(|error| panic!("{error}"))
}

/// A WebSocket upgrade request for `path` with `headers` (each line ending in CRLF).
fn upgrade_request(path: &str, headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\n{headers}\r\n"
    )
}

/// `upgrade_request` with one `Host` and the sample key: what a well-behaved client sends.
fn good_upgrade(path: &str, extra: &str) -> String {
    upgrade_request(
        path,
        &format!("Host: test\r\nSec-WebSocket-Key: {WS_KEY}\r\n{extra}"),
    )
}

/// Reads a response head (through the blank line) and returns it with what followed it.
async fn read_head(stream: &mut TcpStream) -> (Response, Vec<u8>) {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = bytes.split_off(end + 4);
            let head = String::from_utf8_lossy(&bytes).into_owned();
            return (Response::from_head(head).expect("a status line"), rest);
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("no response head within WAIT")
            .expect("read the response head");
        assert!(n > 0, "closed before a response head: {bytes:?}");
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// Percentiles of round-trip times in microseconds.
fn percentile(sorted_us: &[u64], fraction: f64) -> u64 {
    let rank = ((sorted_us.len() as f64 * fraction).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1]
}
