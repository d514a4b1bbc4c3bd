//! The collector's small certificate authority.
//!
//! Agents prove who they are with client certificates: the host id is the
//! certificate's common name. The collector's CA issues them — from `init` for a first
//! try, from `issue-host-cert` for provisioning, and at enrollment, where a host sends
//! only a certificate signing request: its private key never leaves it, and the
//! collector, not the host, decides the name in the certificate.

use driftwatch_protocol::wire::is_valid_host_id;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::Path;
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// Why a certificate could not be made or read.
#[derive(Debug, Error)]
pub enum PkiError {
    /// Certificate generation or parsing failed.
    #[error("{what}: {source}")]
    Certificate {
        /// What was being done.
        what: &'static str,
        /// The library's error.
        source: rcgen::Error,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    File {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The host id cannot be put in a certificate.
    #[error("{0:?} is not a valid host id (letters, digits, '.', '-', '_', ':'; at most 128)")]
    HostId(String),
    /// A PEM file holds no certificate.
    #[error("{0} holds no certificate")]
    NoCertificate(String),
}

fn cert_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Certificate { what, source }
}

/// Reads a file as text, naming it in the error.
pub fn read_text(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::File {
        action: "read",
        path: path.display().to_string(),
        source,
    })
}

/// A CA able to sign: its certificate (PEM) and issuer.
pub struct CertificateAuthority {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // A fixed serial only makes certificates harder to tell apart; not a failure.
    let _ = driftwatch_protocol::random::fill(&mut bytes);
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // Tolerate clocks a little behind the collector's.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

impl CertificateAuthority {
    /// A new self-signed CA named `name`, valid for `days`.
    pub fn generate(name: &str, days: u32) -> Result<CertificateAuthority, PkiError> {
        let key = KeyPair::generate().map_err(cert_error("generating the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        validity(&mut params, days);
        let cert = params
            .self_signed(&key)
            .map_err(cert_error("signing the CA certificate"))?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and key (PEM).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_error("reading the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(cert_error("reading the CA certificate"))?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// The CA's private key (PEM), for `init` to write.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses); returns
    /// (certificate PEM, key PEM).
    pub fn server_certificate(
        &self,
        names: &[String],
        days: u32,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate().map_err(cert_error("generating the server key"))?;
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(cert_error("naming the server"))?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map_or("driftwatch-collector", |n| n),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        validity(&mut params, days);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_error("signing the server certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client certificate naming `host_id`, with a new key; returns (certificate PEM,
    /// key PEM). For provisioning hosts (and tests) without enrollment.
    pub fn host_certificate(&self, host_id: &str, days: u32) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate().map_err(cert_error("generating the host key"))?;
        let cert = host_params(host_id, days)?
            .signed_by(&key, &self.issuer)
            .map_err(cert_error("signing the host certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs a host's certificate signing request for `host_id`, whatever subject the
    /// request asks for. Returns the certificate PEM.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        host_id: &str,
        days: u32,
    ) -> Result<String, PkiError> {
        let mut request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(cert_error("reading the certificate signing request"))?;
        request.params = host_params(host_id, days)?;
        let cert = request
            .signed_by(&self.issuer)
            .map_err(cert_error("signing the host certificate"))?;
        Ok(cert.pem())
    }
}

fn host_params(host_id: &str, days: u32) -> Result<CertificateParams, PkiError> {
    if !is_valid_host_id(host_id) {
        return Err(PkiError::HostId(host_id.to_string()));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, host_id);
    params.subject_alt_names = Vec::<SanType>::new();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    validity(&mut params, days);
    Ok(params)
}

/// The host id a client certificate names (its common name), if it names a valid one.
pub fn host_id_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    is_valid_host_id(cn).then(|| cn.to_string())
}

/// What the collector remembers of a host certificate: the key it binds the host id
/// to, its serial and when it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// `blake3:` and the hex BLAKE3 of its SubjectPublicKeyInfo (the same for every
    /// certificate of one key).
    pub key_fingerprint: String,
    /// Its serial number, hex.
    pub serial: String,
    /// When it expires, ms since the epoch.
    pub not_after_ms: i64,
}

/// The key, serial and expiry of a certificate, if it parses.
pub fn cert_info(cert: &CertificateDer<'_>) -> Option<CertInfo> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let spki = parsed.tbs_certificate.subject_pki.raw;
    Some(CertInfo {
        key_fingerprint: format!("blake3:{}", blake3::hash(spki).to_hex()),
        serial: parsed
            .tbs_certificate
            .raw_serial_as_string()
            .replace(':', ""),
        not_after_ms: parsed.validity().not_after.timestamp().saturating_mul(1000),
    })
}

/// A certificate's fingerprint: `blake3:` and the hex BLAKE3 of its DER.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("blake3:{}", blake3::hash(cert).to_hex())
}

/// The first certificate in a PEM text.
pub fn first_certificate(pem: &str, source: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| PkiError::NoCertificate(source.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_names_the_host_the_collector_chose() {
        let ca = CertificateAuthority::generate("test CA", 30).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "someone-else");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let cert_pem = ca.sign_request(&csr, "host-1", 30).unwrap();
        let cert = first_certificate(&cert_pem, "test").unwrap();
        assert_eq!(host_id_of(&cert).as_deref(), Some("host-1"));
        assert!(ca.sign_request("garbage", "host-1", 30).is_err());
        assert!(matches!(
            ca.sign_request(&csr, "../x", 30),
            Err(PkiError::HostId(_))
        ));
    }

    #[test]
    fn a_ca_survives_a_round_trip_through_pem() {
        let ca = CertificateAuthority::generate("test CA", 30).unwrap();
        let loaded = CertificateAuthority::load(&ca.cert_pem, &ca.key_pem()).unwrap();
        let (cert_pem, _) = loaded.host_certificate("h2", 1).unwrap();
        let cert = first_certificate(&cert_pem, "test").unwrap();
        assert_eq!(host_id_of(&cert).as_deref(), Some("h2"));
    }
}
