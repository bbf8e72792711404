//! One HTTP response as bytes arrived: the status, the head verbatim, the body.

use std::io;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The status line and headers, up to and including the blank line.
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    /// A complete response; the body is everything after the head.
    pub fn parse(bytes: &[u8]) -> io::Result<Response> {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| {
                invalid(format!(
                    "no complete response head in {:?}",
                    String::from_utf8_lossy(bytes)
                ))
            })?;
        let mut response = Response::from_head(String::from_utf8_lossy(&bytes[..end + 4]).into())?;
        response.body = bytes[end + 4..].to_vec();
        Ok(response)
    }

    /// A response of which only the head has been read.
    pub fn from_head(head: String) -> io::Result<Response> {
        let line = head.lines().next().unwrap_or("");
        let mut words = line.split(' ');
        let status = match (words.next(), words.next()) {
            (Some(version), Some(code)) if version.starts_with("HTTP/1.") => code.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| invalid(format!("not a status line: {line:?}")))?;
        Ok(Response {
            status,
            head,
            body: Vec::new(),
        })
    }

    /// The first header named `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")
            .map(|v| v.parse().expect("numeric Content-Length"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
