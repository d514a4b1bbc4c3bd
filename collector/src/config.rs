//! `CollectorConfig`: the collector's configuration file (TOML).
//!
//! `driftwatch-collector init DIR` writes a working one. Every key is documented here
//! and in the README; unknown keys are errors, so a typo never silently weakens the
//! replacement policy. Paths in the file are relative to the file's directory, so an
//! `init` directory can be moved as a whole.

use driftwatch_protocol::report::Severity;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// The collector's configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Address and port of the HTTPS listener (default `0.0.0.0:8443`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the fleet's state lives: a SQLite file (default
    /// `/var/lib/driftwatch-collector/collector.db`), or a PostgreSQL URL
    /// (`postgres://USER@HOST[:PORT]/DB[?sslmode=disable|require|verify-full]`), which
    /// several replicas of the collector can share.
    #[serde(default = "default_database")]
    pub database: Database,
    /// A file holding the PostgreSQL password (default: none; a password in the URL
    /// works too, but would show in process listings and logs). Ignored for SQLite.
    #[serde(default)]
    pub database_password_file: Option<PathBuf>,
    /// Certificates and keys.
    pub tls: TlsConfig,
    /// Who may do what.
    pub auth: AuthConfig,
    /// Limits on what agents may send.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Heartbeats, silence and expiry.
    #[serde(default)]
    pub hosts: HostsConfig,
    /// Which findings mark a host for replacement, and how many hosts may be marked.
    #[serde(default)]
    pub replacement: ReplacementConfig,
    /// How alerts are grouped.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Where alerts and replacement notices are sent (default: nowhere).
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}

fn default_database() -> Database {
    Database::Sqlite(PathBuf::from("/var/lib/driftwatch-collector/collector.db"))
}

/// The `database` key: a URL with a `postgres://` or `postgresql://` scheme selects
/// PostgreSQL; anything else is the path of a SQLite file.
#[derive(Clone, Debug, PartialEq)]
pub enum Database {
    /// The embedded store.
    Sqlite(PathBuf),
    /// A PostgreSQL server (the URL as written).
    Postgres(String),
}

impl Database {
    /// True when this is a SQLite file under `dir`; a PostgreSQL database is in no
    /// directory.
    pub fn starts_with(&self, dir: &Path) -> bool {
        matches!(self, Database::Sqlite(path) if path.starts_with(dir))
    }

    /// What to call it in logs: the path, or the URL without any password.
    pub fn display(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => match (url.find("://"), url.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    let user_info = &url[scheme + 3..at];
                    let user = user_info.split(':').next().unwrap_or("");
                    format!("{}{user}{}", &url[..scheme + 3], &url[at..])
                }
                _ => url.clone(),
            },
        }
    }
}

impl<'de> Deserialize<'de> for Database {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(
            if text.starts_with("postgres://") || text.starts_with("postgresql://") {
                Database::Postgres(text)
            } else {
                Database::Sqlite(PathBuf::from(text))
            },
        )
    }
}

/// `[tls]`: the collector's own certificate and the CA that vouches for agents.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server certificate chain (PEM). Required.
    pub cert_file: PathBuf,
    /// The server's private key (PEM, PKCS#8). Required.
    pub key_file: PathBuf,
    /// The CA whose certificates identify agents (PEM): a client certificate it signed
    /// names the host in its common name. A bundle of several during a CA rotation
    /// (each is trusted). Required.
    pub client_ca_file: PathBuf,
    /// The CA's private key (PEM). When set, enrolled and renewing hosts get
    /// certificates signed with it (by the certificate of `client_ca_file` that is
    /// this key's); without it, enrollment and renewal are off and every agent needs a
    /// provisioned certificate (default: none).
    #[serde(default)]
    pub client_ca_key_file: Option<PathBuf>,
    /// How long host certificates (enrollment, renewal, `issue-host-cert`) stay
    /// valid, in days (default 397). Agents renew theirs once two thirds of it passed.
    #[serde(default = "default_host_cert_days")]
    pub host_cert_days: u32,
    /// The same in seconds, instead of `host_cert_days` (default: none; at least 10):
    /// for fleets that keep credentials short-lived, and for trying renewal out.
    #[serde(default)]
    pub host_cert_validity_secs: Option<u64>,
}

impl TlsConfig {
    /// How long a host certificate issued now stays valid.
    pub fn host_cert_validity(&self) -> Duration {
        self.host_cert_validity_secs.map_or_else(
            || Duration::from_secs(u64::from(self.host_cert_days) * 86_400),
            Duration::from_secs,
        )
    }
}

fn default_host_cert_days() -> u32 {
    397
}

/// `[auth]`: the tokens and the keys the collector trusts.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A file holding the token of the `admin` role: every right, tokens included
    /// (`driftwatch-collector token …` uses it). Default: none, and then the operator
    /// token is the admin's (as before roles existed).
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// A file holding the bearer token of the operator API (and of the CLI): the
    /// `operator` role (read, mark, unmark, approve, revoke, retire, scrape), or
    /// `admin` when no `admin_token_file` is set. Required.
    pub operator_token_file: PathBuf,
    /// A file holding the token of the `pipeline` role, which registers images and
    /// nothing else (`image register` uses it). Default: none.
    #[serde(default)]
    pub pipeline_token_file: Option<PathBuf>,
    /// A file holding the token agents exchange for a certificate on first contact
    /// (default: none, enrollment off).
    #[serde(default)]
    pub enrollment_token_file: Option<PathBuf>,
    /// Public keys (PEM) of the bake pipelines: an image is registered only with a
    /// baseline signed by one of them (default: empty; `init` writes a pipeline key
    /// pair and names its public key here).
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// Registers unsigned baselines too (default false: refused); with no
    /// `trusted_keys`, any signature is accepted as well. For trying things out only.
    #[serde(default)]
    pub allow_unsigned_baselines: bool,
}

/// `[ingest]`: bounds on agents' requests.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest request body as sent (compressed), in bytes (default 1 MiB).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest request body once decompressed, in bytes (default 16 MiB): a small gzip
    /// body must not expand into gigabytes.
    #[serde(default = "default_max_decoded_bytes")]
    pub max_decoded_bytes: usize,
    /// Most events in one batch (default 1000).
    #[serde(default = "default_max_events")]
    pub max_events_per_batch: usize,
    /// Sustained requests per second one host may make (default 10); bursts up to
    /// `burst` are allowed. Beyond it the answer is 429.
    #[serde(default = "default_rate_per_sec")]
    pub rate_per_sec: f64,
    /// Requests one host may make in a burst (default 20).
    #[serde(default = "default_burst")]
    pub burst: f64,
    /// Sustained events (findings and heartbeats) per second one host may send
    /// (default 100); bursts up to `event_burst` are allowed. Beyond it the answer is
    /// 429 with the time the batch needs, and the agent sends it again then: delayed,
    /// never lost. The request rate alone lets one host send `max_events_per_batch` ×
    /// `rate_per_sec` events a second (10,000 by default), each batch a long write that
    /// the other hosts' requests would queue behind.
    #[serde(default = "default_events_per_sec")]
    pub events_per_sec: f64,
    /// Events one host may send at once (default 2000; at least
    /// `max_events_per_batch`): a boot check's findings arrive without waiting.
    #[serde(default = "default_event_burst")]
    pub event_burst: f64,
    /// Largest baseline accepted by image registration, in bytes (default 256 MiB).
    #[serde(default = "default_max_baseline_bytes")]
    pub max_baseline_bytes: usize,
    /// Most findings stored per host (default 10000). Beyond it a host's new findings
    /// are counted, not stored, and one critical `too_many_findings` finding says so:
    /// one hostile host cannot fill the disk or slow the others down.
    #[serde(default = "default_max_findings_per_host")]
    pub max_findings_per_host: u64,
}

fn default_max_body_bytes() -> usize {
    1 << 20
}
fn default_max_decoded_bytes() -> usize {
    16 << 20
}
fn default_max_events() -> usize {
    1000
}
fn default_rate_per_sec() -> f64 {
    10.0
}
fn default_burst() -> f64 {
    20.0
}
fn default_events_per_sec() -> f64 {
    100.0
}
fn default_event_burst() -> f64 {
    2000.0
}
fn default_max_baseline_bytes() -> usize {
    256 << 20
}
fn default_max_findings_per_host() -> u64 {
    10_000
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_body_bytes: default_max_body_bytes(),
            max_decoded_bytes: default_max_decoded_bytes(),
            max_events_per_batch: default_max_events(),
            rate_per_sec: default_rate_per_sec(),
            burst: default_burst(),
            events_per_sec: default_events_per_sec(),
            event_burst: default_event_burst(),
            max_baseline_bytes: default_max_baseline_bytes(),
            max_findings_per_host: default_max_findings_per_host(),
        }
    }
}

/// `[hosts]`: liveness and expiry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostsConfig {
    /// A host is `silent` after this many of its own heartbeat intervals pass without
    /// a heartbeat (default 3).
    #[serde(default = "default_missed_heartbeats")]
    pub missed_heartbeats: u32,
    /// Hosts `gone` or `silent` for longer than this many seconds are deleted with
    /// their findings (default 7 days): fleets of short-lived hosts must not pile up.
    #[serde(default = "default_retention_secs")]
    pub retention_secs: u64,
    /// How often liveness and expiry are evaluated, in seconds (default 5).
    #[serde(default = "default_sweep_secs")]
    pub sweep_interval_secs: u64,
    /// The heartbeat interval the collector expects of a host with a daemon, in
    /// seconds (default 300). A host's own claim can only shorten it: a host cannot
    /// switch off its own silence alarm.
    #[serde(default = "default_heartbeat_interval_secs")]
    pub heartbeat_interval_secs: u64,
    /// Expected intervals per image (`[[hosts.heartbeat]]`, the first matching wins).
    #[serde(default, rename = "heartbeat")]
    pub heartbeats: Vec<HeartbeatRule>,
}

/// `[[hosts.heartbeat]]`: the expected heartbeat interval of some images' hosts.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRule {
    /// Image id globs.
    pub images: Vec<String>,
    /// Seconds between heartbeats.
    pub interval_secs: u64,
}

impl HostsConfig {
    /// The heartbeat interval the collector expects of a host on `image` that claims
    /// `claimed` (0: "never silent"): the configured one, shortened by a shorter
    /// claim. Only hosts declared at the collector as having no daemon (`daemon`
    /// false: one-shot `check --report`, CI scans) are never silent (0).
    pub fn expected_interval(&self, image: Option<&str>, claimed: u64, daemon: bool) -> u64 {
        if !daemon {
            return 0;
        }
        let matches = |glob: &String, image: &str| {
            globset::Glob::new(glob).is_ok_and(|g| g.compile_matcher().is_match(image))
        };
        let configured = image
            .and_then(|image| {
                self.heartbeats
                    .iter()
                    .find(|rule| rule.images.iter().any(|g| matches(g, image)))
            })
            .map_or(self.heartbeat_interval_secs, |rule| rule.interval_secs);
        match claimed {
            0 => configured,
            claimed => claimed.min(configured),
        }
    }
}

fn default_heartbeat_interval_secs() -> u64 {
    300
}

fn default_missed_heartbeats() -> u32 {
    3
}
fn default_retention_secs() -> u64 {
    7 * 24 * 3600
}
fn default_sweep_secs() -> u64 {
    5
}

impl Default for HostsConfig {
    fn default() -> Self {
        HostsConfig {
            missed_heartbeats: default_missed_heartbeats(),
            retention_secs: default_retention_secs(),
            sweep_interval_secs: default_sweep_secs(),
            heartbeat_interval_secs: default_heartbeat_interval_secs(),
            heartbeats: Vec::new(),
        }
    }
}

/// How marking decisions are carried out.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReplacementMode {
    /// Mark hosts the rules select, within the budget (default).
    #[default]
    Auto,
    /// Decide and log as `auto` would, but mark nothing.
    DryRun,
    /// Hold selected hosts as `drifted` until an operator approves each.
    ManualApprove,
}

/// `[replacement]`: which findings mark a host, and the budget.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplacementConfig {
    /// `auto`, `dry_run` or `manual_approve` (default `auto`).
    #[serde(default)]
    pub mode: ReplacementMode,
    /// At most this many hosts of one image are marked per window (default 5).
    #[serde(default = "default_max_hosts")]
    pub max_hosts: u32,
    /// At most this share of an image's hosts, in percent, is marked per window
    /// (default 10). The smaller of the two limits applies, but never less than one
    /// host: a budget of zero would never replace anything.
    #[serde(default = "default_max_percent")]
    pub max_percent: f64,
    /// The budget window in seconds (default 3600).
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// The rules; a finding matching any rule marks its host (default: one rule, any
    /// critical finding).
    #[serde(default = "default_rules", rename = "rule")]
    pub rules: Vec<MarkRule>,
}

fn default_max_hosts() -> u32 {
    5
}
fn default_max_percent() -> f64 {
    10.0
}
fn default_window_secs() -> u64 {
    3600
}
fn default_rules() -> Vec<MarkRule> {
    vec![MarkRule::default()]
}

impl Default for ReplacementConfig {
    fn default() -> Self {
        ReplacementConfig {
            mode: ReplacementMode::default(),
            max_hosts: default_max_hosts(),
            max_percent: default_max_percent(),
            window_secs: default_window_secs(),
            rules: default_rules(),
        }
    }
}

/// `[[replacement.rule]]`: a finding matching every given condition marks its host.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MarkRule {
    /// Finding kinds (`file`, `package`, `package_file`, `process`, `kernel_module`,
    /// `listener`, `mount`, `baseline`, and the collector's own `image`); empty means
    /// any (default: empty).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// The least severity that matches (default `critical`).
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Globs on the finding's subject (its path, or its name for packages, modules and
    /// listeners); empty means any (default: empty).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Globs on the host's image id; empty means any (default: empty).
    #[serde(default)]
    pub images: Vec<String>,
    /// Whose findings the rule weighs: `host` (the host's own, default),
    /// `containers` (changes inside its running containers) or `any`. A drifted
    /// container is replaced by recreating the container from its image (the agent's
    /// `[containers.actions]`, or its orchestrator), not by replacing its node: only a
    /// rule that says so marks a node for what its containers did.
    #[serde(default)]
    pub scope: RuleScope,
}

/// Whose findings a replacement rule weighs.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleScope {
    /// The host's own findings, not its containers' (default).
    #[default]
    Host,
    /// Only findings inside the host's containers.
    Containers,
    /// Both.
    Any,
}

fn default_min_severity() -> Severity {
    Severity::Critical
}

impl Default for MarkRule {
    fn default() -> Self {
        MarkRule {
            kinds: Vec::new(),
            min_severity: default_min_severity(),
            paths: Vec::new(),
            images: Vec::new(),
            scope: RuleScope::default(),
        }
    }
}

/// `[alerts]`: grouping.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// How long, in seconds, the first occurrence of a change waits for the same change
    /// on other hosts of its image before one alert goes out for all of them
    /// (default 10). Later occurrences are gathered for as long again.
    #[serde(default = "default_group_wait_secs")]
    pub group_wait_secs: u64,
    /// A running command for marked hosts, with `DRIFTWATCH_HOST_ID`,
    /// `DRIFTWATCH_IMAGE_ID` and `DRIFTWATCH_REASON` in its environment: program and
    /// arguments (default: none).
    #[serde(default)]
    pub mark_command: Vec<String>,
    /// Seconds a mark command may run before it is killed (default 60).
    #[serde(default = "default_command_timeout_secs")]
    pub command_timeout_secs: u64,
    /// How long, in seconds, a webhook delivery is retried (with backoff and jitter,
    /// across restarts and by any replica) before it fails for good (default 21600,
    /// six hours: a receiver down for a night's maintenance still gets its alerts).
    #[serde(default = "default_retry_for_secs")]
    pub retry_for_secs: u64,
}

fn default_group_wait_secs() -> u64 {
    10
}
fn default_command_timeout_secs() -> u64 {
    60
}
fn default_retry_for_secs() -> u64 {
    6 * 3600
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            group_wait_secs: default_group_wait_secs(),
            mark_command: Vec::new(),
            command_timeout_secs: default_command_timeout_secs(),
            retry_for_secs: default_retry_for_secs(),
        }
    }
}

/// The payload a webhook receives.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// A JSON object with every field (default).
    #[default]
    Json,
    /// `{"text": "…"}`, which chat services' incoming webhooks accept.
    Chat,
}

/// `[[webhook]]`: one receiver.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The URL (`https://`, or `http://` for a receiver on the same machine). Required.
    pub url: String,
    /// `json` or `chat` (default `json`).
    #[serde(default)]
    pub format: WebhookFormat,
    /// Which alerts it gets: `drift`, `silence`, `budget`, `image`, `marked` (default:
    /// all).
    #[serde(default = "default_webhook_events")]
    pub events: Vec<String>,
    /// A CA (PEM) to trust for this receiver instead of the system's roots (default:
    /// none).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Attempts before giving up, with exponential backoff between them (default: no
    /// limit; `alerts.retry_for_secs` bounds the retries).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Seconds each attempt may take (default 10).
    #[serde(default = "default_webhook_timeout_secs")]
    pub timeout_secs: u64,
}

/// The alert kinds a webhook can subscribe to.
pub const ALERT_KINDS: [&str; 5] = ["drift", "silence", "budget", "image", "marked"];

fn default_webhook_events() -> Vec<String> {
    ALERT_KINDS.iter().map(|s| s.to_string()).collect()
}
fn default_attempts() -> u32 {
    u32::MAX
}
fn default_webhook_timeout_secs() -> u64 {
    10
}

/// Why a configuration cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path} is not a valid collector configuration: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value is out of range.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

impl CollectorConfig {
    /// Reads, resolves relative paths against the file's directory, and validates.
    pub fn load(path: &Path) -> Result<CollectorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        CollectorConfig::parse(&text, path)
    }

    /// Parses, resolves relative paths against `path`'s directory, and validates the
    /// text of the file at `path` (which is not read).
    pub fn parse(text: &str, path: &Path) -> Result<CollectorConfig, ConfigError> {
        let mut config: CollectorConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Database::Sqlite(path) = &mut self.database {
            resolve(path);
        }
        if let Some(path) = &mut self.database_password_file {
            resolve(path);
        }
        resolve(&mut self.tls.cert_file);
        resolve(&mut self.tls.key_file);
        resolve(&mut self.tls.client_ca_file);
        self.tls.client_ca_key_file.as_mut().map(resolve);
        resolve(&mut self.auth.operator_token_file);
        self.auth.admin_token_file.as_mut().map(resolve);
        self.auth.pipeline_token_file.as_mut().map(resolve);
        self.auth.enrollment_token_file.as_mut().map(resolve);
        self.auth.trusted_keys.iter_mut().for_each(resolve);
        for webhook in &mut self.webhooks {
            webhook.ca_file.as_mut().map(resolve);
        }
    }

    /// Checks ranges and names; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let ingest = &self.ingest;
        if ingest.max_body_bytes == 0 || ingest.max_decoded_bytes < ingest.max_body_bytes {
            return Err(
                "ingest.max_decoded_bytes must be at least ingest.max_body_bytes, and both above 0"
                    .into(),
            );
        }
        if ingest.max_events_per_batch == 0 {
            return Err("ingest.max_events_per_batch must be above 0".into());
        }
        // The limiter turns burst / rate into a Duration (a panic if it is none).
        if !(ingest.rate_per_sec > 0.0
            && ingest.burst >= 1.0
            && Duration::try_from_secs_f64(ingest.burst / ingest.rate_per_sec).is_ok())
        {
            return Err(
                "ingest.rate_per_sec must be above 0 and ingest.burst at least 1 (both finite)"
                    .into(),
            );
        }
        if !(ingest.events_per_sec > 0.0
            && ingest.event_burst >= ingest.max_events_per_batch as f64
            && ingest.event_burst <= f64::from(u32::MAX)
            && Duration::try_from_secs_f64(ingest.event_burst / ingest.events_per_sec).is_ok())
        {
            return Err(
                "ingest.events_per_sec must be above 0 and ingest.event_burst at least \
                 ingest.max_events_per_batch (a batch it allows must fit in a burst)"
                    .into(),
            );
        }
        if !(1..=MAX_HOST_CERT_DAYS).contains(&self.tls.host_cert_days) {
            return Err(format!(
                "tls.host_cert_days must be between 1 and {MAX_HOST_CERT_DAYS}"
            ));
        }
        let max_secs = u64::from(MAX_HOST_CERT_DAYS) * 86_400;
        if let Some(secs) = self.tls.host_cert_validity_secs {
            if !(10..=max_secs).contains(&secs) {
                return Err(format!(
                    "tls.host_cert_validity_secs must be between 10 and {max_secs}"
                ));
            }
        }
        for (key, secs) in [
            ("alerts.group_wait_secs", self.alerts.group_wait_secs),
            (
                "alerts.command_timeout_secs",
                self.alerts.command_timeout_secs,
            ),
            ("hosts.sweep_interval_secs", self.hosts.sweep_interval_secs),
        ] {
            if secs > MAX_DURATION_SECS {
                return Err(format!("{key} {AT_MOST_A_YEAR}"));
            }
        }
        if self.hosts.missed_heartbeats == 0 || self.hosts.sweep_interval_secs == 0 {
            return Err(
                "hosts.missed_heartbeats and hosts.sweep_interval_secs must be above 0".into(),
            );
        }
        let intervals = std::iter::once(self.hosts.heartbeat_interval_secs)
            .chain(self.hosts.heartbeats.iter().map(|rule| rule.interval_secs));
        if intervals
            .into_iter()
            .any(|secs| secs == 0 || secs > MAX_DURATION_SECS)
        {
            return Err(format!(
                "hosts.heartbeat_interval_secs and [[hosts.heartbeat]] interval_secs must be \
                 above 0 and {AT_MOST_A_YEAR}"
            ));
        }
        for glob in self.hosts.heartbeats.iter().flat_map(|rule| &rule.images) {
            globset::Glob::new(glob)
                .map_err(|e| format!("[[hosts.heartbeat]] images: {glob:?}: {e}"))?;
        }
        let replacement = &self.replacement;
        if !(replacement.max_percent > 0.0 && replacement.max_percent <= 100.0) {
            return Err("replacement.max_percent must be above 0 and at most 100".into());
        }
        if replacement.window_secs == 0 {
            return Err("replacement.window_secs must be above 0".into());
        }
        for (i, rule) in replacement.rules.iter().enumerate() {
            for kind in &rule.kinds {
                if !FINDING_KINDS.contains(&kind.as_str()) {
                    return Err(format!(
                        "replacement.rule[{i}].kinds: unknown kind {kind:?} (one of {})",
                        FINDING_KINDS.join(", ")
                    ));
                }
            }
            for glob in rule.paths.iter().chain(&rule.images) {
                globset::Glob::new(glob)
                    .map_err(|e| format!("replacement.rule[{i}]: bad glob {glob:?}: {e}"))?;
            }
        }
        for (i, webhook) in self.webhooks.iter().enumerate() {
            if !(webhook.url.starts_with("https://") || webhook.url.starts_with("http://")) {
                return Err(format!("webhook[{i}].url must be an http(s) URL"));
            }
            for event in &webhook.events {
                if !ALERT_KINDS.contains(&event.as_str()) {
                    return Err(format!(
                        "webhook[{i}].events: unknown alert {event:?} (one of {})",
                        ALERT_KINDS.join(", ")
                    ));
                }
            }
            if webhook.max_attempts == 0 {
                return Err(format!("webhook[{i}].max_attempts must be above 0"));
            }
            if webhook.timeout_secs > MAX_DURATION_SECS {
                return Err(format!("webhook[{i}].timeout_secs {AT_MOST_A_YEAR}"));
            }
        }
        Ok(())
    }
}

/// The longest duration accepted, in seconds (a year): durations are added to the
/// current time, which panics past the clock's range.
pub const MAX_DURATION_SECS: u64 = 366 * 24 * 3600;
const AT_MOST_A_YEAR: &str = "must be at most 31622400 (a year)";
/// The longest host certificate accepted, in days (ten years): certificate dates end
/// in the year 9999, and a longer one would panic enrollment.
pub const MAX_HOST_CERT_DAYS: u32 = 3650;

/// Finding kinds a replacement rule may name: the agent's, and `image` for a host on
/// an unregistered image or another baseline than its image's.
pub const FINDING_KINDS: [&str; 9] = [
    "file",
    "package",
    "package_file",
    "process",
    "kernel_module",
    "listener",
    "mount",
    "baseline",
    "image",
];

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [tls]
        cert_file = "server.pem"
        key_file = "server.key"
        client_ca_file = "ca.pem"
        [auth]
        operator_token_file = "operator.token"
    "#;

    #[test]
    fn minimal_file_has_the_documented_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let config = CollectorConfig::load(&path).unwrap();
        assert_eq!(config.listen, default_listen());
        assert_eq!(config.tls.cert_file, dir.path().join("server.pem"));
        assert_eq!(config.replacement.rules, vec![MarkRule::default()]);
        assert_eq!(config.replacement.mode, ReplacementMode::Auto);
        assert_eq!(config.ingest, IngestConfig::default());
        assert!(config.webhooks.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.toml");
        for (extra, key) in [
            (
                "[replacement]\nmax_percent = 0.0",
                "replacement.max_percent",
            ),
            (
                "[[replacement.rule]]\nkinds = [\"files\"]",
                "replacement.rule[0].kinds",
            ),
            (
                "[[replacement.rule]]\nscope = \"pods\"",
                "unknown variant `pods`, expected one of `host`, `containers`, `any`",
            ),
            ("[[webhook]]\nurl = \"ftp://x\"", "webhook[0].url"),
            (
                "[[webhook]]\nurl = \"http://x\"\nevents = [\"all\"]",
                "webhook[0].events",
            ),
            ("[hosts]\nmissed_heartbeat = 3", "missed_heartbeat"),
        ] {
            std::fs::write(&path, format!("{MINIMAL}\n{extra}")).unwrap();
            let err = CollectorConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn values_that_would_panic_in_use_are_refused() {
        // Found by the collector_toml fuzz target: each of these validated, then
        // panicked the collector when used (a certificate valid past the year 9999, an
        // `Instant` past the clock's range, a refill time that is no `Duration`).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.toml");
        let huge = u64::MAX;
        for (extra, key) in [
            ("[alerts]\ngroup_wait_secs = HUGE", "alerts.group_wait_secs"),
            (
                "[alerts]\ncommand_timeout_secs = HUGE",
                "alerts.command_timeout_secs",
            ),
            (
                "[hosts]\nsweep_interval_secs = HUGE",
                "hosts.sweep_interval_secs",
            ),
            (
                "[[webhook]]\nurl = \"https://x\"\ntimeout_secs = HUGE",
                "webhook[0].timeout_secs",
            ),
            (
                "[ingest]\nburst = 1e300\nrate_per_sec = 1e-300",
                "ingest.rate_per_sec",
            ),
            ("[ingest]\nburst = inf", "ingest.rate_per_sec"),
        ] {
            let extra = extra.replace("HUGE", &huge.to_string());
            std::fs::write(&path, format!("{MINIMAL}\n{extra}")).unwrap();
            let err = CollectorConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
        for days in [0, 4_000_000] {
            let text = MINIMAL.replace(
                "client_ca_file = \"ca.pem\"",
                &format!("client_ca_file = \"ca.pem\"\nhost_cert_days = {days}"),
            );
            std::fs::write(&path, text).unwrap();
            let err = CollectorConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains("tls.host_cert_days"), "{err}");
        }
        for secs in [0, 9, u64::MAX] {
            let text = MINIMAL.replace(
                "client_ca_file = \"ca.pem\"",
                &format!("client_ca_file = \"ca.pem\"\nhost_cert_validity_secs = {secs}"),
            );
            std::fs::write(&path, text).unwrap();
            let err = CollectorConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains("tls.host_cert_validity_secs"), "{err}");
        }
    }
}
