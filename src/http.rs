//! The HTTP/1.1 front end: request heads via httparse, routing, fixed responses, upgrade checks.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::protocol::{self, EXTENDED_SUBPROTOCOL};
use crate::shutdown::Shutdown;

/// A request head larger than this is answered 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// More header lines than this are answered 431.
pub const MAX_HEADERS: usize = 32;

const HEALTHZ: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
const READY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 14\r\n\r\n{\"ready\":true}";
const NOT_READY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 15\r\n\r\n{\"ready\":false}";
/// The answer at the connection cap; short enough for one non-blocking write.
pub const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 33\r\n\r\nserver busy: too many connections";

static CHAT_PAGE: &[u8] = include_bytes!("chat.html");

/// What a WebSocket upgrade asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Chat {
        room: String,
        since: Option<u64>,
        epoch: Option<String>,
    },
    Echo,
}

/// A valid upgrade request, handed to a session together with the stream.
#[derive(Debug)]
pub struct Upgrade {
    pub target: Target,
    /// The client offered the `roomcast.v1` subprotocol.
    pub extended: bool,
    pub accept_key: String,
    /// Bytes read past the head: the start of the first frames.
    pub leftover: Vec<u8>,
}

impl Upgrade {
    pub fn response(&self) -> Vec<u8> {
        let protocol = if self.extended {
            format!("Sec-WebSocket-Protocol: {EXTENDED_SUBPROTOCOL}\r\n")
        } else {
            String::new()
        };
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n{protocol}\r\n",
            self.accept_key
        )
        .into_bytes()
    }
}

/// What the front end reads its answers from.
pub struct Endpoints<'a> {
    pub config: &'a Config,
    pub health: &'a Health,
    pub metrics: &'a Metrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    BadRequest,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    UpgradeRequired,
    HeadersTooLarge,
    ServiceUnavailable,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::BadRequest => "400 Bad Request",
            Status::Forbidden => "403 Forbidden",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::RequestTimeout => "408 Request Timeout",
            Status::UpgradeRequired => "426 Upgrade Required",
            Status::HeadersTooLarge => "431 Request Header Fields Too Large",
            Status::ServiceUnavailable => "503 Service Unavailable",
        }
    }

    fn extra_headers(self) -> &'static str {
        match self {
            Status::MethodNotAllowed => "Allow: GET, HEAD\r\n",
            Status::UpgradeRequired => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            Status::ServiceUnavailable => "Retry-After: 1\r\n",
            _ => "",
        }
    }
}

/// A response that closes the connection: the status and a one-line reason.
pub fn error_response(status: Status, reason: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {}\r\n{}Content-Type: text/plain\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{reason}\n",
        status.line(),
        status.extra_headers(),
        reason.len() + 1
    )
    .into_bytes()
}

fn ok_response(content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body);
    }
    response
}

/// The head part of a fixed response, for HEAD requests.
fn head_of(response: &[u8]) -> &[u8] {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |i| i + 4);
    &response[..end]
}

/// Serves plain requests on one connection until it closes, or returns the upgrade it asked for.
pub async fn serve(
    stream: &mut TcpStream,
    endpoints: &Endpoints<'_>,
    shutdown: &mut Shutdown,
) -> Option<Upgrade> {
    let mut buffer = Vec::with_capacity(1024);
    loop {
        let head =
            match read_head(stream, &mut buffer, endpoints.config.head_timeout, shutdown).await {
                Ok(head) => head,
                Err(HeadError::Closed) => return None,
                Err(HeadError::Reject(status, reason)) => {
                    reject(stream, status, reason).await;
                    return None;
                }
            };
        match answer(&head, endpoints) {
            Answer::Respond(bytes, keep_alive) => {
                if stream.write_all(&bytes).await.is_err() || !keep_alive || shutdown.is_signalled()
                {
                    return None;
                }
            }
            Answer::Reject(status, reason) => {
                let response = error_response(status, reason);
                let response = if head.method == "HEAD" {
                    head_of(&response)
                } else {
                    &response
                };
                send_and_close(stream, response).await;
                return None;
            }
            Answer::Upgrade(target, extended, accept_key) => {
                // The WebSocket reuses this allocation as its read buffer: keep only the
                // bytes, so it starts at its own configured size instead.
                buffer.shrink_to_fit();
                return Some(Upgrade {
                    target,
                    extended,
                    accept_key,
                    leftover: buffer,
                });
            }
        }
    }
}

async fn reject(stream: &mut TcpStream, status: Status, reason: &str) {
    send_and_close(stream, &error_response(status, reason)).await;
}

/// Writes `response` and closes politely: FIN first, then discard what the client still
/// sends for a moment, so the close does not turn into a reset that eats the response.
pub async fn send_and_close(stream: &mut TcpStream, response: &[u8]) {
    if stream.write_all(response).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = timeout(Duration::from_millis(500), async {
        let mut discarded = 0;
        while discarded < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

/// A parsed request head, owning what routing needs.
#[derive(Debug, Default)]
struct Head {
    method: String,
    path: String,
    query: String,
    http10: bool,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header holds `token`, case-insensitively.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn keep_alive(&self) -> bool {
        !self.http10 && !self.has_token("connection", "close")
    }
}

#[derive(Debug)]
enum HeadError {
    /// The peer went away, stayed idle between requests, or shutdown started.
    Closed,
    Reject(Status, &'static str),
}

/// Reads one request head into `buffer` under the head deadline; the bytes after it stay there.
async fn read_head(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    head_timeout: Duration,
    shutdown: &mut Shutdown,
) -> Result<Head, HeadError> {
    let deadline = Instant::now() + head_timeout;
    loop {
        if !buffer.is_empty() {
            if let Some((head, length)) = parse_head(buffer)? {
                buffer.drain(..length);
                return Ok(head);
            }
            if buffer.len() >= MAX_HEAD_BYTES {
                return Err(HeadError::Reject(
                    Status::HeadersTooLarge,
                    "request head too large",
                ));
            }
        }
        let start = buffer.len();
        buffer.resize(MAX_HEAD_BYTES.min(start + 2048), 0);
        let read = tokio::select! {
            read = timeout_at(deadline, stream.read(&mut buffer[start..])) => read,
            _ = shutdown.signalled() => Ok(Ok(0)),
        };
        match read {
            Ok(Ok(n)) if n > 0 => buffer.truncate(start + n),
            Ok(_) => return Err(HeadError::Closed),
            // A connection idle between requests just closes; a half-sent head gets 408.
            Err(_) if start == 0 => return Err(HeadError::Closed),
            Err(_) => {
                return Err(HeadError::Reject(
                    Status::RequestTimeout,
                    "request head not received in time",
                ));
            }
        }
    }
}

fn parse_head(buffer: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Reject(
                Status::HeadersTooLarge,
                "too many header fields",
            ));
        }
        Err(_) => {
            return Err(HeadError::Reject(
                Status::BadRequest,
                "malformed request head",
            ));
        }
    };
    let target = origin_form(request.path.unwrap_or("/"));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = Head {
        method: request.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        http10: request.version == Some(0),
        headers: Vec::with_capacity(request.headers.len()),
    };
    for header in request.headers.iter() {
        let Ok(value) = std::str::from_utf8(header.value) else {
            return Err(HeadError::Reject(
                Status::BadRequest,
                "header value is not UTF-8",
            ));
        };
        head.headers
            .push((header.name.to_string(), value.trim().to_string()));
    }
    Ok(Some((head, length)))
}

/// `http://host/path?q` (absolute form, which servers must accept) as `/path?q`.
fn origin_form(target: &str) -> &str {
    let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    else {
        return target;
    };
    rest.find('/').map_or("/", |slash| &rest[slash..])
}

enum Answer {
    /// Bytes to write; keep the connection open afterwards if true.
    Respond(Vec<u8>, bool),
    Reject(Status, &'static str),
    Upgrade(Target, bool, String),
}

fn answer(head: &Head, endpoints: &Endpoints<'_>) -> Answer {
    let head_only = match head.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => return Answer::Reject(Status::MethodNotAllowed, "only GET and HEAD are served"),
    };
    let has_body = head.header("transfer-encoding").is_some()
        || head
            .header("content-length")
            .is_some_and(|length| length != "0");
    if has_body {
        return Answer::Reject(Status::BadRequest, "request bodies are not accepted");
    }
    let fixed = |bytes: &'static [u8]| {
        let bytes = if head_only { head_of(bytes) } else { bytes };
        Answer::Respond(bytes.to_vec(), head.keep_alive())
    };
    match head.path.as_str() {
        "/healthz" => fixed(HEALTHZ),
        "/readyz" if endpoints.health.is_ready() => fixed(READY),
        "/readyz" => fixed(NOT_READY),
        "/metrics" => {
            let text = endpoints.metrics.render(endpoints.health);
            Answer::Respond(
                ok_response("text/plain; version=0.0.4", text.as_bytes(), head_only),
                head.keep_alive(),
            )
        }
        "/" => Answer::Respond(
            ok_response("text/html; charset=utf-8", CHAT_PAGE, head_only),
            head.keep_alive(),
        ),
        "/ws/echo" if endpoints.config.echo => upgrade(head, endpoints, Target::Echo),
        path => {
            if room_in(path, "/chat/").is_some() {
                return Answer::Respond(
                    ok_response("text/html; charset=utf-8", CHAT_PAGE, head_only),
                    head.keep_alive(),
                );
            } else if let Some(room) = room_in(path, "/ws/chat/") {
                return match chat_target(room, &head.query) {
                    Ok(target) => upgrade(head, endpoints, target),
                    Err(reason) => Answer::Reject(Status::BadRequest, reason),
                };
            }
            Answer::Reject(Status::NotFound, "no such page")
        }
    }
}

/// The room in `<prefix><room>/` (the trailing slash is optional), if the name is valid.
fn room_in<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    let room = rest.strip_suffix('/').unwrap_or(rest);
    protocol::is_valid_room(room).then_some(room)
}

fn chat_target(room: &str, query: &str) -> Result<Target, &'static str> {
    let mut since = None;
    let mut epoch = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "since" => {
                since = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| "since must be a whole number")?,
                )
            }
            "epoch" if is_plain_token(value) => epoch = Some(value.to_string()),
            "epoch" => return Err("epoch must be 1-64 characters of A-Z a-z 0-9 - _ ."),
            _ => {}
        }
    }
    Ok(Target::Chat {
        room: room.to_string(),
        since,
        epoch,
    })
}

fn is_plain_token(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Checks the handshake of RFC 6455 section 4.2.1 and the allowed origins.
fn upgrade(head: &Head, endpoints: &Endpoints<'_>, target: Target) -> Answer {
    if !head.has_token("upgrade", "websocket") || !head.has_token("connection", "upgrade") {
        return Answer::Reject(
            Status::UpgradeRequired,
            "this path only serves WebSocket upgrades",
        );
    }
    if head.http10 || head.method != "GET" {
        return Answer::Reject(
            Status::BadRequest,
            "WebSocket upgrades need GET over HTTP/1.1",
        );
    }
    if head.header("sec-websocket-version") != Some("13") {
        return Answer::Reject(
            Status::UpgradeRequired,
            "only WebSocket version 13 is supported",
        );
    }
    let Some(key) = head
        .header("sec-websocket-key")
        .filter(|key| key.len() == 24 && key.ends_with("=="))
    else {
        return Answer::Reject(Status::BadRequest, "missing or malformed Sec-WebSocket-Key");
    };
    let allowed = &endpoints.config.allowed_origins;
    if !allowed.is_empty()
        && !head
            .header("origin")
            .is_some_and(|origin| allowed.iter().any(|a| a == origin))
    {
        return Answer::Reject(Status::Forbidden, "origin not allowed");
    }
    let extended = head.has_token("sec-websocket-protocol", EXTENDED_SUBPROTOCOL);
    Answer::Upgrade(target, extended, derive_accept_key(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content_length_matches(response: &[u8]) -> bool {
        let text = std::str::from_utf8(response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        length == body.len()
    }

    #[test]
    fn fixed_responses_have_the_right_length() {
        for response in [HEALTHZ, READY, NOT_READY, BUSY] {
            assert!(
                content_length_matches(response),
                "{}",
                String::from_utf8_lossy(response)
            );
        }
        assert!(content_length_matches(&error_response(
            Status::NotFound,
            "no such page"
        )));
        assert!(content_length_matches(&ok_response(
            "text/plain",
            b"abc",
            false
        )));
        assert!(head_of(HEALTHZ).ends_with(b"\r\n\r\n"));
    }

    fn head_for(request: &str) -> Head {
        parse_head(request.as_bytes()).ok().flatten().unwrap().0
    }

    fn route(request: &str, config: &Config) -> Answer {
        let health = Health::default();
        let metrics = Metrics::default();
        answer(
            &head_for(request),
            &Endpoints {
                config,
                health: &health,
                metrics: &metrics,
            },
        )
    }

    const UPGRADE: &str = "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn routes_chat_upgrades_with_resume() {
        let request = format!("GET /ws/chat/lobby/?since=4&epoch=ab.1 HTTP/1.1\r\n{UPGRADE}\r\n");
        match route(&request, &Config::default()) {
            Answer::Upgrade(Target::Chat { room, since, epoch }, extended, key) => {
                assert_eq!(
                    (room.as_str(), since, epoch.as_deref()),
                    ("lobby", Some(4), Some("ab.1"))
                );
                assert!(!extended);
                assert_eq!(key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
            }
            _ => panic!("expected an upgrade"),
        }
    }

    #[test]
    fn rejects_what_the_contract_rejects() {
        let config = Config::default();
        let cases = [
            ("POST /healthz HTTP/1.1\r\n\r\n", Status::MethodNotAllowed),
            ("GET /nope HTTP/1.1\r\n\r\n", Status::NotFound),
            ("GET /chat/bad%20room/ HTTP/1.1\r\n\r\n", Status::NotFound),
            (
                "GET /ws/chat/lobby/ HTTP/1.1\r\n\r\n",
                Status::UpgradeRequired,
            ),
            ("GET /ws/echo HTTP/1.1\r\n\r\n", Status::NotFound),
            (
                "GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
                Status::BadRequest,
            ),
        ];
        for (request, expected) in cases {
            match route(request, &config) {
                Answer::Reject(status, _) => assert_eq!(status, expected, "{request}"),
                _ => panic!("{request} was not rejected"),
            }
        }
        let bad_since = format!("GET /ws/chat/lobby/?since=x HTTP/1.1\r\n{UPGRADE}\r\n");
        assert!(matches!(
            route(&bad_since, &config),
            Answer::Reject(Status::BadRequest, _)
        ));
    }

    #[test]
    fn checks_the_origin_when_a_list_is_set() {
        let config = Config {
            allowed_origins: vec!["https://chat.example".into()],
            ..Config::default()
        };
        let foreign =
            format!("GET /ws/chat/a/ HTTP/1.1\r\n{UPGRADE}Origin: https://evil.example\r\n\r\n");
        assert!(matches!(
            route(&foreign, &config),
            Answer::Reject(Status::Forbidden, _)
        ));
        let own =
            format!("GET /ws/chat/a/ HTTP/1.1\r\n{UPGRADE}Origin: https://chat.example\r\n\r\n");
        assert!(matches!(route(&own, &config), Answer::Upgrade(..)));
    }

    #[test]
    fn absolute_form_targets_route_like_paths() {
        assert_eq!(
            head_for("GET http://example.com/healthz HTTP/1.1\r\n\r\n").path,
            "/healthz"
        );
        assert_eq!(
            head_for("GET http://example.com HTTP/1.1\r\n\r\n").path,
            "/"
        );
        assert_eq!(head_for("GET /a?b=c HTTP/1.1\r\n\r\n").query, "b=c");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        assert!(head_for("GET / HTTP/1.1\r\n\r\n").keep_alive());
        assert!(!head_for("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
        assert!(!head_for("GET / HTTP/1.0\r\n\r\n").keep_alive());
    }
}
