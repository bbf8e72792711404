//! Wire types of the chat WebSocket, encoded and decoded with serde_json; no I/O.

use std::fmt::Write;

use serde_json::Value;

/// The subprotocol that opts a client in to welcome, replay, reset and error frames.
pub const EXTENDED_SUBPROTOCOL: &str = "roomcast.v1";

/// Close code for a reader whose bounded send queue overflowed; it may resume with `since`.
pub const CLOSE_SLOW_READER: u16 = 4008;

/// Close code for a connection whose token expired without a refresh.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;

/// The Channels group-name rule: 1–100 of `A-Z a-z 0-9 - _ .`.
pub fn is_valid_room(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why an inbound text frame is not a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundError {
    InvalidJson,
    MissingMessage,
    /// An extended client sent a `type` the server does not take, or a refresh without a token.
    BadRequest,
}

impl InboundError {
    pub fn code(self) -> &'static str {
        match self {
            InboundError::InvalidJson => "invalid_json",
            InboundError::MissingMessage | InboundError::BadRequest => "bad_message",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            InboundError::InvalidJson => "frame is not valid JSON",
            InboundError::MissingMessage => "expected {\"message\": \"<string>\"}",
            InboundError::BadRequest => {
                "expected a chat message or {\"type\": \"refresh\", \"token\": \"<jwt>\"}"
            }
        }
    }
}

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Chat(String),
    /// A fresh token, before the current one expires (extended protocol).
    Refresh(String),
}

/// Reads a frame from a client. Only extended clients send frames with a `type`; for plain
/// ones every frame is a chat message and extra keys are ignored, as in Channels.
pub fn parse_inbound(text: &str, extended: bool) -> Result<Inbound, InboundError> {
    if !extended {
        return parse_chat(text).map(Inbound::Chat);
    }
    let value: Value = serde_json::from_str(text).map_err(|_| InboundError::InvalidJson)?;
    let Value::Object(mut fields) = value else {
        return Err(InboundError::MissingMessage);
    };
    match fields.remove("type") {
        None => match fields.remove("message") {
            Some(Value::String(message)) => Ok(Inbound::Chat(message)),
            _ => Err(InboundError::MissingMessage),
        },
        Some(Value::String(kind)) if kind == "refresh" => match fields.remove("token") {
            Some(Value::String(token)) => Ok(Inbound::Refresh(token)),
            _ => Err(InboundError::BadRequest),
        },
        Some(_) => Err(InboundError::BadRequest),
    }
}

/// Reads `{"message": "<string>"}`; other keys are ignored.
pub fn parse_chat(text: &str) -> Result<String, InboundError> {
    let value: Value = serde_json::from_str(text).map_err(|_| InboundError::InvalidJson)?;
    match value {
        Value::Object(mut fields) => match fields.remove("message") {
            Some(Value::String(message)) => Ok(message),
            _ => Err(InboundError::MissingMessage),
        },
        _ => Err(InboundError::MissingMessage),
    }
}

/// A chat frame before its seq is known: `prefix + seq + suffix` is the whole frame,
/// `{"message":"…","seq":N,"ts":T}` (plus `"user":{…}` before `ts` when the sender is known).
///
/// Both brokers build frames only through this, so a frame from Redis is byte-identical to
/// one from the embedded broker; the Redis publish script only puts the seq in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatParts {
    pub prefix: String,
    pub suffix: String,
}

impl ChatParts {
    /// `message` as sent, `user` as an encoded JSON object, `ts` in ms since the Unix epoch.
    pub fn new(message: &str, user: Option<&str>, ts: u64) -> ChatParts {
        let mut prefix = String::with_capacity(message.len() + 20);
        prefix.push_str("{\"message\":");
        push_json_string(&mut prefix, message);
        prefix.push_str(",\"seq\":");
        let mut suffix = String::with_capacity(24 + user.map_or(0, str::len));
        if let Some(user) = user {
            suffix.push_str(",\"user\":");
            suffix.push_str(user);
        }
        let _ = write!(suffix, ",\"ts\":{ts}}}");
        ChatParts { prefix, suffix }
    }

    /// The whole frame, allocated at its exact size: it may sit in history for a long time.
    pub fn with_seq(&self, seq: u64) -> String {
        let mut digits = [0u8; 20];
        let seq = format_u64(&mut digits, seq);
        let mut frame = String::with_capacity(self.prefix.len() + seq.len() + self.suffix.len());
        frame.push_str(&self.prefix);
        frame.push_str(seq);
        frame.push_str(&self.suffix);
        frame
    }

    /// Bytes the parts take, which bounds what a held publish costs.
    pub fn len(&self) -> usize {
        self.prefix.len() + self.suffix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `value` in decimal, written into `buffer` without allocating.
fn format_u64(buffer: &mut [u8; 20], mut value: u64) -> &str {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    std::str::from_utf8(&buffer[start..]).unwrap_or("0")
}

/// The server's clock in ms since the Unix epoch: the `ts` of a chat frame.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The first frame of an extended session: the room, its epoch and latest seq, and who is
/// there (`users` holds encoded user objects).
pub fn welcome_frame(room: &str, epoch: &str, seq: u64, count: u64, users: &[&str]) -> String {
    let mut frame = String::from("{\"type\":\"welcome\",\"room\":");
    push_json_string(&mut frame, room);
    frame.push_str(",\"epoch\":");
    push_json_string(&mut frame, epoch);
    let _ = write!(
        frame,
        ",\"seq\":{seq},\"members\":{{\"count\":{count},\"users\":["
    );
    for (index, user) in users.iter().enumerate() {
        if index > 0 {
            frame.push(',');
        }
        frame.push_str(user);
    }
    frame.push_str("]}}");
    frame
}

/// `{"type": "join"|"leave", "user": {…}, "count": N}`.
pub fn presence_frame(kind: &str, user: &str, count: u64) -> String {
    format!("{{\"type\":\"{kind}\",\"user\":{user},\"count\":{count}}}")
}

/// `{"type": "members", "count": N}`: how many are here, when no event said so.
pub fn members_frame(count: u64) -> String {
    format!("{{\"type\":\"members\",\"count\":{count}}}")
}

/// Why a resume could not replay from `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The room's history was lost and restarted under a new epoch.
    Epoch,
    /// The bounded history no longer reaches back to `since`.
    History,
}

pub fn reset_frame(epoch: &str, seq: u64, reason: ResetReason) -> String {
    let reason = match reason {
        ResetReason::Epoch => "epoch",
        ResetReason::History => "history",
    };
    let mut frame = String::from("{\"type\":\"reset\",\"epoch\":");
    push_json_string(&mut frame, epoch);
    frame.push_str(&format!(",\"seq\":{seq},\"reason\":\"{reason}\"}}"));
    frame
}

/// `rate_limited`, with when the next message would be accepted.
pub fn rate_limited_frame(retry_after_ms: u64) -> String {
    format!(
        "{{\"type\":\"error\",\"code\":\"rate_limited\",\"detail\":\"too many messages: slow down\",\"retry_after_ms\":{retry_after_ms}}}"
    )
}

pub fn error_frame(code: &str, detail: &str) -> String {
    let mut frame = String::from("{\"type\":\"error\",\"code\":");
    push_json_string(&mut frame, code);
    frame.push_str(",\"detail\":");
    push_json_string(&mut frame, detail);
    frame.push('}');
    frame
}

/// `value` as a JSON string, escaped in place: quote, backslash and control characters, as
/// serde_json writes them, without a temporary string.
pub fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    let mut clean_from = 0;
    for (at, byte) in value.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&value[clean_from..at]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escape);
        }
        clean_from = at + 1;
    }
    out.push_str(&value[clean_from..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_follow_the_group_name_rule() {
        for good in ["a", "lobby", "Room-1_x.y", &"r".repeat(100)] {
            assert!(is_valid_room(good), "{good}");
        }
        for bad in ["", "a b", "émoji", "a/b", "%41", &"r".repeat(101)] {
            assert!(!is_valid_room(bad), "{bad}");
        }
    }

    #[test]
    fn parses_chat_messages_and_ignores_extra_keys() {
        assert_eq!(
            parse_chat(r#"{"message":"hi","nick":"x"}"#),
            Ok("hi".to_string())
        );
        assert_eq!(parse_chat("not json"), Err(InboundError::InvalidJson));
        assert_eq!(
            parse_chat(r#"{"message":3}"#),
            Err(InboundError::MissingMessage)
        );
        assert_eq!(
            parse_chat(r#"{"text":"hi"}"#),
            Err(InboundError::MissingMessage)
        );
        assert_eq!(
            parse_chat(r#"["message"]"#),
            Err(InboundError::MissingMessage)
        );
    }

    #[test]
    fn chat_frames_put_the_seq_between_their_parts() {
        let anonymous = ChatParts::new("hi", None, 1_700_000_000_123);
        assert_eq!(
            anonymous.with_seq(17),
            r#"{"message":"hi","seq":17,"ts":1700000000123}"#
        );
        let known = ChatParts::new("hi", Some(r#"{"id":"42","name":"Ada"}"#), 5);
        assert_eq!(
            known.with_seq(0),
            r#"{"message":"hi","seq":0,"user":{"id":"42","name":"Ada"},"ts":5}"#
        );
        let frame = anonymous.with_seq(u64::MAX);
        assert_eq!(frame.capacity(), frame.len());
        let value: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(value["seq"], u64::MAX);
    }

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_does() {
        let all_ascii: String = (0u8..=127).map(char::from).collect();
        for text in ["", "plain", "é ✓ 🎉", "\"\\/", &all_ascii, "\u{7f}\u{1f}x"] {
            let mut ours = String::new();
            push_json_string(&mut ours, text);
            assert_eq!(ours, serde_json::to_string(text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn extended_clients_may_send_a_refresh() {
        let refresh = r#"{"type":"refresh","token":"t.o.k"}"#;
        assert_eq!(
            parse_inbound(refresh, true),
            Ok(Inbound::Refresh("t.o.k".into()))
        );
        assert_eq!(
            parse_inbound(r#"{"message":"hi","type":"refresh"}"#, false),
            Ok(Inbound::Chat("hi".into())),
            "plain clients only chat"
        );
        assert_eq!(
            parse_inbound(r#"{"type":"refresh"}"#, true),
            Err(InboundError::BadRequest)
        );
        assert_eq!(
            parse_inbound(r#"{"type":"join"}"#, true),
            Err(InboundError::BadRequest)
        );
        assert_eq!(
            parse_inbound(r#"{"message":"x"}"#, true),
            Ok(Inbound::Chat("x".into()))
        );
    }

    #[test]
    fn frames_are_valid_json_with_escaping() {
        let frame = ChatParts::new("a \"quote\"\n\u{1}", None, 1).with_seq(7);
        let chat: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(chat["message"], "a \"quote\"\n\u{1}");
        assert_eq!(chat["seq"], 7);

        let users = [r#"{"id":"1","name":"Ada"}"#, r#"{"id":"2"}"#];
        let welcome: Value =
            serde_json::from_str(&welcome_frame("lobby", "e1", 3, 5, &users)).unwrap();
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["seq"], 3);
        assert_eq!(welcome["members"]["count"], 5);
        assert_eq!(welcome["members"]["users"][0]["name"], "Ada");
        assert!(welcome.get("message").is_none());
        let join: Value = serde_json::from_str(&presence_frame("join", users[1], 6)).unwrap();
        assert_eq!(
            (join["type"].as_str(), join["count"].as_u64()),
            (Some("join"), Some(6))
        );
        let members: Value = serde_json::from_str(&members_frame(7)).unwrap();
        assert_eq!(members["count"], 7);

        let reset: Value =
            serde_json::from_str(&reset_frame("e2", 9, ResetReason::History)).unwrap();
        assert_eq!(reset["reason"], "history");

        let limited: Value = serde_json::from_str(&rate_limited_frame(250)).unwrap();
        assert_eq!(limited["code"], "rate_limited");
        assert_eq!(limited["retry_after_ms"], 250);

        let error: Value = serde_json::from_str(&error_frame("invalid_json", "x")).unwrap();
        assert_eq!(error["type"], "error");
        assert!(error.get("message").is_none());
    }
}
