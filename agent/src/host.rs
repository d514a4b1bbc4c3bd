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
    // The root may be hostile: a link to `/dev/zero` or a FIFO here must not hang us.
    // (`source::rootfs` imports nothing of the agent, so this adds no cycle.)
    let id = match crate::source::rootfs::read_small_in_root(root, b"/etc/machine-id", 4096) {
        Ok(id) => String::from_utf8(id).ok()?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => {
            tracing::warn!("machine id not read: {err}");
            return None;
        }
    };
    let id = id.trim();
    (!id.is_empty() && id.len() <= 64).then(|| id.to_string())
}
