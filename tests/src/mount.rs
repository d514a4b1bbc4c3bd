//! A real small file system for fault tests: a tmpfs of a given size mounted over a
//! directory, that a test fills up (ENOSPC), remounts read-only (EROFS) and back, and
//! that is unmounted when dropped. Needs root (the tests run as root; without it,
//! [`Tmpfs::mount`] says why and the test does not run, or fails under CI).

use crate::missing_prerequisite;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The filler file [`Tmpfs::fill`] writes.
const FILLER: &str = ".filler";

/// A mounted tmpfs.
pub struct Tmpfs {
    path: PathBuf,
}

fn mount(args: &[&str], path: &Path) {
    let output = Command::new("mount")
        .args(args)
        .arg(path)
        .output()
        .expect("run mount");
    assert!(
        output.status.success(),
        "mount {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `1m`, `512k`) at `path`,
    /// made when missing. `None` (the reason printed) when not root.
    pub fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            missing_prerequisite("mounting a small file system needs root");
            return None;
        }
        std::fs::create_dir_all(path).unwrap();
        mount(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ],
            path,
        );
        Some(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Fills it to the last byte with a file of its own; returns the bytes written.
    pub fn fill(&self) -> u64 {
        let mut file = std::fs::File::create(self.path.join(FILLER)).unwrap();
        let chunk = vec![0xa5u8; 4096];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(err) => panic!("filling {}: {err}", self.path.display()),
            }
        }
        // A page that no longer fits whole may still take a few bytes.
        while file.write(&[0xa5]).is_ok_and(|n| n == 1) {
            written += 1;
        }
        written
    }

    /// Gives the space [`Tmpfs::fill`] took back.
    pub fn unfill(&self) {
        std::fs::remove_file(self.path.join(FILLER)).unwrap();
    }

    /// Remounts it read-only, or read-write again.
    pub fn set_read_only(&self, read_only: bool) {
        let flag = if read_only {
            "remount,ro"
        } else {
            "remount,rw"
        };
        mount(&["-o", flag], &self.path);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a daemon still running there lets go when it is killed.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
