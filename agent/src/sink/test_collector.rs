//! A small scripted HTTPS collector for the client's unit tests
//! (`src/sink/collector.rs`): real TLS (rustls with ring, certificates from rcgen),
//! client certificates required for ingest, gzip bodies, enrollment that signs the
//! agent's CSR, and the failures a real collector only shows under duress (lost
//! answers, 413, 429, 503), played on cue.
//!
//! It runs on a thread of its own with its own runtime, so a test may be synchronous
//! (drive the binary, call `deliver_report`) or async.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Bytes;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::State;
use axum::http::header::{CONTENT_ENCODING, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::{IncomingStream, Listener};
use axum::{Json, Router};
use driftwatch_protocol::wire::{
    Batch, BatchAck, EnrollRequest, EnrollResponse, ErrorBody, HostDirective, HostState,
    MarkDirective, ENROLL_PATH, INGEST_PATH,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::{TcpListener, TcpStream};

/// Accepts TLS connections; a failed handshake (a bad client certificate) is the
/// client's problem and is dropped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The client certificate of a connection.
#[derive(Clone)]
struct Peer(Option<Vec<u8>>);

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let (_, connection) = stream.io().get_ref();
        Peer(
            connection
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
        )
    }
}

/// A scripted answer to the next ingest request.
pub enum Reply {
    /// Answer this status (with this Retry-After) without storing anything.
    Status(u16, Option<u64>),
    /// Store the batch, then fail as if the answer was lost on the way back.
    StoreThenFail,
}

/// One ingest request as the server saw it.
pub struct Seen {
    pub gzip: bool,
    pub client_cert: bool,
    pub batch: Batch,
}

pub struct Collector {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
    pub token: String,
    /// Batches with more events are refused with 413.
    pub max_events: usize,
    /// The verdict on every host (an operator marks and unmarks with `set_mark`).
    pub mark: Mutex<Option<MarkDirective>>,
    pub script: Mutex<VecDeque<Reply>>,
    pub seen: Mutex<Vec<Seen>>,
    /// Event id → times received (stored once, then counted as duplicates).
    pub stored: Mutex<HashMap<String, u32>>,
    pub enrollments: Mutex<u32>,
}

pub struct TestCollector {
    pub url: String,
    pub dir: tempfile::TempDir,
    pub server: Arc<Collector>,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap()
}

impl TestCollector {
    /// Starts the collector on a thread of its own (so sync tests can call
    /// `deliver_report`, which makes its own runtime).
    pub fn start(max_events: usize, mark: Option<MarkDirective>, script: Vec<Reply>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "test collector CA");
        let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), issuer.pem()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(issuer.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .allow_unauthenticated()
        .build()
        .unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        let server = Arc::new(Collector {
            issuer,
            token: "s3cret".into(),
            max_events,
            mark: Mutex::new(mark),
            script: Mutex::new(script.into()),
            seen: Mutex::default(),
            stored: Mutex::default(),
            enrollments: Mutex::default(),
        });
        let app = Router::new()
            .route(INGEST_PATH, post(ingest))
            .route(ENROLL_PATH, post(enroll_handler))
            .with_state(Arc::clone(&server));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TlsListener {
                    tcp: TcpListener::from_std(std_listener).unwrap(),
                    acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
                };
                axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                    .await
                    .unwrap();
            });
        });
        TestCollector {
            url: format!("https://127.0.0.1:{port}"),
            dir,
            server,
        }
    }

    /// The CA certificate the agent must trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A client certificate and key for `host_id`, signed by the collector's CA.
    pub fn provision(&self, host_id: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, host_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.server.issuer).unwrap();
        let (cert_file, key_file) = (
            self.dir.path().join(format!("{host_id}.pem")),
            self.dir.path().join(format!("{host_id}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    /// A file holding the enrollment token.
    pub fn token_file(&self) -> PathBuf {
        let path = self.dir.path().join("token");
        std::fs::write(&path, format!("{}\n", self.server.token)).unwrap();
        path
    }

    /// Whether the event with this id arrived.
    pub fn received(&self, id: &str) -> bool {
        lock(&self.server.stored).contains_key(id)
    }
}

fn refuse(status: u16, retry_after: Option<u64>, message: &str) -> Response {
    let mut response = (
        StatusCode::from_u16(status).unwrap(),
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, secs.to_string().parse().unwrap());
    }
    response
}

async fn ingest(
    State(server): State<Arc<Collector>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if peer.0.is_none() {
        return refuse(401, None, "a client certificate is required");
    }
    let gzip = headers.get(CONTENT_ENCODING).is_some_and(|v| v == "gzip");
    let mut json = Vec::new();
    if flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut json)
        .is_err()
    {
        return refuse(400, None, "the body is not gzip");
    }
    let Ok(batch) = serde_json::from_slice::<Batch>(&json) else {
        return refuse(400, None, "the body is not a batch");
    };
    if batch.events.len() > server.max_events {
        return refuse(413, None, "too many events");
    }
    let reply = lock(&server.script).pop_front();
    if let Some(Reply::Status(status, retry_after)) = reply {
        return refuse(status, retry_after, "scripted failure");
    }
    let (mut accepted, mut duplicates) = (0, 0);
    for event in &batch.events {
        let mut stored = lock(&server.stored);
        let times = stored.entry(event.id.clone()).or_default();
        *times += 1;
        if *times == 1 {
            accepted += 1;
        } else {
            duplicates += 1;
        }
    }
    lock(&server.seen).push(Seen {
        gzip,
        client_cert: peer.0.is_some(),
        batch,
    });
    if let Some(Reply::StoreThenFail) = reply {
        return refuse(503, None, "stored, but the answer is lost");
    }
    let mark = lock(&server.mark).clone();
    Json(BatchAck {
        accepted,
        duplicates,
        host: HostDirective {
            state: if mark.is_some() {
                HostState::Marked
            } else {
                HostState::Drifted
            },
            mark,
        },
        rejected: Vec::new(),
        renew: false,
    })
    .into_response()
}

async fn enroll_handler(
    State(server): State<Arc<Collector>>,
    Json(request): Json<EnrollRequest>,
) -> Response {
    if request.token != server.token {
        return refuse(401, None, "unknown enrollment token");
    }
    let mut csr = CertificateSigningRequestParams::from_pem(&request.csr_pem).unwrap();
    csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = csr.signed_by(&server.issuer).unwrap();
    *lock(&server.enrollments) += 1;
    Json(EnrollResponse {
        host_id: request.host_id,
        certificate_pem: cert.pem(),
    })
    .into_response()
}
