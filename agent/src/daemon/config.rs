//! `AgentConfig`: the daemon's configuration file (TOML, default
//! `/etc/driftwatch/agent.toml`). Every key has a default, so an empty file (or no file
//! at all) runs the daemon against the image's own baseline and policy.
//!
//! Validation happens here, before any thread starts: an unknown key, a relative path
//! or a zero interval is an error naming the key.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

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
}

fn default_baseline() -> PathBuf {
    PathBuf::from(crate::baseline::DEFAULT_BASELINE_PATH)
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
    /// A finding at or above this severity marks the host (default `critical`).
    #[serde(default = "default_mark_severity")]
    pub mark_severity: driftwatch_protocol::report::Severity,
    /// A command run once when the host is marked, e.g. to fail a cloud health check
    /// or power off: program and arguments (default: none). It gets
    /// `DRIFTWATCH_REASON` in its environment.
    #[serde(default)]
    pub command: Vec<String>,
}

fn default_mark_severity() -> driftwatch_protocol::report::Severity {
    driftwatch_protocol::report::Severity::Critical
}

impl Default for ReplacementConfig {
    fn default() -> Self {
        ReplacementConfig {
            mark_severity: default_mark_severity(),
            command: Vec::new(),
        }
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
        let config: AgentConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
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
        if self.schedule.fast_verify_interval_secs == 0 {
            return value("schedule.fast_verify_interval_secs", "must be at least 1");
        }
        if self.schedule.full_verify_interval_secs == 0 {
            return value("schedule.full_verify_interval_secs", "must be at least 1");
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
        assert_eq!(
            AgentConfig::load(&dir.path().join("missing"), false).unwrap(),
            AgentConfig::default()
        );
    }
}
