//! Kernel modules: loaded modules the image does not ship, or that taint the kernel.

use super::scope::Scope;
use super::RuntimeObservation;
use crate::policy::runtime::RuntimeConfig;
use driftwatch_protocol::baseline::{BaselineReader, ReadAt};
use driftwatch_protocol::report::{KernelModuleFinding, KernelModuleReason};
use std::collections::HashSet;
use std::fs;
use std::io;

/// File name endings of loadable modules: plain and compressed.
const MODULE_SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];
/// Module trees, relative to which the running kernel's release is looked up. Both,
/// because on merged-`/usr` systems `/lib` is a symlink the scanner does not follow.
const MODULE_TREES: [&str; 2] = ["/lib/modules", "/usr/lib/modules"];

/// One line of `/proc/modules`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LoadedModule {
    name: String,
    /// The flags between parentheses at the end of the line (`OE`), when any.
    taint: Option<String>,
}

/// Parses `/proc/modules`: `name size refcount deps state address [(taint)]` per line.
/// Lines that do not start with a name are skipped.
fn parse_modules(text: &str) -> Vec<LoadedModule> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?.to_string();
            let taint = fields
                .last()
                .and_then(|last| last.strip_prefix('(')?.strip_suffix(')'))
                .filter(|flags| !flags.is_empty())
                .map(str::to_string);
            Some(LoadedModule { name, taint })
        })
        .collect()
}

/// A module's name as the kernel compares it: `-` and `_` are the same.
fn module_key(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name a file in a module tree provides, if it is a module file.
fn module_file_name(path: &[u8]) -> Option<String> {
    let file = path.rsplit(|b| *b == b'/').next()?;
    let file = std::str::from_utf8(file).ok()?;
    MODULE_SUFFIXES
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))
        .filter(|name| !name.is_empty())
        .map(module_key)
}

pub(super) fn observe<R: ReadAt>(
    config: &RuntimeConfig,
    baseline: &BaselineReader<R>,
    scope: &Scope,
    findings: &mut Vec<KernelModuleFinding>,
    observation: &mut RuntimeObservation,
) {
    let text = match fs::read_to_string("/proc/modules") {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            observation.skipped.push(
                "kernel modules: /proc/modules does not exist (a kernel without loadable \
                 modules)"
                    .to_string(),
            );
            return;
        }
        Err(err) => {
            observation
                .errors
                .push(format!("kernel modules: cannot read /proc/modules: {err}"));
            return;
        }
    };
    let release = match fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(release) => release.trim().to_string(),
        Err(err) => {
            observation.errors.push(format!(
                "kernel modules: cannot read the kernel release from /proc/sys/kernel/osrelease: {err}"
            ));
            return;
        }
    };
    module_findings(
        config,
        baseline,
        scope,
        &release,
        &parse_modules(&text),
        findings,
        observation,
    );
}

/// Judges loaded modules against the baseline's module trees for `release`.
fn module_findings<R: ReadAt>(
    config: &RuntimeConfig,
    baseline: &BaselineReader<R>,
    scope: &Scope,
    release: &str,
    loaded: &[LoadedModule],
    findings: &mut Vec<KernelModuleFinding>,
    observation: &mut RuntimeObservation,
) {
    let trees: Vec<String> = MODULE_TREES
        .iter()
        .map(|tree| format!("{tree}/{release}"))
        .collect();
    if !trees.iter().any(|tree| scope.covers(tree.as_bytes())) {
        observation.skipped.push(format!(
            "kernel modules: the baseline's policy does not cover /lib/modules/{release}, so \
             it cannot say which modules the image ships"
        ));
        return;
    }
    let mut shipped = HashSet::new();
    for tree in &trees {
        for entry in baseline.entries_within(tree.as_bytes()) {
            match entry {
                Ok(entry) => shipped.extend(module_file_name(&entry.path)),
                Err(err) => {
                    observation.errors.push(format!(
                        "kernel modules: cannot read {tree} from the baseline: {err}"
                    ));
                    // Without the full list every module could look foreign.
                    return;
                }
            }
        }
    }
    for module in loaded {
        let in_image = shipped.contains(&module_key(&module.name));
        let out_of_tree_or_unsigned = module
            .taint
            .as_deref()
            .is_some_and(|flags| flags.contains(['O', 'E']));
        // One finding per module: not shipped is the stronger signal; its taint flags
        // travel with it either way.
        let reason = if !in_image {
            KernelModuleReason::NotInImage
        } else if out_of_tree_or_unsigned {
            KernelModuleReason::Tainted
        } else {
            continue;
        };
        findings.push(KernelModuleFinding {
            reason,
            name: module.name.clone(),
            taint: module.taint.clone(),
            severity: config.module_severity,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::runtime::RuntimeConfig;
    use crate::policy::Policy;

    use driftwatch_protocol::report::Severity;

    use driftwatch_protocol::Entry;

    use std::path::Path;

    use crate::source::runtime::test_support::*;
    use crate::source::runtime::RuntimeObservation;

    // --- kernel modules -----------------------------------------------------------

    const MODULES: &str = "\
snd_hda_intel 61440 3 - Live 0xffffffffc0b2e000
zfs 6688768 6 - Live 0xffffffffc0f00000 (POE)
vboxdrv 696320 0 - Live 0x0000000000000000 (OE)
rootkit 16384 0 - Live 0xffffffffc0010000
ext4 1048576 1 mbcache,jbd2, Live 0xffffffffc0200000
nvidia 56000000 0 - Loading 0xffffffffc1000000 (P)

";

    #[test]
    fn parses_proc_modules() {
        let modules = parse_modules(MODULES);
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "snd_hda_intel",
                "zfs",
                "vboxdrv",
                "rootkit",
                "ext4",
                "nvidia"
            ]
        );
        assert_eq!(modules[0].taint, None);
        assert_eq!(modules[1].taint.as_deref(), Some("POE"));
        assert_eq!(modules[2].taint.as_deref(), Some("OE"));
        assert_eq!(modules[5].taint.as_deref(), Some("P"));
        assert_eq!(
            module_file_name(b"/lib/modules/6.1/kernel/snd-hda-intel.ko.zst").as_deref(),
            Some("snd_hda_intel")
        );
        assert_eq!(module_file_name(b"/lib/modules/6.1/modules.dep"), None);
        assert_eq!(module_file_name(b"/lib/modules/6.1/x.ko.bz2"), None);
        assert_eq!(module_file_name(b"/lib/modules/6.1/.ko"), None);
    }

    fn module_run(
        policy: &str,
        entries: Vec<Entry>,
    ) -> (Vec<KernelModuleFinding>, RuntimeObservation) {
        let bytes = baseline_bytes(policy, entries);
        let reader = open(&bytes);
        let scope = Scope::of(Policy::parse(policy).unwrap());
        let mut findings = Vec::new();
        let mut observation = RuntimeObservation::default();
        module_findings(
            &RuntimeConfig::default(),
            &reader,
            &scope,
            "6.1.0-test",
            &parse_modules(MODULES),
            &mut findings,
            &mut observation,
        );
        (findings, observation)
    }

    #[test]
    fn modules_are_judged_against_both_module_trees() {
        let entries = vec![
            dir_entry(Path::new("/lib/modules/6.1.0-test")),
            file_entry(
                Path::new("/lib/modules/6.1.0-test/kernel/sound/snd-hda-intel.ko.xz"),
                None,
            ),
            file_entry(
                Path::new("/usr/lib/modules/6.1.0-test/updates/dkms/zfs.ko.zst"),
                None,
            ),
            file_entry(
                Path::new("/usr/lib/modules/6.1.0-test/kernel/fs/ext4/ext4.ko.gz"),
                None,
            ),
            file_entry(
                Path::new("/usr/lib/modules/6.1.0-test/video/nvidia.ko"),
                None,
            ),
            // Another kernel's copy does not count.
            file_entry(Path::new("/lib/modules/5.10.0-old/extra/rootkit.ko"), None),
            file_entry(Path::new("/lib/modules/6.1.0-test.bak/rootkit.ko"), None),
        ];
        let (findings, observation) = module_run("", entries);
        assert!(observation.errors.is_empty() && observation.skipped.is_empty());
        let got: Vec<(&str, KernelModuleReason, Option<&str>)> = findings
            .iter()
            .map(|f| (f.name.as_str(), f.reason, f.taint.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("zfs", KernelModuleReason::Tainted, Some("POE")),
                ("vboxdrv", KernelModuleReason::NotInImage, Some("OE")),
                ("rootkit", KernelModuleReason::NotInImage, None),
            ]
        );
        assert!(findings.iter().all(|f| f.severity == Severity::Critical));
    }

    #[test]
    fn modules_outside_the_baselines_scope_are_skipped() {
        let (findings, observation) = module_run(
            "exclude = [\"/lib/modules\", \"/usr/lib/modules\"]",
            Vec::new(),
        );
        assert!(findings.is_empty());
        assert!(
            observation.skipped[0].contains("/lib/modules/6.1.0-test"),
            "{observation:?}"
        );
    }

    #[test]
    fn missing_proc_modules_is_skipped_not_an_error() {
        if Path::new("/proc/modules").exists() {
            eprintln!("skipping: this kernel has /proc/modules");
            return;
        }
        let bytes = baseline_bytes("", Vec::new());
        let mut findings = Vec::new();
        let mut observation = RuntimeObservation::default();
        super::observe(
            &RuntimeConfig::default(),
            &open(&bytes),
            &Scope::everything(),
            &mut findings,
            &mut observation,
        );
        assert!(findings.is_empty() && observation.errors.is_empty());
        assert!(observation.skipped[0].contains("/proc/modules does not exist"));
    }
}
