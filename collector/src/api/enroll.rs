//! `POST /v1/enroll`: a host without credentials trades an enrollment token and a
//! certificate signing request for a client certificate naming its host id.
//!
//! An id is bound once, to the key of its first enrollment: the same key again gets a
//! certificate again (a lost answer is retried safely), another key is refused (409),
//! and an id provisioned with `issue-host-cert` is never enrolled. Tokens are the
//! configuration's `enrollment_token_file` or stored `enroll` tokens, which may expire,
//! count uses and allow only some host ids and images. A bad token counts against its
//! source address only; each valid token has a rate of its own, so guessing neither
//! succeeds nor slows the fleet's enrollments.

use crate::app::AppState;
use crate::auth::{stored_token, Role};
use crate::error::ApiError;
use crate::pki::{cert_info, first_certificate, CertInfo};
use crate::store::trust::{allowed, Source};
use crate::store::{now_ms, ActionRecord, Binding, Enrolled};
use crate::tls::Peer;
use axum::body::Bytes;
use axum::extract::State;
use axum::{Extension, Json};
use driftwatch_protocol::wire::{is_valid_host_id, EnrollRequest, EnrollResponse};
use std::sync::Arc;
use tracing::{info, warn};

/// The name the configuration's enrollment token goes by.
const FILE_TOKEN: &str = "enrollment";

/// What an enrollment token allows.
struct Scope {
    /// Its name (the log's, and its rate's key).
    name: String,
    /// A stored token (which counts uses), not the configuration's.
    stored: bool,
    /// Host ids it may enroll.
    host_ids: Option<String>,
    /// Images its hosts may claim.
    images: Option<String>,
    /// Its hosts run a daemon (else they are never silent).
    daemon: bool,
}

/// The scope of `token`, or 403.
async fn scope(state: &AppState, token: &str) -> Result<Scope, ApiError> {
    let invalid = || ApiError::Forbidden("the enrollment token is not valid".into());
    let enrollment = state
        .enrollment()
        .ok_or_else(|| ApiError::NotFound("enrollment is not enabled on this collector".into()))?;
    // blake3::Hash compares in constant time.
    if enrollment.token == Some(blake3::hash(token.trim().as_bytes())) {
        return Ok(Scope {
            name: FILE_TOKEN.into(),
            stored: false,
            host_ids: None,
            images: None,
            daemon: true,
        });
    }
    let record = stored_token(state, token, "enrollment token").await?;
    if Role::from_name(&record.role) != Some(Role::Enroll) {
        return Err(invalid());
    }
    Ok(Scope {
        name: record.name,
        stored: true,
        host_ids: record.host_ids,
        images: record.images,
        daemon: record.daemon,
    })
}

/// Signs `csr_pem` for `host_id` with the collector's CA (enrollment and renewal):
/// the certificate PEM and what the store keeps of it.
pub fn issue(
    state: &AppState,
    csr_pem: &str,
    host_id: &str,
) -> Result<(String, CertInfo), ApiError> {
    let enrollment = state
        .enrollment()
        .ok_or_else(|| ApiError::NotFound("this collector issues no certificates".into()))?;
    let certificate_pem = enrollment
        .ca
        .sign_request(csr_pem, host_id, state.config.tls.host_cert_validity())
        .map_err(|e| ApiError::BadRequest(format!("cannot issue a certificate: {e}")))?;
    let info = first_certificate(&certificate_pem, "issued certificate")
        .ok()
        .as_ref()
        .and_then(cert_info)
        .ok_or_else(|| ApiError::BadRequest("cannot read the issued certificate".into()))?;
    Ok((certificate_pem, info))
}

/// Issues a host certificate.
pub async fn enroll(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    body: Bytes,
) -> Result<Json<EnrollResponse>, ApiError> {
    let request: EnrollRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the enrollment request is not valid: {e}")))?;
    let scope = scope(&state, &request.token).await.map_err(|why| {
        warn!(host_id = %request.host_id, "Enrollment with a bad token refused.");
        match why {
            ApiError::Forbidden(_) => {
                state
                    .credentials
                    .failed(&state, "enroll", Some(peer.address.ip()), why)
            }
            other => other,
        }
    })?;
    state.limiter.check(&format!("\0enroll:{}", scope.name))?;
    if !is_valid_host_id(&request.host_id) {
        return Err(ApiError::BadRequest(format!(
            "{:?} is not a valid host id (letters, digits, '.', '-', '_', ':'; at most 128)",
            request.host_id
        )));
    }
    if !allowed(scope.host_ids.as_deref(), &request.host_id) {
        return Err(ApiError::Forbidden(format!(
            "token {:?} does not enroll host {}",
            scope.name, request.host_id
        )));
    }
    let (certificate_pem, info) = issue(&state, &request.csr_pem, &request.host_id)?;
    let store = state.fleet.store();
    let outcome = store
        .bind(Binding {
            host_id: request.host_id.clone(),
            key_fingerprint: info.key_fingerprint.clone(),
            serial: info.serial.clone(),
            not_after_ms: info.not_after_ms,
            source: Source::Enrolled,
            token: scope.stored.then(|| scope.name.clone()),
            images: scope.images.clone(),
            daemon: scope.daemon,
            bound_ms: now_ms(),
        })
        .await?;
    let again = match outcome {
        Enrolled::New => "",
        Enrolled::Again => " again (same key)",
    };
    let action = ActionRecord {
        id: 0,
        at_ms: now_ms(),
        host_id: Some(request.host_id.clone()),
        image_id: None,
        action: "enroll".into(),
        target: Some(scope.name.clone()),
        outcome: crate::store::Outcome::Ok,
        detail: format!(
            "Issued certificate {} for key {}{again}.",
            info.serial, info.key_fingerprint
        ),
    };
    if let Err(err) = store.record_action(action).await {
        warn!(error = %err, "Cannot log an action.");
    }
    info!(host_id = %request.host_id, token = %scope.name, "Host enrolled{again}.");
    Ok(Json(EnrollResponse {
        host_id: request.host_id,
        certificate_pem,
    }))
}
