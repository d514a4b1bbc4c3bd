//! Package sources: the package set of a root, read from its own package database.
//!
//! Each database has its own module with its own parser and tests: [`dpkg`]
//! (Debian/Ubuntu), [`rpm`] (RHEL family; `rpmdb.sqlite`, and BerkeleyDB `Packages` of
//! EL7/8), [`apk`] (Alpine). All of them read *inside* the root (`--root` reads an
//! image's database, not the scanning host's) and treat the database as hostile input:
//! a corrupt, truncated or lying database is a [`PackageDbError`] naming the file, never
//! a panic, a hang or a huge allocation.
//!
//! Besides the package set, each database lists the files its packages shipped with
//! their digests ([`PackagedFile`]); [`verify`] re-hashes those files as a second
//! opinion (`debsums`-style) that also covers paths the policy excludes.

pub mod apk;
pub mod dpkg;
pub mod rpm;
pub mod verify;

use crate::policy::{PathState, Policy, VerifyScope};
use crate::source::rootfs;
use driftwatch_protocol::package::{PackageDb, PackageSet};
use driftwatch_protocol::report::Attribute;
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a package database could not be read.
#[derive(Debug, Error)]
pub enum PackageDbError {
    /// The database file could not be read.
    #[error("cannot read package database {}: {source}", path.display())]
    Io {
        /// The file (inside the root, as a host path).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database is malformed.
    #[error("package database {} is malformed: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, e.g. `record 12: missing Version`.
        reason: String,
    },
}

/// A digest algorithm used by a package database for its file records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// dpkg `md5sums`, old rpm.
    Md5,
    /// apk `Z:Q1…` checksums.
    Sha1,
    /// rpm ≥ 4.6 default.
    Sha256,
    /// rpm digest algorithm 9.
    Sha384,
    /// rpm digest algorithm 10.
    Sha512,
    /// rpm digest algorithm 11.
    Sha224,
}

impl DigestAlgorithm {
    /// The same algorithm for [`crate::source::hashing`].
    pub fn algorithm(self) -> crate::source::hashing::Algorithm {
        use crate::source::hashing::Algorithm;
        match self {
            DigestAlgorithm::Md5 => Algorithm::Md5,
            DigestAlgorithm::Sha1 => Algorithm::Sha1,
            DigestAlgorithm::Sha256 => Algorithm::Sha256,
            DigestAlgorithm::Sha384 => Algorithm::Sha384,
            DigestAlgorithm::Sha512 => Algorithm::Sha512,
            DigestAlgorithm::Sha224 => Algorithm::Sha224,
        }
    }

    /// The lowercase name used in reports (`md5:…`).
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "md5",
            DigestAlgorithm::Sha1 => "sha1",
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha384 => "sha384",
            DigestAlgorithm::Sha512 => "sha512",
            DigestAlgorithm::Sha224 => "sha224",
        }
    }
}

/// One regular file as its package database records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackagedFile {
    /// Absolute path inside the root, as bytes.
    pub path: Vec<u8>,
    /// The package that ships it.
    pub package: String,
    /// The recorded digest's algorithm.
    pub algorithm: DigestAlgorithm,
    /// The recorded digest.
    pub digest: Vec<u8>,
    /// True for configuration files the package manager expects admins to edit
    /// (dpkg conffiles, rpm `%config`): verified, but reported separately.
    pub config: bool,
}

/// The host path of a database file given relative to the root, its directories
/// resolved inside the root (an image's absolute links must not lead to the scanning
/// host's own database).
pub(super) fn db_file(root: &Path, relative: &str) -> Result<PathBuf, PackageDbError> {
    let (dir, name) = relative.rsplit_once('/').unwrap_or(("", relative));
    rootfs::resolve_in_root(root, dir.as_bytes())
        .map(|dir| dir.join(name))
        .map_err(|source| PackageDbError::Io {
            path: root.join(relative),
            source,
        })
}

/// Largest database file read (status, md5sums, diversions, apk's installed). A real
/// status file is a few MiB (≈ 3 MiB for 2,500 packages); the cap only keeps a hostile
/// file from becoming a huge allocation.
pub(super) const MAX_DB_FILE_BYTES: u64 = 256 << 20;
/// Largest single field value. Real ones (long descriptions, the conffiles of big
/// packages) stay below 100 KiB.
pub(super) const MAX_FIELD_BYTES: usize = 1 << 20;

/// Reads a database file whole, refusing files over [`MAX_DB_FILE_BYTES`].
pub(super) fn read_db_file(path: &Path) -> Result<Vec<u8>, PackageDbError> {
    read_optional_db_file(path)?.ok_or_else(|| PackageDbError::Io {
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::NotFound),
    })
}

/// Like [`read_db_file`], but a missing file is `None`.
pub(super) fn read_optional_db_file(path: &Path) -> Result<Option<Vec<u8>>, PackageDbError> {
    let io_error = |source| PackageDbError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Not following a final symlink: the directories were resolved inside the root,
    // and a database file that is itself a link is not what dpkg or apk write.
    let file = match rootfs::open_no_follow(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_error(err)),
    };
    if !file.metadata().map_err(io_error)?.is_file() {
        return Err(PackageDbError::Malformed {
            path: path.to_path_buf(),
            reason: "not a regular file".to_string(),
        });
    }
    let mut bytes = Vec::new();
    // Read one byte past the cap, so that "exactly the cap" and "larger" differ, without
    // trusting the size fstat reports (a FIFO or procfs file reports 0).
    file.take(MAX_DB_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_DB_FILE_BYTES {
        return Err(PackageDbError::Malformed {
            path: path.to_path_buf(),
            reason: format!("larger than {} MiB", MAX_DB_FILE_BYTES >> 20),
        });
    }
    Ok(Some(bytes))
}

/// The files a package manager rewrites when it installs, removes or upgrades
/// something, relative to the root: dpkg's status, rpm's databases (both homes, with
/// SQLite's write-ahead log, where a change lands first) and apk's installed list.
const DATABASE_FILES: [&str; 7] = [
    "var/lib/dpkg/status",
    "var/lib/rpm/rpmdb.sqlite",
    "var/lib/rpm/rpmdb.sqlite-wal",
    "var/lib/rpm/Packages",
    "usr/lib/sysimage/rpm/rpmdb.sqlite",
    "usr/lib/sysimage/rpm/rpmdb.sqlite-wal",
    "lib/apk/db/installed",
];

/// What the package databases' files look like at one moment: device, inode, size and
/// mtime (seconds, nanoseconds) of each, or nothing where absent.
pub type DatabaseStamp = Vec<Option<(u64, u64, u64, i64, i64)>>;

/// The package databases' [`DatabaseStamp`] now: equal stamps mean no package manager
/// wrote in between. Costs a handful of `stat`s, so the daemon can poll it every few
/// seconds.
pub fn database_stamp(root: &Path) -> DatabaseStamp {
    use std::os::unix::fs::MetadataExt;
    DATABASE_FILES
        .iter()
        .map(|file| {
            std::fs::metadata(root.join(file))
                .ok()
                .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
        })
        .collect()
}

/// Which database a root has, if any driftwatch reads (dpkg, then rpm, then apk).
pub fn detect(root: &Path) -> Option<PackageDb> {
    if dpkg::is_present(root) {
        Some(PackageDb::Dpkg)
    } else if rpm::is_present(root) {
        Some(PackageDb::Rpm)
    } else if apk::is_present(root) {
        Some(PackageDb::Apk)
    } else {
        None
    }
}

/// The package set of a root; `None` when it has no database driftwatch reads.
pub fn read(root: &Path) -> Result<Option<PackageSet>, PackageDbError> {
    let Some(db) = detect(root) else {
        return Ok(None);
    };
    let packages = match db {
        PackageDb::Dpkg => dpkg::read_packages(root)?,
        PackageDb::Rpm => rpm::read_packages(root)?,
        PackageDb::Apk => apk::read_packages(root)?,
    };
    Ok(Some(PackageSet::new(db, packages)))
}

/// The files the database says its packages shipped, with their digests.
pub fn packaged_files(root: &Path, db: PackageDb) -> Result<Vec<PackagedFile>, PackageDbError> {
    match db {
        PackageDb::Dpkg => dpkg::packaged_files(root),
        PackageDb::Rpm => rpm::packaged_files(root),
        PackageDb::Apk => apk::packaged_files(root),
    }
}

/// Who owns each path among `packages` (name, architecture): the index of its owner
/// in `packages`, the first one listed where several own a path (a shared directory).
/// dpkg lists every path a package installed; rpm and apk here give their regular
/// files.
pub fn owners(
    root: &Path,
    db: PackageDb,
    packages: &[(String, String)],
) -> Result<HashMap<Vec<u8>, usize>, PackageDbError> {
    let owned: Vec<(Vec<u8>, usize)> = match db {
        PackageDb::Dpkg => dpkg::owned_paths(root, packages)?,
        PackageDb::Rpm | PackageDb::Apk => packaged_files(root, db)?
            .into_iter()
            .filter_map(|file| {
                let index = packages
                    .iter()
                    .position(|(name, _)| *name == file.package)?;
                Some((file.path, index))
            })
            .collect(),
    };
    let mut owners = HashMap::new();
    for (path, index) in owned {
        owners.entry(path).or_insert(index);
    }
    Ok(owners)
}

/// True when the file scan compares `path`'s content under `policy`: then the scan's
/// comparison with the baseline is the stronger check and the package manager's is not
/// needed. `parent` caches the state of the last parent directory (packaged files come
/// sorted, so siblings follow each other).
fn scanned_for_content(
    policy: &Policy,
    path: &[u8],
    parent: &mut Option<(Vec<u8>, PathState)>,
) -> bool {
    if !policy.in_scope(path) {
        return false;
    }
    let parent_path = match path.iter().rposition(|b| *b == b'/') {
        Some(0) => &b"/"[..],
        Some(at) => &path[..at],
        None => return false,
    };
    let parent_state = match parent {
        Some((cached, state)) if cached.as_slice() == parent_path => *state,
        _ => {
            let state = policy.state_for(parent_path);
            *parent = Some((parent_path.to_vec(), state));
            state
        }
    };
    let state = policy.child_state(path, &parent_state);
    !state.excluded && policy.rule(&state).attributes.contains(Attribute::Content)
}

/// Verifies the packaged files that `[packages] verify` selects: with `uncovered`, those
/// the file scan does not compare (excluded, outside the scan paths, or under a rule
/// that does not compare content); with `all`, every one; with `off`, none.
pub fn verify_for_policy(
    root: &Path,
    policy: &Policy,
    db: PackageDb,
) -> Result<verify::VerifyOutcome, PackageDbError> {
    let config = &policy.config().packages;
    let mut files = match config.verify {
        VerifyScope::Off => Vec::new(),
        VerifyScope::All | VerifyScope::Uncovered => packaged_files(root, db)?,
    };
    if config.verify == VerifyScope::Uncovered {
        let mut parent = None;
        files.retain(|file| !scanned_for_content(policy, &file.path, &mut parent));
    }
    let options = verify::VerifyOptions {
        severity: config.verify_severity,
        config_severity: config.verify_config_severity,
        max_file_bytes: policy.config().scan.max_file_bytes,
    };
    Ok(verify::verify(root, &files, db, &options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncovered_means_not_content_checked_by_the_scan() {
        let policy = Policy::parse(
            r#"
exclude = ["/var/lib"]
[scan]
paths = ["/usr", "/var"]
[[rule]]
paths = ["/usr/share/doc"]
attributes = ["mode"]
"#,
        )
        .unwrap();
        let mut parent = None;
        let mut covered = |p: &str| scanned_for_content(&policy, p.as_bytes(), &mut parent);
        assert!(covered("/usr/bin/ls"));
        assert!(covered("/usr/bin/cat"));
        assert!(!covered("/usr/share/doc/x/copyright"));
        assert!(!covered("/var/lib/x/data"));
        assert!(covered("/var/cache"));
        assert!(!covered("/etc/passwd"));
    }
}
