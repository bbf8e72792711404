//! Responses: the fixed health answers as byte literals, error answers with a one-line
//! reason, and 200s with a body.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// The chat page, compiled in.
pub static CHAT_PAGE: &str = include_str!("chat.html");

pub const HEALTHZ: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
pub const READY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 14\r\n\r\n{\"ready\":true}";
pub const NOT_READY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 15\r\n\r\n{\"ready\":false}";
/// The answer at the connection cap; short enough for one non-blocking write.
pub const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 33\r\n\r\nserver busy: too many connections";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    UpgradeRequired,
    HeadersTooLarge,
    TooManyRequests,
    ServiceUnavailable,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::BadRequest => "400 Bad Request",
            Status::Unauthorized => "401 Unauthorized",
            Status::Forbidden => "403 Forbidden",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::RequestTimeout => "408 Request Timeout",
            Status::UpgradeRequired => "426 Upgrade Required",
            Status::HeadersTooLarge => "431 Request Header Fields Too Large",
            Status::TooManyRequests => "429 Too Many Requests",
            Status::ServiceUnavailable => "503 Service Unavailable",
        }
    }

    fn extra_headers(self) -> &'static str {
        match self {
            Status::MethodNotAllowed => "Allow: GET, HEAD\r\n",
            Status::Unauthorized => "WWW-Authenticate: Bearer realm=\"roomcast\"\r\n",
            Status::UpgradeRequired => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            Status::ServiceUnavailable => "Retry-After: 1\r\n",
            _ => "",
        }
    }
}

/// A response that closes the connection: the status and a one-line reason.
pub fn error_response(status: Status, reason: &str) -> Vec<u8> {
    with_headers(status, status.extra_headers(), reason)
}

/// 429 with when to come back, in whole seconds (rounded up).
pub fn too_many_response(retry_after: std::time::Duration, reason: &str) -> Vec<u8> {
    let seconds = retry_after.as_millis().div_ceil(1000).max(1);
    let header = format!("Retry-After: {seconds}\r\n");
    with_headers(Status::TooManyRequests, &header, reason)
}

fn with_headers(status: Status, headers: &str, reason: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {}\r\n{headers}X-Content-Type-Options: nosniff\r\nContent-Type: text/plain\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{reason}\n",
        status.line(),
        reason.len() + 1
    )
    .into_bytes()
}

pub fn ok_response(content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
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

/// A JSON answer of the API; an error one closes the connection.
pub fn json_response(status: u16, body: &str, retry_after: Option<std::time::Duration>) -> Vec<u8> {
    let line = match status {
        200 => "200 OK",
        400 => "400 Bad Request",
        401 => "401 Unauthorized",
        403 => "403 Forbidden",
        404 => "404 Not Found",
        405 => "405 Method Not Allowed",
        408 => "408 Request Timeout",
        411 => "411 Length Required",
        413 => "413 Content Too Large",
        415 => "415 Unsupported Media Type",
        429 => "429 Too Many Requests",
        _ => "503 Service Unavailable",
    };
    let mut extra = String::new();
    if let Some(wait) = retry_after {
        extra.push_str(&format!(
            "Retry-After: {}\r\n",
            wait.as_millis().div_ceil(1000).max(1)
        ));
    }
    match status {
        401 => extra.push_str("WWW-Authenticate: Bearer realm=\"roomcast\"\r\n"),
        405 => extra.push_str("Allow: POST\r\n"),
        200 => {}
        _ => extra.push_str("Connection: close\r\n"),
    }
    format!(
        "HTTP/1.1 {line}\r\n{extra}Content-Type: application/json\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The page with the headers that keep it to itself: a Content-Security-Policy that allows
/// only its own inline script and style (by hash) and WebSockets to its own origin, no
/// framing, no MIME sniffing, no referrer.
pub fn page_response(head_only: bool) -> Vec<u8> {
    static HEAD: OnceLock<String> = OnceLock::new();
    let head = HEAD.get_or_init(|| {
        let policy = content_security_policy(CHAT_PAGE);
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n\
             Content-Security-Policy: {policy}\r\nX-Content-Type-Options: nosniff\r\n\
             X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\nContent-Length: {}\r\n\r\n",
            CHAT_PAGE.len()
        )
    });
    let mut response = head.as_bytes().to_vec();
    if !head_only {
        response.extend_from_slice(CHAT_PAGE.as_bytes());
    }
    response
}

fn content_security_policy(page: &str) -> String {
    let hash = |tag: &str| {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let body = page
            .split_once(&open)
            .and_then(|(_, rest)| rest.split_once(&close))
            .map_or("", |(body, _)| body);
        format!(
            "'sha256-{}'",
            STANDARD.encode(Sha256::digest(body.as_bytes()))
        )
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash("script"),
        hash("style")
    )
}

/// The head part of a response, for HEAD requests.
pub fn head_of(response: &[u8]) -> &[u8] {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |i| i + 4);
    &response[..end]
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
        let not_found = error_response(Status::NotFound, "no such page");
        assert!(content_length_matches(&not_found));
        let too_many = too_many_response(std::time::Duration::from_millis(1500), "slow down");
        assert!(content_length_matches(&too_many));
        assert!(
            String::from_utf8(too_many)
                .unwrap()
                .contains("Retry-After: 2\r\n")
        );
        assert!(content_length_matches(&ok_response(
            "text/plain",
            b"abc",
            false
        )));
        assert!(head_of(HEALTHZ).ends_with(b"\r\n\r\n"));
        assert!(content_length_matches(&page_response(false)));
        assert!(content_length_matches(&json_response(
            413,
            r#"{"error":"x"}"#,
            None
        )));
    }

    #[test]
    fn the_policy_names_the_pages_inline_script_and_style() {
        let policy = content_security_policy("<style>a{}</style><script>go()</script>");
        let script = STANDARD.encode(Sha256::digest(b"go()"));
        assert!(
            policy.contains(&format!("script-src 'sha256-{script}'")),
            "{policy}"
        );
        assert!(policy.contains("frame-ancestors 'none'"));
        assert!(!policy.contains("unsafe-inline"));
        let head = String::from_utf8(page_response(true)).unwrap();
        assert!(head.contains("Content-Security-Policy: default-src 'none'"));
    }
}
