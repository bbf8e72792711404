//! Responses: the fixed health answers as byte literals, error answers with a one-line
//! reason, and 200s with a body.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use crate::auth::Mode;
use crate::config::Config;

/// The chat page, compiled in.
pub static CHAT_PAGE: &str = include_str!("chat.html");

pub const HEALTHZ: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
pub const READY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 14\r\n\r\n{\"ready\":true}";
pub const NOT_READY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 15\r\n\r\n{\"ready\":false}";
/// Browsers ask for an icon; there is none, and saying so without an error keeps their
/// consoles clean.
pub const NO_ICON: &[u8] = b"HTTP/1.1 204 No Content\r\nCache-Control: max-age=86400\r\n\r\n";
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
    with_headers(
        Status::TooManyRequests,
        &retry_after_header(retry_after),
        reason,
    )
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

/// Whole seconds to wait, rounded up, as a header.
pub fn retry_after_header(wait: std::time::Duration) -> String {
    format!(
        "Retry-After: {}\r\n",
        wait.as_millis().div_ceil(1000).max(1)
    )
}

/// A JSON answer of the API with `headers` (whole lines); an error one closes the connection.
pub fn json_response(status: u16, body: &str, headers: &str) -> Vec<u8> {
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
    let close = if status == 200 {
        ""
    } else {
        "Connection: close\r\n"
    };
    format!(
        "HTTP/1.1 {line}\r\n{headers}{close}Content-Type: application/json\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The chat page as this server serves it: its settings in a `<meta name="roomcast-config">`
/// tag (`{"auth": "off"|"optional"|"required", "tokenUrl": "…"}`), and the headers that keep
/// it to itself: a Content-Security-Policy that allows only its own inline script and style
/// (by hash) and connections to its own origin (and the token URL's), no framing, no MIME
/// sniffing, no referrer. Built on the first request for it, not at start: hashing the page
/// would add a fifth to the time until the server is ready.
pub struct Page {
    /// The settings tag, ready to go in.
    tag: String,
    /// Where the page may connect: its own origin, and the token URL's.
    connect: String,
    /// The whole response, and where its head ends.
    built: OnceLock<(Vec<u8>, usize)>,
}

/// Where the page's settings go.
const CONFIG_PLACEHOLDER: &str = r#"<meta name="roomcast-config" content="{}">"#;

impl Page {
    pub fn new(config: &Config) -> Page {
        let auth = match config.auth {
            Mode::Off => "off",
            Mode::Optional => "optional",
            Mode::Required => "required",
        };
        // The limits, so the page can hold back what the server would refuse.
        let mut settings = format!(
            "{{\"auth\":\"{auth}\",\"maxMessageBytes\":{},\"rate\":{},\"burst\":{}",
            config.max_message_bytes, config.rate, config.burst
        );
        let token_url = config.token_url.as_deref();
        if let Some(url) = token_url {
            settings.push_str(",\"tokenUrl\":");
            crate::protocol::push_json_string(&mut settings, url);
        }
        settings.push('}');
        let tag = format!(
            r#"<meta name="roomcast-config" content="{}">"#,
            html_attribute(&settings)
        );
        let mut connect = String::from("'self'");
        if let Some(origin) = token_url.and_then(origin_of) {
            connect.push(' ');
            connect.push_str(origin);
        }
        Page {
            tag,
            connect,
            built: OnceLock::new(),
        }
    }

    fn build(&self) -> (Vec<u8>, usize) {
        let body = CHAT_PAGE.replacen(CONFIG_PLACEHOLDER, &self.tag, 1);
        let policy = content_security_policy(&body, &self.connect);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n\
             Content-Security-Policy: {policy}\r\nX-Content-Type-Options: nosniff\r\n\
             X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut response = head.into_bytes();
        let head_length = response.len();
        response.extend_from_slice(body.as_bytes());
        (response, head_length)
    }

    pub fn response(&self, head_only: bool) -> Vec<u8> {
        let (response, head_length) = self.built.get_or_init(|| self.build());
        let end = if head_only {
            *head_length
        } else {
            response.len()
        };
        response[..end].to_vec()
    }
}

/// A person who followed a bad room link gets a page saying so, not a bare 404.
pub fn not_found_page(head_only: bool) -> Vec<u8> {
    const BODY: &str = "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\">\
        <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
        <title>No such room</title><h1>No such room</h1>\
        <p>Room names are 1 to 100 characters of letters, digits, <code>-</code>, \
        <code>_</code> and <code>.</code>.</p><p><a href=\"/\">Go to the lobby</a></p>\n";
    let mut response = format!(
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Security-Policy: default-src 'none'\r\nX-Content-Type-Options: nosniff\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n",
        BODY.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(BODY.as_bytes());
    }
    response
}

/// `scheme://host[:port]` of an absolute URL.
fn origin_of(url: &str) -> Option<&str> {
    let after_scheme = url.find("://")? + 3;
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |at| after_scheme + at);
    Some(&url[..end])
}

fn html_attribute(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn content_security_policy(page: &str, connect: &str) -> String {
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
        "default-src 'none'; script-src {}; style-src {}; connect-src {connect}; img-src 'self'; \
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
        assert!(content_length_matches(
            &Page::new(&Config::default()).response(false)
        ));
        assert!(content_length_matches(&json_response(
            413,
            r#"{"error":"x"}"#,
            ""
        )));
    }

    #[test]
    fn the_policy_names_the_pages_inline_script_and_style() {
        let policy = content_security_policy("<style>a{}</style><script>go()</script>", "'self'");
        let script = STANDARD.encode(Sha256::digest(b"go()"));
        assert!(
            policy.contains(&format!("script-src 'sha256-{script}'")),
            "{policy}"
        );
        assert!(policy.contains("frame-ancestors 'none'"));
        assert!(!policy.contains("unsafe-inline"));
        let page = Page::new(&Config {
            auth: Mode::Required,
            token_url: Some("https://app.example/auth/token?x=\"y\"".into()),
            ..Config::default()
        });
        let head = String::from_utf8(page.response(true)).unwrap();
        assert!(head.contains("Content-Security-Policy: default-src 'none'"));
        assert!(
            head.contains("connect-src 'self' https://app.example;"),
            "{head}"
        );
        let body = String::from_utf8(page.response(false)).unwrap();
        assert!(
            body.contains(
                r#"content="{&quot;auth&quot;:&quot;required&quot;,&quot;maxMessageBytes&quot;:65536,&quot;rate&quot;:5,&quot;burst&quot;:20,&quot;tokenUrl&quot;:"#
            )
        );
        assert!(!body.contains(CONFIG_PLACEHOLDER));
    }
}
