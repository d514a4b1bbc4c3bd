//! `AgentConfig`: the daemon's configuration file (TOML, default
//! `/etc/driftwatch/agent.toml`). Every key has a default, so an empty file (or no file
//! at all) runs the daemon against the image's own baseline and policy.
//!
//! Validation happens here, before any thread starts: an unknown key, a relative path
//! or a zero interval is an error naming the key. Validation also resolves the few
//! defaults that depend on other keys or on the host (the local marking threshold, the
//! collector host id), so the rest of the agent reads one settled value.

pub mod provisioning;

pub use provisioning::ProvisioningConfig;

use driftwatch_protocol::report::Severity;
use driftwatch_protocol::wire::is_valid_host_id;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Where an image's baseline lives unless told otherwise.
pub const DEFAULT_BASELINE_PATH: &str = "/usr/lib/driftwatch/baseline";

/// Where the daemon reads its configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/driftwatch/agent.toml";

/// The daemon's configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The image's baseline (default `/usr/lib/driftwatch/baseline`).
    #[serde(default = "default_baseline")]
    pub baseline: PathBuf,
    /// Public key the baseline must be signed with (default: none — only the digest is
    /// verified; set it on every real host).
    #[serde(default)]
    pub pubkey: Option<PathBuf>,
    /// A policy overriding the one recorded in the baseline (default: none).
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// The root to watch (default `/`; other roots are for tests and chroots).
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// Durable state: remembered findings, the host's mark, the metadata cache
    /// (default `/var/lib/driftwatch`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Volatile state: the replacement marker file (default `/run/driftwatch`).
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// The local health endpoint.
    #[serde(default)]
    pub health: HealthConfig,
    /// When verification runs.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// How hard verification may work.
    #[serde(default)]
    pub throttle: ThrottleConfig,
    /// Real-time watching.
    #[serde(default)]
    pub watch: WatchConfig,
    /// When and how the host is marked for replacement.
    #[serde(default)]
    pub replacement: ReplacementConfig,
    /// Where findings and heartbeats are reported (default: nowhere — the agent only
    /// serves its loopback endpoint and logs).
    #[serde(default)]
    pub collector: Option<CollectorConfig>,
    /// What to do about a drifted container (default: report only).
    #[serde(default)]
    pub containers: crate::source::containers::action::ActionsConfig,
    /// The first-boot provisioning window (default: until `cloud-final.service` has
    /// finished, on the paths cloud-init writes).
    #[serde(default)]
    pub provisioning: ProvisioningConfig,
}

fn default_baseline() -> PathBuf {
    PathBuf::from(DEFAULT_BASELINE_PATH)
}

fn default_root() -> PathBuf {
    PathBuf::from("/")
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/driftwatch")
}

fn default_run_dir() -> PathBuf {
    PathBuf::from("/run/driftwatch")
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            baseline: default_baseline(),
            pubkey: None,
            policy: None,
            root: default_root(),
            state_dir: default_state_dir(),
            run_dir: default_run_dir(),
            health: HealthConfig::default(),
            schedule: ScheduleConfig::default(),
            throttle: ThrottleConfig::default(),
            watch: WatchConfig::default(),
            replacement: ReplacementConfig::default(),
            collector: None,
            containers: Default::default(),
            provisioning: Default::default(),
        }
    }
}

/// `[health]`: the loopback HTTP endpoint (`/healthz`, `/status`, `/metrics`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Address to listen on (default `127.0.0.1:9847`). Keep it on loopback: it is
    /// unauthenticated.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9847))
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            listen: default_listen(),
        }
    }
}

/// `[schedule]`: periodic verification, which covers whatever real-time watching
/// missed.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Fast verification — re-hash only files whose size, mtime, ctime, inode or device
    /// changed — every this many seconds (default 900).
    #[serde(default = "default_fast_secs")]
    pub fast_verify_interval_secs: u64,
    /// Full re-hash of everything every this many seconds (default 86400).
    #[serde(default = "default_full_secs")]
    pub full_verify_interval_secs: u64,
    /// Each run is delayed by a random 0..jitter share of its interval, so a fleet does
    /// not verify in lockstep (default 0.2).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_fast_secs() -> u64 {
    900
}

fn default_full_secs() -> u64 {
    86_400
}

fn default_jitter() -> f64 {
    0.2
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            fast_verify_interval_secs: default_fast_secs(),
            full_verify_interval_secs: default_full_secs(),
            jitter: default_jitter(),
        }
    }
}

/// `[throttle]`: how hard scheduled verification may work.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Bytes read per second for hashing during scheduled verification (default
    /// 64 MiB/s; 0 = unlimited). The boot-time check is not throttled.
    #[serde(default = "default_read_bytes_per_sec")]
    pub read_bytes_per_sec: u64,
    /// Hashing threads as a share of the cores, at least one (default 0.5).
    #[serde(default = "default_cpu_share")]
    pub cpu_share: f64,
}

fn default_read_bytes_per_sec() -> u64 {
    64 << 20
}

fn default_cpu_share() -> f64 {
    0.5
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            read_bytes_per_sec: default_read_bytes_per_sec(),
            cpu_share: default_cpu_share(),
        }
    }
}

impl ThrottleConfig {
    /// Hashing threads for scheduled verification on this machine.
    pub fn threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ((cores as f64 * self.cpu_share).floor() as usize).max(1)
    }
}

/// `[watch]`: real-time watching of the policy's critical paths.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// Watch at all (default `true`).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig { enabled: true }
    }
}

/// `[replacement]`: what marks this host for replacement, and what happens then.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplacementConfig {
    /// A finding at or above this severity marks the host locally (`low`, `medium`,
    /// `high` or `critical`). Default: `critical` without a `[collector]` section; with
    /// one, no local marking — the collector's fleet policy, with its replacement
    /// budget, decides, and its verdict marks the host the same way. Setting it keeps
    /// local marking alongside the collector. A baseline that fails verification marks
    /// the host whatever this says. After loading, `None` means local marking is off.
    #[serde(default)]
    pub mark_severity: Option<Severity>,
    /// A command run once when the host is marked, e.g. to fail a cloud health check
    /// or power off: program and arguments (default: none). It gets
    /// `DRIFTWATCH_REASON` in its environment.
    #[serde(default)]
    pub command: Vec<String>,
    /// Seconds the command may run before it is killed (default 60, at least 1); its
    /// outcome (success, failure, timeout) is logged either way.
    #[serde(default = "default_command_timeout_secs")]
    pub command_timeout_secs: u64,
}

fn default_command_timeout_secs() -> u64 {
    60
}

impl Default for ReplacementConfig {
    fn default() -> Self {
        ReplacementConfig {
            mark_severity: None,
            command: Vec::new(),
            command_timeout_secs: default_command_timeout_secs(),
        }
    }
}

/// The local marking threshold when `[replacement] mark_severity` is not set and no
/// collector decides.
const LOCAL_MARK_SEVERITY: Severity = Severity::Critical;

/// `[collector]`: reporting to the collector over HTTPS with mutual TLS (DESIGN.md §8).
///
/// Findings are spooled on disk under `state_dir/spool/` before they are sent, so a
/// collector outage of any length loses nothing; the host authenticates with a client
/// certificate, either provisioned (`cert_file` + `key_file`) or obtained on first
/// contact with an enrollment token (`enrollment_token_file`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// The collector's base URL, `https://` only (required), e.g.
    /// `https://collector.example.org:8443`; requests go to `/v1/ingest` and
    /// `/v1/enroll` below it. A list (`["https://c1:8443", "https://c2:8443"]`) names
    /// replicas of one collector: the agent uses the first that answers, fails over to
    /// the next when one does not (no answer, or 502/503/504), and goes back to the
    /// first after [`FAILBACK_SECS`].
    pub url: CollectorUrls,
    /// PEM file with the CA certificate(s) that signed the collector's server
    /// certificate (required). Only these are trusted for the collector, not the
    /// system's roots.
    pub ca_file: PathBuf,
    /// A provisioned client certificate chain (PEM) naming this host (default: none).
    /// Set together with `key_file`; excludes `enrollment_token_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of `cert_file` (default: none).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// A file holding an enrollment token (default: none). On first contact the host
    /// generates its own key, sends only a certificate signing request with the token,
    /// and keeps the certificate it gets back, with the key, in
    /// `state_dir/identity/HOST_ID.pem` (mode 0600) for every later contact.
    #[serde(default)]
    pub enrollment_token_file: Option<PathBuf>,
    /// The id this host reports as: 1 to 128 ASCII letters, digits, `.`, `-`, `_` or
    /// `:` (default: `/etc/machine-id` inside `root`, else the hostname).
    #[serde(default)]
    pub host_id: Option<String>,
    /// Seconds between heartbeats when there is nothing else to send (default 30); the
    /// collector calls a host silent when they stop.
    #[serde(default = "default_heartbeat_interval_secs")]
    pub heartbeat_interval_secs: u64,
    /// Most events in one request (default 500). A request the collector finds too
    /// large (413) is retried with half as many.
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// Most bytes the spool of unsent events may hold on disk (default 64 MiB, at
    /// least 1 MiB). When full, the unsent events are folded into one event per
    /// current finding, which is all the collector needs.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// Seconds one request (connect, TLS, send, answer) may take (default 10).
    /// `check --report` gives up after three times this.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Longest wait in seconds between retries after a failure (default 300); waits
    /// start at 1 s and double, with jitter. A `Retry-After` from the collector is
    /// honoured.
    #[serde(default = "default_retry_max_secs")]
    pub retry_max_secs: u64,
}

fn default_heartbeat_interval_secs() -> u64 {
    30
}

fn default_batch_max_events() -> usize {
    500
}

fn default_spool_max_bytes() -> u64 {
    64 << 20
}

fn default_timeout_secs() -> u64 {
    10
}

fn default_retry_max_secs() -> u64 {
    300
}

/// The longest interval or timeout accepted, in seconds (a year). The daemon adds them,
/// with up to 100 % jitter (three timeouts for a one-shot report), to the current time,
/// which panics past the clock's range: a larger value would crash it at its first
/// check instead of being refused here.
pub const MAX_INTERVAL_SECS: u64 = 366 * 24 * 3600;
const BETWEEN_1_AND_A_YEAR: &str = "must be between 1 and 31622400 (a year)";

/// The smallest spool worth having: room for thousands of findings.
const MIN_SPOOL_BYTES: u64 = 1 << 20;
/// More events per request than this makes requests the collector would refuse.
const MAX_BATCH_EVENTS: usize = 10_000;

impl CollectorConfig {
    /// The host id; set by validation, so always present in a loaded configuration.
    pub fn host_id(&self) -> &str {
        self.host_id.as_deref().unwrap_or_default()
    }

    /// The host id this host reports as when none is configured: the machine id
    /// inside `root`, else the kernel's hostname.
    fn default_host_id(root: &Path) -> Option<String> {
        crate::host::machine_id(root)
            .filter(|id| is_valid_host_id(id))
            .or_else(|| Some(crate::host::hostname()).filter(|id| is_valid_host_id(id)))
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is invalid or has unknown keys (the message names the key and line).
    #[error("invalid configuration {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A key has a value that cannot work.
    #[error("invalid configuration {}: `{key}` {problem}", path.display())]
    Value {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong with its value.
        problem: &'static str,
    },
}

impl AgentConfig {
    /// Reads and validates a configuration; a missing file at the default location is
    /// the default configuration (an image needs no file to run the daemon).
    pub fn load(path: &Path, explicit: bool) -> Result<AgentConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        AgentConfig::parse(&text, path)
    }

    /// Parses and validates a configuration's text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        let config: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate(path)
    }

    /// Checks every value and resolves the defaults that depend on other keys or on
    /// the host: the local marking threshold and the collector host id.
    fn validate(mut self, path: &Path) -> Result<AgentConfig, ConfigError> {
        let value = |key, problem| {
            Err(ConfigError::Value {
                path: path.to_path_buf(),
                key,
                problem,
            })
        };
        let absolute = [
            ("baseline", Some(&self.baseline)),
            ("pubkey", self.pubkey.as_ref()),
            ("policy", self.policy.as_ref()),
            ("root", Some(&self.root)),
            ("state_dir", Some(&self.state_dir)),
            ("run_dir", Some(&self.run_dir)),
        ];
        for (key, path) in absolute {
            if path.is_some_and(|p| !p.is_absolute()) {
                return value(key, "must be an absolute path");
            }
        }
        if !(1..=MAX_INTERVAL_SECS).contains(&self.schedule.fast_verify_interval_secs) {
            return value("schedule.fast_verify_interval_secs", BETWEEN_1_AND_A_YEAR);
        }
        if !(1..=MAX_INTERVAL_SECS).contains(&self.schedule.full_verify_interval_secs) {
            return value("schedule.full_verify_interval_secs", BETWEEN_1_AND_A_YEAR);
        }
        if !(0.0..=1.0).contains(&self.schedule.jitter) {
            return value("schedule.jitter", "must be between 0 and 1");
        }
        if !(self.throttle.cpu_share > 0.0 && self.throttle.cpu_share <= 1.0) {
            return value("throttle.cpu_share", "must be above 0 and at most 1");
        }
        if self
            .replacement
            .command
            .first()
            .is_some_and(|p| p.is_empty())
        {
            return value("replacement.command", "must start with a program");
        }
        if self.replacement.command_timeout_secs == 0 {
            return value("replacement.command_timeout_secs", "must be at least 1");
        }
        if let Some(collector) = &mut self.collector {
            collector.validate(&self.root, path)?;
        }
        if let Err(key) = self.provisioning.validate() {
            return value(key, "must hold absolute glob patterns");
        }
        if self.replacement.mark_severity.is_none() && self.collector.is_none() {
            self.replacement.mark_severity = Some(LOCAL_MARK_SEVERITY);
        }
        Ok(self)
    }
}

/// After failing over to another collector URL, the agent tries the first one again
/// after this long: replicas are peers, but the first is the one the operator chose.
pub const FAILBACK_SECS: u64 = 600;

/// `[collector] url`: one URL, or a list of replicas of the same collector (in order of
/// preference; never empty once validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectorUrls(Vec<String>);

impl CollectorUrls {
    /// The URLs, in order of preference, without a trailing `/`.
    pub fn bases(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect()
    }
}

impl From<String> for CollectorUrls {
    fn from(url: String) -> CollectorUrls {
        CollectorUrls(vec![url])
    }
}

impl std::fmt::Display for CollectorUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl<'de> Deserialize<'de> for CollectorUrls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(url) => CollectorUrls(vec![url]),
            OneOrMany::Many(urls) => CollectorUrls(urls),
        })
    }
}

impl CollectorConfig {
    fn validate(&mut self, root: &Path, path: &Path) -> Result<(), ConfigError> {
        let value = |key, problem| {
            Err(ConfigError::Value {
                path: path.to_path_buf(),
                key,
                problem,
            })
        };
        if self.url.0.is_empty() {
            return value("collector.url", "must name at least one URL");
        }
        for url in &self.url.0 {
            match reqwest::Url::parse(url) {
                Ok(url) if url.scheme() == "https" && url.host().is_some() => {}
                Ok(url) if url.scheme() != "https" => {
                    return value(
                        "collector.url",
                        "must be an https:// URL (the collector is HTTPS only)",
                    )
                }
                _ => {
                    return value(
                        "collector.url",
                        "must be a URL such as https://collector.example.org:8443",
                    )
                }
            }
        }
        let absolute = [
            ("collector.ca_file", Some(&self.ca_file)),
            ("collector.cert_file", self.cert_file.as_ref()),
            ("collector.key_file", self.key_file.as_ref()),
            (
                "collector.enrollment_token_file",
                self.enrollment_token_file.as_ref(),
            ),
        ];
        for (key, path) in absolute {
            if path.is_some_and(|p| !p.is_absolute()) {
                return value(key, "must be an absolute path");
            }
        }
        match (&self.cert_file, &self.key_file, &self.enrollment_token_file) {
            (Some(_), Some(_), None) | (None, None, Some(_)) => {}
            (Some(_), None, _) => return value("collector.key_file", "must be set with cert_file"),
            (None, Some(_), _) => return value("collector.cert_file", "must be set with key_file"),
            (Some(_), Some(_), Some(_)) => {
                return value(
                    "collector.enrollment_token_file",
                    "cannot be used with cert_file and key_file (choose one identity)",
                )
            }
            (None, None, None) => return value(
                "collector.cert_file",
                "and key_file, or enrollment_token_file, must be set (the host needs an identity)",
            ),
        }
        match &self.host_id {
            Some(id) if !is_valid_host_id(id) => {
                return value(
                    "collector.host_id",
                    "must be 1 to 128 ASCII letters, digits, '.', '-', '_' or ':', not starting with '.' or '-'",
                )
            }
            Some(_) => {}
            None => match CollectorConfig::default_host_id(root) {
                Some(id) => self.host_id = Some(id),
                None => {
                    return value(
                        "collector.host_id",
                        "must be set: neither the machine id nor the hostname is a valid host id",
                    )
                }
            },
        }
        if !(1..=MAX_INTERVAL_SECS).contains(&self.heartbeat_interval_secs) {
            return value("collector.heartbeat_interval_secs", BETWEEN_1_AND_A_YEAR);
        }
        if !(1..=MAX_BATCH_EVENTS).contains(&self.batch_max_events) {
            return value("collector.batch_max_events", "must be between 1 and 10000");
        }
        if self.spool_max_bytes < MIN_SPOOL_BYTES {
            return value(
                "collector.spool_max_bytes",
                "must be at least 1048576 (1 MiB)",
            );
        }
        if !(1..=MAX_INTERVAL_SECS).contains(&self.timeout_secs) {
            return value("collector.timeout_secs", BETWEEN_1_AND_A_YEAR);
        }
        if !(1..=MAX_INTERVAL_SECS).contains(&self.retry_max_secs) {
            return value("collector.retry_max_secs", BETWEEN_1_AND_A_YEAR);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_documented_defaults() {
        let config: AgentConfig = toml::from_str("").unwrap();
        assert_eq!(config, AgentConfig::default());
        assert_eq!(config.health.listen.to_string(), "127.0.0.1:9847");
        assert!(config.throttle.threads() >= 1);
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            AgentConfig::load(&path, true).unwrap_err().to_string()
        };
        assert!(load("baselin = \"/x\"").contains("unknown field `baselin`"));
        assert!(load("state_dir = \"relative\"").contains("`state_dir` must be an absolute path"));
        assert!(load("[schedule]\njitter = 2.0").contains("`schedule.jitter`"));
        assert!(load("[health]\nlisten = \"nowhere\"").contains("listen"));
        assert!(AgentConfig::load(&dir.path().join("missing"), true).is_err());
        let mut expected = AgentConfig::default();
        expected.replacement.mark_severity = Some(Severity::Critical);
        assert_eq!(
            AgentConfig::load(&dir.path().join("missing"), false).unwrap(),
            expected
        );
    }

    /// Writes `text` as a configuration (with `DIR` replaced by a scratch directory)
    /// and loads it.
    fn load(text: &str) -> Result<AgentConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let text = text.replace("DIR", &dir.path().display().to_string());
        std::fs::write(&path, text).unwrap();
        AgentConfig::load(&path, true).map_err(|e| e.to_string())
    }

    #[test]
    fn intervals_that_would_overflow_the_clock_are_refused() {
        // Found by the agent_config_toml fuzz target: these validated, then panicked
        // the daemon at its first schedule (`Instant + interval`).
        let identity = "host_id = \"web-1\"\nenrollment_token_file = \"/t\"\n";
        let huge = u64::MAX;
        for (text, key) in [
            (
                format!("[schedule]\nfull_verify_interval_secs = {huge}"),
                "`schedule.full_verify_interval_secs`",
            ),
            (
                format!("[schedule]\nfast_verify_interval_secs = {huge}"),
                "`schedule.fast_verify_interval_secs`",
            ),
            (
                format!("{COLLECTOR}{identity}heartbeat_interval_secs = {huge}"),
                "`collector.heartbeat_interval_secs`",
            ),
            (
                format!("{COLLECTOR}{identity}timeout_secs = {huge}"),
                "`collector.timeout_secs`",
            ),
            (
                format!("{COLLECTOR}{identity}retry_max_secs = {huge}"),
                "`collector.retry_max_secs`",
            ),
        ] {
            let err = load(&text).unwrap_err();
            assert!(err.contains(key) && err.contains("a year"), "{err}");
        }
        let year = format!("[schedule]\nfull_verify_interval_secs = {MAX_INTERVAL_SECS}");
        assert!(load(&year).is_ok());
    }

    const COLLECTOR: &str = "[collector]\nurl = \"https://collector.example.org:8443\"\nca_file = \"/etc/driftwatch/collector-ca.pem\"\n";

    #[test]
    fn a_collector_section_has_documented_defaults() {
        let config = load(&format!(
            "root = \"DIR\"\n{COLLECTOR}enrollment_token_file = \"/etc/driftwatch/token\"\nhost_id = \"web-1\""
        ))
        .unwrap();
        let collector = config.collector.unwrap();
        assert_eq!(collector.host_id(), "web-1");
        assert_eq!(collector.heartbeat_interval_secs, 30);
        assert_eq!(collector.batch_max_events, 500);
        assert_eq!(collector.spool_max_bytes, 64 << 20);
        assert_eq!(collector.timeout_secs, 10);
        assert_eq!(collector.retry_max_secs, 300);
        // With a collector, its fleet policy marks hosts, not the host itself.
        assert_eq!(config.replacement.mark_severity, None);
    }

    #[test]
    fn local_marking_is_on_without_a_collector_and_when_asked_for() {
        assert_eq!(
            load("").unwrap().replacement.mark_severity,
            Some(Severity::Critical)
        );
        let both = load(&format!(
            "[replacement]\nmark_severity = \"high\"\n{COLLECTOR}cert_file = \"/c.pem\"\nkey_file = \"/c.key\"\nhost_id = \"h\""
        ))
        .unwrap();
        assert_eq!(both.replacement.mark_severity, Some(Severity::High));
        assert_eq!(
            load("[replacement]\nmark_severity = \"low\"")
                .unwrap()
                .replacement
                .mark_severity,
            Some(Severity::Low)
        );
    }

    #[test]
    fn the_host_id_defaults_to_the_machine_id_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/machine-id"),
            "4f2c9e0d1b2a4c5d8e9f00112233aabb\n",
        )
        .unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "root = {:?}\n{COLLECTOR}enrollment_token_file = \"/t\"",
                dir.path()
            ),
        )
        .unwrap();
        let config = AgentConfig::load(&path, true).unwrap();
        assert_eq!(
            config.collector.unwrap().host_id(),
            "4f2c9e0d1b2a4c5d8e9f00112233aabb"
        );
        // No machine id: the hostname, when it is a valid id.
        std::fs::remove_file(dir.path().join("etc/machine-id")).unwrap();
        let fallback = AgentConfig::load(&path, true).map(|c| c.collector.unwrap());
        let hostname = crate::host::hostname();
        if is_valid_host_id(&hostname) {
            assert_eq!(fallback.unwrap().host_id(), hostname);
        } else {
            assert!(fallback
                .unwrap_err()
                .to_string()
                .contains("collector.host_id"));
        }
    }

    #[test]
    fn the_collector_url_may_be_a_list_of_replicas() {
        let config = load("root = \"DIR\"\n[collector]\nurl = [\"https://c1:8443/\", \"https://c2:8443\"]\nca_file = \"/ca\"\nenrollment_token_file = \"/t\"\nhost_id = \"h\"\n").unwrap();
        let collector = config.collector.unwrap();
        assert_eq!(
            collector.url.bases(),
            ["https://c1:8443", "https://c2:8443"]
        );
        assert_eq!(
            collector.url.to_string(),
            "https://c1:8443/, https://c2:8443"
        );
    }

    #[test]
    fn collector_errors_name_the_key() {
        let identity = "enrollment_token_file = \"/t\"\nhost_id = \"h\"\n";
        let cases = [
            // Required keys.
            (
                "[collector]\nca_file = \"/ca\"\nhost_id = \"h\"",
                "missing field `url`",
            ),
            (
                "[collector]\nurl = \"https://c\"\nenrollment_token_file = \"/t\"",
                "missing field `ca_file`",
            ),
            // HTTPS only, and a URL at all.
            (
                &format!("[collector]\nurl = \"http://c\"\nca_file = \"/ca\"\n{identity}"),
                "`collector.url` must be an https:// URL",
            ),
            (
                &format!("[collector]\nurl = \"c:8443\"\nca_file = \"/ca\"\n{identity}"),
                "`collector.url`",
            ),
            (
                &format!("[collector]\nurl = []\nca_file = \"/ca\"\n{identity}"),
                "`collector.url` must name at least one URL",
            ),
            (
                &format!(
                    "[collector]\nurl = [\"https://a\", \"http://b\"]\nca_file = \"/ca\"\n{identity}"
                ),
                "`collector.url` must be an https:// URL",
            ),
            (
                &format!("{COLLECTOR}{identity}colour = 1"),
                "unknown field `colour`",
            ),
            // One identity, complete.
            (
                &format!("{COLLECTOR}host_id = \"h\""),
                "`collector.cert_file` and key_file, or enrollment_token_file",
            ),
            (
                &format!("{COLLECTOR}cert_file = \"/c\"\nhost_id = \"h\""),
                "`collector.key_file` must be set with cert_file",
            ),
            (
                &format!("{COLLECTOR}key_file = \"/k\"\nhost_id = \"h\""),
                "`collector.cert_file` must be set with key_file",
            ),
            (
                &format!("{COLLECTOR}cert_file = \"/c\"\nkey_file = \"/k\"\n{identity}"),
                "`collector.enrollment_token_file` cannot be used",
            ),
            (
                &format!("[collector]\nurl = \"https://c\"\nca_file = \"ca.pem\"\n{identity}"),
                "`collector.ca_file` must be an absolute path",
            ),
            (
                &format!("{COLLECTOR}enrollment_token_file = \"/t\"\nhost_id = \"../etc\""),
                "`collector.host_id` must be",
            ),
            // Numbers that cannot work.
            (
                &format!("{COLLECTOR}{identity}heartbeat_interval_secs = 0"),
                "`collector.heartbeat_interval_secs`",
            ),
            (
                &format!("{COLLECTOR}{identity}batch_max_events = 0"),
                "`collector.batch_max_events`",
            ),
            (
                &format!("{COLLECTOR}{identity}spool_max_bytes = 4096"),
                "`collector.spool_max_bytes` must be at least",
            ),
            (
                &format!("{COLLECTOR}{identity}timeout_secs = 0"),
                "`collector.timeout_secs`",
            ),
            (
                &format!("{COLLECTOR}{identity}retry_max_secs = 0"),
                "`collector.retry_max_secs`",
            ),
        ];
        for (text, expected) in cases {
            let err = load(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
