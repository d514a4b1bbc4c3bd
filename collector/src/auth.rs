//! Who is asking: the one place a bearer token (API) or a session (dashboard) becomes a
//! [`Principal`] with a [`Role`], and where a role is checked against what it may do.
//!
//! The API's extractors and the dashboard's sign-in both go through
//! [`authenticate`], so a credential means the same on both; every action-log entry
//! names the principal that took it ([`Principal::name`]).

use crate::app::AppState;
use crate::config::AuthConfig;
use crate::error::ApiError;
use crate::limiter::RateLimiter;
use crate::metrics::Metrics;
use crate::pki::{read_text, PkiError};
use crate::store::now_ms;
use crate::store::trust::token_hash;
use std::net::IpAddr;
use std::sync::RwLock;

/// What a credential may do. Ordered from least to most only where the order means
/// something: each role's rights are listed in [`Role::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reads hosts, findings, images and the action log.
    Viewer,
    /// A viewer that may also mark, unmark, approve, revoke and retire hosts.
    Operator,
    /// Registers images (the bake pipeline) and nothing else.
    Pipeline,
    /// Scrapes `/metrics` and nothing else.
    Metrics,
    /// Exchanges itself for a host certificate and nothing else.
    Enroll,
    /// Everything, including the credentials themselves.
    Admin,
}

/// What a request wants to do, checked by [`Role::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Read the fleet (hosts, findings, images, actions, the dashboard).
    Read,
    /// Change a host's state (mark, unmark, approve, revoke, retire).
    Act,
    /// Register an image.
    Register,
    /// Scrape metrics.
    Scrape,
    /// Manage credentials.
    Administer,
}

impl Role {
    /// The role's name as configured and shown.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Pipeline => "pipeline",
            Role::Metrics => "metrics",
            Role::Enroll => "enroll",
            Role::Admin => "admin",
        }
    }

    /// The role of a name, if it is one.
    pub fn from_name(name: &str) -> Option<Role> {
        [
            Role::Viewer,
            Role::Operator,
            Role::Pipeline,
            Role::Metrics,
            Role::Enroll,
            Role::Admin,
        ]
        .into_iter()
        .find(|role| role.name() == name)
    }

    /// Whether this role grants `right`.
    pub fn allows(self, right: Right) -> bool {
        match self {
            Role::Admin => true,
            Role::Operator => matches!(right, Right::Read | Right::Act | Right::Scrape),
            Role::Viewer => right == Right::Read,
            Role::Pipeline => right == Right::Register,
            Role::Metrics => right == Right::Scrape,
            Role::Enroll => false,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The credential's name, as the action log records it.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

impl Principal {
    /// `Ok` when the role grants `right`, else 403 naming what is missing.
    pub fn require(&self, right: Right) -> Result<(), ApiError> {
        if self.role.allows(right) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "the {} credential {:?} may not do this ({right:?})",
                self.role.name(),
                self.name
            )))
        }
    }
}

/// The credentials of the configuration's token files (re-read on SIGHUP), and the
/// per-address bound on failed attempts.
pub struct Credentials {
    files: RwLock<Vec<FileToken>>,
    failures: RateLimiter,
}

/// A token from a file named in `[auth]`.
#[derive(Clone)]
pub struct FileToken {
    /// BLAKE3 of the token (compared in constant time).
    pub hash: blake3::Hash,
    /// Who it stands for.
    pub principal: Principal,
}

/// Names the configuration's token files take; a stored token cannot take them.
pub const RESERVED_NAMES: [&str; 3] = ["admin", "operator", "pipeline"];

/// Failed authentications one source address may make at once, then one per second.
const FAILURE_BURST: f64 = 10.0;
const FAILURES_PER_SEC: f64 = 1.0;

impl FileToken {
    /// The token `text` standing for `name` with `role`.
    pub fn new(text: &str, name: &str, role: Role) -> FileToken {
        FileToken {
            hash: blake3::hash(text.trim().as_bytes()),
            principal: Principal {
                name: name.into(),
                role,
            },
        }
    }
}

impl Credentials {
    /// These file tokens; failures bounded per address.
    pub fn new(files: Vec<FileToken>) -> Credentials {
        Credentials {
            files: RwLock::new(files),
            failures: RateLimiter::new(FAILURES_PER_SEC, FAILURE_BURST),
        }
    }

    /// Reads the token files `[auth]` names: the admin's, the operator's (the admin's
    /// when there is no admin token) and the pipeline's.
    pub fn read(auth: &AuthConfig) -> Result<Vec<FileToken>, PkiError> {
        let operator_role = match auth.admin_token_file {
            Some(_) => Role::Operator,
            None => Role::Admin,
        };
        let mut files = vec![FileToken::new(
            &read_text(&auth.operator_token_file)?,
            "operator",
            operator_role,
        )];
        for (file, name, role) in [
            (&auth.admin_token_file, "admin", Role::Admin),
            (&auth.pipeline_token_file, "pipeline", Role::Pipeline),
        ] {
            if let Some(path) = file {
                files.push(FileToken::new(&read_text(path)?, name, role));
            }
        }
        Ok(files)
    }

    /// Replaces the file tokens (SIGHUP).
    pub fn replace(&self, files: Vec<FileToken>) {
        if let Ok(mut current) = self.files.write() {
            *current = files;
        }
    }

    /// The principal of the configuration's file token with this hash, if one is.
    pub(crate) fn file_token(&self, hash: &blake3::Hash) -> Option<Principal> {
        let files = self.files.read().ok()?;
        // blake3::Hash compares in constant time.
        files
            .iter()
            .find(|file| file.hash == *hash)
            .map(|file| file.principal.clone())
    }

    /// Counts a failed attempt from `source`: 403, or 429 once the address has failed
    /// too often.
    pub fn failed(
        &self,
        state: &AppState,
        at: &str,
        source: Option<IpAddr>,
        why: ApiError,
    ) -> ApiError {
        state
            .metrics
            .auth_failures
            .get_or_create(&Metrics::label("at", at))
            .inc();
        match source.map(|ip| self.failures.check(&ip.to_string())) {
            Some(Err(limited)) => limited,
            _ => why,
        }
    }
}

/// The principal a bearer token stands for, or 403: a token of the configuration's
/// files, or a stored token ([`crate::store::TokenRecord`]) that is not revoked,
/// expired or an enrollment token.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    identify(state, token)
        .await
        .map_err(|why| state.credentials.failed(state, "api", None, why))
}

/// [`authenticate`] for a request from `source`, whose failures are bounded per
/// address (429 once it failed too often).
pub async fn authenticate_from(
    state: &AppState,
    token: &str,
    source: IpAddr,
) -> Result<Principal, ApiError> {
    identify(state, token)
        .await
        .map_err(|why| state.credentials.failed(state, "api", Some(source), why))
}

/// The stored token `token` (called `what` in the refusal), unless it is unknown,
/// revoked, expired or used up (403).
pub async fn stored_token(
    state: &AppState,
    token: &str,
    what: &str,
) -> Result<crate::store::TokenRecord, ApiError> {
    let record = state
        .fleet
        .store()
        .token(&token_hash(token))
        .await?
        .ok_or_else(|| ApiError::Forbidden(format!("the {what} is not valid")))?;
    match record.unusable(now_ms()) {
        Some(why) => Err(ApiError::Forbidden(format!("the {what} is {why}"))),
        None => Ok(record),
    }
}

async fn identify(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    if let Some(principal) = state
        .credentials
        .file_token(&blake3::hash(token.trim().as_bytes()))
    {
        return Ok(principal);
    }
    let invalid = || ApiError::Forbidden("the token is not valid".into());
    let record = stored_token(state, token, "token").await?;
    match Role::from_name(&record.role) {
        Some(Role::Enroll) | None => Err(invalid()),
        Some(role) => Ok(Principal {
            name: record.name,
            role,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_only_their_rights() {
        for role in [
            Role::Viewer,
            Role::Operator,
            Role::Pipeline,
            Role::Metrics,
            Role::Enroll,
            Role::Admin,
        ] {
            assert_eq!(Role::from_name(role.name()), Some(role));
        }
        assert!(Role::Viewer.allows(Right::Read));
        assert!(!Role::Viewer.allows(Right::Act));
        assert!(Role::Operator.allows(Right::Act));
        assert!(!Role::Operator.allows(Right::Administer));
        assert!(!Role::Pipeline.allows(Right::Read));
        assert!(Role::Pipeline.allows(Right::Register));
        assert!(!Role::Metrics.allows(Right::Read));
        assert!(!Role::Enroll.allows(Right::Read));
        assert!(Role::Admin.allows(Right::Administer));
        assert_eq!(Role::from_name("root"), None);
    }
}
