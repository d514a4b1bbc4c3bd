//! The canonical byte encoding of entries.
//!
//! An entry is encoded as LEB128 varints and length-prefixed byte strings, its path
//! front-coded against the previous entry of the same block (paths sorted in walk order
//! share long prefixes: `/usr/share/doc/…`). This keeps a baseline of `/usr` at roughly a
//! third of the size of AIDE's database while staying a plain, deterministic byte string.
//!
//! Record layout (all integers are unsigned LEB128 unless said otherwise):
//!
//! ```text
//! shared_prefix_len, suffix_len, suffix bytes
//! type (1 byte), mode, uid, gid, size
//! mtime seconds (zigzag), mtime nanoseconds, rdev
//! link target: 0 = none, else len + 1 followed by len bytes
//! xattr count, then per xattr: name len, name, value len, value
//! hash flags (1 byte: bit 0 BLAKE3, bit 1 SHA-256), then 32 bytes per hash present
//! ```
//!
//! Decoding trusts nothing: every length is checked against the bytes that remain and
//! against fixed limits, so a hostile baseline yields a [`DecodeError`], never a panic or
//! a huge allocation.

use crate::entry::{Entry, FileType, Timestamp};
use thiserror::Error;

/// The longest path accepted when decoding (Linux allows deeper paths than `PATH_MAX`
/// through relative walks, but nothing near this).
pub const MAX_PATH_BYTES: usize = 64 * 1024;
/// The most extended attributes accepted on one entry.
pub const MAX_XATTRS: u64 = 256;
/// The largest extended attribute value accepted (the kernel's own limit).
pub const MAX_XATTR_VALUE_BYTES: usize = 64 * 1024;

const HASH_BLAKE3: u8 = 1;
const HASH_SHA256: u8 = 2;

/// Why bytes could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended inside a value.
    #[error("unexpected end of data")]
    Truncated,
    /// A varint ran over 10 bytes or overflowed 64 bits.
    #[error("malformed integer")]
    BadVarint,
    /// A length or count exceeded what remains or a fixed limit.
    #[error("{what} is out of range ({value})")]
    OutOfRange {
        /// Which field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// An unknown file type code.
    #[error("unknown file type code {0}")]
    BadFileType(u8),
    /// Unknown bits in the hash flags.
    #[error("unknown hash flags {0:#x}")]
    BadHashFlags(u8),
}

/// Appends `value` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a length-prefixed byte string.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A cursor over untrusted bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    /// True when every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Reads one byte.
    pub fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self.data.split_first().ok_or(DecodeError::Truncated)?;
        self.data = rest;
        Ok(first)
    }

    /// Reads an unsigned LEB128 varint.
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(DecodeError::BadVarint);
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint)
    }

    /// Reads a varint that must fit in `u32`.
    pub fn varint_u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let value = self.varint()?;
        u32::try_from(value).map_err(|_| DecodeError::OutOfRange { what, value })
    }

    /// Reads a length that must not exceed `max` nor the remaining bytes.
    pub fn length(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let value = self.varint()?;
        match usize::try_from(value) {
            Ok(len) if len <= max && len <= self.data.len() => Ok(len),
            _ => Err(DecodeError::OutOfRange { what, value }),
        }
    }

    /// Reads exactly `len` bytes.
    pub fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.data.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.data.split_at(len);
        self.data = rest;
        Ok(head)
    }

    /// Reads a length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.length(what, max)?;
        self.take(len)
    }

    fn hash(&mut self) -> Result<[u8; 32], DecodeError> {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.take(32)?);
        Ok(out)
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Appends `entry`, front-coding its path against `previous_path` (empty at the start
/// of a block).
pub fn encode_entry(out: &mut Vec<u8>, previous_path: &[u8], entry: &Entry) {
    let shared = previous_path
        .iter()
        .zip(entry.path.iter())
        .take_while(|(a, b)| a == b)
        .count();
    put_varint(out, shared as u64);
    put_bytes(out, &entry.path[shared..]);
    out.push(entry.file_type.code());
    put_varint(out, u64::from(entry.mode));
    put_varint(out, u64::from(entry.uid));
    put_varint(out, u64::from(entry.gid));
    put_varint(out, entry.size);
    put_varint(out, zigzag(entry.mtime.secs));
    put_varint(out, u64::from(entry.mtime.nanos));
    put_varint(out, entry.rdev);
    match &entry.link_target {
        None => put_varint(out, 0),
        Some(target) => {
            put_varint(out, target.len() as u64 + 1);
            out.extend_from_slice(target);
        }
    }
    put_varint(out, entry.xattrs.len() as u64);
    for (name, value) in &entry.xattrs {
        put_bytes(out, name);
        put_bytes(out, value);
    }
    let mut flags = 0u8;
    if entry.blake3.is_some() {
        flags |= HASH_BLAKE3;
    }
    if entry.sha256.is_some() {
        flags |= HASH_SHA256;
    }
    out.push(flags);
    for hash in [&entry.blake3, &entry.sha256].into_iter().flatten() {
        out.extend_from_slice(hash);
    }
}

/// Decodes one entry whose path is front-coded against `previous_path`.
pub fn decode_entry(input: &mut Reader<'_>, previous_path: &[u8]) -> Result<Entry, DecodeError> {
    let shared = input.varint()?;
    if shared > previous_path.len() as u64 {
        return Err(DecodeError::OutOfRange {
            what: "shared path prefix",
            value: shared,
        });
    }
    let shared = shared as usize;
    let suffix = input.bytes("path length", MAX_PATH_BYTES - shared)?;
    let mut path = Vec::with_capacity(shared + suffix.len());
    path.extend_from_slice(&previous_path[..shared]);
    path.extend_from_slice(suffix);
    let type_code = input.byte()?;
    let file_type = FileType::from_code(type_code).ok_or(DecodeError::BadFileType(type_code))?;
    let mode = input.varint_u32("mode")?;
    let uid = input.varint_u32("uid")?;
    let gid = input.varint_u32("gid")?;
    let size = input.varint()?;
    let secs = unzigzag(input.varint()?);
    let nanos = input.varint_u32("mtime nanoseconds")?;
    if nanos >= 1_000_000_000 {
        return Err(DecodeError::OutOfRange {
            what: "mtime nanoseconds",
            value: u64::from(nanos),
        });
    }
    let rdev = input.varint()?;
    let link_target = match input.length("link target length", MAX_PATH_BYTES + 1)? {
        0 => None,
        len_plus_one => Some(input.take(len_plus_one - 1)?.to_vec()),
    };
    let xattr_count = input.varint()?;
    if xattr_count > MAX_XATTRS {
        return Err(DecodeError::OutOfRange {
            what: "xattr count",
            value: xattr_count,
        });
    }
    let mut xattrs = Vec::new();
    for _ in 0..xattr_count {
        let name = input.bytes("xattr name length", 255)?.to_vec();
        let value = input
            .bytes("xattr value length", MAX_XATTR_VALUE_BYTES)?
            .to_vec();
        xattrs.push((name, value));
    }
    let flags = input.byte()?;
    if flags & !(HASH_BLAKE3 | HASH_SHA256) != 0 {
        return Err(DecodeError::BadHashFlags(flags));
    }
    let blake3 = if flags & HASH_BLAKE3 != 0 {
        Some(input.hash()?)
    } else {
        None
    };
    let sha256 = if flags & HASH_SHA256 != 0 {
        Some(input.hash()?)
    } else {
        None
    };
    Ok(Entry {
        path,
        file_type,
        mode,
        uid,
        gid,
        size,
        mtime: Timestamp { secs, nanos },
        rdev,
        link_target,
        xattrs,
        blake3,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(path: &[u8]) -> Entry {
        Entry {
            path: path.to_vec(),
            file_type: FileType::Symlink,
            mode: 0o4755,
            uid: 1000,
            gid: 100,
            size: 1 << 40,
            mtime: Timestamp {
                secs: -5,
                nanos: 999_999_999,
            },
            rdev: 0,
            link_target: Some(b"../\xfftarget".to_vec()),
            xattrs: vec![(b"security.capability".to_vec(), vec![1, 2, 3])],
            blake3: Some([7; 32]),
            sha256: Some([9; 32]),
        }
    }

    #[test]
    fn entries_round_trip_with_front_coding() {
        let a = sample(b"/usr/share/doc/a");
        let b = sample(b"/usr/share/doc/b\xff");
        let mut out = Vec::new();
        encode_entry(&mut out, b"", &a);
        encode_entry(&mut out, &a.path, &b);
        let mut input = Reader::new(&out);
        let da = decode_entry(&mut input, b"").unwrap();
        let db = decode_entry(&mut input, &da.path).unwrap();
        assert_eq!((da, db), (a, b));
        assert!(input.is_empty());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut out = Vec::new();
        encode_entry(&mut out, b"", &sample(b"/x"));
        for cut in 0..out.len() {
            let mut input = Reader::new(&out[..cut]);
            assert!(decode_entry(&mut input, b"").is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn hostile_lengths_are_rejected_without_allocating() {
        let mut out = Vec::new();
        put_varint(&mut out, 0);
        put_varint(&mut out, u64::MAX);
        assert!(matches!(
            decode_entry(&mut Reader::new(&out), b""),
            Err(DecodeError::OutOfRange { .. })
        ));
        let overlong = [0xffu8; 11];
        assert_eq!(Reader::new(&overlong).varint(), Err(DecodeError::BadVarint));
    }

    #[test]
    fn zigzag_round_trips_extremes() {
        for v in [0, 1, -1, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }
}
