//! Which paths the baseline could have recorded: the part of the filesystem its policy
//! walked.

use crate::policy::Policy;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

/// The part of the filesystem the baseline's policy walked.
pub(super) struct Scope {
    policy: Option<Policy>,
    /// With `one_filesystem`, the devices of the scan paths: the walker records mount
    /// points but does not cross them.
    devices: Option<Vec<u64>>,
}

impl Scope {
    pub(super) fn of(policy: Policy) -> Scope {
        // Mirrors the walker (source::files): the devices of the scan paths themselves,
        // without following a symlinked scan path.
        let devices = policy.config().scan.one_filesystem.then(|| {
            policy
                .scan_paths()
                .iter()
                .filter_map(|p| fs::symlink_metadata(std::ffi::OsStr::from_bytes(p)).ok())
                .map(|m| m.dev())
                .collect()
        });
        Scope {
            policy: Some(policy),
            devices,
        }
    }

    pub(super) fn everything() -> Scope {
        Scope {
            policy: None,
            devices: None,
        }
    }

    /// True when the walk covered `path` (in a scan path, not excluded).
    pub(super) fn covers(&self, path: &[u8]) -> bool {
        self.policy
            .as_ref()
            .is_none_or(|p| p.in_scope(path) && !p.state_for(path).excluded)
    }

    /// True when the walk covered `path`, a file on device `dev`.
    pub(super) fn covers_file(&self, path: &[u8], dev: Option<u64>) -> bool {
        let same_filesystem = match (&self.devices, dev) {
            (Some(devices), Some(dev)) => devices.contains(&dev),
            _ => true,
        };
        same_filesystem && self.covers(path)
    }
}
