//! HAProxy from a config text, on loopback ports the caller chose: its servers' states read
//! from the stats page. Killed on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::child::Child;
use crate::http;
use crate::tempdir::TempDir;
use crate::tools;
use crate::wait;

pub struct Haproxy {
    child: Child,
    /// Where the config says `stats uri /stats`.
    stats: SocketAddr,
    /// Holds the config file.
    _dir: TempDir,
}

impl Haproxy {
    /// `haproxy` on PATH or in /usr/sbin (Debian's place, not on every PATH); when there is
    /// none, [`tools::skip_or_fail`] has said so.
    pub fn program() -> Option<PathBuf> {
        tools::require_program(
            &["haproxy", "/usr/sbin/haproxy"],
            "apt-get install -y haproxy",
        )
    }

    /// Runs `program -db -f <config>` and waits until the stats page at `stats` accepts
    /// connections.
    pub fn start(program: &Path, config: &str, stats: SocketAddr) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Child::spawn(Command::new(program).arg("-db").arg("-f").arg(&path))
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", program.display()));
        let mut haproxy = Haproxy {
            child,
            stats,
            _dir: dir,
        };
        wait::until_blocking("haproxy to listen", Duration::from_secs(10), || {
            haproxy.assert_running();
            TcpStream::connect(stats)
                .map(drop)
                .map_err(|error| format!("{error}; its output:\n{}", haproxy.output()))
        });
        haproxy
    }

    pub fn output(&self) -> String {
        self.child.output().join("\n")
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait() {
            panic!("haproxy exited with {status}:\n{}", self.output());
        }
    }

    /// The `status` column of `server` in `backend` in the stats CSV (`UP`, `DOWN`, ...), or
    /// empty when the page does not answer.
    pub fn status(&self, backend: &str, server: &str) -> String {
        let Ok(response) = http::get_blocking(self.stats, "/stats;csv") else {
            return String::new();
        };
        let body = response.text();
        let mut lines = body.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = header
            .iter()
            .position(|name| *name == "status")
            .unwrap_or(17);
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&backend) && fields.get(1) == Some(&server))
            .and_then(|fields| fields.get(column).map(|s| s.to_string()))
            .unwrap_or_default()
    }

    /// Waits (at most 15 s) until `server` in `backend` shows `wanted`, e.g. `UP`.
    pub fn wait_status(&mut self, backend: &str, server: &str, wanted: &str) {
        let what = format!("haproxy to show {backend}/{server} {wanted}");
        wait::until_blocking(&what, Duration::from_secs(15), || {
            self.assert_running();
            match self.status(backend, server) {
                status if status.starts_with(wanted) => Ok(()),
                status => Err(format!(
                    "it shows {status:?}; its output:\n{}",
                    self.output()
                )),
            }
        });
    }
}

/// The blue-green front the tests run: `blue` and `green` on loopback behind `front`,
/// checked on `/readyz` every 200 ms, each client named in a PROXY v2 header, `/metrics`
/// kept inside, and the stats page on `stats`.
pub fn blue_green_config(front: SocketAddr, stats: SocketAddr, blue: u16, green: u16) -> String {
    format!(
        "global
    log stdout format raw local0 notice
defaults
    mode http
    log global
    option redispatch
    retries 3
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-request 5s
    timeout check 1s
    timeout tunnel 1h
frontend chat
    bind {front}
    option forwardfor
    http-request deny deny_status 404 if {{ path_beg /metrics }}
    default_backend roomcast
backend roomcast
    balance leastconn
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host roomcast
    http-check expect status 200
    default-server check inter 200ms fastinter 100ms downinter 200ms fall 2 rise 2 send-proxy-v2 check-send-proxy
    server blue 127.0.0.1:{blue}
    server green 127.0.0.1:{green}
frontend stats
    bind {stats}
    stats enable
    stats uri /stats
    no log
"
    )
}
