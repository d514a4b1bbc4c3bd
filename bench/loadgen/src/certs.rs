//! Host certificates: issued from the collector's CA, cached on disk per CA.
//!
//! Issuing is a key generation and a signature per host — milliseconds each, so tens of
//! seconds for a large fleet on one thread. It runs on every core, once: a certificate
//! is kept as `CACHE/<CA fingerprint>/<host id>.pem` (certificate then key) and reused
//! by every later run against a collector with the same CA.

use crate::agents::CollectorFiles;
use crate::error::{Error, Result};
use crate::IdentityArgs;
use driftwatch_collector::pki::CertificateAuthority;
use std::path::{Path, PathBuf};

/// How long issued certificates stay valid: 90 days.
const VALIDITY: std::time::Duration = std::time::Duration::from_secs(90 * 86_400);

/// One simulated host's identity.
pub struct Identity {
    /// The host id (the certificate's common name).
    pub host_id: String,
    /// Its certificate and private key, PEM.
    pub pem: String,
}

/// The id of host number `index`.
pub fn host_id(prefix: &str, index: usize) -> String {
    format!("{prefix}{index:05}")
}

/// The identities of `args.hosts` hosts, issuing the ones not cached yet; also returns
/// how many were issued now.
pub fn load_or_issue(
    collector: &CollectorFiles,
    args: &IdentityArgs,
) -> Result<(Vec<Identity>, usize)> {
    let root = args
        .cert_cache
        .clone()
        .unwrap_or_else(|| collector.dir.join("loadgen-certs"));
    let fingerprint = blake3::hash(collector.ca_pem.as_bytes()).to_hex();
    let dir = root.join(&fingerprint.as_str()[..16]);
    std::fs::create_dir_all(&dir)
        .map_err(Error::context(format!("cannot create {}", dir.display())))?;
    let ids: Vec<String> = (0..args.hosts)
        .map(|i| host_id(&args.host_prefix, i))
        .collect();
    if let Some(bad) = ids
        .iter()
        .find(|id| !driftwatch_protocol::wire::is_valid_host_id(id))
    {
        return Err(Error::new(format!(
            "{bad:?} is not a valid host id: change --host-prefix"
        )));
    }
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !cache_file(&dir, id).exists())
        .collect();
    let issued = missing.len();
    if !missing.is_empty() {
        issue(collector, &dir, &missing)?;
    }
    let identities = ids
        .into_iter()
        .map(|host_id| {
            let path = cache_file(&dir, &host_id);
            let pem = std::fs::read_to_string(&path)
                .map_err(Error::context(format!("cannot read {}", path.display())))?;
            Ok(Identity { host_id, pem })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((identities, issued))
}

fn cache_file(dir: &Path, host_id: &str) -> PathBuf {
    dir.join(format!("{host_id}.pem"))
}

/// Issues certificates for `ids` on every core.
fn issue(collector: &CollectorFiles, dir: &Path, ids: &[&String]) -> Result<()> {
    let key_pem = collector.ca_key_pem()?;
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .min(ids.len())
        .max(1);
    let chunk = ids.len().div_ceil(threads);
    eprintln!(
        "driftwatch-loadgen: issuing {} host certificates on {threads} threads…",
        ids.len()
    );
    std::thread::scope(|scope| {
        let workers: Vec<_> = ids
            .chunks(chunk)
            .map(|share| {
                let key_pem = &key_pem;
                scope.spawn(move || -> Result<()> {
                    let ca = CertificateAuthority::load(&collector.ca_pem, key_pem)
                        .map_err(Error::context("cannot load the collector's CA"))?;
                    for id in share {
                        let (cert, key) = ca
                            .host_certificate(id, VALIDITY)
                            .map_err(Error::context(format!("cannot issue for {id}")))?;
                        write_atomically(&cache_file(dir, id), &format!("{cert}{key}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker
                .join()
                .map_err(|_| Error::new("a certificate thread panicked"))?
        })
    })
}

/// Writes `text` to `path` through a temporary file, so a run interrupted while issuing
/// never leaves a half-written certificate in the cache.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let temporary = path.with_extension("pem.tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(Error::context(format!("cannot write {}", path.display())))
}
