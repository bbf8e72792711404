//! The PROXY header reader and `X-Forwarded-For`: no bytes panic the reader and a header it
//! reads is never longer than the bytes; v1 and v2 headers built from any addresses are read
//! back with their exact length, any shorter prefix asks for more, and what follows is left
//! alone; the forwarded client is the rightmost untrusted entry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use roomcast::config::Cidr;
use roomcast::http::client::{Proxied, forwarded_for, proxy_header};
use roomcast::http::head::parse_head;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn v1(source: IpAddr, destination: IpAddr, ports: (u16, u16)) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {source} {destination} {} {}\r\n",
        ports.0, ports.1
    )
    .into_bytes()
}

/// A v2 header: PROXY or LOCAL, the addresses of `source`'s family, then `tlvs` bytes.
fn v2(local: bool, source: IpAddr, ports: (u16, u16), tlvs: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let family = match source {
        IpAddr::V4(v4) => {
            body.extend_from_slice(&v4.octets());
            body.extend_from_slice(&Ipv4Addr::LOCALHOST.octets());
            0x11
        }
        IpAddr::V6(v6) => {
            body.extend_from_slice(&v6.octets());
            body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
            0x21
        }
    };
    body.extend_from_slice(&ports.0.to_be_bytes());
    body.extend_from_slice(&ports.1.to_be_bytes());
    body.extend_from_slice(tlvs);
    let mut header = V2_SIGNATURE.to_vec();
    header.push(if local { 0x20 } else { 0x21 });
    header.push(family);
    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
    header.extend_from_slice(&body);
    header
}

fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn same_family(address: IpAddr) -> impl Strategy<Value = (IpAddr, IpAddr)> {
    match address {
        IpAddr::V4(_) => any::<[u8; 4]>()
            .prop_map(move |d| (address, IpAddr::from(d)))
            .boxed(),
        IpAddr::V6(_) => any::<[u8; 16]>()
            .prop_map(move |d| (address, IpAddr::from(d)))
            .boxed(),
    }
}

/// Bytes that start like a PROXY header often enough to reach its parsers.
fn proxy_ish() -> impl Strategy<Value = Vec<u8>> {
    let start = prop_oneof![
        Just(b"PROXY ".to_vec()),
        Just(b"PROXY TCP4 ".to_vec()),
        Just(b"PROXY TCP6 ".to_vec()),
        Just(V2_SIGNATURE.to_vec()),
        Just(Vec::new()),
    ];
    (start, prop::collection::vec(any::<u8>(), 0..200))
        .prop_map(|(start, rest)| [start, rest].concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_bytes_panic_the_reader(bytes in proxy_ish()) {
        match proxy_header(&bytes) {
            Proxied::Header { length, .. } => prop_assert!(length <= bytes.len()),
            Proxied::Partial => prop_assert!(bytes.len() < 16 + usize::from(u16::MAX)),
            Proxied::Absent | Proxied::Invalid => {}
        }
    }

    #[test]
    fn a_v1_header_is_read_back_and_its_prefixes_wait(
        (source, destination) in address().prop_flat_map(same_family),
        ports: (u16, u16),
        after in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let header = v1(source, destination, ports);
        let bytes = [header.as_slice(), &after].concat();
        prop_assert_eq!(
            proxy_header(&bytes),
            Proxied::Header { client: Some(source), length: header.len() }
        );
        for cut in 1..header.len() {
            prop_assert_eq!(proxy_header(&header[..cut]), Proxied::Partial, "{}", cut);
        }
    }

    #[test]
    fn a_v2_header_is_read_back_and_its_prefixes_wait(
        local: bool,
        source in address(),
        ports: (u16, u16),
        tlvs in prop::collection::vec(any::<u8>(), 0..64),
        after in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let header = v2(local, source, ports, &tlvs);
        let bytes = [header.as_slice(), &after].concat();
        let client = (!local).then_some(source);
        prop_assert_eq!(
            proxy_header(&bytes),
            Proxied::Header { client, length: header.len() }
        );
        for cut in 1..header.len() {
            prop_assert_eq!(proxy_header(&header[..cut]), Proxied::Partial, "{}", cut);
        }
    }

    #[test]
    fn the_forwarded_client_is_the_rightmost_untrusted_entry(
        chain in prop::collection::vec((any::<bool>(), any::<[u8; 3]>()), 1..8),
    ) {
        // Trusted entries are in 10.0.0.0/8, the others in 198.18.0.0/15's neighbourhood.
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let entries: Vec<IpAddr> = chain
            .iter()
            .map(|(is_trusted, [a, b, c])| {
                let first = if *is_trusted { 10 } else { 198 };
                IpAddr::from([first, *a, *b, *c])
            })
            .collect();
        let list: Vec<String> = entries.iter().map(IpAddr::to_string).collect();
        let request = format!("GET / HTTP/1.1\r\nX-Forwarded-For: {}\r\n\r\n", list.join(", "));
        let (head, _) = parse_head(request.as_bytes()).unwrap().unwrap();
        let expected = entries
            .iter()
            .rev()
            .find(|entry| !trusted[0].contains(**entry))
            .or(entries.first())
            .copied();
        prop_assert_eq!(forwarded_for(&head, &trusted), expected);
    }
}
