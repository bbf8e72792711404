//! The command line: `roomcast probe [URL]` exits 0 on a 200 and 1 on anything else, within
//! about a second; bad configuration and unknown arguments exit 64; `--version` and `--help`.
//!
//! The probe and the command line are the binary's; the servers it probes run in this process.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Output;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use testkit::{Endpoint, InProcess, Roomcast, WAIT, http, wait};

/// The probe's own limit is 1 s; this is a bound on a hang, not a benchmark.
const PROBE_BOUND: Duration = Duration::from_secs(3);

/// Runs `roomcast ARGS` with only `env`.
fn roomcast(args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    Roomcast::binary(env!("CARGO_BIN_EXE_roomcast"))
        .args(args)
        .envs(env)
        .run_to_exit()
}

/// Runs `roomcast probe ARGS` with only `env`.
fn probe(args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let args: Vec<&str> = std::iter::once("probe")
        .chain(args.iter().copied())
        .collect();
    roomcast(&args, env)
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
    let server = InProcess::start(&[]);
    let url = format!("http://{}/readyz", server.addr());
    let (output, elapsed) = probe(&[&url], &[]);
    assert_exit(&output, 0, &url);
    assert!(elapsed < PROBE_BOUND, "took {elapsed:?}");
}

#[test]
fn without_a_url_probes_readyz_on_the_port_of_roomcast_addr() {
    let server = InProcess::start(&[]);
    let addr = format!("127.0.0.1:{}", server.addr().port());
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
    let mut server = InProcess::start(&[("ROOMCAST_SHUTDOWN_DELAY_MS", "5000")]);
    let url = format!("http://{}/readyz", server.addr());
    server.begin_shutdown();
    wait::until("/readyz to turn 503", WAIT, async || {
        match http::get(server.addr(), "/readyz").await.status {
            503 => Ok(()),
            status => Err(format!("it answers {status}")),
        }
    })
    .await;
    let (output, elapsed) = probe(&[&url], &[]);
    assert_fails(&output, elapsed, "a draining server");
    // /healthz is still 200 then, and the probe says so.
    let (output, _) = probe(&[&format!("http://{}/healthz", server.addr())], &[]);
    assert_exit(&output, 0, "healthz of a draining server");
    let result = server.join(WAIT);
    assert!(result.is_ok(), "run returned {result:?}");
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

#[test]
fn bad_configuration_exits_64_and_names_the_variable() {
    for (name, value) in [
        ("ROOMCAST_MAX_CONNECTIONS", "lots"),
        ("ROOMCAST_HEAD_TIMEOUT_MS", "soon"),
        ("ROOMCAST_ECHO", "maybe"),
    ] {
        let (output, _) = roomcast(&[], &[("ROOMCAST_ADDR", "127.0.0.1:0"), (name, value)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{name}={value}: {stderr}");
        assert!(stderr.contains(name), "{name}={value}: {stderr}");
    }
}

#[test]
fn an_unknown_subcommand_exits_64() {
    for args in [&["frobnicate"][..], &["serve", "extra"], &["--nope"]] {
        let (output, _) = roomcast(args, &[("ROOMCAST_ADDR", "127.0.0.1:0")]);
        assert_eq!(
            output.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn version_and_help_exit_0() {
    let (output, _) = roomcast(&["--version"], &[]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("roomcast {}", env!("CARGO_PKG_VERSION"))
    );

    let (output, _) = roomcast(&["--help"], &[]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("usage"), "{help}");
    assert!(help.contains("probe"), "{help}");
}
