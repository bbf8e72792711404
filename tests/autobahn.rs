//! The Autobahn|Testsuite fuzzing client against `/ws/echo`, served in this process.
//!
//! Needs Python 2.7 (pyenv's 2.7.18, or AUTOBAHN_PYTHON2) and PyPI; `.ci/autobahn` builds its
//! environment once. Without Python 2.7 the test is skipped, or fails when `CI` is set.

use std::path::Path;
use std::process::Command;

use testkit::{Endpoint, InProcess, skip_or_fail};

fn python2() -> Option<String> {
    if let Some(explicit) = std::env::var_os("AUTOBAHN_PYTHON2") {
        return Some(explicit.to_string_lossy().into_owned());
    }
    let pyenv = Path::new(&std::env::var("HOME").unwrap_or_default())
        .join(".pyenv/versions/2.7.18/bin/python");
    pyenv.exists().then(|| pyenv.to_string_lossy().into_owned())
}

#[test]
fn autobahn_fuzzing_client_finds_no_failure() {
    if python2().is_none() {
        skip_or_fail("no Python 2.7 for Autobahn (install pyenv's 2.7.18 or set AUTOBAHN_PYTHON2)");
        return;
    }
    let server = InProcess::start(&[
        ("ROOMCAST_ECHO", "1"),
        ("ROOMCAST_MAX_MESSAGE_BYTES", "67108864"),
        // The fuzzer sends messages of up to 16 MiB, several at once.
        ("ROOMCAST_SEND_QUEUE_BYTES", "68000000"),
        ("ROOMCAST_INBOUND_BUDGET_BYTES", "1073741824"),
        // It opens hundreds of connections from one address, and pings in bursts.
        ("ROOMCAST_UPGRADE_RATE", "100000"),
        ("ROOMCAST_UPGRADE_BURST", "100000"),
        ("ROOMCAST_RATE", "100000"),
        ("ROOMCAST_BURST", "100000"),
    ]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/autobahn");
    let report = Path::new(env!("CARGO_TARGET_TMPDIR")).join("autobahn");
    let output = Command::new(script)
        .arg(server.ws_url("/ws/echo"))
        .arg(&report)
        .env("AUTOBAHN_AGENT", "roomcast")
        .output()
        .expect("run .ci/autobahn");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The summary line (OK / NON-STRICT / INFORMATIONAL / UNIMPLEMENTED / FAILED counts).
    eprintln!("{stdout}{stderr}");
    assert!(
        output.status.success(),
        "Autobahn reported failures; report in {}",
        report.display()
    );
    assert!(stdout.contains("FAILED 0"), "{stdout}");
}
