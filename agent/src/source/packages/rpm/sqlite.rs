//! `rpmdb.sqlite` (rpm ≥ 4.16): the `Packages(hnum, blob)` table, opened so that
//! reading never writes.
//!
//! rpm keeps the database in WAL mode, and an ordinary SQLite reader creates (or needs
//! write access to) `rpmdb.sqlite-shm` and may create `-wal` next to the database. A
//! scanner must not touch the host's `/var/lib/rpm`, and an image root may be read-only.
//! So the database is opened with the URI parameter `immutable=1` (plus
//! `SQLITE_OPEN_READ_ONLY`): SQLite then takes no locks and never opens the WAL or the
//! shared-memory file, only the main file.
//!
//! The trade-off: content still sitting in `-wal` (committed but not yet checkpointed)
//! is not seen. rpm checkpoints and truncates the WAL to zero bytes whenever a
//! transaction's database handle closes, so a non-empty WAL means a transaction is in
//! progress or a writer crashed; the read then shows the last state rpm completed, and
//! the next check sees the rest. The alternative, copying `rpmdb.sqlite` and its WAL to
//! a private directory and opening the copy normally, would need a writable temporary
//! directory on every scan, read the whole database twice, and still race a concurrent
//! writer (the two files are not copied atomically). A writer checkpointing *while* we
//! read can also hand us a torn page: that surfaces as a malformed-database error, and
//! the next check retries.

use super::super::PackageDbError;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Calls `f(hnum, blob)` for every row of `Packages`, in header-number order.
pub fn for_each_blob(
    path: &Path,
    mut f: impl FnMut(u32, &[u8]) -> Result<(), PackageDbError>,
) -> Result<(), PackageDbError> {
    let malformed = |reason: String| PackageDbError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    // SQLite reports a missing or unreadable file as "unable to open database file";
    // opening it ourselves first gives the real reason (ENOENT, EACCES…).
    let metadata = fs::File::open(path)
        .and_then(|file| file.metadata())
        .map_err(|source| PackageDbError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if !metadata.is_file() {
        return Err(malformed("not a regular file".to_string()));
    }
    let sql = |e: rusqlite::Error| malformed(format!("cannot read it as an SQLite database: {e}"));
    let db = Connection::open_with_flags(
        immutable_uri(path),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    let mut statement = db
        .prepare("SELECT hnum, blob FROM Packages ORDER BY hnum")
        .map_err(sql)?;
    let mut rows = statement.query([]).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        let hnum: i64 = row.get(0).map_err(sql)?;
        let hnum = u32::try_from(hnum)
            .map_err(|_| malformed(format!("header number {hnum} is out of range")))?;
        match row.get_ref(1).map_err(sql)? {
            ValueRef::Blob(blob) => f(hnum, blob)?,
            other => {
                return Err(malformed(format!(
                    "header {hnum}: blob column holds {} data, not a BLOB",
                    other.data_type()
                )))
            }
        }
    }
    Ok(())
}

/// `file:PATH?immutable=1`, with every byte of the path that could end the path part
/// or be misread (`?`, `#`, `%`, non-ASCII…) percent-encoded.
fn immutable_uri(path: &Path) -> String {
    let bytes = path.as_os_str().as_bytes();
    // An absolute path gets an empty authority (`file:///…`): otherwise a path starting
    // with `//` would be read as `file://HOST/…`.
    let mut uri = String::from(if bytes.first() == Some(&b'/') {
        "file://"
    } else {
        "file:"
    });
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            uri.push(char::from(byte));
        } else {
            uri.push_str(&format!("%{byte:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    uri
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_encodes_everything_but_plain_path_bytes() {
        assert_eq!(
            immutable_uri(Path::new("/var/lib/rpm/rpmdb.sqlite")),
            "file:///var/lib/rpm/rpmdb.sqlite?immutable=1"
        );
        assert_eq!(
            immutable_uri(Path::new("//srv/a b?c#d%e/ü")),
            "file:////srv/a%20b%3Fc%23d%25e/%C3%BC?immutable=1"
        );
        assert_eq!(
            immutable_uri(Path::new("img/x.sqlite")),
            "file:img/x.sqlite?immutable=1"
        );
    }
}
