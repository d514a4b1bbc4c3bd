//! Certificate renewal: a host renews its client certificate before it expires, over
//! its current mutual-TLS identity (`POST /v1/renew`), so that a fleet never needs its
//! enrollment tokens again and certificates can be short-lived.
//!
//! - **When**: once two thirds of the certificate's validity have passed (what the
//!   certificate says, `not_before` to `not_after`), the reporter renews; a failure is
//!   retried with backoff, and the old certificate keeps working until it expires.
//! - **Which key**: an enrolled identity (`state_dir/identity/HOST.pem`, certificate
//!   and key in one file) gets a new key each time: the file is replaced as a whole.
//!   A provisioned `cert_file` with a `key_file` of its own keeps its key — two files
//!   cannot be replaced at once, and a crash between them would leave a certificate
//!   that matches no key.
//! - **Where**: the new certificate replaces the old one where it was loaded from,
//!   atomically (temporary file, fsync, rename), and is checked against its key before.
//!   The reporter uses it for every new connection from then on; no restart.

use super::collector::{error_message, read, tls_config, Client, ClientError, Identity};
use driftwatch_protocol::errors::error_chain;
use driftwatch_protocol::wire::{EnrollResponse, RenewRequest, RENEW_PATH};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::info;

/// The validity (`not_before`, `not_after`) of the first certificate in `pem`.
pub fn validity(pem: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(secs).ok()?))
    };
    Some((
        at(cert.validity().not_before)?,
        at(cert.validity().not_after)?,
    ))
}

/// When a certificate valid from `not_before` to `not_after` is due for renewal: two
/// thirds into its validity.
pub fn due(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_before + lifetime.mul_f64(2.0 / 3.0)
}

/// Asks the collector for a new certificate over `client`'s current one, stores it
/// and returns the new identity.
pub(super) async fn renew(client: &Client) -> Result<Identity, ClientError> {
    let (host_id, current, (ca, ca_path)) = client.parts();
    let failed = |why: String| ClientError::Renew(why);
    // A provisioned key file is kept; an identity file of its own gets a new key.
    let (key, key_pem, rotated) = match &current.key_file {
        Some(file) => {
            let text = String::from_utf8_lossy(&read(file)?).into_owned();
            let key = rcgen::KeyPair::from_pem(&text).map_err(|e| {
                failed(format!(
                    "cannot reuse the key of {} (a PKCS#8 key is needed): {e}",
                    file.display()
                ))
            })?;
            (key, text, false)
        }
        None => {
            let key = rcgen::KeyPair::generate().map_err(ClientError::Csr)?;
            let pem = key.serialize_pem();
            (key, pem, true)
        }
    };
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(ClientError::Csr)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host_id);
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(ClientError::Csr)?;
    let request = RenewRequest { csr_pem };
    let (http, bases) = client.endpoints();
    let response = super::collector::post_to_first(http, &bases, RENEW_PATH, &request)
        .await
        .map_err(failed)?;
    let status = response.status();
    if !status.is_success() {
        let message = error_message(response).await;
        return Err(failed(format!(
            "the collector answered {status}: {message}"
        )));
    }
    let answer: EnrollResponse = response
        .json()
        .await
        .map_err(|e| failed(format!("invalid answer: {}", error_chain(&e))))?;
    if answer.host_id != host_id {
        return Err(failed(format!(
            "the certificate names host {:?}, not {host_id:?}",
            answer.host_id
        )));
    }
    let mut pem = answer.certificate_pem.into_bytes();
    pem.push(b'\n');
    pem.extend(key_pem.into_bytes());
    let renewed = Identity {
        pem,
        origin: current.origin.clone(),
        key_file: current.key_file.clone(),
    };
    // A certificate that does not match its key must never replace a working one.
    tls_config(ca, ca_path, Some(&renewed))?;
    renewed.store()?;
    let expires = validity(&renewed.pem).map(|(_, not_after)| not_after);
    info!(
        host_id,
        identity = %renewed.origin.display(),
        new_key = rotated,
        expires = %expires.map_or_else(|| "?".into(), driftwatch_protocol::time::rfc3339),
        "Certificate renewed."
    );
    Ok(renewed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_two_thirds_into_the_validity() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            due(start, start + Duration::from_secs(300)),
            start + Duration::from_secs(200)
        );
        // Nonsense validity: due at once.
        assert_eq!(due(start, start - Duration::from_secs(1)), start);
        assert_eq!(validity(b"no certificate"), None);
    }
}
