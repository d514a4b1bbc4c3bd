//! Who this host is: its kernel hostname and its machine id. Read by the configuration
//! (the collector host id's default), by reports and by heartbeats.

use std::fs;
use std::path::Path;

/// The kernel's hostname.
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_default()
}

/// `/etc/machine-id` inside the root.
pub fn machine_id(root: &Path) -> Option<String> {
    let id = fs::read_to_string(root.join("etc/machine-id")).ok()?;
    let id = id.trim();
    (!id.is_empty() && id.len() <= 64).then(|| id.to_string())
}
