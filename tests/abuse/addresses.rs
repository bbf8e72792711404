//! Per client address: connections past `ROOMCAST_MAX_CONNECTIONS_PER_IP` and upgrades (and
//! refused API calls) past `ROOMCAST_UPGRADE_RATE`/`_BURST` get 429 with `Retry-After`, and
//! service comes back. Behind a trusted proxy (127.0.0.1 here) the client is the one a PROXY v1 or
//! v2 header, or `X-Forwarded-For`, names; an untrusted peer's PROXY header is a 400.

use std::net::{IpAddr, SocketAddr};

use testkit::http::Response;
use testkit::{Endpoint, InProcess, WAIT, wait};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{
    connect_from, exchange_from, good_upgrade, loopback, read_head, read_to_close, shared_machine,
};

fn assert_too_many(response: &Response) {
    assert_eq!(response.status, 429, "{response:?}");
    let retry_after: u64 = response
        .header("retry-after")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no whole-second Retry-After: {response:?}"));
    assert!(retry_after >= 1, "{response:?}");
    assert_eq!(response.header("connection"), Some("close"), "{response:?}");
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";

/// A kept-alive connection from `source` that sent `prefix` then a health check and got its
/// 200: it surely counts against its address.
async fn held(source: IpAddr, server: SocketAddr, prefix: &[u8]) -> TcpStream {
    let mut stream = connect_from(source, server).await;
    stream.write_all(&[prefix, HEALTHZ].concat()).await.unwrap();
    let (response, _) = read_head(&mut stream).await;
    assert_eq!(response.status, 200, "{response:?}");
    stream
}

/// One health check from `source` after `prefix`, on a connection the server closes.
async fn health_check(source: IpAddr, server: SocketAddr, prefix: &[u8]) -> Response {
    let request = [
        prefix,
        b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    ]
    .concat();
    exchange_from(source, server, &request).await
}

#[tokio::test]
async fn connections_past_the_per_address_cap_get_429_and_come_back_after_a_close() {
    let _machine = shared_machine().await;
    let server = InProcess::start(&[
        ("ROOMCAST_MAX_CONNECTIONS_PER_IP", "2"),
        ("ROOMCAST_HEAD_TIMEOUT_MS", "60000"),
    ]);
    let (me, neighbour) = (loopback(0, 10, 1), loopback(0, 10, 2));
    let mut first = Some(held(me, server.addr(), b"").await);
    let _second = held(me, server.addr(), b"").await;

    // Refused at accept, before it sends a byte.
    let mut third = connect_from(me, server.addr()).await;
    assert_too_many(&read_to_close(&mut third).await);
    assert_eq!(
        health_check(neighbour, server.addr(), b"").await.status,
        200,
        "another address is not affected"
    );
    assert!(server.metric("roomcast_address_refusals_total").await >= 1);

    drop(first.take());
    wait::until(
        "a connection from the capped address",
        WAIT,
        async || match health_check(me, server.addr(), b"").await {
            response if response.status == 200 => Ok(()),
            response => Err(format!("{response:?}")),
        },
    )
    .await;
}

#[tokio::test]
async fn upgrades_and_api_calls_past_the_rate_get_429_and_come_back() {
    let _machine = shared_machine().await;
    let api_key = "k".repeat(32);
    let server = InProcess::start(&[
        ("ROOMCAST_UPGRADE_RATE", "2"),
        ("ROOMCAST_UPGRADE_BURST", "3"),
        ("ROOMCAST_API_KEY", &api_key),
    ]);
    let (me, neighbour) = (loopback(0, 11, 1), loopback(0, 11, 2));
    let upgrade = good_upgrade("/ws/chat/lobby/", "");
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from(me, server.addr()).await;
        stream.write_all(upgrade.as_bytes()).await.unwrap();
        assert_eq!(read_head(&mut stream).await.0.status, 101);
        open.push(stream);
    }
    let refused = exchange_from(me, server.addr(), upgrade.as_bytes()).await;
    assert_too_many(&refused);
    let body = r#"{"message":"hi"}"#;
    let publish = format!(
        "POST /api/rooms/lobby/messages HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer \
         {api_key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    // A backend with the key is not held to the address's upgrade rate; a guessed key is.
    let published = exchange_from(me, server.addr(), publish.as_bytes()).await;
    assert_eq!(published.status, 200, "{published:?}");
    let guessed = publish.replace(&api_key, &"g".repeat(32));
    assert_too_many(&exchange_from(me, server.addr(), guessed.as_bytes()).await);
    let mut elsewhere = connect_from(neighbour, server.addr()).await;
    elsewhere.write_all(upgrade.as_bytes()).await.unwrap();
    assert_eq!(read_head(&mut elsewhere).await.0.status, 101);

    // Two a second: within a second the address may upgrade again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut again = connect_from(me, server.addr()).await;
    again.write_all(upgrade.as_bytes()).await.unwrap();
    assert_eq!(read_head(&mut again).await.0.status, 101);
}

/// A PROXY v1 line naming `client`.
fn proxy_v1(client: [u8; 4]) -> Vec<u8> {
    let [a, b, c, d] = client;
    format!("PROXY TCP4 {a}.{b}.{c}.{d} 127.0.0.1 40000 8000\r\n").into_bytes()
}

/// A PROXY v2 header (PROXY command, TCP over IPv4) naming `client`, with a TLV after the
/// addresses as HAProxy may add.
fn proxy_v2(client: [u8; 4]) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    let tlv = [0x04, 0x00, 0x02, 0xab, 0xcd];
    let length = (12 + tlv.len()) as u16;
    header.extend_from_slice(&[0x21, 0x11]);
    header.extend_from_slice(&length.to_be_bytes());
    header.extend_from_slice(&client);
    header.extend_from_slice(&[127, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x40]);
    header.extend_from_slice(&tlv);
    header
}

/// Two connections naming `capped` are held; a third naming it gets 429 while three other
/// named clients, all through the same proxy, get 200; after a close it gets in.
async fn counted_per_named_client(server: &InProcess, name: fn([u8; 4]) -> Vec<u8>) {
    let proxy = loopback(0, 0, 1);
    let capped = [192, 0, 2, 1];
    let mut holders = vec![
        held(proxy, server.addr(), &name(capped)).await,
        held(proxy, server.addr(), &name(capped)).await,
    ];
    assert_too_many(&health_check(proxy, server.addr(), &name(capped)).await);
    let mut others = Vec::new();
    for last in 2..5 {
        others.push(held(proxy, server.addr(), &name([192, 0, 2, last])).await);
    }
    holders.pop();
    wait::until(
        "the named client to get in again",
        WAIT,
        async || match health_check(proxy, server.addr(), &name(capped)).await {
            response if response.status == 200 => Ok(()),
            response => Err(format!("{response:?}")),
        },
    )
    .await;
}

#[tokio::test]
async fn a_trusted_proxys_v1_and_v2_headers_are_counted_per_named_client() {
    let _machine = shared_machine().await;
    let server = InProcess::start(&[
        ("ROOMCAST_TRUSTED_PROXIES", "127.0.0.1"),
        ("ROOMCAST_MAX_CONNECTIONS_PER_IP", "2"),
        ("ROOMCAST_HEAD_TIMEOUT_MS", "60000"),
    ]);
    counted_per_named_client(&server, proxy_v1).await;
    counted_per_named_client(&server, proxy_v2).await;
    let refusals = server.metric("roomcast_address_refusals_total").await;
    assert!(
        refusals >= 2,
        "at least one refusal per header version: {refusals}"
    );
}

#[tokio::test]
async fn x_forwarded_for_from_a_trusted_proxy_names_the_rightmost_untrusted_client() {
    let _machine = shared_machine().await;
    let server = InProcess::start(&[
        ("ROOMCAST_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8"),
        ("ROOMCAST_MAX_CONNECTIONS_PER_IP", "2"),
        ("ROOMCAST_HEAD_TIMEOUT_MS", "60000"),
    ]);
    let proxy = loopback(0, 0, 1);
    let forwarded = |chain: &str, close: bool| {
        let connection = if close { "Connection: close\r\n" } else { "" };
        format!(
            "GET /healthz HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: {chain}\r\n{connection}\r\n"
        )
    };
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from(proxy, server.addr()).await;
        let request = forwarded("198.51.100.7, 10.1.2.3", false);
        stream.write_all(request.as_bytes()).await.unwrap();
        assert_eq!(read_head(&mut stream).await.0.status, 200);
        holders.push(stream);
    }
    // Whatever the client wrote to the left of its own address does not make it someone else.
    let spoofed = forwarded("203.0.113.9, 198.51.100.7", true);
    assert_too_many(&exchange_from(proxy, server.addr(), spoofed.as_bytes()).await);
    let other = forwarded("198.51.100.8", true);
    let response = exchange_from(proxy, server.addr(), other.as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
}

#[tokio::test]
async fn x_forwarded_for_from_a_peer_that_is_not_a_trusted_proxy_is_ignored() {
    let _machine = shared_machine().await;
    let server = InProcess::start(&[
        ("ROOMCAST_MAX_CONNECTIONS_PER_IP", "2"),
        ("ROOMCAST_HEAD_TIMEOUT_MS", "60000"),
    ]);
    let me = loopback(0, 13, 1);
    let claiming = |address: &str| {
        format!("GET /healthz HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: {address}\r\n\r\n")
    };
    let mut holders = Vec::new();
    for address in ["198.51.100.1", "198.51.100.2"] {
        let mut stream = connect_from(me, server.addr()).await;
        stream
            .write_all(claiming(address).as_bytes())
            .await
            .unwrap();
        assert_eq!(read_head(&mut stream).await.0.status, 200);
        holders.push(stream);
    }
    // Naming a third address does not make a third client: the peer is counted.
    let request = claiming("198.51.100.3");
    assert_too_many(&exchange_from(me, server.addr(), request.as_bytes()).await);
}

#[tokio::test]
async fn a_proxy_header_from_an_untrusted_peer_or_a_malformed_one_is_400() {
    let _machine = shared_machine().await;
    let untrusted = InProcess::start(&[]);
    let me = loopback(0, 12, 1);
    for header in [proxy_v1([192, 0, 2, 1]), proxy_v2([192, 0, 2, 1])] {
        let response = health_check(me, untrusted.addr(), &header).await;
        assert_eq!(response.status, 400, "{response:?}");
    }
    let trusted = InProcess::start(&[("ROOMCAST_TRUSTED_PROXIES", "127.0.0.0/8")]);
    for header in [
        b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n".to_vec(),
        b"PROXY SCTP 192.0.2.1 127.0.0.1 1 2\r\n".to_vec(),
        [b"PROXY TCP4 ".as_slice(), &[b'9'; 120]].concat(),
        b"\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x00".to_vec(),
    ] {
        let response = health_check(me, trusted.addr(), &header).await;
        assert_eq!(response.status, 400, "{header:?}: {response:?}");
        assert!(response.text().contains("PROXY"), "{response:?}");
    }
    // Without a header, a trusted peer is its own client.
    assert_eq!(health_check(me, trusted.addr(), b"").await.status, 200);
}
