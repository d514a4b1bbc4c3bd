//! Which process holds a TCP connection to a port on loopback, read from /proc: how a
//! test finds the replica whose delivery to a receiver is in flight, to kill that one.

use std::collections::HashSet;

/// The socket inodes of established connections to `port` (any local address).
fn inodes_to(port: u16) -> HashSet<String> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(remote), Some(state), Some(inode)) =
                (fields.get(2), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let remote_port = remote
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port) && *state == "01" {
                inodes.insert((*inode).to_string());
            }
        }
    }
    inodes
}

/// True when process `pid` has an established TCP connection to `port`.
pub fn connected_to(pid: u32, port: u16) -> bool {
    let inodes = inodes_to(port);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .is_some_and(|inode| inodes.contains(inode))
        })
    })
}
