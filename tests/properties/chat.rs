//! The chat decoder never panics and answers every text with a message or a defined error; a
//! valid message round-trips, through the server's encoder too; JSON strings are escaped
//! exactly as serde_json escapes them.

use proptest::prelude::*;
use roomcast::protocol::{
    ChatParts, Inbound, InboundError, parse_chat, parse_inbound, push_json_string,
};
use serde_json::{Map, Value, json};

/// Any text, with the characters escaping cares about drawn often.
fn text() -> impl Strategy<Value = String> {
    let char = prop_oneof![
        4 => any::<char>(),
        2 => (0u8..0x20).prop_map(char::from),
        1 => prop::sample::select(vec!['"', '\\', '/', '\u{7f}', '\u{2028}', '\u{fffd}', '🎉']),
    ];
    prop::collection::vec(char, 0..64).prop_map(String::from_iter)
}

/// Text that looks like what a client might send: JSON-ish fragments in any order.
fn json_ish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("\"message\"".to_string()),
        Just("\"type\"".to_string()),
        Just("\"refresh\"".to_string()),
        Just("\"token\"".to_string()),
        Just(":".to_string()),
        Just(",".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("null".to_string()),
        "-?[0-9]{1,20}(\\.[0-9]{0,5})?(e[0-9]{1,4})?",
        text().prop_map(|t| serde_json::to_string(&t).unwrap()),
        "\\\\u[0-9a-fA-F]{4}",
    ];
    prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
}

fn extra_keys() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(
        "[a-z]{1,8}".prop_filter("not a key the decoder reads", |k| {
            k != "message" && k != "type"
        }),
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            text().prop_map(Value::from),
        ],
        0..4,
    )
    .prop_map(|keys| keys.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_is_a_message_or_a_defined_error(input in prop_oneof![text(), json_ish()]) {
        let json = serde_json::from_str::<Value>(&input);
        let plain = parse_chat(&input);
        prop_assert_eq!(parse_inbound(&input, false), plain.clone().map(Inbound::Chat));
        match &plain {
            Ok(message) => {
                prop_assert_eq!(json.as_ref().unwrap()["message"].as_str(), Some(message.as_str()));
            }
            Err(InboundError::InvalidJson) => prop_assert!(json.is_err()),
            Err(InboundError::MissingMessage) => prop_assert!(json.is_ok()),
            Err(InboundError::BadRequest) => prop_assert!(false, "plain clients only chat"),
        }
        match parse_inbound(&input, true) {
            Ok(Inbound::Chat(message)) => prop_assert_eq!(plain, Ok(message)),
            Ok(Inbound::Refresh(_)) | Err(InboundError::BadRequest) => {
                prop_assert!(json.unwrap().get("type").is_some());
            }
            Err(InboundError::InvalidJson) => prop_assert!(json.is_err()),
            Err(InboundError::MissingMessage) => prop_assert!(json.is_ok()),
        }
        for error in [InboundError::InvalidJson, InboundError::MissingMessage, InboundError::BadRequest] {
            prop_assert!(!error.code().is_empty() && !error.detail().is_empty());
        }
    }

    #[test]
    fn a_valid_message_round_trips(message in text(), extra in extra_keys(), seq: u64, ts: u64) {
        let mut object = extra;
        object.insert("message".into(), Value::from(message.clone()));
        let sent = Value::Object(object).to_string();
        prop_assert_eq!(parse_chat(&sent), Ok(message.clone()));
        prop_assert_eq!(parse_inbound(&sent, false), Ok(Inbound::Chat(message.clone())));
        prop_assert_eq!(parse_inbound(&sent, true), Ok(Inbound::Chat(message.clone())));

        let frame = ChatParts::new(&message, None, ts).with_seq(seq);
        let frame: Value = serde_json::from_str(&frame).unwrap();
        prop_assert_eq!(frame, json!({ "message": message, "seq": seq, "ts": ts }));
    }

    #[test]
    fn a_refresh_round_trips_for_extended_clients(token in text()) {
        let sent = json!({ "type": "refresh", "token": token }).to_string();
        prop_assert_eq!(parse_inbound(&sent, true), Ok(Inbound::Refresh(token)));
    }

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_does(value in text()) {
        let mut ours = String::from("prefix:");
        push_json_string(&mut ours, &value);
        prop_assert_eq!(&ours[7..], serde_json::to_string(&value).unwrap());
    }
}
