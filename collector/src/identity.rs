//! Who a client certificate is: the host id it names, held to the key that id is bound
//! to, and refused when its key was revoked.
//!
//! A certificate the CA signed is not enough: the id must be bound to the
//! certificate's key (by enrollment or provisioning), and a revoked key stays refused
//! until its certificate expires, whatever became of the host's record. A certificate
//! from before bindings existed is bound at its first report. An expired certificate
//! is refused here too, for TLS sessions resumed past its expiry.

use crate::error::ApiError;
use crate::pki::CertInfo;
use crate::store::trust::{allowed, Source};
use crate::store::{now_ms, Admission, Binding, DynStore, StoreError};

/// The binding `certificate` of `host_id` reports under, or 403.
pub async fn admit(
    store: &DynStore,
    host_id: &str,
    certificate: &CertInfo,
) -> Result<Binding, ApiError> {
    // The handshake checked the validity; a resumed TLS session does not check it
    // again, so an expired certificate must not outlive its expiry on a ticket.
    if certificate.not_after_ms <= now_ms() {
        return Err(ApiError::Forbidden(format!(
            "the certificate of host {host_id} has expired"
        )));
    }
    match store
        .admission(host_id, &certificate.key_fingerprint)
        .await?
    {
        Admission::Bound(binding) => Ok(binding),
        Admission::Revoked => Err(ApiError::Forbidden(format!(
            "the key of this certificate for host {host_id} is revoked"
        ))),
        Admission::OtherKey => Err(ApiError::Forbidden(format!(
            "host {host_id} is bound to another key than this certificate's"
        ))),
        Admission::Unbound => {
            let binding = Binding {
                host_id: host_id.to_string(),
                key_fingerprint: certificate.key_fingerprint.clone(),
                serial: certificate.serial.clone(),
                not_after_ms: certificate.not_after_ms,
                source: Source::FirstContact,
                token: None,
                images: None,
                daemon: true,
                bound_ms: now_ms(),
            };
            match store.bind(binding.clone()).await {
                Ok(_) => Ok(binding),
                Err(StoreError::Conflict(message)) => Err(ApiError::Forbidden(message)),
                Err(other) => Err(other.into()),
            }
        }
    }
}

/// 403 when the binding's enrollment scope does not allow claiming `image_id`.
pub fn check_image(binding: &Binding, image_id: Option<&str>) -> Result<(), ApiError> {
    let Some(glob) = binding.images.as_deref() else {
        return Ok(());
    };
    match image_id {
        Some(image) if allowed(Some(glob), image) => Ok(()),
        other => Err(ApiError::Forbidden(format!(
            "host {} was enrolled for images {glob:?}; it cannot claim {}",
            binding.host_id,
            other.unwrap_or("no image")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn an_expired_certificate_is_refused_even_when_its_key_is_bound() {
        let store: DynStore = Arc::new(crate::store::sqlite::SqliteStore::open_memory().unwrap());
        let mut certificate = CertInfo {
            key_fingerprint: "blake3:k".into(),
            serial: "01".into(),
            not_after_ms: now_ms() + 60_000,
            issuer: Vec::new(),
        };
        // Bound at its first report while valid…
        admit(&store, "h1", &certificate).await.unwrap();
        admit(&store, "h1", &certificate).await.unwrap();
        // …and refused once expired (a TLS session resumed past its expiry).
        certificate.not_after_ms = now_ms() - 1;
        let refused = admit(&store, "h1", &certificate).await.unwrap_err();
        assert!(
            matches!(&refused, ApiError::Forbidden(m) if m.contains("expired")),
            "{refused:?}"
        );
    }
}
