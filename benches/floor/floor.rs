//! The cold-start floor: the least a static program can do to answer the readiness poll.
//!
//! Binds `ROOMCAST_ADDR`, answers one HTTP request with 200, waits for the client to close,
//! exits. Not a cargo target: `benches/coldstart.rs` compiles it at run time with
//! `rustc -C opt-level=3 --target x86_64-unknown-linux-musl -C target-feature=+crt-static`
//! so that it is a static musl binary like the release `roomcast`, std and all.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::ExitCode;

fn main() -> ExitCode {
    let addr = std::env::var("ROOMCAST_ADDR").unwrap_or_else(|_| "127.0.0.1:8000".into());
    let listener = match TcpListener::bind(&addr) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("floor: cannot listen on {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let Ok((mut stream, _)) = listener.accept() else {
        return ExitCode::FAILURE;
    };
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return ExitCode::FAILURE,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"ready\":true}";
    if stream.write_all(response).is_err() {
        return ExitCode::FAILURE;
    }
    // Let the client close first, so the TIME_WAIT lands on its side and not on this port.
    let _ = stream.read(&mut chunk);
    ExitCode::SUCCESS
}
