//! Reading one request head with httparse: `Partial` means read more, under a byte cap, a
//! header-count cap and a deadline.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::response::Status;
use crate::shutdown::Shutdown;

/// A request head larger than this is answered 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// More header lines than this are answered 431.
pub const MAX_HEADERS: usize = 32;

/// A parsed request head, owning what routing needs.
#[derive(Debug, Default)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub query: String,
    pub http10: bool,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The credentials of an `Authorization: Bearer …` header (the scheme in any case).
    pub fn bearer(&self) -> Option<&str> {
        let (scheme, credentials) = self.header("authorization")?.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| credentials.trim())
    }

    /// How many times a header appears.
    pub fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    /// Whether a comma-separated header holds `token`, case-insensitively.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.tokens(name).any(|t| t.eq_ignore_ascii_case(token))
    }

    /// The comma-separated entries of every `name` header, trimmed.
    pub fn tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.tokens_by(name, ',')
    }

    /// The entries of every `name` header split at `separator`, trimmed.
    pub fn tokens_by<'a>(
        &'a self,
        name: &'a str,
        separator: char,
    ) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(move |(_, v)| v.split(separator))
            .map(str::trim)
    }

    pub fn keep_alive(&self) -> bool {
        !self.http10 && !self.has_token("connection", "close")
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

#[derive(Debug)]
pub enum HeadError {
    /// The peer went away, stayed idle between requests, or shutdown started.
    Closed,
    Reject(Status, &'static str),
}

/// Reads one request head into `buffer` by `deadline`; the bytes after it stay there.
pub async fn read_head(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    deadline: Instant,
    shutdown: &mut Shutdown,
) -> Result<Head, HeadError> {
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
        read_more(stream, buffer, deadline, shutdown).await?;
    }
}

/// Appends what the peer sends next to `buffer`, up to the head cap, by `deadline`.
pub async fn read_more(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    deadline: Instant,
    shutdown: &mut Shutdown,
) -> Result<(), HeadError> {
    let start = buffer.len();
    buffer.resize(MAX_HEAD_BYTES.min(start + 2048), 0);
    let read = tokio::select! {
        read = timeout_at(deadline, stream.read(&mut buffer[start..])) => read,
        _ = shutdown.signalled() => Ok(Ok(0)),
    };
    match read {
        Ok(Ok(n)) if n > 0 => {
            buffer.truncate(start + n);
            Ok(())
        }
        Ok(_) => Err(HeadError::Closed),
        // A connection idle between requests just closes; a half-sent head gets 408.
        Err(_) if start == 0 => Err(HeadError::Closed),
        Err(_) => {
            buffer.truncate(start);
            Err(HeadError::Reject(
                Status::RequestTimeout,
                "request head not received in time",
            ))
        }
    }
}

/// One head from the start of `buffer` and its length, `None` if it is not all there yet.
pub fn parse_head(buffer: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
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

#[cfg(test)]
pub fn head_for(request: &str) -> Head {
    parse_head(request.as_bytes()).ok().flatten().unwrap().0
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_partial_head_asks_for_more_and_a_bad_one_is_refused() {
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\nHost"), Ok(None)));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
            Err(HeadError::Reject(Status::BadRequest, _))
        ));
        let many: String = (0..=MAX_HEADERS).map(|n| format!("X-{n}: y\r\n")).collect();
        assert!(matches!(
            parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Err(HeadError::Reject(Status::HeadersTooLarge, _))
        ));
    }
}
