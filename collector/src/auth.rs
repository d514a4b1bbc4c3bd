//! Who is asking: the one place a bearer token (API) or a session (dashboard) becomes a
//! [`Principal`] with a [`Role`], and where a role is checked against what it may do.
//!
//! The API's extractors and the dashboard's sign-in both go through
//! [`authenticate`], so a credential means the same on both; every action-log entry
//! names the principal that took it ([`Principal::name`]).

use crate::app::AppState;
use crate::error::ApiError;

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

/// The principal a bearer token stands for, or 403.
///
/// Today one credential exists: the operator token of `[auth] operator_token_file`, which
/// holds every right and is named "operator".
pub async fn authenticate(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    // blake3::Hash compares in constant time.
    if blake3::hash(token.trim().as_bytes()) == state.operator_token {
        Ok(Principal {
            name: "operator".into(),
            role: Role::Admin,
        })
    } else {
        Err(ApiError::Forbidden("the token is not valid".into()))
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
