//! One node's sharded pub/sub connection (`SSUBSCRIBE`), spoken here in RESP2.
//!
//! The room task writes `SSUBSCRIBE`, `SUNSUBSCRIBE` and `PING`, one channel each (a
//! command spanning slots would be refused); a reader task parses what comes back and sends
//! it on. Replies come in command order, so each is matched to its command; a `sunsubscribe`
//! nobody asked for means the node gave the channel's slot away. The reader gives up on a
//! node silent for longer than pings allow, and its queue is bounded: a room task that falls
//! behind leaves the rest in the socket, and Redis cuts a subscriber that lags too far.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::ConnectionInfo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::broker::redis::REDIS_TIMEOUT;

/// The reader gives a node up after this long without a byte; the room task pings every
/// second.
const SILENCE: Duration = Duration::from_secs(4);
/// No pub/sub reply here is larger than a message, which the server bounds well below this.
const MAX_BULK: usize = 64 << 20;

/// What a node's connection reports to the room task.
pub(in crate::broker::redis) enum ShardEvent {
    Message {
        node: Arc<str>,
        channel: String,
        payload: Vec<u8>,
    },
    /// The node stopped serving this channel unasked: its slot moved.
    Dropped { node: Arc<str>, channel: String },
    /// The connection broke or went silent; `serial` names which one.
    Lost { node: Arc<str>, serial: u64 },
}

/// A command sent and not yet answered.
enum Sent {
    Subscribe(String, oneshot::Sender<Result<(), String>>),
    Unsubscribe(String),
    Ping,
}

type Pending = Arc<Mutex<VecDeque<Sent>>>;

/// A subscription's answer to come: `Err` carries the node's refusal (`MOVED …`).
pub(in crate::broker::redis) type Confirmation = oneshot::Receiver<Result<(), String>>;

pub(in crate::broker::redis) struct ShardLink {
    pub serial: u64,
    writer: OwnedWriteHalf,
    pending: Pending,
    reader: JoinHandle<()>,
}

impl ShardLink {
    /// Connects to `node` (`host:port`) with `info`'s credentials.
    pub async fn open(
        node: Arc<str>,
        info: &ConnectionInfo,
        serial: u64,
        events: mpsc::Sender<ShardEvent>,
    ) -> std::io::Result<ShardLink> {
        let stream = within(TcpStream::connect(&*node)).await??;
        stream.set_nodelay(true)?;
        let (read, mut writer) = stream.into_split();
        let mut reader = BufReader::new(read);
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = vec!["AUTH"];
            auth.extend(settings.username());
            auth.push(password);
            within(writer.write_all(&encode(&auth))).await??;
            // The reply is the only thing that can come yet; an error names no secret.
            match within(read_value(&mut reader)).await?? {
                Resp::Other => {}
                _ => return Err(std::io::Error::other("AUTH refused by a cluster node")),
            }
        }
        let pending: Pending = Arc::default();
        let reader = tokio::spawn(read_events(
            reader,
            Arc::clone(&node),
            serial,
            Arc::clone(&pending),
            events,
        ));
        Ok(ShardLink {
            serial,
            writer,
            pending,
            reader,
        })
    }

    /// Sends a subscription; the node's answer comes through the [`Confirmation`], after
    /// whatever the node sent before it.
    pub async fn subscribe(&mut self, channel: &str) -> std::io::Result<Confirmation> {
        let (confirmed, confirmation) = oneshot::channel();
        self.send(
            Sent::Subscribe(channel.to_string(), confirmed),
            &["SSUBSCRIBE", channel],
        )
        .await?;
        Ok(confirmation)
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> std::io::Result<()> {
        self.send(
            Sent::Unsubscribe(channel.to_string()),
            &["SUNSUBSCRIBE", channel],
        )
        .await
    }

    /// Keeps the reader's silence timer from running out while the node is there.
    pub async fn ping(&mut self) -> std::io::Result<()> {
        self.send(Sent::Ping, &["PING"]).await
    }

    async fn send(&mut self, sent: Sent, command: &[&str]) -> std::io::Result<()> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(sent);
        within(self.writer.write_all(&encode(command))).await?
    }
}

impl Drop for ShardLink {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn within<T>(work: impl Future<Output = T>) -> std::io::Result<T> {
    timeout(REDIS_TIMEOUT, work)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn read_events(
    mut reader: BufReader<OwnedReadHalf>,
    node: Arc<str>,
    serial: u64,
    pending: Pending,
    events: mpsc::Sender<ShardEvent>,
) {
    loop {
        let value = match timeout(SILENCE, read_value(&mut reader)).await {
            Ok(Ok(value)) => value,
            _ => break,
        };
        let Some(event) = take_reply(value, &node, &pending) else {
            continue;
        };
        let Ok(event) = event else {
            break;
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
    let _ = events.send(ShardEvent::Lost { node, serial }).await;
}

/// Matches a reply to the command it answers; `Some` for what the room task must hear,
/// `Some(Err)` for a reply that fits no command (the connection is then given up).
fn take_reply(value: Resp, node: &Arc<str>, pending: &Pending) -> Option<Result<ShardEvent, ()>> {
    let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
    let (kind, channel, payload) = match value {
        Resp::Error(error) => {
            return match pending.pop_front() {
                Some(Sent::Subscribe(_, confirmed)) => {
                    let _ = confirmed.send(Err(error));
                    None
                }
                Some(_) => None,
                None => Some(Err(())),
            };
        }
        Resp::Array(mut parts) if parts.len() >= 2 => {
            let third = parts.get_mut(2).map(std::mem::take);
            let kind = std::mem::take(&mut parts[0]);
            (
                kind,
                String::from_utf8(std::mem::take(&mut parts[1])).ok()?,
                third,
            )
        }
        // A node answers a PING with +PONG once the connection holds no channel (its last
        // slot moved away): the link is fine.
        Resp::Other if matches!(pending.front(), Some(Sent::Ping)) => {
            pending.pop_front();
            return None;
        }
        _ => return Some(Err(())),
    };
    match (kind.as_slice(), pending.front()) {
        (b"smessage", _) => Some(Ok(ShardEvent::Message {
            node: Arc::clone(node),
            channel,
            payload: payload.unwrap_or_default(),
        })),
        (b"ssubscribe", Some(Sent::Subscribe(asked, _))) if *asked == channel => {
            if let Some(Sent::Subscribe(_, confirmed)) = pending.pop_front() {
                let _ = confirmed.send(Ok(()));
            }
            None
        }
        (b"sunsubscribe", Some(Sent::Unsubscribe(asked))) if *asked == channel => {
            pending.pop_front();
            None
        }
        (b"sunsubscribe", _) => Some(Ok(ShardEvent::Dropped {
            node: Arc::clone(node),
            channel,
        })),
        (b"pong", Some(Sent::Ping)) => {
            pending.pop_front();
            None
        }
        _ => Some(Err(())),
    }
}

/// The RESP2 values pub/sub uses: arrays (of bulk strings, as bytes), errors, and the rest,
/// which only `AUTH`'s `+OK` answers with.
enum Resp {
    Other,
    Error(String),
    Array(Vec<Vec<u8>>),
}

async fn read_value(reader: &mut BufReader<OwnedReadHalf>) -> std::io::Result<Resp> {
    let line = read_line(reader).await?;
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" | ":" => Ok(Resp::Other),
        "-" => Ok(Resp::Error(rest.to_string())),
        "$" => read_bulk(reader, rest).await.map(|_| Resp::Other),
        "*" => {
            let count: usize = rest.parse().map_err(|_| malformed())?;
            // Pub/sub replies have three or four parts.
            if count > 8 {
                return Err(malformed());
            }
            let mut parts = Vec::with_capacity(count);
            for _ in 0..count {
                let line = read_line(reader).await?;
                let part = match line.split_at(1) {
                    ("$", length) => read_bulk(reader, length).await?.unwrap_or_default(),
                    (":" | "+", text) => text.as_bytes().to_vec(),
                    _ => return Err(malformed()),
                };
                parts.push(part);
            }
            Ok(Resp::Array(parts))
        }
        _ => Err(malformed()),
    }
}

async fn read_line(reader: &mut BufReader<OwnedReadHalf>) -> std::io::Result<String> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(4096)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.strip_suffix(b"\r\n").ok_or_else(malformed)?;
    // Every RESP line starts with an ASCII type byte, which the parsers split off.
    match String::from_utf8(line.to_vec()) {
        Ok(line) if line.as_bytes().first().is_some_and(u8::is_ascii) => Ok(line),
        _ => Err(malformed()),
    }
}

/// A bulk string's body after its `$<length>` line; `None` for a nil one.
async fn read_bulk(
    reader: &mut BufReader<OwnedReadHalf>,
    length: &str,
) -> std::io::Result<Option<Vec<u8>>> {
    let length: i64 = length.parse().map_err(|_| malformed())?;
    let Ok(length) = usize::try_from(length) else {
        return Ok(None);
    };
    if length > MAX_BULK {
        return Err(malformed());
    }
    let mut body = vec![0; length + 2];
    reader.read_exact(&mut body).await?;
    body.truncate(length);
    Ok(Some(body))
}

fn malformed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "a malformed pub/sub reply")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(parts: &[&str]) -> Resp {
        Resp::Array(parts.iter().map(|part| part.as_bytes().to_vec()).collect())
    }

    fn subscribing(pending: &Pending, channel: &str) -> oneshot::Receiver<Result<(), String>> {
        let (confirmed, confirmation) = oneshot::channel();
        let sent = Sent::Subscribe(channel.into(), confirmed);
        pending.lock().unwrap().push_back(sent);
        confirmation
    }

    #[test]
    fn replies_answer_their_commands_in_order() {
        let node: Arc<str> = Arc::from("10.0.0.1:7000");
        let pending: Pending = Arc::default();
        let mut first = subscribing(&pending, "roomcast:room:{a}");
        let mut second = subscribing(&pending, "roomcast:room:{b}");
        let reply = take_reply(
            array(&["ssubscribe", "roomcast:room:{a}", "1"]),
            &node,
            &pending,
        );
        assert!(reply.is_none());
        assert_eq!(first.try_recv(), Ok(Ok(())));
        // A message may come between a command and its reply.
        let message = take_reply(
            array(&["smessage", "roomcast:room:{a}", "1 e x"]),
            &node,
            &pending,
        );
        assert!(
            matches!(message, Some(Ok(ShardEvent::Message { payload, .. })) if payload == b"1 e x")
        );
        let moved = Resp::Error("MOVED 3300 10.0.0.2:7000".into());
        assert!(take_reply(moved, &node, &pending).is_none());
        assert_eq!(
            second.try_recv(),
            Ok(Err("MOVED 3300 10.0.0.2:7000".into()))
        );
        pending.lock().unwrap().push_back(Sent::Ping);
        assert!(take_reply(array(&["pong", ""]), &node, &pending).is_none());
        assert!(pending.lock().unwrap().is_empty());
    }

    #[test]
    fn an_unasked_sunsubscribe_means_the_slot_moved() {
        let node: Arc<str> = Arc::from("10.0.0.1:7000");
        let pending: Pending = Arc::default();
        pending
            .lock()
            .unwrap()
            .push_back(Sent::Unsubscribe("roomcast:room:{b}".into()));
        let asked = take_reply(
            array(&["sunsubscribe", "roomcast:room:{b}", "0"]),
            &node,
            &pending,
        );
        assert!(asked.is_none(), "the answer to our own SUNSUBSCRIBE");
        let unasked = take_reply(
            array(&["sunsubscribe", "roomcast:room:{a}", "0"]),
            &node,
            &pending,
        );
        assert!(
            matches!(unasked, Some(Ok(ShardEvent::Dropped { channel, .. })) if channel == "roomcast:room:{a}")
        );
        // A reply that answers nothing sent: the connection is given up.
        assert!(matches!(
            take_reply(array(&["pong", ""]), &node, &pending),
            Some(Err(()))
        ));
        // Out of pub/sub mode (no channel left), a node answers PING with +PONG.
        pending.lock().unwrap().push_back(Sent::Ping);
        assert!(take_reply(Resp::Other, &node, &pending).is_none());
    }
}
