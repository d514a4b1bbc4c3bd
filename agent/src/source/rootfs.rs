//! Reading files inside a root the way that root's own system would, and safely.
//!
//! `--root` points at a mounted image or a chroot. Its absolute symlinks
//! (`/var/lib/rpm -> /usr/lib/sysimage/rpm`, `/lib -> /usr/lib`) name paths of the
//! image; left to the kernel they would resolve on the scanning host and read the
//! host's files instead. Every source that follows a path inside a root (package
//! databases, package verification) resolves it here. The scan engine itself never
//! follows links and only uses [`open_no_follow`] and [`io_message`].

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Links followed in one resolution before it fails with `ELOOP`, as Linux does.
pub const MAX_SYMLINK_HOPS: usize = 40;

fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
}

/// The host path of `path` (absolute or relative, inside `root`), following symlinks
/// the way the root's own system would: an absolute target restarts at the root, and
/// `..` never climbs above it. Fails like the kernel (`NotFound`, `ELOOP`, …) when a
/// component cannot be followed. The last component is followed too when it is a link.
///
/// Between this resolution and an open, a link could be swapped by someone who can
/// write inside the root: an image is not modified while it is read, and on a live host
/// only root can write there.
pub fn resolve_in_root(root: &Path, path: &[u8]) -> io::Result<PathBuf> {
    let join = |parts: &[Vec<u8>]| {
        let mut host = root.to_path_buf();
        host.extend(parts.iter().map(|part| OsStr::from_bytes(part)));
        host
    };
    let mut resolved: Vec<Vec<u8>> = Vec::new();
    // Components still to walk, the next one last.
    let mut pending: Vec<Vec<u8>> = components(path).rev().map(<[u8]>::to_vec).collect();
    let mut hops = 0;
    while let Some(component) = pending.pop() {
        if component == b".." {
            resolved.pop();
            continue;
        }
        resolved.push(component);
        let candidate = join(&resolved);
        if !fs::symlink_metadata(&candidate)?.file_type().is_symlink() {
            continue;
        }
        hops += 1;
        if hops > MAX_SYMLINK_HOPS {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        let target = fs::read_link(&candidate)?.into_os_string().into_vec();
        resolved.pop();
        if target.first() == Some(&b'/') {
            resolved.clear();
        }
        pending.extend(components(&target).rev().map(<[u8]>::to_vec));
    }
    Ok(join(&resolved))
}

/// Opens a file for reading without following a symlink and without blocking on a
/// FIFO that was swapped in after it was listed; `O_NOATIME` where permitted, so that
/// reading leaves no trace in access times.
pub fn open_no_follow(host: &Path) -> io::Result<File> {
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    let open = |extra: i32| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags | extra)
            .open(host)
    };
    match open(libc::O_NOATIME) {
        // O_NOATIME is refused for files we do not own unless we hold CAP_FOWNER.
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => open(0),
        other => other,
    }
}

/// Opens `inside` (a path inside `root`) for reading the way a file of the image must
/// be read from a possibly hostile root: its directories resolved inside the root, the
/// last component not followed (a link to `/dev/zero` or to the host's own files is
/// refused), and only a regular file accepted (a FIFO would block or never end). The
/// error names the path.
pub fn open_regular_in_root(root: &Path, inside: &[u8]) -> io::Result<(File, PathBuf)> {
    let relative = inside.strip_prefix(b"/").unwrap_or(inside);
    let (dir, name) = match relative.iter().rposition(|&b| b == b'/') {
        Some(at) => (&relative[..at], &relative[at + 1..]),
        None => (&[][..], relative),
    };
    let named = |err: io::Error, path: &Path| {
        io::Error::new(
            err.kind(),
            format!("{}: {}", path.display(), io_message(&err)),
        )
    };
    let host = resolve_in_root(root, dir)
        .map_err(|err| named(err, &root.join(OsStr::from_bytes(relative))))?
        .join(OsStr::from_bytes(name));
    let file = match open_no_follow(&host) {
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
            return Err(io::Error::other(format!(
                "{} is a symbolic link; not followed",
                host.display()
            )))
        }
        other => other.map_err(|err| named(err, &host))?,
    };
    if !file.metadata().map_err(|err| named(err, &host))?.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            host.display()
        )));
    }
    Ok((file, host))
}

/// Reads a small file of the image through [`open_regular_in_root`], refusing more
/// than `max` bytes.
pub fn read_small_in_root(root: &Path, inside: &[u8], max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let (file, host) = open_regular_in_root(root, inside)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::other(format!(
            "{} is larger than {max} bytes",
            host.display()
        )));
    }
    Ok(bytes)
}

/// An I/O error for people: `permission denied`, without Rust's ` (os error 13)`.
pub fn io_message(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => {
            let text = io::Error::from_raw_os_error(code).to_string();
            text.split(" (os error")
                .next()
                .unwrap_or(&text)
                .to_lowercase()
        }
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_resolve_inside_the_root_never_outside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib/sysimage/rpm")).unwrap();
        fs::create_dir_all(root.join("var/lib")).unwrap();
        // An image's absolute link: must land in the image, not on this host.
        symlink("/usr/lib/sysimage/rpm", root.join("var/lib/rpm")).unwrap();
        symlink("../../..", root.join("usr/lib/up")).unwrap();
        assert_eq!(
            resolve_in_root(root, b"/var/lib/rpm").unwrap(),
            root.join("usr/lib/sysimage/rpm")
        );
        // `..` stops at the root.
        assert_eq!(
            resolve_in_root(root, b"usr/lib/up/../../etc")
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        fs::create_dir(root.join("etc")).unwrap();
        assert_eq!(
            resolve_in_root(root, b"usr/lib/up/../../etc").unwrap(),
            root.join("etc")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(root, b"/loop").unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
        assert_eq!(resolve_in_root(root, b"/").unwrap(), root);
    }

    #[test]
    fn messages_read_like_sentences() {
        let err = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(io_message(&err), "permission denied");
    }
}
