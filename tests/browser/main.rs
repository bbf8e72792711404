//! The chat page in headless Chromium, as its users meet it. Each test starts the servers it
//! needs (roomcast processes, redis-server, HAProxy), then runs one scenario of
//! `tests/browser/scenarios.py`, which drives two browser windows with selenium, asks this test
//! for restarts and swaps ([`browser`] has the protocol), checks what the windows show, and
//! measures what a person would notice. Screenshots and each scenario's measurements go to
//! `target/screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver`, and a Python with selenium and PyJWT:
//! `ROOMCAST_PYTHON`, else `target/py-venv/bin/python` (`.ci/run` builds it from
//! `.ci/requirements.txt`). Without them the tests are skipped, or fail when `CI` is set.

mod browser;
mod servers;

use serde_json::json;
use testkit::free_port;

use browser::Browser;
use servers::Stack;

/// Two windows chat: order, HTML as text, the sender's time, focus after a click on Send, the
/// size limit checked before sending (the text stays, the user is told, the socket stays up).
#[test]
fn two_windows_chat() {
    let Some(browser) = Browser::prepare() else {
        return;
    };
    let mut stack = Stack::embedded(&[]);
    browser.run("chat", &mut stack);
}

/// The embedded broker restarted during a 3 s outage: the windows say they are reconnecting
/// (with a compact header at phone width), keep what is typed meanwhile and send it paced under
/// the rate limit, say the room started over and nothing was missed; a reload shows the history.
#[test]
fn a_restart_is_survived_and_a_reload_shows_the_history() {
    let Some(browser) = Browser::prepare() else {
        return;
    };
    let mut stack = Stack::embedded(&[]);
    browser.run("restart", &mut stack);
}

/// A window offline while more is said than the history keeps is told how many messages it
/// lost; after a restart it is told it lost nothing, in other words. The publish rate is set
/// below what the page assumes, so its sends are refused and must be retried, not dropped.
#[test]
fn the_reset_notice_says_whether_messages_were_lost() {
    let Some(browser) = Browser::prepare() else {
        return;
    };
    let mut stack = Stack::embedded(&[
        ("ROOMCAST_HISTORY", "5"),
        ("ROOMCAST_RATE", "4"),
        ("ROOMCAST_BURST", "4"),
    ]);
    browser.run("notices", &mut stack);
}

/// Two instances on Redis, one window on each; the first instance restarts while both windows
/// chat: neither misses a message, and what was replayed shows when it was sent.
#[test]
fn two_instances_on_redis_miss_nothing_across_a_restart() {
    let Some(browser) = Browser::prepare() else {
        return;
    };
    let Some(mut stack) = Stack::redis_pair(&[]) else {
        return;
    };
    browser.run("redis", &mut stack);
}

/// Signed-in users through HAProxy while blue is swapped for green: both are listed, a page
/// closed is a leave after the linger, their names are on their messages, every message reaches
/// both windows once, nobody leaves during the swap, the short-lived tokens are refreshed on the
/// open connections, and a close with 4001 (token expired) brings a fresh token and a reconnect.
#[test]
fn a_swap_through_haproxy_keeps_presence_and_delivers_once() {
    let Some(browser) = Browser::prepare() else {
        return;
    };
    const SECRET: &str = "browser-test-secret-of-at-least-32-bytes";
    let token_port = free_port();
    let token_url = format!("http://127.0.0.1:{token_port}/token");
    let env = [
        ("ROOMCAST_AUTH", "required"),
        ("ROOMCAST_AUTH_SECRET", SECRET),
        ("ROOMCAST_TOKEN_URL", token_url.as_str()),
    ];
    let Some(stack) = Stack::blue_green(&env) else {
        return;
    };
    let mut stack = stack.with(
        "token",
        json!({ "port": token_port, "secret": SECRET, "audience": "roomcast" }),
    );
    browser.run("swap", &mut stack);
}
