//! A container's file drift: what its overlay upper (writable) layer holds, compared
//! with the image's lower layers.
//!
//! Every entry of the upper layer was added or touched after the container started:
//! it is looked up in the lower layers (topmost first, stopping at a whiteout or an
//! opaque directory) and the attributes that differ are named. A copy-up without
//! change — a file opened for writing and closed, a directory copied up because
//! something below it changed — differs in nothing and is not drift; content is
//! compared by hash only when the sizes are equal. Whiteouts (character devices 0/0)
//! are removals; an opaque directory (`trusted.overlay.opaque` or
//! `user.overlay.opaque`) removes everything below it that the lower layers had. The
//! cost is proportional to the upper layer, not to the image.

use crate::diff::changed_attributes;
use crate::policy::AttributeSet;
use crate::source::files::{inspect_path, ScanItem};
use driftwatch_protocol::entry::{Entry, FileType};
use driftwatch_protocol::report::{Attribute, FileChange};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The attributes compared: all but the modification time, which a rewrite with the
/// same content moves (the content hash says whether anything changed).
pub fn checked() -> AttributeSet {
    let compared: Vec<Attribute> = Attribute::ALL
        .into_iter()
        .filter(|a| *a != Attribute::Mtime)
        .collect();
    AttributeSet::of(&compared)
}

/// The layers of one overlay mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layers {
    /// The writable layer.
    pub upper: PathBuf,
    /// The image's layers, topmost first.
    pub lowers: Vec<PathBuf>,
}

/// One difference between a container and its image.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Added, removed or modified.
    pub change: FileChange,
    /// The image's entry.
    pub before: Option<Entry>,
    /// The container's entry.
    pub after: Option<Entry>,
    /// What differs (modified only).
    pub attributes: Vec<Attribute>,
}

/// How an upper-layer walk went.
#[derive(Debug, Default)]
pub struct Walked {
    /// The differences, in walk order.
    pub changes: Vec<Change>,
    /// Paths that could not be examined, and why.
    pub errors: Vec<(Vec<u8>, String)>,
}

fn is_whiteout(entry: &Entry) -> bool {
    entry.file_type == FileType::CharDevice && entry.rdev == 0
}

/// Overlayfs's own bookkeeping, which is not the container's: dropped before comparing.
fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

fn host(layer: &Path, path: &[u8]) -> PathBuf {
    layer.join(OsStr::from_bytes(path.strip_prefix(b"/").unwrap_or(path)))
}

fn xattr_is(layer: &Path, path: &[u8], suffix: &str) -> bool {
    let host = host(layer, path);
    ["trusted.overlay.", "user.overlay."].iter().any(
        |prefix| matches!(xattr::get(&host, format!("{prefix}{suffix}")), Ok(Some(v)) if v == b"y"),
    )
}

fn has_xattr(layer: &Path, path: &[u8], suffix: &str) -> bool {
    let host = host(layer, path);
    ["trusted.overlay.", "user.overlay."]
        .iter()
        .any(|prefix| matches!(xattr::get(&host, format!("{prefix}{suffix}")), Ok(Some(_))))
}

fn observe(layer: &Path, path: &[u8], hash: bool) -> Result<Option<Entry>, String> {
    entry_of(inspect_path(layer, path, hash), hash)
}

/// The entry an inspection found, without overlayfs's own attributes; a content that
/// was to be read and could not be is an error.
pub(super) fn entry_of(item: Option<ScanItem>, hash: bool) -> Result<Option<Entry>, String> {
    match item {
        None => Ok(None),
        Some(ScanItem::Observed {
            mut entry, error, ..
        }) => match error {
            Some(error) if hash => Err(error),
            _ => {
                entry.xattrs.retain(|(name, _)| !is_overlay_xattr(name));
                Ok(Some(entry))
            }
        },
        Some(ScanItem::Unreadable { error, .. }) => Err(error),
    }
}

fn parents(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    (1..path.len())
        .rev()
        .filter(move |at| path[*at] == b'/')
        .map(move |at| &path[..at])
}

thread_local! {
    /// The last directory found to be a real directory (no symlink on the way) in a
    /// layer: a sorted walk asks about the same parent many times in a row.
    static REAL_DIR: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// What the parents of a path are in one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parents {
    /// Every one a directory (none a symlink): the layer may hold the path.
    Dirs,
    /// One is missing: the layer holds nothing there, the layers below may.
    Missing,
    /// One is something else (a file, a symlink, a whiteout): it hides the layers
    /// below, as overlayfs never looks below a lower entry that is not a directory.
    Hidden,
}

/// What the parents of `path` are in `layer`. A hostile image's `/etc -> /` must not
/// make the lookup read the host's files.
fn parents_in(layer: &Path, path: &[u8]) -> Parents {
    let Some(parent) = parents(path).next() else {
        return Parents::Dirs;
    };
    let parent = host(layer, parent);
    if REAL_DIR.with(|known| known.borrow().as_deref() == Some(parent.as_path())) {
        return Parents::Dirs;
    }
    let Ok(relative) = parent.strip_prefix(layer) else {
        return Parents::Hidden;
    };
    let mut current = layer.to_path_buf();
    for component in relative.components() {
        current.push(component);
        match current.symlink_metadata() {
            Ok(meta) if meta.is_dir() => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Parents::Missing,
            _ => return Parents::Hidden,
        }
    }
    REAL_DIR.with(|known| *known.borrow_mut() = Some(parent));
    Parents::Dirs
}

impl Layers {
    /// The image's entry at `path`: the topmost lower layer that has it, unless a
    /// whiteout or an opaque directory on the way hides the layers below.
    pub fn lower(&self, path: &[u8], hash: bool) -> Result<Option<Entry>, String> {
        for (index, lower) in self.lowers.iter().enumerate() {
            match parents_in(lower, path) {
                Parents::Dirs => {}
                Parents::Missing => continue,
                Parents::Hidden => return Ok(None),
            }
            if let Some(entry) = observe(lower, path, hash)? {
                return Ok((!is_whiteout(&entry)).then_some(entry));
            }
            let more = index + 1 < self.lowers.len();
            if more && parents(path).any(|dir| xattr_is(lower, dir, "opaque")) {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// How the container's entry at `path` (which is in the upper layer) differs from
    /// the image's; `None` when it does not.
    pub fn compare(&self, path: &[u8]) -> Result<Option<Change>, String> {
        let Some(after) = observe(&self.upper, path, false)? else {
            return Ok(None);
        };
        let before = self.lower(path, false)?;
        if is_whiteout(&after) {
            return Ok(before.map(|before| Change {
                change: FileChange::Removed,
                before: Some(before),
                after: None,
                attributes: Vec::new(),
            }));
        }
        let Some(before) = before else {
            let after = if after.file_type == FileType::File {
                observe(&self.upper, path, true)?.unwrap_or(after)
            } else {
                after
            };
            return Ok(Some(Change {
                change: FileChange::Added,
                before: None,
                after: Some(after),
                attributes: Vec::new(),
            }));
        };
        let (before, after) = self.with_content(path, before, after)?;
        Ok(modified(before, after))
    }

    /// Both sides hashed when their content can only be told apart by reading it:
    /// regular files of equal size whose upper copy holds data (a metadata-only
    /// copy-up, `overlay.metacopy`, keeps the data in the lower layer).
    fn with_content(
        &self,
        path: &[u8],
        before: Entry,
        after: Entry,
    ) -> Result<(Entry, Entry), String> {
        let both_files = before.file_type == FileType::File && after.file_type == FileType::File;
        if !both_files || before.size != after.size || has_xattr(&self.upper, path, "metacopy") {
            return Ok((before, after));
        }
        let before = self.lower(path, true)?.unwrap_or(before);
        let after = observe(&self.upper, path, true)?.unwrap_or(after);
        Ok((before, after))
    }

    /// Entries of the image below the opaque directory `dir` that the upper layer does
    /// not hold again: removed.
    pub(super) fn hidden_by_opaque(
        &self,
        dir: &[u8],
        skip: &dyn Fn(&[u8]) -> bool,
        walked: &mut Walked,
    ) {
        let mut below = BTreeSet::new();
        for lower in &self.lowers {
            let top = host(lower, dir);
            let real_dir = top.symlink_metadata().is_ok_and(|m| m.is_dir());
            if !real_dir || parents_in(lower, dir) != Parents::Dirs {
                continue;
            }
            for entry in walkdir::WalkDir::new(&top)
                .follow_links(false)
                .min_depth(1)
                .into_iter()
                .flatten()
            {
                if let Ok(relative) = entry.path().strip_prefix(&top) {
                    let mut path = dir.to_vec();
                    path.push(b'/');
                    path.extend_from_slice(relative.as_os_str().as_bytes());
                    below.insert(path);
                }
            }
        }
        for path in below {
            if skip(&path) || host(&self.upper, &path).symlink_metadata().is_ok() {
                continue;
            }
            match self.lower(&path, false) {
                Ok(Some(before)) => walked.changes.push(Change {
                    change: FileChange::Removed,
                    before: Some(before),
                    after: None,
                    attributes: Vec::new(),
                }),
                Ok(None) => {}
                Err(error) => walked.errors.push((path, error)),
            }
        }
    }
}

/// How the image's entry and the container's at one path differ (contents compared by
/// hash when both were read, by size otherwise); `None` when they do not.
pub(super) fn modified(before: Entry, after: Entry) -> Option<Change> {
    let mut attributes = changed_attributes(&before, &after, checked());
    let content_differs = before.file_type == FileType::File
        && after.file_type == FileType::File
        && before.size != after.size;
    if content_differs && !attributes.contains(&Attribute::Content) {
        attributes.push(Attribute::Content);
        attributes.sort();
    }
    (!attributes.is_empty()).then_some(Change {
        change: FileChange::Modified,
        before: Some(before),
        after: Some(after),
        attributes,
    })
}

/// The path inside the container of a host path in a layer.
pub fn container_path(layer: &Path, host: &Path) -> Vec<u8> {
    let relative = host.strip_prefix(layer).unwrap_or(host);
    let mut path = b"/".to_vec();
    path.extend_from_slice(relative.as_os_str().as_bytes());
    path
}

/// The layers named by an overlay mount's options (`lowerdir=a:b`, `lowerdir+=…`,
/// `upperdir=…`). Relative layer paths (containers/storage and Docker mount with short
/// `l/…` names from their driver directory) are resolved against `driver_home`.
pub fn layers_of(options: &[Vec<u8>], driver_home: &Path) -> Option<Layers> {
    let resolve = |raw: &[u8]| -> PathBuf {
        let path = Path::new(OsStr::from_bytes(raw));
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            driver_home.join(path)
        }
    };
    let mut upper = None;
    let mut lowers = Vec::new();
    for option in options {
        if let Some(value) = option.strip_prefix(b"upperdir=") {
            upper = Some(resolve(value));
        } else if let Some(value) = option.strip_prefix(b"lowerdir=") {
            lowers.extend(split_lowerdir(value).iter().map(|l| resolve(l)));
        } else if let Some(value) = option.strip_prefix(b"lowerdir+=") {
            lowers.push(resolve(value));
        }
    }
    Some(Layers {
        upper: upper?,
        lowers,
    })
}

/// Splits `lowerdir` at colons not escaped with a backslash; data-only layers after
/// `::` hold no entries of their own and are left out.
fn split_lowerdir(value: &[u8]) -> Vec<Vec<u8>> {
    let mut layers = vec![Vec::new()];
    let mut bytes = value.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\\' => {
                if let (Some(&next), Some(last)) = (bytes.next(), layers.last_mut()) {
                    last.push(next);
                }
            }
            b':' => layers.push(Vec::new()),
            _ => {
                if let Some(last) = layers.last_mut() {
                    last.push(byte);
                }
            }
        }
    }
    if let Some(data_only) = layers.iter().position(Vec::is_empty) {
        layers.truncate(data_only);
    }
    layers
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// The full check's walk, each change it finds held against the path-by-path
    /// comparison of the daemon's re-checks.
    fn walk(layers: &Layers, skip: &dyn Fn(&[u8]) -> bool) -> Walked {
        let walked = super::super::walk::walk(layers, skip, &Default::default());
        for change in &walked.changes {
            let path = &change
                .after
                .as_ref()
                .or(change.before.as_ref())
                .unwrap()
                .path;
            if change.change != FileChange::Removed {
                assert_eq!(
                    layers.compare(path).unwrap().as_ref(),
                    Some(change),
                    "{path:?}"
                );
            }
        }
        walked
    }

    #[test]
    fn lowerdir_options_are_split_and_resolved() {
        let options = vec![
            b"rw".to_vec(),
            b"lowerdir=l/AB:/abs/x\\:y::/data".to_vec(),
            b"upperdir=/var/u/diff".to_vec(),
        ];
        let layers = layers_of(&options, Path::new("/home")).unwrap();
        assert_eq!(layers.upper, PathBuf::from("/var/u/diff"));
        assert_eq!(
            layers.lowers,
            [PathBuf::from("/home/l/AB"), PathBuf::from("/abs/x:y")]
        );
        assert!(layers_of(&[b"lowerdir=/a".to_vec()], Path::new("/")).is_none());
    }

    /// A hand-made pair of layers, judged as overlayfs would merge them.
    #[test]
    fn upper_entries_compare_with_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        for d in [&lower, &upper] {
            fs::create_dir_all(d.join("etc")).unwrap();
            fs::create_dir_all(d.join("bin")).unwrap();
        }
        fs::write(lower.join("etc/motd"), b"hello").unwrap();
        fs::write(lower.join("etc/same"), b"same").unwrap();
        fs::write(lower.join("etc/edited"), b"aaaa").unwrap();
        fs::write(lower.join("bin/tool"), b"elf").unwrap();
        // A copy-up without change, an edit of equal size, a new executable, a
        // setuid bit.
        fs::copy(lower.join("etc/same"), upper.join("etc/same")).unwrap();
        fs::write(upper.join("etc/edited"), b"bbbb").unwrap();
        fs::write(upper.join("bin/evil"), b"#!/bin/sh").unwrap();
        fs::set_permissions(upper.join("bin/evil"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(upper.join("bin/tool"), b"elf").unwrap();
        fs::set_permissions(upper.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        for d in [&lower, &upper] {
            for sub in ["", "/etc", "/bin"] {
                let p = format!("{}{sub}", d.display());
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let layers = Layers {
            upper: upper.clone(),
            lowers: vec![lower.clone()],
        };
        let walked = walk(&layers, &|_| false);
        assert!(walked.errors.is_empty(), "{:?}", walked.errors);
        let summary: Vec<(String, FileChange, Vec<Attribute>)> = walked
            .changes
            .iter()
            .map(|c| {
                let path = &c.after.as_ref().or(c.before.as_ref()).unwrap().path;
                (
                    String::from_utf8_lossy(path).into_owned(),
                    c.change,
                    c.attributes.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("/bin/evil".into(), FileChange::Added, vec![]),
                (
                    "/bin/tool".into(),
                    FileChange::Modified,
                    vec![Attribute::Mode]
                ),
                (
                    "/etc/edited".into(),
                    FileChange::Modified,
                    vec![Attribute::Content]
                ),
            ]
        );
        let skipped = walk(&layers, &|p| p.starts_with(b"/bin"));
        assert_eq!(skipped.changes.len(), 1);
    }

    /// Whiteouts and opaque directories, as overlayfs writes them (needs root: a
    /// character device and a `trusted.` attribute).
    #[test]
    fn whiteouts_and_opaque_directories_are_removals() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // CI runs as root: there a skip would hide the test.
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "needs root under CI"
            );
            eprintln!("skipping: needs root (mknod, trusted.* xattrs)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        fs::create_dir_all(lower.join("etc/conf.d")).unwrap();
        fs::write(lower.join("etc/passwd"), b"root").unwrap();
        fs::write(lower.join("etc/conf.d/a"), b"a").unwrap();
        fs::write(lower.join("etc/conf.d/b"), b"b").unwrap();
        fs::create_dir_all(upper.join("etc/conf.d")).unwrap();
        fs::write(upper.join("etc/conf.d/b"), b"b").unwrap();
        let whiteout =
            std::ffi::CString::new(upper.join("etc/passwd").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; a 0/0 character device is a whiteout.
        assert_eq!(
            unsafe { libc::mknod(whiteout.as_ptr(), libc::S_IFCHR | 0o600, 0) },
            0
        );
        xattr::set(upper.join("etc/conf.d"), "trusted.overlay.opaque", b"y").unwrap();
        for d in [&lower, &upper] {
            for sub in ["", "/etc", "/etc/conf.d"] {
                let p = format!("{}{sub}", d.display());
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let layers = Layers {
            upper,
            lowers: vec![lower],
        };
        let walked = walk(&layers, &|_| false);
        let removed: Vec<String> = walked
            .changes
            .iter()
            .filter(|c| c.change == FileChange::Removed)
            .map(|c| String::from_utf8_lossy(&c.before.as_ref().unwrap().path).into_owned())
            .collect();
        assert_eq!(removed, ["/etc/conf.d/a", "/etc/passwd"], "{walked:?}");
        assert_eq!(walked.changes.len(), 2, "{walked:?}");
    }

    #[test]
    fn a_symlink_in_the_image_never_leads_out_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"host").unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        fs::create_dir_all(&lower).unwrap();
        std::os::unix::fs::symlink(outside.path(), lower.join("etc")).unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::write(upper.join("etc/secret"), b"mine").unwrap();
        let layers = Layers {
            upper,
            lowers: vec![lower],
        };
        assert_eq!(layers.lower(b"/etc/secret", false), Ok(None));
        let change = layers.compare(b"/etc/secret").unwrap().unwrap();
        assert_eq!(change.change, FileChange::Added);
    }

    /// An image of several layers: a directory missing from an upper image layer
    /// passes the lookup on to the layers below; a file there hides them.
    #[test]
    fn lower_layers_are_looked_up_as_overlayfs_does() {
        let dir = tempfile::tempdir().unwrap();
        let (top, base, upper) = (
            dir.path().join("top"),
            dir.path().join("base"),
            dir.path().join("upper"),
        );
        fs::create_dir_all(top.join("app")).unwrap();
        fs::write(top.join("app/main"), b"app").unwrap();
        fs::write(top.join("opt"), b"a file hiding the base's /opt").unwrap();
        fs::create_dir_all(base.join("usr/bin")).unwrap();
        fs::create_dir_all(base.join("opt")).unwrap();
        fs::write(base.join("usr/bin/tool"), b"elf").unwrap();
        fs::write(base.join("opt/old"), b"old").unwrap();
        // Copied up without change from the base layer, and a file where the top
        // layer has a file (so the base's /opt/old is not the image's).
        fs::create_dir_all(upper.join("usr/bin")).unwrap();
        fs::copy(base.join("usr/bin/tool"), upper.join("usr/bin/tool")).unwrap();
        fs::create_dir_all(upper.join("opt")).unwrap();
        fs::write(upper.join("opt/old"), b"old").unwrap();
        for d in [&top, &base, &upper] {
            for sub in ["", "/usr", "/usr/bin", "/opt", "/app"] {
                let p = format!("{}{sub}", d.display());
                if Path::new(&p).is_dir() {
                    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
                }
            }
        }
        let layers = Layers {
            upper,
            lowers: vec![top, base],
        };
        let walked = walk(&layers, &|_| false);
        assert!(walked.errors.is_empty(), "{:?}", walked.errors);
        let summary: Vec<(String, FileChange)> = walked
            .changes
            .iter()
            .map(|c| {
                let path = &c.after.as_ref().or(c.before.as_ref()).unwrap().path;
                (String::from_utf8_lossy(path).into_owned(), c.change)
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("/opt".into(), FileChange::Modified),
                ("/opt/old".into(), FileChange::Added),
            ],
            "{walked:?}"
        );
        assert_eq!(
            layers.lower(b"/usr/bin/tool", false).unwrap().unwrap().size,
            3
        );
        assert_eq!(layers.lower(b"/opt/old", false), Ok(None));
    }
}
