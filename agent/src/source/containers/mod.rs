//! Running containers, each checked against its own image.
//!
//! A container started from an image is immutable infrastructure too: once the image
//! is built it is never changed, and a container that differs from it has drifted.
//! The kernel already keeps the difference apart — the overlay upper layer holds
//! everything written since the container started — so checking a container costs
//! in proportion to what was written, not to the image.
//!
//! Read in this order: [`discover`] (which containers run, from `/proc/*/mountinfo`),
//! [`metadata`] (their names, from the runtimes' state on disk), [`overlay`] (file
//! drift: the upper layer against the lower ones), [`walk`] (the full check of an
//! upper layer), [`process`] (processes running
//! what the image does not hold), [`config`] (the `[containers]` policy section), then
//! [`observe`], which puts them together for `check`, and [`watch`], which the daemon
//! uses to follow containers as they start, write and stop.

pub mod action;
pub mod config;
pub mod discover;
pub mod metadata;
pub mod overlay;
pub mod process;
pub mod walk;
pub mod watch;

use crate::diff::file_finding;
use crate::policy::Rule;
use config::{ContainersConfig, Expected};
use discover::Container;
use driftwatch_protocol::entry::{Entry, FileType};
use driftwatch_protocol::path as dwpath;
use driftwatch_protocol::report::{ContainerRef, Finding, Severity};
use overlay::Change;
use std::collections::BTreeMap;
use std::path::Path;
use walk::ImageHashes;

/// Who a container is, as its runtime recorded it.
#[derive(Clone, Debug, Default)]
pub struct ContainerMeta {
    /// How findings name it.
    pub reference: ContainerRef,
    /// Its labels and annotations (what `[[containers.expected]] labels` match).
    pub labels: BTreeMap<String, String>,
    /// Mount destinations its runtime configured (volumes, bind mounts, tmpfs).
    pub mounts: Vec<Vec<u8>>,
}

/// What one check of the containers found.
#[derive(Debug, Default)]
pub struct ContainerObservation {
    /// The containers seen, with their drift.
    pub containers: Vec<ContainerSummary>,
    /// File and process findings, each naming its container.
    pub findings: Vec<Finding>,
    /// What could not be examined (`container NAME: path: error`).
    pub errors: Vec<String>,
}

/// One container seen, for `driftwatch containers` and the daemon's status.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ContainerSummary {
    /// Who it is.
    #[serde(flatten)]
    pub reference: ContainerRef,
    /// Its processes.
    pub pids: Vec<i32>,
    /// Findings about it.
    pub drift: usize,
    /// The most severe of them.
    pub max_severity: Option<Severity>,
}

/// Where the host's process table and the runtimes' state are.
#[derive(Clone, Debug)]
pub struct Host {
    /// `/proc`.
    pub proc: std::path::PathBuf,
    /// The runtimes' state directories.
    pub state: metadata::StateDirs,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            proc: "/proc".into(),
            state: metadata::StateDirs::under(Path::new("/")),
        }
    }
}

/// Finds the running containers.
pub fn running(host: &Host) -> (Vec<Container>, Vec<String>) {
    let state = metadata::read(&host.state);
    let mut not_containers = discover::NotContainers::new();
    (
        discover::discover(&host.proc, &state, &mut not_containers),
        state.errors,
    )
}

/// Checks every running container on `host`.
pub fn observe(host: &Host, config: &ContainersConfig) -> ContainerObservation {
    let (containers, mut errors) = running(host);
    let checked = check_all(host, config, &containers, &ImageHashes::default());
    let mut observation = ContainerObservation::default();
    for (container, (findings, container_errors)) in containers.iter().zip(checked) {
        observation.containers.push(ContainerSummary {
            reference: container.meta.reference.clone(),
            pids: container.pids.clone(),
            drift: findings.len(),
            max_severity: findings.iter().map(Finding::severity).max(),
        });
        observation.findings.extend(findings);
        errors.extend(container_errors);
    }
    observation.errors = errors;
    observation
}

/// Checks the containers on a few threads (two per core, at most eight): each walk
/// mostly waits on its own small files, so they overlap well.
pub fn check_all(
    host: &Host,
    config: &ContainersConfig,
    containers: &[Container],
    images: &ImageHashes,
) -> Vec<(Vec<Finding>, Vec<String>)> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |cores| cores.get() * 2)
        .clamp(1, 8);
    let chunk = containers.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = containers
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|c| check(host, config, c, images))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![(Vec::new(), vec!["container check failed".into()])])
            })
            .collect()
    })
}

/// The name a container goes by in messages.
pub fn label(reference: &ContainerRef) -> String {
    let short: String = reference.id.chars().take(12).collect();
    match &reference.name {
        Some(name) => format!("{name} ({short})"),
        None => short,
    }
}

/// What in a container is never judged: volumes, bind mounts and tmpfs mounts (and
/// the mount points the runtime made for them), what the policy and the workload
/// expect to be written, and the `/etc/mtab` link runtimes create.
pub struct Skip<'a> {
    container: &'a Container,
    expected: Expected<'a>,
}

impl<'a> Skip<'a> {
    /// The rules for `container`; a malformed workload annotation is returned as an
    /// error message.
    pub fn new(config: &'a ContainersConfig, container: &'a Container) -> (Self, Option<String>) {
        let (expected, error) = Expected::of(config, &container.meta);
        (
            Skip {
                container,
                expected,
            },
            error,
        )
    }

    /// Whether `path` (inside the container) is left alone.
    pub fn skips(&self, path: &[u8]) -> bool {
        path == b"/etc/mtab"
            || self.expected.path_expected(path)
            || self.container.mounts.iter().any(|m| {
                path == m.as_slice() || (path.starts_with(m) && path.get(m.len()) == Some(&b'/'))
            })
    }
}

/// An executable or a shared library: any execute bit, or a library's name.
fn is_executable(entry: &Entry) -> bool {
    if entry.file_type != FileType::File {
        return false;
    }
    let name = entry
        .path
        .rsplit(|b| *b == b'/')
        .next()
        .unwrap_or(&entry.path);
    let library = name.ends_with(b".so") || name.windows(4).any(|w| w == b".so.");
    entry.mode & 0o111 != 0 || library
}

/// A change turned into a finding naming the container.
pub fn finding(
    config: &ContainersConfig,
    container: &ContainerRef,
    change: &Change,
) -> Option<Finding> {
    let executable = change.after.as_ref().is_some_and(is_executable);
    let rule = Rule {
        name: if executable {
            "containers:executable".to_string()
        } else {
            "containers".to_string()
        },
        attributes: overlay::checked(),
        severity: if executable {
            config.executable_severity
        } else {
            config.severity
        },
    };
    let mut finding = file_finding(
        change.change,
        change.before.as_ref(),
        change.after.as_ref(),
        change.attributes.clone(),
        &rule,
    )?;
    if let Finding::File(file) = &mut finding {
        file.container = Some(container.clone());
    }
    Some(finding)
}

/// Checks one container: its upper layer, then its processes; `images` holds the
/// hashes of image files already read in this check.
pub fn check(
    host: &Host,
    config: &ContainersConfig,
    container: &Container,
    images: &ImageHashes,
) -> (Vec<Finding>, Vec<String>) {
    let reference = &container.meta.reference;
    let (skip, annotation_error) = Skip::new(config, container);
    let mut errors: Vec<String> = annotation_error
        .into_iter()
        .map(|e| format!("container {}: {e}", label(reference)))
        .collect();
    let walked = walk::walk(&container.layers, &|path| skip.skips(path), images);
    let mut findings: Vec<Finding> = walked
        .changes
        .iter()
        .filter_map(|change| finding(config, reference, change))
        .collect();
    errors.extend(walked.errors.into_iter().map(|(path, error)| {
        format!(
            "container {}: {}: {error}",
            label(reference),
            dwpath::display(&path)
        )
    }));
    findings.extend(
        process::findings(
            &host.proc,
            container,
            &skip.expected,
            config.executable_severity,
            &mut process::Judged::default(),
        )
        .into_iter()
        .map(Finding::Process),
    );
    (findings, errors)
}

/// Re-checks single paths of one container (after watch events).
pub fn recheck(
    config: &ContainersConfig,
    container: &Container,
    paths: &[Vec<u8>],
) -> Vec<Finding> {
    let (skip, _) = Skip::new(config, container);
    let reference = &container.meta.reference;
    paths
        .iter()
        .filter(|path| !skip.skips(path))
        .filter_map(|path| container.layers.compare(path).ok().flatten())
        .filter_map(|change| finding(config, reference, &change))
        .collect()
}
