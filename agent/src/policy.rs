//! What to watch and how severe a change is: the policy file (TOML).
//!
//! A policy is read once, validated, and compiled into glob sets before any scanning
//! starts, so a typo is an error naming the key or pattern, never a surprise halfway
//! through a scan. The built-in default (`agent/policy/default.toml`) is embedded in the
//! binary and recorded in every baseline it makes.
//!
//! # Matching semantics
//!
//! - Paths are absolute inside the scanned root, compared as bytes. `*`, `?` and `[…]`
//!   match within one component; `**` matches any number of components.
//! - A pattern **covers** every path it matches and everything below those paths.
//! - `exclude` patterns remove covered paths from the scan: they are not walked,
//!   recorded or reported. `include` patterns win over `exclude`: a covered path inside
//!   an excluded tree is scanned, and the excluded directories on the way to it are
//!   walked (but not recorded).
//! - Of all `[[rule]]`s covering a path, the **last** in the file wins; a path that no
//!   rule covers gets `[default]`. A rule that leaves out `attributes` or `severity`
//!   takes them from `[default]`; a rule that gives `attributes` compares those only
//!   ("these attributes only": type, additions and removals are reported regardless).
//!
//! The walker evaluates this incrementally (one glob match per entry, the rest
//! inherited from the parent directory); [`Policy::state_for`] evaluates it from scratch
//! for a single path, and a test holds the two to the same answers.

pub mod runtime;

use driftwatch_protocol::path as dwpath;
use driftwatch_protocol::report::{Attribute, Severity};
use globset::{Candidate, Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use thiserror::Error;

/// The built-in default policy, as shipped.
pub const DEFAULT_POLICY: &str = include_str!("../policy/default.toml");

/// The policy file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Patterns whose covered paths are never scanned (default: none).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Patterns scanned even inside excluded trees (default: none).
    #[serde(default)]
    pub include: Vec<String>,
    /// What to walk.
    #[serde(default)]
    pub scan: ScanConfig,
    /// Attributes and severity for paths no rule covers.
    #[serde(default)]
    pub default: DefaultRuleConfig,
    /// Rules, in order; the last covering rule wins.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    /// Package drift and package-manager verification.
    #[serde(default)]
    pub packages: PackagesConfig,
    /// `[runtime]`: processes, kernel modules, listeners and mounts (default: see
    /// [`runtime::RuntimeConfig`]).
    #[serde(default)]
    pub runtime: runtime::RuntimeConfig,
}

/// `[packages]`: the package set and the package manager's own file records.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagesConfig {
    /// Record the package set in baselines and compare it on check (default `true`).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Severity of an installed, removed or upgraded package (default `high`).
    #[serde(default = "default_package_severity")]
    pub severity: Severity,
    /// Which packaged files to verify against the package database's digests
    /// (default `uncovered`): `uncovered` verifies the files the file scan does not
    /// compare (excluded or outside the scan paths) — the scan's comparison with the
    /// baseline is stronger for the rest; `all` verifies every packaged file, like
    /// `debsums`; `off` verifies nothing.
    #[serde(default)]
    pub verify: VerifyScope,
    /// Severity of a packaged file that differs from its package (default `high`).
    #[serde(default = "default_package_severity")]
    pub verify_severity: Severity,
    /// The same for configuration files the package manager expects to be edited
    /// (dpkg conffiles, rpm `%config`; default `medium`).
    #[serde(default = "default_severity")]
    pub verify_config_severity: Severity,
}

/// `[packages] verify`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyScope {
    /// Only packaged files the file scan does not compare.
    #[default]
    Uncovered,
    /// Every packaged file.
    All,
    /// None.
    Off,
}

fn default_package_severity() -> Severity {
    Severity::High
}

impl Default for PackagesConfig {
    fn default() -> Self {
        PackagesConfig {
            enabled: default_true(),
            severity: default_package_severity(),
            verify: VerifyScope::default(),
            verify_severity: default_package_severity(),
            verify_config_severity: default_severity(),
        }
    }
}

/// `[scan]`: what to walk.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanConfig {
    /// Absolute paths inside the root to walk (default `["/"]`).
    #[serde(default = "default_scan_paths")]
    pub paths: Vec<String>,
    /// Stay on the filesystems of `paths` (default `true`).
    #[serde(default = "default_true")]
    pub one_filesystem: bool,
    /// Record SHA-256 besides BLAKE3 (default `false`).
    #[serde(default)]
    pub sha256: bool,
    /// Files larger than this many bytes are not hashed (default 4 GiB): their type,
    /// mode, owner and size are still compared, and a size that differs from the
    /// baseline is reported as a content change. This bounds what one planted file
    /// (`truncate -s 1P`) can cost a scan.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
}

/// The default of [`ScanConfig::max_file_bytes`]: 4 GiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 4 << 30;

fn default_max_file_bytes() -> u64 {
    DEFAULT_MAX_FILE_BYTES
}

fn default_scan_paths() -> Vec<String> {
    vec!["/".to_string()]
}

fn default_true() -> bool {
    true
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            paths: default_scan_paths(),
            one_filesystem: default_true(),
            sha256: false,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// `[default]`: what applies where no rule does.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultRuleConfig {
    /// Attributes compared (default: all but `mtime`).
    #[serde(default = "default_attributes")]
    pub attributes: Vec<Attribute>,
    /// Severity of a change (default `medium`).
    #[serde(default = "default_severity")]
    pub severity: Severity,
}

fn default_attributes() -> Vec<Attribute> {
    Attribute::ALL
        .into_iter()
        .filter(|a| *a != Attribute::Mtime)
        .collect()
}

fn default_severity() -> Severity {
    Severity::Medium
}

impl Default for DefaultRuleConfig {
    fn default() -> Self {
        DefaultRuleConfig {
            attributes: default_attributes(),
            severity: default_severity(),
        }
    }
}

/// One `[[rule]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A name shown in reports and errors (default: `rule N`).
    pub name: Option<String>,
    /// Patterns this rule covers (required, at least one).
    pub paths: Vec<String>,
    /// Attributes compared (default: `[default].attributes`).
    pub attributes: Option<Vec<Attribute>>,
    /// Severity of a change (default: `[default].severity`).
    pub severity: Option<Severity>,
}

/// Why a policy could not be used.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// The TOML is invalid or has unknown keys.
    #[error("{0}")]
    Parse(String),
    /// A glob pattern does not compile.
    #[error("pattern {pattern:?} in {section} is invalid: {reason}")]
    Pattern {
        /// Where the pattern is.
        section: String,
        /// The pattern.
        pattern: String,
        /// What is wrong.
        reason: String,
    },
    /// A pattern or path is not absolute.
    #[error("{section}: {pattern:?} must be an absolute path (start with /)")]
    NotAbsolute {
        /// Where it is.
        section: String,
        /// The pattern.
        pattern: String,
    },
    /// A rule has no paths or `[scan].paths` is empty.
    #[error("{0} lists no paths")]
    Empty(String),
}

/// A set of attributes, as a bit mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttributeSet(u16);

impl AttributeSet {
    /// Collects attributes into a set.
    pub fn of(attributes: &[Attribute]) -> Self {
        AttributeSet(attributes.iter().fold(0, |bits, a| bits | Self::bit(*a)))
    }

    fn bit(attribute: Attribute) -> u16 {
        1 << (attribute as u16)
    }

    /// The set with `attribute` added.
    pub fn with(self, attribute: Attribute) -> Self {
        AttributeSet(self.0 | Self::bit(attribute))
    }

    /// True when the set holds `attribute`.
    pub fn contains(self, attribute: Attribute) -> bool {
        self.0 & Self::bit(attribute) != 0
    }
}

/// A rule after compilation: what it compares and how severe a change is.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The rule's name.
    pub name: String,
    /// Attributes compared.
    pub attributes: AttributeSet,
    /// Severity of a change.
    pub severity: Severity,
}

/// Where a path stands with the policy, inherited down the tree by the walker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathState {
    /// Covered by an exclude pattern and no include pattern.
    pub excluded: bool,
    /// Covered by an include pattern.
    pub included: bool,
    /// The winning rule (index into the rules), `None` for `[default]`.
    pub rule: Option<usize>,
}

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    text: String,
    config: PolicyConfig,
    exclude: GlobSet,
    include: GlobSet,
    include_components: Vec<Vec<Option<GlobMatcher>>>,
    rule_globs: GlobSet,
    glob_rule: Vec<usize>,
    rules: Vec<Rule>,
    default_rule: Rule,
    scan_paths: Vec<Vec<u8>>,
}

fn compile_glob(section: &str, pattern: &str) -> Result<Glob, PolicyError> {
    if !pattern.starts_with('/') {
        return Err(PolicyError::NotAbsolute {
            section: section.to_string(),
            pattern: pattern.to_string(),
        });
    }
    let trimmed = if pattern.len() > 1 {
        pattern.trim_end_matches('/')
    } else {
        pattern
    };
    GlobBuilder::new(trimmed)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| PolicyError::Pattern {
            section: section.to_string(),
            pattern: pattern.to_string(),
            reason: e.kind().to_string(),
        })
}

fn glob_set(section: &str, patterns: &[String]) -> Result<GlobSet, PolicyError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(compile_glob(section, pattern)?);
    }
    builder.build().map_err(|e| PolicyError::Pattern {
        section: section.to_string(),
        pattern: patterns.join(", "),
        reason: e.to_string(),
    })
}

fn candidate(path: &[u8]) -> Candidate<'_> {
    Candidate::new(Path::new(OsStr::from_bytes(path)))
}

fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|b| *b == b'/').filter(|c| !c.is_empty())
}

impl Policy {
    /// The built-in default policy.
    pub fn builtin() -> Result<Self, PolicyError> {
        Policy::parse(DEFAULT_POLICY)
    }

    /// Parses and compiles a policy.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let config: PolicyConfig =
            toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        let exclude = glob_set("exclude", &config.exclude)?;
        let include = glob_set("include", &config.include)?;
        let mut include_components = Vec::new();
        for pattern in &config.include {
            let mut parts = Vec::new();
            for part in components(pattern.as_bytes()) {
                let part = String::from_utf8_lossy(part);
                parts.push(if part == "**" {
                    None
                } else {
                    Some(compile_glob("include", &format!("/{part}"))?.compile_matcher())
                });
            }
            include_components.push(parts);
        }

        let default_rule = Rule {
            name: "default".to_string(),
            attributes: AttributeSet::of(&config.default.attributes),
            severity: config.default.severity,
        };
        let mut builder = GlobSetBuilder::new();
        let mut glob_rule = Vec::new();
        let mut rules = Vec::new();
        for (index, rule) in config.rules.iter().enumerate() {
            let name = rule
                .name
                .clone()
                .unwrap_or_else(|| format!("rule {}", index + 1));
            if rule.paths.is_empty() {
                return Err(PolicyError::Empty(format!("rule {name:?}")));
            }
            for pattern in &rule.paths {
                builder.add(compile_glob(&format!("rule {name:?}"), pattern)?);
                glob_rule.push(index);
            }
            rules.push(Rule {
                attributes: rule
                    .attributes
                    .as_deref()
                    .map_or(default_rule.attributes, AttributeSet::of),
                severity: rule.severity.unwrap_or(default_rule.severity),
                name,
            });
        }
        let rule_globs = builder.build().map_err(|e| PolicyError::Pattern {
            section: "rules".to_string(),
            pattern: String::new(),
            reason: e.to_string(),
        })?;

        if config.scan.paths.is_empty() {
            return Err(PolicyError::Empty("[scan] paths".to_string()));
        }
        let mut scan_paths: Vec<Vec<u8>> = Vec::new();
        for path in &config.scan.paths {
            if !path.starts_with('/') {
                return Err(PolicyError::NotAbsolute {
                    section: "[scan] paths".to_string(),
                    pattern: path.clone(),
                });
            }
            let mut normal = b"/".to_vec();
            normal.extend_from_slice(&components(path.as_bytes()).collect::<Vec<_>>().join(&b'/'));
            scan_paths.push(normal);
        }
        scan_paths.sort_by(|a, b| dwpath::cmp(a, b));
        // A path inside another listed path is walked with it.
        let mut disjoint: Vec<Vec<u8>> = Vec::new();
        for path in scan_paths {
            if !disjoint.iter().any(|outer| dwpath::is_within(&path, outer)) {
                disjoint.push(path);
            }
        }

        Ok(Policy {
            text: text.to_string(),
            config,
            exclude,
            include,
            include_components,
            rule_globs,
            glob_rule,
            rules,
            default_rule,
            scan_paths: disjoint,
        })
    }

    /// The policy's source text (recorded in baselines).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// `blake3:<hex>` of the source text.
    pub fn digest(&self) -> String {
        format!("blake3:{}", blake3::hash(self.text.as_bytes()).to_hex())
    }

    /// The parsed configuration.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The paths to walk, normalised, sorted in walk order, none inside another.
    pub fn scan_paths(&self) -> &[Vec<u8>] {
        &self.scan_paths
    }

    /// The rule a state selects.
    pub fn rule(&self, state: &PathState) -> &Rule {
        state
            .rule
            .and_then(|index| self.rules.get(index))
            .unwrap_or(&self.default_rule)
    }

    /// The state of `path` given its parent directory's state: one glob match per set.
    pub fn child_state(&self, path: &[u8], parent: &PathState) -> PathState {
        let candidate = candidate(path);
        let included = parent.included || self.include.is_match_candidate(&candidate);
        let excluded =
            !included && (parent.excluded || self.exclude.is_match_candidate(&candidate));
        let own_rule = self
            .rule_globs
            .matches_candidate(&candidate)
            .into_iter()
            .filter_map(|glob| self.glob_rule.get(glob).copied())
            .max();
        PathState {
            excluded,
            included,
            rule: parent.rule.max(own_rule),
        }
    }

    /// The state of `path` evaluated from the root down (for single lookups).
    pub fn state_for(&self, path: &[u8]) -> PathState {
        let mut state = self.child_state(b"/", &PathState::default());
        let mut current = Vec::with_capacity(path.len());
        for part in components(path) {
            current.push(b'/');
            current.extend_from_slice(part);
            state = self.child_state(&current, &state);
        }
        state
    }

    /// True when an included path may lie below the excluded directory `dir`, so the
    /// walker must descend through it.
    pub fn may_include_below(&self, dir: &[u8]) -> bool {
        let dir_parts: Vec<&[u8]> = components(dir).collect();
        self.include_components.iter().any(|pattern| {
            for (index, part) in dir_parts.iter().enumerate() {
                match pattern.get(index) {
                    None => return false,
                    Some(None) => return true,
                    Some(Some(matcher)) => {
                        let mut one = b"/".to_vec();
                        one.extend_from_slice(part);
                        if !matcher.is_match(Path::new(OsStr::from_bytes(&one))) {
                            return false;
                        }
                    }
                }
            }
            pattern.len() > dir_parts.len()
        })
    }

    /// True when `path` lies in one of the scan paths.
    pub fn in_scope(&self, path: &[u8]) -> bool {
        self.scan_paths
            .iter()
            .any(|root| dwpath::is_within(path, root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
exclude = ["/var/log", "/home", "/tmp/*.swp"]
include = ["/home/*/.ssh"]
[default]
severity = "low"
[[rule]]
name = "broad"
paths = ["/usr"]
severity = "high"
[[rule]]
name = "narrow"
paths = ["/usr/bin", "/usr/lib/**/*.so"]
severity = "critical"
attributes = ["content"]
"#;

    fn policy() -> Policy {
        Policy::parse(POLICY).unwrap()
    }

    fn rule_name(policy: &Policy, path: &str) -> String {
        policy.rule(&policy.state_for(path.as_bytes())).name.clone()
    }

    #[test]
    fn last_covering_rule_wins_and_covers_descendants() {
        let p = policy();
        assert_eq!(rule_name(&p, "/usr/share/x"), "broad");
        assert_eq!(rule_name(&p, "/usr/bin"), "narrow");
        assert_eq!(rule_name(&p, "/usr/bin/ls"), "narrow");
        assert_eq!(rule_name(&p, "/usr/lib/x86_64/libc.so"), "narrow");
        assert_eq!(rule_name(&p, "/usr/lib/x86_64/libc.so.6"), "broad");
        assert_eq!(rule_name(&p, "/etc/passwd"), "default");
        let narrow = p.rule(&p.state_for(b"/usr/bin/ls"));
        assert!(narrow.attributes.contains(Attribute::Content));
        assert!(!narrow.attributes.contains(Attribute::Mode));
        assert_eq!(p.rule(&p.state_for(b"/usr/x")).severity, Severity::High);
    }

    #[test]
    fn star_stays_within_one_component() {
        let p = policy();
        assert!(p.state_for(b"/tmp/a.swp").excluded);
        assert!(!p.state_for(b"/tmp/sub/a.swp").excluded);
    }

    #[test]
    fn exclusion_covers_subtrees_and_include_wins() {
        let p = policy();
        assert!(p.state_for(b"/var/log").excluded);
        assert!(p.state_for(b"/var/log/syslog").excluded);
        assert!(!p.state_for(b"/var/logs").excluded);
        assert!(p.state_for(b"/home/alice").excluded);
        assert!(!p.state_for(b"/home/alice/.ssh/authorized_keys").excluded);
        assert!(p.may_include_below(b"/home"));
        assert!(p.may_include_below(b"/home/alice"));
        assert!(!p.may_include_below(b"/home/alice/Documents"));
        assert!(!p.may_include_below(b"/var/log"));
    }

    #[test]
    fn errors_name_the_problem() {
        let err = Policy::parse("exclude = [\"relative\"]")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"relative\"") && err.contains("absolute"),
            "{err}"
        );
        let err = Policy::parse("[scan]\npath = [\"/\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `path`"), "{err}");
        let err = Policy::parse("[[rule]]\npaths = [\"/a[\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/a["), "{err}");
        let err = Policy::parse("[default]\nseverity = \"urgent\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("urgent"), "{err}");
    }

    #[test]
    fn scan_paths_are_normalised_and_nested_ones_dropped() {
        let p = Policy::parse("[scan]\npaths = [\"/usr/bin/\", \"/usr\", \"/etc\"]").unwrap();
        assert_eq!(p.scan_paths(), &[b"/etc".to_vec(), b"/usr".to_vec()]);
        assert!(p.in_scope(b"/usr/bin/ls") && !p.in_scope(b"/var"));
    }

    #[test]
    fn builtin_policy_grades_what_matters() {
        let p = Policy::builtin().unwrap();
        for critical in [
            "/usr/bin/ssh",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/etc/ld.so.preload",
            "/etc/sudoers.d/admins",
            "/etc/ssh/sshd_config",
            "/etc/pam.d/common-auth",
            "/etc/cron.d/job",
            "/etc/systemd/system/x.service",
            "/lib/modules/6.1/x.ko",
            "/root/.ssh/authorized_keys",
            "/home/bob/.ssh/authorized_keys",
            "/var/spool/cron/crontabs/root",
            "/etc/ssh/ssh_host_rsa_key",
        ] {
            let state = p.state_for(critical.as_bytes());
            assert!(!state.excluded, "{critical} excluded");
            assert_eq!(p.rule(&state).severity, Severity::Critical, "{critical}");
        }
        for ignored in [
            "/proc/1",
            "/var/log/syslog",
            "/etc/machine-id",
            "/var/lib/dpkg/status",
            "/tmp/x",
            "/root/.bash_history",
            "/var/spool/postfix/x",
            "/var/lib/driftwatch/state",
        ] {
            assert!(
                p.state_for(ignored.as_bytes()).excluded,
                "{ignored} not excluded"
            );
        }
    }

    proptest::proptest! {
        /// The walker's incremental evaluation agrees with evaluation from scratch.
        #[test]
        fn incremental_matches_from_scratch(parts in proptest::collection::vec(
            proptest::sample::select(vec!["usr", "bin", "lib", "home", "alice", ".ssh",
                "var", "log", "x.so", "tmp", "a.swp", "logs"]), 1..6)) {
            let p = policy();
            let mut state = p.child_state(b"/", &PathState::default());
            let mut path = Vec::new();
            for part in &parts {
                path.push(b'/');
                path.extend_from_slice(part.as_bytes());
                state = p.child_state(&path, &state);
                proptest::prop_assert_eq!(state, p.state_for(&path));
            }
        }
    }
}
