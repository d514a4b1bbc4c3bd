//! The rpm database (RHEL family, Fedora, SUSE): installed packages and the files they
//! shipped, read from the root's own database without rpm or libdb.
//!
//! rpm ≥ 4.16 keeps one SQLite file, `rpmdb.sqlite`; older releases (EL7, EL8) keep a
//! BerkeleyDB hash file, `Packages`. Both store, per package, the same binary header
//! (a tag → value table, see [`header`]); everything else in the database directory
//! (name and file indexes) is derived from the headers, so only the headers are read.
//!
//! The database lives in `/var/lib/rpm` or, since Fedora 36 and on openSUSE, in
//! `/usr/lib/sysimage/rpm` with `/var/lib/rpm` a symlink to it. Such a symlink may be
//! absolute; followed from the scanning host it would read the *host's* database instead
//! of the image's, so paths are resolved inside the root ([`crate::source::rootfs::resolve_in_root`]). Where the
//! two directories differ, `/var/lib/rpm` (the historic default) is tried first, and
//! SQLite before BerkeleyDB, as rpm ≥ 4.16 itself prefers.
//!
//! Not read: SUSE's `ndb` backend (`Packages.db`), and headers' signature regions (the
//! database is trusted to describe itself; its content is checked for consistency, not
//! authenticity).

mod bdb;
mod header;
mod sqlite;

use super::{DigestAlgorithm, PackageDbError, PackagedFile};
use driftwatch_protocol::package::Package;
use header::{Header, HeaderError};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Header tags read here (`rpmTag` values).
mod tag {
    pub const NAME: u32 = 1000;
    pub const VERSION: u32 = 1001;
    pub const RELEASE: u32 = 1002;
    pub const EPOCH: u32 = 1003;
    pub const ARCH: u32 = 1022;
    pub const FILEMODES: u32 = 1030;
    pub const FILEDIGESTS: u32 = 1035;
    pub const FILEFLAGS: u32 = 1037;
    pub const DIRINDEXES: u32 = 1116;
    pub const BASENAMES: u32 = 1117;
    pub const DIRNAMES: u32 = 1118;
    pub const FILEDIGESTALGO: u32 = 5011;

    /// The tag's name, for error messages.
    pub fn name(tag: u32) -> &'static str {
        match tag {
            NAME => "NAME",
            VERSION => "VERSION",
            RELEASE => "RELEASE",
            EPOCH => "EPOCH",
            ARCH => "ARCH",
            FILEMODES => "FILEMODES",
            FILEDIGESTS => "FILEDIGESTS",
            FILEFLAGS => "FILEFLAGS",
            DIRINDEXES => "DIRINDEXES",
            BASENAMES => "BASENAMES",
            DIRNAMES => "DIRNAMES",
            FILEDIGESTALGO => "FILEDIGESTALGO",
            _ => "?",
        }
    }
}

/// `RPMFILE_CONFIG`: `%config` files.
const RPMFILE_CONFIG: u32 = 1;
/// `RPMFILE_GHOST`: `%ghost` files are owned but not shipped, so they have no content
/// to verify.
const RPMFILE_GHOST: u32 = 64;
/// `S_IFMT` / `S_IFREG` in rpm's 16-bit file modes.
const S_IFMT: u16 = 0o170_000;
const S_IFREG: u16 = 0o100_000;
/// Pseudo-packages for imported signing keys (`rpm --import`): not software.
const GPG_PUBKEY: &[u8] = b"gpg-pubkey";
/// Where a database may be, relative to the root, in the order tried.
const CANDIDATES: [(&str, Backend); 4] = [
    ("var/lib/rpm/rpmdb.sqlite", Backend::Sqlite),
    ("usr/lib/sysimage/rpm/rpmdb.sqlite", Backend::Sqlite),
    ("var/lib/rpm/Packages", Backend::BerkeleyDb),
    ("usr/lib/sysimage/rpm/Packages", Backend::BerkeleyDb),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    BerkeleyDb,
}

/// A database found in a root: its backend and host path (symlinks resolved in-root).
#[derive(Debug, PartialEq, Eq)]
struct Location {
    backend: Backend,
    path: PathBuf,
}

/// True when the root has an rpm database (or a candidate path that cannot be checked,
/// so that reading it reports why instead of the database silently not counting).
pub fn is_present(root: &Path) -> bool {
    !matches!(locate(root), Ok(None))
}

/// The installed packages, `gpg-pubkey` pseudo-packages excluded, in header order.
pub fn read_packages(root: &Path) -> Result<Vec<Package>, PackageDbError> {
    let location = locate_required(root)?;
    let mut packages = Vec::new();
    for_each_header(&location, |hnum, header| {
        if let Some(package) = package(header)? {
            packages.push((hnum, package));
        }
        Ok(())
    })?;
    Ok(in_header_order(packages).collect())
}

/// The regular, non-ghost files with a recorded digest, per package in header order.
pub fn packaged_files(root: &Path) -> Result<Vec<PackagedFile>, PackageDbError> {
    let location = locate_required(root)?;
    let mut files = Vec::new();
    for_each_header(&location, |hnum, header| {
        if let Some(package) = package(header)? {
            files.push((hnum, package_files(header, &package.name)?));
        }
        Ok(())
    })?;
    Ok(in_header_order(files).flatten().collect())
}

/// One header blob as both database readers interpret it: its package (`None` for a
/// `gpg-pubkey` pseudo-package) and that package's files. For fuzzing and tools; the
/// readers above run the same parse per record.
pub fn read_header(blob: &[u8]) -> Result<Option<(Package, Vec<PackagedFile>)>, String> {
    let interpret = |header: &Header<'_>| -> Result<_, RecordError> {
        let Some(package) = package(header)? else {
            return Ok(None);
        };
        let files = package_files(header, &package.name)?;
        Ok(Some((package, files)))
    };
    let header = Header::parse(blob).map_err(|e| e.to_string())?;
    interpret(&header).map_err(|e| e.to_string())
}

/// The `(hnum, header blob)` records of a BerkeleyDB `Packages` file held in memory,
/// as the file-based reader walks them. For fuzzing and tools.
pub fn read_berkeley_db(bytes: &[u8]) -> Result<Vec<(u32, Vec<u8>)>, String> {
    let records = bdb::Records::open(bytes).map_err(|e| e.to_string())?;
    records
        .map(|record| record.map(|r| (r.hnum, r.value)).map_err(|e| e.to_string()))
        .collect()
}

/// Why one header could not be turned into a package or its files.
#[derive(Debug, Error)]
enum RecordError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("no {} tag", tag::name(*.0))]
    Missing(u32),
    #[error("{} is not UTF-8", tag::name(*.0))]
    NotUtf8(u32),
    #[error("{} has {found} entries for {files} files", tag::name(*tag))]
    Count {
        tag: u32,
        found: usize,
        files: usize,
    },
    #[error("file {file}: directory index {index} but only {dirs} directories")]
    DirIndex {
        file: usize,
        index: u32,
        dirs: usize,
    },
    #[error("file {file}: digest {digest:?} is not {} hex digits", 2 * len)]
    Digest {
        file: usize,
        digest: String,
        len: usize,
    },
    #[error("unsupported file digest algorithm {0}")]
    Algorithm(u32),
}

/// Calls `f(hnum, header)` for each header of the database (in no particular order:
/// BerkeleyDB hash order is arbitrary); any error names the database file and the
/// header.
fn for_each_header(
    location: &Location,
    mut f: impl FnMut(u32, &Header<'_>) -> Result<(), RecordError>,
) -> Result<(), PackageDbError> {
    let path = &location.path;
    let mut visit = |hnum: u32, blob: &[u8]| {
        let fail = |name: Option<&[u8]>, e: RecordError| {
            let name = name
                .map(|n| format!(" ({})", String::from_utf8_lossy(n)))
                .unwrap_or_default();
            PackageDbError::Malformed {
                path: path.clone(),
                reason: format!("header {hnum}{name}: {e}"),
            }
        };
        let header = Header::parse(blob).map_err(|e| fail(None, e.into()))?;
        f(hnum, &header).map_err(|e| fail(header.string(tag::NAME).ok().flatten(), e))
    };
    match location.backend {
        Backend::Sqlite => sqlite::for_each_blob(path, visit),
        Backend::BerkeleyDb => {
            let io = |source| PackageDbError::Io {
                path: path.clone(),
                source,
            };
            let bdb = |e| match e {
                bdb::BdbError::Io(source) => io(source),
                bdb::BdbError::Malformed(reason) => PackageDbError::Malformed {
                    path: path.clone(),
                    reason: format!("BerkeleyDB: {reason}"),
                },
            };
            let file = File::open(path).map_err(io)?;
            for record in bdb::Records::open(&file).map_err(bdb)? {
                let record = record.map_err(bdb)?;
                visit(record.hnum, &record.value)?;
            }
            Ok(())
        }
    }
}

/// Restores header-number order (the order rpm installed them in), so that both
/// backends give the same output for the same packages.
fn in_header_order<T>(mut items: Vec<(u32, T)>) -> impl Iterator<Item = T> {
    items.sort_by_key(|(hnum, _)| *hnum);
    items.into_iter().map(|(_, item)| item)
}

/// The package a header describes; `None` for `gpg-pubkey`.
fn package(header: &Header<'_>) -> Result<Option<Package>, RecordError> {
    let name = required_string(header, tag::NAME)?;
    if name.as_bytes() == GPG_PUBKEY {
        return Ok(None);
    }
    let version = required_string(header, tag::VERSION)?;
    let release = required_string(header, tag::RELEASE)?;
    let arch = optional_string(header, tag::ARCH)?.unwrap_or_default();
    // rpm shows an epoch whenever the tag is present, even 0 (`Epoch: 0` in a spec).
    let version = match header
        .u32_array(tag::EPOCH)?
        .and_then(|e| e.first().copied())
    {
        Some(epoch) => format!("{epoch}:{version}-{release}"),
        None => format!("{version}-{release}"),
    };
    Ok(Some(Package {
        name,
        arch,
        version,
    }))
}

/// The regular, non-ghost files of a package that have a digest.
fn package_files(header: &Header<'_>, package: &str) -> Result<Vec<PackagedFile>, RecordError> {
    let Some(basenames) = header.string_array(tag::BASENAMES)? else {
        return Ok(Vec::new()); // a package without files (meta-packages)
    };
    // Every per-file tag must have one entry per basename: zip() below would otherwise
    // silently pair a file with another file's digest or mode.
    let files = basenames.len();
    let dirnames = header
        .string_array(tag::DIRNAMES)?
        .ok_or(RecordError::Missing(tag::DIRNAMES))?;
    let dirindexes = per_file(tag::DIRINDEXES, header.u32_array(tag::DIRINDEXES)?, files)?;
    let digests = per_file(
        tag::FILEDIGESTS,
        header.string_array(tag::FILEDIGESTS)?,
        files,
    )?;
    let modes = per_file(tag::FILEMODES, header.u16_array(tag::FILEMODES)?, files)?;
    let flags = per_file(tag::FILEFLAGS, header.u32_array(tag::FILEFLAGS)?, files)?;
    let algorithm = digest_algorithm(header)?;
    let digest_len = digest_len(algorithm);

    let mut out = Vec::new();
    let zipped = basenames.iter().zip(&dirindexes).zip(&digests).zip(&modes);
    for (file, ((((basename, &dir), digest), &mode), &flag)) in zipped.zip(&flags).enumerate() {
        if mode & S_IFMT != S_IFREG || flag & RPMFILE_GHOST != 0 || digest.is_empty() {
            continue;
        }
        let dirname = dirnames.get(dir as usize).ok_or(RecordError::DirIndex {
            file,
            index: dir,
            dirs: dirnames.len(),
        })?;
        let digest = decode_hex(digest)
            .filter(|d| d.len() == digest_len)
            .ok_or_else(|| RecordError::Digest {
                file,
                digest: String::from_utf8_lossy(digest).into_owned(),
                len: digest_len,
            })?;
        let mut path = Vec::with_capacity(dirname.len() + basename.len());
        path.extend_from_slice(dirname);
        path.extend_from_slice(basename);
        out.push(PackagedFile {
            path,
            package: package.to_string(),
            algorithm,
            digest,
            config: flag & RPMFILE_CONFIG != 0,
        });
    }
    Ok(out)
}

/// A per-file array, which must be present with one entry per file.
fn per_file<T>(tag: u32, values: Option<Vec<T>>, files: usize) -> Result<Vec<T>, RecordError> {
    match values {
        None => Err(RecordError::Missing(tag)),
        Some(values) if values.len() != files => Err(RecordError::Count {
            tag,
            found: values.len(),
            files,
        }),
        Some(values) => Ok(values),
    }
}

/// `FILEDIGESTALGO` (a `PGPHASHALGO_*` value); absent means MD5, as rpm < 4.6 wrote.
fn digest_algorithm(header: &Header<'_>) -> Result<DigestAlgorithm, RecordError> {
    let code = header
        .u32_array(tag::FILEDIGESTALGO)?
        .and_then(|a| a.first().copied());
    Ok(match code {
        None | Some(1) => DigestAlgorithm::Md5,
        Some(2) => DigestAlgorithm::Sha1,
        Some(8) => DigestAlgorithm::Sha256,
        Some(9) => DigestAlgorithm::Sha384,
        Some(10) => DigestAlgorithm::Sha512,
        Some(11) => DigestAlgorithm::Sha224,
        Some(other) => return Err(RecordError::Algorithm(other)),
    })
}

fn digest_len(algorithm: DigestAlgorithm) -> usize {
    match algorithm {
        DigestAlgorithm::Md5 => 16,
        DigestAlgorithm::Sha1 => 20,
        DigestAlgorithm::Sha224 => 28,
        DigestAlgorithm::Sha256 => 32,
        DigestAlgorithm::Sha384 => 48,
        DigestAlgorithm::Sha512 => 64,
    }
}

fn decode_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16);
    hex.chunks_exact(2)
        .map(|pair| Some((nibble(pair[0])? << 4 | nibble(pair[1])?) as u8))
        .collect()
}

fn optional_string(header: &Header<'_>, tag: u32) -> Result<Option<String>, RecordError> {
    header
        .string(tag)?
        .map(|s| String::from_utf8(s.to_vec()).map_err(|_| RecordError::NotUtf8(tag)))
        .transpose()
}

fn required_string(header: &Header<'_>, tag: u32) -> Result<String, RecordError> {
    optional_string(header, tag)?.ok_or(RecordError::Missing(tag))
}

/// The first candidate database path that exists in the root.
///
/// A candidate that cannot be checked (EACCES on `/var/lib/rpm`, a symlink loop) is
/// returned as an error rather than skipped: skipping would make a root with an
/// unreadable database look like a root without one.
fn locate(root: &Path) -> Result<Option<Location>, PackageDbError> {
    for (relative, backend) in CANDIDATES {
        match crate::source::rootfs::resolve_in_root(root, relative.as_bytes()) {
            Ok(path) => return Ok(Some(Location { backend, path })),
            Err(e) if is_absent(&e) => continue,
            Err(source) => {
                return Err(PackageDbError::Io {
                    path: root.join(relative),
                    source,
                })
            }
        }
    }
    Ok(None)
}

fn locate_required(root: &Path) -> Result<Location, PackageDbError> {
    locate(root)?.ok_or_else(|| PackageDbError::Io {
        path: root.join("var/lib/rpm"),
        source: io::Error::new(
            io::ErrorKind::NotFound,
            "no rpmdb.sqlite or Packages in var/lib/rpm or usr/lib/sysimage/rpm",
        ),
    })
}

fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

#[cfg(test)]
mod tests {
    use super::header::testing::Builder;
    use super::*;
    use sha2::{Digest, Sha256, Sha512};
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::fs;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/rpm")
            .join(name)
    }

    /// A root with `fixture` copied to `relative`.
    fn root_with(fixture_name: &str, relative: &str) -> TempDir {
        let root = TempDir::new().expect("tempdir");
        let path = root.path().join(relative);
        fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        fs::copy(fixture(fixture_name), &path).expect("copy fixture");
        root
    }

    fn pkg(name: &str, arch: &str, version: &str) -> Package {
        Package {
            name: name.into(),
            arch: arch.into(),
            version: version.into(),
        }
    }

    fn expected_packages() -> Vec<Package> {
        vec![
            pkg("dw-extra", "noarch", "0.1-1"),
            pkg("dw-hello", "noarch", "1.0-1"),
            pkg("dw-lib", "x86_64", "2:3.4.5-6.el9"),
        ]
    }

    fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
        items.sort();
        items
    }

    fn expected_files() -> Vec<PackagedFile> {
        let conf = fs::read(fixture("dw-hello.conf")).expect("packaged config file");
        let file = |path: &str, package: &str, algorithm, digest: Vec<u8>, config| PackagedFile {
            path: path.as_bytes().to_vec(),
            package: package.into(),
            algorithm,
            digest,
            config,
        };
        let sha256 = |data: &[u8]| Sha256::digest(data).to_vec();
        vec![
            file(
                "/usr/lib64/libdw.so.1",
                "dw-lib",
                DigestAlgorithm::Sha256,
                sha256(b"not really a library\n"),
                false,
            ),
            file(
                "/etc/dw-hello.conf",
                "dw-hello",
                DigestAlgorithm::Sha256,
                sha256(&conf),
                true,
            ),
            file(
                "/usr/bin/dw-hello",
                "dw-hello",
                DigestAlgorithm::Sha256,
                sha256(b"#!/bin/sh\necho hello\n"),
                false,
            ),
            file(
                "/usr/share/dw-hello/data.txt",
                "dw-hello",
                DigestAlgorithm::Sha256,
                sha256(b"data\n"),
                false,
            ),
            file(
                "/usr/share/dw-extra/readme",
                "dw-extra",
                DigestAlgorithm::Sha512,
                Sha512::digest(b"extra\n").to_vec(),
                false,
            ),
        ]
    }

    /// Names and sizes of everything in a directory.
    fn listing(dir: &Path) -> BTreeMap<OsString, u64> {
        fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| {
                let e = e.expect("entry");
                (e.file_name(), e.metadata().expect("metadata").len())
            })
            .collect()
    }

    fn malformed_reason(result: Result<Vec<Package>, PackageDbError>) -> (PathBuf, String) {
        match result {
            Err(PackageDbError::Malformed { path, reason }) => (path, reason),
            other => panic!("expected a malformed-database error, got {other:?}"),
        }
    }

    #[test]
    fn reads_the_sqlite_fixture() {
        let root = root_with("rpmdb.sqlite", "var/lib/rpm/rpmdb.sqlite");
        assert!(is_present(root.path()));
        let packages = read_packages(root.path()).expect("packages");
        assert_eq!(sorted(packages), expected_packages(), "gpg-pubkey skipped");
        // Symlinks, directories and %ghost files are not listed; header order kept.
        assert_eq!(
            packaged_files(root.path()).expect("files"),
            expected_files()
        );
    }

    #[test]
    fn a_removed_package_disappears() {
        let root = root_with("rpmdb-removed.sqlite", "var/lib/rpm/rpmdb.sqlite");
        let mut expected = expected_packages();
        expected.retain(|p| p.name != "dw-extra");
        assert_eq!(
            sorted(read_packages(root.path()).expect("packages")),
            expected
        );
        let files = packaged_files(root.path()).expect("files");
        assert!(files.iter().all(|f| f.package != "dw-extra"));
        assert_eq!(files.len(), expected_files().len() - 1);
    }

    #[test]
    fn berkeley_db_gives_the_same_answer_as_sqlite() {
        let sqlite = root_with("rpmdb.sqlite", "var/lib/rpm/rpmdb.sqlite");
        for name in ["Packages", "Packages-be"] {
            let bdb = root_with(name, "var/lib/rpm/Packages");
            assert!(is_present(bdb.path()));
            assert_eq!(
                read_packages(bdb.path()).expect("bdb packages"),
                read_packages(sqlite.path()).expect("sqlite packages"),
                "{name}"
            );
            assert_eq!(
                packaged_files(bdb.path()).expect("bdb files"),
                expected_files(),
                "{name}"
            );
        }
    }

    #[test]
    fn sqlite_is_preferred_over_berkeley_db() {
        let root = root_with("rpmdb-removed.sqlite", "var/lib/rpm/rpmdb.sqlite");
        fs::copy(
            fixture("Packages"),
            root.path().join("var/lib/rpm/Packages"),
        )
        .expect("copy");
        let packages = read_packages(root.path()).expect("packages");
        assert!(
            packages.iter().all(|p| p.name != "dw-extra"),
            "read the sqlite db"
        );
    }

    #[test]
    fn sysimage_location_and_var_lib_rpm_symlinks() {
        let sysimage = "usr/lib/sysimage/rpm/rpmdb.sqlite";
        // Fedora ≥ 36: the database in /usr, /var/lib/rpm pointing at it, both ways.
        for target in ["../../usr/lib/sysimage/rpm", "/usr/lib/sysimage/rpm"] {
            let root = root_with("rpmdb.sqlite", sysimage);
            fs::create_dir_all(root.path().join("var/lib")).expect("mkdir");
            symlink(target, root.path().join("var/lib/rpm")).expect("symlink");
            let location = locate(root.path()).expect("locate").expect("found");
            assert_eq!(location.path, root.path().join(sysimage), "via {target}");
            assert_eq!(
                sorted(read_packages(root.path()).expect("read")),
                expected_packages()
            );
        }
        // No /var/lib/rpm at all.
        let root = root_with("rpmdb.sqlite", sysimage);
        assert_eq!(
            sorted(read_packages(root.path()).expect("read")),
            expected_packages()
        );
    }

    #[test]
    fn symlinks_never_leave_the_root() {
        // A database outside the root, e.g. the scanning host's own.
        let outside = root_with("rpmdb.sqlite", "rpm/rpmdb.sqlite");
        let outside_dir = outside.path().join("rpm");
        let climb = format!("../../../../../../../..{}", outside_dir.display());
        for target in [outside_dir.display().to_string(), climb] {
            let root = TempDir::new().expect("tempdir");
            fs::create_dir_all(root.path().join("var/lib")).expect("mkdir");
            symlink(&target, root.path().join("var/lib/rpm")).expect("symlink");
            assert!(
                !is_present(root.path()),
                "{target} must resolve inside the root"
            );
            match read_packages(root.path()) {
                Err(PackageDbError::Io { source, .. }) => {
                    assert_eq!(source.kind(), io::ErrorKind::NotFound)
                }
                other => panic!("expected not found, got {other:?}"),
            }
        }
    }

    #[test]
    fn symlink_loops_are_reported() {
        let root = TempDir::new().expect("tempdir");
        fs::create_dir_all(root.path().join("var/lib")).expect("mkdir");
        symlink("rpm", root.path().join("var/lib/rpm")).expect("symlink");
        assert!(
            is_present(root.path()),
            "reported when read, not silently absent"
        );
        match read_packages(root.path()) {
            Err(PackageDbError::Io { path, source }) => {
                assert_eq!(path, root.path().join("var/lib/rpm/rpmdb.sqlite"));
                assert_eq!(source.raw_os_error(), Some(libc::ELOOP));
            }
            other => panic!("expected ELOOP, got {other:?}"),
        }
    }

    #[test]
    fn no_database_at_all() {
        let root = TempDir::new().expect("tempdir");
        assert!(!is_present(root.path()));
        assert!(matches!(
            read_packages(root.path()),
            Err(PackageDbError::Io { ref source, .. }) if source.kind() == io::ErrorKind::NotFound
        ));
    }

    #[test]
    fn garbage_sqlite_names_the_file() {
        let root = TempDir::new().expect("tempdir");
        let db = root.path().join("var/lib/rpm/rpmdb.sqlite");
        fs::create_dir_all(db.parent().expect("parent")).expect("mkdir");
        fs::write(&db, b"this is not a database, just some bytes".repeat(100)).expect("write");
        let error = read_packages(root.path()).expect_err("garbage");
        assert!(
            error.to_string().contains(&db.display().to_string()),
            "{error}"
        );
        let (path, reason) = malformed_reason(Err(error));
        assert_eq!(path, db);
        assert!(reason.contains("not a database"), "{reason}");

        // An empty file is an empty SQLite database: no Packages table.
        fs::write(&db, b"").expect("truncate");
        let (_, reason) = malformed_reason(read_packages(root.path()));
        assert!(reason.contains("no such table: Packages"), "{reason}");

        // A directory where the file should be.
        fs::remove_file(&db).expect("rm");
        fs::create_dir(&db).expect("mkdir");
        let (_, reason) = malformed_reason(read_packages(root.path()));
        assert!(reason.contains("not a regular file"), "{reason}");
    }

    #[test]
    fn hostile_rows_name_the_header() {
        let root = TempDir::new().expect("tempdir");
        let db = root.path().join("var/lib/rpm/rpmdb.sqlite");
        fs::create_dir_all(db.parent().expect("parent")).expect("mkdir");
        let good = Builder::new()
            .string(tag::NAME, "ok")
            .string(tag::VERSION, "1")
            .string(tag::RELEASE, "1")
            .build();
        let conn = rusqlite::Connection::open(&db).expect("create");
        conn.execute_batch("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY, blob BLOB)")
            .expect("schema");
        let insert = |hnum: i64, blob: rusqlite::types::Value| {
            conn.execute("INSERT INTO Packages VALUES (?1, ?2)", (hnum, blob))
                .expect("insert");
        };
        insert(1, good.clone().into());
        assert_eq!(
            read_packages(root.path()).expect("one package"),
            [pkg("ok", "", "1-1")]
        );

        insert(7, good[..good.len() - 1].to_vec().into());
        let (path, reason) = malformed_reason(read_packages(root.path()));
        assert_eq!(path, db);
        assert!(reason.starts_with("header 7: "), "{reason}");
        conn.execute("DELETE FROM Packages WHERE hnum = 7", [])
            .expect("delete");

        insert(8, "a header as text".to_string().into());
        let (_, reason) = malformed_reason(read_packages(root.path()));
        assert!(
            reason.contains("header 8: blob column holds Text data"),
            "{reason}"
        );
        conn.execute("DELETE FROM Packages WHERE hnum = 8", [])
            .expect("delete");

        insert(-1, good.into());
        let (_, reason) = malformed_reason(read_packages(root.path()));
        assert!(reason.contains("header number -1"), "{reason}");
    }

    #[test]
    fn reading_creates_no_files_in_the_database_directory() {
        let root = root_with("rpmdb.sqlite", "var/lib/rpm/rpmdb.sqlite");
        let dir = root.path().join("var/lib/rpm");
        let before = listing(&dir);
        read_packages(root.path()).expect("packages");
        packaged_files(root.path()).expect("files");
        assert_eq!(listing(&dir), before, "no -wal or -shm created");

        // rpm leaves an empty -wal behind after every transaction: still no -shm.
        fs::write(dir.join("rpmdb.sqlite-wal"), b"").expect("empty wal");
        let before = listing(&dir);
        read_packages(root.path()).expect("packages");
        assert_eq!(listing(&dir), before);
    }

    #[test]
    fn uncheckpointed_wal_content_is_not_seen() {
        // A writer in the middle of its life: its change is committed to the WAL but
        // not checkpointed into the main file (rpm checkpoints when it closes).
        let root = root_with("rpmdb.sqlite", "var/lib/rpm/rpmdb.sqlite");
        let dir = root.path().join("var/lib/rpm");
        let writer = rusqlite::Connection::open(dir.join("rpmdb.sqlite")).expect("writer");
        writer
            .execute_batch(
                "PRAGMA wal_autocheckpoint = 0;
                 PRAGMA foreign_keys = OFF;
                 DELETE FROM Packages WHERE hnum = (SELECT hnum FROM Name WHERE key = 'dw-extra');",
            )
            .expect("remove dw-extra");
        let before = listing(&dir);
        assert!(
            before[&OsString::from("rpmdb.sqlite-wal")] > 0,
            "WAL holds the change"
        );

        // The documented trade-off of immutable=1: the last checkpointed state is read,
        // and the WAL and shared-memory files are left exactly as they were.
        assert_eq!(
            sorted(read_packages(root.path()).expect("stale read")),
            expected_packages()
        );
        assert_eq!(listing(&dir), before);

        // Once the writer closes (and checkpoints), the change is visible.
        drop(writer);
        let packages = read_packages(root.path()).expect("fresh read");
        assert!(packages.iter().all(|p| p.name != "dw-extra"));
    }

    fn files_of(builder: Builder) -> Result<Vec<PackagedFile>, RecordError> {
        let blob = builder.build();
        let header = Header::parse(&blob).expect("valid header");
        package_files(&header, "p")
    }

    /// A package with three files in two directories, all regular, sha256.
    fn with_files(modes: &[u16], flags: &[u32], digests: &[&[u8]]) -> Builder {
        Builder::new()
            .string(tag::NAME, "p")
            .string(tag::VERSION, "1")
            .string(tag::RELEASE, "1")
            .strings(tag::DIRNAMES, &[b"/etc/", b"/usr/bin/"])
            .strings(tag::BASENAMES, &[b"a.conf", b"b", b"c"])
            .u32s(tag::DIRINDEXES, &[0, 1, 1])
            .u16s(tag::FILEMODES, modes)
            .u32s(tag::FILEFLAGS, flags)
            .strings(tag::FILEDIGESTS, digests)
    }

    const D1: &[u8] = b"1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &[u8] = b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const REG: u16 = 0o100_644;

    #[test]
    fn ghosts_and_non_regular_files_are_skipped() {
        let files = files_of(
            with_files(
                &[REG, REG, 0o120_777],
                &[RPMFILE_CONFIG, RPMFILE_GHOST, 0],
                &[D1, D1, D1],
            )
            .u32s(tag::FILEDIGESTALGO, &[8]),
        )
        .expect("files");
        assert_eq!(files.len(), 1, "ghost with a digest and symlink skipped");
        assert_eq!(files[0].path, b"/etc/a.conf");
        assert!(files[0].config);
        assert_eq!(files[0].digest, [0x11; 32]);
    }

    #[test]
    fn digest_algorithms() {
        let md5 = b"0123456789abcdef0123456789ABCDEF";
        let files = files_of(with_files(&[REG; 3], &[0; 3], &[md5, b"", md5])).expect("md5");
        assert_eq!(files.len(), 2, "empty digest skipped");
        assert_eq!(files[0].algorithm, DigestAlgorithm::Md5, "absent means md5");

        let files =
            files_of(with_files(&[REG; 3], &[0; 3], &[D2, D2, D2]).u32s(tag::FILEDIGESTALGO, &[8]))
                .expect("uppercase hex");
        assert_eq!(files[0].digest, [0xaa; 32]);

        let error = files_of(
            with_files(&[REG; 3], &[0; 3], &[D1, D1, D1]).u32s(tag::FILEDIGESTALGO, &[12]),
        )
        .expect_err("unknown algorithm");
        assert_eq!(error.to_string(), "unsupported file digest algorithm 12");

        // A sha256 database with an md5-sized or non-hex digest.
        for bad in [
            &md5[..],
            b"zz11111111111111111111111111111111111111111111111111111111111111",
        ] {
            let error = files_of(
                with_files(&[REG; 3], &[0; 3], &[D1, bad, D1]).u32s(tag::FILEDIGESTALGO, &[8]),
            )
            .expect_err("bad digest");
            assert!(error.to_string().starts_with("file 1: digest"), "{error}");
        }
    }

    #[test]
    fn inconsistent_file_lists_are_errors() {
        let error = files_of(with_files(&[REG; 2], &[0; 3], &[D1, D1, D1])).expect_err("modes");
        assert_eq!(error.to_string(), "FILEMODES has 2 entries for 3 files");

        let blob = Builder::new()
            .strings(tag::DIRNAMES, &[b"/"])
            .strings(tag::BASENAMES, &[b"a"])
            .u32s(tag::DIRINDEXES, &[5])
            .u16s(tag::FILEMODES, &[REG])
            .u32s(tag::FILEFLAGS, &[0])
            .strings(tag::FILEDIGESTS, &[D1])
            .u32s(tag::FILEDIGESTALGO, &[8])
            .build();
        let header = Header::parse(&blob).expect("valid");
        let error = package_files(&header, "p").expect_err("dir index");
        assert_eq!(
            error.to_string(),
            "file 0: directory index 5 but only 1 directories"
        );

        let blob = Builder::new().strings(tag::BASENAMES, &[b"a"]).build();
        let header = Header::parse(&blob).expect("valid");
        assert_eq!(
            package_files(&header, "p")
                .expect_err("no dirnames")
                .to_string(),
            "no DIRNAMES tag"
        );
    }

    #[test]
    fn packages_without_files() {
        let blob = Builder::new()
            .string(tag::NAME, "meta")
            .string(tag::VERSION, "1")
            .string(tag::RELEASE, "2")
            .build();
        let header = Header::parse(&blob).expect("valid");
        assert_eq!(package_files(&header, "meta").expect("no files"), []);
    }

    #[test]
    fn versions_and_names() {
        let header = |b: Builder| package(&Header::parse(&b.build()).expect("valid"));
        let base = || {
            Builder::new()
                .string(tag::NAME, "n")
                .string(tag::VERSION, "1.2")
                .string(tag::RELEASE, "3")
        };
        assert_eq!(
            header(base().u32s(tag::EPOCH, &[0])).expect("epoch 0"),
            Some(pkg("n", "", "0:1.2-3"))
        );
        assert_eq!(
            header(base().string(tag::ARCH, "aarch64")).expect("arch"),
            Some(pkg("n", "aarch64", "1.2-3"))
        );
        assert_eq!(
            header(
                Builder::new()
                    .string(tag::NAME, "gpg-pubkey")
                    .string(tag::VERSION, "x")
                    .string(tag::RELEASE, "y")
            )
            .expect("skipped"),
            None
        );
        let error = header(Builder::new().string(tag::NAME, "n")).expect_err("no version");
        assert_eq!(error.to_string(), "no VERSION tag");
        let error = header(
            Builder::new()
                .raw(tag::NAME, 6, 1, b"\xff\xfe\0")
                .string(tag::VERSION, "1")
                .string(tag::RELEASE, "1"),
        )
        .expect_err("not utf-8");
        assert_eq!(error.to_string(), "NAME is not UTF-8");
    }
}
