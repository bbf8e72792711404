//! Wire types of the chat WebSocket, encoded and decoded with serde_json; no I/O.

use std::fmt::Write;

use serde_json::Value;

/// The subprotocol that opts a client in to welcome, replay, reset and error frames.
pub const EXTENDED_SUBPROTOCOL: &str = "roomcast.v1";

/// Close code for a reader whose bounded send queue overflowed; it may resume with `since`.
pub const CLOSE_SLOW_READER: u16 = 4008;

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
}

impl InboundError {
    pub fn code(self) -> &'static str {
        match self {
            InboundError::InvalidJson => "invalid_json",
            InboundError::MissingMessage => "bad_message",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            InboundError::InvalidJson => "frame is not valid JSON",
            InboundError::MissingMessage => "expected {\"message\": \"<string>\"}",
        }
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

/// `{"message": ..., "seq": N}`, encoded once per published message.
pub fn chat_frame(message: &str, seq: u64) -> String {
    let mut frame = String::with_capacity(message.len() + 32);
    frame.push_str("{\"message\":");
    push_json_string(&mut frame, message);
    // Written in place: this runs once per published message.
    let _ = write!(frame, ",\"seq\":{seq}}}");
    frame
}

pub fn welcome_frame(room: &str, epoch: &str, seq: u64) -> String {
    let mut frame = String::from("{\"type\":\"welcome\",\"room\":");
    push_json_string(&mut frame, room);
    frame.push_str(",\"epoch\":");
    push_json_string(&mut frame, epoch);
    frame.push_str(&format!(",\"seq\":{seq}}}"));
    frame
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

pub fn error_frame(code: &str, detail: &str) -> String {
    let mut frame = String::from("{\"type\":\"error\",\"code\":");
    push_json_string(&mut frame, code);
    frame.push_str(",\"detail\":");
    push_json_string(&mut frame, detail);
    frame.push('}');
    frame
}

fn push_json_string(out: &mut String, value: &str) {
    // Serializing a &str cannot fail.
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
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
    fn frames_are_valid_json_with_escaping() {
        let chat: Value = serde_json::from_str(&chat_frame("a \"quote\"\n", 7)).unwrap();
        assert_eq!(chat["message"], "a \"quote\"\n");
        assert_eq!(chat["seq"], 7);

        let welcome: Value = serde_json::from_str(&welcome_frame("lobby", "e1", 3)).unwrap();
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["seq"], 3);
        assert!(welcome.get("message").is_none());

        let reset: Value =
            serde_json::from_str(&reset_frame("e2", 9, ResetReason::History)).unwrap();
        assert_eq!(reset["reason"], "history");

        let error: Value = serde_json::from_str(&error_frame("invalid_json", "x")).unwrap();
        assert_eq!(error["type"], "error");
        assert!(error.get("message").is_none());
    }
}
