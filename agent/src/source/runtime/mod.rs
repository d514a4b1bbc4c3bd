//! Runtime state: what a host runs, loads, listens on and mounts, judged against the
//! image.
//!
//! A host can drift without touching a watched file. This source reads `/proc` and
//! reports four kinds of deviation:
//!
//! - **Processes** ([`ProcessFinding`](driftwatch_protocol::report::ProcessFinding)): a process whose executable was deleted after it
//!   started (including `memfd` "fileless" execution), that runs from a mutable location
//!   (`mutable_paths`), that the baseline does not record, or whose binary hashes
//!   differently from the baseline's BLAKE3.
//! - **Kernel modules** ([`KernelModuleFinding`](driftwatch_protocol::report::KernelModuleFinding)): a loaded module with no `.ko` under
//!   `/lib/modules/$(uname -r)` (or `/usr/lib/modules/…`) in the baseline, or one that
//!   taints the kernel as out-of-tree (`O`) or unsigned (`E`).
//! - **Listeners** ([`ListenerFinding`](driftwatch_protocol::report::ListenerFinding)): TCP sockets in `LISTEN` and bound, unconnected
//!   UDP sockets in this network namespace that no rule, loopback allowance or captured
//!   baseline listener explains.
//! - **Mounts** ([`MountFinding`](driftwatch_protocol::report::MountFinding)): a mount point named by a `[[runtime.mounts]]` rule
//!   whose options lack one the rule expects (`/usr` not `ro`, `/tmp` not `noexec`).
//!
//! Everything here reads the *running* system, so it only makes sense when the checked
//! root is `/`; the caller decides that. [`observe`] never fails as a whole: a source
//! that does not exist on this kernel goes to [`RuntimeObservation::skipped`], a real
//! failure to [`RuntimeObservation::errors`], and the other sources carry on. The
//! ordinary churn of `/proc` — a process that exits while it is being read, a kernel
//! thread, a process we may not inspect — is neither.
//!
//! Read [`RuntimeConfig`] (the `[runtime]` policy section, in [`crate::policy::runtime`]) and [`observe`] first.

mod listeners;
mod modules;
mod mounts;
pub(crate) mod processes;
mod scope;
#[cfg(test)]
mod test_support;

use crate::policy::runtime::RuntimeConfig;
use crate::policy::Policy;
use driftwatch_protocol::baseline::{BaselineReader, ReadAt};
use driftwatch_protocol::path as dwpath;
use driftwatch_protocol::report::Finding;
use driftwatch_protocol::runtime::CapturedRuntime;
use procfs::ProcError;
use scope::Scope;
use std::io;

/// What [`observe`] saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuntimeObservation {
    /// Deviations, ordered: processes by pid, modules by name, listeners by protocol,
    /// port and address, mounts by path.
    pub findings: Vec<Finding>,
    /// Real failures (an unparsable `/proc` file, an unreadable baseline block), each one
    /// sentence naming what failed. Exited processes, kernel threads and processes we may
    /// not inspect are expected and never appear here.
    pub errors: Vec<String>,
    /// What could not be looked at on this host and why, e.g. `kernel modules:
    /// /proc/modules does not exist`.
    pub skipped: Vec<String>,
}

/// Reads the running system's state and reports what the image and `config` do not
/// explain. Call it only when the checked root is `/`.
///
/// `captured` is the runtime state accepted at bake time (pass
/// `baseline.meta().runtime.as_ref()`): a listener like one of its listeners is allowed,
/// and a process running one of its executables is not reported.
///
/// Which paths the baseline *could* know is decided by the policy recorded in the
/// baseline (its `[scan] paths`, `exclude`/`include` and `one_filesystem`), not by the
/// policy `check` was run with: a process whose executable the baseline never looked at
/// (outside the scan paths, excluded, or on another filesystem than the scan path it
/// lies in) is not reported as `not_in_baseline` — there is nothing to compare it with.
/// It is still reported when its executable was deleted or lies in a mutable path.
pub fn observe<R: ReadAt>(
    config: &RuntimeConfig,
    baseline: &BaselineReader<R>,
    captured: Option<&CapturedRuntime>,
) -> RuntimeObservation {
    let mut observation = RuntimeObservation::default();
    if !config.enabled {
        observation
            .skipped
            .push("runtime: disabled by the policy ([runtime] enabled = false)".to_string());
        return observation;
    }
    let scope = match Policy::parse(&baseline.meta().policy) {
        Ok(policy) => Scope::of(policy),
        Err(err) => {
            observation.errors.push(format!(
                "processes and kernel modules: the policy recorded in the baseline does not \
                 parse ({err}); every path is treated as recorded"
            ));
            Scope::everything()
        }
    };
    let mut processes = Vec::new();
    processes::observe(config, baseline, &scope, &mut processes, &mut observation);
    let mut modules = Vec::new();
    modules::observe(config, baseline, &scope, &mut modules, &mut observation);
    let mut listeners = Vec::new();
    listeners::observe(
        config,
        captured.map(|c| c.listeners.as_slice()),
        &mut listeners,
        &mut observation,
    );
    if let Some(captured) = captured {
        processes.retain(|p| !captured.executables.contains(&p.exe));
    }
    let mut mounts = Vec::new();
    mounts::observe(config, &mut mounts, &mut observation);

    processes.sort_by_key(|p| (p.pid, p.reason as u8));
    modules.sort_by(|a, b| a.name.cmp(&b.name));
    listeners
        .sort_by(|a, b| (&a.protocol, a.port, &a.address).cmp(&(&b.protocol, b.port, &b.address)));
    mounts.sort_by(|a, b| dwpath::cmp(a.mountpoint.as_bytes(), b.mountpoint.as_bytes()));
    observation
        .findings
        .extend(processes.into_iter().map(Finding::Process));
    observation
        .findings
        .extend(modules.into_iter().map(Finding::KernelModule));
    observation
        .findings
        .extend(listeners.into_iter().map(Finding::Listener));
    observation
        .findings
        .extend(mounts.into_iter().map(Finding::Mount));
    observation
}

/// What `baseline create --capture-runtime` records: the listeners of this network
/// namespace, and the executables of running processes that no baseline could explain
/// (see [`CapturedRuntime`]). Kernel threads, containers and unreadable processes are
/// left out, as `observe` leaves them out.
pub fn capture(config: &RuntimeConfig) -> CapturedRuntime {
    CapturedRuntime {
        listeners: listeners::capture(),
        executables: processes::capture(config),
    }
}

// ---------------------------------------------------------------------------------------
// Errors: what is the normal churn of /proc, and what is a real failure.

/// True for failures that are part of reading a live `/proc`: the process exited
/// (`ENOENT`, `ESRCH`), we may not inspect it (`EACCES`, `EPERM`), or the file is a
/// kernel thread's empty one.
fn expected_io(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    ) || err.raw_os_error() == Some(libc::ESRCH)
}

fn expected_proc(err: &ProcError) -> bool {
    match err {
        ProcError::PermissionDenied(_) | ProcError::NotFound(_) | ProcError::Incomplete(_) => true,
        ProcError::Io(err, _) => expected_io(err),
        ProcError::Other(_) | ProcError::InternalError(_) => false,
    }
}

#[cfg(test)]
mod tests {

    use crate::policy::runtime::RuntimeConfig;
    use crate::policy::Policy;
    use driftwatch_protocol::baseline::BaselineWriter;

    use driftwatch_protocol::report::{Finding, ProcessReason};

    use std::path::Path;

    use crate::source::runtime::observe;
    use crate::source::runtime::test_support::*;
    use std::time::Instant;

    #[test]
    fn disabled_observes_nothing() {
        let bytes = baseline_bytes("", Vec::new());
        let config = RuntimeConfig {
            enabled: false,
            ..RuntimeConfig::default()
        };
        let observation = observe(&config, &open(&bytes), None);
        assert!(observation.findings.is_empty() && observation.errors.is_empty());
        assert_eq!(observation.skipped.len(), 1);
    }

    // --- this machine -------------------------------------------------------------

    /// The built-in policy's `[runtime]` against a baseline of this machine's system
    /// directories, built with the scan engine. Prints what it sees; fails on what
    /// would be false positives: processes from scanned paths that do not match, or
    /// processes from unscanned paths (/work, ~/.cargo) called "not in baseline".
    #[test]
    fn builtin_policy_on_this_machine() {
        use crate::source::files::{scan, ScanItem, ScanOptions};
        use std::sync::atomic::AtomicBool;
        let _live = live();
        let policy_text =
            "[scan]\npaths = [\"/usr\", \"/bin\", \"/sbin\", \"/lib\", \"/opt\", \"/etc\"]\n";
        let policy = Policy::parse(policy_text).unwrap();
        let timer = Instant::now();
        let mut writer = BaselineWriter::new(Vec::new(), &meta(policy_text)).unwrap();
        let options = ScanOptions::default();
        scan(
            Path::new("/"),
            &policy,
            &options,
            &AtomicBool::new(false),
            |item| match item {
                ScanItem::Observed { entry, .. } => writer.push(&entry),
                ScanItem::Unreadable { .. } => Ok(()),
            },
        )
        .unwrap();
        let (bytes, sealed) = writer.finish(None).unwrap();
        eprintln!(
            "baseline of this machine: {} entries, {} bytes, built in {:?}",
            sealed.entry_count,
            bytes.len(),
            timer.elapsed()
        );
        let reader = open(&bytes);
        // A process from /usr that must match.
        let from_usr = run(&sleep_binary());

        let config = Policy::builtin().unwrap().config().runtime.clone();
        let timer = Instant::now();
        let observation = observe(&config, &reader, reader.meta().runtime.as_ref());
        let took = timer.elapsed();
        eprintln!("observe() took {took:?}");
        for finding in &observation.findings {
            eprintln!("finding: {}", serde_json::to_string(finding).unwrap());
        }
        eprintln!("errors: {:?}", observation.errors);
        eprintln!("skipped: {:?}", observation.skipped);

        assert!(observation.errors.is_empty(), "{:?}", observation.errors);
        assert!(processes(&observation, from_usr.pid()).is_empty());
        let false_positives: Vec<&Finding> = observation
            .findings
            .iter()
            .filter(|f| {
                matches!(f, Finding::Process(p) if matches!(
                    p.reason,
                    ProcessReason::NotInBaseline | ProcessReason::DiffersFromBaseline
                ))
            })
            .collect();
        assert!(false_positives.is_empty(), "{false_positives:?}");
        assert!(!observation
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Mount(_))));
    }
}
