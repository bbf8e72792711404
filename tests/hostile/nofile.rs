//! The open-file limit: under `nofile 256` the connection cap is lowered to fit (and said
//! so), idle WebSockets past it get 503 with Retry-After, and health checks still answer.

use serde_json::Value;
use testkit::bench::LOAD_GENERATOR_LIMITS;
use testkit::http::Connection;
use testkit::raw_ws::{Open, RawWs};
use testkit::{Endpoint, Roomcast, WAIT, http, metrics, wait};

use super::figure;

const NOFILE: u64 = 256;
/// Descriptors roomcast keeps back from the cap for itself and for health checks.
const RESERVE: u64 = 128;
const CAP: u64 = NOFILE - RESERVE;
const ATTEMPTS: usize = 300;

/// A log line as JSON, if it is the one named `msg`.
fn log_entry(line: &str, msg: &str) -> Option<Value> {
    let entry: Value = serde_json::from_str(line).ok()?;
    (entry["msg"] == msg).then_some(entry)
}

async fn health(addr: std::net::SocketAddr, path: &str) -> u16 {
    let mut client = Connection::open(addr).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: hostile\r\nConnection: close\r\n\r\n");
    client.send(request.as_bytes()).await;
    client.closing_response().await.status
}

#[tokio::test]
async fn under_nofile_256_the_cap_is_lowered_and_health_checks_still_answer() {
    // One address opens hundreds of sockets on purpose: its own caps are lifted.
    let server = Roomcast::debug()
        .envs(LOAD_GENERATOR_LIMITS)
        .nofile(NOFILE)
        .start();
    let logs = server.logs();
    let warning = logs
        .iter()
        .find_map(|line| log_entry(line, "connection cap lowered to fit the open-file limit"))
        .unwrap_or_else(|| panic!("no warning about the lowered cap in {logs:?}"));
    assert_eq!(warning["level"], "warn", "{warning}");
    assert_eq!(warning["cap"], CAP, "{warning}");
    assert_eq!(warning["nofile"], NOFILE, "{warning}");
    let listening = logs
        .iter()
        .find_map(|line| log_entry(line, "listening"))
        .expect("a listening line");
    figure(
        "open-file limit",
        &format!("under nofile {NOFILE}: {warning} then {listening}"),
    );

    let mut admitted = Vec::new();
    let mut refused = 0;
    for _ in 0..ATTEMPTS {
        match RawWs::open(server.addr(), Open::path("/ws/chat/crowd/")).await {
            Ok(Ok(ws)) => admitted.push(ws),
            Ok(Err(response)) => {
                assert_eq!(response.status, 503, "{response:?}");
                assert_eq!(response.header("retry-after"), Some("1"), "{response:?}");
                refused += 1;
            }
            Err(error) => panic!("a connection failed instead of being answered: {error}"),
        }
    }
    assert_eq!(admitted.len() as u64, CAP, "WebSockets admitted");
    assert_eq!(refused, ATTEMPTS - CAP as usize);

    // At the cap, health checks still get through: the binary's own probe and a raw GET.
    let url = format!("http://{}/readyz", server.addr());
    let (output, took) =
        tokio::task::spawn_blocking(move || Roomcast::debug().args(&["probe", &url]).run_to_exit())
            .await
            .unwrap();
    assert!(
        output.status.success(),
        "probe at the cap: {:?} after {took:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(health(server.addr(), "/readyz").await, 200);
    assert_eq!(health(server.addr(), "/healthz").await, 200);
    let logs = server.logs();
    let accept_failures: Vec<&String> = logs
        .iter()
        .filter(|line| log_entry(line, "accept failed").is_some())
        .collect();
    assert!(accept_failures.is_empty(), "{accept_failures:?}");

    // A slot that frees up is taken again.
    drop(admitted.pop());
    let again =
        wait::until(
            "a WebSocket admitted after one closed",
            WAIT,
            async || match RawWs::open(server.addr(), Open::path("/ws/chat/crowd/")).await {
                Ok(Ok(ws)) => Ok(ws),
                Ok(Err(response)) => Err(format!("answered {}", response.status)),
                Err(error) => Err(error.to_string()),
            },
        )
        .await;
    drop((again, admitted));

    // Every refusal was counted; `/metrics` itself is refused until the sockets are gone.
    wait::until("the refusals counted", WAIT, async || {
        let page = http::try_get(server.addr(), "/metrics")
            .await
            .map_err(|error| error.to_string())?;
        match metrics::sample(&page.text(), "roomcast_connections_rejected_total") {
            Some(n) if n >= refused as u64 => Ok(()),
            other => Err(format!("status {}, rejected {other:?}", page.status)),
        }
    })
    .await;

    // Last, so everything above is checked whatever this says: the line operators read
    // first says how many connections the server will take.
    let says_cap = listening.as_object().is_some_and(|fields| {
        fields
            .iter()
            .any(|(name, value)| name != "startup_us" && *value == CAP)
    });
    assert!(
        says_cap,
        "the listening line does not show the lowered cap {CAP}: {listening}"
    );
}
