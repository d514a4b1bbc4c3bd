//! The full check of a container's files: its upper layer walked by open directory,
//! each entry compared with the image's as [`super::overlay`] judges it.
//!
//! A path-by-path comparison reaches every entry from the layer's root again, in the
//! upper layer and in each lower one; here each directory is opened once, in the upper
//! layer and in every image layer that contributes to it (overlayfs's own lookup:
//! topmost first, a missing directory passes on to the layers below, a file, a
//! symlink or a whiteout hides them, an opaque directory is the last), and each entry
//! is one `fstatat` per side before anything is read. Contents are read only when
//! both sides are regular files of equal size, and the image's files, which the
//! containers of one image share, are hashed once per check ([`ImageHashes`]). No
//! lookup ever follows a symlink.

use super::overlay::{entry_of, modified, Change, Layers, Walked};
use crate::source::files::{ContentHashes, FileIdentity, KnownHashes, LayerInspector, ScanItem};
use driftwatch_protocol::entry::Entry;
use driftwatch_protocol::report::FileChange;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Directories nested deeper than this are compared path by path: each open level
/// holds a descriptor per layer, and a hostile depth must not exhaust them.
const MAX_OPEN_DEPTH: usize = 48;

/// Content hashes of the images' files, shared by the containers of one check: the
/// containers of one image share its lower layers. Keyed by identity (device, inode,
/// size, times), so a layer file changed on the host is read again.
#[derive(Default)]
pub struct ImageHashes(Mutex<HashMap<FileIdentity, ContentHashes>>);

impl KnownHashes for ImageHashes {
    fn get(&self, _path: &[u8], identity: &FileIdentity) -> Option<ContentHashes> {
        self.0.lock().ok()?.get(identity).copied()
    }
}

impl ImageHashes {
    fn remember(&self, item: &Option<ScanItem>) {
        let Some(ScanItem::Observed {
            entry,
            identity: Some(identity),
            error: None,
            ..
        }) = item
        else {
            return;
        };
        if let (Some(blake3), Ok(mut known)) = (entry.blake3, self.0.lock()) {
            let hashes = ContentHashes {
                blake3,
                sha256: entry.sha256,
            };
            known.insert(*identity, hashes);
        }
    }
}

/// One directory of the walk, open in the upper layer and in each image layer that
/// contributes to it, topmost first.
struct OpenDir {
    path: Vec<u8>,
    upper: Arc<OwnedFd>,
    lowers: Vec<Arc<OwnedFd>>,
}

fn open_dir(at: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(at, name, flags, Mode::empty())
}

fn stat_at(dir: &OwnedFd, name: &CStr) -> rustix::io::Result<Stat> {
    rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)
}

fn kind(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

fn is_whiteout(stat: &Stat) -> bool {
    kind(stat) == FileType::CharacterDevice && stat.st_rdev == 0
}

/// Whether an overlayfs attribute (`trusted.overlay.NAME` or `user.overlay.NAME`) of
/// the directory `dir` is `y`.
fn dir_xattr_is(dir: &OwnedFd, suffix: &str) -> bool {
    ["trusted.overlay.", "user.overlay."].iter().any(|prefix| {
        let mut value = [0u8; 2];
        let name = format!("{prefix}{suffix}");
        rustix::fs::fgetxattr(dir.as_fd(), name.as_str(), &mut value) == Ok(1) && value[0] == b'y'
    })
}

/// Whether the entry `name` of `dir` carries an overlayfs attribute, looked up through
/// the directory's descriptor (`/proc/self/fd`) without following a link.
fn entry_has_xattr(dir: &OwnedFd, name: &CStr, suffix: &str) -> bool {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name.to_bytes());
    let path = Path::new(OsStr::from_bytes(&path));
    ["trusted.overlay.", "user.overlay."]
        .iter()
        .any(|prefix| matches!(xattr::get(path, format!("{prefix}{suffix}")), Ok(Some(_))))
}

/// The names in a directory, sorted.
fn list(dir: &OwnedFd) -> rustix::io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir.as_fd())? {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    names.sort_unstable();
    Ok(names)
}

fn child_path(parent: &[u8], name: &CStr) -> Vec<u8> {
    let mut path = parent.to_vec();
    if parent != b"/" {
        path.push(b'/');
    }
    path.extend_from_slice(name.to_bytes());
    path
}

fn message(err: Errno) -> String {
    std::io::Error::from(err).to_string()
}

/// Walks `layers`' upper layer and compares each entry with the image, skipping (and
/// not descending into) paths for which `skip` holds.
pub fn walk(layers: &Layers, skip: &dyn Fn(&[u8]) -> bool, images: &ImageHashes) -> Walked {
    let mut walker = Walker {
        layers,
        device: 0,
        skip,
        images,
        inspector: LayerInspector::default(),
        walked: Walked::default(),
    };
    let open = |path: &Path| {
        rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(Arc::new)
    };
    let upper = match open(&layers.upper) {
        Ok(fd) => {
            walker.device = rustix::fs::fstat(&fd).map_or(0, |st| st.st_dev);
            fd
        }
        Err(err) => {
            walker.walked.errors.push((b"/".to_vec(), message(err)));
            return walker.walked;
        }
    };
    let mut lowers = Vec::new();
    for lower in &layers.lowers {
        match open(lower) {
            Ok(fd) => lowers.push(fd),
            Err(err) => walker.walked.errors.push((
                b"/".to_vec(),
                format!("image layer {}: {}", lower.display(), message(err)),
            )),
        }
    }
    let top = OpenDir {
        path: b"/".to_vec(),
        upper,
        lowers,
    };
    walker.visit(&top, c".", b"/".to_vec(), 0);
    walker.walked
}

struct Walker<'a> {
    layers: &'a Layers,
    /// The upper layer's device: a file system mounted inside it is not its content.
    device: u64,
    skip: &'a dyn Fn(&[u8]) -> bool,
    images: &'a ImageHashes,
    inspector: LayerInspector,
    walked: Walked,
}

impl Walker<'_> {
    fn error(&mut self, path: &[u8], error: String) {
        self.walked.errors.push((path.to_vec(), error));
    }

    /// One entry of `parent` (`.`: the directory itself), then what it holds.
    fn visit(&mut self, parent: &OpenDir, name: &CStr, path: Vec<u8>, depth: usize) {
        if (self.skip)(&path) {
            return;
        }
        let upper = match stat_at(&parent.upper, name) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => return,
            Err(err) => return self.error(&path, message(err)),
        };
        match self.change(parent, name, &path, &upper) {
            Ok(Some(change)) => self.walked.changes.push(change),
            Ok(None) => {}
            Err(error) => self.error(&path, error),
        }
        if kind(&upper) == FileType::Directory && upper.st_dev == self.device {
            self.descend(parent, name, path, depth);
        }
    }

    /// The image's entry for `name` of `parent`: the topmost layer that has it, unless
    /// it is a whiteout there.
    fn lower(&self, parent: &OpenDir, name: &CStr) -> Result<Option<(usize, Stat)>, String> {
        for (index, lower) in parent.lowers.iter().enumerate() {
            match stat_at(lower, name) {
                Ok(stat) if is_whiteout(&stat) => return Ok(None),
                Ok(stat) => return Ok(Some((index, stat))),
                Err(Errno::NOENT) => {}
                Err(err) => return Err(message(err)),
            }
        }
        Ok(None)
    }

    fn inspect(
        &mut self,
        dir: &Arc<OwnedFd>,
        name: &CStr,
        path: &[u8],
        hash: bool,
        image: bool,
    ) -> Result<Option<Entry>, String> {
        let known: Option<&dyn KnownHashes> = image.then_some(self.images);
        let item = self
            .inspector
            .inspect(dir, name, path.to_vec(), hash, known);
        if image && hash {
            self.images.remember(&item);
        }
        entry_of(item, hash)
    }

    /// How the entry differs from the image's, as [`Layers::compare`] judges it.
    fn change(
        &mut self,
        parent: &OpenDir,
        name: &CStr,
        path: &[u8],
        upper: &Stat,
    ) -> Result<Option<Change>, String> {
        let lower = self.lower(parent, name)?;
        if is_whiteout(upper) {
            let Some((index, _)) = lower else {
                return Ok(None);
            };
            let before = self.inspect(&parent.lowers[index], name, path, false, true)?;
            return Ok(before.map(|before| Change {
                change: FileChange::Removed,
                before: Some(before),
                after: None,
                attributes: Vec::new(),
            }));
        }
        let file = kind(upper) == FileType::RegularFile;
        let Some((index, lower)) = lower else {
            let after = self.inspect(&parent.upper, name, path, file, false)?;
            return Ok(after.map(|after| Change {
                change: FileChange::Added,
                before: None,
                after: Some(after),
                attributes: Vec::new(),
            }));
        };
        // Contents can only be told apart by reading them when the sizes are equal; a
        // metadata-only copy-up (`overlay.metacopy`, no data blocks of its own) keeps
        // the data in the image.
        let hash = file
            && kind(&lower) == FileType::RegularFile
            && upper.st_size == lower.st_size
            && !(upper.st_blocks == 0
                && upper.st_size > 0
                && entry_has_xattr(&parent.upper, name, "metacopy"));
        let before = self.inspect(&parent.lowers[index], name, path, hash, true)?;
        let after = self.inspect(&parent.upper, name, path, hash, false)?;
        Ok(match (before, after) {
            (Some(before), Some(after)) => modified(before, after),
            _ => None,
        })
    }

    /// The image's directories at `name` of `parent`, as overlayfs looks them up.
    fn lower_dirs(&mut self, parent: &OpenDir, name: &CStr, path: &[u8]) -> Vec<Arc<OwnedFd>> {
        let mut dirs = Vec::new();
        for lower in &parent.lowers {
            match open_dir(lower.as_fd(), name) {
                Ok(dir) => {
                    let opaque = dir_xattr_is(&dir, "opaque");
                    dirs.push(Arc::new(dir));
                    if opaque {
                        break;
                    }
                }
                Err(Errno::NOENT) => {}
                // A file, a symlink or a whiteout: the layers below are hidden.
                Err(Errno::NOTDIR | Errno::LOOP) => break,
                Err(err) => {
                    self.error(path, format!("image directory: {}", message(err)));
                    break;
                }
            }
        }
        dirs
    }

    fn descend(&mut self, parent: &OpenDir, name: &CStr, path: Vec<u8>, depth: usize) {
        if depth >= MAX_OPEN_DEPTH {
            return self.by_path(&path);
        }
        let upper = match open_dir(parent.upper.as_fd(), name) {
            Ok(dir) => Arc::new(dir),
            Err(Errno::NOENT | Errno::NOTDIR) => return,
            Err(err) => return self.error(&path, message(err)),
        };
        let lowers = self.lower_dirs(parent, name, &path);
        let dir = OpenDir {
            path,
            upper,
            lowers,
        };
        if dir_xattr_is(&dir.upper, "opaque") {
            self.layers
                .hidden_by_opaque(&dir.path, self.skip, &mut self.walked);
        }
        let names = match list(&dir.upper) {
            Ok(names) => names,
            Err(err) => return self.error(&dir.path, message(err)),
        };
        for child in names {
            let path = child_path(&dir.path, &child);
            self.visit(&dir, &child, path, depth + 1);
        }
    }

    /// What lies below a directory nested too deep, compared path by path.
    fn by_path(&mut self, dir: &[u8]) {
        let top = self.layers.upper.join(OsStr::from_bytes(&dir[1..]));
        let walker = walkdir::WalkDir::new(&top)
            .follow_links(false)
            .same_file_system(true)
            .sort_by_file_name()
            .min_depth(1)
            .into_iter()
            .filter_entry(|e| {
                !(self.skip)(&super::overlay::container_path(
                    &self.layers.upper,
                    e.path(),
                ))
            });
        for entry in walker {
            let path = match entry {
                Ok(entry) => super::overlay::container_path(&self.layers.upper, entry.path()),
                Err(err) => {
                    self.error(dir, err.to_string());
                    continue;
                }
            };
            match self.layers.compare(&path) {
                Ok(Some(change)) => self.walked.changes.push(change),
                Ok(None) => {}
                Err(error) => self.error(&path, error),
            }
        }
    }
}
