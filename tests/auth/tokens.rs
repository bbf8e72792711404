//! HS256 tokens made here with the `hmac` and `sha2` crates, not with the server's code:
//! claims, odd headers, tampering. Every token handed out is remembered for [logs](super::logs).

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{PREVIOUS_SECRET, SECRET};

/// Every token minted or forged in this process.
static MINTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The server's leeway on `exp` and `nbf`, in seconds.
pub const LEEWAY: u64 = 30;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
}

/// `{"sub", "aud": "roomcast", "exp": now + 5 min}`, and `extra` on top (`null` removes a key).
pub fn claims(sub: &str, extra: Value) -> Value {
    let mut claims = json!({ "sub": sub, "aud": "roomcast", "exp": now() + 300 });
    let fields = claims.as_object_mut().expect("an object");
    for (key, value) in extra.as_object().expect("extra claims as an object") {
        if value.is_null() {
            fields.remove(key);
        } else {
            fields.insert(key.clone(), value.clone());
        }
    }
    claims
}

/// A token for `claims`, signed with the server's secret.
pub fn token(claims: &Value) -> String {
    signed(
        &json!({ "alg": "HS256", "typ": "JWT" }),
        claims,
        SECRET.as_bytes(),
    )
}

/// A token for user `sub` with `extra` claims.
pub fn user(sub: &str, extra: Value) -> String {
    token(&claims(sub, extra))
}

/// A token signed with the secret a rotation replaced.
pub fn previous(claims: &Value) -> String {
    signed(
        &json!({ "alg": "HS256", "typ": "JWT" }),
        claims,
        PREVIOUS_SECRET.as_bytes(),
    )
}

/// `header.claims` signed HS256 with `secret`, whatever the header says.
pub fn signed(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let unsigned = format!("{}.{}", encode(header), encode(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(unsigned.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    remember(format!("{unsigned}.{signature}"))
}

/// `alg: none` as RFC 7519 writes an unsecured token: an empty signature.
pub fn unsecured(claims: &Value) -> String {
    remember(format!(
        "{}.{}.",
        encode(&json!({ "alg": "none", "typ": "JWT" })),
        encode(claims)
    ))
}

/// The token with one character of its signature changed.
pub fn tampered_signature(token: &str) -> String {
    let (unsigned, signature) = token.rsplit_once('.').expect("a signed token");
    let mut signature: Vec<char> = signature.chars().collect();
    signature[0] = if signature[0] == 'A' { 'B' } else { 'A' };
    remember(format!(
        "{unsigned}.{}",
        signature.into_iter().collect::<String>()
    ))
}

/// The token's header and signature around other claims: the signature no longer matches.
pub fn swapped_claims(token: &str, claims: &Value) -> String {
    let mut parts = token.split('.');
    let (header, _, signature) = (parts.next(), parts.next(), parts.next());
    remember(format!(
        "{}.{}.{}",
        header.expect("a header"),
        encode(claims),
        signature.expect("a signature")
    ))
}

/// A valid token for `sub` exactly `length` bytes long (padded with a claim), or one byte
/// shorter where base64 has no encoding of that length.
pub fn of_length(sub: &str, length: usize) -> String {
    let bare = user(sub, json!({ "pad": "" })).len();
    let mut longest = None;
    for pad in length.saturating_sub(bare) * 3 / 4 - 2.. {
        let token = user(sub, json!({ "pad": "p".repeat(pad) }));
        if token.len() > length {
            break;
        }
        longest = Some(token);
    }
    let token = longest.expect("a token no longer than asked");
    assert!(token.len() + 1 >= length, "{} bytes", token.len());
    token
}

/// The third part of a token: what must never be seen anywhere but in the request.
pub fn signature_of(token: &str) -> &str {
    token
        .rsplit_once('.')
        .map_or(token, |(_, signature)| signature)
}

/// The claims of a token, read without checking anything.
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a payload");
    let bytes = URL_SAFE_NO_PAD.decode(payload).expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// Every token this process has minted so far.
pub fn minted() -> Vec<String> {
    MINTED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn encode(part: &Value) -> String {
    URL_SAFE_NO_PAD.encode(part.to_string())
}

fn remember(token: String) -> String {
    MINTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(token.clone());
    token
}
