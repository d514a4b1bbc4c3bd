//! `POST /v1/renew`: an enrolled host renews its certificate before it expires, over
//! its current mutual-TLS identity, for the same key or a new one.
//!
//! The certificate presented must be admitted like a report's (bound, not revoked);
//! the new certificate names the same host and keeps what its enrollment allowed
//! (images, daemon or not), and the id is bound to the new key from then on: a
//! replaced key is refused like any other key.

use crate::app::AppState;
use crate::error::ApiError;
use crate::store::trust::Source;
use crate::store::{now_ms, ActionRecord, Binding, Outcome};
use crate::tls::Peer;
use axum::body::Bytes;
use axum::extract::State;
use axum::{Extension, Json};
use driftwatch_protocol::wire::{EnrollResponse, RenewRequest};
use std::sync::Arc;
use tracing::{info, warn};

/// Issues a renewed host certificate.
pub async fn renew(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    body: Bytes,
) -> Result<Json<EnrollResponse>, ApiError> {
    let (host_id, presented) = match (&peer.host_id, &peer.certificate) {
        (Some(host_id), Some(presented)) => (host_id.clone(), presented),
        _ => {
            return Err(ApiError::Unauthorized(
                "renewal needs the host's current client certificate".into(),
            ))
        }
    };
    state.limiter.check(&host_id)?;
    let store = state.fleet.store();
    let current = crate::identity::admit(store, &host_id, presented).await?;
    let request: RenewRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the renewal request is not valid: {e}")))?;
    let (certificate_pem, issued) = super::enroll::issue(&state, &request.csr_pem, &host_id)?;
    let same_key = issued.key_fingerprint == current.key_fingerprint;
    store
        .bind(Binding {
            key_fingerprint: issued.key_fingerprint.clone(),
            serial: issued.serial.clone(),
            not_after_ms: issued.not_after_ms,
            source: Source::Renewed,
            bound_ms: now_ms(),
            ..current
        })
        .await?;
    let action = ActionRecord {
        id: 0,
        at_ms: now_ms(),
        host_id: Some(host_id.clone()),
        image_id: None,
        action: "renew".into(),
        target: Some(host_id.clone()),
        outcome: Outcome::Ok,
        detail: format!(
            "Renewed with certificate {} ({}).",
            issued.serial,
            if same_key { "same key" } else { "new key" }
        ),
    };
    if let Err(err) = store.record_action(action).await {
        warn!(error = %err, "Cannot log an action.");
    }
    info!(host_id = %host_id, same_key, "Certificate renewed.");
    Ok(Json(EnrollResponse {
        host_id,
        certificate_pem,
    }))
}
