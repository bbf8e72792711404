//! The HTTP/1.1 front end of the real binary, over raw TCP: fixed responses, keep-alive,
//! metrics, the page, every error status, the connection cap, readiness during shutdown,
//! and the command line.

mod common;

use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{Server, WAIT};

const HEALTHZ: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
const HEALTHZ_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 11\r\n\r\n";
/// The RFC 6455 sample key and its accept value.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// Below this the head timeout of 300 ms cannot have passed (timers never fire early).
const HEAD_TIMEOUT_FLOOR: Duration = Duration::from_millis(280);

// ---------------------------------------------------------------------------------------------
// A raw HTTP client.

#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    /// Parses one complete response; the body is everything after the head.
    fn parse(bytes: &[u8]) -> Response {
        let text = String::from_utf8_lossy(bytes);
        let end = text
            .find("\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete response head in {text:?}"));
        let head = text[..end + 4].to_string();
        let body = bytes[end + 4..].to_vec();
        Response {
            status: status_of(&head),
            head,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length")
            .map(|v| v.parse().expect("numeric Content-Length"))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn status_of(head: &str) -> u16 {
    let line = head.lines().next().unwrap_or("");
    let mut words = line.split(' ');
    assert!(
        words.next().is_some_and(|v| v.starts_with("HTTP/1.")),
        "not a status line: {line:?}"
    );
    words
        .next()
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {line:?}"))
}

struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Client {
            stream,
            buffer: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write request");
    }

    /// One read into the buffer; 0 on end of stream or a reset.
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("no bytes and no close within WAIT")
        {
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                n
            }
            Err(_) => 0,
        }
    }

    /// The next response head, taken out of the buffer.
    async fn head(&mut self) -> String {
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buffer.drain(..end + 4).collect();
                return String::from_utf8(head).expect("UTF-8 head");
            }
            if self.fill().await == 0 {
                panic!(
                    "closed before a complete head: {:?}",
                    String::from_utf8_lossy(&self.buffer)
                );
            }
        }
    }

    /// The next response on a kept-alive connection, its body framed by Content-Length.
    async fn response(&mut self, head_only: bool) -> Response {
        let head = self.head().await;
        let mut response = Response {
            status: status_of(&head),
            head,
            body: Vec::new(),
        };
        let length = if head_only {
            0
        } else {
            response
                .content_length()
                .expect("a kept-alive response needs a Content-Length")
        };
        while self.buffer.len() < length {
            if self.fill().await == 0 {
                panic!("closed inside a body of {length} bytes");
            }
        }
        response.body = self.buffer.drain(..length).collect();
        response
    }

    /// Everything left until the server closes; fails if it stays open past `WAIT`.
    async fn rest(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buffer)
    }

    /// The whole response of a connection the server closes after answering.
    async fn closing_response(&mut self) -> Response {
        let bytes = self.rest().await;
        let response = Response::parse(&bytes);
        if let Some(length) = response.content_length() {
            assert_eq!(response.body.len(), length, "{response:?}");
        }
        response
    }

    async fn expect_closed_silently(&mut self) {
        let rest = self.rest().await;
        assert!(
            rest.is_empty(),
            "expected a silent close, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// Sends `request` on a fresh connection and returns the response the server closes after.
async fn exchange(addr: SocketAddr, request: &str) -> Response {
    let mut client = Client::connect(addr).await;
    client.send(request.as_bytes()).await;
    client.closing_response().await
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

fn get_and_close(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
}

fn upgrade_request(path: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n{extra_headers}\r\n"
    )
}

/// An upgrade that must be refused: the error response, after which the server closes.
async fn refused_upgrade(addr: SocketAddr, path: &str, extra_headers: &str) -> Response {
    exchange(addr, &upgrade_request(path, extra_headers)).await
}

/// An upgrade that must succeed: a 101 with the right accept key.
async fn accepted_upgrade(addr: SocketAddr, path: &str, extra_headers: &str) {
    let mut client = Client::connect(addr).await;
    client
        .send(upgrade_request(path, extra_headers).as_bytes())
        .await;
    let head = client.head().await;
    let response = Response {
        status: status_of(&head),
        head,
        body: Vec::new(),
    };
    assert_eq!(response.status, 101, "{path}: {response:?}");
    assert_eq!(
        response.header("sec-websocket-accept"),
        Some(WS_ACCEPT),
        "{response:?}"
    );
    assert!(
        response
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{response:?}"
    );
}

/// After an error on one connection, a fresh client still gets the exact `/healthz` answer.
async fn assert_still_serving(addr: SocketAddr) {
    let mut client = Client::connect(addr).await;
    client.send(get_and_close("/healthz").as_bytes()).await;
    let bytes = client.rest().await;
    assert_eq!(String::from_utf8_lossy(&bytes), HEALTHZ);
}

/// A fresh `GET path` answered with anything but the 503 of the connection cap, polled for
/// at most `WAIT`.
async fn get_when_admitted(addr: SocketAddr, path: &str) -> Response {
    let started = Instant::now();
    loop {
        let response = exchange(addr, &get_and_close(path)).await;
        if response.status != 503 {
            return response;
        }
        assert!(
            started.elapsed() < WAIT,
            "still refused at the cap after {WAIT:?}: {response:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_error(response: &Response, status: u16) {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "an error closes the connection: {response:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Fixed responses.

#[tokio::test]
async fn healthz_answers_the_exact_fixed_response() {
    let server = Server::start(&[]);
    let response = exchange(server.addr, &get_and_close("/healthz")).await;
    assert_eq!(
        format!("{}{}", response.head, response.text()),
        HEALTHZ,
        "{response:?}"
    );
}

#[tokio::test]
async fn readyz_answers_200_when_ready() {
    let server = Server::start(&[]);
    let response = exchange(server.addr, &get_and_close("/readyz")).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(response.text(), r#"{"ready":true}"#);
}

#[tokio::test]
async fn head_healthz_gets_the_head_without_a_body() {
    let server = Server::start(&[]);
    let mut client = Client::connect(server.addr).await;
    client
        .send(b"HEAD /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await;
    let bytes = client.rest().await;
    assert_eq!(String::from_utf8_lossy(&bytes), HEALTHZ_HEAD);

    // And on a kept-alive connection the next response follows the head directly.
    let mut client = Client::connect(server.addr).await;
    client
        .send(
            format!(
                "HEAD /healthz HTTP/1.1\r\nHost: test\r\n\r\n{}",
                get_and_close("/healthz")
            )
            .as_bytes(),
        )
        .await;
    let bytes = client.rest().await;
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        format!("{HEALTHZ_HEAD}{HEALTHZ}")
    );
}

/// RFC 9110 section 9.3.2: the server MUST NOT send content in any response to HEAD,
/// error responses included.
#[tokio::test]
async fn head_requests_get_no_body_on_errors_either() {
    let server = Server::start(&[]);
    for (path, status) in [("/nope", 404), ("/ws/chat/lobby/", 426)] {
        let mut client = Client::connect(server.addr).await;
        client
            .send(format!("HEAD {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await;
        let response = Response::parse(&client.rest().await);
        assert_error(&response, status);
        assert!(
            response.body.is_empty(),
            "HEAD {path} got a body: {:?}",
            response.text()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Keep-alive.

#[tokio::test]
async fn keep_alive_answers_two_requests_in_turn() {
    let server = Server::start(&[("ROOMCAST_HEAD_TIMEOUT_MS", "30000")]);
    let mut client = Client::connect(server.addr).await;
    client.send(get("/healthz").as_bytes()).await;
    let first = client.response(false).await;
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, r#"{"ok":true}"#)
    );
    client.send(get("/readyz").as_bytes()).await;
    let second = client.response(false).await;
    assert_eq!(
        (second.status, second.text().as_str()),
        (200, r#"{"ready":true}"#)
    );
}

#[tokio::test]
async fn pipelined_requests_in_one_write_are_both_answered() {
    let server = Server::start(&[("ROOMCAST_HEAD_TIMEOUT_MS", "30000")]);
    let mut client = Client::connect(server.addr).await;
    client
        .send(format!("{}{}", get("/healthz"), get("/readyz")).as_bytes())
        .await;
    let first = client.response(false).await;
    let second = client.response(false).await;
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, r#"{"ok":true}"#)
    );
    assert_eq!(
        (second.status, second.text().as_str()),
        (200, r#"{"ready":true}"#)
    );
    // Still open for a third.
    client.send(get_and_close("/healthz").as_bytes()).await;
    assert_eq!(String::from_utf8_lossy(&client.rest().await), HEALTHZ);
}

#[tokio::test]
async fn connection_close_closes_after_the_response() {
    // A long head timeout, so only `Connection: close` can explain a prompt close.
    let server = Server::start(&[("ROOMCAST_HEAD_TIMEOUT_MS", "60000")]);
    let mut client = Client::connect(server.addr).await;
    client.send(get_and_close("/healthz").as_bytes()).await;
    let response = client.response(false).await;
    assert_eq!(response.status, 200);
    client.expect_closed_silently().await;
}

#[tokio::test]
async fn http10_closes_after_the_response() {
    let server = Server::start(&[("ROOMCAST_HEAD_TIMEOUT_MS", "60000")]);
    let mut client = Client::connect(server.addr).await;
    client.send(b"GET /healthz HTTP/1.0\r\n\r\n").await;
    let response = client.response(false).await;
    assert_eq!(
        (response.status, response.text().as_str()),
        (200, r#"{"ok":true}"#)
    );
    client.expect_closed_silently().await;
}

// ---------------------------------------------------------------------------------------------
// Metrics and the page.

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let server = Server::start(&[]);
    let response = exchange(server.addr, &get_and_close("/metrics")).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "{response:?}"
    );
    let text = response.text();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            assert!(
                comment.starts_with(" HELP ") || comment.starts_with(" TYPE "),
                "{line:?}"
            );
            continue;
        }
        let (name, value) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: u64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line:?}"));
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} has no TYPE"
        );
        samples.push((name.to_string(), value));
    }
    let sample = |name: &str| {
        samples
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert!(
        text.lines().any(|l| l == "roomcast_ready 1"),
        "not ready in {text}"
    );
    // This very request holds a connection.
    assert!(sample("roomcast_connections_open") >= 1, "{text}");
    assert!(sample("roomcast_connections_total") >= 1, "{text}");
    assert!(sample("roomcast_startup_microseconds") > 0, "{text}");
    assert_eq!(sample("roomcast_connections_rejected_total"), 0, "{text}");
}

#[tokio::test]
async fn the_chat_page_is_served_at_root_and_room_paths() {
    let server = Server::start(&[]);
    let mut bodies = Vec::new();
    for path in ["/", "/chat/lobby/", "/chat/lobby", "/chat/Room-1_a.b/"] {
        let response = exchange(server.addr, &get_and_close(path)).await;
        assert_eq!(response.status, 200, "{path}: {:?}", response.head);
        assert!(
            response
                .header("content-type")
                .is_some_and(|v| v.starts_with("text/html")),
            "{path}: {:?}",
            response.head
        );
        let page = response.text().to_ascii_lowercase();
        assert!(
            page.contains("<html") || page.contains("<!doctype"),
            "{path}: not a page"
        );
        bodies.push(response.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "same page");
    // HEAD gets the head alone.
    let mut client = Client::connect(server.addr).await;
    client
        .send(b"HEAD / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await;
    let response = Response::parse(&client.rest().await);
    assert_eq!(response.status, 200);
    assert_eq!(response.content_length(), Some(bodies[0].len()));
    assert!(response.body.is_empty(), "HEAD sent a body");
}

#[tokio::test]
async fn invalid_rooms_and_unknown_paths_are_404() {
    let server = Server::start(&[]);
    let long_room = "a".repeat(101);
    for path in [
        "/chat/bad%20room/".to_string(),
        "/chat/a!b/".to_string(),
        "/chat/".to_string(),
        "/chat//".to_string(),
        "/chat/a/b/".to_string(),
        format!("/chat/{long_room}/"),
        "/nope".to_string(),
        "/healthz/extra".to_string(),
        "/index.html".to_string(),
    ] {
        let response = exchange(server.addr, &get(&path)).await;
        assert_error(&response, 404);
    }
    assert_still_serving(server.addr).await;
}

// ---------------------------------------------------------------------------------------------
// Error statuses; after each, the server still serves others.

#[tokio::test]
async fn malformed_request_line_is_400() {
    let server = Server::start(&[]);
    for request in [
        "this is not http\r\n\r\n",
        "GET /healthz HTTP/9.9\r\n\r\n",
        "GET\r\n\r\n",
    ] {
        let response = exchange(server.addr, request).await;
        assert_error(&response, 400);
    }
    assert_still_serving(server.addr).await;
}

#[tokio::test]
async fn post_is_405_with_allow() {
    let server = Server::start(&[]);
    let response = exchange(
        server.addr,
        "POST /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_error(&response, 405);
    let allow = response.header("allow").expect("an Allow header");
    let methods: Vec<&str> = allow.split(',').map(str::trim).collect();
    assert!(
        methods.contains(&"GET") && methods.contains(&"HEAD"),
        "{allow}"
    );
    assert_still_serving(server.addr).await;
}

#[tokio::test]
async fn a_head_over_8_kib_is_431() {
    let server = Server::start(&[]);
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(9000)
    );
    let response = exchange(server.addr, &request).await;
    assert_error(&response, 431);
    // The same without the blank line: an endless head is cut off at the limit too.
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nX-Padding: {}",
        "p".repeat(9000)
    );
    let response = exchange(server.addr, &request).await;
    assert_error(&response, 431);
    assert_still_serving(server.addr).await;
}

#[tokio::test]
async fn more_than_32_headers_is_431() {
    let server = Server::start(&[]);
    let headers = |count: usize| {
        (1..count)
            .map(|i| format!("X-Header-{i}: {i}\r\n"))
            .collect::<String>()
    };
    // 32 header lines (Host and 31 more) are fine...
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{}\r\n",
        headers(31)
    );
    let response = exchange(server.addr, &request).await;
    assert_eq!(response.status, 200, "32 headers: {response:?}");
    // ...33 are not.
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{}\r\n",
        headers(32)
    );
    let response = exchange(server.addr, &request).await;
    assert_error(&response, 431);
    assert_still_serving(server.addr).await;
}

#[tokio::test]
async fn a_half_sent_head_gets_408_after_the_head_timeout() {
    let server = Server::start(&[("ROOMCAST_HEAD_TIMEOUT_MS", "300")]);
    let started = Instant::now();
    let mut client = Client::connect(server.addr).await;
    client.send(b"GET /healthz HTTP/1.1\r\nHost: te").await;
    let response = client.closing_response().await;
    assert!(
        started.elapsed() >= HEAD_TIMEOUT_FLOOR,
        "answered before the head timeout"
    );
    assert_error(&response, 408);
    assert_still_serving(server.addr).await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_silently_after_the_head_timeout() {
    let server = Server::start(&[("ROOMCAST_HEAD_TIMEOUT_MS", "300")]);
    // A connection that never sends a byte.
    let started = Instant::now();
    let mut client = Client::connect(server.addr).await;
    client.expect_closed_silently().await;
    assert!(
        started.elapsed() >= HEAD_TIMEOUT_FLOOR,
        "closed before the head timeout"
    );
    // A kept-alive connection idle after one answered request.
    let mut client = Client::connect(server.addr).await;
    client.send(get("/healthz").as_bytes()).await;
    assert_eq!(client.response(false).await.status, 200);
    client.expect_closed_silently().await;
    assert_still_serving(server.addr).await;
}

#[tokio::test]
async fn a_get_with_a_body_is_400() {
    let server = Server::start(&[]);
    let response = exchange(
        server.addr,
        "GET /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_error(&response, 400);
    let response = exchange(
        server.addr,
        "GET /healthz HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_error(&response, 400);
    assert_still_serving(server.addr).await;
}

#[tokio::test]
async fn a_websocket_path_without_upgrade_headers_is_426() {
    let server = Server::start(&[]);
    let response = exchange(server.addr, &get("/ws/chat/lobby/")).await;
    assert_error(&response, 426);
    assert_eq!(response.header("sec-websocket-version"), Some("13"));
    assert_still_serving(server.addr).await;
}

#[tokio::test]
async fn an_upgrade_with_a_bad_since_is_400() {
    let server = Server::start(&[]);
    let response = refused_upgrade(server.addr, "/ws/chat/lobby/?since=abc", "").await;
    assert_error(&response, 400);
    let response = refused_upgrade(server.addr, "/ws/chat/lobby/?since=-1", "").await;
    assert_error(&response, 400);
    // A whole number is fine.
    accepted_upgrade(server.addr, "/ws/chat/lobby/?since=3", "").await;
    assert_still_serving(server.addr).await;
}

#[tokio::test]
async fn an_upgrade_with_version_8_is_426() {
    let server = Server::start(&[]);
    let request = format!(
        "GET /ws/chat/lobby/ HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n"
    );
    let response = exchange(server.addr, &request).await;
    assert_error(&response, 426);
    assert_eq!(response.header("sec-websocket-version"), Some("13"));
    assert_still_serving(server.addr).await;
}

#[tokio::test]
async fn allowed_origins_are_added_to_the_servers_own() {
    let server = Server::start(&[("ROOMCAST_ALLOWED_ORIGINS", "https://ok.example")]);
    let response = refused_upgrade(
        server.addr,
        "/ws/chat/lobby/",
        "Origin: https://evil.example\r\n",
    )
    .await;
    assert_error(&response, 403);
    for origin in [
        "Origin: https://ok.example\r\n",
        "Origin: http://test\r\n",
        "",
    ] {
        accepted_upgrade(server.addr, "/ws/chat/lobby/", origin).await;
    }
    assert_still_serving(server.addr).await;
}

#[tokio::test]
async fn only_the_same_origin_by_default_and_any_with_a_star() {
    let server = Server::start(&[]);
    let foreign = "Origin: https://evil.example\r\n";
    assert_error(
        &refused_upgrade(server.addr, "/ws/chat/lobby/", foreign).await,
        403,
    );
    // The page's own origin, and a client that is not a browser (no Origin at all).
    accepted_upgrade(server.addr, "/ws/chat/lobby/", "Origin: http://test\r\n").await;
    accepted_upgrade(server.addr, "/ws/chat/lobby", "").await;
    let open = Server::start(&[("ROOMCAST_ALLOWED_ORIGINS", "*")]);
    accepted_upgrade(open.addr, "/ws/chat/lobby/", foreign).await;
}

#[tokio::test]
async fn an_upgrade_to_a_101_character_room_is_404() {
    let server = Server::start(&[]);
    let response =
        refused_upgrade(server.addr, &format!("/ws/chat/{}/", "r".repeat(101)), "").await;
    assert_error(&response, 404);
    // 100 characters is the longest valid name.
    accepted_upgrade(server.addr, &format!("/ws/chat/{}/", "r".repeat(100)), "").await;
    assert_still_serving(server.addr).await;
}

#[tokio::test]
async fn the_echo_endpoint_is_404_unless_enabled() {
    let server = Server::start(&[]);
    let response = refused_upgrade(server.addr, "/ws/echo", "").await;
    assert_error(&response, 404);
    assert_still_serving(server.addr).await;
    drop(server);

    let server = Server::start(&[("ROOMCAST_ECHO", "1")]);
    accepted_upgrade(server.addr, "/ws/echo", "").await;
}

// ---------------------------------------------------------------------------------------------
// The connection cap.

#[tokio::test]
async fn the_connection_cap_answers_503_and_recovers() {
    let server = Server::start(&[
        ("ROOMCAST_MAX_CONNECTIONS", "2"),
        ("ROOMCAST_HEAD_TIMEOUT_MS", "60000"),
    ]);
    // Two kept-alive connections, each answered once, so each surely holds a slot.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = Client::connect(server.addr).await;
        client.send(get("/healthz").as_bytes()).await;
        assert_eq!(client.response(false).await.status, 200);
        held.push(client);
    }

    let mut third = Client::connect(server.addr).await;
    third.send(get("/").as_bytes()).await;
    let response = third.closing_response().await;
    assert_error(&response, 503);
    assert_eq!(response.header("retry-after"), Some("1"), "{response:?}");

    // Health checks are answered past the cap: the orchestrator must see the truth.
    for path in ["/readyz", "/healthz"] {
        let mut probe = Client::connect(server.addr).await;
        probe.send(get(path).as_bytes()).await;
        assert_eq!(
            probe.closing_response().await.status,
            200,
            "{path} at the cap"
        );
    }

    // One slot frees up when a held connection closes.
    drop(held.remove(0));
    let response = get_when_admitted(server.addr, "/").await;
    assert_eq!(response.status, 200, "{response:?}");

    let metrics = get_when_admitted(server.addr, "/metrics").await;
    let rejected: u64 = metrics
        .text()
        .lines()
        .find_map(|line| line.strip_prefix("roomcast_connections_rejected_total "))
        .expect("roomcast_connections_rejected_total")
        .parse()
        .unwrap();
    assert!(rejected >= 1, "{}", metrics.text());

    // The connection still held was not disturbed.
    let mut kept = held.remove(0);
    kept.send(get("/readyz").as_bytes()).await;
    assert_eq!(kept.response(false).await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Readiness during shutdown.

#[tokio::test]
async fn readyz_turns_503_during_the_shutdown_delay_while_healthz_stays_200() {
    let mut server = Server::start(&[("ROOMCAST_SHUTDOWN_DELAY_MS", "1500")]);
    let response = exchange(server.addr, &get_and_close("/readyz")).await;
    assert_eq!(response.status, 200, "ready before the signal");

    server.signal("TERM");
    let started = Instant::now();
    let not_ready = loop {
        let response = exchange(server.addr, &get_and_close("/readyz")).await;
        if response.status != 200 {
            break response;
        }
        assert!(started.elapsed() < WAIT, "/readyz still 200 after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(not_ready.status, 503, "{not_ready:?}");
    assert_eq!(not_ready.text(), r#"{"ready":false}"#);
    assert_eq!(not_ready.header("cache-control"), Some("no-store"));

    let response = exchange(server.addr, &get_and_close("/healthz")).await;
    assert_eq!(
        format!("{}{}", response.head, response.text()),
        HEALTHZ,
        "healthz during the delay"
    );

    let (status, _) = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{status:?}: {:?}", server.logs());
}

// ---------------------------------------------------------------------------------------------
// The command line.

fn run_roomcast(args: &[&str], env: &[(&str, &str)]) -> Output {
    common::run_to_exit(args, env).0
}

#[test]
fn bad_configuration_exits_64_and_names_the_variable() {
    for (name, value) in [
        ("ROOMCAST_MAX_CONNECTIONS", "lots"),
        ("ROOMCAST_HEAD_TIMEOUT_MS", "soon"),
        ("ROOMCAST_ECHO", "maybe"),
    ] {
        let output = run_roomcast(&[], &[("ROOMCAST_ADDR", "127.0.0.1:0"), (name, value)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{name}={value}: {stderr}");
        assert!(stderr.contains(name), "{name}={value}: {stderr}");
    }
}

#[test]
fn an_unknown_subcommand_exits_64() {
    for args in [&["frobnicate"][..], &["serve", "extra"], &["--nope"]] {
        let output = run_roomcast(args, &[("ROOMCAST_ADDR", "127.0.0.1:0")]);
        assert_eq!(
            output.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn version_and_help_exit_0() {
    let output = run_roomcast(&["--version"], &[]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("roomcast {}", env!("CARGO_PKG_VERSION"))
    );

    let output = run_roomcast(&["--help"], &[]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("usage"), "{help}");
    assert!(help.contains("probe"), "{help}");
}
