//! Sign-in sessions of the dashboard, kept in the store.
//!
//! Signing in exchanges a token (checked by [`crate::auth::authenticate`], like a bearer
//! token of the API) for a random session id in an `HttpOnly`, `Secure`,
//! `SameSite=Strict` cookie; the token itself is never kept. Each session carries its
//! own CSRF token, which every form that changes something must send back.
//!
//! Sessions live in the store ([`crate::store::SessionRecord`]), under the BLAKE3 of
//! their id, so that every replica behind a load balancer serves a browser signed in
//! through another, and a restart signs nobody out. They expire after
//! [`SESSION_TTL`], end at sign-out or when the stored token they were opened with is
//! revoked or expires, and are bounded in number ([`MAX_SESSIONS`]) so that sign-ins
//! cannot fill the store.

use crate::auth::{Principal, Role};
use crate::store::{now_ms, DynStore, SessionRecord, StoreError, StoreResult};
use base64::Engine;
use std::time::Duration;

/// How long a session lasts from sign-in (a working day).
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// The cookie that carries the session id.
pub const COOKIE: &str = "driftwatch_session";

/// Most sessions kept at once; beyond, the one closest to its end is dropped.
pub const MAX_SESSIONS: u64 = 10_000;

/// One signed-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    /// Who signed in.
    pub principal: Principal,
    /// The token every acting form must carry.
    pub csrf: String,
}

impl Session {
    /// Whether `token` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, token: &str) -> bool {
        blake3::hash(token.as_bytes()) == blake3::hash(self.csrf.as_bytes())
    }
}

/// The sessions of every collector on this store.
pub struct Sessions {
    store: DynStore,
}

/// 32 random bytes, URL-safe base64: a session id or a CSRF token.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The OS's generator failing is not something a dashboard can work around.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the store keys a session by: the hash of its id, never the id.
fn key(id: &str) -> String {
    blake3::hash(id.as_bytes()).to_hex().to_string()
}

impl Sessions {
    /// The sessions kept in `store`.
    pub fn new(store: DynStore) -> Sessions {
        Sessions { store }
    }

    /// Opens a session for `principal`; returns its id (for the cookie).
    pub async fn open(&self, principal: Principal) -> StoreResult<String> {
        let id = random_token();
        let ttl = i64::try_from(SESSION_TTL.as_millis()).unwrap_or(i64::MAX);
        let record = SessionRecord {
            id_hash: key(&id),
            name: principal.name,
            role: principal.role.name().to_string(),
            csrf: random_token(),
            expires_ms: now_ms().saturating_add(ttl),
        };
        self.store.open_session(record, MAX_SESSIONS).await?;
        Ok(id)
    }

    /// The live session of `id`, if there is one.
    pub async fn get(&self, id: &str) -> StoreResult<Option<Session>> {
        let Some(record) = self.store.session(&key(id), now_ms()).await? else {
            return Ok(None);
        };
        let role = Role::from_name(&record.role).ok_or_else(|| {
            StoreError::Corrupt(format!("a session with the unknown role {:?}", record.role))
        })?;
        Ok(Some(Session {
            principal: Principal {
                name: record.name,
                role,
            },
            csrf: record.csrf,
        }))
    }

    /// Ends the session of `id` (sign-out).
    pub async fn close(&self, id: &str) -> StoreResult<()> {
        self.store.close_session(&key(id)).await
    }
}

/// The session id in a request's `Cookie` headers, if any.
pub fn cookie_value(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The `Set-Cookie` value that stores `id` in the browser.
pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/ui; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that removes it.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    fn viewer() -> Principal {
        Principal {
            name: "alice".into(),
            role: Role::Viewer,
        }
    }

    #[tokio::test]
    async fn a_session_is_found_by_its_id_until_closed() {
        let store: DynStore = std::sync::Arc::new(SqliteStore::open_memory().unwrap());
        let sessions = Sessions::new(store);
        let id = sessions.open(viewer()).await.unwrap();
        let session = sessions.get(&id).await.unwrap().unwrap();
        assert_eq!(session.principal, viewer());
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches("forged"));
        assert!(sessions.get("another").await.unwrap().is_none());
        let other = sessions.open(viewer()).await.unwrap();
        assert_ne!(id, other);
        let second = sessions.get(&other).await.unwrap().unwrap();
        assert_ne!(second.csrf, session.csrf);
        sessions.close(&id).await.unwrap();
        assert!(sessions.get(&id).await.unwrap().is_none());
        assert!(sessions.get(&other).await.unwrap().is_some());
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            format!("a=b; {COOKIE}=xyz; c=d").parse().unwrap(),
        );
        assert_eq!(cookie_value(&headers).as_deref(), Some("xyz"));
        assert!(set_cookie("xyz").contains("HttpOnly; Secure; SameSite=Strict"));
        assert_eq!(cookie_value(&axum::http::HeaderMap::new()), None);
    }
}
