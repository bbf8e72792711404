//! Responses: the fixed health answers as byte literals, error answers with a one-line
//! reason, and 200s with a body.

/// The chat page, compiled in.
pub static CHAT_PAGE: &[u8] = include_bytes!("chat.html");

pub const HEALTHZ: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
pub const READY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 14\r\n\r\n{\"ready\":true}";
pub const NOT_READY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 15\r\n\r\n{\"ready\":false}";
/// The answer at the connection cap; short enough for one non-blocking write.
pub const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 33\r\n\r\nserver busy: too many connections";

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
        assert!(content_length_matches(&ok_response(
            "text/plain",
            b"abc",
            false
        )));
        assert!(head_of(HEALTHZ).ends_with(b"\r\n\r\n"));
    }
}
