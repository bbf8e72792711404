//! The chat decoder on any text: an answer or a defined error, never a panic; whatever it
//! accepts goes back out, through the server's own encoder, as the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::protocol::{ChatParts, Inbound, InboundError, parse_chat, parse_inbound, push_json_string};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let plain = parse_chat(&text);
    assert_eq!(parse_inbound(&text, false), plain.clone().map(Inbound::Chat));
    let json = serde_json::from_str::<Value>(&text);
    match &plain {
        Ok(message) => {
            let value = json.as_ref().expect("accepted text is JSON");
            assert_eq!(value["message"].as_str(), Some(message.as_str()));
            let frame = ChatParts::new(message, None, 1).with_seq(2);
            let frame: Value = serde_json::from_str(&frame).expect("the frame is JSON");
            assert_eq!(frame["message"].as_str(), Some(message.as_str()));
        }
        Err(InboundError::InvalidJson) => assert!(json.is_err(), "valid JSON refused"),
        Err(InboundError::MissingMessage) => assert!(json.is_ok()),
        Err(InboundError::BadRequest) => panic!("plain clients only chat"),
    }
    match parse_inbound(&text, true) {
        Ok(Inbound::Chat(message)) => assert_eq!(plain.as_ref(), Ok(&message)),
        Ok(Inbound::Refresh(_)) | Err(InboundError::BadRequest) => {
            assert!(json.as_ref().is_ok_and(|value| value.get("type").is_some()));
        }
        Err(InboundError::InvalidJson) => assert!(json.is_err()),
        Err(InboundError::MissingMessage) => assert!(json.is_ok()),
    }
    let mut ours = String::new();
    push_json_string(&mut ours, &text);
    assert_eq!(ours, serde_json::to_string(&text).expect("a string encodes"));
});
