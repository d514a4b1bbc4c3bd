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
//! [`SESSION_TTL`], end at sign-out, when the stored token they were opened with is
//! revoked or expires, or when the configuration's token files no longer hold the file
//! token they were opened with (rotated), and are bounded in number ([`MAX_SESSIONS`])
//! so that sign-ins cannot fill the store.

use crate::app::AppState;
use crate::auth::{Principal, Role, RESERVED_NAMES};
use crate::store::trust::token_hash;
use crate::store::{now_ms, SessionRecord, StoreError, StoreResult};
use base64::Engine;
use std::sync::Arc;
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
    app: Arc<AppState>,
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
    /// The sessions kept in `app`'s store.
    pub fn new(app: Arc<AppState>) -> Sessions {
        Sessions { app }
    }

    /// Opens a session for `principal`, who signed in with `token`; returns its id
    /// (for the cookie).
    pub async fn open(&self, principal: Principal, token: &str) -> StoreResult<String> {
        let id = random_token();
        let ttl = i64::try_from(SESSION_TTL.as_millis()).unwrap_or(i64::MAX);
        let record = SessionRecord {
            id_hash: key(&id),
            name: principal.name,
            role: principal.role.name().to_string(),
            token_hash: token_hash(token),
            csrf: random_token(),
            expires_ms: now_ms().saturating_add(ttl),
        };
        self.app
            .fleet
            .store()
            .open_session(record, MAX_SESSIONS)
            .await?;
        Ok(id)
    }

    /// The live session of `id`, if there is one.
    pub async fn get(&self, id: &str) -> StoreResult<Option<Session>> {
        let store = self.app.fleet.store();
        let Some(record) = store.session(&key(id), now_ms()).await? else {
            return Ok(None);
        };
        let role = Role::from_name(&record.role).ok_or_else(|| {
            StoreError::Corrupt(format!("a session with the unknown role {:?}", record.role))
        })?;
        let principal = Principal {
            name: record.name,
            role,
        };
        // The store checked a stored token's revocation; a file token's session lasts
        // while the token files hold that token (file tokens have the reserved names,
        // which stored tokens cannot take).
        if RESERVED_NAMES.contains(&principal.name.as_str()) {
            let current = record
                .token_hash
                .strip_prefix("blake3:")
                .and_then(|hex| blake3::Hash::from_hex(hex).ok())
                .and_then(|hash| self.app.credentials.file_token(&hash));
            if current.as_ref() != Some(&principal) {
                return Ok(None);
            }
        }
        Ok(Some(Session {
            principal,
            csrf: record.csrf,
        }))
    }

    /// Ends the session of `id` (sign-out).
    pub async fn close(&self, id: &str) -> StoreResult<()> {
        self.app.fleet.store().close_session(&key(id)).await
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

    fn viewer() -> Principal {
        Principal {
            name: "alice".into(),
            role: Role::Viewer,
        }
    }

    #[tokio::test]
    async fn a_session_is_found_by_its_id_until_closed() {
        let sessions = Sessions::new(crate::app::test_state("", "secret"));
        let id = sessions.open(viewer(), "viewer-secret").await.unwrap();
        let session = sessions.get(&id).await.unwrap().unwrap();
        assert_eq!(session.principal, viewer());
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches("forged"));
        assert!(sessions.get("another").await.unwrap().is_none());
        let other = sessions.open(viewer(), "viewer-secret").await.unwrap();
        assert_ne!(id, other);
        let second = sessions.get(&other).await.unwrap().unwrap();
        assert_ne!(second.csrf, session.csrf);
        sessions.close(&id).await.unwrap();
        assert!(sessions.get(&id).await.unwrap().is_none());
        assert!(sessions.get(&other).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_file_tokens_session_ends_when_the_token_files_no_longer_hold_it() {
        let app = crate::app::test_state("", "first-secret");
        let sessions = Sessions::new(std::sync::Arc::clone(&app));
        let principal = crate::auth::authenticate(&app, "first-secret")
            .await
            .unwrap();
        let id = sessions
            .open(principal.clone(), "first-secret")
            .await
            .unwrap();
        assert!(sessions.get(&id).await.unwrap().is_some());
        // A session claiming a file token's name with another token is no session.
        let forged = sessions.open(principal.clone(), "other").await.unwrap();
        assert!(sessions.get(&forged).await.unwrap().is_none());
        // The token rotated (SIGHUP): its sessions end.
        app.credentials.replace(vec![crate::auth::FileToken::new(
            "second-secret",
            &principal.name,
            principal.role,
        )]);
        assert!(sessions.get(&id).await.unwrap().is_none());
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
