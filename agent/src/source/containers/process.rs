//! Process drift in a container: a process whose executable is not the image's — it
//! lives in the container's upper layer (dropped and run, or an image binary changed),
//! was deleted after it started, or is a memfd (fileless execution). Always at the
//! `executable_severity` (critical by default), with pid, command line and container.

use super::config::Expected;
use super::discover::Container;
use crate::source::runtime::processes::format_cmdline;
use driftwatch_protocol::path as dwpath;
use driftwatch_protocol::report::{Attribute, FileChange, ProcessFinding, ProcessReason, Severity};
use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `/proc/PID/cmdline` as one line, as host process findings show it.
fn cmdline(proc: &Path, pid: i32) -> String {
    let raw = fs::read(proc.join(format!("{pid}/cmdline"))).unwrap_or_default();
    format_cmdline(&raw)
}

fn real_uid(proc: &Path, pid: i32) -> Option<u32> {
    let status = fs::read_to_string(proc.join(format!("{pid}/status"))).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Why the executable `exe` (as `/proc/PID/exe` names it inside the container) is not
/// the image's, if it is not.
fn judge(container: &Container, exe: &[u8], expected: &Expected<'_>) -> Option<ProcessReason> {
    if exe.starts_with(b"/memfd:") {
        return Some(ProcessReason::DeletedExecutable);
    }
    if exe.ends_with(b" (deleted)") {
        return Some(ProcessReason::DeletedExecutable);
    }
    if expected.program_expected(exe) {
        return None;
    }
    match container.layers.compare(exe) {
        // Written, or rewritten: a mode change alone (a setuid bit) leaves the image's
        // program in place and is the file finding's business.
        Ok(Some(change))
            if change.change == FileChange::Added
                || change.attributes.iter().any(|a| {
                    matches!(a, Attribute::Content | Attribute::Size | Attribute::Type)
                }) =>
        {
            Some(ProcessReason::NotInImage)
        }
        // Not in the upper layer (the image's own), or unreadable: the file check
        // reports what it cannot read.
        _ => None,
    }
}

/// Verdicts on a container's executables, by path as `/proc/PID/exe` names them: valid
/// while its upper layer does not change.
pub type Judged = HashMap<Vec<u8>, Option<ProcessReason>>;

/// The container's processes that run something the image does not hold; `judged`
/// keeps the verdicts on executables seen before.
pub fn findings(
    proc: &Path,
    container: &Container,
    expected: &Expected<'_>,
    severity: Severity,
    judged: &mut Judged,
) -> Vec<ProcessFinding> {
    let mut found = Vec::new();
    for &pid in &container.pids {
        // Exited, or a kernel thread: nothing to judge.
        let Ok(exe) = fs::read_link(proc.join(format!("{pid}/exe"))) else {
            continue;
        };
        let exe = exe.as_os_str().as_bytes().to_vec();
        let reason = *judged
            .entry(exe.clone())
            .or_insert_with(|| judge(container, &exe, expected));
        let Some(reason) = reason else {
            continue;
        };
        found.push(ProcessFinding {
            reason,
            pid,
            exe: dwpath::display(&exe),
            cmdline: cmdline(proc, pid),
            uid: real_uid(proc, pid).unwrap_or(u32::MAX),
            user: None,
            severity,
            container: Some(container.meta.reference.clone()),
        });
    }
    found
}
