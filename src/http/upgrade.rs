//! The WebSocket handshake: the checks of RFC 6455 section 4.2.1, the origin policy, and
//! writing the 101 (or a refusal) under a deadline.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::head::Head;
use super::response::{Status, error_response};
use crate::auth::{Authenticator, Identity, Mode, now_secs};
use crate::broker::Resume;
use crate::protocol::EXTENDED_SUBPROTOCOL;

/// What a WebSocket upgrade asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Chat {
        room: String,
        /// Where the client wants to start; `None` for live messages only.
        resume: Option<Resume>,
    },
    Echo,
}

/// A valid upgrade request, handed to a session together with the stream.
#[derive(Debug)]
pub struct Upgrade {
    pub target: Target,
    /// The client offered the `roomcast.v1` subprotocol.
    pub extended: bool,
    /// The user its token names; `None` for an anonymous client.
    pub identity: Option<Identity>,
    accept_key: String,
    /// Bytes read past the head: the start of the first frames.
    pub leftover: Vec<u8>,
}

/// Which `Origin`s may open a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// Only the server's own (the `Origin` names the `Host`), plus these.
    SameAnd(Vec<String>),
    Any,
}

impl Upgrade {
    /// Checks `head` as an upgrade to `target`; the refusal's status and reason otherwise.
    pub fn check(
        head: &Head,
        target: Target,
        origins: &Origins,
    ) -> Result<Upgrade, (Status, &'static str)> {
        if !head.has_token("upgrade", "websocket") || !head.has_token("connection", "upgrade") {
            return Err((
                Status::UpgradeRequired,
                "this path only serves WebSocket upgrades",
            ));
        }
        if head.http10 || head.method != "GET" {
            return Err((
                Status::BadRequest,
                "WebSocket upgrades need GET over HTTP/1.1",
            ));
        }
        if head.header("sec-websocket-version") != Some("13") {
            return Err((
                Status::UpgradeRequired,
                "only WebSocket version 13 is supported",
            ));
        }
        let Some(host) = head.header("host").filter(|host| !host.is_empty()) else {
            return Err((Status::BadRequest, "missing Host header"));
        };
        if head.count("host") > 1 {
            return Err((Status::BadRequest, "more than one Host header"));
        }
        let Some(key) = head.header("sec-websocket-key").filter(|key| is_nonce(key)) else {
            return Err((Status::BadRequest, "missing or malformed Sec-WebSocket-Key"));
        };
        if let Some(origin) = head.header("origin")
            && !origin_allowed(origin, host, origins)
        {
            return Err((Status::Forbidden, "origin not allowed"));
        }
        Ok(Upgrade {
            target,
            extended: head.has_token("sec-websocket-protocol", EXTENDED_SUBPROTOCOL),
            identity: None,
            accept_key: derive_accept_key(key.as_bytes()),
            leftover: Vec::new(),
        })
    }

    /// Identifies the client by its token, as `auth` requires, and checks it may join.
    pub fn authenticate(
        &mut self,
        head: &Head,
        auth: &Authenticator,
        cookie: &str,
    ) -> Result<(), (Status, &'static str)> {
        if auth.mode == Mode::Off {
            return Ok(());
        }
        let identity = match token_in(head, cookie) {
            Some(token) => auth
                .verify(token, now_secs())
                .map_err(|refusal| (Status::Unauthorized, refusal.reason()))?,
            None if auth.mode == Mode::Required => {
                return Err((Status::Unauthorized, "token required"));
            }
            None => return Ok(()),
        };
        if let Target::Chat { room, .. } = &self.target
            && !identity.rooms.allows(room)
        {
            return Err((Status::Forbidden, "room not granted by the token"));
        }
        self.identity = Some(identity);
        Ok(())
    }

    fn response(&self) -> String {
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
    }

    /// Writes the 101 within `limit`.
    pub async fn accept(&self, stream: &mut TcpStream, limit: Duration) -> std::io::Result<()> {
        match timeout(limit, stream.write_all(self.response().as_bytes())).await {
            Ok(result) => result,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Refuses the upgrade after all (the broker is away, say), within `limit`.
    pub async fn refuse(stream: &mut TcpStream, limit: Duration, status: Status, reason: &str) {
        let _ = timeout(limit, stream.write_all(&error_response(status, reason))).await;
    }
}

/// The subprotocol entry that carries a token from a browser, which cannot set headers on a
/// WebSocket; it is never echoed back.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "roomcast.token.";

/// The token in the `Authorization` header, else a `roomcast.token.` subprotocol entry,
/// else the cookie. Never the URL: proxies log URLs.
fn token_in<'a>(head: &'a Head, cookie: &str) -> Option<&'a str> {
    if let Some(token) = head.bearer() {
        return Some(token);
    }
    if let Some(token) = head
        .tokens("sec-websocket-protocol")
        .find_map(|entry| entry.strip_prefix(TOKEN_SUBPROTOCOL_PREFIX))
    {
        return Some(token);
    }
    head.tokens_by("cookie", ';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name.trim() == cookie).then_some(value.trim())
    })
}

/// A `Sec-WebSocket-Key`: 16 bytes in base64.
fn is_nonce(key: &str) -> bool {
    key.len() == 24 && STANDARD.decode(key).is_ok_and(|bytes| bytes.len() == 16)
}

/// Whether a browser at `origin` may open a WebSocket on `host`.
fn origin_allowed(origin: &str, host: &str, origins: &Origins) -> bool {
    let Origins::SameAnd(extra) = origins else {
        return true;
    };
    if extra
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let origin_authority = authority.strip_suffix(default_port).unwrap_or(authority);
    let host = host.strip_suffix(default_port).unwrap_or(host);
    origin_authority.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::head_for;

    const UPGRADE: &str = "Host: chat.example\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    fn check(extra: &str, origins: &Origins) -> Result<Upgrade, (Status, &'static str)> {
        let head = head_for(&format!("GET /ws/echo HTTP/1.1\r\n{UPGRADE}{extra}\r\n"));
        Upgrade::check(&head, Target::Echo, origins)
    }

    fn same() -> Origins {
        Origins::SameAnd(Vec::new())
    }

    #[test]
    fn accepts_a_valid_handshake_with_the_right_key() {
        let upgrade = check("", &same()).unwrap();
        assert_eq!(upgrade.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(!upgrade.extended);
        let extended = check("Sec-WebSocket-Protocol: x, roomcast.v1\r\n", &same()).unwrap();
        assert!(
            extended
                .response()
                .contains("Sec-WebSocket-Protocol: roomcast.v1\r\n")
        );
    }

    #[test]
    fn refuses_what_rfc_6455_refuses() {
        let request = |headers: &str| {
            let head = head_for(&format!("GET /ws/echo HTTP/1.1\r\n{headers}\r\n"));
            Upgrade::check(&head, Target::Echo, &same())
                .map(|_| ())
                .unwrap_err()
                .0
        };
        let without = |name: &str| {
            UPGRADE
                .lines()
                .filter(|line| !line.starts_with(name))
                .map(|line| format!("{line}\n"))
                .collect::<String>()
        };
        assert_eq!(request(&without("Host")), Status::BadRequest);
        assert_eq!(request(&without("Sec-WebSocket-Key")), Status::BadRequest);
        assert_eq!(request(&without("Upgrade")), Status::UpgradeRequired);
        let short_key = UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=");
        assert_eq!(request(&short_key), Status::BadRequest);
        let bad_base64 = UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!!!!!!!!!!!!!!!!!!!!!==");
        assert_eq!(request(&bad_base64), Status::BadRequest);
        let version_8 = UPGRADE.replace("Version: 13", "Version: 8");
        assert_eq!(request(&version_8), Status::UpgradeRequired);
        assert_eq!(
            request(&format!("{UPGRADE}Host: other\r\n")),
            Status::BadRequest
        );
    }

    #[test]
    fn same_origin_by_default_others_when_listed() {
        let origin = |value: &str, origins: &Origins| {
            check(&format!("Origin: {value}\r\n"), origins).is_ok()
        };
        assert!(origin("http://chat.example", &same()));
        assert!(origin("https://CHAT.example:443", &same()));
        assert!(!origin("https://evil.example", &same()));
        assert!(!origin("http://chat.example.evil.example", &same()));
        assert!(!origin("null", &same()));
        assert!(check("", &same()).is_ok(), "no Origin: not a browser");
        let listed = Origins::SameAnd(vec!["https://app.example".into()]);
        assert!(origin("https://app.example", &listed));
        assert!(origin("https://evil.example", &Origins::Any));
    }
}
