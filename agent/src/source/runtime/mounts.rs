//! Mounts: mount points whose options lack one a `[[runtime.mounts]]` rule expects.

use super::RuntimeObservation;
use crate::policy::runtime::RuntimeConfig;
use driftwatch_protocol::report::MountFinding;
use std::fs;

/// The host's mount table: init's, not this process's. The daemon runs in a mount
/// namespace of its own under its unit (`ProtectSystem=` makes `/usr` read-only
/// there whatever the host has); a `mount -o remount,rw /usr` on the host shows only
/// in init's namespace.
const HOST_MOUNTINFO: &str = "/proc/1/mountinfo";

/// One line of a `mountinfo` file, with the fields this source uses.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MountEntry {
    /// Field 5, unescaped.
    mount_point: Vec<u8>,
    /// Field 6: per-mount options (`rw`, `nosuid`, `relatime`…).
    mount_options: Vec<String>,
    /// The superblock's options (the last field, after `-`, type and source).
    super_options: Vec<String>,
}

impl MountEntry {
    /// The options a rule is checked against: the per-mount ones, then the superblock's
    /// except `ro`/`rw` (whether *this mount* is writable is the per-mount flag).
    fn options(&self) -> Vec<String> {
        let mut options = self.mount_options.clone();
        for option in &self.super_options {
            if option != "ro" && option != "rw" && !options.contains(option) {
                options.push(option.clone());
            }
        }
        options
    }
}

fn split_options(field: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(field)
        .split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses a `mountinfo` file (`proc(5)`):
/// `id parent major:minor root mountpoint options [optional…] - fstype source superopts`.
/// A malformed line is an error naming its number.
fn parse_mountinfo(text: &[u8]) -> Result<Vec<MountEntry>, String> {
    let mut mounts = Vec::new();
    for (index, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let separator = fields
            .iter()
            .skip(6)
            .position(|f| *f == b"-")
            .map(|p| p + 6);
        let (Some(separator), Some(mount_point), Some(options)) =
            (separator, fields.get(4), fields.get(5))
        else {
            return Err(format!("line {} is malformed", index + 1));
        };
        let Some(super_options) = fields.get(separator + 3) else {
            return Err(format!(
                "line {} has too few fields after the separator",
                index + 1
            ));
        };
        mounts.push(MountEntry {
            mount_point: crate::source::mountinfo::unescape(mount_point),
            mount_options: split_options(options),
            super_options: split_options(super_options),
        });
    }
    Ok(mounts)
}

/// Judges mount rules against the mount table. When several mounts are stacked on one
/// mount point, the last one (the visible one) counts.
fn mount_findings(config: &RuntimeConfig, mounts: &[MountEntry], findings: &mut Vec<MountFinding>) {
    for rule in &config.mounts {
        let Some(mount) = mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == rule.path.as_bytes())
        else {
            continue;
        };
        let observed = mount.options();
        if rule.options.iter().all(|o| observed.contains(o)) {
            continue;
        }
        findings.push(MountFinding {
            mountpoint: rule.path.clone(),
            expected: rule.options.clone(),
            observed,
            severity: config.mount_severity,
        });
    }
}

pub(super) fn observe(
    config: &RuntimeConfig,
    findings: &mut Vec<MountFinding>,
    observation: &mut RuntimeObservation,
) {
    if config.mounts.is_empty() {
        return;
    }
    let text = match fs::read(HOST_MOUNTINFO) {
        Ok(text) => text,
        Err(err) => {
            observation
                .errors
                .push(format!("mounts: cannot read {HOST_MOUNTINFO}: {err}"));
            return;
        }
    };
    match parse_mountinfo(&text) {
        Ok(mounts) => mount_findings(config, &mounts, findings),
        Err(err) => observation
            .errors
            .push(format!("mounts: {HOST_MOUNTINFO}: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::runtime::{MountRule, RuntimeConfig};

    use driftwatch_protocol::report::{Finding, Severity};

    use std::fs;

    use crate::source::runtime::test_support::*;
    use crate::source::runtime::{observe, RuntimeObservation};

    // --- mounts -------------------------------------------------------------------

    const MOUNTINFO: &[u8] = b"\
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
36 27 254:1 / /usr ro,nodev,relatime shared:5 master:2 - ext4 /dev/vdb ro
41 27 0:38 / /mnt/my\\040disk rw,nosuid - vfat /dev/sdb1 rw,fmask=0022
42 27 0:39 /sub\\134dir /tmp rw,nosuid,nodev - tmpfs tmpfs rw,size=1024k,noexec
43 42 0:40 / /tmp rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw
";

    #[test]
    fn parses_mountinfo() {
        let mounts = parse_mountinfo(MOUNTINFO).unwrap();
        assert_eq!(mounts.len(), 5);
        assert_eq!(mounts[0].mount_point, b"/");
        assert_eq!(mounts[0].mount_options, ["rw", "relatime"]);
        assert_eq!(mounts[0].super_options, ["rw", "discard"]);
        // Two optional fields, then the separator.
        assert_eq!(mounts[1].mount_point, b"/usr");
        assert_eq!(mounts[1].super_options, ["ro"]);
        // No optional fields; an escaped space.
        assert_eq!(mounts[2].mount_point, b"/mnt/my disk");
        assert_eq!(mounts[2].super_options, ["rw", "fmask=0022"]);
        // Superblock options join the per-mount ones, except ro/rw.
        assert_eq!(
            mounts[3].options(),
            ["rw", "nosuid", "nodev", "size=1024k", "noexec"]
        );
        assert_eq!(
            crate::source::mountinfo::unescape(b"a\\040b\\011c\\012d\\134e"),
            b"a b\tc\nd\\e"
        );
        assert_eq!(
            crate::source::mountinfo::unescape(b"\\x\\04\\999"),
            b"\\x\\04\\999"
        );
        assert!(
            parse_mountinfo(b"27 1 254:0 / / rw shared:1 ext4 /dev/vda rw\n")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(parse_mountinfo(b"27 1 254:0 / / rw - ext4\n").is_err());
        assert!(parse_mountinfo(b"\n\n").unwrap().is_empty());
    }

    fn rule(path: &str, options: &[&str]) -> MountRule {
        MountRule {
            path: path.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn mount_rules_on_a_sample_table() {
        let config = RuntimeConfig {
            mounts: vec![
                rule("/usr", &["ro", "nodev"]),
                rule("/", &["ro"]),
                rule("/tmp", &["noexec", "nosuid"]),
                rule("/mnt/my disk", &["nodev"]),
                rule("/var", &["ro"]),
            ],
            ..RuntimeConfig::default()
        };
        let mut findings = Vec::new();
        mount_findings(&config, &parse_mountinfo(MOUNTINFO).unwrap(), &mut findings);
        let got: Vec<(&str, &[String])> = findings
            .iter()
            .map(|f| (f.mountpoint.as_str(), f.observed.as_slice()))
            .collect();
        // /usr holds; /tmp: the top mount (43) counts; /var is no mount point.
        assert_eq!(
            got,
            [
                (
                    "/",
                    &["rw".to_string(), "relatime".into(), "discard".into()][..]
                ),
                (
                    "/mnt/my disk",
                    &["rw".to_string(), "nosuid".into(), "fmask=0022".into()][..]
                ),
            ]
        );
        assert_eq!(findings[0].expected, ["ro"]);
        assert_eq!(findings[0].severity, Severity::High);
    }

    #[test]
    fn mount_rules_on_this_host() {
        let text = fs::read(HOST_MOUNTINFO).unwrap();
        let mounts = parse_mountinfo(&text).unwrap();
        let root = mounts.iter().rev().find(|m| m.mount_point == b"/").unwrap();
        let root_rw = root.mount_options.iter().any(|o| o == "rw");
        let (_temp, not_a_mount) = temp_dir();
        let bytes = baseline_bytes("", Vec::new());
        let reader = open(&bytes);
        let run = |rules: Vec<MountRule>| {
            let config = RuntimeConfig {
                mounts: rules,
                ..RuntimeConfig::default()
            };
            let mut findings = Vec::new();
            let mut observation = RuntimeObservation::default();
            super::observe(&config, &mut findings, &mut observation);
            assert!(observation.errors.is_empty(), "{:?}", observation.errors);
            findings
        };
        let ro = run(vec![rule("/", &["ro"])]);
        let rw = run(vec![rule("/", &["rw"])]);
        if root_rw {
            assert_eq!(ro.len(), 1, "{ro:?}");
            assert_eq!(ro[0].mountpoint, "/");
            assert!(ro[0].observed.contains(&"rw".to_string()));
            assert!(rw.is_empty(), "{rw:?}");
        } else {
            assert!(ro.is_empty() && rw.len() == 1);
        }
        assert!(run(vec![rule(&not_a_mount.display().to_string(), &["ro"])]).is_empty());
        // And through observe, ordered with the rest.
        let config = RuntimeConfig {
            mounts: vec![rule("/", &[if root_rw { "ro" } else { "rw" }])],
            ..RuntimeConfig::default()
        };
        let observation = observe(&config, &reader, None);
        assert!(observation
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Mount(m) if m.mountpoint == "/")));
    }
}
