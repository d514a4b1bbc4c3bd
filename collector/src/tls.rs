//! The HTTPS listener: rustls (ring provider) in front of the axum router.
//!
//! `axum::serve` speaks plain HTTP only, so connections are accepted here: the TLS
//! handshake asks for a client certificate signed by the agents' CA but does not
//! require one (enrollment, the operator API and `/healthz` come without), and the host
//! id the certificate names travels with every request of the connection as a
//! [`Peer`] extension. Only handlers that need a host identity insist on it.
//!
//! Each connection is bounded in time to handshake and to send its headers, closed
//! gracefully after a few idle seconds (an agent resumes its TLS session with a ticket
//! for its next report), and the number of connections is bounded as a whole, so that
//! slow, idle or numerous clients cannot starve the collector.

use crate::pki::{cert_info, host_id_of, CertInfo, PkiError};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::Service;
use tracing::{debug, info, warn};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16_384;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// A connection silent for this long is closed gracefully. Agents report every 30 s
/// by default; kept open between reports, 10,000 connections would hold ~500 MB of
/// buffers. Reconnecting costs little: the session ticket resumes TLS.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is at the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The host id of a verified client certificate.
    pub host_id: Option<String>,
    /// That certificate's key, serial and expiry.
    pub certificate: Option<CertInfo>,
    /// The remote address.
    pub address: SocketAddr,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file is unusable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA cannot verify anything.
    #[error("client CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Reading a file failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

fn pem_error(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |e| TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Certificates from a PEM file (at least one).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(path))?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.display().to_string(),
            message: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

/// The ring provider, explicitly: two providers in one process make rustls refuse to
/// pick one at run time.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS configuration from `[tls]`.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(pem_error(key_file))?;
    let mut roots = RootCertStore::empty();
    for ca in load_certificates(client_ca_file)? {
        roots.add(ca)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Stateless tickets: an agent reconnecting after the idle timeout resumes its TLS
    // session (its certificate included) instead of a full handshake.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then lets requests in
/// flight finish (up to 10 s).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    serve_reloadable(listener, tokio::sync::watch::channel(tls).1, app, shutdown).await;
}

/// [`serve`], with the TLS configuration the latest of `tls` at each new connection:
/// a new server certificate or client CA bundle (SIGHUP) applies to new connections
/// at once. Each configuration has a session ticketer of its own, so a session from
/// before the change is not resumed on credentials no longer trusted.
pub async fn serve_reloadable(
    listener: TcpListener,
    tls: tokio::sync::watch::Receiver<Arc<ServerConfig>>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let mut http = Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let http = Arc::new(http);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, address) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    warn!(error = %err, "Cannot accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = TlsAcceptor::from(Arc::clone(&tls.borrow()));
        let app = app.clone();
        let http = Arc::clone(&http);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    debug!(%address, error = %err, "TLS handshake failed.");
                    return;
                }
                Err(_) => {
                    debug!(%address, "TLS handshake timed out.");
                    return;
                }
            };
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first());
            // The peer rides in each request's extensions. (A `Router::layer` per
            // connection would rebuild every route's service stack per connection.)
            let peer = Peer {
                host_id: leaf.and_then(host_id_of),
                certificate: leaf.and_then(cert_info),
                address,
            };
            let service = TowerToHyperService::new(tower::service_fn(
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(peer.clone());
                    app.clone().call(request)
                },
            ));
            let (io, last_active) = Activity::new(tls);
            let connection = http.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(connection);
            let mut idle_check = tokio::time::interval(IDLE_TIMEOUT / 2);
            let mut closing = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(err) = result {
                            debug!(%address, error = %err, "Connection ended with an error.");
                        }
                        break;
                    }
                    _ = idle_check.tick(), if !closing => {
                        if last_active.elapsed() >= IDLE_TIMEOUT {
                            closing = true;
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                    _ = stop.changed(), if !closing => {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    info!("Stopped accepting connections; finishing requests in flight.");
    let _ = stopping.send(true);
    // Every connection task holds a slot until it ends.
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    if tokio::time::timeout(Duration::from_secs(10), slots.acquire_many(all))
        .await
        .is_err()
    {
        warn!("Requests still in flight after 10 s; stopping anyway.");
    }
}

/// When a connection last moved bytes, either way.
#[derive(Clone)]
struct LastActive(Arc<std::sync::Mutex<std::time::Instant>>);

impl LastActive {
    fn elapsed(&self) -> Duration {
        self.0.lock().map_or(Duration::ZERO, |at| at.elapsed())
    }

    fn touch(&self) {
        if let Ok(mut at) = self.0.lock() {
            *at = std::time::Instant::now();
        }
    }
}

/// The TLS stream of one connection, noting its activity.
struct Activity<T> {
    inner: T,
    last: LastActive,
}

impl<T> Activity<T> {
    fn new(inner: T) -> (Activity<T>, LastActive) {
        let last = LastActive(Arc::new(std::sync::Mutex::new(std::time::Instant::now())));
        (
            Activity {
                inner,
                last: last.clone(),
            },
            last,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.last.touch();
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
