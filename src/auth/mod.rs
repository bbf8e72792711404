//! Who is talking: signed user tokens ([jwt]) and what they grant.
//!
//! A token's claims: `sub` (the user id, required), `name` (shown to others, at most 64
//! characters), `rooms` (names or prefix patterns such as `support-*`, `*` for all; absent
//! means all) and `publish` (the rooms the user may post in; absent means all of `rooms`).

pub mod jwt;

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

pub use jwt::Refusal;

use crate::protocol;

/// `ROOMCAST_AUTH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everyone is anonymous; tokens are not looked at.
    Off,
    /// Anonymous clients are welcome; a token, if sent, must be valid and identifies.
    Optional,
    /// Every upgrade needs a valid token.
    Required,
}

/// A signing secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Rooms a token grants, as names and `prefix-*` patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants(Vec<String>);

impl Grants {
    pub fn all() -> Grants {
        Grants(vec!["*".into()])
    }

    pub fn allows(&self, room: &str) -> bool {
        self.0
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => room.starts_with(prefix),
                None => pattern == room,
            })
    }

    fn from_claim(claim: Option<&Value>) -> Result<Option<Grants>, Refusal> {
        let Some(claim) = claim else {
            return Ok(None);
        };
        let Value::Array(entries) = claim else {
            return Err(Refusal::Claims);
        };
        let patterns = entries
            .iter()
            .map(|entry| entry.as_str().map(String::from).ok_or(Refusal::Claims))
            .collect::<Result<Vec<_>, _>>()?;
        if patterns.len() > 256 || patterns.iter().any(|p| p.is_empty() || p.len() > 101) {
            return Err(Refusal::Claims);
        }
        Ok(Some(Grants(patterns)))
    }
}

/// A verified user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: String,
    pub name: Option<String>,
    /// `{"id": …, "name": …}`, encoded once for every frame this user sends.
    pub user_json: Arc<str>,
    pub rooms: Grants,
    pub publish: Grants,
    /// `exp`, in seconds since the Unix epoch.
    pub expires: u64,
}

impl Identity {
    fn from_claims(claims: &Map<String, Value>) -> Result<Identity, Refusal> {
        let id = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|sub| !sub.is_empty() && sub.len() <= 256)
            .ok_or(Refusal::Claims)?
            .to_string();
        let name = match claims.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) if name.chars().count() <= 64 => Some(name.clone()),
            Some(_) => return Err(Refusal::Claims),
        };
        let rooms = Grants::from_claim(claims.get("rooms"))?.unwrap_or_else(Grants::all);
        let publish = Grants::from_claim(claims.get("publish"))?.unwrap_or_else(|| rooms.clone());
        let expires = claims
            .get("exp")
            .and_then(jwt::numeric_date)
            .ok_or(Refusal::Claims)?;
        let mut user_json = String::from("{\"id\":");
        protocol::push_json_string(&mut user_json, &id);
        if let Some(name) = &name {
            user_json.push_str(",\"name\":");
            protocol::push_json_string(&mut user_json, name);
        }
        user_json.push('}');
        Ok(Identity {
            id,
            name,
            user_json: Arc::from(user_json),
            rooms,
            publish,
            expires,
        })
    }
}

/// Turns tokens into identities under the configured secrets and audience.
#[derive(Debug, Clone)]
pub struct Authenticator {
    pub mode: Mode,
    secrets: Vec<Secret>,
    audience: String,
}

impl Authenticator {
    pub fn new(mode: Mode, secrets: Vec<Secret>, audience: String) -> Authenticator {
        Authenticator {
            mode,
            secrets,
            audience,
        }
    }

    pub fn verify(&self, token: &str, now: u64) -> Result<Identity, Refusal> {
        let secrets: Vec<&[u8]> = self.secrets.iter().map(|s| s.0.as_slice()).collect();
        let claims = jwt::verify(token, &secrets, &self.audience, now)?;
        Identity::from_claims(&claims)
    }

    /// A fresh token for a connected user: it must be the same user, still granted `room`.
    pub fn refresh(
        &self,
        token: &str,
        current: &Identity,
        room: &str,
        now: u64,
    ) -> Result<Identity, Refusal> {
        let fresh = self.verify(token, now)?;
        if fresh.id != current.id || !fresh.rooms.allows(room) {
            return Err(Refusal::Claims);
        }
        Ok(fresh)
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    protocol::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"a-secret-of-at-least-thirty-two-bytes!";

    fn authenticator() -> Authenticator {
        Authenticator::new(
            Mode::Required,
            vec![Secret(SECRET.to_vec())],
            "roomcast".into(),
        )
    }

    fn token(extra: Value) -> String {
        let mut claims = json!({ "sub": "42", "aud": "roomcast", "exp": now_secs() + 60 });
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        jwt::sign(&claims, SECRET)
    }

    #[test]
    fn grants_match_names_and_prefixes() {
        let grants = Grants(vec!["lobby".into(), "support-*".into()]);
        assert!(grants.allows("lobby"));
        assert!(grants.allows("support-7"));
        assert!(!grants.allows("lobby2"));
        assert!(!grants.allows("sales"));
        assert!(Grants::all().allows("anything"));
    }

    #[test]
    fn identities_carry_the_user_and_what_they_may_do() {
        let ada = authenticator()
            .verify(
                &token(json!({ "name": "Ada \"L\"", "rooms": ["a", "b"], "publish": ["a"] })),
                now_secs(),
            )
            .unwrap();
        assert_eq!(&*ada.user_json, r#"{"id":"42","name":"Ada \"L\""}"#);
        assert!(ada.rooms.allows("b") && !ada.publish.allows("b"));
        let plain = authenticator()
            .verify(&token(json!({})), now_secs())
            .unwrap();
        assert!(plain.rooms.allows("x") && plain.publish.allows("x"));
        assert_eq!(&*plain.user_json, r#"{"id":"42"}"#);
        let long_name = token(json!({ "name": "n".repeat(65) }));
        assert_eq!(
            authenticator().verify(&long_name, now_secs()),
            Err(Refusal::Claims)
        );
        let no_sub = jwt::sign(
            &json!({ "aud": "roomcast", "exp": now_secs() + 60 }),
            SECRET,
        );
        assert_eq!(
            authenticator().verify(&no_sub, now_secs()),
            Err(Refusal::Claims)
        );
    }

    #[test]
    fn a_refresh_must_be_the_same_user_still_in_the_room() {
        let auth = authenticator();
        let current = auth.verify(&token(json!({})), now_secs()).unwrap();
        assert!(
            auth.refresh(&token(json!({})), &current, "lobby", now_secs())
                .is_ok()
        );
        let other = jwt::sign(
            &json!({ "sub": "7", "aud": "roomcast", "exp": now_secs() + 60 }),
            SECRET,
        );
        assert!(auth.refresh(&other, &current, "lobby", now_secs()).is_err());
        let elsewhere = token(json!({ "rooms": ["other"] }));
        assert!(
            auth.refresh(&elsewhere, &current, "lobby", now_secs())
                .is_err()
        );
    }

    #[test]
    fn secrets_never_print() {
        assert_eq!(
            format!("{:?}", Secret(b"hunter2".to_vec())),
            "Secret(<redacted>)"
        );
    }
}
