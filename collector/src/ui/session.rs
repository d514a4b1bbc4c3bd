//! Sign-in sessions of the dashboard, kept on the server.
//!
//! Signing in exchanges a token (checked by [`crate::auth::authenticate`], like a bearer
//! token of the API) for a random session id in an `HttpOnly`, `Secure`,
//! `SameSite=Strict` cookie; the token itself is never kept. Each session carries its
//! own CSRF token, which every form that changes something must send back. Sessions
//! live in this process's memory: they expire after [`SESSION_TTL`], end at sign-out
//! or restart, and are bounded in number so that sign-ins cannot exhaust memory.

use crate::auth::Principal;
use base64::Engine;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a session lasts from sign-in (a working day).
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// The cookie that carries the session id.
pub const COOKIE: &str = "driftwatch_session";

/// Most sessions kept at once; beyond, the one closest to its end is dropped.
const MAX_SESSIONS: usize = 10_000;

/// One signed-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    /// Who signed in.
    pub principal: Principal,
    /// The token every acting form must carry.
    pub csrf: String,
    expires: Instant,
}

impl Session {
    /// Whether `token` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, token: &str) -> bool {
        blake3::hash(token.as_bytes()) == blake3::hash(self.csrf.as_bytes())
    }
}

/// The sessions of this collector process.
#[derive(Default)]
pub struct Sessions {
    // Keyed by the BLAKE3 of the session id: the ids themselves are not kept.
    map: Mutex<HashMap<blake3::Hash, Session>>,
}

/// 32 random bytes, URL-safe base64: a session id or a CSRF token.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The OS's generator failing is not something a dashboard can work around.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Sessions {
    /// Opens a session for `principal`; returns its id (for the cookie).
    pub fn open(&self, principal: Principal) -> String {
        let id = random_token();
        let session = Session {
            principal,
            csrf: random_token(),
            expires: Instant::now() + SESSION_TTL,
        };
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            let now = Instant::now();
            map.retain(|_, s| s.expires > now);
        }
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(blake3::hash(id.as_bytes()), session);
        id
    }

    /// The live session of `id`, if there is one.
    pub fn get(&self, id: &str) -> Option<Session> {
        let key = blake3::hash(id.as_bytes());
        let mut map = self.lock();
        match map.get(&key) {
            Some(session) if session.expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session of `id` (sign-out).
    pub fn close(&self, id: &str) {
        self.lock().remove(&blake3::hash(id.as_bytes()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<blake3::Hash, Session>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
    use crate::auth::Role;

    fn viewer() -> Principal {
        Principal {
            name: "alice".into(),
            role: Role::Viewer,
        }
    }

    #[test]
    fn a_session_is_found_by_its_id_until_closed() {
        let sessions = Sessions::default();
        let id = sessions.open(viewer());
        let session = sessions.get(&id).unwrap();
        assert_eq!(session.principal, viewer());
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches("forged"));
        assert!(sessions.get("another").is_none());
        let other = sessions.open(viewer());
        assert_ne!(id, other);
        assert_ne!(sessions.get(&other).unwrap().csrf, session.csrf);
        sessions.close(&id);
        assert!(sessions.get(&id).is_none());
        assert!(sessions.get(&other).is_some());
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
