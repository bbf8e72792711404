//! One member of the cluster traffic: a `roomcast.v1` client in one room on one roomcast
//! container. It publishes `<name>-<n>` at a steady pace while told to, records every chat
//! frame with its epoch, seq and arrival time, checks as it goes that seqs climb by exactly
//! one within an epoch, and resumes with `since` and `epoch` if its connection ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use testkit::ws::{self, Ws};
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval, sleep, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// A member that cannot connect this many times in a row gives up.
const CONNECT_ATTEMPTS: u32 = 50;

/// Switches every member of a run shares.
#[derive(Default)]
pub struct Pace {
    pub publishing: AtomicBool,
    /// Set: each member closes its connection and ends.
    pub leaving: AtomicBool,
}

/// A chat frame as one member saw it.
#[derive(Debug, Clone)]
pub struct Chat {
    pub at: Instant,
    pub epoch: String,
    pub seq: u64,
    pub text: String,
}

/// Everything one member saw and did.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub name: String,
    pub room: String,
    /// Which roomcast container it is connected to.
    pub app: usize,
    /// When it sent `<name>-<n>`, at index n - 1.
    pub sent_at: Vec<Instant>,
    pub chats: Vec<Chat>,
    /// `reset` notices: (when, reason).
    pub resets: Vec<(Instant, String)>,
    /// `error` frames: (when, code), e.g. `unavailable`: a publish refused, honestly.
    pub errors: Vec<(Instant, String)>,
    /// A seq that did not follow the last one within an epoch, with no reset before it.
    pub seq_faults: Vec<String>,
    /// Frames of a type no member expects.
    pub odd_frames: Vec<String>,
    pub connects: u32,
    /// How each connection ended, other than by leaving.
    pub endings: Vec<String>,
    pub failure: Option<String>,
}

impl Record {
    /// The `n` of one of this member's own texts.
    pub fn own_number(&self, text: &str) -> Option<usize> {
        text.strip_prefix(self.name.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()
    }
}

pub struct Member {
    record: Arc<Mutex<Record>>,
    task: JoinHandle<()>,
}

impl Member {
    /// Spawns the member on the current runtime; it connects in the background.
    pub fn spawn(record: Record, url: String, pace: Arc<Pace>, every: Duration) -> Member {
        let record = Arc::new(Mutex::new(record));
        let task = tokio::spawn(run(url, Arc::clone(&record), pace, every));
        Member { record, task }
    }

    pub fn snapshot(&self) -> Record {
        self.record.lock().unwrap().clone()
    }

    /// Waits (until `deadline`) for it to end after [`Pace::leaving`], else aborts it.
    pub async fn finish(mut self, deadline: tokio::time::Instant) -> Record {
        if timeout_at(deadline, &mut self.task).await.is_err() {
            self.task.abort();
        }
        self.snapshot()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where the member is in its room's history.
#[derive(Default)]
struct Position {
    epoch: Option<String>,
    last_seq: u64,
    /// A reset came: the next seq may be anything.
    after_reset: bool,
}

async fn run(url: String, record: Arc<Mutex<Record>>, pace: Arc<Pace>, every: Duration) {
    let mut position = Position::default();
    let mut failed_connects = 0;
    while !pace.leaving.load(Ordering::SeqCst) {
        let resume = match &position.epoch {
            Some(epoch) => format!("{url}?since={}&epoch={epoch}", position.last_seq),
            None => url.clone(),
        };
        let ws = match ws::try_connect(&resume, &[ws::EXTENDED], CONNECT_TIMEOUT).await {
            Ok(ws) => ws,
            Err(error) => {
                failed_connects += 1;
                if failed_connects >= CONNECT_ATTEMPTS {
                    record.lock().unwrap().failure = Some(format!("cannot connect: {error}"));
                    return;
                }
                sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        failed_connects = 0;
        if let Err(failure) = session(ws, &record, &pace, every, &mut position).await {
            record.lock().unwrap().failure = Some(failure);
            return;
        }
    }
}

/// One connection, until it ends or the member leaves; `Err` when the member cannot go on.
async fn session(
    mut ws: Ws,
    record: &Mutex<Record>,
    pace: &Pace,
    every: Duration,
    position: &mut Position,
) -> Result<(), String> {
    let welcome = match timeout(WELCOME_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<Value>(text.as_str())
            .map_err(|error| format!("a welcome that is not JSON: {error}"))?,
        Ok(other) => {
            record
                .lock()
                .unwrap()
                .endings
                .push(format!("no welcome: {other:?}"));
            return Ok(());
        }
        Err(_) => return Err("no welcome in time".into()),
    };
    if welcome["type"] != "welcome" {
        return Err(format!("expected a welcome first, got {welcome}"));
    }
    record.lock().unwrap().connects += 1;
    if position.epoch.is_none() {
        // The first welcome: from here on every seq must arrive. A later one is followed by
        // the replay from `since`, or by a reset.
        position.epoch = welcome["epoch"].as_str().map(String::from);
        position.last_seq = welcome["seq"].as_u64().unwrap_or(0);
    }
    let mut ticks = interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => on_text(text.as_str(), record, position),
                Some(Ok(Message::Close(frame))) => {
                    record.lock().unwrap().endings.push(format!("closed: {frame:?}"));
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    record.lock().unwrap().endings.push(format!("broken: {error}"));
                    return Ok(());
                }
                None => {
                    record.lock().unwrap().endings.push("end of stream".into());
                    return Ok(());
                }
            },
            _ = ticks.tick() => {
                if pace.leaving.load(Ordering::SeqCst) {
                    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                    return Ok(());
                }
                if !pace.publishing.load(Ordering::SeqCst) {
                    continue;
                }
                let text = {
                    let mut r = record.lock().unwrap();
                    r.sent_at.push(Instant::now());
                    format!("{}-{}", r.name, r.sent_at.len())
                };
                let frame = serde_json::json!({ "message": text }).to_string();
                if let Err(error) = ws.send(Message::text(frame)).await {
                    record.lock().unwrap().endings.push(format!("send failed: {error}"));
                    return Ok(());
                }
            }
        }
    }
}

fn on_text(text: &str, record: &Mutex<Record>, position: &mut Position) {
    let frame: Value = serde_json::from_str(text).unwrap_or_default();
    let mut r = record.lock().unwrap();
    let now = Instant::now();
    match frame["type"].as_str() {
        None => {
            let (Some(message), Some(seq)) = (frame["message"].as_str(), frame["seq"].as_u64())
            else {
                r.odd_frames.push(text.to_string());
                return;
            };
            if !position.after_reset && seq != position.last_seq + 1 {
                let fault = format!(
                    "seq {seq} after {} in epoch {:?} ({message})",
                    position.last_seq, position.epoch
                );
                r.seq_faults.push(fault);
            }
            position.after_reset = false;
            position.last_seq = seq;
            r.chats.push(Chat {
                at: now,
                epoch: position.epoch.clone().unwrap_or_default(),
                seq,
                text: message.to_string(),
            });
        }
        Some("reset") => {
            let reason = frame["reason"].as_str().unwrap_or("?").to_string();
            r.resets.push((now, reason));
            position.epoch = frame["epoch"].as_str().map(String::from);
            position.after_reset = true;
        }
        Some("error") => {
            let code = frame["code"].as_str().unwrap_or("?").to_string();
            r.errors.push((now, code));
        }
        Some("join" | "leave" | "members" | "welcome") => {}
        Some(_) => r.odd_frames.push(text.to_string()),
    }
}
