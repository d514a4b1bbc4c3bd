//! `[provisioning]` in `agent.toml`: which units end the first-boot provisioning
//! window and which paths provisioning may change (the window itself is
//! `daemon::provision`). Here, below the daemon, so that the configuration, read and
//! validated before the daemon starts, imports nothing from a layer above it.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

/// `[provisioning]` in `agent.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    /// The units whose end closes the window (default `["cloud-final.service"]`);
    /// units not installed are ignored, and with none installed there is no window.
    /// An empty list turns the window off.
    #[serde(default = "default_units")]
    pub units: Vec<String>,
    /// Patterns of the paths provisioning may change (default: what cloud-init writes
    /// on a Debian cloud image, see [`default_paths`]). Unlike policy patterns, a
    /// pattern names exactly the paths it matches: `/etc/sudoers.d` is the directory
    /// (cloud-init changes its mode), `/etc/sudoers.d/**` would be every file in it.
    /// `*` stays within one component, `**` spans any number.
    #[serde(default = "default_paths")]
    pub paths: Vec<String>,
    /// More patterns, added to `paths` (default: none): the files your user data
    /// writes.
    #[serde(default)]
    pub extra_paths: Vec<String>,
    /// The longest the window stays open, in seconds (default 3600): a provisioning
    /// unit that hangs must not blind the declared paths for ever.
    #[serde(default = "default_max_secs")]
    pub max_secs: u64,
}

pub fn default_units() -> Vec<String> {
    vec!["cloud-final.service".to_string()]
}

/// What cloud-init writes at first boot on a Debian cloud image with a default user
/// (measured on the image of `tests/tests/image.rs`), where the policy looks.
pub fn default_paths() -> Vec<String> {
    [
        // The default user and its groups (the `-` files are the tools' backups).
        "/etc/passwd",
        "/etc/passwd-",
        "/etc/shadow",
        "/etc/shadow-",
        "/etc/group",
        "/etc/group-",
        "/etc/gshadow",
        "/etc/gshadow-",
        "/etc/subuid",
        "/etc/subuid-",
        "/etc/subgid",
        "/etc/subgid-",
        // Its home, its keys (root's too: "log in as debian") and its sudo rule.
        "/home/*",
        "/home/*/**",
        "/root/.ssh",
        "/root/.ssh/authorized_keys",
        "/etc/sudoers.d",
        "/etc/sudoers.d/90-cloud-init-users",
        // The host's name and its SSH host keys, made new for every instance.
        "/etc/hostname",
        "/etc/hosts",
        "/etc/ssh/ssh_host_*",
        // cloud-init's own state.
        "/etc/cloud/instance",
        "/var/lib/cloud",
        "/var/lib/cloud/**",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect()
}

fn default_max_secs() -> u64 {
    3600
}

impl Default for ProvisioningConfig {
    fn default() -> Self {
        ProvisioningConfig {
            units: default_units(),
            paths: default_paths(),
            extra_paths: Vec::new(),
            max_secs: default_max_secs(),
        }
    }
}

impl ProvisioningConfig {
    /// Checks the patterns (absolute, valid globs): an error names the key.
    pub fn validate(&self) -> Result<(), &'static str> {
        Declared::compile(self).map(|_| ())
    }
}

/// The declared paths, compiled.
#[derive(Clone, Debug)]
pub struct Declared(GlobSet);

impl Declared {
    /// The patterns compiled; `Err` names the key holding one that is not an
    /// absolute glob.
    pub fn compile(config: &ProvisioningConfig) -> Result<Declared, &'static str> {
        let mut set = GlobSetBuilder::new();
        for (key, patterns) in [
            ("provisioning.paths", &config.paths),
            ("provisioning.extra_paths", &config.extra_paths),
        ] {
            for pattern in patterns {
                let glob = GlobBuilder::new(pattern.trim_end_matches('/'))
                    .literal_separator(true)
                    .build()
                    .ok()
                    .filter(|_| pattern.starts_with('/'))
                    .ok_or(key)?;
                set.add(glob);
            }
        }
        set.build().map(Declared).map_err(|_| "provisioning.paths")
    }

    /// Whether `path` is declared: a pattern matches it.
    pub fn covers(&self, path: &str) -> bool {
        self.0.is_match(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared() -> Declared {
        Declared::compile(&ProvisioningConfig::default()).unwrap()
    }

    #[test]
    fn declared_patterns_cover_their_trees_and_nothing_else() {
        let d = declared();
        assert!(d.covers("/etc/passwd"));
        assert!(d.covers("/home/debian/.ssh/authorized_keys"));
        assert!(d.covers("/etc/ssh/ssh_host_ed25519_key.pub"));
        assert!(d.covers("/etc/sudoers.d/90-cloud-init-users"));
        assert!(!d.covers("/etc/passwdx"));
        assert!(d.covers("/etc/sudoers.d"));
        assert!(!d.covers("/etc/sudoers.d/evil"));
        assert!(d.covers("/home/debian"));
        assert!(d.covers("/root/.ssh/authorized_keys"));
        assert!(!d.covers("/root/.ssh/rc"));
        assert!(!d.covers("/etc/ssh/sshd_config"));
        assert!(!d.covers("/usr/bin/sudo"));
        assert!(!d.covers("/home"));
        let bad = ProvisioningConfig {
            extra_paths: vec!["etc/x".into()],
            ..ProvisioningConfig::default()
        };
        assert_eq!(bad.validate(), Err("provisioning.extra_paths"));
    }
}
