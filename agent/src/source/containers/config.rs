//! `[containers]` in the policy: whether running containers are checked, how severe
//! their drift is, and which writes a workload is expected to make.
//!
//! A container's drift is everything in its writable layer; most workloads write a
//! little (caches, pid files, logs), so what is expected is said per workload, by image
//! (glob), Kubernetes namespace or label, and by the workload itself with the
//! annotation or label [`IGNORE_ANNOTATION`]. Bad values (a relative path, a glob that
//! does not compile) are rejected when the policy is parsed, naming the value.

use super::ContainerMeta;
use driftwatch_protocol::report::Severity;
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

/// The annotation (or label) a workload lists its own expected-written paths in,
/// comma-separated absolute paths or globs.
pub const IGNORE_ANNOTATION: &str = "driftwatch.io/ignore-paths";

/// `[containers]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainersConfig {
    /// Whether running containers are checked (default `true`; only on a check of `/`).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Severity of an executable or library added or changed in a container, and of a
    /// process running an executable that is not the image's (default `critical`).
    #[serde(default = "default_critical")]
    pub executable_severity: Severity,
    /// Severity of anything else in a container's writable layer (default `medium`).
    #[serde(default = "default_medium")]
    pub severity: Severity,
    /// Paths no container is judged on (default `/tmp`, `/var/tmp`, `/run`, `/var/run`,
    /// `/var/log`, `/var/cache`). Volumes, bind mounts and tmpfs mounts are data, not
    /// image, and never judged.
    #[serde(default = "default_ignore")]
    pub ignore_paths: PathPatterns,
    /// What given workloads are expected to write.
    #[serde(default)]
    pub expected: Vec<Expectation>,
}

fn default_true() -> bool {
    true
}

fn default_critical() -> Severity {
    Severity::Critical
}

fn default_medium() -> Severity {
    Severity::Medium
}

fn default_ignore() -> PathPatterns {
    PathPatterns::compile(
        [
            "/tmp",
            "/var/tmp",
            "/run",
            "/var/run",
            "/var/log",
            "/var/cache",
        ]
        .iter()
        .map(|p| p.to_string())
        .collect(),
    )
    .unwrap_or_default()
}

impl Default for ContainersConfig {
    fn default() -> Self {
        ContainersConfig {
            enabled: true,
            executable_severity: default_critical(),
            severity: default_medium(),
            ignore_paths: default_ignore(),
            expected: Vec::new(),
        }
    }
}

/// One `[[containers.expected]]` entry: the workloads it selects may write `paths` and
/// run `programs` they wrote. A workload is selected when it matches every selector
/// given (`images`, `namespaces`, `labels`); an entry without selectors selects every
/// container.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// Image name globs (`shop/api*`, `*/build-*`), matched against the image as the
    /// container was started from it.
    #[serde(default, deserialize_with = "name_globs")]
    pub images: Option<GlobSet>,
    /// Kubernetes namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Labels or annotations the workload must carry, all of them, with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Paths (globs, each covering what is below it) the workload is expected to write:
    /// nothing there is reported.
    #[serde(default)]
    pub paths: PathPatterns,
    /// Executables (globs) the workload is expected to write and run, as build pods
    /// do: neither the files nor the processes running them are reported.
    #[serde(default)]
    pub programs: PathPatterns,
}

impl Expectation {
    fn selects(&self, meta: &ContainerMeta) -> bool {
        let image = self.images.as_ref().is_none_or(|globs| {
            meta.reference
                .image
                .as_deref()
                .is_some_and(|image| globs.is_match(image))
        });
        let namespace = self.namespaces.is_empty()
            || meta
                .reference
                .namespace
                .as_ref()
                .is_some_and(|ns| self.namespaces.contains(ns));
        let labels = self
            .labels
            .iter()
            .all(|(key, value)| meta.labels.get(key) == Some(value));
        image && namespace && labels
    }
}

/// The expectations that hold for one container, resolved once per check.
#[derive(Debug)]
pub struct Expected<'a> {
    config: &'a ContainersConfig,
    selected: Vec<&'a Expectation>,
    own: PathPatterns,
}

impl<'a> Expected<'a> {
    /// What `config` and the container's own annotation expect of `meta`. A malformed
    /// annotation is returned as an error message; the rest still applies.
    pub fn of(config: &'a ContainersConfig, meta: &ContainerMeta) -> (Self, Option<String>) {
        let (own, error) = match meta.labels.get(IGNORE_ANNOTATION) {
            None => (PathPatterns::default(), None),
            Some(list) => {
                let paths = list
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect();
                match PathPatterns::compile(paths) {
                    Ok(patterns) => (patterns, None),
                    Err(err) => (
                        PathPatterns::default(),
                        Some(format!("annotation {IGNORE_ANNOTATION} ignored: {err}")),
                    ),
                }
            }
        };
        let selected = config.expected.iter().filter(|e| e.selects(meta)).collect();
        (
            Expected {
                config,
                selected,
                own,
            },
            error,
        )
    }

    /// Whether a write at `path` (inside the container) is expected.
    pub fn path_expected(&self, path: &[u8]) -> bool {
        self.config.ignore_paths.covers(path)
            || self.own.covers(path)
            || self
                .selected
                .iter()
                .any(|e| e.paths.covers(path) || e.programs.matches(path))
    }

    /// Whether running the executable at `path` (written into the container) is
    /// expected.
    pub fn program_expected(&self, path: &[u8]) -> bool {
        self.selected.iter().any(|e| e.programs.matches(path))
    }
}

/// Absolute path globs, compiled. A pattern covers the paths it matches and what lies
/// below them.
#[derive(Clone, Debug, Default)]
pub struct PathPatterns {
    set: GlobSet,
    empty: bool,
}

impl PathPatterns {
    /// Compiles patterns, refusing relative ones.
    pub fn compile(patterns: Vec<String>) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for pattern in &patterns {
            if !pattern.starts_with('/') {
                return Err(format!(
                    "{pattern:?} must be an absolute path (start with /)"
                ));
            }
            let trimmed = match pattern.trim_end_matches('/') {
                "" => "/",
                trimmed => trimmed,
            };
            let glob = GlobBuilder::new(trimmed)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|err| format!("{pattern:?} is not a valid glob: {err}"))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|err| err.to_string())?;
        Ok(PathPatterns {
            set,
            empty: patterns.is_empty(),
        })
    }

    /// Whether a pattern matches exactly this path.
    pub fn matches(&self, path: &[u8]) -> bool {
        !self.empty && self.set.is_match(bytes_path(path))
    }

    /// Whether a pattern matches this path or one of its ancestors.
    pub fn covers(&self, path: &[u8]) -> bool {
        if self.empty {
            return false;
        }
        let mut prefix = path;
        loop {
            if self.set.is_match(bytes_path(prefix)) {
                return true;
            }
            match prefix.iter().rposition(|b| *b == b'/') {
                Some(0) if prefix.len() > 1 => prefix = b"/",
                Some(at) if at > 0 => prefix = &prefix[..at],
                _ => return false,
            }
        }
    }
}

fn bytes_path(path: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(path))
}

impl<'de> Deserialize<'de> for PathPatterns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PathPatterns::compile(Vec::<String>::deserialize(d)?).map_err(D::Error::custom)
    }
}

fn name_globs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<GlobSet>, D::Error> {
    let mut builder = GlobSetBuilder::new();
    for pattern in Vec::<String>::deserialize(d)? {
        builder.add(
            Glob::new(&pattern).map_err(|err| {
                D::Error::custom(format!("{pattern:?} is not a valid glob: {err}"))
            })?,
        );
    }
    builder.build().map(Some).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_protocol::report::ContainerRef;

    fn meta(image: &str, namespace: Option<&str>, labels: &[(&str, &str)]) -> ContainerMeta {
        ContainerMeta {
            reference: ContainerRef {
                id: "c1".into(),
                image: Some(image.into()),
                namespace: namespace.map(str::to_string),
                runtime: "podman".into(),
                ..ContainerRef::default()
            },
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mounts: Vec::new(),
        }
    }

    #[test]
    fn defaults_ignore_volatile_paths_only() {
        let config = ContainersConfig::default();
        let (expected, error) = Expected::of(&config, &meta("x", None, &[]));
        assert!(error.is_none());
        for path in ["/tmp", "/tmp/a/b", "/run/x.pid", "/var/log/app.log"] {
            assert!(expected.path_expected(path.as_bytes()), "{path}");
        }
        for path in ["/", "/tmpfoo", "/usr/local/bin/x", "/etc/passwd"] {
            assert!(!expected.path_expected(path.as_bytes()), "{path}");
        }
    }

    #[test]
    fn workloads_are_selected_by_image_namespace_label_and_annotation() {
        #[derive(Deserialize)]
        struct Wrapper {
            containers: ContainersConfig,
        }
        let config: Wrapper = toml::from_str(
            r#"
            [[containers.expected]]
            images = ["shop/api*"]
            paths = ["/srv/cache"]
            [[containers.expected]]
            namespaces = ["ci"]
            labels = { role = "build" }
            programs = ["/src/target/**"]
            "#,
        )
        .unwrap();
        let config = config.containers;
        let api = meta("shop/api:1.4", None, &[]);
        let (expected, _) = Expected::of(&config, &api);
        assert!(expected.path_expected(b"/srv/cache/x"));
        assert!(!expected.path_expected(b"/src/target/debug/app"));
        let build = meta("rust:1", Some("ci"), &[("role", "build")]);
        let (expected, _) = Expected::of(&config, &build);
        assert!(expected.program_expected(b"/src/target/debug/app"));
        assert!(!expected.path_expected(b"/srv/cache/x"));
        let other_ns = meta("rust:1", Some("prod"), &[("role", "build")]);
        assert!(!Expected::of(&config, &other_ns)
            .0
            .program_expected(b"/src/target/debug/app"));
        let own = meta("x", None, &[(IGNORE_ANNOTATION, "/data, /opt/*/state")]);
        let (expected, _) = Expected::of(&config, &own);
        assert!(expected.path_expected(b"/data/file"));
        assert!(expected.path_expected(b"/opt/app/state/db"));
        assert!(!expected.path_expected(b"/opt/app/bin"));
        let bad = meta("x", None, &[(IGNORE_ANNOTATION, "data")]);
        assert!(Expected::of(&config, &bad).1.is_some());
    }

    #[test]
    fn relative_paths_are_refused_when_parsed() {
        let err = toml::from_str::<ContainersConfig>("ignore_paths = [\"tmp\"]").unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
    }
}
