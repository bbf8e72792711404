//! `roomcast probe`: the tiny blocking HTTP client a container's HEALTHCHECK runs.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// `http://127.0.0.1:PORT/readyz` for the address the server listens on; a wildcard
/// address is probed on loopback.
pub fn default_url(listen: SocketAddr) -> String {
    let host = match listen {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => "127.0.0.1".to_string(),
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => "[::1]".to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    };
    format!("http://{host}:{}/readyz", listen.port())
}

#[derive(Debug)]
pub enum ProbeError {
    BadUrl(String),
    Connect(std::io::Error),
    Io(std::io::Error),
    TimedOut,
    Status(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::BadUrl(url) => write!(f, "expected http://HOST:PORT/PATH, got {url:?}"),
            ProbeError::Connect(error) => write!(f, "cannot connect: {error}"),
            ProbeError::Io(error) => write!(f, "request failed: {error}"),
            ProbeError::TimedOut => f.write_str("timed out"),
            ProbeError::Status(line) => write!(f, "answered {line:?}"),
        }
    }
}

/// GETs `url` and succeeds only on a 200, all within `limit`.
pub fn probe(url: &str, limit: Duration) -> Result<(), ProbeError> {
    let deadline = Instant::now() + limit;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ProbeError::TimedOut)
    };
    let (authority, path) = split_url(url).ok_or_else(|| ProbeError::BadUrl(url.to_string()))?;
    let target = authority
        .to_socket_addrs()
        .map_err(ProbeError::Connect)?
        .next()
        .ok_or_else(|| ProbeError::BadUrl(url.to_string()))?;
    let mut stream = TcpStream::connect_timeout(&target, left()?).map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => ProbeError::TimedOut,
        _ => ProbeError::Connect(e),
    })?;
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => ProbeError::TimedOut,
        _ => ProbeError::Io(e),
    };
    stream.set_write_timeout(Some(left()?)).map_err(io)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut response = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !response.contains(&b'\n') && response.len() < 4096 {
        stream.set_read_timeout(Some(left()?)).map_err(io)?;
        match stream.read(&mut chunk).map_err(io)? {
            0 => break,
            n => response.extend_from_slice(&chunk[..n]),
        }
    }
    let status_line = String::from_utf8_lossy(&response);
    let status_line = status_line.lines().next().unwrap_or("").trim();
    let mut words = status_line.split(' ');
    match (words.next(), words.next()) {
        (Some(version), Some("200")) if version.starts_with("HTTP/1.") => Ok(()),
        _ => Err(ProbeError::Status(status_line.to_string())),
    }
}

/// `http://host:port/path` → ("host:port", "/path").
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    (has_port && !authority.is_empty()).then_some((authority, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_url_probes_loopback_for_wildcards() {
        assert_eq!(
            default_url("0.0.0.0:8000".parse().unwrap()),
            "http://127.0.0.1:8000/readyz"
        );
        assert_eq!(
            default_url("127.0.0.5:81".parse().unwrap()),
            "http://127.0.0.5:81/readyz"
        );
        assert_eq!(
            default_url("[::]:9000".parse().unwrap()),
            "http://[::1]:9000/readyz"
        );
    }

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8000/readyz"),
            Some(("127.0.0.1:8000", "/readyz"))
        );
        assert_eq!(split_url("http://[::1]:80"), Some(("[::1]:80", "/")));
        assert_eq!(split_url("https://x:1/"), None);
        assert_eq!(split_url("http://noport/"), None);
    }
}
