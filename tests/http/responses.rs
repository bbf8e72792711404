//! Fixed responses byte for byte, HEAD, keep-alive and pipelining, metrics, the page, and
//! readiness during the shutdown delay.

use testkit::http::{Connection, Response};
use testkit::{Endpoint, InProcess, WAIT, wait};

use super::{HEALTHZ, assert_error, assert_still_serving, exchange, get, get_and_close};

const HEALTHZ_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: 11\r\n\r\n";

#[tokio::test]
async fn healthz_answers_the_exact_fixed_response() {
    let server = InProcess::start(&[]);
    let response = exchange(server.addr(), &get_and_close("/healthz")).await;
    assert_eq!(
        format!("{}{}", response.head, response.text()),
        HEALTHZ,
        "{response:?}"
    );
}

#[tokio::test]
async fn readyz_answers_200_when_ready() {
    let server = InProcess::start(&[]);
    let response = exchange(server.addr(), &get_and_close("/readyz")).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(response.text(), r#"{"ready":true}"#);
}

#[tokio::test]
async fn head_healthz_gets_the_head_without_a_body() {
    let server = InProcess::start(&[]);
    let mut client = Connection::open(server.addr()).await;
    client
        .send(b"HEAD /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await;
    let bytes = client.rest().await;
    assert_eq!(String::from_utf8_lossy(&bytes), HEALTHZ_HEAD);

    // And on a kept-alive connection the next response follows the head directly.
    let mut client = Connection::open(server.addr()).await;
    client
        .send(
            format!(
                "HEAD /healthz HTTP/1.1\r\nHost: test\r\n\r\n{}",
                get_and_close("/healthz")
            )
            .as_bytes(),
        )
        .await;
    let bytes = client.rest().await;
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        format!("{HEALTHZ_HEAD}{HEALTHZ}")
    );
}

/// RFC 9110 section 9.3.2: the server MUST NOT send content in any response to HEAD,
/// error responses included.
#[tokio::test]
async fn head_requests_get_no_body_on_errors_either() {
    let server = InProcess::start(&[]);
    for (path, status) in [("/nope", 404), ("/ws/chat/lobby/", 426)] {
        let mut client = Connection::open(server.addr()).await;
        client
            .send(format!("HEAD {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await;
        let response = Response::parse(&client.rest().await).expect("a complete response");
        assert_error(&response, status);
        assert!(
            response.body.is_empty(),
            "HEAD {path} got a body: {:?}",
            response.text()
        );
    }
}

#[tokio::test]
async fn keep_alive_answers_two_requests_in_turn() {
    let server = InProcess::start(&[("ROOMCAST_HEAD_TIMEOUT_MS", "30000")]);
    let mut client = Connection::open(server.addr()).await;
    client.send(get("/healthz").as_bytes()).await;
    let first = client.response(false).await;
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, r#"{"ok":true}"#)
    );
    client.send(get("/readyz").as_bytes()).await;
    let second = client.response(false).await;
    assert_eq!(
        (second.status, second.text().as_str()),
        (200, r#"{"ready":true}"#)
    );
}

#[tokio::test]
async fn pipelined_requests_in_one_write_are_both_answered() {
    let server = InProcess::start(&[("ROOMCAST_HEAD_TIMEOUT_MS", "30000")]);
    let mut client = Connection::open(server.addr()).await;
    client
        .send(format!("{}{}", get("/healthz"), get("/readyz")).as_bytes())
        .await;
    let first = client.response(false).await;
    let second = client.response(false).await;
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, r#"{"ok":true}"#)
    );
    assert_eq!(
        (second.status, second.text().as_str()),
        (200, r#"{"ready":true}"#)
    );
    // Still open for a third.
    client.send(get_and_close("/healthz").as_bytes()).await;
    assert_eq!(String::from_utf8_lossy(&client.rest().await), HEALTHZ);
}

#[tokio::test]
async fn connection_close_closes_after_the_response() {
    // A long head timeout, so only `Connection: close` can explain a prompt close.
    let server = InProcess::start(&[("ROOMCAST_HEAD_TIMEOUT_MS", "60000")]);
    let mut client = Connection::open(server.addr()).await;
    client.send(get_and_close("/healthz").as_bytes()).await;
    let response = client.response(false).await;
    assert_eq!(response.status, 200);
    client.expect_closed_silently().await;
}

#[tokio::test]
async fn http10_closes_after_the_response() {
    let server = InProcess::start(&[("ROOMCAST_HEAD_TIMEOUT_MS", "60000")]);
    let mut client = Connection::open(server.addr()).await;
    client.send(b"GET /healthz HTTP/1.0\r\n\r\n").await;
    let response = client.response(false).await;
    assert_eq!(
        (response.status, response.text().as_str()),
        (200, r#"{"ok":true}"#)
    );
    client.expect_closed_silently().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let server = InProcess::start(&[]);
    let response = exchange(server.addr(), &get_and_close("/metrics")).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "{response:?}"
    );
    let text = response.text();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            assert!(
                comment.starts_with(" HELP ") || comment.starts_with(" TYPE "),
                "{line:?}"
            );
            continue;
        }
        let (name, value) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: u64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line:?}"));
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} has no TYPE"
        );
        samples.push((name.to_string(), value));
    }
    let sample = |name: &str| {
        samples
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert!(
        text.lines().any(|l| l == "roomcast_ready 1"),
        "not ready in {text}"
    );
    // This very request holds a connection.
    assert!(sample("roomcast_connections_open") >= 1, "{text}");
    assert!(sample("roomcast_connections_total") >= 1, "{text}");
    assert!(sample("roomcast_startup_microseconds") > 0, "{text}");
    assert_eq!(sample("roomcast_connections_rejected_total"), 0, "{text}");
}

#[tokio::test]
async fn the_chat_page_is_served_at_root_and_room_paths() {
    let server = InProcess::start(&[]);
    let mut bodies = Vec::new();
    for path in ["/", "/chat/lobby/", "/chat/lobby", "/chat/Room-1_a.b/"] {
        let response = exchange(server.addr(), &get_and_close(path)).await;
        assert_eq!(response.status, 200, "{path}: {:?}", response.head);
        assert!(
            response
                .header("content-type")
                .is_some_and(|v| v.starts_with("text/html")),
            "{path}: {:?}",
            response.head
        );
        let page = response.text().to_ascii_lowercase();
        assert!(
            page.contains("<html") || page.contains("<!doctype"),
            "{path}: not a page"
        );
        bodies.push(response.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "same page");
    // HEAD gets the head alone.
    let mut client = Connection::open(server.addr()).await;
    client
        .send(b"HEAD / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await;
    let response = Response::parse(&client.rest().await).expect("a complete response");
    assert_eq!(response.status, 200);
    assert_eq!(response.content_length(), Some(bodies[0].len()));
    assert!(response.body.is_empty(), "HEAD sent a body");
}

#[tokio::test]
async fn invalid_rooms_and_unknown_paths_are_404() {
    let server = InProcess::start(&[]);
    let long_room = "a".repeat(101);
    for path in [
        "/chat/bad%20room/".to_string(),
        "/chat/a!b/".to_string(),
        "/chat/".to_string(),
        "/chat//".to_string(),
        "/chat/a/b/".to_string(),
        format!("/chat/{long_room}/"),
        "/nope".to_string(),
        "/healthz/extra".to_string(),
        "/index.html".to_string(),
    ] {
        let response = exchange(server.addr(), &get(&path)).await;
        assert_error(&response, 404);
    }
    assert_still_serving(server.addr()).await;
}

#[tokio::test]
async fn readyz_turns_503_during_the_shutdown_delay_while_healthz_stays_200() {
    let mut server = InProcess::start(&[("ROOMCAST_SHUTDOWN_DELAY_MS", "1500")]);
    let response = exchange(server.addr(), &get_and_close("/readyz")).await;
    assert_eq!(response.status, 200, "ready before the shutdown");

    server.begin_shutdown();
    let not_ready = wait::until(
        "/readyz to change after the shutdown began",
        WAIT,
        async || match exchange(server.addr(), &get_and_close("/readyz")).await {
            response if response.status == 200 => Err("still 200".into()),
            response => Ok(response),
        },
    )
    .await;
    assert_eq!(not_ready.status, 503, "{not_ready:?}");
    assert_eq!(not_ready.text(), r#"{"ready":false}"#);
    assert_eq!(not_ready.header("cache-control"), Some("no-store"));

    let response = exchange(server.addr(), &get_and_close("/healthz")).await;
    assert_eq!(
        format!("{}{}", response.head, response.text()),
        HEALTHZ,
        "healthz during the delay"
    );

    let result = server.join(WAIT);
    assert!(result.is_ok(), "run returned {result:?}");
}
