//! The hash cache behind fast verification (`state_dir/hash-cache`).
//!
//! After each full or fast verification the daemon records, per hashed file, the
//! identity it had (device, inode, size, mtime, ctime) and its hashes. The next fast
//! verification reads only files whose identity moved. The cache is an optimisation,
//! never a source of truth: it is sealed with a BLAKE3 digest, replaced atomically, and
//! anything wrong with it (missing, torn, corrupt, another format) means an empty cache
//! — every file is read again. The periodic full re-hash ignores it altogether, so a
//! forged cache can hide a change only until then.

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

impl HashCache {
    /// Loads the cache; any problem gives an empty cache (and everything is re-read).
    pub fn load(state_dir: &Path) -> HashCache {
        match fs::read(state_dir.join(CACHE_FILE)) {
            Ok(bytes) => HashCache::from_bytes(&bytes),
            Err(_) => HashCache::default(),
        }
    }

    /// The cache a file's bytes hold: [`MAGIC`], records, then the BLAKE3 of the
    /// records; anything else is an empty cache.
    pub fn from_bytes(bytes: &[u8]) -> HashCache {
        let Some(body) = bytes
            .strip_prefix(MAGIC)
            .and_then(|rest| rest.len().checked_sub(32).map(|at| rest.split_at(at)))
            .filter(|(body, digest)| blake3::hash(body).as_bytes() == *digest)
            .map(|(body, _)| body)
        else {
            tracing::warn!("The hash cache is corrupt; fast verification re-reads every file.");
            return HashCache::default();
        };
        decode(body).unwrap_or_else(|_| {
            tracing::warn!(
                "The hash cache does not decode; fast verification re-reads every file."
            );
            HashCache::default()
        })
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
        let cache = HashCache::load(dir.path());
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(b"/a", &identity(10)), Some(hashes));
        assert_eq!(cache.get(b"/b\xff", &identity(11)), Some(plain));
        assert_eq!(cache.get(b"/a", &identity(99)), None, "ctime moved");
        assert_eq!(cache.get(b"/c", &identity(10)), None);
    }

    #[test]
    fn anything_wrong_means_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(HashCache::load(dir.path()).len(), 0);
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
        assert_eq!(HashCache::load(dir.path()).len(), 1);
        let path = dir.path().join(CACHE_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(HashCache::load(dir.path()).len(), 0);
        fs::write(&path, &bytes[..5]).unwrap();
        assert_eq!(HashCache::load(dir.path()).len(), 0);
    }
}
