//! Grouped alerts: many hosts, one message.
//!
//! Hosts of one image are identical, so when something goes wrong with an image — a bad
//! package pushed by configuration management, an attacker's tool spread across the
//! fleet, a region losing its network — it goes wrong on all of them within seconds.
//! One alert per host would bury the on-call person under 40 copies of the same
//! message. Instead, the collector [raises](Alerter::raise) an [`Occurrence`] per host,
//! and the [`Alerter`] gathers occurrences of the same change (same kind, image and
//! group) for `alerts.group_wait_secs`, then sends **one** alert: "modified
//! /usr/bin/ssh on 40 of 40 hosts of image ami-123".
//!
//! A host alerted for a change is not alerted for it again (the memory of what was
//! sent is bounded: keys unseen for a day are forgotten, and their number is capped);
//! hosts that show the change later make a follow-up alert ("on 3 more hosts, 43 of 60
//! hosts of image ami-123"). Alerts go to every `[[webhook]]` subscribed to their kind,
//! each delivery in its own task with retries, so a slow or dead receiver delays no
//! other receiver and never the grouping. Every delivery's outcome is logged in the
//! action log.
//!
//! TLS to receivers uses rustls with the ring provider and the webhook's `ca_file`;
//! without one, an `https://` receiver is checked against the system's CA bundle (the
//! first of `$SSL_CERT_FILE` and the usual distribution paths that exists), and the
//! collector refuses to start when there is none.

use crate::config::{CollectorConfig, WebhookConfig, WebhookFormat};
use crate::metrics::Metrics;
use crate::store::{now_ms, ActionRecord, DynStore};
use driftwatch_protocol::report::{format_timestamp, Severity};
use driftwatch_protocol::Timestamp;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Occurrences waiting for the grouping task. Ingest raises them in bursts (a bad image
/// reports from every host within a heartbeat), and the task only files them in memory,
/// so it keeps up; 4096 absorbs a burst from a few thousand hosts at once. When full,
/// occurrences are dropped (and counted) rather than slowing ingest down.
const OCCURRENCE_QUEUE: usize = 4096;

/// Keys (kind, image, group) remembered at most, pending or sent. Beyond it the least
/// recently seen keys are forgotten first: at worst a host is alerted twice.
const MAX_KEYS: usize = 10_000;

/// Host ids remembered at most over all keys, which bounds the memory to a few tens of
/// MB however large the fleet.
const MAX_REMEMBERED_HOSTS: usize = 1_000_000;

/// A key not seen for this long is forgotten: a change that comes back a day later is
/// news again.
const MEMORY_TTL: Duration = Duration::from_secs(24 * 3600);

/// How often forgotten keys are swept out.
const MEMORY_SWEEP: Duration = Duration::from_secs(60);

/// Host ids listed in one alert; `host_count` has the full number. A hundred ids are
/// enough to act on, and chat services refuse long messages.
const MAX_HOSTS_LISTED: usize = 100;

/// Deliveries to one receiver in flight at once (each may retry for minutes while the
/// receiver is down). More are failed at once and logged: grouped alerts are few, so
/// reaching this means the receiver is gone, and memory must stay bounded meanwhile.
const MAX_DELIVERIES_PER_WEBHOOK: usize = 64;

/// The first retry waits this long; each next one twice as long.
const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// The longest wait between two attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// The `schema` of the JSON payload.
pub const ALERT_SCHEMA: &str = "driftwatch.alert/v1";

/// The `queue` label of the queue depth gauge for alerts.
const QUEUE_LABEL: &str = "alerts";

/// CA bundles of the common distributions, tried in order when a webhook has no
/// `ca_file` (after `$SSL_CERT_FILE`).
const SYSTEM_CA_BUNDLES: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];

/// What an alert is about; webhooks subscribe by [`AlertKind::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// A finding: the host differs from its image.
    Drift,
    /// The host stopped sending heartbeats.
    Silence,
    /// The replacement budget held a host back.
    Budget,
    /// The host reports an unknown image or another baseline than its image's.
    Image,
    /// The host was marked for replacement.
    Marked,
}

impl AlertKind {
    /// The name webhooks subscribe with (one of [`crate::config::ALERT_KINDS`]).
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::Drift => "drift",
            AlertKind::Silence => "silence",
            AlertKind::Budget => "budget",
            AlertKind::Image => "image",
            AlertKind::Marked => "marked",
        }
    }
}

/// Something alert-worthy on one host.
#[derive(Clone, Debug, PartialEq)]
pub struct Occurrence {
    /// What kind of alert it makes.
    pub kind: AlertKind,
    /// The host's image, when known.
    pub image_id: Option<String>,
    /// What is the same across hosts, e.g. `file:/usr/bin/ssh:modified:content` for
    /// drift, the reported digest for an image mismatch, empty for silence, budget and
    /// marked (which group by image alone).
    pub group: String,
    /// For people: `modified /usr/bin/ssh (content, mode)`.
    pub title: String,
    /// How serious; the group's alert takes the highest.
    pub severity: Severity,
    /// The host.
    pub host_id: String,
    /// One sentence about this host's occurrence (shown when only one host is alerted).
    pub detail: String,
}

/// Why alerting cannot start.
#[derive(Debug, Error)]
pub enum AlertError {
    /// A webhook's `ca_file` cannot be read or holds no certificate.
    #[error("webhook {url}: cannot use ca_file {path}: {message}")]
    ReadCaFile {
        /// The webhook.
        url: String,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// An `https://` webhook without `ca_file`, and no system CA bundle.
    #[error(
        "webhook {url}: no ca_file is set and no system CA bundle was found \
         ($SSL_CERT_FILE, {}); set ca_file",
        SYSTEM_CA_BUNDLES.join(", ")
    )]
    NoRoots {
        /// The webhook.
        url: String,
    },
    /// The HTTP client cannot be built.
    #[error("webhook {url}: cannot build an HTTP client: {message}")]
    BuildClient {
        /// The webhook.
        url: String,
        /// Why.
        message: String,
    },
}

/// Raises occurrences; cheap to clone, one grouping task behind all clones.
#[derive(Clone)]
pub struct Alerter {
    occurrences: mpsc::Sender<Occurrence>,
    dropped: Arc<AtomicU64>,
}

/// Waits between attempts of one delivery.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// The wait after attempt `attempt` (1-based) failed.
    fn after(self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.base.saturating_mul(factor).min(self.cap)
    }
}

impl Alerter {
    /// Builds a client per webhook and spawns the grouping task on the current tokio
    /// runtime (panics outside one).
    ///
    /// Fails when a webhook's `ca_file` cannot be used, or an `https://` webhook has
    /// none and the system has no CA bundle.
    pub fn start(
        config: &CollectorConfig,
        store: DynStore,
        metrics: Arc<Metrics>,
    ) -> Result<Alerter, AlertError> {
        Alerter::start_with(
            config,
            store,
            metrics,
            Backoff {
                base: BACKOFF_BASE,
                cap: BACKOFF_CAP,
            },
        )
    }

    fn start_with(
        config: &CollectorConfig,
        store: DynStore,
        metrics: Arc<Metrics>,
        backoff: Backoff,
    ) -> Result<Alerter, AlertError> {
        let mut system_roots = None;
        let receivers = config
            .webhooks
            .iter()
            .map(|webhook| Receiver::new(webhook, &mut system_roots).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let queue_depth = metrics
            .queue_depth
            .get_or_create(&Metrics::label("queue", QUEUE_LABEL))
            .clone();
        let shared = Arc::new(Shared {
            store,
            metrics,
            receivers,
            backoff,
            queue_depth,
        });
        let (occurrences, rx) = mpsc::channel(OCCURRENCE_QUEUE);
        let grouper = Grouper {
            shared,
            group_wait: Duration::from_secs(config.alerts.group_wait_secs),
            pending: HashMap::new(),
            memory: HashMap::new(),
            remembered_hosts: 0,
            last_sweep: Instant::now(),
        };
        tokio::spawn(grouper.run(rx));
        Ok(Alerter {
            occurrences,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Hands an occurrence to the grouping task. Never blocks and never fails: when the
    /// queue is full the occurrence is dropped and counted, because slowing down ingest
    /// would hurt more than one host missing from an alert.
    pub fn raise(&self, occurrence: Occurrence) {
        match self.occurrences.try_send(occurrence) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(occurrence)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // Warn on the 1st, 2nd, 4th, 8th… drop: a flood must not flood the log.
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped,
                        kind = occurrence.kind.name(),
                        host_id = %occurrence.host_id,
                        "The alert queue is full; occurrences are being dropped."
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("The alert task has stopped; occurrence ignored.");
            }
        }
    }
}

/// What every task of the alerter shares.
struct Shared {
    store: DynStore,
    metrics: Arc<Metrics>,
    receivers: Vec<Arc<Receiver>>,
    backoff: Backoff,
    queue_depth: Gauge<i64, AtomicI64>,
}

/// One entry of the alert queue (a pending group or a delivery): counted in the queue
/// depth gauge for as long as it lives.
pub(crate) struct QueueSlot(Gauge<i64, AtomicI64>);

impl QueueSlot {
    pub(crate) fn new(gauge: &Gauge<i64, AtomicI64>) -> QueueSlot {
        gauge.inc();
        QueueSlot(gauge.clone())
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What groups occurrences.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct GroupKey {
    kind: AlertKind,
    image_id: Option<String>,
    group: String,
}

/// Occurrences of one key gathered until `deadline`.
struct Pending {
    deadline: Instant,
    first_at_ms: i64,
    title: String,
    severity: Severity,
    detail: String,
    hosts: BTreeSet<String>,
    _slot: QueueSlot,
}

/// The hosts already alerted for one key.
struct Memory {
    hosts: HashSet<String>,
    last_seen: Instant,
}

/// The grouping task's state; only the task touches it.
struct Grouper {
    shared: Arc<Shared>,
    group_wait: Duration,
    pending: HashMap<GroupKey, Pending>,
    memory: HashMap<GroupKey, Memory>,
    remembered_hosts: usize,
    last_sweep: Instant,
}

impl Grouper {
    async fn run(mut self, mut rx: mpsc::Receiver<Occurrence>) {
        loop {
            let next = self.pending.values().map(|p| p.deadline).min();
            tokio::select! {
                received = rx.recv() => match received {
                    Some(occurrence) => self.add(occurrence),
                    None => {
                        // Every Alerter is gone (shutdown): send what was gathered.
                        let keys: Vec<GroupKey> = self.pending.keys().cloned().collect();
                        keys.into_iter().for_each(|key| self.flush(key));
                        return;
                    }
                },
                () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    self.flush_due();
                }
            }
        }
    }

    fn add(&mut self, occurrence: Occurrence) {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) >= MEMORY_SWEEP {
            self.forget_stale(now);
        }
        let key = GroupKey {
            kind: occurrence.kind,
            image_id: occurrence.image_id,
            group: occurrence.group,
        };
        if let Some(memory) = self.memory.get_mut(&key) {
            memory.last_seen = now;
            if memory.hosts.contains(&occurrence.host_id) {
                tracing::trace!(host_id = %occurrence.host_id, kind = key.kind.name(), "Host already alerted for this change.");
                return;
            }
        }
        if let Some(pending) = self.pending.get_mut(&key) {
            pending.severity = pending.severity.max(occurrence.severity);
            pending.hosts.insert(occurrence.host_id);
            return;
        }
        if self.pending.len() >= MAX_KEYS {
            // Send the oldest group early rather than lose this one.
            if let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.deadline)
                .map(|(k, _)| k.clone())
            {
                self.flush(oldest);
            }
        }
        let pending = Pending {
            deadline: now + self.group_wait,
            first_at_ms: now_ms(),
            title: occurrence.title,
            severity: occurrence.severity,
            detail: occurrence.detail,
            hosts: BTreeSet::from([occurrence.host_id]),
            _slot: QueueSlot::new(&self.shared.queue_depth),
        };
        self.pending.insert(key, pending);
    }

    fn flush_due(&mut self) {
        let now = Instant::now();
        let due: Vec<GroupKey> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        due.into_iter().for_each(|key| self.flush(key));
    }

    /// Remembers the group's hosts and hands it to a task that sends it.
    fn flush(&mut self, key: GroupKey) {
        let Some(pending) = self.pending.remove(&key) else {
            return;
        };
        let memory = self.memory.entry(key.clone()).or_insert_with(|| Memory {
            hosts: HashSet::new(),
            last_seen: Instant::now(),
        });
        memory.last_seen = Instant::now();
        let earlier = memory.hosts.len();
        memory.hosts.extend(pending.hosts.iter().cloned());
        self.remembered_hosts += memory.hosts.len() - earlier;
        self.enforce_caps();
        tokio::spawn(send(self.shared.clone(), key, pending, earlier));
    }

    fn forget_stale(&mut self, now: Instant) {
        self.last_sweep = now;
        self.memory
            .retain(|_, memory| now.duration_since(memory.last_seen) < MEMORY_TTL);
        self.remembered_hosts = self.memory.values().map(|m| m.hosts.len()).sum();
    }

    /// Forgets the least recently seen keys until both caps hold (keeping at least one).
    fn enforce_caps(&mut self) {
        while self.memory.len() > 1
            && (self.memory.len() > MAX_KEYS || self.remembered_hosts > MAX_REMEMBERED_HOSTS)
        {
            let Some(oldest) = self
                .memory
                .iter()
                .min_by_key(|(_, m)| m.last_seen)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            if let Some(memory) = self.memory.remove(&oldest) {
                self.remembered_hosts -= memory.hosts.len();
            }
        }
    }
}

/// One alert, ready to be sent.
#[derive(Clone, Debug)]
struct Alert {
    kind: AlertKind,
    image_id: Option<String>,
    group: String,
    title: String,
    severity: Severity,
    /// The hosts of this alert, sorted.
    hosts: Vec<String>,
    /// Hosts alerted for the same key before (0 unless a follow-up).
    earlier: usize,
    /// Live hosts of the image when sent, if the store could tell.
    image_hosts: Option<u64>,
    /// The first host's detail.
    detail: String,
    first_at_ms: i64,
    sent_at_ms: i64,
}

impl Alert {
    /// One sentence: "modified /usr/bin/ssh on 40 of 40 hosts of image ami-123".
    fn summary(&self) -> String {
        let count = self.hosts.len();
        let total = self.earlier + count;
        let fleet = match &self.image_id {
            Some(image) => format!("of image {image}"),
            None => "without an image id".to_string(),
        };
        // "43 of 60 hosts of image X", or "43 hosts of image X" when the store failed.
        let of_fleet = match self.image_hosts {
            Some(n) => format!("{total} of {n} {} {fleet}", hosts_noun(n)),
            None => format!("{total} {} {fleet}", hosts_noun(total as u64)),
        };
        let budget = match &self.image_id {
            Some(image) => format!("image {image}"),
            None => "hosts without an image id".to_string(),
        };
        let more = format!("{count} more {}", hosts_noun(count as u64));
        let first = self.earlier == 0;
        let sentence = match self.kind {
            AlertKind::Drift | AlertKind::Image if first => {
                format!("{} on {of_fleet}", self.title)
            }
            AlertKind::Drift | AlertKind::Image => {
                format!("{} on {more}, {of_fleet}", self.title)
            }
            AlertKind::Silence if first => format!("{of_fleet} went silent"),
            AlertKind::Silence => format!("{more} went silent, {of_fleet} in all"),
            AlertKind::Marked if first => format!(
                "{of_fleet} {} marked for replacement",
                if total == 1 { "was" } else { "were" }
            ),
            AlertKind::Marked => format!(
                "{more} {} marked for replacement, {of_fleet} in all",
                if count == 1 { "was" } else { "were" }
            ),
            AlertKind::Budget if first => format!(
                "the replacement budget of {budget} held back {count} {}",
                hosts_noun(count as u64)
            ),
            AlertKind::Budget => {
                format!("the replacement budget of {budget} held back {more}, {total} in all")
            }
        };
        if count == 1 && !self.detail.is_empty() {
            format!("{sentence}: {}", self.detail)
        } else {
            sentence
        }
    }

    /// The readable line both payloads carry.
    fn text(&self) -> String {
        format!(
            "[driftwatch] {} {}: {}",
            self.severity.name().to_uppercase(),
            self.kind.name(),
            self.summary()
        )
    }

    fn payload(&self, format: WebhookFormat) -> serde_json::Value {
        match format {
            WebhookFormat::Chat => serde_json::json!({ "text": self.text() }),
            WebhookFormat::Json => serde_json::json!({
                "schema": ALERT_SCHEMA,
                "kind": self.kind.name(),
                "image_id": self.image_id,
                "title": self.title,
                "severity": self.severity.name(),
                "group": self.group,
                "hosts": self.hosts.iter().take(MAX_HOSTS_LISTED).collect::<Vec<_>>(),
                "host_count": self.hosts.len(),
                "earlier_hosts": self.earlier,
                "image_hosts": self.image_hosts,
                "text": self.text(),
                "first_at": rfc3339(self.first_at_ms),
                "sent_at": rfc3339(self.sent_at_ms),
            }),
        }
    }
}

fn hosts_noun(n: u64) -> &'static str {
    if n == 1 {
        "host"
    } else {
        "hosts"
    }
}

fn rfc3339(ms: i64) -> String {
    format_timestamp(Timestamp {
        secs: ms.div_euclid(1000),
        nanos: u32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    })
}

/// Composes a flushed group's alert and starts one delivery per subscribed receiver.
async fn send(shared: Arc<Shared>, key: GroupKey, pending: Pending, earlier: usize) {
    let receivers: Vec<&Arc<Receiver>> = shared
        .receivers
        .iter()
        .filter(|r| r.config.events.iter().any(|e| e == key.kind.name()))
        .collect();
    if receivers.is_empty() {
        tracing::debug!(
            kind = key.kind.name(),
            hosts = pending.hosts.len(),
            "No webhook subscribes to this alert."
        );
        return;
    }
    let image_hosts = match shared
        .store
        .live_hosts_on_image(key.image_id.as_deref())
        .await
    {
        Ok(n) => Some(n),
        Err(error) => {
            tracing::warn!(%error, image_id = ?key.image_id, "Cannot count the image's hosts; the alert goes out without the total.");
            None
        }
    };
    let alert = Arc::new(Alert {
        kind: key.kind,
        image_id: key.image_id,
        group: key.group,
        title: pending.title,
        severity: pending.severity,
        hosts: pending.hosts.into_iter().collect(),
        earlier,
        image_hosts,
        detail: pending.detail,
        first_at_ms: pending.first_at_ms,
        sent_at_ms: now_ms(),
    });
    shared
        .metrics
        .alerts_sent
        .get_or_create(&Metrics::label("kind", alert.kind.name()))
        .inc();
    for receiver in receivers {
        match receiver.in_flight.clone().try_acquire_owned() {
            Ok(permit) => {
                let slot = QueueSlot::new(&shared.queue_depth);
                tokio::spawn(deliver(
                    shared.clone(),
                    receiver.clone(),
                    alert.clone(),
                    permit,
                    slot,
                ));
            }
            Err(_) => {
                let error = format!(
                    "{MAX_DELIVERIES_PER_WEBHOOK} deliveries to this receiver are still in flight"
                );
                finish(&shared, receiver, &alert, 0, Err(error)).await;
            }
        }
    }
}

/// One webhook receiver.
struct Receiver {
    config: WebhookConfig,
    client: reqwest::Client,
    in_flight: Arc<Semaphore>,
}

impl Receiver {
    /// `system_roots` is loaded on first need and shared by later webhooks.
    fn new(
        config: &WebhookConfig,
        system_roots: &mut Option<Arc<rustls::RootCertStore>>,
    ) -> Result<Receiver, AlertError> {
        let url = &config.url;
        let roots = match &config.ca_file {
            Some(path) => Arc::new(read_roots(path).map_err(|message| AlertError::ReadCaFile {
                url: url.clone(),
                path: path.clone(),
                message,
            })?),
            None if url.starts_with("https://") => match system_roots {
                Some(roots) => roots.clone(),
                None => {
                    let roots = Arc::new(
                        read_system_roots()
                            .ok_or_else(|| AlertError::NoRoots { url: url.clone() })?,
                    );
                    *system_roots = Some(roots.clone());
                    roots
                }
            },
            // Plain http: the TLS settings are never used.
            None => Arc::new(rustls::RootCertStore::empty()),
        };
        let build_error = |message: String| AlertError::BuildClient {
            url: url.clone(),
            message,
        };
        // The ring provider, explicitly: reqwest's own default would be aws-lc-rs,
        // which this build does not include (and without one it panics).
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| build_error(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            // A timeout of 0 would fail every attempt.
            .timeout(Duration::from_secs(config.timeout_secs.max(1)))
            // A receiver that moved must be reconfigured, not followed: a redirected
            // POST may land somewhere the operator never chose.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("driftwatch-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| build_error(error_chain(&e)))?;
        Ok(Receiver {
            config: config.clone(),
            client,
            in_flight: Arc::new(Semaphore::new(MAX_DELIVERIES_PER_WEBHOOK)),
        })
    }
}

/// The certificates of a PEM file, as trust anchors; the error names what went wrong.
fn read_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
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
fn read_system_roots() -> Option<rustls::RootCertStore> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    from_env
        .into_iter()
        .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from))
        .find_map(|path| read_roots(&path).ok())
}

/// An error and its causes, on one line (reqwest's own message hides the cause).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Posts one alert to one receiver, retrying connection errors, 5xx and 429 with
/// exponential backoff; any other status is final.
async fn deliver(
    shared: Arc<Shared>,
    receiver: Arc<Receiver>,
    alert: Arc<Alert>,
    _permit: OwnedSemaphorePermit,
    _slot: QueueSlot,
) {
    let body = alert.payload(receiver.config.format);
    let max_attempts = receiver.config.max_attempts.max(1);
    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        let (retry, error) = match receiver
            .client
            .post(&receiver.config.url)
            .json(&body)
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => break Ok(()),
            Ok(response) => {
                let status = response.status();
                let retry =
                    status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                (retry, format!("HTTP {status}"))
            }
            Err(error) => (true, error_chain(&error)),
        };
        if !retry || attempt >= max_attempts {
            break Err(error);
        }
        tracing::debug!(url = %receiver.config.url, attempt, %error, "Webhook delivery failed; retrying.");
        tokio::time::sleep(shared.backoff.after(attempt)).await;
    };
    finish(&shared, &receiver, &alert, attempt, result).await;
}

/// Logs, counts and records a delivery's final outcome.
async fn finish(
    shared: &Shared,
    receiver: &Receiver,
    alert: &Alert,
    attempts: u32,
    result: Result<(), String>,
) {
    let url = &receiver.config.url;
    let plural = if attempts == 1 { "" } else { "s" };
    let (outcome, detail) = match &result {
        Ok(()) => {
            tracing::info!(url = %url, kind = alert.kind.name(), attempts, "Alert delivered.");
            (
                "ok",
                format!("{} after {attempts} attempt{plural}", alert.summary()),
            )
        }
        Err(error) => {
            tracing::error!(url = %url, kind = alert.kind.name(), attempts, %error, "Alert could not be delivered; check the webhook receiver.");
            (
                "failed",
                format!(
                    "{} after {attempts} attempt{plural}: {error}",
                    alert.summary()
                ),
            )
        }
    };
    shared
        .metrics
        .webhook_deliveries
        .get_or_create(&Metrics::label("outcome", outcome))
        .inc();
    let record = ActionRecord {
        id: 0,
        at_ms: now_ms(),
        host_id: None,
        image_id: alert.image_id.clone(),
        action: "webhook".to_string(),
        target: Some(url.clone()),
        outcome: outcome.to_string(),
        detail,
    };
    if let Err(error) = shared.store.record_action(record).await {
        // The delivery itself is done; only its trace in the action log is lost.
        tracing::warn!(%error, url = %url, "Cannot log a webhook delivery.");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{IngestBody, IngestEvent, IngestRecord, Store};
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::Json;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    pub(crate) const IMAGE: &str = "img-1";

    /// A configuration with these webhooks and a 1 s group wait.
    pub(crate) fn config(webhooks: Vec<WebhookConfig>) -> CollectorConfig {
        let mut config: CollectorConfig = toml::from_str(
            r#"
            [tls]
            cert_file = "/x/server.pem"
            key_file = "/x/server.key"
            client_ca_file = "/x/ca.pem"
            [auth]
            operator_token_file = "/x/operator.token"
            "#,
        )
        .unwrap();
        config.alerts.group_wait_secs = 1;
        config.webhooks = webhooks;
        config
    }

    pub(crate) fn webhook(url: &str, format: WebhookFormat, events: &[&str]) -> WebhookConfig {
        WebhookConfig {
            url: url.to_string(),
            format,
            events: events.iter().map(|e| e.to_string()).collect(),
            ca_file: None,
            max_attempts: 5,
            timeout_secs: 5,
        }
    }

    /// An in-memory store with these hosts on [`IMAGE`].
    pub(crate) async fn store_with_hosts(hosts: &[&str]) -> DynStore {
        let store = SqliteStore::open_memory().unwrap();
        for host in hosts {
            store
                .ingest(IngestRecord {
                    host_id: host.to_string(),
                    hostname: format!("{host}.example"),
                    image_id: Some(IMAGE.to_string()),
                    baseline_digest: Some("blake3:00".into()),
                    events: vec![IngestEvent {
                        id: "hb1".into(),
                        body: IngestBody::Heartbeat {
                            agent_version: "0.1.0".into(),
                            interval_secs: 60,
                        },
                    }],
                    collector_findings: Vec::new(),
                    received_ms: now_ms(),
                })
                .await
                .unwrap();
        }
        Arc::new(store)
    }

    /// Polls the action log until `n` actions named `action` are in it (10 s at most).
    pub(crate) async fn wait_for_actions(
        store: &DynStore,
        action: &str,
        n: usize,
    ) -> Vec<ActionRecord> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<ActionRecord> = store
                .actions(None, 1000)
                .await
                .unwrap()
                .into_iter()
                .filter(|a| a.action == action)
                .collect();
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts an alerter whose retries wait 10 ms, 20 ms, 40 ms…
    pub(crate) fn fast_alerter(
        config: &CollectorConfig,
        store: DynStore,
        metrics: Arc<Metrics>,
    ) -> Alerter {
        let backoff = Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(40),
        };
        Alerter::start_with(config, store, metrics, backoff).unwrap()
    }

    #[derive(Default)]
    struct Recorded {
        bodies: Mutex<Vec<serde_json::Value>>,
        /// Statuses to answer with, in order; 200 once used up.
        script: Mutex<VecDeque<u16>>,
    }

    /// A webhook receiver on 127.0.0.1 recording every request body.
    pub(crate) struct TestReceiver {
        pub(crate) url: String,
        recorded: Arc<Recorded>,
    }

    impl TestReceiver {
        /// Over plain HTTP, answering with `script`'s statuses first.
        pub(crate) async fn start(script: &[u16]) -> TestReceiver {
            let (recorded, app) = TestReceiver::app(script);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/hook", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await });
            TestReceiver { url, recorded }
        }

        /// Over HTTPS with a certificate for 127.0.0.1 from a new CA; returns it with
        /// the CA's certificate file (in `dir`).
        async fn start_https(dir: &Path) -> (TestReceiver, PathBuf) {
            let ca = crate::pki::CertificateAuthority::generate("test CA", 1).unwrap();
            let (cert, key) = ca.server_certificate(&["127.0.0.1".into()], 1).unwrap();
            let paths = ["ca.pem", "server.pem", "server.key"].map(|name| dir.join(name));
            for (path, pem) in paths.iter().zip([&ca.cert_pem, &cert, &key]) {
                std::fs::write(path, pem).unwrap();
            }
            let tls = crate::tls::server_config(&paths[1], &paths[2], &paths[0]).unwrap();
            let (recorded, app) = TestReceiver::app(&[]);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("https://{}/hook", listener.local_addr().unwrap());
            tokio::spawn(crate::tls::serve(
                listener,
                tls,
                app,
                std::future::pending(),
            ));
            let [ca_file, ..] = paths;
            (TestReceiver { url, recorded }, ca_file)
        }

        fn app(script: &[u16]) -> (Arc<Recorded>, axum::Router) {
            async fn receive(
                State(recorded): State<Arc<Recorded>>,
                Json(body): Json<serde_json::Value>,
            ) -> StatusCode {
                recorded.bodies.lock().unwrap().push(body);
                let status = recorded.script.lock().unwrap().pop_front().unwrap_or(200);
                StatusCode::from_u16(status).unwrap()
            }
            let recorded = Arc::new(Recorded {
                bodies: Mutex::default(),
                script: Mutex::new(script.iter().copied().collect()),
            });
            let app = axum::Router::new()
                .route("/hook", axum::routing::post(receive))
                .with_state(recorded.clone());
            (recorded, app)
        }

        pub(crate) fn bodies(&self) -> Vec<serde_json::Value> {
            self.recorded.bodies.lock().unwrap().clone()
        }

        /// Waits until `n` requests arrived (10 s at most), then a little longer so
        /// that an extra one would show.
        pub(crate) async fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.bodies().len() < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.bodies()
        }
    }

    fn ssh_modified(host: &str) -> Occurrence {
        Occurrence {
            kind: AlertKind::Drift,
            image_id: Some(IMAGE.to_string()),
            group: "file:/usr/bin/ssh:modified:content".into(),
            title: "modified /usr/bin/ssh (content)".into(),
            severity: Severity::Critical,
            host_id: host.to_string(),
            detail: format!("modified /usr/bin/ssh on host {host}"),
        }
    }

    fn silent(host: &str) -> Occurrence {
        Occurrence {
            kind: AlertKind::Silence,
            image_id: Some(IMAGE.to_string()),
            group: String::new(),
            title: "went silent".into(),
            severity: Severity::High,
            host_id: host.to_string(),
            detail: format!("Host {host} sent no heartbeat."),
        }
    }

    async fn setup(
        hosts: &[&str],
        webhooks: Vec<WebhookConfig>,
    ) -> (Alerter, DynStore, Arc<Metrics>) {
        let store = store_with_hosts(hosts).await;
        let metrics = Arc::new(Metrics::new());
        let alerter = fast_alerter(&config(webhooks), store.clone(), metrics.clone());
        (alerter, store, metrics)
    }

    #[tokio::test]
    async fn the_same_change_on_three_hosts_makes_one_alert() {
        let receiver = TestReceiver::start(&[]).await;
        let hook = webhook(&receiver.url, WebhookFormat::Json, &["drift"]);
        let (alerter, store, metrics) = setup(&["h1", "h2", "h3"], vec![hook]).await;
        for host in ["h3", "h1", "h2"] {
            alerter.raise(ssh_modified(host));
        }
        let bodies = receiver.wait_for(1).await;
        assert_eq!(bodies.len(), 1, "{bodies:#?}");
        let body = &bodies[0];
        assert_eq!(body["schema"], ALERT_SCHEMA);
        assert_eq!(body["kind"], "drift");
        assert_eq!(body["image_id"], IMAGE);
        assert_eq!(body["severity"], "critical");
        assert_eq!(body["group"], "file:/usr/bin/ssh:modified:content");
        assert_eq!(body["title"], "modified /usr/bin/ssh (content)");
        assert_eq!(body["hosts"], serde_json::json!(["h1", "h2", "h3"]));
        assert_eq!(body["host_count"], 3);
        assert_eq!(body["earlier_hosts"], 0);
        assert_eq!(body["image_hosts"], 3);
        assert_eq!(
            body["text"],
            "[driftwatch] CRITICAL drift: modified /usr/bin/ssh (content) on 3 of 3 hosts of image img-1"
        );
        assert!(body["first_at"].as_str().unwrap().ends_with('Z'));
        assert!(body["sent_at"].as_str().unwrap() >= body["first_at"].as_str().unwrap());

        let actions = wait_for_actions(&store, "webhook", 1).await;
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].outcome, "ok");
        assert_eq!(actions[0].target.as_deref(), Some(receiver.url.as_str()));
        assert_eq!(actions[0].image_id.as_deref(), Some(IMAGE));
        assert!(
            actions[0].detail.ends_with("after 1 attempt"),
            "{}",
            actions[0].detail
        );
        let rendered = metrics.render(&Default::default());
        assert!(
            rendered.contains(r#"alerts_sent_total{kind="drift"} 1"#),
            "{rendered}"
        );
        assert!(
            rendered.contains(r#"webhook_deliveries_total{outcome="ok"} 1"#),
            "{rendered}"
        );
        assert!(
            rendered.contains(r#"queue_depth{queue="alerts"} 0"#),
            "{rendered}"
        );
    }

    #[tokio::test]
    async fn different_changes_make_separate_alerts() {
        let receiver = TestReceiver::start(&[]).await;
        let hook = webhook(&receiver.url, WebhookFormat::Json, &["drift"]);
        let (alerter, _store, _metrics) = setup(&["h1", "h2"], vec![hook]).await;
        alerter.raise(ssh_modified("h1"));
        alerter.raise(Occurrence {
            group: "file:/etc/shadow:modified:content".into(),
            title: "modified /etc/shadow (content)".into(),
            ..ssh_modified("h2")
        });
        let mut titles: Vec<String> = receiver
            .wait_for(2)
            .await
            .iter()
            .map(|b| b["title"].as_str().unwrap().to_string())
            .collect();
        titles.sort();
        assert_eq!(
            titles,
            [
                "modified /etc/shadow (content)",
                "modified /usr/bin/ssh (content)"
            ]
        );
    }

    #[tokio::test]
    async fn a_repeated_host_counts_once() {
        let receiver = TestReceiver::start(&[]).await;
        let hook = webhook(&receiver.url, WebhookFormat::Json, &["drift"]);
        let (alerter, _store, _metrics) = setup(&["h1", "h2", "h3"], vec![hook]).await;
        for host in ["h1", "h1", "h2", "h1"] {
            alerter.raise(ssh_modified(host));
        }
        let bodies = receiver.wait_for(1).await;
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0]["hosts"], serde_json::json!(["h1", "h2"]));
        assert_eq!(bodies[0]["host_count"], 2);
    }

    #[tokio::test]
    async fn later_hosts_make_a_follow_up_alert() {
        let receiver = TestReceiver::start(&[]).await;
        let hook = webhook(&receiver.url, WebhookFormat::Json, &["drift"]);
        let (alerter, _store, _metrics) = setup(&["h1", "h2", "h3"], vec![hook]).await;
        alerter.raise(ssh_modified("h1"));
        alerter.raise(ssh_modified("h2"));
        assert_eq!(receiver.wait_for(1).await.len(), 1);
        // h2 was alerted already; h3 is new.
        alerter.raise(ssh_modified("h2"));
        alerter.raise(ssh_modified("h3"));
        let bodies = receiver.wait_for(2).await;
        assert_eq!(bodies.len(), 2, "{bodies:#?}");
        let follow_up = &bodies[1];
        assert_eq!(follow_up["hosts"], serde_json::json!(["h3"]));
        assert_eq!(follow_up["host_count"], 1);
        assert_eq!(follow_up["earlier_hosts"], 2);
        assert_eq!(
            follow_up["text"],
            "[driftwatch] CRITICAL drift: modified /usr/bin/ssh (content) on 1 more host, \
             3 of 3 hosts of image img-1: modified /usr/bin/ssh on host h3"
        );
        // Every host is alerted now: nothing more goes out.
        alerter.raise(ssh_modified("h1"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(receiver.bodies().len(), 2);
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_delivered() {
        let receiver = TestReceiver::start(&[500, 500]).await;
        let hook = webhook(&receiver.url, WebhookFormat::Json, &["drift"]);
        let (alerter, store, metrics) = setup(&["h1"], vec![hook]).await;
        alerter.raise(ssh_modified("h1"));
        let actions = wait_for_actions(&store, "webhook", 1).await;
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].outcome, "ok");
        assert!(
            actions[0].detail.ends_with("after 3 attempts"),
            "{}",
            actions[0].detail
        );
        assert_eq!(receiver.wait_for(3).await.len(), 3);
        let rendered = metrics.render(&Default::default());
        assert!(
            rendered.contains(r#"webhook_deliveries_total{outcome="ok"} 1"#),
            "{rendered}"
        );
    }

    #[tokio::test]
    async fn a_client_error_is_final() {
        let receiver = TestReceiver::start(&[400]).await;
        let hook = webhook(&receiver.url, WebhookFormat::Json, &["drift"]);
        let (alerter, store, metrics) = setup(&["h1"], vec![hook]).await;
        alerter.raise(ssh_modified("h1"));
        let actions = wait_for_actions(&store, "webhook", 1).await;
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].outcome, "failed");
        assert!(
            actions[0]
                .detail
                .ends_with("after 1 attempt: HTTP 400 Bad Request"),
            "{}",
            actions[0].detail
        );
        assert_eq!(receiver.wait_for(1).await.len(), 1, "a 400 is not retried");
        let rendered = metrics.render(&Default::default());
        assert!(
            rendered.contains(r#"webhook_deliveries_total{outcome="failed"} 1"#),
            "{rendered}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_receiver_fails_after_max_attempts() {
        // A port that was free a moment ago: connections are refused.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        drop(listener);
        let hook = WebhookConfig {
            max_attempts: 2,
            ..webhook(&url, WebhookFormat::Json, &["drift"])
        };
        let (alerter, store, _metrics) = setup(&["h1"], vec![hook]).await;
        alerter.raise(ssh_modified("h1"));
        let actions = wait_for_actions(&store, "webhook", 1).await;
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].outcome, "failed");
        assert!(
            actions[0].detail.contains("after 2 attempts: "),
            "{}",
            actions[0].detail
        );
    }

    #[tokio::test]
    async fn https_receivers_are_verified_with_their_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let (receiver, ca_file) = TestReceiver::start_https(dir.path()).await;
        let hook = WebhookConfig {
            ca_file: Some(ca_file),
            ..webhook(&receiver.url, WebhookFormat::Json, &["drift"])
        };
        let (alerter, _store, _metrics) = setup(&["h1"], vec![hook]).await;
        alerter.raise(ssh_modified("h1"));
        assert_eq!(receiver.wait_for(1).await.len(), 1);
    }

    #[tokio::test]
    async fn an_unusable_ca_file_stops_the_start() {
        let store = store_with_hosts(&[]).await;
        let missing = PathBuf::from("/nonexistent/ca.pem");
        let hook = WebhookConfig {
            ca_file: Some(missing),
            ..webhook(
                "https://alerts.example/hook",
                WebhookFormat::Json,
                &["drift"],
            )
        };
        let Err(error) = Alerter::start(&config(vec![hook]), store, Arc::new(Metrics::new()))
        else {
            panic!("a missing ca_file must stop the start");
        };
        let message = error.to_string();
        assert!(
            message.starts_with(
                "webhook https://alerts.example/hook: cannot use ca_file /nonexistent/ca.pem: "
            ),
            "{message}"
        );
    }

    #[tokio::test]
    async fn chat_webhooks_get_one_line_of_text() {
        let receiver = TestReceiver::start(&[]).await;
        let hook = webhook(&receiver.url, WebhookFormat::Chat, &["drift"]);
        let (alerter, _store, _metrics) = setup(&["h1", "h2", "h3"], vec![hook]).await;
        for host in ["h1", "h2", "h3"] {
            alerter.raise(ssh_modified(host));
        }
        let bodies = receiver.wait_for(1).await;
        assert_eq!(
            bodies,
            [serde_json::json!({
                "text": "[driftwatch] CRITICAL drift: modified /usr/bin/ssh (content) on 3 of 3 hosts of image img-1"
            })]
        );
    }

    #[tokio::test]
    async fn webhooks_get_only_the_kinds_they_subscribe_to() {
        let marked_only = TestReceiver::start(&[]).await;
        let everything = TestReceiver::start(&[]).await;
        let hooks = vec![
            webhook(&marked_only.url, WebhookFormat::Json, &["marked"]),
            webhook(
                &everything.url,
                WebhookFormat::Json,
                &crate::config::ALERT_KINDS,
            ),
        ];
        let (alerter, _store, _metrics) = setup(&["h1", "h2"], hooks).await;
        alerter.raise(ssh_modified("h1"));
        alerter.raise(silent("h1"));
        alerter.raise(silent("h2"));
        let mut kinds: Vec<String> = everything
            .wait_for(2)
            .await
            .iter()
            .map(|b| b["kind"].as_str().unwrap().to_string())
            .collect();
        kinds.sort();
        assert_eq!(kinds, ["drift", "silence"]);
        assert_eq!(marked_only.bodies(), Vec::<serde_json::Value>::new());
    }

    fn alert(kind: AlertKind, hosts: &[&str], earlier: usize) -> Alert {
        Alert {
            kind,
            image_id: Some(IMAGE.to_string()),
            group: String::new(),
            title: "modified /usr/bin/ssh (content)".into(),
            severity: Severity::High,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            earlier,
            image_hosts: Some(40),
            detail: "detail of the first host".into(),
            first_at_ms: 0,
            sent_at_ms: 0,
        }
    }

    #[test]
    fn summaries_read_as_sentences() {
        let three = ["h1", "h2", "h3"];
        let cases = [
            (
                alert(AlertKind::Drift, &three, 0),
                "modified /usr/bin/ssh (content) on 3 of 40 hosts of image img-1",
            ),
            (
                alert(AlertKind::Image, &three, 37),
                "modified /usr/bin/ssh (content) on 3 more hosts, 40 of 40 hosts of image img-1",
            ),
            (
                alert(AlertKind::Silence, &three, 0),
                "3 of 40 hosts of image img-1 went silent",
            ),
            (
                alert(AlertKind::Silence, &three, 2),
                "3 more hosts went silent, 5 of 40 hosts of image img-1 in all",
            ),
            (
                alert(AlertKind::Marked, &["h1"], 0),
                "1 of 40 hosts of image img-1 was marked for replacement: detail of the first host",
            ),
            (
                alert(AlertKind::Marked, &three, 1),
                "3 more hosts were marked for replacement, 4 of 40 hosts of image img-1 in all",
            ),
            (
                alert(AlertKind::Budget, &three, 0),
                "the replacement budget of image img-1 held back 3 hosts",
            ),
            (
                alert(AlertKind::Budget, &three, 8),
                "the replacement budget of image img-1 held back 3 more hosts, 11 in all",
            ),
            (
                Alert {
                    image_id: None,
                    image_hosts: None,
                    ..alert(AlertKind::Silence, &three, 0)
                },
                "3 hosts without an image id went silent",
            ),
        ];
        for (alert, expected) in cases {
            assert_eq!(alert.summary(), expected);
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let backoff = Backoff {
            base: BACKOFF_BASE,
            cap: BACKOFF_CAP,
        };
        let waits: Vec<u64> = (1..=8).map(|a| backoff.after(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
    }
}
