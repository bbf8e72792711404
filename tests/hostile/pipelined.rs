//! Pipelined requests whose responses are never read: the server's writes stall, and the
//! connection is closed within the peer timeout of that.

use std::time::Duration;

use testkit::raw_ws::tcp;
use testkit::{Endpoint, WAIT, metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{LATE, PEER_TIMEOUT, SHORT_CLOCK, attacked, figure};

const REQUESTS: usize = 3000;

#[tokio::test]
async fn unread_pipelined_responses_are_cut_within_the_peer_timeout() {
    let server = attacked(SHORT_CLOCK);
    // The connection that reads `/metrics` is open while it is answered.
    let idle = server.metric("roomcast_connections_open").await;
    let stream = tcp(server.addr(), Some(4096)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let requests = "GET / HTTP/1.1\r\nHost: hostile\r\n\r\n".repeat(REQUESTS);
    // Written on the side: the server stops reading requests once its answers stall.
    let sent_at = Instant::now();
    let writing = tokio::spawn(async move {
        let _ = tokio::time::timeout(WAIT, writer.write_all(requests.as_bytes())).await;
        writer
    });
    server
        .wait_metric("roomcast_connections_open", idle + 1)
        .await;

    let cut_after = loop {
        let open = metrics::read(server.addr(), "roomcast_connections_open").await;
        if open == idle {
            break sent_at.elapsed();
        }
        assert!(
            sent_at.elapsed() < WAIT,
            "{} connections open {WAIT:?} after the pipeline",
            open - idle
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    figure(
        "unread pipelined responses",
        &format!("{REQUESTS} x GET / never read: closed {cut_after:?} after they were sent"),
    );
    assert!(
        cut_after <= PEER_TIMEOUT + LATE,
        "closed {cut_after:?} after the requests; expected at most {:?}",
        PEER_TIMEOUT + LATE
    );
    // The client's socket sees the end: what is buffered, then end of stream or a reset.
    let drained = tokio::time::timeout(Duration::from_secs(2), async {
        let mut chunk = vec![0u8; 64 * 1024];
        while let Ok(n) = reader.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the client's connection is still open");
    drop(writing.await.unwrap());
}
