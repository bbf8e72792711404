//! `roomcast probe [URL]`: exit 0 on a 200, exit 1 on anything else, within about a second.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Output;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Server, WAIT};

/// The probe's own limit is 1 s; this is a bound on a hang, not a benchmark.
const PROBE_BOUND: Duration = Duration::from_secs(3);

/// Runs `roomcast probe ARGS` with only `env`.
fn probe(args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let args: Vec<&str> = std::iter::once("probe")
        .chain(args.iter().copied())
        .collect();
    common::run_to_exit(&args, env)
}

fn assert_exit(output: &Output, code: i32, what: &str) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: stderr {:?}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn assert_fails(output: &Output, elapsed: Duration, what: &str) {
    assert_exit(output, 1, what);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("roomcast probe"),
        "{what}: the failure is reported on stderr"
    );
    assert!(elapsed < PROBE_BOUND, "{what}: took {elapsed:?}");
}

/// A one-connection HTTP server on a thread: it reports the request head it got, then
/// writes `answer` and closes, or with `None` holds the connection open without a word
/// until dropped.
struct FakeServer {
    addr: SocketAddr,
    requests: mpsc::Receiver<String>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(answer: Option<&'static [u8]>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (request_sender, requests) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        if started.elapsed() > WAIT
                            || !matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Empty))
                        {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(error) => panic!("accept: {error}"),
                }
            };
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(WAIT)).unwrap();
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = request_sender.send(String::from_utf8_lossy(&head).into_owned());
            match answer {
                Some(bytes) => {
                    let _ = stream.write_all(bytes);
                }
                None => {
                    let _ = stopped.recv_timeout(WAIT);
                }
            }
        });
        FakeServer {
            addr,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The request head the probe sent.
    fn request(&self) -> String {
        self.requests
            .recv_timeout(WAIT)
            .expect("the probe sent no request")
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn exits_0_on_a_ready_server() {
    let server = Server::start(&[]);
    let url = format!("http://{}/readyz", server.addr);
    let (output, elapsed) = probe(&[&url], &[]);
    assert_exit(&output, 0, &url);
    assert!(elapsed < PROBE_BOUND, "took {elapsed:?}");
}

#[test]
fn without_a_url_probes_readyz_on_the_port_of_roomcast_addr() {
    let server = Server::start(&[]);
    let addr = format!("127.0.0.1:{}", server.addr.port());
    let (output, _) = probe(&[], &[("ROOMCAST_ADDR", &addr)]);
    assert_exit(&output, 0, "ROOMCAST_ADDR of a ready server");

    // A wildcard address is probed on loopback, and the path is /readyz.
    let fake = FakeServer::start(Some(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    ));
    let addr = format!("0.0.0.0:{}", fake.addr.port());
    let (output, _) = probe(&[], &[("ROOMCAST_ADDR", &addr)]);
    assert_exit(&output, 0, "ROOMCAST_ADDR of a fake server");
    let request = fake.request();
    assert!(
        request.starts_with("GET /readyz HTTP/1.1\r\n"),
        "{request:?}"
    );
}

#[tokio::test]
async fn exits_1_on_a_server_in_its_shutdown_delay() {
    let mut server = Server::start(&[("ROOMCAST_SHUTDOWN_DELAY_MS", "5000")]);
    let url = format!("http://{}/readyz", server.addr);
    server.signal("TERM");
    let started = Instant::now();
    while !common::http_get(server.addr, "/readyz")
        .await
        .starts_with("HTTP/1.1 503 ")
    {
        assert!(started.elapsed() < WAIT, "/readyz still 200 after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (output, elapsed) = probe(&[&url], &[]);
    assert_fails(&output, elapsed, "a draining server");
    // /healthz is still 200 then, and the probe says so.
    let (output, _) = probe(&[&format!("http://{}/healthz", server.addr)], &[]);
    assert_exit(&output, 0, "healthz of a draining server");
    let (status, _) = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn exits_1_on_a_503() {
    let fake = FakeServer::start(Some(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"ready\":false}",
    ));
    let url = format!("http://{}/readyz", fake.addr);
    let (output, elapsed) = probe(&[&url], &[]);
    assert_fails(&output, elapsed, "503");
    assert!(fake.request().starts_with("GET /readyz HTTP/1.1\r\n"));
}

#[test]
fn exits_1_on_a_refused_connection() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/readyz");
    let (output, elapsed) = probe(&[&url], &[]);
    assert_fails(&output, elapsed, "refused");
}

#[test]
fn exits_1_when_the_server_never_answers() {
    let fake = FakeServer::start(None);
    let url = format!("http://{}/readyz", fake.addr);
    let (output, elapsed) = probe(&[&url], &[]);
    assert_fails(&output, elapsed, "silent server");
    // It did connect and ask; the failure is the timeout.
    assert!(fake.request().starts_with("GET /readyz "));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("timed out"), "{stderr}");
}

#[test]
fn exits_1_on_a_malformed_url() {
    for url in [
        "ftp://x",
        "http://127.0.0.1/readyz",
        "not a url",
        "http://:/",
    ] {
        let (output, elapsed) = probe(&[url], &[]);
        assert_fails(&output, elapsed, url);
    }
}
