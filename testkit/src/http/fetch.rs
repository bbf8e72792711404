//! One request per connection: write it, read until the server closes, parse. Async for
//! tests, blocking for benchmarks and for code that must not need a runtime.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Response;
use crate::wait::WAIT;

/// Blocking: how long to wait for the connection, and then for each read.
const BLOCKING_CONNECT: Duration = Duration::from_secs(2);
const BLOCKING_READ: Duration = Duration::from_secs(5);

/// `GET path` with `Connection: close`.
pub fn get_request(addr: SocketAddr, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
}

/// Sends `request` and parses what comes back until the server closes (or [`WAIT`] passes).
pub async fn try_exchange(addr: SocketAddr, request: &[u8]) -> io::Result<Response> {
    let mut stream = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.write_all(request).await?;
    let mut bytes = Vec::new();
    // A server that never closes fails the parse below, or the caller's assertion.
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut bytes)).await;
    Response::parse(&bytes)
}

/// [`try_exchange`], failing the test on an error.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Response {
    try_exchange(addr, request)
        .await
        .unwrap_or_else(|error| panic!("{addr}: {error}"))
}

pub async fn try_get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    try_exchange(addr, get_request(addr, path).as_bytes()).await
}

/// `GET path`, failing the test on an error.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    try_get(addr, path)
        .await
        .unwrap_or_else(|error| panic!("GET {path} from {addr}: {error}"))
}

/// `GET path` over std's blocking TcpStream.
pub fn get_blocking(addr: SocketAddr, path: &str) -> io::Result<Response> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, BLOCKING_CONNECT)?;
    stream.set_read_timeout(Some(BLOCKING_READ))?;
    stream.write_all(get_request(addr, path).as_bytes())?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    Response::parse(&bytes)
}
