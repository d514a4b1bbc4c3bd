//! Which CAs a webhook receiver's certificate is checked against: the webhook's
//! `ca_file`, or, for an `https://` receiver without one, the system's CA bundle (the
//! first of `$SSL_CERT_FILE` and the usual distribution paths that exists).

use std::path::{Path, PathBuf};

/// CA bundles of the common distributions, tried in order when a webhook has no
/// `ca_file` (after `$SSL_CERT_FILE`).
pub(crate) const SYSTEM_CA_BUNDLES: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];

/// The certificates of a PEM file, as trust anchors; the error names what went wrong.
pub(crate) fn read_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err("no usable certificate in it".to_string());
    }
    Ok(roots)
}

/// The system's CA bundle: `$SSL_CERT_FILE`, else the first known path that has one.
pub(crate) fn read_system_roots() -> Option<rustls::RootCertStore> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    from_env
        .into_iter()
        .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from))
        .find_map(|path| read_roots(&path).ok())
}
