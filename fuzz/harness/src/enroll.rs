//! `POST /v1/enroll` from an unauthenticated client: the request JSON, the host id and
//! the certificate signing request, signed by a real CA as the handler does (the token
//! check in between compares a hash and parses nothing).
//!
//! The first byte picks the input: a whole request (JSON), a CSR as PEM text, or a
//! CSR's DER bytes (wrapped in PEM here, so that the fuzzer mutates the ASN.1 itself).

use base64::Engine;
use driftwatch_collector::pki::{fingerprint, first_certificate, CertificateAuthority};
use driftwatch_protocol::wire::{is_valid_host_id, EnrollRequest};
use std::sync::OnceLock;

fn ca() -> Option<&'static CertificateAuthority> {
    static CA: OnceLock<Option<CertificateAuthority>> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate("fuzz CA", 30).ok())
        .as_ref()
}

fn sign(csr_pem: &str, host_id: &str) {
    let Some(ca) = ca() else {
        return;
    };
    if let Ok(pem) = ca.sign_request(
        csr_pem,
        host_id,
        std::time::Duration::from_secs(30 * 86_400),
    ) {
        if let Ok(cert) = first_certificate(&pem, "issued certificate") {
            let _ = fingerprint(&cert);
        }
    }
}

/// Runs the `enroll` target on one input.
pub fn run(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let Ok(request) = serde_json::from_slice::<EnrollRequest>(body) else {
                return;
            };
            let _ = request.token.trim();
            if is_valid_host_id(&request.host_id) {
                sign(&request.csr_pem, &request.host_id);
            }
        }
        1 => {
            if let Ok(pem) = std::str::from_utf8(body) {
                sign(pem, "host-1");
            }
        }
        _ => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(body);
            let pem = format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{encoded}\n-----END CERTIFICATE REQUEST-----\n"
            );
            sign(&pem, "host-1");
        }
    }
}
