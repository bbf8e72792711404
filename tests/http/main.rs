//! The HTTP/1.1 front end over raw TCP, against a server in this process: fixed responses,
//! keep-alive, metrics and the page ([`responses`]), every error status ([`errors`]), the
//! WebSocket upgrade's checks ([`upgrades`]) and the connection cap ([`cap`]).

mod cap;
mod errors;
mod responses;
mod upgrades;

use std::net::SocketAddr;

use testkit::http::{Connection, Response};

const HEALTHZ: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";

/// Sends `request` on a fresh connection and returns the response the server closes after.
async fn exchange(addr: SocketAddr, request: &str) -> Response {
    let mut client = Connection::open(addr).await;
    client.send(request.as_bytes()).await;
    client.closing_response().await
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

fn get_and_close(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
}

/// After an error on one connection, a fresh client still gets the exact `/healthz` answer.
async fn assert_still_serving(addr: SocketAddr) {
    let mut client = Connection::open(addr).await;
    client.send(get_and_close("/healthz").as_bytes()).await;
    let bytes = client.rest().await;
    assert_eq!(String::from_utf8_lossy(&bytes), HEALTHZ);
}

fn assert_error(response: &Response, status: u16) {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "an error closes the connection: {response:?}"
    );
}
