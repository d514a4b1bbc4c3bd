//! Which containers run on this host, found from the kernel's own tables rather than
//! from any runtime: every overlay mount with an upper layer in PID 1's mount table,
//! every process whose root directory is such a mount (or, in a mount namespace of its
//! own, an overlay mounted only there), and the mounts each container has on top of
//! its root (volumes, bind mounts, tmpfs — data, not image). The runtimes' metadata
//! ([`super::metadata`]) then gives each one its name.
//!
//! An overlay mount that no runtime describes and that no process uses as its root is
//! not a container (an image build, a live system's root): it is left alone.

use super::metadata::RuntimeState;
use super::overlay::{layers_of, Layers};
use super::ContainerMeta;
use crate::source::mountinfo::{self, MountLine};
use driftwatch_protocol::report::ContainerRef;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One running container.
#[derive(Clone, Debug)]
pub struct Container {
    /// Who it is.
    pub meta: ContainerMeta,
    /// Its root file system's layers.
    pub layers: Layers,
    /// Where its root is mounted on the host (its merged view).
    pub root: PathBuf,
    /// Its processes.
    pub pids: Vec<i32>,
    /// Paths inside it where something else is mounted (never judged).
    pub mounts: Vec<Vec<u8>>,
    /// Its root's device: a process whose root is on it is one of its processes.
    pub device: (u32, u32),
}

/// An overlay root found in a mount table.
struct Overlay {
    layers: Layers,
    root: PathBuf,
    pids: Vec<i32>,
    device: (u32, u32),
}

fn dev_pair(dev: u64) -> (u32, u32) {
    (libc::major(dev), libc::minor(dev))
}

/// The device of a process's root directory; `None` once it exited.
pub fn root_device(proc: &Path, pid: i32) -> Option<(u32, u32)> {
    fs::metadata(proc.join(format!("{pid}/root")))
        .ok()
        .map(|m| dev_pair(m.dev()))
}

/// The overlay root in a mount table line, when it has a writable layer.
fn overlay_of(line: &MountLine, root: PathBuf) -> Option<Overlay> {
    if line.fs_type != "overlay" {
        return None;
    }
    let options = mountinfo::split_super_options(&line.super_options);
    // containers/storage and Docker mount `HOME/ID/merged` with layers named relative
    // to HOME.
    let home = root
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    Some(Overlay {
        layers: layers_of(&options, &home)?,
        root,
        pids: Vec::new(),
        device: line.device,
    })
}

fn read_table(path: &Path) -> Option<Vec<MountLine>> {
    fs::read(path).ok().map(|text| mountinfo::parse(&text).0)
}

/// The processes in `proc`, in order.
pub fn numeric_dirs(proc: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = fs::read_dir(proc)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// Root devices of processes known not to be containers' (a root in another file
/// system that is no overlay: an nspawn machine, a chroot), so that their mount tables
/// are read once, not at every discovery.
pub type NotContainers = HashSet<(u32, u32)>;

/// Finds the running containers. `proc` is `/proc`; `state` is what the runtimes
/// recorded.
pub fn discover(
    proc: &Path,
    state: &RuntimeState,
    not_containers: &mut NotContainers,
) -> Vec<Container> {
    let mut overlays: BTreeMap<(u32, u32), Overlay> = BTreeMap::new();
    let host_table = read_table(&proc.join("1/mountinfo"))
        .or_else(|| read_table(&proc.join("self/mountinfo")))
        .unwrap_or_default();
    for line in &host_table {
        let root = PathBuf::from(OsStr::from_bytes(&line.mount_point));
        if let Some(overlay) = overlay_of(line, root) {
            overlays.insert(line.device, overlay);
        }
    }
    let host_root = root_device(proc, 1);
    for pid in numeric_dirs(proc) {
        let Some(device) = root_device(proc, pid) else {
            continue;
        };
        if Some(device) == host_root {
            continue;
        }
        if let Some(overlay) = overlays.get_mut(&device) {
            overlay.pids.push(pid);
            continue;
        }
        if not_containers.contains(&device) {
            continue;
        }
        // Mounted only inside the process's own mount namespace.
        let Some(table) = read_table(&proc.join(format!("{pid}/mountinfo"))) else {
            continue;
        };
        let own_root = table
            .iter()
            .rev()
            .find(|line| line.mount_point == b"/" && line.device == device);
        match own_root.and_then(|line| overlay_of(line, proc.join(format!("{pid}/root")))) {
            Some(mut overlay) => {
                overlay.pids.push(pid);
                overlays.insert(device, overlay);
            }
            None => {
                not_containers.insert(device);
            }
        }
    }
    let mut containers: Vec<Container> = overlays
        .into_values()
        .filter_map(|overlay| container(proc, state, overlay))
        .collect();
    containers.sort_by(|a, b| a.meta.reference.id.cmp(&b.meta.reference.id));
    containers
}

fn container(proc: &Path, state: &RuntimeState, overlay: Overlay) -> Option<Container> {
    let meta = match state.by_root.get(&overlay.root) {
        Some(meta) => meta.clone(),
        // Neither described nor in use: not a container.
        None if overlay.pids.is_empty() => return None,
        None => ContainerMeta {
            reference: ContainerRef {
                id: anonymous_id(&overlay.layers.upper),
                runtime: "unknown".to_string(),
                ..ContainerRef::default()
            },
            ..ContainerMeta::default()
        },
    };
    let mut mounts = meta.mounts.clone();
    if let Some(pid) = overlay.pids.first() {
        mounts.extend(inner_mounts(proc, *pid));
    }
    mounts.sort();
    mounts.dedup();
    Some(Container {
        meta,
        layers: overlay.layers,
        root: overlay.root,
        pids: overlay.pids,
        mounts,
        device: overlay.device,
    })
}

/// A stable name for a container no runtime describes: its upper layer's directory
/// (`…/ID/diff` → `ID`).
fn anonymous_id(upper: &Path) -> String {
    let named = match upper.file_name().and_then(OsStr::to_str) {
        Some("diff" | "upper" | "fs") => upper.parent().and_then(Path::file_name),
        _ => upper.file_name(),
    };
    named
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| upper.display().to_string())
}

/// Mount points inside a container, as its process sees them, other than its root.
fn inner_mounts(proc: &Path, pid: i32) -> Vec<Vec<u8>> {
    read_table(&proc.join(format!("{pid}/mountinfo")))
        .unwrap_or_default()
        .into_iter()
        .map(|line| line.mount_point)
        .filter(|point| point.as_slice() != b"/")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_containers_are_named_by_their_layer() {
        assert_eq!(
            anonymous_id(Path::new("/var/lib/containers/storage/overlay/abc/diff")),
            "abc"
        );
        assert_eq!(anonymous_id(Path::new("/srv/upper-1")), "upper-1");
    }

    #[test]
    fn overlay_lines_give_layers_relative_to_the_driver_home() {
        let line = mountinfo::parse_line(
            b"53 49 0:43 / /s/overlay/ID/merged rw - overlay overlay rw,lowerdir=l/A:l/B,upperdir=/s/overlay/ID/diff,workdir=/s/overlay/ID/work",
        )
        .unwrap();
        let overlay = overlay_of(&line, PathBuf::from("/s/overlay/ID/merged")).unwrap();
        assert_eq!(
            overlay.layers.lowers,
            [
                PathBuf::from("/s/overlay/l/A"),
                PathBuf::from("/s/overlay/l/B")
            ]
        );
        let tmpfs = mountinfo::parse_line(b"1 2 0:5 / /tmp rw - tmpfs tmpfs rw").unwrap();
        assert!(overlay_of(&tmpfs, PathBuf::from("/tmp")).is_none());
    }
}
