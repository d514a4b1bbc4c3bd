//! The one way the agent reads a file's content to hash it: the file scan, package
//! verification and the running-executable check all come through [`hash_file`], so
//! they share the same protections against a hostile host.
//!
//! - **Bounded**: a file larger than the caller's limit is refused before any read
//!   ([`HashError::TooLarge`]), and never more than the size it had when opened is read
//!   (a file that keeps growing cannot keep a thread reading forever).
//! - **Holes are not read**: for a sparse file (fewer blocks allocated than its size
//!   says) the kernel is asked where the data is (`SEEK_DATA`/`SEEK_HOLE`) and the holes
//!   are fed to the hashers as zeros from memory. The digest is the digest of the full
//!   logical content — exactly what hashing the zeros would give — so it stays
//!   comparable with baselines made by any reader (`b3sum`, an older agent).
//! - **Paced and cancellable**: reads share a [`Pacer`] (bytes per second across
//!   threads), and a cancel flag is honoured between buffers, so a paced read of a huge
//!   file stops within one buffer.
//! - **Consistent**: the file is `fstat`ed again after reading; if its size, mtime or
//!   ctime moved, the digest is discarded ([`HashError::Changed`]).
//! - **Counted**: every file and byte hashed is added to process-wide counters
//!   ([`totals`]) that the daemon exports as metrics.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How far paced reading may run ahead of its rate before it sleeps.
const PACE_SLACK: Duration = Duration::from_millis(50);
/// Zeros fed to the hashers for a hole, one slice at a time.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

static FILES_HASHED: AtomicU64 = AtomicU64::new(0);
static BYTES_READ: AtomicU64 = AtomicU64::new(0);
static HOLE_BYTES: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Process-wide hashing counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Files hashed to the end.
    pub files: u64,
    /// Bytes read from disk for hashing.
    pub bytes_read: u64,
    /// Bytes of holes hashed as zeros without reading.
    pub hole_bytes: u64,
    /// Files refused or abandoned: above the size limit, changing, cancelled.
    pub refused: u64,
}

/// The counters so far.
pub fn totals() -> Totals {
    Totals {
        files: FILES_HASHED.load(Ordering::Relaxed),
        bytes_read: BYTES_READ.load(Ordering::Relaxed),
        hole_bytes: HOLE_BYTES.load(Ordering::Relaxed),
        refused: REFUSED.load(Ordering::Relaxed),
    }
}

/// A digest algorithm: BLAKE3 for baselines, the others for package databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Baselines.
    Blake3,
    /// dpkg, old rpm, apk.
    Md5,
    /// apk.
    Sha1,
    /// rpm.
    Sha224,
    /// rpm, optional in baselines.
    Sha256,
    /// rpm.
    Sha384,
    /// rpm.
    Sha512,
}

/// One running digest.
pub enum Hasher {
    /// BLAKE3 (boxed: it is ten times larger than the others).
    Blake3(Box<blake3::Hasher>),
    /// MD5.
    Md5(md5::Md5),
    /// SHA-1.
    Sha1(sha1::Sha1),
    /// SHA-224.
    Sha224(sha2::Sha224),
    /// SHA-256.
    Sha256(sha2::Sha256),
    /// SHA-384.
    Sha384(sha2::Sha384),
    /// SHA-512.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A fresh digest of `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        use sha2::Digest;
        match algorithm {
            Algorithm::Blake3 => Hasher::Blake3(Box::default()),
            Algorithm::Md5 => Hasher::Md5(md5::Md5::new()),
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha224 => Hasher::Sha224(sha2::Sha224::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest;
        match self {
            Hasher::Blake3(h) => {
                h.update(data);
            }
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha224(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest.
    pub fn finish(self) -> (Algorithm, Vec<u8>) {
        use sha2::Digest;
        match self {
            Hasher::Blake3(h) => (Algorithm::Blake3, h.finalize().as_bytes().to_vec()),
            Hasher::Md5(h) => (Algorithm::Md5, h.finalize().to_vec()),
            Hasher::Sha1(h) => (Algorithm::Sha1, h.finalize().to_vec()),
            Hasher::Sha224(h) => (Algorithm::Sha224, h.finalize().to_vec()),
            Hasher::Sha256(h) => (Algorithm::Sha256, h.finalize().to_vec()),
            Hasher::Sha384(h) => (Algorithm::Sha384, h.finalize().to_vec()),
            Hasher::Sha512(h) => (Algorithm::Sha512, h.finalize().to_vec()),
        }
    }
}

/// A 32-byte digest (BLAKE3, SHA-256) out of [`Hasher::finish`].
pub fn digest32(digest: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    if digest.len() == 32 {
        out.copy_from_slice(digest);
    }
    out
}

/// Paces reading across threads to a rate in bytes per second.
pub struct Pacer {
    bytes_per_sec: u64,
    started: Instant,
    consumed: AtomicU64,
}

impl Pacer {
    /// Paces to `bytes_per_sec` from now on (0: unlimited).
    pub fn new(bytes_per_sec: u64) -> Self {
        Pacer {
            bytes_per_sec,
            started: Instant::now(),
            consumed: AtomicU64::new(0),
        }
    }

    /// Accounts for `bytes` read and, once reading is more than [`PACE_SLACK`] ahead of
    /// the rate, sleeps until it is back on it. Sleeping after every buffer would cut
    /// hashing into bursts too short to keep caches warm: measured here, that doubled
    /// the CPU time of the same work.
    fn pace(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let total = self.consumed.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let due = Duration::from_secs_f64(total as f64 / self.bytes_per_sec as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            if ahead > PACE_SLACK {
                std::thread::sleep(ahead);
            }
        }
    }
}

/// What bounds one caller's hashing.
pub struct Limits<'a> {
    /// Files larger than this are not hashed (bytes of logical size).
    pub max_bytes: u64,
    /// Shared read pacing.
    pub pacer: &'a Pacer,
    /// Set to stop within one buffer.
    pub cancel: &'a AtomicBool,
}

/// Why a file was not hashed.
#[derive(Debug)]
pub enum HashError {
    /// Larger than [`Limits::max_bytes`].
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Its size, mtime or ctime moved while it was read.
    Changed,
    /// The cancel flag was set.
    Cancelled,
    /// Reading failed.
    Io(io::Error),
}

impl std::fmt::Display for HashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashError::TooLarge { size, limit } => write!(
                f,
                "not hashed: {size} bytes is above the size limit of {limit} bytes"
            ),
            HashError::Changed => f.write_str("changed while being read"),
            HashError::Cancelled => f.write_str("cancelled"),
            HashError::Io(err) => f.write_str(&super::rootfs::io_message(err)),
        }
    }
}

/// Hashes the `opened.len()` bytes of `file` (whose `fstat` is `opened`) into every
/// one of `hashers`, reading through `buffer`; returns the bytes read from disk (holes
/// are not read). See the module documentation for the guarantees.
pub fn hash_file(
    file: &File,
    opened: &Metadata,
    hashers: &mut [Hasher],
    buffer: &mut [u8],
    limits: &Limits<'_>,
) -> Result<u64, HashError> {
    let size = opened.size();
    if size > limits.max_bytes {
        REFUSED.fetch_add(1, Ordering::Relaxed);
        return Err(HashError::TooLarge {
            size,
            limit: limits.max_bytes,
        });
    }
    let result = read_all(file, size, is_sparse(opened), hashers, buffer, limits)
        .and_then(|read| check_unchanged(file, opened).map(|()| read));
    match &result {
        Ok(read) => {
            FILES_HASHED.fetch_add(1, Ordering::Relaxed);
            BYTES_READ.fetch_add(*read, Ordering::Relaxed);
        }
        Err(_) => {
            REFUSED.fetch_add(1, Ordering::Relaxed);
        }
    }
    result
}

/// Fewer 512-byte blocks allocated than the size needs: there are holes. (A file with
/// inline data or compression can look sparse too; asking the kernel costs two
/// `lseek`s, so a false positive is cheap.)
fn is_sparse(meta: &Metadata) -> bool {
    meta.blocks().saturating_mul(512) < meta.size()
}

fn read_all(
    file: &File,
    size: u64,
    sparse: bool,
    hashers: &mut [Hasher],
    buffer: &mut [u8],
    limits: &Limits<'_>,
) -> Result<u64, HashError> {
    let mut offset = 0u64;
    let mut read_total = 0u64;
    while offset < size {
        let (data_start, data_end) = if sparse {
            next_data(file, offset, size)?
        } else {
            (offset, size)
        };
        feed_zeros(hashers, data_start - offset, limits)?;
        offset = data_start;
        while offset < data_end {
            if limits.cancel.load(Ordering::Relaxed) {
                return Err(HashError::Cancelled);
            }
            let want = (data_end - offset).min(buffer.len() as u64) as usize;
            let read = match file.read_at(&mut buffer[..want], offset) {
                Ok(0) => return Err(HashError::Changed), // shrank under us
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(HashError::Io(err)),
            };
            for hasher in hashers.iter_mut() {
                hasher.update(&buffer[..read]);
            }
            offset += read as u64;
            read_total += read as u64;
            limits.pacer.pace(read as u64);
        }
    }
    Ok(read_total)
}

/// The next data region at or after `offset`, clipped to `size`; `(size, size)` when
/// only a hole remains.
fn next_data(file: &File, offset: u64, size: u64) -> Result<(u64, u64), HashError> {
    use rustix::fs::{seek, SeekFrom};
    let start = match seek(file, SeekFrom::Data(offset)) {
        Ok(start) => start.min(size),
        Err(rustix::io::Errno::NXIO) => return Ok((size, size)),
        // A filesystem without SEEK_DATA: read everything.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => return Ok((offset, size)),
        Err(err) => return Err(HashError::Io(err.into())),
    };
    let end = match seek(file, SeekFrom::Hole(start)) {
        Ok(end) => end.min(size),
        Err(_) => size,
    };
    Ok((start, end.max(start)))
}

fn feed_zeros(
    hashers: &mut [Hasher],
    mut length: u64,
    limits: &Limits<'_>,
) -> Result<(), HashError> {
    HOLE_BYTES.fetch_add(length, Ordering::Relaxed);
    while length > 0 {
        if limits.cancel.load(Ordering::Relaxed) {
            return Err(HashError::Cancelled);
        }
        let step = length.min(ZEROS.len() as u64) as usize;
        for hasher in hashers.iter_mut() {
            hasher.update(&ZEROS[..step]);
        }
        length -= step as u64;
    }
    Ok(())
}

fn check_unchanged(file: &File, before: &Metadata) -> Result<(), HashError> {
    let after = file.metadata().map_err(HashError::Io)?;
    let stable = after.size() == before.size()
        && after.mtime() == before.mtime()
        && after.mtime_nsec() == before.mtime_nsec()
        && after.ctime() == before.ctime()
        && after.ctime_nsec() == before.ctime_nsec();
    if stable {
        Ok(())
    } else {
        Err(HashError::Changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn hash(file: &File, max_bytes: u64, cancel: bool) -> Result<(Vec<u8>, u64), HashError> {
        let pacer = Pacer::new(0);
        let cancel = AtomicBool::new(cancel);
        let limits = Limits {
            max_bytes,
            pacer: &pacer,
            cancel: &cancel,
        };
        let mut hashers = [Hasher::new(Algorithm::Blake3)];
        let meta = file.metadata().map_err(HashError::Io)?;
        let read = hash_file(file, &meta, &mut hashers, &mut [0; 4096], &limits)?;
        let [hasher] = hashers;
        Ok((hasher.finish().1, read))
    }

    #[test]
    fn holes_hash_as_zeros_without_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut file = File::create(&path).unwrap();
        let size = 64 * 1024 * 1024u64;
        file.seek(SeekFrom::Start(8 * 1024 * 1024)).unwrap();
        file.write_all(b"data in the middle").unwrap();
        file.set_len(size).unwrap();
        drop(file);
        let file = File::open(&path).unwrap();
        let (digest, read) = hash(&file, u64::MAX, false).unwrap();
        let mut expected = vec![0u8; size as usize];
        expected[8 * 1024 * 1024..8 * 1024 * 1024 + 18].copy_from_slice(b"data in the middle");
        assert_eq!(digest, blake3::hash(&expected).as_bytes());
        assert!(
            read < 1024 * 1024,
            "read {read} bytes of a 64 MiB sparse file"
        );
    }

    #[test]
    fn limits_and_cancellation_stop_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        fs_write(&path, &[7; 10_000]);
        let file = File::open(&path).unwrap();
        assert!(matches!(
            hash(&file, 9_999, false),
            Err(HashError::TooLarge {
                size: 10_000,
                limit: 9_999
            })
        ));
        assert!(matches!(
            hash(&file, u64::MAX, true),
            Err(HashError::Cancelled)
        ));
        let (digest, read) = hash(&file, 10_000, false).unwrap();
        assert_eq!(digest, blake3::hash(&[7; 10_000]).as_bytes());
        assert_eq!(read, 10_000);
    }

    #[test]
    fn every_algorithm_matches_its_reference() {
        use sha2::Digest;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs_write(&path, b"abc");
        let file = File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        let algorithms = [Algorithm::Md5, Algorithm::Sha1, Algorithm::Sha256];
        let mut hashers: Vec<Hasher> = algorithms.iter().map(|&a| Hasher::new(a)).collect();
        let pacer = Pacer::new(0);
        let cancel = AtomicBool::new(false);
        let limits = Limits {
            max_bytes: u64::MAX,
            pacer: &pacer,
            cancel: &cancel,
        };
        hash_file(&file, &meta, &mut hashers, &mut [0; 16], &limits).unwrap();
        let digests: Vec<Vec<u8>> = hashers.into_iter().map(|h| h.finish().1).collect();
        assert_eq!(digests[0], md5::Md5::digest(b"abc").to_vec());
        assert_eq!(digests[1], sha1::Sha1::digest(b"abc").to_vec());
        assert_eq!(digests[2], sha2::Sha256::digest(b"abc").to_vec());
    }

    fn fs_write(path: &std::path::Path, data: &[u8]) {
        std::fs::write(path, data).unwrap();
    }
}
