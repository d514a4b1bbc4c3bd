//! The credentials the store keeps: named bearer tokens, known only by their hash;
//! the key each host id is bound to; and the keys revoked, which stay refused until
//! their certificates expire, whatever becomes of the host's record.
//!
//! A token is 256 random bits, so a fast hash (BLAKE3) is as good as a slow one
//! against guessing, and the store never holds anything a stolen copy of the
//! database could present. Both stores run the same checks on the same records.

use super::{rfc3339_ms, StoreError, StoreResult};
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
    /// False for an `enroll` token of hosts without a daemon (one-shot
    /// `check --report`, CI scans): the hosts it enrolls are never silent.
    #[serde(default = "daemon_default")]
    pub daemon: bool,
}

fn daemon_default() -> bool {
    true
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

/// How a host id came to be bound to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Enrolled with a token: its certificate request named the key.
    Enrolled,
    /// Provisioned with `issue-host-cert`: never enrolled.
    Provisioned,
    /// A certificate from before bindings, pinned at its first report.
    FirstContact,
    /// Renewed over the host's current certificate (same key or a new one).
    Renewed,
}

super::named!(Source {
    Enrolled = "enrolled",
    Provisioned = "provisioned",
    FirstContact = "first_contact",
    Renewed = "renewed",
});

/// The key a host id is bound to, and what its enrollment allowed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The host id.
    pub host_id: String,
    /// [`crate::pki::CertInfo::key_fingerprint`] of its key.
    pub key_fingerprint: String,
    /// The serial of its latest certificate.
    pub serial: String,
    /// When that certificate expires.
    #[serde(rename = "not_after", with = "rfc3339_ms")]
    pub not_after_ms: i64,
    /// How the binding was made.
    pub source: Source,
    /// The enrollment token's name, when enrolled with a stored token.
    pub token: Option<String>,
    /// The images the host may claim (a glob from its token; `None`: any).
    pub images: Option<String>,
    /// False for hosts without a daemon (one-shot reports): never silent.
    pub daemon: bool,
    /// When it was bound (or re-issued).
    #[serde(rename = "bound_at", with = "rfc3339_ms")]
    pub bound_ms: i64,
}

/// What an enrollment did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enrolled {
    /// A new binding (the token spent one use).
    New,
    /// The id was bound to this key already (a retried request): the certificate is
    /// re-issued, the token not spent again.
    Again,
}

/// What the store knows of a presented certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Its key is revoked.
    Revoked,
    /// The id is bound to another key.
    OtherKey,
    /// The id is bound to this key.
    Bound(Binding),
    /// The id has no binding yet.
    Unbound,
}

/// Column list of both stores' binding queries, in [`Binding`] order.
pub(crate) const BINDING_COLUMNS: &str =
    "host_id, key_fingerprint, serial, not_after, source, token, images, daemon, bound_at";

/// Whether `new` may replace `known` (the id's current binding): the same key again
/// is [`Enrolled::Again`]; provisioning and renewal rebind; enrollment never takes an
/// id provisioned or bound to another key.
pub(crate) fn judge(known: Option<&Binding>, new: &Binding) -> StoreResult<Enrolled> {
    match known {
        None => Ok(Enrolled::New),
        // Provisioning is the operator's; a renewal was made over the bound key.
        Some(_) if matches!(new.source, Source::Provisioned | Source::Renewed) => Ok(Enrolled::New),
        Some(known) if known.source == Source::Provisioned => Err(StoreError::Conflict(format!(
            "host {} was provisioned with a certificate; it cannot be enrolled",
            new.host_id
        ))),
        Some(known) if known.key_fingerprint == new.key_fingerprint => Ok(Enrolled::Again),
        Some(_) => Err(StoreError::Conflict(format!(
            "host {} is enrolled with another key",
            new.host_id
        ))),
    }
}

/// Whether `value` matches the optional glob of a token's scope (none: anything; a
/// glob that does not compile matches nothing).
pub fn allowed(glob: Option<&str>, value: &str) -> bool {
    glob.is_none_or(|glob| {
        globset::Glob::new(glob).is_ok_and(|g| g.compile_matcher().is_match(value))
    })
}

/// The stored form of a token: `blake3:` and the hex hash of its text.
pub fn token_hash(token: &str) -> String {
    format!("blake3:{}", blake3::hash(token.trim().as_bytes()).to_hex())
}

/// Column list shared by both stores' token queries, in [`TokenRecord`] order.
pub(crate) const TOKEN_COLUMNS: &str =
    "name, role, created_at, expires_at, uses_left, host_ids, images, revoked_at, daemon";

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
            daemon: true,
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
