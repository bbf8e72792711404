//! One chat client of the cluster tests: it joins a room with the extended protocol, records
//! every frame with the time it came, publishes `<name>-m<n>` at a steady pace while told to,
//! and resumes with `since` and `epoch` whenever its connection ends, as the chat page does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use testkit::ws::{self, Ws};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;

/// How long a connection may take to open, and to send its welcome.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnects in a row that may fail before the member gives up.
const MAX_FAILED_CONNECTS: u32 = 100;

/// A frame a member was sent, presence aside.
#[derive(Debug, Clone)]
pub enum Seen {
    /// `since` is what this connection asked to resume from, if anything.
    Welcome {
        epoch: String,
        seq: u64,
        since: Option<u64>,
    },
    Chat {
        seq: u64,
        message: String,
    },
    Reset {
        epoch: String,
        seq: u64,
        reason: String,
    },
    Error {
        code: String,
    },
}

/// What one member did and saw.
#[derive(Debug, Default, Clone)]
pub struct Record {
    pub name: String,
    pub room: String,
    /// Frames in the order they came, each with when.
    pub frames: Vec<(Instant, Seen)>,
    /// When each own message was sent: message `<name>-m<n>` at index `n - 1`.
    pub sent: Vec<Instant>,
    /// How each connection ended, for the report.
    pub endings: Vec<String>,
    pub failure: Option<String>,
}

impl Record {
    /// Where a resume starts: the epoch and the last seq this member holds in it.
    pub fn resume_point(&self) -> Option<(String, u64)> {
        let mut point = None;
        for (_, seen) in &self.frames {
            match seen {
                Seen::Welcome { epoch, seq, .. } if point.is_none() => {
                    point = Some((epoch.clone(), *seq))
                }
                Seen::Reset { epoch, seq, .. } => point = Some((epoch.clone(), *seq)),
                Seen::Chat { seq, .. } => {
                    if let Some((_, last)) = point.as_mut() {
                        *last = *seq;
                    }
                }
                _ => {}
            }
        }
        point
    }
}

/// Switches shared by every member of a run.
#[derive(Default)]
pub struct Pace {
    /// Members publish while this is set.
    pub publishing: AtomicBool,
}

pub struct Member {
    pub record: Arc<Mutex<Record>>,
    /// Sending `true` ends the connection and the task.
    leave: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    url: String,
    pace: Arc<Pace>,
    every: Duration,
}

impl Member {
    /// Joins `room` at `url` (`ws://…/ws/chat/<room>/`) and waits for the welcome.
    pub async fn join(
        name: &str,
        room: &str,
        url: String,
        pace: &Arc<Pace>,
        every: Duration,
    ) -> Member {
        let record = Record {
            name: name.to_string(),
            room: room.to_string(),
            ..Record::default()
        };
        let (leave, _) = watch::channel(false);
        let mut member = Member {
            record: Arc::new(Mutex::new(record)),
            leave,
            task: None,
            url,
            pace: Arc::clone(pace),
            every,
        };
        member.connect().await;
        member
    }

    pub fn snapshot(&self) -> Record {
        self.record.lock().unwrap().clone()
    }

    /// Closes the connection and stops, keeping the record.
    pub async fn leave(&mut self) {
        self.leave.send_replace(true);
        if let Some(task) = self.task.take()
            && timeout(CONNECT_TIMEOUT, task).await.is_err()
        {
            panic!("{} did not leave in time", self.record.lock().unwrap().name);
        }
    }

    /// Connects again from where the record ends, and waits for the welcome.
    pub async fn resume(&mut self) {
        assert!(self.task.is_none(), "resume after leave");
        self.connect().await;
    }

    async fn connect(&mut self) {
        self.leave.send_replace(false);
        let welcomes = self.welcomes();
        self.task = Some(tokio::spawn(run(
            self.url.clone(),
            Arc::clone(&self.record),
            Arc::clone(&self.pace),
            self.every,
            self.leave.subscribe(),
        )));
        let started = Instant::now();
        while self.welcomes() == welcomes {
            let record = self.snapshot();
            assert!(
                record.failure.is_none(),
                "{}: {:?}",
                record.name,
                record.failure
            );
            assert!(
                started.elapsed() < CONNECT_TIMEOUT * 2,
                "{} got no welcome",
                record.name
            );
            sleep(Duration::from_millis(10)).await;
        }
    }

    fn welcomes(&self) -> usize {
        let record = self.record.lock().unwrap();
        record
            .frames
            .iter()
            .filter(|(_, seen)| matches!(seen, Seen::Welcome { .. }))
            .count()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Connects, reads and publishes until told to leave, reconnecting with `since` and `epoch`
/// after every ending.
async fn run(
    url: String,
    record: Arc<Mutex<Record>>,
    pace: Arc<Pace>,
    every: Duration,
    mut leave: watch::Receiver<bool>,
) {
    let mut failed_connects = 0;
    while !*leave.borrow() {
        let resume = record.lock().unwrap().resume_point();
        let target = match &resume {
            Some((epoch, since)) => format!("{url}?since={since}&epoch={epoch}"),
            None => url.clone(),
        };
        let ws = match ws::try_connect(&target, &[ws::EXTENDED], CONNECT_TIMEOUT).await {
            Ok(ws) => ws,
            Err(error) => {
                failed_connects += 1;
                if failed_connects > MAX_FAILED_CONNECTS {
                    record.lock().unwrap().failure = Some(format!("cannot connect: {error}"));
                    return;
                }
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        failed_connects = 0;
        let ending = session(
            ws,
            resume.map(|(_, since)| since),
            &record,
            &pace,
            every,
            &mut leave,
        )
        .await;
        record.lock().unwrap().endings.push(ending);
    }
}

/// One connection; returns how it ended.
async fn session(
    mut ws: Ws,
    since: Option<u64>,
    record: &Mutex<Record>,
    pace: &Pace,
    every: Duration,
    leave: &mut watch::Receiver<bool>,
) -> String {
    // The welcome comes first; publishing starts after it.
    loop {
        match timeout(CONNECT_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                on_text(text.as_str(), since, record);
                break;
            }
            Ok(Some(Ok(_))) => {}
            Ok(other) => return format!("ended before the welcome: {other:?}"),
            Err(_) => return "no welcome in time".to_string(),
        }
    }
    let mut ticks = interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => on_text(text.as_str(), since, record),
                Some(Ok(Message::Close(frame))) => return format!("closed: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(error)) => return format!("broken: {error}"),
                None => return "end of stream".to_string(),
            },
            // Ticking all along: a disabled branch would not see publishing turned on.
            _ = ticks.tick() => {
                if !pace.publishing.load(Ordering::SeqCst) {
                    continue;
                }
                let message = {
                    let mut record = record.lock().unwrap();
                    record.sent.push(Instant::now());
                    format!("{}-m{}", record.name, record.sent.len())
                };
                let frame = serde_json::json!({ "message": message }).to_string();
                if let Err(error) = ws.send(Message::text(frame)).await {
                    return format!("send failed: {error}");
                }
            }
            _ = leave.changed() => {
                let _ = timeout(CONNECT_TIMEOUT, ws.close(None)).await;
                return "left".to_string();
            }
        }
    }
}

fn on_text(text: &str, since: Option<u64>, record: &Mutex<Record>) {
    let frame: Value = serde_json::from_str(text).unwrap_or_default();
    let text_of = |field: &str| frame[field].as_str().unwrap_or_default().to_string();
    let seq = frame["seq"].as_u64().unwrap_or_default();
    let seen = match frame["type"].as_str() {
        None => Seen::Chat {
            seq,
            message: text_of("message"),
        },
        Some("welcome") => Seen::Welcome {
            epoch: text_of("epoch"),
            seq,
            since,
        },
        Some("reset") => Seen::Reset {
            epoch: text_of("epoch"),
            seq,
            reason: text_of("reason"),
        },
        Some("error") => Seen::Error {
            code: text_of("code"),
        },
        // Presence: members come and go on every instance; these tests are about messages.
        Some(_) => return,
    };
    record.lock().unwrap().frames.push((Instant::now(), seen));
}
