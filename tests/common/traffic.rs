//! Chat traffic through a proxy across a blue-green swap, and the zero-loss check.
//!
//! Used by tests/bluegreen.rs (processes) and tests/containers.rs (compose) through
//! `#[path = "common/traffic.rs"] mod traffic;`, next to `mod common;`.
//!
//! Every client speaks the extended protocol (`roomcast.v1`) and resumes the way the embedded
//! page does: on a close (1012 on a restart) or a broken connection it reconnects through the
//! proxy with `?since=<last seq>&epoch=<epoch>` after a short jittered backoff. Clients keep
//! every seq they are sent, so duplicates and gaps are visible to the check. One client is
//! also the publisher: it sends `p<n>` at a steady rate, and re-sends a message it has not seen
//! come back (its own copy, live or replayed) a while after it was sent, connected again.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::Ws;

/// A message not seen back this long after it was sent is sent again. Longer than a drain
/// flush takes, so a message held by the old colour is not sent twice.
const RESEND_AFTER: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may take to send its welcome, and to finish after a close.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// What one client saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub name: String,
    /// The room's seq in the first welcome: this client expects every seq after it.
    pub base: Option<u64>,
    pub last_seq: u64,
    /// Chat messages in the order they arrived, duplicates left out.
    pub received: Vec<(u64, String)>,
    /// Seqs that arrived again (at or below the last one).
    pub duplicates: Vec<u64>,
    /// (last seq, next seq) wherever the next was not last + 1.
    pub gaps: Vec<(u64, u64)>,
    /// `reset` and `error` frames, verbatim.
    pub notices: Vec<String>,
    /// How each connection ended: "1012 server restart", "no close frame: ...".
    pub endings: Vec<String>,
    pub epochs: Vec<String>,
    pub connects: u32,
    pub connect_failures: u32,
    /// From the end of one connection to the welcome on the next, for each reconnect.
    pub outages: Vec<Duration>,
    /// Publisher only: messages sent (ids 1..=sent), re-sent, and still unconfirmed.
    pub sent: u64,
    pub resent: u64,
    pub pending: usize,
    /// Publisher only: own messages that came back more than once (after a re-send).
    pub echoed_twice: u64,
    pub failure: Option<String>,
}

/// Switches shared by every client of one run.
#[derive(Default)]
pub struct Control {
    /// The publisher sends while this is set.
    pub sending: AtomicBool,
    /// Cleared: a client whose connection ends stops instead of reconnecting.
    pub reconnect: AtomicBool,
}

pub struct Client {
    pub tally: Arc<Mutex<Tally>>,
    task: JoinHandle<()>,
}

impl Client {
    pub fn snapshot(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }
}

/// `members` readers plus one publisher (publishing every `every`) in `room` behind `proxy`.
pub struct Traffic {
    pub control: Arc<Control>,
    pub members: Vec<Client>,
    pub publisher: Client,
}

impl Traffic {
    /// Connects everyone and waits for every welcome; the publisher has not started yet.
    pub async fn connect(
        proxy: SocketAddr,
        room: &str,
        members: usize,
        every: Duration,
    ) -> Traffic {
        let control = Arc::new(Control::default());
        control.reconnect.store(true, Ordering::SeqCst);
        let base = format!("ws://{proxy}/ws/chat/{room}/");
        let spawn = |name: String, publish: Option<Duration>, seed: u64| {
            let tally = Arc::new(Mutex::new(Tally {
                name,
                ..Tally::default()
            }));
            let task = tokio::spawn(run_client(
                base.clone(),
                Arc::clone(&tally),
                Arc::clone(&control),
                publish,
                seed,
            ));
            Client { tally, task }
        };
        let members = (0..members)
            .map(|i| spawn(format!("member {i}"), None, i as u64 + 1))
            .collect();
        let publisher = spawn("publisher".into(), Some(every), 0x5eed);
        let traffic = Traffic {
            control,
            members,
            publisher,
        };
        traffic
            .wait_until(
                "every client has its welcome",
                Duration::from_secs(20),
                |t| t.connects > 0,
            )
            .await;
        traffic
    }

    pub fn clients(&self) -> impl Iterator<Item = &Client> {
        self.members.iter().chain(std::iter::once(&self.publisher))
    }

    pub fn start_publishing(&self) {
        self.control.sending.store(true, Ordering::SeqCst);
    }

    /// Stops publishing, waits until the publisher has seen each of its messages come back,
    /// then until every client has the last seq. Returns that seq.
    pub async fn finish(&self, limit: Duration) -> u64 {
        self.control.sending.store(false, Ordering::SeqCst);
        let started = Instant::now();
        loop {
            let publisher = self.publisher.snapshot();
            if publisher.pending == 0 {
                break;
            }
            if let Some(failure) = &publisher.failure {
                panic!("publisher failed: {failure}\n{}", self.describe());
            }
            assert!(
                started.elapsed() < limit,
                "{} published messages never came back within {limit:?}\n{}",
                publisher.pending,
                self.describe()
            );
            sleep(Duration::from_millis(50)).await;
        }
        let last = self.publisher.snapshot().last_seq;
        self.wait_until(
            &format!("every client reaches seq {last}"),
            limit.saturating_sub(started.elapsed()),
            |t| t.last_seq >= last,
        )
        .await;
        last
    }

    /// Polls every client's tally until `done` holds for all of them.
    pub async fn wait_until(&self, what: &str, limit: Duration, done: impl Fn(&Tally) -> bool) {
        let started = Instant::now();
        loop {
            let tallies: Vec<Tally> = self.clients().map(Client::snapshot).collect();
            if let Some(failed) = tallies.iter().find(|t| t.failure.is_some()) {
                panic!(
                    "{} failed: {}\n{}",
                    failed.name,
                    failed.failure.as_deref().unwrap_or(""),
                    self.describe()
                );
            }
            if tallies.iter().all(&done) {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "timed out after {limit:?} waiting until {what}\n{}",
                self.describe()
            );
            sleep(Duration::from_millis(25)).await;
        }
    }

    /// From now on a client whose connection ends stops instead of reconnecting.
    pub fn hold_reconnects(&self) {
        self.control.sending.store(false, Ordering::SeqCst);
        self.control.reconnect.store(false, Ordering::SeqCst);
    }

    /// Waits (within `limit` in all) for every client to stop after `hold_reconnects`, aborts
    /// the rest, and returns every tally.
    pub async fn stop(mut self, limit: Duration) -> Vec<Tally> {
        self.hold_reconnects();
        let deadline = Instant::now() + limit;
        let publisher = &mut self.publisher;
        let mut tallies = Vec::new();
        for client in self.members.iter_mut().chain(std::iter::once(publisher)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if timeout(left, &mut client.task).await.is_err() {
                client.task.abort();
            }
            tallies.push(client.tally.lock().unwrap().clone());
        }
        tallies
    }

    /// Drops every connection at once (no close handshake).
    pub fn abort(&self) {
        for client in self.clients() {
            client.task.abort();
        }
    }

    /// One line per client, for failure messages.
    pub fn describe(&self) -> String {
        self.clients()
            .map(|c| summary(&c.snapshot()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.abort();
    }
}

pub fn summary(t: &Tally) -> String {
    format!(
        "  {}: base {:?}, last seq {}, {} received, {} duplicates, gaps {:?}, notices {:?}, \
         endings {:?}, {} connects, {} failed connects, sent {} resent {} pending {}{}",
        t.name,
        t.base,
        t.last_seq,
        t.received.len(),
        t.duplicates.len(),
        t.gaps.iter().take(5).collect::<Vec<_>>(),
        t.notices.iter().take(3).collect::<Vec<_>>(),
        t.endings,
        t.connects,
        t.connect_failures,
        t.sent,
        t.resent,
        t.pending,
        t.failure
            .as_ref()
            .map(|f| format!(", FAILED: {f}"))
            .unwrap_or_default()
    )
}

/// What the swap cost, over all clients.
#[derive(Debug)]
pub struct Outcome {
    pub clients: usize,
    pub last_seq: u64,
    pub sent: u64,
    pub resent: u64,
    /// Own messages the publisher saw twice, because it re-sent them.
    pub echoed_twice: u64,
    pub lost: u64,
    /// The longest time any client was without a connection, and the median of the longest
    /// per client.
    pub longest_outage: Duration,
    pub median_outage: Duration,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} clients, {} messages (seq 1..={}), {} re-sent ({} seen twice by the publisher), \
             {} lost; clients were disconnected at most {:.0?} (median of each client's longest \
             {:.0?})",
            self.clients,
            self.sent,
            self.last_seq,
            self.resent,
            self.echoed_twice,
            self.lost,
            self.longest_outage,
            self.median_outage,
        )
    }
}

/// The zero-loss check: every client saw every seq after its base exactly once, in order,
/// with the same message at each seq; every published message is in that order; every
/// connection ended with `expected_close` (the swap) and nothing else. `hint` is added to the
/// failure message.
pub fn check(tallies: &[Tally], last_seq: u64, expected_close: u16, hint: &str) -> Outcome {
    let mut problems = Vec::new();
    let publisher = tallies
        .iter()
        .find(|t| t.name == "publisher")
        .expect("a publisher");
    let mut order: BTreeMap<u64, &str> = BTreeMap::new();
    for t in tallies {
        let Some(base) = t.base else {
            problems.push(format!("{} never connected", t.name));
            continue;
        };
        if let Some(failure) = &t.failure {
            problems.push(format!("{} failed: {failure}", t.name));
        }
        let seqs: Vec<u64> = t.received.iter().map(|(seq, _)| *seq).collect();
        let expected: Vec<u64> = (base + 1..=last_seq).collect();
        if seqs != expected {
            let missing = expected.iter().filter(|s| !seqs.contains(s)).count();
            problems.push(format!(
                "{} saw {} seqs, expected {} ({base}+1..={last_seq}): {missing} missing, gaps {:?}",
                t.name,
                seqs.len(),
                expected.len(),
                t.gaps.iter().take(5).collect::<Vec<_>>()
            ));
        }
        if !t.duplicates.is_empty() {
            problems.push(format!(
                "{} was sent {} seqs twice, e.g. {:?}",
                t.name,
                t.duplicates.len(),
                &t.duplicates[..t.duplicates.len().min(5)]
            ));
        }
        if !t.notices.is_empty() {
            problems.push(format!("{} got notices {:?}", t.name, t.notices));
        }
        let unexpected: Vec<&String> = t
            .endings
            .iter()
            .filter(|e| !e.starts_with(&format!("{expected_close} ")))
            .collect();
        if t.endings.is_empty() || !unexpected.is_empty() {
            problems.push(format!(
                "{}: connections ended {:?}, expected close {expected_close} only",
                t.name, t.endings
            ));
        }
        if t.epochs.windows(2).any(|w| w[0] != w[1]) {
            problems.push(format!("{} saw the epoch change: {:?}", t.name, t.epochs));
        }
        for (seq, message) in &t.received {
            match order.get(seq) {
                Some(other) if other != message => problems.push(format!(
                    "seq {seq} is {message:?} for {} but {other:?} for another client",
                    t.name
                )),
                Some(_) => {}
                None => {
                    order.insert(*seq, message);
                }
            }
        }
    }
    let published: std::collections::HashSet<&str> = order.values().copied().collect();
    let lost: Vec<u64> = (1..=publisher.sent)
        .filter(|id| !published.contains(format!("p{id}").as_str()))
        .collect();
    if !lost.is_empty() {
        problems.push(format!(
            "{} of {} published messages are in no client's history, e.g. {:?}",
            lost.len(),
            publisher.sent,
            &lost[..lost.len().min(10)]
        ));
    }
    if !problems.is_empty() {
        let details: Vec<String> = tallies.iter().map(summary).collect();
        panic!(
            "the swap lost or repeated messages:\n- {}\n{hint}\nclients:\n{}",
            problems.join("\n- "),
            details.join("\n")
        );
    }
    let mut worst: Vec<Duration> = tallies
        .iter()
        .map(|t| t.outages.iter().copied().max().unwrap_or_default())
        .collect();
    worst.sort();
    Outcome {
        clients: tallies.len(),
        last_seq,
        sent: publisher.sent,
        resent: publisher.resent,
        echoed_twice: publisher.echoed_twice,
        lost: lost.len() as u64,
        longest_outage: worst.last().copied().unwrap_or_default(),
        median_outage: worst[worst.len() / 2],
    }
}

/// A small xorshift for backoff jitter (no rand crate in the dev-dependencies).
struct Jitter(u64);

impl Jitter {
    fn millis(&mut self, below: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(self.0 % below.max(1))
    }
}

struct Publisher {
    every: Duration,
    next_id: u64,
    /// Unconfirmed ids and when each was last sent.
    pending: BTreeMap<u64, Instant>,
}

enum Ended {
    /// The connection ended; reconnect if allowed.
    Lost,
    /// The client cannot go on.
    Failed(String),
}

async fn run_client(
    base_url: String,
    tally: Arc<Mutex<Tally>>,
    control: Arc<Control>,
    publish: Option<Duration>,
    seed: u64,
) {
    let mut jitter = Jitter(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut publisher = publish.map(|every| Publisher {
        every,
        next_id: 1,
        pending: BTreeMap::new(),
    });
    let mut backoff = Duration::from_millis(50);
    let mut lost_at: Option<Instant> = None;
    loop {
        let url = {
            let t = tally.lock().unwrap();
            match (t.base, t.epochs.last()) {
                (Some(_), Some(epoch)) => format!("{base_url}?since={}&epoch={epoch}", t.last_seq),
                _ => base_url.clone(),
            }
        };
        let ws = match open(&url).await {
            Ok(ws) => ws,
            Err(error) => {
                let failures = {
                    let mut t = tally.lock().unwrap();
                    t.connect_failures += 1;
                    t.connect_failures
                };
                if failures > 400 {
                    tally.lock().unwrap().failure = Some(format!("cannot connect: {error}"));
                    return;
                }
                sleep(backoff + jitter.millis(50)).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        match session(ws, &tally, &control, publisher.as_mut(), &mut lost_at).await {
            Ended::Lost => {}
            Ended::Failed(failure) => {
                tally.lock().unwrap().failure = Some(failure);
                return;
            }
        }
        lost_at = Some(Instant::now());
        if !control.reconnect.load(Ordering::SeqCst) {
            return;
        }
        // Jittered, as the embedded page does, so a restart is not a thundering herd.
        sleep(jitter.millis(100)).await;
    }
}

async fn open(url: &str) -> Result<Ws, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "roomcast.v1".parse().unwrap());
    match timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

/// One connection: the welcome, then frames (and publishing) until it ends.
async fn session(
    mut ws: Ws,
    tally: &Mutex<Tally>,
    control: &Control,
    mut publisher: Option<&mut Publisher>,
    lost_at: &mut Option<Instant>,
) -> Ended {
    let welcome = match timeout(FRAME_TIMEOUT, next_text(&mut ws)).await {
        Ok(Some(text)) => text,
        Ok(None) => {
            tally
                .lock()
                .unwrap()
                .endings
                .push("closed before the welcome".into());
            return Ended::Lost;
        }
        Err(_) => return Ended::Failed("no welcome frame in time".into()),
    };
    let welcome: Value = serde_json::from_str(&welcome).unwrap_or_default();
    if welcome["type"] != "welcome" {
        return Ended::Failed(format!("expected a welcome first, got {welcome}"));
    }
    // Replayed messages are sent right after the welcome, up to its seq.
    let replay_until = welcome["seq"].as_u64().unwrap_or(0);
    {
        let mut t = tally.lock().unwrap();
        t.connects += 1;
        if t.base.is_none() {
            t.base = Some(replay_until);
            t.last_seq = replay_until;
        }
        t.epochs
            .push(welcome["epoch"].as_str().unwrap_or_default().to_string());
        if let Some(at) = lost_at.take() {
            t.outages.push(at.elapsed());
        }
    }
    let mut ticks = interval(
        publisher
            .as_ref()
            .map_or(Duration::from_secs(3600), |p| p.every),
    );
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => on_text(text.as_str(), tally, publisher.as_deref_mut()),
                Some(Ok(Message::Close(frame))) => {
                    let ending = match frame {
                        Some(frame) => format!("{} {}", u16::from(frame.code), frame.reason),
                        None => "close without a code".into(),
                    };
                    tally.lock().unwrap().endings.push(ending);
                    // tungstenite has queued our reply; read until the server hangs up, so
                    // everything we sent before it is settled.
                    let _ = timeout(FRAME_TIMEOUT, async {
                        while let Some(Ok(message)) = ws.next().await {
                            if let Message::Text(text) = message {
                                on_text(text.as_str(), tally, publisher.as_deref_mut());
                            }
                        }
                    })
                    .await;
                    return Ended::Lost;
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tally.lock().unwrap().endings.push(format!("no close frame: {error}"));
                    return Ended::Lost;
                }
                None => {
                    tally.lock().unwrap().endings.push("no close frame: end of stream".into());
                    return Ended::Lost;
                }
            },
            _ = ticks.tick(), if publisher.is_some() => {
                let Some(p) = publisher.as_deref_mut() else { continue };
                let replayed = tally.lock().unwrap().last_seq >= replay_until;
                let mut batch = Vec::new();
                if replayed {
                    let now = Instant::now();
                    for (id, sent_at) in p.pending.iter_mut() {
                        if now.duration_since(*sent_at) >= RESEND_AFTER {
                            *sent_at = now;
                            batch.push(*id);
                        }
                    }
                    tally.lock().unwrap().resent += batch.len() as u64;
                }
                if control.sending.load(Ordering::SeqCst) {
                    let id = p.next_id;
                    p.next_id += 1;
                    p.pending.insert(id, Instant::now());
                    batch.push(id);
                    tally.lock().unwrap().sent = id;
                }
                tally.lock().unwrap().pending = p.pending.len();
                for id in batch {
                    let frame = serde_json::json!({ "message": format!("p{id}") }).to_string();
                    if let Err(error) = ws.send(Message::text(frame)).await {
                        // Already closing (the close frame is next) or broken: left pending.
                        tally.lock().unwrap().endings.push(format!("no close frame: send failed: {error}"));
                        return Ended::Lost;
                    }
                }
            }
        }
    }
}

fn on_text(text: &str, tally: &Mutex<Tally>, publisher: Option<&mut Publisher>) {
    let frame: Value = serde_json::from_str(text).unwrap_or_default();
    let mut t = tally.lock().unwrap();
    let (Some(message), Some(seq)) = (frame["message"].as_str(), frame["seq"].as_u64()) else {
        t.notices.push(text.to_string());
        return;
    };
    if seq <= t.last_seq {
        t.duplicates.push(seq);
        return;
    }
    if seq != t.last_seq + 1 {
        let last = t.last_seq;
        t.gaps.push((last, seq));
    }
    t.last_seq = seq;
    t.received.push((seq, message.to_string()));
    if let Some(p) = publisher
        && let Some(id) = message
            .strip_prefix('p')
            .and_then(|n| n.parse::<u64>().ok())
    {
        if p.pending.remove(&id).is_none() {
            t.echoed_twice += 1;
        }
        t.pending = p.pending.len();
    }
}

async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => return Some(text.as_str().to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}
