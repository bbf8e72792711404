//! One cold start: spawn, poll `/readyz` on a fresh connection until it answers 200, kill.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::free_port;
use testkit::process::Listening;

/// One spawn → 200, then kill by PID and reap. Returns the time and roomcast's `startup_us`.
pub fn one_run(
    bin: &Path,
    env: &[(String, String)],
    poll: Duration,
    limit: Duration,
) -> Result<(Duration, Option<u64>), String> {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut command = Command::new(bin);
    command
        .env_clear()
        .env("ROOMCAST_ADDR", addr.to_string())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|error| format!("cannot spawn {}: {error}", bin.display()))?;
    let result = poll_ready(addr, &mut child, start, poll, limit);
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut log);
    }
    let elapsed = result.map_err(|error| format!("{error}; stderr: {log:?}"))?;
    let reported = log
        .lines()
        .find_map(Listening::parse)
        .map(|listening| listening.startup_us);
    Ok((elapsed, reported))
}

fn poll_ready(
    addr: SocketAddr,
    child: &mut Child,
    start: Instant,
    poll: Duration,
    limit: Duration,
) -> Result<Duration, String> {
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut attempts = 0u32;
    let mut last;
    loop {
        attempts += 1;
        match TcpStream::connect(addr) {
            Ok(mut stream) => match ask(&mut stream, request.as_bytes(), start) {
                Ok((200, at)) => return Ok(at),
                Ok((status, _)) => last = format!("status {status}"),
                Err(error) => last = error,
            },
            Err(error) => last = error.to_string(),
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status} before answering 200"));
        }
        if start.elapsed() > limit {
            return Err(format!(
                "no 200 within {} ms after {attempts} polls (last: {last})",
                limit.as_millis()
            ));
        }
        std::thread::sleep(poll);
    }
}

/// Sends the request and reads the head (and body, so the close is a clean FIN).
/// Returns the status and the time from `start` at which the head arrived.
fn ask(stream: &mut TcpStream, request: &[u8], start: Instant) -> Result<(u16, Duration), String> {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    stream.write_all(request).map_err(|e| e.to_string())?;
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a response".into());
        }
        buffer.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let at = start.elapsed();
                let status = response.code.unwrap_or(0);
                let body_len = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0usize);
                while buffer.len() < head_len + body_len {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
                return Ok((status, at));
            }
            Ok(httparse::Status::Partial) => continue,
            Err(error) => return Err(format!("bad response: {error}")),
        }
    }
}
