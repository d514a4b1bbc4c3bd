//! `[runtime]` in the policy: which runtime state (processes, kernel modules, listeners,
//! mounts) is reported and how severely. The configuration lives with the policy that
//! holds it; the sources that read `/proc` are in `source::runtime`.

use driftwatch_protocol::report::Severity;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// `[runtime]` in the policy: which runtime state is reported and how severely.
///
/// Bad values (relative paths, a port of 0, an unknown protocol, an empty mount option)
/// are rejected when the policy is parsed, naming the value.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Whether `check` reads runtime state at all (default `true`). Runtime state is only
    /// read when the checked root is `/`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Listeners that are part of the image (default: none; the built-in policy allows
    /// SSH, DHCP clients and systemd-resolved's LLMNR). A listener matching any rule is
    /// not reported.
    #[serde(default)]
    pub allowed_listeners: Vec<ListenerRule>,
    /// Do not report listeners bound only to loopback addresses (`127.0.0.0/8`, `::1`,
    /// `::ffff:127.0.0.0/104`) (default `true`): they cannot be reached from outside.
    #[serde(default = "default_true")]
    pub allow_loopback_listeners: bool,
    /// Expected options of mount points (default: none). A rule whose path is not a
    /// mount point on the host yields no finding: the rule constrains a mount when it
    /// exists, it does not demand one.
    #[serde(default)]
    pub mounts: Vec<MountRule>,
    /// Writable locations no image binary runs from; a process whose executable lies at
    /// or below one is reported as `mutable_path` (default `["/tmp", "/var/tmp",
    /// "/dev/shm", "/run/user"]`).
    #[serde(default = "default_mutable_paths", deserialize_with = "absolute_paths")]
    pub mutable_paths: Vec<String>,
    /// Severity of process findings (default `critical`).
    #[serde(default = "default_critical")]
    pub process_severity: Severity,
    /// Severity of kernel module findings (default `critical`).
    #[serde(default = "default_critical")]
    pub module_severity: Severity,
    /// Severity of listener findings (default `high`).
    #[serde(default = "default_high")]
    pub listener_severity: Severity,
    /// Severity of mount findings (default `high`).
    #[serde(default = "default_high")]
    pub mount_severity: Severity,
}

fn default_true() -> bool {
    true
}

fn default_mutable_paths() -> Vec<String> {
    ["/tmp", "/var/tmp", "/dev/shm", "/run/user"]
        .map(String::from)
        .to_vec()
}

fn default_critical() -> Severity {
    Severity::Critical
}

fn default_high() -> Severity {
    Severity::High
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            enabled: default_true(),
            allowed_listeners: Vec::new(),
            allow_loopback_listeners: default_true(),
            mounts: Vec::new(),
            mutable_paths: default_mutable_paths(),
            process_severity: default_critical(),
            module_severity: default_critical(),
            listener_severity: default_high(),
            mount_severity: default_high(),
        }
    }
}

/// One `allowed_listeners` entry: a listener it matches is not reported.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerRule {
    /// Local port (required, 1–65535).
    #[serde(deserialize_with = "nonzero_port")]
    pub port: u16,
    /// `tcp` (matches `tcp` and `tcp6`) or `udp` (`udp` and `udp6`) (default: both).
    #[serde(default)]
    pub protocol: Option<ListenerProtocol>,
    /// Absolute path of the owning executable, as `/proc/PID/exe` shows it (default: any
    /// program). A listener whose owner cannot be determined never matches a rule with a
    /// program; a program running a deleted binary is compared without the kernel's
    /// ` (deleted)` suffix.
    #[serde(default, deserialize_with = "optional_absolute_path")]
    pub program: Option<String>,
}

/// A protocol family in a [`ListenerRule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// TCP over IPv4 or IPv6.
    Tcp,
    /// UDP over IPv4 or IPv6.
    Udp,
}

impl ListenerProtocol {
    pub(crate) fn matches(self, protocol: &str) -> bool {
        match self {
            ListenerProtocol::Tcp => matches!(protocol, "tcp" | "tcp6"),
            ListenerProtocol::Udp => matches!(protocol, "udp" | "udp6"),
        }
    }
}

/// One `mounts` entry: when `path` is a mount point, its options must include each of
/// `options`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountRule {
    /// The mount point (absolute; required).
    #[serde(deserialize_with = "absolute_path")]
    pub path: String,
    /// Options it must carry, as in the host's `/proc/1/mountinfo`: `ro`, `nosuid`, `nodev`,
    /// `noexec`… (required). `ro`/`rw` are the per-mount flags (what `mount -o remount,ro`
    /// changes); others may also come from the filesystem's own options.
    #[serde(deserialize_with = "mount_options")]
    pub options: Vec<String>,
}

fn normalise_absolute(path: String) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must be an absolute path (start with /)"));
    }
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    })
}

fn absolute_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    normalise_absolute(String::deserialize(d)?).map_err(D::Error::custom)
}

fn optional_absolute_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(normalise_absolute)
        .transpose()
        .map_err(D::Error::custom)
}

fn absolute_paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(normalise_absolute)
        .collect::<Result<_, _>>()
        .map_err(D::Error::custom)
}

fn nonzero_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    match u16::deserialize(d)? {
        0 => Err(D::Error::custom(
            "port 0 is never listened on (use 1–65535)",
        )),
        port => Ok(port),
    }
}

fn mount_options<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let options = Vec::<String>::deserialize(d)?;
    if options.is_empty() {
        return Err(D::Error::custom(
            "a mount rule must list at least one option",
        ));
    }
    for option in &options {
        if option.is_empty() || option.contains([',', ' ', '\t', '\n']) {
            return Err(D::Error::custom(format!(
                "mount option {option:?} must be one non-empty option without commas or spaces"
            )));
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    // --- configuration ------------------------------------------------------------

    #[test]
    fn defaults_are_as_documented() {
        let config = RuntimeConfig::default();
        assert!(config.enabled && config.allow_loopback_listeners);
        assert!(config.allowed_listeners.is_empty() && config.mounts.is_empty());
        assert_eq!(
            config.mutable_paths,
            ["/tmp", "/var/tmp", "/dev/shm", "/run/user"]
        );
        assert_eq!(
            (
                config.process_severity,
                config.module_severity,
                config.listener_severity,
                config.mount_severity
            ),
            (
                Severity::Critical,
                Severity::Critical,
                Severity::High,
                Severity::High
            )
        );
        // An empty section and a missing one mean the same.
        let empty: RuntimeConfig = toml::from_str("").unwrap();
        assert_eq!(empty, config);
        let absent = Policy::parse("").unwrap();
        assert_eq!(absent.config().runtime, config);
    }

    #[test]
    fn builtin_policy_section_parses() {
        let policy = Policy::builtin().unwrap();
        let runtime = &policy.config().runtime;
        assert!(runtime.enabled && runtime.allow_loopback_listeners);
        assert!(runtime.mounts.is_empty());
        assert_eq!(
            runtime.mutable_paths,
            RuntimeConfig::default().mutable_paths
        );
        assert!(runtime.allowed_listeners.contains(&ListenerRule {
            port: 22,
            protocol: Some(ListenerProtocol::Tcp),
            program: None,
        }));
        let rules: RuntimeConfig = toml::from_str(
            r#"
            allowed_listeners = [{ port = 443, protocol = "tcp", program = "/usr/sbin/nginx/" }]
            mounts = [{ path = "/usr/", options = ["ro", "nodev"] }]
            "#,
        )
        .unwrap();
        assert_eq!(
            rules.allowed_listeners[0].program.as_deref(),
            Some("/usr/sbin/nginx")
        );
        assert_eq!(rules.mounts[0].path, "/usr");
    }

    #[test]
    fn bad_values_are_rejected_naming_them() {
        for (text, expected) in [
            ("[runtime]\nmutable_path = []", "mutable_path"),
            ("[runtime]\nmutable_paths = [\"tmp\"]", "\"tmp\""),
            ("[runtime]\nallowed_listeners = [{ port = 0 }]", "port 0"),
            (
                "[runtime]\nallowed_listeners = [{ port = 1, protocol = \"sctp\" }]",
                "sctp",
            ),
            (
                "[runtime]\nallowed_listeners = [{ port = 1, program = \"sshd\" }]",
                "\"sshd\"",
            ),
            (
                "[runtime]\nallowed_listeners = [{ port = 1, user = \"x\" }]",
                "user",
            ),
            (
                "[runtime]\nmounts = [{ path = \"/usr\", options = [] }]",
                "at least one",
            ),
            (
                "[runtime]\nmounts = [{ path = \"/usr\", options = [\"ro,nodev\"] }]",
                "ro,nodev",
            ),
            (
                "[runtime]\nmounts = [{ path = \"usr\", options = [\"ro\"] }]",
                "\"usr\"",
            ),
            ("[runtime]\nprocess_severity = \"urgent\"", "urgent"),
        ] {
            let err = Policy::parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
