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
    /// No certificate of the CA file is the CA key's.
    #[error("no certificate in the CA file has the public key of the CA key")]
    NoMatchingCa,
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
    /// Its name (DER), which the certificates it issues name as their issuer.
    subject: Vec<u8>,
}

/// The subject name (DER) of a certificate.
fn subject_of(der: &[u8]) -> Vec<u8> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert.tbs_certificate.subject.as_raw().to_vec())
        .unwrap_or_default()
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // A fixed serial only makes certificates harder to tell apart; not a failure.
    let _ = driftwatch_protocol::random::fill(&mut bytes);
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    // Tolerate clocks a little behind the collector's: an hour, or a tenth of a
    // short lifetime (agents renew at two thirds of what they see).
    params.not_before = now - (lifetime / 10_i32).min(Duration::hours(1));
    params.not_after = now + lifetime;
}

fn days(days: u32) -> Duration {
    Duration::days(i64::from(days))
}

fn lifetime(validity: std::time::Duration) -> Duration {
    Duration::try_from(validity).unwrap_or(Duration::MAX)
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
        validity(&mut params, self::days(days));
        let cert = params
            .self_signed(&key)
            .map_err(cert_error("signing the CA certificate"))?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            subject: subject_of(cert.der()),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its key and its certificate (PEM): the one of `cert_pem` whose
    /// public key is the key's, so that a bundle of the CAs trusted during a rotation
    /// (old and new) can name the one that issues. `cert_pem` is kept as given.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, PkiError> {
        use rcgen::PublicKeyData;
        let key = KeyPair::from_pem(key_pem).map_err(cert_error("reading the CA key"))?;
        let public = key.subject_public_key_info();
        let own = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .filter_map(Result::ok)
            .find(|der| {
                x509_parser::parse_x509_certificate(der)
                    .is_ok_and(|(_, cert)| cert.tbs_certificate.subject_pki.raw == public)
            })
            .ok_or(PkiError::NoMatchingCa)?;
        let issuer = Issuer::from_ca_cert_der(&own, key)
            .map_err(cert_error("reading the CA certificate"))?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_string(),
            issuer,
            subject: subject_of(&own),
        })
    }

    /// Whether a certificate names this CA as its issuer (CAs are told apart by name:
    /// `init` and `new-ca` name theirs with the time they were made and a random
    /// suffix, so two made in the same second differ).
    pub fn issued(&self, certificate: &CertInfo) -> bool {
        certificate.issuer == self.subject
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
        validity(&mut params, self::days(days));
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_error("signing the server certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client certificate naming `host_id`, valid for `validity`, with a new key;
    /// returns (certificate PEM, key PEM). For provisioning hosts (and tests) without
    /// enrollment.
    pub fn host_certificate(
        &self,
        host_id: &str,
        validity: std::time::Duration,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate().map_err(cert_error("generating the host key"))?;
        let cert = host_params(host_id, validity)?
            .signed_by(&key, &self.issuer)
            .map_err(cert_error("signing the host certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs a host's certificate signing request for `host_id`, valid for
    /// `validity`, whatever subject the request asks for. Returns the certificate PEM.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        host_id: &str,
        validity: std::time::Duration,
    ) -> Result<String, PkiError> {
        let mut request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(cert_error("reading the certificate signing request"))?;
        request.params = host_params(host_id, validity)?;
        let cert = request
            .signed_by(&self.issuer)
            .map_err(cert_error("signing the host certificate"))?;
        Ok(cert.pem())
    }
}

fn host_params(
    host_id: &str,
    validity: std::time::Duration,
) -> Result<CertificateParams, PkiError> {
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
    self::validity(&mut params, lifetime(validity));
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
    /// Its issuer's name (DER).
    pub issuer: Vec<u8>,
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
        issuer: parsed.tbs_certificate.issuer.as_raw().to_vec(),
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

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

    #[test]
    fn a_signed_request_names_the_host_the_collector_chose() {
        let ca = CertificateAuthority::generate("test CA", 30).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "someone-else");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let cert_pem = ca.sign_request(&csr, "host-1", 30 * DAY).unwrap();
        let cert = first_certificate(&cert_pem, "test").unwrap();
        assert_eq!(host_id_of(&cert).as_deref(), Some("host-1"));
        assert!(ca.sign_request("garbage", "host-1", 30 * DAY).is_err());
        assert!(matches!(
            ca.sign_request(&csr, "../x", 30 * DAY),
            Err(PkiError::HostId(_))
        ));
    }

    #[test]
    fn the_ca_that_issues_is_the_one_of_its_key_in_a_bundle() {
        let old = CertificateAuthority::generate("old CA", 30).unwrap();
        let new = CertificateAuthority::generate("new CA", 30).unwrap();
        let bundle = format!("{}{}", old.cert_pem, new.cert_pem);
        for ca in [&old, &new] {
            let loaded = CertificateAuthority::load(&bundle, &ca.key_pem()).unwrap();
            let (cert_pem, _) = loaded.host_certificate("h1", DAY).unwrap();
            let cert = first_certificate(&cert_pem, "test").unwrap();
            let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
            let ca_cert = first_certificate(&ca.cert_pem, "test").unwrap();
            let (_, ca_parsed) = x509_parser::parse_x509_certificate(&ca_cert).unwrap();
            assert_eq!(parsed.issuer().to_string(), ca_parsed.subject().to_string());
            let info = cert_info(&cert).unwrap();
            assert!(loaded.issued(&info));
            let other = if std::ptr::eq(ca, &old) { &new } else { &old };
            assert!(!CertificateAuthority::load(&bundle, &other.key_pem())
                .unwrap()
                .issued(&info));
        }
        let other = CertificateAuthority::generate("other CA", 30).unwrap();
        assert!(matches!(
            CertificateAuthority::load(&bundle, &other.key_pem()),
            Err(PkiError::NoMatchingCa)
        ));
    }

    #[test]
    fn a_ca_survives_a_round_trip_through_pem() {
        let ca = CertificateAuthority::generate("test CA", 30).unwrap();
        let loaded = CertificateAuthority::load(&ca.cert_pem, &ca.key_pem()).unwrap();
        let (cert_pem, _) = loaded.host_certificate("h2", DAY).unwrap();
        let cert = first_certificate(&cert_pem, "test").unwrap();
        assert_eq!(host_id_of(&cert).as_deref(), Some("h2"));
    }
}
