//! The simulated hosts: one HTTP client each, with the host's own certificate, and the
//! one request they make (`POST /v1/ingest`).

use crate::certs::Identity;
use crate::error::{Error, Result};
use driftwatch_collector::client::OperatorClient;
use driftwatch_collector::config::CollectorConfig;
use driftwatch_protocol::sign::PrivateKey;
use driftwatch_protocol::wire::{BatchAck, ImageClaim, INGEST_PATH};
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// What the load generator reads from a collector's `init` directory.
pub struct CollectorFiles {
    /// The directory.
    pub dir: PathBuf,
    /// The collector's configuration.
    pub config: CollectorConfig,
    /// The CA certificate (PEM): issues host certificates and vouches for the
    /// collector's own.
    pub ca_pem: String,
}

impl CollectorFiles {
    /// Reads `dir/collector.toml` and the CA certificate it names.
    pub fn load(dir: &Path) -> Result<CollectorFiles> {
        let config = CollectorConfig::load(&dir.join("collector.toml"))
            .map_err(Error::context("cannot use the collector's configuration"))?;
        let ca_pem = read(&config.tls.client_ca_file)?;
        Ok(CollectorFiles {
            dir: dir.to_path_buf(),
            config,
            ca_pem,
        })
    }

    /// The CA's private key (PEM).
    pub fn ca_key_pem(&self) -> Result<String> {
        let path = self.config.tls.client_ca_key_file.as_ref().ok_or_else(|| {
            Error::new("collector.toml sets no tls.client_ca_key_file: no CA key to issue host certificates with")
        })?;
        read(path)
    }

    /// The collector's base URL: `url` if given, else the loopback address on the
    /// configured port (or the configured address when it is a specific one).
    pub fn base_url(&self, url: Option<&str>) -> String {
        if let Some(url) = url {
            return url.trim_end_matches('/').to_string();
        }
        let listen = self.config.listen;
        if listen.ip().is_unspecified() {
            format!("https://127.0.0.1:{}", listen.port())
        } else {
            format!("https://{listen}")
        }
    }

    /// Registers a small image with the collector (operator API) and returns the claim
    /// every simulated host makes: that image and its baseline's digest. Registering
    /// again is harmless.
    pub async fn register_image(&self, base_url: &str) -> Result<ImageClaim> {
        // Signed with the pipeline key `init` wrote, as a bake pipeline would: the
        // collector refuses unsigned baselines by default.
        let key_file = self.dir.join("pipeline.key");
        let key = if key_file.exists() {
            let pem = read(&key_file)?;
            Some(PrivateKey::from_pem(&pem).map_err(Error::context(format!(
                "cannot read {}",
                key_file.display()
            )))?)
        } else {
            None
        };
        let (image_id, baseline, digest) = crate::body::image_baseline(key.as_ref())?;
        let auth = &self.config.auth;
        // Registering is the pipeline's right (the operator's in a configuration
        // from before roles).
        let token = read(
            auth.pipeline_token_file
                .as_ref()
                .unwrap_or(&auth.operator_token_file),
        )?;
        let client = OperatorClient::new(
            base_url,
            &self.config.tls.client_ca_file,
            token.trim().to_string(),
        )
        .map_err(Error::context("cannot set up the operator client"))?;
        client
            .post_bytes::<serde_json::Value>(&format!("/v1/images?image_id={image_id}"), baseline)
            .await
            .map_err(Error::context(format!("cannot register image {image_id}")))?;
        Ok(ImageClaim {
            image_id: Some(image_id),
            baseline_digest: Some(digest),
        })
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(Error::context(format!("cannot read {}", path.display())))
}

/// What every host's TLS has in common.
pub struct TlsBase {
    provider: Arc<rustls::crypto::CryptoProvider>,
    roots: Arc<RootCertStore>,
    timeout: Duration,
    pool_idle: Option<Duration>,
}

impl TlsBase {
    /// Trusts `ca_pem` only, with rustls' ring provider given explicitly; requests
    /// time out after `timeout`, idle connections are let go after `pool_idle` (never
    /// when `None`).
    pub fn new(ca_pem: &str, timeout: Duration, pool_idle: Option<Duration>) -> Result<TlsBase> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(Error::context("cannot read the CA certificate"))?;
            roots
                .add(cert)
                .map_err(Error::context("cannot trust the CA certificate"))?;
        }
        Ok(TlsBase {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            roots: Arc::new(roots),
            timeout,
            pool_idle,
        })
    }

    /// An HTTP client presenting `identity`'s certificate, speaking HTTP/2 when the
    /// collector offers it and keeping its connection while it is in use, as the agent
    /// does; TLS sessions are resumed when the collector issues tickets.
    pub fn client(&self, identity: &Identity) -> Result<reqwest::Client> {
        let context = || format!("the certificate of {}", identity.host_id);
        let chain = CertificateDer::pem_slice_iter(identity.pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Error::context(context()))?;
        let key = PrivateKeyDer::from_pem_slice(identity.pem.as_bytes())
            .map_err(Error::context(context()))?;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(Error::context("TLS configuration"))?
            .with_root_certificates(Arc::clone(&self.roots))
            .with_client_auth_cert(chain, key)
            .map_err(Error::context(context()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .https_only(true)
            .timeout(self.timeout)
            .pool_idle_timeout(self.pool_idle)
            .build()
            .map_err(Error::context("cannot build an HTTP client"))
    }
}

/// One simulated host.
pub struct Host {
    /// Its id.
    pub host_id: String,
    /// Its client (and so its connection).
    pub client: reqwest::Client,
    /// Events it has sent (for unique event ids).
    pub events: AtomicU64,
    /// Findings it has sent (for distinct paths).
    pub findings: AtomicU64,
}

impl Host {
    /// Host `identity` with a client of its own.
    pub fn new(tls: &TlsBase, identity: &Identity) -> Result<Host> {
        Ok(Host {
            host_id: identity.host_id.clone(),
            client: tls.client(identity)?,
            events: AtomicU64::new(0),
            findings: AtomicU64::new(0),
        })
    }
}

/// How one request ended.
pub enum Outcome {
    /// Acknowledged.
    Acked(BatchAck),
    /// Not acknowledged: the error's kind (`HTTP 429`, `timeout`, …) and a message.
    Failed(String, String),
}

/// POSTs one gzip'd batch and reads the whole answer.
pub async fn send(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Outcome {
    let response = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_ENCODING, "gzip")
        .body(body)
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(err) => return transport(&err),
    };
    let status = response.status();
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(err) => return transport(&err),
    };
    if !status.is_success() {
        let message = String::from_utf8_lossy(&bytes)
            .trim()
            .chars()
            .take(200)
            .collect();
        return Outcome::Failed(format!("HTTP {}", status.as_u16()), message);
    }
    match serde_json::from_slice::<BatchAck>(&bytes) {
        Ok(ack) => Outcome::Acked(ack),
        Err(err) => Outcome::Failed("unreadable answer".into(), err.to_string()),
    }
}

/// The ingest URL under `base`.
pub fn ingest_url(base: &str) -> String {
    format!("{base}{INGEST_PATH}")
}

fn transport(err: &reqwest::Error) -> Outcome {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else {
        "transport"
    };
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    Outcome::Failed(kind.into(), message)
}
