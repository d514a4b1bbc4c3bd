//! The hash cache behind fast verification (`state_dir/hash-cache`).
//!
//! After each full or fast verification the daemon records, per hashed file, the
//! identity it had (device, inode, size, mtime, ctime) and its hashes. The next fast
//! verification reads only files whose identity moved. The cache is an optimisation,
//! never a source of truth: it is sealed with a BLAKE3 digest, replaced atomically, and
//! anything wrong with it (missing, torn, corrupt, another format) means an empty cache
//! — every file is read again. A cache that is there but damaged ([`CacheProblem`]) is
//! also reported: the daemon logs it, lists it in the status's `state_problems` and
//! counts it in the metrics, since a broken seal on a file only the daemon writes is
//! either a failing disk or someone at work. The periodic full re-hash ignores the
//! cache altogether, so a forged cache can hide a change only until then.

use crate::source::files::{ContentHashes, FileIdentity, KnownHashes};
use driftwatch_protocol::codec::{put_bytes, put_varint, DecodeError, Reader, MAX_PATH_BYTES};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// The cache file's name inside `state_dir`.
pub const CACHE_FILE: &str = "hash-cache";
/// The first bytes of a cache file (its format version).
pub const MAGIC: &[u8; 8] = b"DWHCACH1";

/// Known hashes by path.
#[derive(Debug, Default)]
pub struct HashCache {
    entries: HashMap<Vec<u8>, (FileIdentity, ContentHashes)>,
}

impl KnownHashes for HashCache {
    fn get(&self, path: &[u8], identity: &FileIdentity) -> Option<ContentHashes> {
        self.entries
            .get(path)
            .filter(|(known, _)| known == identity)
            .map(|(_, hashes)| *hashes)
    }
}

fn decode(bytes: &[u8]) -> Result<HashCache, DecodeError> {
    let mut input = Reader::new(bytes);
    let mut entries = HashMap::new();
    while !input.is_empty() {
        let path = input.bytes("path", MAX_PATH_BYTES)?.to_vec();
        let mut numbers = [0u64; 8];
        for number in &mut numbers {
            *number = input.varint()?;
        }
        let [dev, ino, size, mtime, mtime_ns, ctime, ctime_ns, with_sha256] = numbers;
        let mut blake3 = [0u8; 32];
        blake3.copy_from_slice(input.take(32)?);
        let sha256 = if with_sha256 == 1 {
            let mut sha = [0u8; 32];
            sha.copy_from_slice(input.take(32)?);
            Some(sha)
        } else {
            None
        };
        let identity = FileIdentity {
            dev,
            ino,
            size,
            mtime: (mtime as i64, mtime_ns as i64),
            ctime: (ctime as i64, ctime_ns as i64),
        };
        entries.insert(path, (identity, ContentHashes { blake3, sha256 }));
    }
    Ok(HashCache { entries })
}

/// Why a cache file found on disk was not used (a missing file is no problem: the
/// first check writes it).
#[derive(Debug, thiserror::Error)]
pub enum CacheProblem {
    /// It cannot be read.
    #[error("cannot be read: {0}")]
    Unreadable(io::Error),
    /// Magic or seal wrong: torn, damaged or tampered with.
    #[error("its seal does not match (torn, damaged or tampered with)")]
    BadSeal,
    /// Sealed, but the records do not decode.
    #[error("its records do not decode: {0}")]
    Undecodable(DecodeError),
}

/// The records of a sealed cache file: [`MAGIC`], records, then the BLAKE3 of the
/// records.
fn unseal(bytes: &[u8]) -> Result<&[u8], CacheProblem> {
    bytes
        .strip_prefix(MAGIC)
        .and_then(|rest| rest.len().checked_sub(32).map(|at| rest.split_at(at)))
        .filter(|(body, digest)| blake3::hash(body).as_bytes() == *digest)
        .map(|(body, _)| body)
        .ok_or(CacheProblem::BadSeal)
}

/// The cache file's bytes; `None` when there is none.
fn read(state_dir: &Path) -> Result<Option<Vec<u8>>, CacheProblem> {
    match fs::read(state_dir.join(CACHE_FILE)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(CacheProblem::Unreadable(err)),
    }
}

impl HashCache {
    /// Loads the cache for fast verification. Anything wrong with it gives an empty
    /// cache (every file is read again, and the check rewrites it) and the problem,
    /// for the log and the status.
    pub fn load(state_dir: &Path) -> (HashCache, Option<CacheProblem>) {
        let parsed = read(state_dir).and_then(|bytes| match bytes {
            Some(bytes) => HashCache::parse(&bytes),
            None => Ok(HashCache::default()),
        });
        match parsed {
            Ok(cache) => (cache, None),
            Err(problem) => (HashCache::default(), Some(problem)),
        }
    }

    /// Checks the cache's seal without building it (the checks that do not use it
    /// still say when it was found corrupt; they rewrite it anyway).
    pub fn inspect(state_dir: &Path) -> Option<CacheProblem> {
        match read(state_dir) {
            Ok(Some(bytes)) => unseal(&bytes).err(),
            Ok(None) => None,
            Err(problem) => Some(problem),
        }
    }

    /// The cache a file's bytes hold.
    pub fn parse(bytes: &[u8]) -> Result<HashCache, CacheProblem> {
        decode(unseal(bytes)?).map_err(CacheProblem::Undecodable)
    }

    /// Like [`HashCache::parse`], anything wrong giving an empty cache.
    pub fn from_bytes(bytes: &[u8]) -> HashCache {
        HashCache::parse(bytes).unwrap_or_default()
    }

    /// The number of files known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Writes a new cache record by record while a check runs (no list of every file is
/// held in memory); it replaces the old cache only on [`finish`](CacheWriter::finish).
pub struct CacheWriter {
    /// `None` once finished.
    out: Option<io::BufWriter<fs::File>>,
    hasher: blake3::Hasher,
    record: Vec<u8>,
    temp: std::path::PathBuf,
    target: std::path::PathBuf,
}

impl CacheWriter {
    /// Starts a new cache in `state_dir`.
    pub fn create(state_dir: &Path) -> io::Result<CacheWriter> {
        fs::create_dir_all(state_dir)?;
        let temp = state_dir.join(format!(".{CACHE_FILE}.tmp"));
        let mut out = io::BufWriter::new(fs::File::create(&temp)?);
        out.write_all(MAGIC)?;
        Ok(CacheWriter {
            out: Some(out),
            hasher: blake3::Hasher::new(),
            record: Vec::with_capacity(256),
            temp,
            target: state_dir.join(CACHE_FILE),
        })
    }

    /// Appends one file.
    pub fn push(
        &mut self,
        path: &[u8],
        identity: &FileIdentity,
        hashes: &ContentHashes,
    ) -> io::Result<()> {
        let body = &mut self.record;
        body.clear();
        put_bytes(body, path);
        for number in [
            identity.dev,
            identity.ino,
            identity.size,
            identity.mtime.0 as u64,
            identity.mtime.1 as u64,
            identity.ctime.0 as u64,
            identity.ctime.1 as u64,
            u64::from(hashes.sha256.is_some()),
        ] {
            put_varint(body, number);
        }
        body.extend_from_slice(&hashes.blake3);
        if let Some(sha256) = &hashes.sha256 {
            body.extend_from_slice(sha256);
        }
        self.hasher.update(&self.record);
        match self.out.as_mut() {
            Some(out) => out.write_all(&self.record),
            None => Err(io::Error::other("cache already finished")),
        }
    }

    /// Seals the cache, syncs it and moves it into place.
    pub fn finish(mut self) -> io::Result<()> {
        let mut out = self
            .out
            .take()
            .ok_or_else(|| io::Error::other("cache already finished"))?;
        out.write_all(self.hasher.finalize().as_bytes())?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&self.temp, &self.target)
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        // Unfinished (a cancelled or failed check): the old cache stays. After a
        // successful finish the temporary name no longer exists.
        let _ = fs::remove_file(&self.temp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(ctime: i64) -> FileIdentity {
        FileIdentity {
            dev: 1,
            ino: 2,
            size: 3,
            mtime: (-4, 5),
            ctime: (ctime, 6),
        }
    }

    #[test]
    fn round_trip_and_identity_must_match_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let hashes = ContentHashes {
            blake3: [7; 32],
            sha256: Some([8; 32]),
        };
        let plain = ContentHashes {
            blake3: [9; 32],
            sha256: None,
        };
        let mut writer = CacheWriter::create(dir.path()).unwrap();
        writer.push(b"/a", &identity(10), &hashes).unwrap();
        writer.push(b"/b\xff", &identity(11), &plain).unwrap();
        writer.finish().unwrap();
        let (cache, problem) = HashCache::load(dir.path());
        assert!(problem.is_none(), "{problem:?}");
        assert!(HashCache::inspect(dir.path()).is_none());
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(b"/a", &identity(10)), Some(hashes));
        assert_eq!(cache.get(b"/b\xff", &identity(11)), Some(plain));
        assert_eq!(cache.get(b"/a", &identity(99)), None, "ctime moved");
        assert_eq!(cache.get(b"/c", &identity(10)), None);
    }

    #[test]
    fn anything_wrong_means_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let (empty, problem) = HashCache::load(dir.path());
        assert!(
            empty.is_empty() && problem.is_none(),
            "a missing cache is no problem"
        );
        let hashes = ContentHashes {
            blake3: [7; 32],
            sha256: None,
        };
        let mut writer = CacheWriter::create(dir.path()).unwrap();
        writer.push(b"/a", &identity(1), &hashes).unwrap();
        writer.finish().unwrap();
        // A writer dropped unfinished (a cancelled check) leaves the old cache alone.
        let mut abandoned = CacheWriter::create(dir.path()).unwrap();
        abandoned.push(b"/b", &identity(2), &hashes).unwrap();
        drop(abandoned);
        assert_eq!(HashCache::load(dir.path()).0.len(), 1);
        let path = dir.path().join(CACHE_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let (cache, problem) = HashCache::load(dir.path());
        assert!(cache.is_empty());
        assert!(
            matches!(problem, Some(CacheProblem::BadSeal)),
            "{problem:?}"
        );
        assert!(matches!(
            HashCache::inspect(dir.path()),
            Some(CacheProblem::BadSeal)
        ));
        fs::write(&path, &bytes[..5]).unwrap();
        assert!(matches!(
            HashCache::load(dir.path()),
            (_, Some(CacheProblem::BadSeal))
        ));
        // Sealed but not records: refused as well.
        let mut forged = MAGIC.to_vec();
        forged.extend_from_slice(b"\x05/a");
        forged.extend_from_slice(blake3::hash(b"\x05/a").as_bytes());
        fs::write(&path, &forged).unwrap();
        assert!(matches!(
            HashCache::load(dir.path()),
            (_, Some(CacheProblem::Undecodable(_)))
        ));
    }
}
