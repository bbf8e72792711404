//! JSON Web Tokens (RFC 7519) signed HS256, and nothing else: the algorithm is fixed, the
//! signature is compared in constant time, and `exp` is required.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

/// Tokens longer than this are refused before any work is done on them.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Why a token was refused. The text names the rule, never the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooLong,
    Malformed,
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    Audience,
    Claims,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooLong => "token too long",
            Refusal::Malformed => "token malformed",
            Refusal::Algorithm => "token algorithm not HS256",
            Refusal::Signature => "token signature invalid",
            Refusal::Expired => "token expired",
            Refusal::NotYetValid => "token not valid yet",
            Refusal::Audience => "token audience wrong",
            Refusal::Claims => "token claims missing or invalid",
        }
    }
}

/// Verifies `token` against the current secret, then the previous one (during a rotation),
/// and returns its claims. `now` is seconds since the Unix epoch.
pub fn verify(
    token: &str,
    secrets: &[&[u8]],
    audience: &str,
    now: u64,
) -> Result<Map<String, Value>, Refusal> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Refusal::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed);
    };
    let header: Value = decode_json(header)?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(Refusal::Algorithm);
    }
    // A critical extension this verifier does not know must fail the token (RFC 7515 4.1.11).
    if header.get("crit").is_some() {
        return Err(Refusal::Malformed);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| Refusal::Malformed)?;
    let signed = &token[..header_and_payload_len(token)];
    let valid = secrets.iter().any(|secret| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return false;
        };
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature).is_ok()
    });
    if !valid {
        return Err(Refusal::Signature);
    }
    let Value::Object(claims) = decode_json(payload)? else {
        return Err(Refusal::Claims);
    };
    let exp = claims
        .get("exp")
        .and_then(numeric_date)
        .ok_or(Refusal::Claims)?;
    if now > exp.saturating_add(LEEWAY_SECS) {
        return Err(Refusal::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = numeric_date(nbf).ok_or(Refusal::Claims)?;
        if now.saturating_add(LEEWAY_SECS) < nbf {
            return Err(Refusal::NotYetValid);
        }
    }
    let audience_matches = match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(audience)),
        _ => false,
    };
    if !audience_matches {
        return Err(Refusal::Audience);
    }
    Ok(claims)
}

/// Whole seconds since the epoch: RFC 7519 allows fractions (PyJWT passes `time.time()` on).
pub fn numeric_date(value: &Value) -> Option<u64> {
    match value.as_u64() {
        Some(seconds) => Some(seconds),
        None => value
            .as_f64()
            .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
            .map(|seconds| seconds as u64),
    }
}

fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

fn decode_json(part: &str) -> Result<Value, Refusal> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Refusal::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Refusal::Malformed)
}

/// Signs `claims` as an HS256 token: for tests, and for tools that mint test tokens.
pub fn sign(claims: &Value, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return signed,
    };
    mac.update(signed.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signed}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"a-secret-of-at-least-thirty-two-bytes!";
    const NOW: u64 = 1_800_000_000;

    fn claims() -> Value {
        json!({ "sub": "42", "aud": "roomcast", "exp": NOW + 60 })
    }

    fn check(token: &str) -> Result<Map<String, Value>, Refusal> {
        verify(token, &[SECRET], "roomcast", NOW)
    }

    fn with_header(header: &str, claims: &Value) -> String {
        let token = sign(claims, SECRET);
        let rest = token.split_once('.').unwrap().1;
        format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header))
    }

    #[test]
    fn accepts_a_good_token() {
        let claims = check(&sign(&claims(), SECRET)).unwrap();
        assert_eq!(claims["sub"], "42");
    }

    #[test]
    fn refuses_other_algorithms_and_tampering() {
        let none = with_header(r#"{"alg":"none"}"#, &claims());
        assert_eq!(check(&none), Err(Refusal::Algorithm));
        let rs256 = with_header(r#"{"alg":"RS256"}"#, &claims());
        assert_eq!(check(&rs256), Err(Refusal::Algorithm));
        let unsigned = format!("{}.", sign(&claims(), SECRET).rsplit_once('.').unwrap().0);
        assert_eq!(check(&unsigned), Err(Refusal::Signature));
        let token = sign(&claims(), SECRET);
        let (signed, _) = token.rsplit_once('.').unwrap();
        let forged = sign(
            &json!({ "sub": "1", "aud": "roomcast", "exp": NOW + 60 }),
            SECRET,
        );
        let swapped = format!("{signed}.{}", forged.rsplit_once('.').unwrap().1);
        assert_eq!(check(&swapped), Err(Refusal::Signature));
        assert_eq!(
            check(&sign(&claims(), b"another-secret")),
            Err(Refusal::Signature)
        );
        let crit = with_header(r#"{"alg":"HS256","crit":["exp"]}"#, &claims());
        assert_eq!(check(&crit), Err(Refusal::Malformed));
    }

    #[test]
    fn enforces_time_and_audience_with_leeway() {
        let at = |exp: u64| {
            sign(
                &json!({ "sub": "1", "aud": "roomcast", "exp": exp }),
                SECRET,
            )
        };
        assert!(check(&at(NOW - LEEWAY_SECS)).is_ok(), "inside the leeway");
        assert_eq!(check(&at(NOW - LEEWAY_SECS - 1)), Err(Refusal::Expired));
        let early = json!({ "sub": "1", "aud": "roomcast", "exp": NOW + 600, "nbf": NOW + 31 });
        assert_eq!(check(&sign(&early, SECRET)), Err(Refusal::NotYetValid));
        let no_exp = json!({ "sub": "1", "aud": "roomcast" });
        assert_eq!(check(&sign(&no_exp, SECRET)), Err(Refusal::Claims));
        let wrong_aud = json!({ "sub": "1", "aud": "other", "exp": NOW + 60 });
        assert_eq!(check(&sign(&wrong_aud, SECRET)), Err(Refusal::Audience));
        let listed = json!({ "sub": "1", "aud": ["x", "roomcast"], "exp": NOW + 60 });
        assert!(check(&sign(&listed, SECRET)).is_ok());
    }

    #[test]
    fn a_previous_secret_still_verifies_during_a_rotation() {
        let old = sign(&claims(), b"the-previous-secret");
        assert!(verify(&old, &[SECRET, b"the-previous-secret"], "roomcast", NOW).is_ok());
        assert!(verify(&old, &[SECRET], "roomcast", NOW).is_err());
    }

    #[test]
    fn refuses_oversized_and_malformed_tokens() {
        assert_eq!(
            check(&"a".repeat(MAX_TOKEN_BYTES + 1)),
            Err(Refusal::TooLong)
        );
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.e30"] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
