//! Malformed request heads and frames that the front end already refused before the limits
//! came: obsolete line folding, NULs, header values that are not UTF-8, a body on a GET
//! (also on an upgrade), and a text frame that is not UTF-8.

use futures_util::SinkExt;
use testkit::http::exchange;
use testkit::ws::{chat, connect, expect_close, recv_json, send_chat};
use testkit::{Endpoint, InProcess};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use super::{good_upgrade, shared_machine};

#[tokio::test]
async fn folded_nul_and_non_utf8_headers_and_bodies_on_get_are_400() {
    let _machine = shared_machine().await;
    let server = InProcess::start(&[]);
    let cases: [(&str, Vec<u8>); 7] = [
        (
            "an obsolete folded header",
            b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Note: one\r\n  two\r\n\r\n".to_vec(),
        ),
        (
            "a NUL in a header value",
            b"GET /healthz HTTP/1.1\r\nHost: te\0st\r\n\r\n".to_vec(),
        ),
        (
            "a NUL in the target",
            b"GET /heal\0thz HTTP/1.1\r\nHost: test\r\n\r\n".to_vec(),
        ),
        (
            "a Latin-1 header value",
            b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Name: Andr\xe9\r\n\r\n".to_vec(),
        ),
        (
            "an invalid UTF-8 sequence in a value",
            b"GET / HTTP/1.1\r\nHost: test\r\nCookie: a=\xc3\x28\r\n\r\n".to_vec(),
        ),
        (
            "Transfer-Encoding on a GET",
            b"GET /healthz HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "Transfer-Encoding on an upgrade",
            good_upgrade("/ws/chat/lobby/", "Transfer-Encoding: chunked\r\n").into_bytes(),
        ),
    ];
    for (what, request) in cases {
        let response = exchange(server.addr(), &request).await;
        assert_eq!(response.status, 400, "{what}: {response:?}");
        assert_eq!(response.header("connection"), Some("close"), "{what}");
    }
    let health = testkit::http::get(server.addr(), "/healthz").await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_1007_and_the_room_goes_on() {
    let _machine = shared_machine().await;
    let server = InProcess::start(&[]);
    let url = server.ws_url("/ws/chat/utf8/");
    let mut bystander = connect(&url, false).await;
    let mut ws = connect(&url, false).await;
    server.wait_metric("roomcast_websockets_open", 2).await;
    let frame = Frame::message(
        b"{\"message\":\"\xff\xfe\"}".to_vec(),
        OpCode::Data(Data::Text),
        true,
    );
    ws.send(Message::Frame(frame)).await.unwrap();
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 1007, "{reason}");
    send_chat(&mut bystander, "fine").await;
    assert_eq!(chat(&recv_json(&mut bystander).await), ("fine".into(), 1));
}
