//! The credentials the store keeps: named bearer tokens, known only by their hash.
//!
//! A token is 256 random bits, so a fast hash (BLAKE3) is as good as a slow one
//! against guessing, and the store never holds anything a stolen copy of the
//! database could present. Both stores run the same checks on the same records.

use super::rfc3339_ms;
use serde::{Deserialize, Serialize};

/// A named, scoped bearer token, as stored (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Unique; the action log names it.
    pub name: String,
    /// Its role's name (`viewer`, `operator`, `pipeline`, `metrics`, `enroll`, `admin`).
    pub role: String,
    /// When it was made.
    #[serde(rename = "created_at", with = "rfc3339_ms")]
    pub created_ms: i64,
    /// When it stops working (`None`: never).
    #[serde(rename = "expires_at", with = "rfc3339_ms::option")]
    pub expires_ms: Option<i64>,
    /// Enrollments it may still make (`None`: any number).
    pub uses_left: Option<u64>,
    /// The host ids it may enroll (a glob; `None`: any).
    pub host_ids: Option<String>,
    /// The images its hosts may claim (a glob; `None`: any).
    pub images: Option<String>,
    /// When it was revoked.
    #[serde(rename = "revoked_at", with = "rfc3339_ms::option")]
    pub revoked_ms: Option<i64>,
}

impl TokenRecord {
    /// Why it cannot be used at `now_ms`, if it cannot.
    pub fn unusable(&self, now_ms: i64) -> Option<&'static str> {
        if self.revoked_ms.is_some() {
            Some("revoked")
        } else if self.expires_ms.is_some_and(|at| at <= now_ms) {
            Some("expired")
        } else if self.uses_left == Some(0) {
            Some("used up")
        } else {
            None
        }
    }
}

/// The stored form of a token: `blake3:` and the hex hash of its text.
pub fn token_hash(token: &str) -> String {
    format!("blake3:{}", blake3::hash(token.trim().as_bytes()).to_hex())
}

/// Column list shared by both stores' token queries, in [`TokenRecord`] order.
pub(crate) const TOKEN_COLUMNS: &str =
    "name, role, created_at, expires_at, uses_left, host_ids, images, revoked_at";

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> TokenRecord {
        TokenRecord {
            name: "t".into(),
            role: "viewer".into(),
            created_ms: 0,
            expires_ms: Some(100),
            uses_left: Some(1),
            host_ids: None,
            images: None,
            revoked_ms: None,
        }
    }

    #[test]
    fn a_token_stops_when_revoked_expired_or_used_up() {
        assert_eq!(token().unusable(99), None);
        assert_eq!(token().unusable(100), Some("expired"));
        let used = TokenRecord {
            uses_left: Some(0),
            ..token()
        };
        assert_eq!(used.unusable(0), Some("used up"));
        let revoked = TokenRecord {
            revoked_ms: Some(1),
            ..token()
        };
        assert_eq!(revoked.unusable(0), Some("revoked"));
        assert_eq!(token_hash(" x\n"), token_hash("x"));
        assert!(token_hash("x").starts_with("blake3:"));
    }
}
