//! One client of the blue-green traffic: connect, resume after every close the way the
//! embedded page does, and (for the publisher) send at a steady rate and re-send what did not
//! come back.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::time::{MissedTickBehavior, interval, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;

use super::Control;
use super::tally::Tally;
use crate::ws::{self, Ws};

/// A message not seen back this long after it was sent is sent again. Longer than a drain
/// flush takes, so a message held by the old colour is not sent twice.
const RESEND_AFTER: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may take to send its welcome, and to finish after a close.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// A small xorshift for backoff jitter (no rand crate among the dependencies).
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

pub(super) async fn run(
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
        let ws = match ws::try_connect(&url, &[ws::EXTENDED], CONNECT_TIMEOUT).await {
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
        // Presence counts move as clients change instance; any other notice (a reset, an
        // error) means something was lost or refused.
        if frame["type"] != "members" {
            t.notices.push(text.to_string());
        }
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
