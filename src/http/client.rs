//! Who the client is: the peer itself, or, when the peer is a trusted proxy, the address the
//! proxy reports in a PROXY protocol header (v1 or v2) or in `X-Forwarded-For`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::head::Head;
use crate::config::Cidr;

/// The v2 header's first twelve bytes.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is one line of at most this many bytes, CRLF included.
const V1_MAX: usize = 107;

/// What the start of a trusted peer's stream says.
#[derive(Debug, PartialEq, Eq)]
pub enum Proxied {
    /// Not all of the header is here yet.
    Partial,
    /// No PROXY header: the request starts here.
    Absent,
    /// A header of `length` bytes naming the client, or `None` for the proxy's own traffic
    /// (a health check sent with `LOCAL`, or an unknown family).
    Header {
        client: Option<IpAddr>,
        length: usize,
    },
    Invalid,
}

/// Reads a PROXY header from the start of `bytes`.
pub fn proxy_header(bytes: &[u8]) -> Proxied {
    if bytes.is_empty() {
        return Proxied::Partial;
    }
    let v1 = b"PROXY ";
    if bytes.len() < v1.len() && v1.starts_with(bytes)
        || bytes.len() < 12 && V2_SIGNATURE.starts_with(bytes)
    {
        return Proxied::Partial;
    }
    if bytes.starts_with(v1) {
        return version_1(bytes);
    }
    if bytes.starts_with(V2_SIGNATURE) {
        return version_2(bytes);
    }
    Proxied::Absent
}

fn version_1(bytes: &[u8]) -> Proxied {
    let Some(end) = bytes.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if bytes.len() >= V1_MAX {
            Proxied::Invalid
        } else {
            Proxied::Partial
        };
    };
    let Ok(line) = std::str::from_utf8(&bytes[..end]) else {
        return Proxied::Invalid;
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let client = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", "TCP4", source, _, _, _] => match source.parse::<Ipv4Addr>() {
            Ok(address) => Some(IpAddr::V4(address)),
            Err(_) => return Proxied::Invalid,
        },
        ["PROXY", "TCP6", source, _, _, _] => match source.parse::<Ipv6Addr>() {
            Ok(address) => Some(IpAddr::V6(address)),
            Err(_) => return Proxied::Invalid,
        },
        _ => return Proxied::Invalid,
    };
    Proxied::Header {
        client,
        length: end + 2,
    }
}

fn version_2(bytes: &[u8]) -> Proxied {
    if bytes.len() < 16 {
        return Proxied::Partial;
    }
    let (version_command, family) = (bytes[12], bytes[13]);
    let length = 16 + u16::from_be_bytes([bytes[14], bytes[15]]) as usize;
    if version_command >> 4 != 2 {
        return Proxied::Invalid;
    }
    if bytes.len() < length {
        return Proxied::Partial;
    }
    let body = &bytes[16..length];
    let client = match (version_command & 0x0f, family >> 4) {
        // LOCAL: the proxy speaking for itself.
        (0, _) => None,
        (1, 1) if body.len() >= 12 => {
            let octets: [u8; 4] = body[..4].try_into().unwrap_or_default();
            Some(IpAddr::V4(octets.into()))
        }
        (1, 2) if body.len() >= 36 => {
            let octets: [u8; 16] = body[..16].try_into().unwrap_or_default();
            Some(IpAddr::V6(octets.into()))
        }
        (1, _) => None,
        _ => return Proxied::Invalid,
    };
    Proxied::Header { client, length }
}

/// The client in `X-Forwarded-For`: the rightmost entry that is not a trusted proxy, since
/// anything to its left was written by the client itself.
pub fn forwarded_for(head: &Head, trusted: &[Cidr]) -> Option<IpAddr> {
    let entries: Vec<IpAddr> = head
        .tokens("x-forwarded-for")
        .map(|entry| entry.parse().ok())
        .collect::<Option<Vec<_>>>()?;
    let is_trusted = |address: &IpAddr| trusted.iter().any(|cidr| cidr.contains(*address));
    entries
        .iter()
        .rev()
        .find(|address| !is_trusted(address))
        .or(entries.first())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::head_for;

    #[test]
    fn reads_version_1_headers() {
        let header = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 8000\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            proxy_header(header),
            Proxied::Header {
                client: Some("192.0.2.7".parse().unwrap()),
                length: 42
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::7 ::1 51000 8000\r\n";
        assert!(matches!(
            proxy_header(v6),
            Proxied::Header {
                client: Some(IpAddr::V6(_)),
                ..
            }
        ));
        assert!(matches!(
            proxy_header(b"PROXY UNKNOWN\r\n"),
            Proxied::Header { client: None, .. }
        ));
        assert_eq!(proxy_header(b"PROXY TCP4 192.0"), Proxied::Partial);
        assert_eq!(proxy_header(b"PRO"), Proxied::Partial);
        assert_eq!(proxy_header(b"PROXY TCP4 x y 1 2\r\n"), Proxied::Invalid);
        assert_eq!(proxy_header(&[b'P'; 200]), Proxied::Absent);
        assert_eq!(
            proxy_header(format!("PROXY {}", "x".repeat(200)).as_bytes()),
            Proxied::Invalid
        );
        assert_eq!(proxy_header(b"GET / HTTP/1.1\r\n"), Proxied::Absent);
    }

    #[test]
    fn reads_version_2_headers() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 9, 10, 0, 0, 1, 0xc7, 0x38, 0x1f, 0x40,
        ]);
        header.extend_from_slice(b"GET");
        assert_eq!(
            proxy_header(&header),
            Proxied::Header {
                client: Some("192.0.2.9".parse().unwrap()),
                length: 28
            }
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            proxy_header(&local),
            Proxied::Header {
                client: None,
                length: 16
            }
        );
        assert_eq!(proxy_header(&header[..20]), Proxied::Partial);
        let mut wrong_version = V2_SIGNATURE.to_vec();
        wrong_version.extend_from_slice(&[0x11, 0x11, 0, 0]);
        assert_eq!(proxy_header(&wrong_version), Proxied::Invalid);
    }

    #[test]
    fn the_rightmost_untrusted_forwarded_address_is_the_client() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let head = head_for(
            "GET / HTTP/1.1\r\nX-Forwarded-For: 6.6.6.6, 192.0.2.4\r\nX-Forwarded-For: 10.1.1.1\r\n\r\n",
        );
        assert_eq!(
            forwarded_for(&head, &trusted),
            Some("192.0.2.4".parse().unwrap())
        );
        let all_trusted = head_for("GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n");
        assert_eq!(
            forwarded_for(&all_trusted, &trusted),
            Some("10.0.0.2".parse().unwrap())
        );
        let garbage = head_for("GET / HTTP/1.1\r\nX-Forwarded-For: nonsense\r\n\r\n");
        assert_eq!(forwarded_for(&garbage, &trusted), None);
        assert_eq!(
            forwarded_for(&head_for("GET / HTTP/1.1\r\n\r\n"), &trusted),
            None
        );
    }
}
