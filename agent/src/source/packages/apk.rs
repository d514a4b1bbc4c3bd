//! apk (Alpine): the package set and the files each package shipped, both from
//! `lib/apk/db/installed`.
//!
//! The installed database is text: one record per package, records separated by blank
//! lines, each line `K:value` with a one-letter key. driftwatch reads `P:` (name), `V:`
//! (version), `A:` (architecture), and the file list: `F:` opens a directory (relative to
//! the root), each following `R:` names a file in it, and the `Z:` after an `R:` is that
//! file's checksum. Every other key (size, description, dependencies, ACLs…) is skipped.
//!
//! Checksums are `Q1` + base64 of a SHA-1 (what apk-tools 2 writes), `Q2` + base64 of a
//! SHA-256, or bare hex (MD5 in databases from very old apk-tools). For a symlink apk
//! records the checksum of the link *target text*, not of a file;
//! [`super::verify`] knows this (the database itself does not say which entries are
//! links).
//!
//! The database is hostile input like any other: the file is capped at 256 MiB, a line
//! at 1 MiB, and a malformed line is an error naming the record and line.

use super::{
    db_file, read_db_file, DigestAlgorithm, PackageDbError, PackagedFile, MAX_FIELD_BYTES,
};
use base64::Engine;
use driftwatch_protocol::package::Package;
use std::path::Path;

/// The installed database, relative to the root.
const INSTALLED: &str = "lib/apk/db/installed";

/// True when the root has an apk installed database.
pub fn is_present(root: &Path) -> bool {
    db_file(root, INSTALLED).is_ok_and(|path| path.is_file())
}

/// The installed packages of the root, in database order.
///
/// Errors: the database cannot be read, is larger than 256 MiB, or is malformed (see
/// [`parse_installed`]).
pub fn read_packages(root: &Path) -> Result<Vec<Package>, PackageDbError> {
    Ok(read(root)?.packages)
}

/// The files the root's packages shipped with a checksum, sorted by path then package.
/// Files recorded without a `Z:` line are left out: there is nothing to verify.
///
/// Errors: as [`read_packages`].
pub fn packaged_files(root: &Path) -> Result<Vec<PackagedFile>, PackageDbError> {
    let mut files = read(root)?.files;
    files.sort_by(|a, b| {
        driftwatch_protocol::path::cmp(&a.path, &b.path).then_with(|| a.package.cmp(&b.package))
    });
    files.dedup();
    Ok(files)
}

/// What an installed database records.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// Packages, in database order.
    pub packages: Vec<Package>,
    /// Files with a checksum, in database order.
    pub files: Vec<PackagedFile>,
}

fn read(root: &Path) -> Result<Installed, PackageDbError> {
    let path = db_file(root, INSTALLED)?;
    let bytes = read_db_file(&path)?;
    parse_installed(&bytes).map_err(|reason| PackageDbError::Malformed { path, reason })
}

/// Parses an apk installed database.
///
/// Errors, as a reason naming the record (1-based) and line: a line that is not blank
/// and not `K:value`; a line over 1 MiB; a record without `P:` or `V:`, or with one
/// given twice; a name, version or architecture that is not printable UTF-8 without
/// spaces or slashes; an `R:` before any `F:`, a `Z:` not after an `R:` (or a second
/// one); a directory or file name that is absolute, empty or contains `.`/`..`
/// components or NUL; a checksum that is neither `Q1`/`Q2` base64 of the right length
/// nor 32 hex digits (MD5) or 40 (SHA-1).
pub fn parse_installed(bytes: &[u8]) -> Result<Installed, String> {
    let mut installed = Installed::default();
    let mut record = Record::default();
    let mut records = 0usize;
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_number = index + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if record.line != 0 {
                record.finish(records, &mut installed)?;
                record = Record::default();
            }
            continue;
        }
        if record.line == 0 {
            records += 1;
            record.line = line_number;
        }
        let at = || format!("record {records}, line {line_number}");
        if line.len() > MAX_FIELD_BYTES {
            return Err(format!(
                "{}: line longer than {} MiB",
                at(),
                MAX_FIELD_BYTES >> 20
            ));
        }
        let (Some(&key), Some(b':')) = (line.first(), line.get(1)) else {
            return Err(format!("{}: expected `K:value`", at()));
        };
        let value = &line[2..];
        match key {
            b'P' => set_once(&mut record.name, value, "P").map_err(|r| format!("{}: {r}", at()))?,
            b'V' => {
                set_once(&mut record.version, value, "V").map_err(|r| format!("{}: {r}", at()))?
            }
            b'A' => set_once(&mut record.arch, value, "A").map_err(|r| format!("{}: {r}", at()))?,
            b'F' => {
                if !valid_dir(value) {
                    return Err(format!(
                        "{}: F: must be a relative directory without `.` or `..`",
                        at()
                    ));
                }
                record.dir = Some(value);
                record.file_open = false;
            }
            b'R' => {
                let Some(dir) = record.dir else {
                    return Err(format!("{}: R: before any F:", at()));
                };
                if !valid_name(value) {
                    return Err(format!("{}: R: must be a file name", at()));
                }
                let mut path = Vec::with_capacity(dir.len() + value.len() + 2);
                path.push(b'/');
                if !dir.is_empty() {
                    path.extend_from_slice(dir);
                    path.push(b'/');
                }
                path.extend_from_slice(value);
                record.files.push((path, None));
                record.file_open = true;
            }
            b'Z' => {
                let Some((_, checksum)) = record.files.last_mut().filter(|_| record.file_open)
                else {
                    return Err(format!("{}: Z: without a preceding R:", at()));
                };
                if checksum.is_some() {
                    return Err(format!("{}: second Z: for one file", at()));
                }
                *checksum = Some(
                    decode_checksum(value)
                        .ok_or_else(|| format!("{}: unrecognised checksum", at()))?,
                );
            }
            // Size, description, dependencies, ACLs, …: not needed.
            _ => {}
        }
    }
    if record.line != 0 {
        record.finish(records, &mut installed)?;
    }
    Ok(installed)
}

/// A decoded `Z:` value.
type Checksum = (DigestAlgorithm, Vec<u8>);

/// One package record being read.
#[derive(Default)]
struct Record<'a> {
    /// The line it starts on; 0 while no record is open.
    line: usize,
    name: Option<&'a [u8]>,
    version: Option<&'a [u8]>,
    arch: Option<&'a [u8]>,
    /// The current `F:` directory.
    dir: Option<&'a [u8]>,
    /// Whether the last `R:` may still take a `Z:` (a new `F:` closes it).
    file_open: bool,
    files: Vec<(Vec<u8>, Option<Checksum>)>,
}

impl Record<'_> {
    fn finish(self, number: usize, installed: &mut Installed) -> Result<(), String> {
        let at = format!("record {number} (line {})", self.line);
        let name = self
            .name
            .ok_or_else(|| format!("{at}: missing P:"))
            .and_then(|name| token(name, "P").map_err(|r| format!("{at}: {r}")))?;
        let at = format!("record {number} (package {name}, line {})", self.line);
        let version = self
            .version
            .ok_or_else(|| format!("{at}: missing V:"))
            .and_then(|version| token(version, "V").map_err(|r| format!("{at}: {r}")))?;
        let arch = match self.arch {
            Some(arch) => token(arch, "A").map_err(|r| format!("{at}: {r}"))?,
            None => "",
        };
        for (path, checksum) in self.files {
            if let Some((algorithm, digest)) = checksum {
                installed.files.push(PackagedFile {
                    path,
                    package: name.to_string(),
                    algorithm,
                    digest,
                    config: false,
                });
            }
        }
        installed.packages.push(Package {
            name: name.to_string(),
            arch: arch.to_string(),
            version: version.to_string(),
        });
        Ok(())
    }
}

fn set_once<'a>(slot: &mut Option<&'a [u8]>, value: &'a [u8], key: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("{key}: given twice"));
    }
    *slot = Some(value);
    Ok(())
}

/// A name, version or architecture: non-empty printable ASCII or UTF-8, no spaces, no
/// slashes (names end up in reports and must not pose as paths).
fn token<'a>(value: &'a [u8], key: &str) -> Result<&'a str, String> {
    let text = std::str::from_utf8(value).map_err(|_| format!("{key}: is not UTF-8"))?;
    if text.is_empty()
        || text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(format!("{key}: invalid value {text:?}"));
    }
    Ok(text)
}

/// `F:` values: relative, components neither empty, `.` nor `..`; empty means the root.
fn valid_dir(dir: &[u8]) -> bool {
    dir.is_empty() || dir.split(|&b| b == b'/').all(valid_name)
}

fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// Decodes a `Z:` checksum: `Q1`/`Q2` + base64, or bare hex (old databases).
fn decode_checksum(value: &[u8]) -> Option<Checksum> {
    let (algorithm, digest) = match value {
        [b'Q', b'1', rest @ ..] => (DigestAlgorithm::Sha1, base64_decode(rest)?),
        [b'Q', b'2', rest @ ..] => (DigestAlgorithm::Sha256, base64_decode(rest)?),
        hex if hex.len() == 32 => (DigestAlgorithm::Md5, hex_decode(hex)?),
        hex if hex.len() == 40 => (DigestAlgorithm::Sha1, hex_decode(hex)?),
        _ => return None,
    };
    let expected = match algorithm {
        DigestAlgorithm::Md5 => 16,
        DigestAlgorithm::Sha1 => 20,
        _ => 32,
    };
    (digest.len() == expected).then_some((algorithm, digest))
}

fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    // A Q2 digest is 44 characters; anything much longer is not a checksum, and
    // decoding it would only allocate.
    if text.len() > 64 {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn hex_decode(hex: &[u8]) -> Option<Vec<u8>> {
    hex.chunks_exact(2)
        .map(|pair| {
            let digit = |b: u8| char::from(b).to_digit(16);
            u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fs;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/apk/installed");

    fn err(text: &str) -> String {
        match parse_installed(text.as_bytes()) {
            Ok(installed) => panic!("expected an error, got {installed:?}"),
            Err(reason) => reason,
        }
    }

    #[test]
    fn fixture_packages_and_files() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("lib/apk/db")).unwrap();
        fs::copy(FIXTURE, root.path().join(INSTALLED)).unwrap();
        assert!(is_present(root.path()));
        let packages = read_packages(root.path()).unwrap();
        let names: Vec<(&str, &str, &str)> = packages
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str(), p.arch.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("musl", "1.2.4_git20230717-r4", "x86_64"),
                ("busybox", "1.36.1-r15", "x86_64"),
                ("alpine-baselayout-data", "3.4.3-r2", "x86_64"),
                ("alpine-release", "3.19.1-r0", "x86_64"),
            ]
        );
        let files = packaged_files(root.path()).unwrap();
        let paths: Vec<String> = files
            .iter()
            .map(|f| format!("{} {}", String::from_utf8_lossy(&f.path), f.package))
            .collect();
        assert_eq!(paths.len(), 17, "{paths:#?}");
        assert_eq!(paths[0], "/bin/busybox busybox");
        assert!(paths.contains(&"/etc/busybox-paths.d/busybox busybox".to_string()));
        assert!(paths.contains(&"/usr/lib/os-release alpine-release".to_string()));
        assert!(files
            .iter()
            .all(|f| f.algorithm == DigestAlgorithm::Sha1 && f.digest.len() == 20 && !f.config));
        let empty = tempfile::tempdir().unwrap();
        assert!(!is_present(empty.path()));
    }

    #[test]
    fn checksum_forms_and_files_without_one() {
        let sha256 = format!(
            "Q2{}",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        );
        let text = format!(
            "P:a\r\nV:1\r\nF:\r\nR:top\r\nZ:{sha256}\r\nF:usr/bin\r\nR:nosum\r\nR:md5\r\nZ:00112233445566778899aabbccddeeff\r\n\r\n\n\nP:b\nV:2\n"
        );
        let installed = parse_installed(text.as_bytes()).unwrap();
        assert_eq!(installed.packages.len(), 2);
        assert_eq!(installed.packages[1].arch, "");
        let files: Vec<(&[u8], DigestAlgorithm)> = installed
            .files
            .iter()
            .map(|f| (f.path.as_slice(), f.algorithm))
            .collect();
        assert_eq!(
            files,
            vec![
                (&b"/top"[..], DigestAlgorithm::Sha256),
                (b"/usr/bin/md5", DigestAlgorithm::Md5)
            ]
        );
        assert_eq!(installed.files[0].digest, vec![7u8; 32]);
    }

    #[test]
    fn hostile_databases_are_errors_naming_the_place() {
        let cases = [
            ("P:a\nV:1\n\nV:2\n", "record 2 (line 4): missing P:"),
            ("P:a\n", "record 1 (package a, line 1): missing V:"),
            ("P:a\nV:1\nPa\n", "record 1, line 3: expected `K:value`"),
            ("P:a\nP:b\n", "record 1, line 2: P: given twice"),
            ("P:a\nV:1\nR:x\n", "record 1, line 3: R: before any F:"),
            (
                "P:a\nV:1\nF:etc\nZ:Q1AAAA\n",
                "line 4: Z: without a preceding R:",
            ),
            (
                "P:a\nV:1\nF:etc\nR:x\nF:usr\nZ:Q1AAAA\n",
                "line 6: Z: without a preceding R:",
            ),
            (
                "P:a\nV:1\nF:/etc\n",
                "line 3: F: must be a relative directory",
            ),
            (
                "P:a\nV:1\nF:etc/../..\n",
                "line 3: F: must be a relative directory",
            ),
            (
                "P:a\nV:1\nF:etc\nR:../x\n",
                "line 4: R: must be a file name",
            ),
            (
                "P:a\nV:1\nF:etc\nR:x\nZ:Q1AAAA\n",
                "line 5: unrecognised checksum",
            ),
            (
                "P:a\nV:1\nF:etc\nR:x\nZ:Q1!!!!!!!!!!!!!!!!!!!!!!!!!!!=\n",
                "unrecognised checksum",
            ),
            ("P:a b\nV:1\n", "record 1 (line 1): P: invalid value"),
            ("P:a\nV:1\nA:x/y\n", "A: invalid value"),
        ];
        for (text, expected) in cases {
            let reason = match parse_installed(text.as_bytes()) {
                Ok(installed) => panic!("{text:?}: expected an error, got {installed:?}"),
                Err(reason) => reason,
            };
            assert!(reason.contains(expected), "{text:?}: {reason}");
        }
        let mut long = b"P:a\nT:".to_vec();
        long.resize(long.len() + MAX_FIELD_BYTES, b'x');
        let reason = parse_installed(&long).unwrap_err();
        assert!(
            reason.contains("record 1, line 2: line longer than 1 MiB"),
            "{reason}"
        );
        assert!(err("P:a\nV:1\nR").contains("expected `K:value`"));
        let reason = parse_installed(b"P:a\xff\nV:1\n").unwrap_err();
        assert!(
            reason.contains("record 1 (line 1): P: is not UTF-8"),
            "{reason}"
        );
    }

    #[test]
    fn read_packages_names_the_file() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("lib/apk/db")).unwrap();
        fs::write(root.path().join(INSTALLED), "P:a\n").unwrap();
        let text = read_packages(root.path()).unwrap_err().to_string();
        assert!(
            text.contains("lib/apk/db/installed is malformed: record 1"),
            "{text}"
        );
    }

    /// A record's directories, each with its files and their SHA-1s.
    type Dirs = Vec<(String, Vec<(String, [u8; 20])>)>;

    fn render(records: &[(Package, Dirs)]) -> String {
        let mut out = String::new();
        for (package, dirs) in records {
            out.push_str(&format!(
                "C:Q1AAAAAAAAAAAAAAAAAAAAAAAAAAA=\nP:{}\nV:{}\n",
                package.name, package.version
            ));
            if !package.arch.is_empty() {
                out.push_str(&format!("A:{}\n", package.arch));
            }
            out.push_str("T:description: with colons\nS:1234\n");
            for (dir, files) in dirs {
                out.push_str(&format!("F:{dir}\nM:0:0:755\n"));
                for (name, digest) in files {
                    let q1 = base64::engine::general_purpose::STANDARD.encode(digest);
                    out.push_str(&format!("R:{name}\na:0:0:644\nZ:Q1{q1}\n"));
                }
            }
            out.push('\n');
        }
        out
    }

    fn arb_record() -> impl Strategy<Value = (Package, Dirs)> {
        (
            "[a-z0-9][a-z0-9+._-]{0,12}",
            "[0-9][0-9a-z._]{0,6}-r[0-9]{1,2}",
            prop::sample::select(vec!["", "x86_64", "aarch64", "noarch"]),
            prop::collection::vec(
                (
                    "[a-z]{1,4}(/[a-z0-9]{1,4}){0,2}",
                    prop::collection::vec(("[a-zA-Z0-9._-]{1,8}", any::<[u8; 20]>()), 0..4),
                ),
                0..4,
            ),
        )
            .prop_filter("names . and .. are not files", |(_, _, _, dirs)| {
                dirs.iter()
                    .all(|(_, files)| files.iter().all(|(name, _)| name != "." && name != ".."))
            })
            .prop_map(|(name, version, arch, dirs)| {
                (
                    Package {
                        name,
                        arch: arch.to_string(),
                        version,
                    },
                    dirs,
                )
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_installed(&bytes);
        }

        #[test]
        fn installed_like_lines_never_panic(lines in prop::collection::vec(
            prop::sample::select(vec![
                "P:a", "V:1", "A:x86_64", "F:etc", "F:", "R:x", "R:", "Z:Q1", "Z:Q2",
                "Z:Q1AAAAAAAAAAAAAAAAAAAAAAAAAAA=", "Z:00112233445566778899aabbccddeeff",
                "", "\r", ":", "Z", "M:0:0:755", "\u{0}",
            ]),
            0..40,
        )) {
            let _ = parse_installed(lines.join("\n").as_bytes());
        }

        #[test]
        fn well_formed_records_round_trip(records in prop::collection::vec(arb_record(), 0..8)) {
            let text = render(&records);
            let parsed = parse_installed(text.as_bytes()).unwrap();
            let packages: Vec<Package> = records.iter().map(|(p, _)| p.clone()).collect();
            prop_assert_eq!(parsed.packages, packages);
            let files: Vec<PackagedFile> = records
                .iter()
                .flat_map(|(package, dirs)| {
                    dirs.iter().flat_map(move |(dir, files)| {
                        files.iter().map(move |(name, digest)| PackagedFile {
                            path: format!("/{dir}/{name}").into_bytes(),
                            package: package.name.clone(),
                            algorithm: DigestAlgorithm::Sha1,
                            digest: digest.to_vec(),
                            config: false,
                        })
                    })
                })
                .collect();
            prop_assert_eq!(parsed.files, files);
        }
    }
}
