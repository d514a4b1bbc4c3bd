//! The collector client: findings and heartbeats to the collector over HTTPS with
//! mutual TLS (`driftwatch.ingest/v1`, see `driftwatch_protocol::wire`).
//!
//! - [`Client`] holds one HTTP client whose TLS is built here, with rustls' *ring*
//!   provider given explicitly (never a process-wide default, so a second provider in
//!   the dependency tree cannot make it panic), the `[collector] ca_file` as the only
//!   trusted roots, and the host's client certificate. A host configured with an
//!   enrollment token and no identity yet first enrolls: it generates its key here,
//!   sends only a CSR, and keeps key and certificate in `state_dir/identity/`.
//! - [`Reporter`] is the daemon's task: it sends the spool's unacknowledged events in
//!   batches with a fresh heartbeat in each (heartbeats are never spooled: only the
//!   latest matters), a heartbeat alone when there is nothing else, acknowledges what
//!   the collector took, and hands the collector's verdict on the host to the daemon.
//!   Failures are retried forever with capped, jittered exponential backoff; the spool
//!   keeps everything meanwhile, with stable ids, so an outage of any length loses
//!   nothing and duplicates nothing.
//!   It also renews the client certificate when it is due, or when the collector's
//!   answer asks for it (a CA rotation), and goes on with a client presenting the new
//!   one ([`super::renew`]).
//! - [`deliver_report`] is the same delivery, once and synchronously, for
//!   `driftwatch check --report`.
//!
//! Bodies are gzip-compressed JSON: findings compress about tenfold, and the collector
//! bounds the body size it accepts.

use super::spool::{random_id, Spool, Spooled};
use crate::config::{CollectorConfig, FAILBACK_SECS};
use driftwatch_protocol::backoff::Backoff;
use driftwatch_protocol::errors::error_chain;
use driftwatch_protocol::report::Finding;
use driftwatch_protocol::time::now_rfc3339;
use driftwatch_protocol::wire::{
    Batch, BatchAck, EnrollRequest, EnrollResponse, ErrorBody, Event, EventBody, Heartbeat,
    HostDirective, HostState, ImageClaim, ENROLL_PATH, INGEST_PATH, INGEST_SCHEMA,
};
use flate2::write::GzEncoder;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// Where an enrolled host keeps its key and certificate, inside `state_dir`.
pub const IDENTITY_DIR: &str = "identity";
/// The first wait after a failure; it doubles up to `retry_max_secs`.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// A `Retry-After` longer than this is taken as this: a confused collector must not
/// silence a host for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Error messages from the collector are cut to this many characters in logs and
/// status.
const MAX_MESSAGE_CHARS: usize = 300;
/// Consecutive transient failures are logged at warn once, then every this many.
const WARN_EVERY: u32 = 10;
const USER_AGENT: &str = concat!("driftwatch/", env!("CARGO_PKG_VERSION"));
const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the reporter tells `/status` (and `/metrics`) about the collector.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CollectorStatus {
    /// The collector's URL: the replica in use once one answered, until then all
    /// configured.
    pub url: String,
    /// The id this host reports as.
    pub host_id: String,
    /// Whether the last request was acknowledged.
    pub reachable: bool,
    /// Events in the spool waiting for an acknowledgement.
    pub spooled_events: u64,
    /// Bytes the spool holds on disk.
    pub spool_bytes: u64,
    /// When the collector last acknowledged a batch (RFC 3339).
    pub last_ack: Option<String>,
    /// The last failure, while the collector is not reachable.
    pub last_error: Option<String>,
    /// The host's state as the collector last told it.
    pub host_state: Option<HostState>,
    /// Events the collector acknowledged since start (heartbeats included).
    pub events_sent: u64,
    /// Requests that failed since start.
    pub requests_failed: u64,
    /// Events written to the spool since start.
    pub events_spooled: u64,
    /// Events the collector rejected one by one (a kind it does not know), dropped.
    pub events_rejected: u64,
    /// When the client certificate in use expires (RFC 3339).
    pub certificate_expires: Option<String>,
    /// The same, in seconds since the epoch (for `/metrics`).
    #[serde(skip)]
    pub certificate_expires_unix: Option<i64>,
    /// Certificates renewed since start.
    pub certificate_renewals: u64,
    /// Renewal attempts that failed since start (each is retried with backoff).
    pub certificate_renewal_failures: u64,
}

impl CollectorStatus {
    /// Nothing sent yet to the collector of `config`.
    pub fn new(config: &CollectorConfig) -> CollectorStatus {
        CollectorStatus {
            url: config.url.to_string(),
            host_id: config.host_id().to_string(),
            ..CollectorStatus::default()
        }
    }
}

/// Where the reporter shows its state to operators (the daemon's `/status` and
/// `/metrics`): a trait, so that this sink does not depend on the daemon that runs it.
pub trait StatusBoard: Send + Sync {
    /// Applies `change` to the collector's part of the status.
    fn update_collector(&self, change: &mut dyn FnMut(&mut Option<CollectorStatus>));
}

/// What the daemon knows of the host, for heartbeats and batches.
#[derive(Clone, Debug, PartialEq)]
pub struct HostSummary {
    /// The image and baseline the host runs on.
    pub image: ImageClaim,
    /// Findings remembered.
    pub findings: u64,
    /// When the last full verification finished (RFC 3339).
    pub last_full_verification: Option<String>,
}

/// The claim of a host that has no trusted baseline.
pub fn no_image() -> ImageClaim {
    ImageClaim {
        image_id: None,
        baseline_digest: None,
    }
}

/// A connected client: TLS set up, identity loaded (or enrolled).
pub struct Client {
    http: reqwest::Client,
    replicas: Replicas,
    host_id: String,
    hostname: String,
    /// The certificate and key it presents, and where they live (renewal replaces
    /// them there).
    identity: Identity,
    /// The CA bundle the collector's certificate must chain to, and its file.
    ca: (Vec<u8>, PathBuf),
    timeout: Duration,
}

/// The collector's URLs (replicas of one collector) and which one is in use: a request
/// goes to the current one and, when it gets no answer (or 502/503/504), to the next
/// at once; after [`FAILBACK_SECS`] on another one the first is tried again.
struct Replicas {
    bases: Vec<String>,
    current: Mutex<(usize, Option<Instant>)>,
}

impl Replicas {
    fn new(bases: Vec<String>) -> Replicas {
        Replicas {
            bases,
            current: Mutex::new((0, None)),
        }
    }

    /// The order to try them in for one request.
    fn order(&self) -> Vec<usize> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let (_, Some(since)) = *current {
            if since.elapsed() >= Duration::from_secs(FAILBACK_SECS) {
                *current = (0, None);
            }
        }
        let n = self.bases.len();
        (0..n).map(|i| (current.0 + i) % n).collect()
    }

    /// `index` answered: it is the one to use from now on.
    fn answered(&self, index: usize) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != index {
            info!(url = %self.bases[index], "Reporting to another collector replica.");
            *current = (index, (index != 0).then(Instant::now));
        }
    }

    fn current(&self) -> &str {
        let index = self.current.lock().unwrap_or_else(|p| p.into_inner()).0;
        &self.bases[index]
    }
}

/// Whether another replica may do better: no answer at all, or a gateway or an
/// overloaded replica's answer.
fn fail_over(err: &SendError) -> bool {
    match err {
        SendError::Transport(_) => true,
        SendError::Refused { status, .. } => matches!(
            *status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ),
        SendError::Answer(_) | SendError::Encode(_) => false,
    }
}

impl Client {
    /// Sets up TLS with the host's identity: the provisioned certificate, else the
    /// one stored by an earlier enrollment, else a new enrollment (network I/O).
    pub async fn connect(
        config: &CollectorConfig,
        state_dir: &Path,
    ) -> Result<Client, ClientError> {
        let ca = read(&config.ca_file)?;
        let host_id = config.host_id().to_string();
        let identity = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                Identity {
                    pem,
                    origin: cert.clone(),
                    key_file: (key != cert).then(|| key.clone()),
                }
            }
            _ => match Identity::load_enrolled(state_dir, &host_id)? {
                Some(identity) => identity,
                None => enroll(config, state_dir, &ca).await?,
            },
        };
        Client::with_identity(
            identity,
            (ca, config.ca_file.clone()),
            Replicas::new(config.url.bases()),
            host_id,
            Duration::from_secs(config.timeout_secs),
        )
    }

    /// A client presenting `identity`, with a TLS setup (and so a connection pool and
    /// session cache) of its own.
    fn with_identity(
        identity: Identity,
        ca: (Vec<u8>, PathBuf),
        replicas: Replicas,
        host_id: String,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let tls = tls_config(&ca.0, &ca.1, Some(&identity))?;
        Ok(Client {
            http: http_client(tls, timeout)?,
            replicas,
            host_id,
            hostname: crate::host::hostname(),
            identity,
            ca,
            timeout,
        })
    }

    /// When the certificate in use expires, if it can be read.
    pub fn certificate_expiry(&self) -> Option<std::time::SystemTime> {
        super::renew::validity(&self.identity.pem).map(|(_, not_after)| not_after)
    }

    /// When the certificate in use is due for renewal.
    pub fn renewal_due(&self) -> Option<std::time::SystemTime> {
        super::renew::validity(&self.identity.pem)
            .map(|(not_before, not_after)| super::renew::due(not_before, not_after))
    }

    /// Renews the certificate over the current one (`POST /v1/renew`), stores it where
    /// the identity lives, and returns a client presenting it (new connections only;
    /// this one stays usable until it is dropped).
    pub async fn renew(&self) -> Result<Client, ClientError> {
        let identity = super::renew::renew(self).await?;
        let replicas = Replicas::new(self.replicas.bases.clone());
        replicas.answered(
            self.replicas
                .current
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .0,
        );
        Client::with_identity(
            identity,
            self.ca.clone(),
            replicas,
            self.host_id.clone(),
            self.timeout,
        )
    }

    /// The replicas' URLs in the order to try them, with the HTTP client; for
    /// [`super::renew`].
    pub(super) fn endpoints(&self) -> (&reqwest::Client, Vec<&str>) {
        let bases = self
            .replicas
            .order()
            .into_iter()
            .map(|i| self.replicas.bases[i].as_str())
            .collect();
        (&self.http, bases)
    }

    /// The host id, the identity and the CA bundle; for [`super::renew`].
    pub(super) fn parts(&self) -> (&str, &Identity, &(Vec<u8>, PathBuf)) {
        (&self.host_id, &self.identity, &self.ca)
    }

    /// A batch of `events` from this host.
    fn batch<E>(&self, image: ImageClaim, events: Vec<E>) -> Batch<E> {
        Batch {
            schema: INGEST_SCHEMA.to_string(),
            host_id: self.host_id.clone(),
            hostname: self.hostname.clone(),
            image,
            events,
        }
    }

    /// The collector URL in use.
    pub fn url(&self) -> &str {
        self.replicas.current()
    }

    /// POSTs one batch, gzip-compressed, to the replica in use, else to each other in
    /// turn; the acknowledgement, or why the last one tried did not give it.
    pub async fn send<E: Serialize>(&self, batch: &Batch<E>) -> Result<BatchAck, SendError> {
        let body = gzip(batch).map_err(SendError::Encode)?;
        let order = self.replicas.order();
        let mut last = None;
        for index in order {
            match self
                .send_to(&self.replicas.bases[index], body.clone())
                .await
            {
                Ok(ack) => {
                    self.replicas.answered(index);
                    return Ok(ack);
                }
                Err(err) if fail_over(&err) => {
                    debug!(url = %self.replicas.bases[index], error = %err, "No answer from this collector replica.");
                    last = Some(err);
                }
                Err(err) => {
                    self.replicas.answered(index);
                    return Err(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| SendError::Transport("no collector URL".into())))
    }

    async fn send_to(&self, base: &str, body: Vec<u8>) -> Result<BatchAck, SendError> {
        let response = self
            .http
            .post(format!("{base}{INGEST_PATH}"))
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_ENCODING, "gzip")
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Transport(error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
            let message = error_message(response).await;
            return Err(SendError::Refused {
                status,
                message,
                retry_after,
            });
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| SendError::Transport(error_chain(&e)))?;
        serde_json::from_slice(&bytes).map_err(|e| SendError::Answer(e.to_string()))
    }
}

/// Logs the events the collector rejected one by one: they are dropped (the rest of
/// their batch was stored), not sent again — a collector older than this agent will
/// not learn to read them by being asked twice.
fn log_rejected(rejected: &[driftwatch_protocol::wire::RejectedEvent]) {
    for event in rejected {
        warn!(event_id = %event.id, error = %event.error, "The collector rejected an event; dropped (upgrade the collector first).");
    }
}

/// Why a batch was not acknowledged.
#[derive(Debug, Error)]
pub enum SendError {
    /// No HTTP answer: connection, TLS handshake or timeout.
    #[error("cannot reach the collector: {0}")]
    Transport(String),
    /// The collector answered with an error status.
    #[error("the collector answered {status}: {message}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// The collector's one sentence, or the status's reason.
        message: String,
        /// How long the collector asked to wait (`Retry-After`, in seconds).
        retry_after: Option<Duration>,
    },
    /// A 2xx answer that is not a batch acknowledgement.
    #[error("the collector's answer is not an acknowledgement: {0}")]
    Answer(String),
    /// The batch could not be compressed.
    #[error("cannot encode the batch: {0}")]
    Encode(io::Error),
}

/// What to do after a failed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// A transient failure (no answer, 5xx, 429, 408): wait and send the same again,
    /// not before the collector's `Retry-After` when it gave one.
    Retry(Option<Duration>),
    /// 401 or 403: the certificate is revoked or names another host; an operator must
    /// act. Waits and tries again, in case they did.
    Unauthorized,
    /// 413: the body is too large; send fewer events.
    TooLarge,
    /// Any other refusal (400: the collector cannot read the batch). Waits and tries
    /// again: dropping events is never the agent's call.
    Rejected,
}

impl SendError {
    /// How the caller should go on.
    pub fn next(&self) -> Next {
        match self {
            SendError::Transport(_) | SendError::Answer(_) | SendError::Encode(_) => {
                Next::Retry(None)
            }
            SendError::Refused {
                status,
                retry_after,
                ..
            } => match *status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Next::Unauthorized,
                StatusCode::PAYLOAD_TOO_LARGE => Next::TooLarge,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
                    Next::Retry(*retry_after)
                }
                s if s.is_server_error() => Next::Retry(*retry_after),
                _ => Next::Rejected,
            },
        }
    }
}

/// The daemon's reporting task and what it shares with the daemon.
pub struct Reporter {
    /// `[collector]`, validated.
    pub config: CollectorConfig,
    /// Where the enrolled identity lives.
    pub state_dir: PathBuf,
    /// The events to deliver.
    pub spool: Arc<Mutex<Spool>>,
    /// Notified by the daemon after it spooled events.
    pub wake: Arc<Notify>,
    /// The daemon's view of the host, for heartbeats.
    pub summary: watch::Receiver<HostSummary>,
    /// The collector's latest verdict on the host, for the daemon.
    pub directives: watch::Sender<Option<HostDirective>>,
    /// `/status` and `/metrics`.
    pub status: Arc<dyn StatusBoard>,
}

/// A running reporter.
pub struct ReporterHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ReporterHandle {
    /// Asks the reporter to send what is still unsent, without retrying, and waits at
    /// most `grace` for it; whatever is left stays in the spool for next time.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            // An interrupted request is sent again later: its events are still in the
            // spool, and the collector dedupes by id.
            task.abort();
            let _ = task.await;
            debug!("Reporter stopped before it could send everything.");
        }
    }
}

/// True once the reporter is asked to stop (or its handle is gone).
fn stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Sleeps for `delay` unless asked to stop first.
async fn pause(delay: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = stop.wait_for(|stop| *stop) => {}
    }
}

impl Reporter {
    /// Starts the task on the current runtime.
    pub fn spawn(self) -> ReporterHandle {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(self.run(stop_rx));
        ReporterHandle { stop, task }
    }

    fn spool(&self) -> MutexGuard<'_, Spool> {
        // A panic while holding the lock leaves the spool as its last complete
        // operation left it: every operation is durable before it changes memory.
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut CollectorStatus)) {
        let mut change = Some(change);
        self.status.update_collector(&mut |collector| {
            if let Some(change) = change.take() {
                change(collector.get_or_insert_with(|| CollectorStatus::new(&self.config)));
            }
        });
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let url = self.config.url.to_string();
        let mut backoff =
            Backoff::new(FIRST_RETRY, Duration::from_secs(self.config.retry_max_secs));
        self.update(|_| {});
        let client = loop {
            if stopping(&stop) {
                return;
            }
            match Client::connect(&self.config, &self.state_dir).await {
                Ok(client) => break client,
                Err(err) => {
                    error!(url = %url, error = %err, "Cannot set up the collector client; retrying.");
                    self.update(|c| {
                        c.reachable = false;
                        c.requests_failed += 1;
                        c.last_error = Some(err.to_string());
                    });
                    pause(backoff.next_delay(), &mut stop).await;
                }
            }
        };
        let mut client = client;
        info!(url = %url, host_id = %client.host_id, "Reporting to the collector.");
        self.show_certificate(&client);
        let mut renewal = Renewal::new(&client, &self.config, None);
        let max_batch = self.config.batch_max_events;
        let mut batch_size = max_batch;
        let interval = Duration::from_secs(self.config.heartbeat_interval_secs);
        let mut next_heartbeat = Instant::now();
        let mut failures = 0u32;
        loop {
            let stop_now = stopping(&stop);
            if !stop_now && renewal.due() {
                match client.renew().await {
                    Ok(renewed) => {
                        client = renewed;
                        renewal = Renewal::new(&client, &self.config, renewal.asked);
                        self.update(|c| c.certificate_renewals += 1);
                        self.show_certificate(&client);
                    }
                    Err(err) => {
                        let delay = renewal.failed();
                        error!(url = %url, error = %err, retry_in_secs = delay.as_secs_f64(), "Cannot renew the client certificate; the current one is used meanwhile.");
                        self.update(|c| c.certificate_renewal_failures += 1);
                    }
                }
            }
            let pending = self.spool().peek(batch_size);
            if pending.is_none() && (stop_now || Instant::now() < next_heartbeat) {
                if stop_now {
                    return;
                }
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep_until(next_heartbeat) => {}
                    () = tokio::time::sleep_until(renewal.next) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let (events, through) = pending.map_or((Vec::new(), None), |u| {
                let known = u.events.into_iter().map(|e| Spooled::Known(Box::new(e)));
                let foreign = u.foreign.into_iter().map(Spooled::Foreign);
                (known.chain(foreign).collect(), Some(u.through))
            });
            let count = events.len();
            let batch = self.batch(&client, events);
            match client.send(&batch).await {
                Ok(ack) => {
                    backoff.reset();
                    failures = 0;
                    let mut unrecorded = false;
                    if let Some(through) = through {
                        if let Err(err) = self.spool().ack(through) {
                            // The collector has them; they will be sent again and
                            // counted as duplicates. Not at once: the state directory
                            // is full or read-only, and resending in a loop helps no one.
                            error!(error = %err, "Cannot record the acknowledgement in the spool.");
                            unrecorded = true;
                        }
                    }
                    batch_size = batch_size.saturating_mul(2).min(max_batch);
                    next_heartbeat = Instant::now() + interval;
                    debug!(
                        events = count,
                        accepted = ack.accepted,
                        duplicates = ack.duplicates,
                        state = ack.host.state.name(),
                        "Batch acknowledged."
                    );
                    log_rejected(&ack.rejected);
                    if ack.renew {
                        renewal.now();
                    }
                    let (spooled, bytes) = {
                        let spool = self.spool();
                        (spool.len() as u64, spool.bytes())
                    };
                    self.update(|c| {
                        c.url = client.url().to_string();
                        c.reachable = true;
                        c.last_error = None;
                        c.last_ack = Some(now_rfc3339());
                        c.host_state = Some(ack.host.state);
                        c.events_sent += batch.events.len() as u64;
                        c.events_rejected += ack.rejected.len() as u64;
                        c.spooled_events = spooled;
                        c.spool_bytes = bytes;
                    });
                    let host = ack.host;
                    self.directives.send_if_modified(|current| {
                        let changed = current.as_ref() != Some(&host);
                        *current = Some(host);
                        changed
                    });
                    if unrecorded {
                        pause(backoff.next_delay(), &mut stop).await;
                    }
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    self.update(|c| {
                        c.reachable = false;
                        c.requests_failed += 1;
                        c.last_error = Some(err.to_string());
                    });
                    if stop_now {
                        // Flushing at shutdown: no retries, the spool keeps the rest.
                        warn!(url = %url, error = %err, unsent = self.spool().len(), "Stopping with events unsent; they stay in the spool.");
                        return;
                    }
                    let delay = match err.next() {
                        Next::Retry(after) => {
                            let delay = backoff.next_delay().max(after.unwrap_or_default());
                            if failures == 1 || failures.checked_rem(WARN_EVERY) == Some(0) {
                                warn!(url = %url, error = %err, failures, retry_in_secs = delay.as_secs_f64(), "Collector not reachable; events stay in the spool.");
                            } else {
                                debug!(url = %url, error = %err, failures, "Collector still not reachable.");
                            }
                            delay
                        }
                        Next::Unauthorized => {
                            error!(url = %url, host_id = %client.host_id, error = %err, "The collector refused this host's identity (revoked, or issued for another host).");
                            backoff.next_delay()
                        }
                        Next::TooLarge if count > 1 => {
                            batch_size = (count / 2).max(1);
                            error!(url = %url, events = count, retry_with = batch_size, "The collector refused a batch as too large; sending smaller ones.");
                            continue;
                        }
                        Next::TooLarge | Next::Rejected => {
                            error!(url = %url, error = %err, events = count, "The collector refused a batch; retrying later, nothing is dropped.");
                            backoff.next_delay()
                        }
                    };
                    pause(delay, &mut stop).await;
                }
            }
        }
    }

    /// Shows when the certificate in use expires.
    fn show_certificate(&self, client: &Client) {
        let expires = client.certificate_expiry();
        self.update(|c| {
            c.certificate_expires = expires.map(driftwatch_protocol::time::rfc3339);
            c.certificate_expires_unix = expires
                .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_secs()).ok());
        });
    }

    /// A batch of `events` plus a fresh heartbeat.
    fn batch(&self, client: &Client, mut events: Vec<Spooled>) -> Batch<Spooled> {
        let summary = self.summary.borrow().clone();
        let spool_id = self.spool().spool_id().to_string();
        events.push(Spooled::Known(Box::new(Event {
            // Heartbeats are not spooled; a random id keeps each one unique.
            id: format!("{spool_id}:hb:{}", random_id()),
            at: now_rfc3339(),
            body: EventBody::Heartbeat(Heartbeat {
                agent_version: AGENT_VERSION.to_string(),
                findings: summary.findings,
                last_full_verification: summary.last_full_verification,
                interval_secs: self.config.heartbeat_interval_secs,
            }),
        })));
        client.batch(summary.image, events)
    }
}

/// When the reporter next renews its certificate: when it is due, or after a failed
/// attempt's backoff. Never for a certificate it cannot read (nothing to go by).
struct Renewal {
    /// The wall-clock time it is due (`None`: never).
    at: Option<std::time::SystemTime>,
    /// When to look next.
    next: Instant,
    backoff: Backoff,
    /// When the collector last asked for a renewal.
    asked: Option<Instant>,
}

/// A collector's request to renew is followed at most once in this long.
const ASKED_AGAIN: Duration = Duration::from_secs(600);

/// Renewal is checked at least this often, however far away it is: a suspended
/// machine's monotonic clock does not count the time it slept.
const RENEWAL_CHECK: Duration = Duration::from_secs(3600);

impl Renewal {
    fn new(client: &Client, config: &CollectorConfig, asked: Option<Instant>) -> Renewal {
        let mut renewal = Renewal {
            at: client.renewal_due(),
            next: Instant::now(),
            backoff: Backoff::new(FIRST_RETRY, Duration::from_secs(config.retry_max_secs)),
            asked,
        };
        renewal.schedule();
        renewal
    }

    fn schedule(&mut self) {
        let left = self.at.map_or(RENEWAL_CHECK, |at| {
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        });
        self.next = Instant::now() + left.min(RENEWAL_CHECK);
    }

    /// Whether to renew now (by the wall clock, looked at when the next check is due).
    fn due(&mut self) -> bool {
        let Some(at) = self.at else {
            return false;
        };
        if Instant::now() < self.next {
            return false;
        }
        if std::time::SystemTime::now() >= at {
            return true;
        }
        self.schedule();
        false
    }

    /// The collector asked for a renewal (its CA changed): at once, unless one was
    /// asked for lately — a collector confused about its CA must not make a host renew
    /// at every report.
    fn now(&mut self) {
        if self.asked.is_some_and(|at| at.elapsed() < ASKED_AGAIN) || self.at.is_none() {
            return;
        }
        info!("The collector asks for a new certificate (its CA changed); renewing now.");
        self.asked = Some(Instant::now());
        self.at = Some(std::time::SystemTime::now());
        self.next = Instant::now();
    }

    /// A failed attempt: the next one after a backoff.
    fn failed(&mut self) -> Duration {
        let delay = self.backoff.next_delay();
        self.next = Instant::now() + delay;
        delay
    }
}

/// A report delivered by `check --report`.
#[derive(Debug)]
pub struct Delivered {
    /// Finding events sent.
    pub findings: usize,
    /// The host as the collector sees it after the delivery.
    pub host: HostDirective,
}

/// Sends every finding of a report as a new event (ids unique to this run) and one
/// heartbeat saying "one-shot, expect no more" (`interval_secs: 0`), in batches;
/// transient failures are retried until three times `timeout_secs` have passed.
pub fn deliver_report(
    config: &CollectorConfig,
    state_dir: &Path,
    image: ImageClaim,
    findings: &[Finding],
) -> Result<Delivered, ReportError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ReportError::Client(ClientError::Runtime(e)))?;
    let deadline = Instant::now() + Duration::from_secs(config.timeout_secs.saturating_mul(3));
    runtime.block_on(async {
        match tokio::time::timeout_at(deadline, deliver(config, state_dir, image, findings)).await {
            Ok(result) => result,
            Err(_) => Err(ReportError::Timeout(config.timeout_secs.saturating_mul(3))),
        }
    })
}

async fn deliver(
    config: &CollectorConfig,
    state_dir: &Path,
    image: ImageClaim,
    findings: &[Finding],
) -> Result<Delivered, ReportError> {
    let client = Client::connect(config, state_dir)
        .await
        .map_err(ReportError::Client)?;
    let run = random_id();
    let at = now_rfc3339();
    let mut queue: VecDeque<Event> = (1..)
        .zip(findings)
        .map(|(n, finding)| Event {
            id: format!("{run}:{n}"),
            at: at.clone(),
            body: EventBody::Finding {
                finding: finding.clone(),
            },
        })
        .collect();
    let heartbeat = Event {
        id: format!("{run}:hb"),
        at: at.clone(),
        body: EventBody::Heartbeat(Heartbeat {
            agent_version: AGENT_VERSION.to_string(),
            findings: findings.len() as u64,
            last_full_verification: Some(at.clone()),
            interval_secs: 0,
        }),
    };
    let mut batch_size = config.batch_max_events;
    let mut backoff = Backoff::new(FIRST_RETRY, Duration::from_secs(config.retry_max_secs));
    loop {
        let take = batch_size.min(queue.len());
        let last = take == queue.len();
        let mut events: Vec<Event> = queue.iter().take(take).cloned().collect();
        if last {
            events.push(heartbeat.clone());
        }
        let batch = client.batch(image.clone(), events);
        match client.send(&batch).await {
            Ok(ack) => {
                backoff.reset();
                log_rejected(&ack.rejected);
                queue.drain(..take);
                if last {
                    return Ok(Delivered {
                        findings: findings.len(),
                        host: ack.host,
                    });
                }
            }
            Err(err) => match err.next() {
                Next::TooLarge if take > 1 => batch_size = (take / 2).max(1),
                Next::Retry(after) => {
                    let delay = backoff.next_delay().max(after.unwrap_or_default());
                    debug!(error = %err, retry_in_secs = delay.as_secs_f64(), "Retrying the report.");
                    tokio::time::sleep(delay).await;
                }
                // A refusal will not change within a one-shot's patience.
                Next::TooLarge | Next::Unauthorized | Next::Rejected => {
                    return Err(ReportError::Send(err))
                }
            },
        }
    }
}

/// Why `check --report` could not deliver.
#[derive(Debug, Error)]
pub enum ReportError {
    /// The client could not be set up (files, TLS, enrollment).
    #[error("{0}")]
    Client(ClientError),
    /// The collector refused the report.
    #[error("{0}")]
    Send(SendError),
    /// The collector did not take the report in time.
    #[error("no acknowledgement within {0} s (three times timeout_secs)")]
    Timeout(u64),
}

/// A host's key and certificate chain, PEM, in one buffer.
pub(super) struct Identity {
    pub(super) pem: Vec<u8>,
    /// The file it came from (the certificate's), for errors and renewal.
    pub(super) origin: PathBuf,
    /// The key's own file, when it is not `origin` (a provisioned `key_file`): a
    /// renewal keeps that key, as two files cannot be replaced at once.
    pub(super) key_file: Option<PathBuf>,
}

impl Identity {
    fn path(state_dir: &Path, host_id: &str) -> PathBuf {
        state_dir.join(IDENTITY_DIR).join(format!("{host_id}.pem"))
    }

    /// The identity from an earlier enrollment as `host_id`, if any.
    fn load_enrolled(state_dir: &Path, host_id: &str) -> Result<Option<Identity>, ClientError> {
        let path = Identity::path(state_dir, host_id);
        match fs::read(&path) {
            Ok(pem) => Ok(Some(Identity {
                pem,
                origin: path,
                key_file: None,
            })),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ClientError::Read { path, source }),
        }
    }

    /// Stores the identity, readable by root only, atomically: all of it in
    /// `origin`, or only the certificate there when the key has a file of its own.
    pub(super) fn store(&self) -> Result<(), ClientError> {
        let bytes = match &self.key_file {
            None => self.pem.clone(),
            Some(_) => CertificateDer::pem_slice_iter(&self.pem)
                .filter_map(Result::ok)
                .flat_map(|der| pem_certificate(&der).into_bytes())
                .collect(),
        };
        write_atomically(&self.origin, &bytes)
    }
}

/// A certificate as PEM text.
fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Replaces `path` with `bytes` (mode 0600) through a temporary file and a rename,
/// durably: a crash leaves the old file or the new one, never a mix.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    let io = |source| ClientError::StoreIdentity {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let name = path
        .file_name()
        .map_or("identity".into(), |n| n.to_string_lossy());
    let temp = dir.join(format!(".{name}.tmp"));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&temp, path).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Exchanges the enrollment token for a certificate of a key made here; stores both.
async fn enroll(
    config: &CollectorConfig,
    state_dir: &Path,
    ca: &[u8],
) -> Result<Identity, ClientError> {
    let host_id = config.host_id();
    let token_file = config
        .enrollment_token_file
        .as_ref()
        .ok_or(ClientError::NoIdentity)?;
    let token = String::from_utf8_lossy(&read(token_file)?)
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(ClientError::EmptyToken {
            path: token_file.clone(),
        });
    }
    let key = rcgen::KeyPair::generate().map_err(ClientError::Csr)?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(ClientError::Csr)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host_id);
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(ClientError::Csr)?;
    let http = http_client(
        tls_config(ca, &config.ca_file, None)?,
        Duration::from_secs(config.timeout_secs),
    )?;
    let request = EnrollRequest {
        token,
        host_id: host_id.to_string(),
        csr_pem,
    };
    // Any replica can enroll: the first that answers does.
    let response = post_to_first(&http, &config.url.bases(), ENROLL_PATH, &request)
        .await
        .map_err(ClientError::Enroll)?;
    let status = response.status();
    if !status.is_success() {
        let message = error_message(response).await;
        return Err(ClientError::Enroll(format!(
            "the collector answered {status}: {message}"
        )));
    }
    let answer: EnrollResponse = response
        .json()
        .await
        .map_err(|e| ClientError::Enroll(format!("invalid answer: {}", error_chain(&e))))?;
    if answer.host_id != host_id {
        return Err(ClientError::Enroll(format!(
            "the certificate names host {:?}, not {host_id:?}",
            answer.host_id
        )));
    }
    let mut pem = answer.certificate_pem.into_bytes();
    pem.push(b'\n');
    pem.extend(key.serialize_pem().into_bytes());
    let identity = Identity {
        pem,
        origin: Identity::path(state_dir, host_id),
        key_file: None,
    };
    // A certificate that does not match the key must not be kept.
    tls_config(ca, &config.ca_file, Some(&identity))?;
    identity.store()?;
    info!(host_id, identity = %identity.origin.display(), "Enrolled with the collector.");
    Ok(identity)
}

/// rustls with the ring provider, the CA file as the only roots, and the client
/// certificate when there is one. ALPN offers HTTP/2 and HTTP/1.1: reqwest leaves a
/// preconfigured TLS setup as it is.
pub(super) fn tls_config(
    ca: &[u8],
    ca_path: &Path,
    identity: Option<&Identity>,
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        let cert = cert.map_err(|e| ClientError::Pem {
            path: ca_path.to_path_buf(),
            problem: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| ClientError::Pem {
            path: ca_path.to_path_buf(),
            problem: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(ClientError::Pem {
            path: ca_path.to_path_buf(),
            problem: "it holds no certificate".into(),
        });
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ClientError::Tls)?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let pem_error = |problem: String| ClientError::Pem {
                path: identity.origin.clone(),
                problem,
            };
            let chain = CertificateDer::pem_slice_iter(&identity.pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_error(e.to_string()))?;
            if chain.is_empty() {
                return Err(pem_error("it holds no certificate".into()));
            }
            let key = PrivateKeyDer::from_pem_slice(&identity.pem)
                .map_err(|e| pem_error(format!("no usable private key ({e})")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| pem_error(e.to_string()))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn http_client(
    tls: rustls::ClientConfig,
    timeout: Duration,
) -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .timeout(timeout)
        .connect_timeout(timeout)
        // An ingest endpoint that redirects is misconfigured; following it would
        // send the host's findings somewhere nobody chose.
        .redirect(reqwest::redirect::Policy::none())
        // The collector closes connections idle for 10 s; letting go first means a
        // report never goes out on a connection the collector is closing.
        .pool_idle_timeout(Duration::from_secs(5))
        .user_agent(USER_AGENT)
        .build()
        .map_err(|e| ClientError::Http(error_chain(&e)))
}

fn gzip(batch: &impl Serialize) -> io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    serde_json::to_writer(&mut encoder, batch).map_err(io::Error::other)?;
    encoder.finish()
}

/// The collector's one sentence from an error answer, else the status's reason.
pub(super) async fn error_message(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    let message = serde_json::from_slice::<ErrorBody>(&body)
        .map(|b| b.error)
        .unwrap_or_else(|_| status.canonical_reason().unwrap_or("error").to_string());
    message.chars().take(MAX_MESSAGE_CHARS).collect()
}

pub(super) fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    fs::read(path).map_err(|source| ClientError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Why the client cannot be set up.
#[derive(Debug, Error)]
pub enum ClientError {
    /// A configured file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A PEM file does not hold what it should.
    #[error("{} is unusable: {problem}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The enrollment token file is empty.
    #[error("enrollment token file {} is empty", path.display())]
    EmptyToken {
        /// The file.
        path: PathBuf,
    },
    /// Neither a certificate nor an enrollment token is configured.
    #[error("no client certificate and no enrollment token are configured")]
    NoIdentity,
    /// The host's key or CSR cannot be made.
    #[error("cannot make the enrollment request: {0}")]
    Csr(rcgen::Error),
    /// Enrollment failed.
    #[error("enrollment failed: {0}")]
    Enroll(String),
    /// Renewal failed.
    #[error("certificate renewal failed: {0}")]
    Renew(String),
    /// The identity cannot be stored.
    #[error("cannot store the host's identity in {}: {source}", path.display())]
    StoreIdentity {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// rustls refused the settings.
    #[error("cannot set up TLS: {0}")]
    Tls(rustls::Error),
    /// The HTTP client cannot be built.
    #[error("cannot set up the HTTP client: {0}")]
    Http(String),
    /// No async runtime for `check --report`.
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
}

/// POSTs `body` as JSON to `path` on each of `bases` in turn; the first answer (of any
/// status) is the result, or why none answered.
pub(super) async fn post_to_first<B: AsRef<str>>(
    http: &reqwest::Client,
    bases: &[B],
    path: &str,
    body: &impl serde::Serialize,
) -> Result<reqwest::Response, String> {
    let mut unreachable = Vec::new();
    for base in bases {
        let base = base.as_ref();
        match http.post(format!("{base}{path}")).json(body).send().await {
            Ok(response) => return Ok(response),
            Err(e) => unreachable.push(format!("{base}: {}", error_chain(&e))),
        }
    }
    Err(format!(
        "cannot reach the collector: {}",
        unreachable.join("; ")
    ))
}

#[cfg(test)]
#[path = "test_collector.rs"]
mod test_collector;

#[cfg(test)]
mod tests {
    //! Against the small scripted HTTPS collector of `test_collector.rs`: the failures
    //! it plays (lost answers, 413, 429 with Retry-After, 503) are what the client must
    //! survive; the real collector is driven end to end in the workspace's `tests/`.

    use super::test_collector::{lock, Reply, TestCollector};
    use super::*;
    use driftwatch_protocol::report::{FileChange, FileFinding, Severity};
    use driftwatch_protocol::wire::{HostState, MarkDirective};
    use std::os::unix::fs::PermissionsExt;

    /// The status as the tests read it: only the collector's part.
    impl StatusBoard for Mutex<Option<CollectorStatus>> {
        fn update_collector(&self, change: &mut dyn FnMut(&mut Option<CollectorStatus>)) {
            change(&mut lock(self));
        }
    }

    /// A `[collector]` section for `collector`, with a provisioned certificate
    /// (`provisioned`) or the enrollment token.
    fn config(collector: &TestCollector, provisioned: bool) -> CollectorConfig {
        let (cert_file, key_file, enrollment_token_file) = if provisioned {
            let (cert, key) = collector.provision("web-1");
            (Some(cert), Some(key), None)
        } else {
            (None, None, Some(collector.token_file()))
        };
        CollectorConfig {
            url: collector.url.clone().into(),
            ca_file: collector.ca_file(),
            cert_file,
            key_file,
            enrollment_token_file,
            host_id: Some("web-1".into()),
            heartbeat_interval_secs: 3600,
            batch_max_events: 500,
            spool_max_bytes: 1 << 20,
            timeout_secs: 5,
            retry_max_secs: 1,
        }
    }

    fn finding(path: &str) -> Finding {
        Finding::File(Box::new(FileFinding {
            change: FileChange::Modified,
            path: path.into(),
            path_bytes_b64: None,
            attributes: vec![],
            severity: Severity::Critical,
            rule: "r".into(),
            baseline: None,
            observed: None,
            package: None,
            container: None,
        }))
    }

    fn image() -> ImageClaim {
        ImageClaim {
            image_id: Some("web-2026.11".into()),
            baseline_digest: Some("blake3:00".into()),
        }
    }

    fn heartbeat_interval(event: &Event) -> Option<u64> {
        match &event.body {
            EventBody::Heartbeat(h) => Some(h.interval_secs),
            EventBody::Finding { .. } | EventBody::Provisioned(_) => None,
        }
    }

    #[test]
    fn answers_are_classified() {
        let refused = |status: u16, retry_after: Option<u64>| SendError::Refused {
            status: StatusCode::from_u16(status).unwrap(),
            message: "m".into(),
            retry_after: retry_after.map(Duration::from_secs),
        };
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(refused(429, Some(7)).next(), Next::Retry(secs(7)));
        assert_eq!(refused(503, Some(2)).next(), Next::Retry(secs(2)));
        assert_eq!(refused(500, None).next(), Next::Retry(None));
        assert_eq!(refused(408, None).next(), Next::Retry(None));
        assert_eq!(refused(401, None).next(), Next::Unauthorized);
        assert_eq!(refused(403, None).next(), Next::Unauthorized);
        assert_eq!(refused(413, None).next(), Next::TooLarge);
        assert_eq!(refused(400, None).next(), Next::Rejected);
        assert_eq!(refused(404, None).next(), Next::Rejected);
        assert_eq!(
            SendError::Transport("refused".into()).next(),
            Next::Retry(None)
        );
    }

    #[tokio::test]
    async fn enrolls_once_then_sends_gzip_over_mutual_tls() {
        let collector = TestCollector::start(500, None, vec![]);
        let config = config(&collector, false);
        let state = tempfile::tempdir().unwrap();
        let client = Client::connect(&config, state.path()).await.unwrap();
        assert_eq!(*lock(&collector.server.enrollments), 1);
        let identity = state.path().join("identity/web-1.pem");
        let mode = fs::metadata(&identity).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let stored = fs::read_to_string(&identity).unwrap();
        assert!(stored.contains("BEGIN CERTIFICATE") && stored.contains("PRIVATE KEY"));

        let batch = client.batch(
            image(),
            vec![Event {
                id: "s:1".into(),
                at: now_rfc3339(),
                body: EventBody::Finding {
                    finding: finding("/usr/bin/ssh"),
                },
            }],
        );
        let ack = client.send(&batch).await.unwrap();
        assert_eq!((ack.accepted, ack.duplicates), (1, 0));
        assert_eq!(client.send(&batch).await.unwrap().duplicates, 1);
        {
            let seen = lock(&collector.server.seen);
            assert!(seen.iter().all(|s| s.gzip && s.client_cert));
            assert_eq!(seen[0].batch, batch);
        }

        // Later contacts reuse the stored identity.
        Client::connect(&config, state.path()).await.unwrap();
        assert_eq!(*lock(&collector.server.enrollments), 1);

        // A wrong token is refused with the collector's sentence.
        fs::write(config.enrollment_token_file.as_ref().unwrap(), "wrong").unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let Err(err) = Client::connect(&config, elsewhere.path()).await else {
            panic!("enrolled with a wrong token");
        };
        let message = err.to_string();
        assert!(
            message.contains("401") && message.contains("unknown enrollment token"),
            "{message}"
        );
    }

    #[test]
    fn replicas_are_tried_from_the_one_in_use_and_the_first_again_later() {
        let replicas = Replicas::new(vec![
            "https://a".into(),
            "https://b".into(),
            "https://c".into(),
        ]);
        assert_eq!(replicas.order(), [0, 1, 2]);
        replicas.answered(2);
        assert_eq!(replicas.current(), "https://c");
        assert_eq!(replicas.order(), [2, 0, 1]);
        // Long enough on another replica: the first is tried first again.
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(FAILBACK_SECS + 1))
            .unwrap();
        replicas.current.lock().unwrap().1 = Some(long_ago);
        assert_eq!(replicas.order(), [0, 1, 2]);
        let refused = |status| SendError::Refused {
            status,
            message: String::new(),
            retry_after: None,
        };
        assert!(fail_over(&SendError::Transport("refused".into())));
        assert!(fail_over(&refused(StatusCode::SERVICE_UNAVAILABLE)));
        assert!(!fail_over(&refused(StatusCode::FORBIDDEN)));
        assert!(!fail_over(&refused(StatusCode::TOO_MANY_REQUESTS)));
    }

    #[tokio::test]
    async fn without_a_client_certificate_ingest_is_unauthorized() {
        let collector = TestCollector::start(500, None, vec![]);
        let ca_file = collector.ca_file();
        let ca = fs::read(&ca_file).unwrap();
        let client = Client {
            http: http_client(
                tls_config(&ca, &ca_file, None).unwrap(),
                Duration::from_secs(5),
            )
            .unwrap(),
            replicas: Replicas::new(vec![collector.url.clone()]),
            host_id: "web-1".into(),
            hostname: "web-1".into(),
            identity: Identity {
                pem: Vec::new(),
                origin: ca_file.clone(),
                key_file: None,
            },
            ca: (ca.clone(), ca_file.clone()),
            timeout: Duration::from_secs(5),
        };
        let err = client
            .send(&client.batch::<Event>(image(), vec![]))
            .await
            .unwrap_err();
        assert_eq!(err.next(), Next::Unauthorized, "{err}");
        // A CA that did not sign the collector's certificate: no connection at all.
        let other = TestCollector::start(500, None, vec![]);
        let mut wrong_ca = config(&collector, true);
        wrong_ca.ca_file = other.ca_file();
        let client = Client::connect(&wrong_ca, collector.dir.path())
            .await
            .unwrap();
        let err = client
            .send(&client.batch::<Event>(image(), vec![]))
            .await
            .unwrap_err();
        assert!(matches!(err, SendError::Transport(_)), "{err}");
    }

    #[tokio::test]
    async fn the_reporter_delivers_everything_once_through_failures() {
        let mark = MarkDirective {
            reason: "critical drift, within budget".into(),
            since: "2026-01-01T00:00:00Z".into(),
        };
        // The collector is down, then the answer to a stored batch is lost, then it
        // rate-limits; and it takes at most 4 events per request.
        let collector = TestCollector::start(
            4,
            Some(mark.clone()),
            vec![
                Reply::Status(503, None),
                Reply::StoreThenFail,
                Reply::Status(429, Some(1)),
            ],
        );
        let state = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(&state.path().join("spool"), 1 << 20).unwrap();
        let events = (0..10)
            .map(|i| {
                (
                    now_rfc3339(),
                    EventBody::Finding {
                        finding: finding(&format!("/usr/bin/f{i}")),
                    },
                )
            })
            .collect();
        spool.append(events, Vec::new).unwrap();
        let ids: Vec<String> = spool
            .peek(100)
            .unwrap()
            .events
            .into_iter()
            .map(|e| e.id)
            .collect();
        let spool = Arc::new(Mutex::new(spool));
        let (_summary_tx, summary) = watch::channel(HostSummary {
            image: image(),
            findings: 10,
            last_full_verification: None,
        });
        let (directives, mut verdicts) = watch::channel(None);
        let shared: Arc<Mutex<Option<CollectorStatus>>> = Arc::new(Mutex::new(None));
        let started = std::time::Instant::now();
        let handle = Reporter {
            config: config(&collector, true),
            state_dir: state.path().to_path_buf(),
            spool: Arc::clone(&spool),
            wake: Arc::new(Notify::new()),
            summary,
            directives,
            status: Arc::clone(&shared) as Arc<dyn StatusBoard>,
        }
        .spawn();
        while lock(&spool).peek(1).is_some() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "spool not drained"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        verdicts.changed().await.unwrap();
        let verdict = verdicts.borrow().clone().unwrap();
        assert_eq!(verdict.mark, Some(mark));
        handle.shutdown(Duration::from_secs(2)).await;

        // Every event arrived, none was stored twice (the resent batch counted as
        // duplicates), and every batch carried exactly one heartbeat, last.
        for id in &ids {
            assert!(collector.received(id), "{id} never arrived");
        }
        let stored = lock(&collector.server.stored);
        assert!(
            ids.iter().any(|id| stored[id] > 1),
            "nothing was resent: {stored:?}"
        );
        let seen = lock(&collector.server.seen);
        for s in seen.iter() {
            assert!(s.batch.events.len() <= 4);
            let beats: Vec<_> = s
                .batch
                .events
                .iter()
                .filter_map(heartbeat_interval)
                .collect();
            assert_eq!(beats, [3600]);
            assert!(heartbeat_interval(s.batch.events.last().unwrap()).is_some());
            assert_eq!(s.batch.host_id, "web-1");
            assert_eq!(s.batch.image, image());
        }
        let status = lock(&shared).clone().unwrap();
        assert!(status.reachable);
        assert_eq!(status.spooled_events, 0);
        assert!(status.requests_failed >= 3, "{status:?}");
        assert_eq!(status.host_state, Some(HostState::Marked));
        assert!(status.last_ack.is_some());
        // The Retry-After of 1 s was honoured.
        assert!(started.elapsed() >= Duration::from_secs(1));
    }

    #[test]
    fn a_report_is_delivered_once_in_batches_with_a_one_shot_heartbeat() {
        let collector = TestCollector::start(2, None, vec![Reply::Status(502, None)]);
        let state = tempfile::tempdir().unwrap();
        let findings: Vec<Finding> = (0..3).map(|i| finding(&format!("/etc/f{i}"))).collect();
        let delivered =
            deliver_report(&config(&collector, true), state.path(), image(), &findings).unwrap();
        assert_eq!(delivered.findings, 3);
        assert_eq!(delivered.host.state, HostState::Drifted);
        let seen = lock(&collector.server.seen);
        let events: Vec<&Event> = seen.iter().flat_map(|s| &s.batch.events).collect();
        assert_eq!(events.len(), 4, "3 findings and one heartbeat");
        assert_eq!(heartbeat_interval(events[3]), Some(0));
        let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4, "ids must be unique");

        // Refused outright: a clear error, at once.
        let dead = TestCollector::start(2, None, vec![Reply::Status(400, None)]);
        let err = deliver_report(&config(&dead, true), state.path(), image(), &findings)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("400") && err.contains("scripted failure"),
            "{err}"
        );
    }
}
