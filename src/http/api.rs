//! The publish API for backends: `POST /api/rooms/<room>/messages` with the API key as a
//! bearer token and `{"message": "…", "user": {"id": "…", "name": "…"}}` as the body.
//! Answers are JSON: `{"seq": N, "epoch": "…"}`, or `{"error": "…"}` with the status.

use serde_json::Value;

use super::head::Head;
use super::response::{json_response, retry_after_header};
use crate::auth::Secret;
use crate::broker::{Broker, Unavailable};
use crate::limits::TooMany;
use crate::protocol::{self, ChatParts};

/// A publish request whose head passed every check; its body is still to be read.
#[derive(Debug, PartialEq, Eq)]
pub struct Publish {
    pub room: String,
    pub body_length: usize,
    /// Empty when the request had no `Idempotency-Key`.
    pub idempotency: String,
}

/// A refusal: the status code and what to say.
pub type Refusal = (u16, &'static str);

/// Checks a presence request's head: the key, GET, no body.
pub fn check_read(head: &Head, api_key: Option<&Secret>) -> Result<(), Refusal> {
    let Some(api_key) = api_key else {
        return Err((404, "the API is off: set ROOMCAST_API_KEY"));
    };
    if head.method != "GET" {
        return Err((405, "only GET is served here"));
    }
    authorize(head, api_key)?;
    let has_body = head.header("transfer-encoding").is_some()
        || head
            .header("content-length")
            .is_some_and(|length| length != "0");
    if has_body {
        return Err((400, "request bodies are not accepted here"));
    }
    Ok(())
}

/// The bearer key matches; a browser (anything sending `Origin`) may not call the API.
fn authorize(head: &Head, api_key: &Secret) -> Result<(), Refusal> {
    let offered = head.bearer().unwrap_or("");
    if !constant_time_eq(offered.as_bytes(), &api_key.0) {
        return Err((401, "missing or wrong API key"));
    }
    if head.header("origin").is_some() {
        return Err((403, "browsers may not call the API"));
    }
    Ok(())
}

/// Checks a publish request's head: key, content type and length, idempotency key.
pub fn check(
    head: &Head,
    room: &str,
    api_key: Option<&Secret>,
    max_body: usize,
) -> Result<Publish, Refusal> {
    let Some(api_key) = api_key else {
        return Err((404, "the API is off: set ROOMCAST_API_KEY"));
    };
    if head.method != "POST" {
        return Err((405, "only POST is served here"));
    }
    authorize(head, api_key)?;
    let json = head
        .header("content-type")
        .and_then(|value| value.split(';').next())
        .is_some_and(|kind| kind.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err((415, "the body must be application/json"));
    }
    if head.header("transfer-encoding").is_some() {
        return Err((411, "send a Content-Length, not a chunked body"));
    }
    let body_length = match head.header("content-length").map(str::parse::<usize>) {
        Some(Ok(length)) if length <= max_body => length,
        Some(Ok(_)) => return Err((413, "body too large")),
        _ => return Err((411, "a Content-Length is required")),
    };
    let idempotency = head.header("idempotency-key").unwrap_or("");
    let printable = idempotency.bytes().all(|b| b.is_ascii_graphic());
    if idempotency.len() > 128 || !printable {
        return Err((
            400,
            "Idempotency-Key must be at most 128 visible ASCII characters",
        ));
    }
    Ok(Publish {
        room: room.to_string(),
        body_length,
        idempotency: idempotency.to_string(),
    })
}

/// Publishes the body's message and answers with its seq.
pub async fn publish(request: &Publish, body: &[u8], broker: &Broker) -> Vec<u8> {
    let chat = match parse_body(body) {
        Ok(chat) => chat,
        Err(reason) => return error(400, reason),
    };
    match broker
        .publish(&request.room, chat, &request.idempotency)
        .await
    {
        Ok(accepted) => {
            let mut body = format!("{{\"seq\":{},\"epoch\":", accepted.seq);
            protocol::push_json_string(&mut body, &accepted.epoch);
            body.push('}');
            json_response(200, &body, "")
        }
        Err(Unavailable) => {
            let body = r#"{"error":"broker unavailable: try again"}"#;
            json_response(503, body, RETRY_SOON)
        }
    }
}

/// Who is in a room, over every instance: `{"count": N, "users": [...]}`.
pub async fn presence(room: &str, broker: &Broker) -> Vec<u8> {
    match broker.presence(room, PRESENCE_LIST).await {
        Ok(members) => {
            let mut body = format!("{{\"count\":{},\"users\":[", members.count);
            for (index, user) in members.users.iter().enumerate() {
                if index > 0 {
                    body.push(',');
                }
                body.push_str(user);
            }
            body.push_str("]}");
            json_response(200, &body, "")
        }
        Err(Unavailable) => {
            let body = r#"{"error":"broker unavailable: try again"}"#;
            json_response(503, body, RETRY_SOON)
        }
    }
}

/// Users the presence API lists at most.
const PRESENCE_LIST: usize = 1000;

/// The broker is away for a moment.
const RETRY_SOON: &str = "Retry-After: 1\r\n";

/// `{"error": reason}` with the status.
pub fn error(status: u16, reason: &str) -> Vec<u8> {
    let headers = if status == 401 {
        "WWW-Authenticate: Bearer realm=\"roomcast\"\r\n"
    } else {
        ""
    };
    json_response(status, &error_body(reason), headers)
}

/// 405, naming the method the path serves.
pub fn wrong_method(reason: &str, allow: &str) -> Vec<u8> {
    json_response(405, &error_body(reason), &format!("Allow: {allow}\r\n"))
}

/// 429 to a caller over its address's rate.
pub fn too_many(too_many: &TooMany) -> Vec<u8> {
    let headers = retry_after_header(too_many.retry_after);
    json_response(429, &error_body(too_many.reason), &headers)
}

fn error_body(reason: &str) -> String {
    let mut body = String::from("{\"error\":");
    protocol::push_json_string(&mut body, reason);
    body.push('}');
    body
}

fn parse_body(body: &[u8]) -> Result<ChatParts, &'static str> {
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
        return Err("the body must be a JSON object");
    };
    let Some(Value::String(message)) = fields.remove("message") else {
        return Err("expected {\"message\": \"<string>\"}");
    };
    let user = match fields.remove("user") {
        None | Some(Value::Null) => None,
        Some(Value::Object(user)) => Some(user_json(&user)?),
        Some(_) => return Err("user must be an object"),
    };
    Ok(ChatParts::new(
        &message,
        user.as_deref(),
        protocol::now_ms(),
    ))
}

/// A sender named by the backend, encoded the way tokens' users are.
fn user_json(user: &serde_json::Map<String, Value>) -> Result<String, &'static str> {
    let id = user
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= 256)
        .ok_or("user.id must be a string of 1-256 bytes")?;
    let mut json = String::from("{\"id\":");
    protocol::push_json_string(&mut json, id);
    match user.get("name") {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) if name.chars().count() <= 64 => {
            json.push_str(",\"name\":");
            protocol::push_json_string(&mut json, name);
        }
        Some(_) => return Err("user.name must be a string of at most 64 characters"),
    }
    json.push('}');
    Ok(json)
}

/// Equal, in a time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::head_for;

    fn key() -> Secret {
        Secret(b"an-api-key-of-thirty-two-bytes-or-more".to_vec())
    }

    fn request(headers: &str) -> Result<Publish, Refusal> {
        let head = head_for(&format!(
            "POST /api/rooms/lobby/messages HTTP/1.1\r\nHost: t\r\n{headers}\r\n"
        ));
        check(&head, "lobby", Some(&key()), 1000)
    }

    const GOOD: &str = "Authorization: Bearer an-api-key-of-thirty-two-bytes-or-more\r\n\
        Content-Type: application/json; charset=utf-8\r\nContent-Length: 20\r\n";

    #[test]
    fn checks_each_rule_of_the_head() {
        assert_eq!(request(GOOD).unwrap().body_length, 20);
        assert_eq!(
            request(&GOOD.replace("or-more", "or-less")).unwrap_err().0,
            401
        );
        assert_eq!(
            request(&GOOD.replace("application/json", "text/plain"))
                .unwrap_err()
                .0,
            415
        );
        assert_eq!(
            request(&GOOD.replace("Length: 20", "Length: 2000"))
                .unwrap_err()
                .0,
            413
        );
        assert_eq!(
            request(&format!("{GOOD}Origin: https://x.example\r\n"))
                .unwrap_err()
                .0,
            403
        );
        let keyed = request(&format!("{GOOD}Idempotency-Key: order-17\r\n")).unwrap();
        assert_eq!(keyed.idempotency, "order-17");
        let head = head_for("POST /api/rooms/lobby/messages HTTP/1.1\r\n\r\n");
        assert_eq!(check(&head, "lobby", None, 1000).unwrap_err().0, 404);
    }

    #[test]
    fn bodies_name_a_message_and_maybe_a_user() {
        let chat = parse_body(br#"{"message":"hi","user":{"id":"bot","name":"Bot"}}"#).unwrap();
        assert!(
            chat.suffix
                .starts_with(r#","user":{"id":"bot","name":"Bot"},"ts":"#)
        );
        assert!(
            parse_body(br#"{"message":"hi"}"#)
                .unwrap()
                .suffix
                .starts_with(",\"ts\":")
        );
        assert!(parse_body(br#"{"message":3}"#).is_err());
        assert!(parse_body(br#"{"message":"x","user":{"name":"no id"}}"#).is_err());
        assert!(parse_body(b"not json").is_err());
    }

    #[test]
    fn keys_compare_in_constant_time() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
