//! `POST /v1/enroll`: a host without credentials trades the enrollment token and a
//! certificate signing request for a client certificate naming its host id.
//!
//! An id is enrolled once: a second request for it is refused (409), so the token lets
//! a new host in but never lets anyone take over an existing host's identity. A host
//! that lost its key is revoked and re-provisioned by an operator.

use crate::app::AppState;
use crate::error::ApiError;
use crate::pki::{fingerprint, first_certificate};
use crate::store::now_ms;
use crate::store::ActionRecord;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use driftwatch_protocol::wire::{is_valid_host_id, EnrollRequest, EnrollResponse};
use std::sync::Arc;
use tracing::{info, warn};

/// Rate-limiter key shared by all enrollment requests: enrollment is rare, and guessing
/// the token must be slow.
const ENROLL_BUCKET: &str = "\0enroll";

/// Issues a host certificate.
pub async fn enroll(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<EnrollResponse>, ApiError> {
    let request: EnrollRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the enrollment request is not valid: {e}")))?;
    let enrollment = state
        .enrollment
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("enrollment is not enabled on this collector".into()))?;
    state.limiter.check(ENROLL_BUCKET)?;
    if blake3::hash(request.token.trim().as_bytes()) != enrollment.token {
        warn!(host_id = %request.host_id, "Enrollment with a bad token refused.");
        return Err(ApiError::Forbidden(
            "the enrollment token is not valid".into(),
        ));
    }
    if !is_valid_host_id(&request.host_id) {
        return Err(ApiError::BadRequest(format!(
            "{:?} is not a valid host id (letters, digits, '.', '-', '_', ':'; at most 128)",
            request.host_id
        )));
    }
    let certificate_pem = enrollment
        .ca
        .sign_request(
            &request.csr_pem,
            &request.host_id,
            state.config.tls.host_cert_days,
        )
        .map_err(|e| ApiError::BadRequest(format!("cannot issue a certificate: {e}")))?;
    let cert = first_certificate(&certificate_pem, "issued certificate")
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let store = state.fleet.store();
    store
        .enroll(&request.host_id, &fingerprint(&cert), now_ms())
        .await?;
    let action = ActionRecord {
        id: 0,
        at_ms: now_ms(),
        host_id: Some(request.host_id.clone()),
        image_id: None,
        action: "enroll".into(),
        target: None,
        outcome: crate::store::Outcome::Ok,
        detail: format!("Issued certificate {}.", fingerprint(&cert)),
    };
    if let Err(err) = store.record_action(action).await {
        warn!(error = %err, "Cannot log an action.");
    }
    info!(host_id = %request.host_id, "Host enrolled.");
    Ok(Json(EnrollResponse {
        host_id: request.host_id,
        certificate_pem,
    }))
}
