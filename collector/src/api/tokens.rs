//! `/v1/tokens`: the admin's named, scoped credentials. A token is shown once, when
//! it is made; the store keeps its hash ([`crate::store::trust`]), and every action
//! it takes is logged under its name.

use crate::app::AppState;
use crate::auth::{Principal, Right, Role, RESERVED_NAMES};
use crate::error::ApiError;
use crate::store::trust::token_hash;
use crate::store::{now_ms, ActionRecord, Outcome, TokenRecord};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Longest token name.
const MAX_NAME: usize = 64;

/// The body of `POST /v1/tokens`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Unique name (letters, digits, `.`, `-`, `_`).
    pub name: String,
    /// `viewer`, `operator`, `pipeline`, `metrics`, `enroll` or `admin`.
    pub role: String,
    /// Seconds until it stops working (default: never).
    #[serde(default)]
    pub expires_secs: Option<u64>,
    /// Enrollments it may make (default: any number; `enroll` tokens only).
    #[serde(default)]
    pub uses: Option<u64>,
    /// Host ids it may enroll, a glob (default: any; `enroll` tokens only).
    #[serde(default)]
    pub host_ids: Option<String>,
    /// Images its hosts may claim, a glob (default: any; `enroll` tokens only).
    #[serde(default)]
    pub images: Option<String>,
    /// The hosts it enrolls run no daemon (one-shot `check --report`, CI scans) and
    /// are never silent (default false; `enroll` tokens only).
    #[serde(default)]
    pub no_daemon: bool,
}

/// The answer to `POST /v1/tokens`: the record, and the token, this once.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedToken {
    /// What is stored.
    #[serde(flatten)]
    pub record: TokenRecord,
    /// The secret; not stored, not shown again.
    pub token: String,
}

impl CreateToken {
    /// The record this request makes at `now`, or why it cannot.
    fn record(self, now: i64) -> Result<TokenRecord, ApiError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_NAME
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !name_ok || RESERVED_NAMES.contains(&self.name.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "{:?} is not a token name (1 to {MAX_NAME} letters, digits, '.', '-', '_'; \
                 not {})",
                self.name,
                RESERVED_NAMES.join(", ")
            )));
        }
        let role = Role::from_name(&self.role).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown role {:?} (viewer, operator, pipeline, metrics, enroll, admin)",
                self.role
            ))
        })?;
        let scoped = self.uses.is_some()
            || self.host_ids.is_some()
            || self.images.is_some()
            || self.no_daemon;
        if scoped && role != Role::Enroll {
            return Err(ApiError::BadRequest(
                "uses, host ids, images and no daemon scope enroll tokens only".into(),
            ));
        }
        for glob in [&self.host_ids, &self.images].into_iter().flatten() {
            globset::Glob::new(glob)
                .map_err(|e| ApiError::BadRequest(format!("{glob:?} is not a glob: {e}")))?;
        }
        let expires_ms = self.expires_secs.map(|secs| {
            now.saturating_add(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
        });
        Ok(TokenRecord {
            name: self.name,
            role: role.name().into(),
            created_ms: now,
            expires_ms,
            uses_left: self.uses,
            host_ids: self.host_ids,
            images: self.images,
            revoked_ms: None,
            daemon: !self.no_daemon,
        })
    }
}

/// `POST /v1/tokens`: makes a token and shows it once.
pub async fn create(
    who: Principal,
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<CreatedToken>, ApiError> {
    who.require(Right::Administer)?;
    let request: CreateToken = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the token request is not valid: {e}")))?;
    let record = request.record(now_ms())?;
    let token = driftwatch_protocol::random::hex(32)
        .map_err(|e| ApiError::Internal(crate::store::StoreError::Database(e.to_string())))?;
    let store = state.fleet.store();
    store
        .create_token(record.clone(), token_hash(&token))
        .await?;
    log(&state, &who, "token_create", &record).await;
    Ok(Json(CreatedToken { record, token }))
}

/// `GET /v1/tokens`: every token, without secrets.
pub async fn list(
    who: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<TokenRecord>>, ApiError> {
    who.require(Right::Administer)?;
    Ok(Json(state.fleet.store().tokens().await?))
}

/// `POST /v1/tokens/{name}/revoke`: the token stops working at once, everywhere.
pub async fn revoke(
    who: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<TokenRecord>, ApiError> {
    who.require(Right::Administer)?;
    let store = state.fleet.store();
    if !store.revoke_token(&name, now_ms()).await? {
        return Err(ApiError::NotFound(format!("no token {name:?}")));
    }
    let record = store
        .tokens()
        .await?
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no token {name:?}")))?;
    log(&state, &who, "token_revoke", &record).await;
    Ok(Json(record))
}

async fn log(state: &AppState, who: &Principal, action: &str, token: &TokenRecord) {
    let record = ActionRecord {
        id: 0,
        at_ms: now_ms(),
        host_id: None,
        image_id: None,
        action: action.into(),
        target: Some(who.name.clone()),
        outcome: Outcome::Ok,
        detail: format!("Token {:?} ({}).", token.name, token.role),
    };
    if let Err(err) = state.fleet.store().record_action(record).await {
        tracing::warn!(error = %err, "Cannot log an action.");
    }
}
