//! The baseline file format (version 1).
//!
//! A baseline is what an image *is*: every recorded entry, sorted in walk order, plus the
//! policy it was made with and the image's metadata. It is written once at bake time and
//! read on every host, so the format is built for three things:
//!
//! - **Determinism.** The same tree and policy give the same bytes: entries are sorted,
//!   metadata is serialised with a fixed field order, and the creation time comes from
//!   the caller (`SOURCE_DATE_EPOCH`). The digest therefore identifies an image's state.
//! - **Integrity.** Everything is covered by a BLAKE3 digest stored in a trailing *seal*,
//!   optionally signed with ed25519 (see [`crate::sign`]). A truncated, corrupted or
//!   re-signed file is detected before a single entry is trusted.
//! - **Flat memory.** Entries are grouped in blocks of [`BLOCK_ENTRIES`]; a small index
//!   of block offsets and first paths is the only part held in memory, so a check can
//!   stream a million-entry baseline and a single-path lookup costs one block read.
//!
//! Layout:
//!
//! ```text
//! MAGIC (8 bytes)  FORMAT_VERSION (u32 LE)  meta length (u32 LE)  meta (JSON)
//! block*           each: entry count (varint) + entries (see crate::codec)
//! index            block count (varint), per block: offset, entry count, first path
//! footer (32)      entries offset, index offset, entry count (u64 LE each), FOOTER_MAGIC
//! ---------------- everything above is the signed content; the seal follows ----------
//! seal             BLAKE3 digest (32), signed flag (1), [public key (32), signature (64)]
//! trailer (12)     seal length (u32 LE), SEAL_MAGIC (8)
//! ```

use crate::codec::{self, put_bytes, put_varint, DecodeError, Reader};
use crate::entry::Entry;
use crate::path;
use crate::sign::{PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::io::{self, Write};
use thiserror::Error;

/// The first bytes of every baseline.
pub const MAGIC: &[u8; 8] = b"DWBASE\r\n";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Entries per block: small enough that a lookup decodes little, large enough that the
/// in-memory index stays a few percent of the file.
pub const BLOCK_ENTRIES: usize = 64;
const FOOTER_MAGIC: &[u8; 8] = b"DWINDEX\0";
const SEAL_MAGIC: &[u8; 8] = b"DWSEAL\r\n";
const FOOTER_LEN: u64 = 32;
const TRAILER_LEN: u64 = 12;
const SEAL_UNSIGNED_LEN: u32 = 33;
const SEAL_SIGNED_LEN: u32 = 33 + 32 + 64;
/// The largest metadata section accepted (it holds the policy text).
const MAX_META_BYTES: u32 = 16 * 1024 * 1024;

/// What a baseline says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineMeta {
    /// The image this baseline belongs to (e.g. an AMI id or a build number).
    pub image_id: Option<String>,
    /// When the baseline was made, RFC 3339 (from `SOURCE_DATE_EPOCH` when set).
    pub created_at: String,
    /// The tool and version that made it, e.g. `driftwatch 0.1.0`.
    pub tool: String,
    /// The policy (TOML) the baseline was made with; `check` uses it unless told
    /// otherwise, so what is watched is decided at bake time and signed with the rest.
    pub policy: String,
    /// `blake3:` and the hex digest of `policy`.
    pub policy_digest: String,
    /// The content hashes recorded: `blake3`, and `sha256` when the policy asked.
    pub hashes: Vec<String>,
    /// The installed packages, when the root has a package database driftwatch reads.
    #[serde(default)]
    pub packages: Option<crate::package::PackageSet>,
    /// Runtime state accepted at bake time (`--capture-runtime`); `None` when not
    /// captured.
    #[serde(default)]
    pub runtime: Option<crate::runtime::CapturedRuntime>,
}

/// Why a baseline could not be written.
#[derive(Debug, Error)]
pub enum WriteError {
    /// The underlying writer failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Entries were not pushed in walk order (a bug in the caller).
    #[error("entries out of order: {} after {}", path::display(.next), path::display(.previous))]
    OutOfOrder {
        /// The entry pushed before.
        previous: Vec<u8>,
        /// The entry that should have come first.
        next: Vec<u8>,
    },
}

/// Why a baseline could not be read or trusted.
#[derive(Debug, Error)]
pub enum ReadError {
    /// Reading the file failed (an operational error, not an integrity failure).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// No seal at the end: the file is truncated or not a baseline.
    #[error("it is truncated or not a driftwatch baseline (no seal at its end)")]
    NoSeal,
    /// The digest in the seal does not match the content.
    #[error("its digest does not match its content (corrupted or tampered with)")]
    DigestMismatch,
    /// The signature does not verify with the key in the seal.
    #[error("its signature does not verify")]
    BadSignature,
    /// A public key was given but the baseline is not signed.
    #[error("it is not signed, but a public key was given to verify it")]
    Unsigned,
    /// The baseline is signed by another key than the one given.
    #[error("it is signed by {found}, not by the trusted key {expected}")]
    WrongKey {
        /// Fingerprint of the trusted key.
        expected: String,
        /// Fingerprint of the key in the seal.
        found: String,
    },
    /// The content passed its digest check but is not well formed.
    #[error("it is malformed: {what}")]
    Malformed {
        /// What is wrong.
        what: String,
    },
}

impl ReadError {
    /// True for failures of integrity (exit code 3), false for I/O errors (exit code 2).
    pub fn is_integrity_failure(&self) -> bool {
        !matches!(self, ReadError::Io(_))
    }

    fn malformed(what: impl Into<String>) -> Self {
        ReadError::Malformed { what: what.into() }
    }
}

impl From<DecodeError> for ReadError {
    fn from(err: DecodeError) -> Self {
        ReadError::malformed(err.to_string())
    }
}

/// Formats a digest as `blake3:<hex>`.
pub fn digest_string(digest: &[u8; 32]) -> String {
    format!("blake3:{}", blake3::Hash::from_bytes(*digest).to_hex())
}

/// Counts the bytes written and hashes them, so the digest needs no second pass.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.inner.write_all(bytes)
    }
}

struct IndexEntry {
    offset: u64,
    count: u64,
    first_path: Vec<u8>,
}

/// Streams entries into a baseline. Memory use is one block plus the index.
pub struct BaselineWriter<W: Write> {
    out: HashingWriter<W>,
    entries_offset: u64,
    block: Vec<u8>,
    block_count: u64,
    block_first_path: Vec<u8>,
    previous_path: Vec<u8>,
    index: Vec<IndexEntry>,
    entry_count: u64,
}

/// What a finished baseline is.
#[derive(Clone, Debug)]
pub struct Sealed {
    /// BLAKE3 of the signed content.
    pub digest: [u8; 32],
    /// The signing key, when signed.
    pub signer: Option<PublicKey>,
    /// Number of entries.
    pub entry_count: u64,
    /// Total size in bytes.
    pub size: u64,
}

impl<W: Write> BaselineWriter<W> {
    /// Starts a baseline: writes the header and the metadata.
    pub fn new(out: W, meta: &BaselineMeta) -> Result<Self, WriteError> {
        let meta_json = serde_json::to_vec(meta)
            .map_err(|e| WriteError::Io(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        let meta_len = u32::try_from(meta_json.len())
            .ok()
            .filter(|len| *len <= MAX_META_BYTES)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "baseline metadata too large")
            })?;
        let mut out = HashingWriter {
            inner: out,
            hasher: blake3::Hasher::new(),
            written: 0,
        };
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_le_bytes())?;
        out.write_all(&meta_len.to_le_bytes())?;
        out.write_all(&meta_json)?;
        Ok(BaselineWriter {
            entries_offset: out.written,
            out,
            block: Vec::with_capacity(16 * 1024),
            block_count: 0,
            block_first_path: Vec::new(),
            previous_path: Vec::new(),
            index: Vec::new(),
            entry_count: 0,
        })
    }

    /// Appends an entry; entries must come strictly in [`path::cmp`] order.
    pub fn push(&mut self, entry: &Entry) -> Result<(), WriteError> {
        if self.entry_count > 0 && path::cmp(&self.previous_path, &entry.path) != Ordering::Less {
            return Err(WriteError::OutOfOrder {
                previous: self.previous_path.clone(),
                next: entry.path.clone(),
            });
        }
        if self.block_count == 0 {
            self.block_first_path.clone_from(&entry.path);
            self.previous_path.clear();
        }
        codec::encode_entry(&mut self.block, &self.previous_path, entry);
        self.previous_path.clone_from(&entry.path);
        self.block_count += 1;
        self.entry_count += 1;
        if self.block_count as usize == BLOCK_ENTRIES {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<(), WriteError> {
        if self.block_count == 0 {
            return Ok(());
        }
        let mut head = Vec::with_capacity(10);
        put_varint(&mut head, self.block_count);
        self.index.push(IndexEntry {
            offset: self.out.written,
            count: self.block_count,
            first_path: std::mem::take(&mut self.block_first_path),
        });
        self.out.write_all(&head)?;
        self.out.write_all(&self.block)?;
        self.block.clear();
        self.block_count = 0;
        Ok(())
    }

    /// Writes the index, footer and seal (signed when a key is given) and returns the
    /// writer with what was sealed.
    pub fn finish(mut self, key: Option<&PrivateKey>) -> Result<(W, Sealed), WriteError> {
        self.flush_block()?;
        let index_offset = self.out.written;
        let mut index = Vec::new();
        put_varint(&mut index, self.index.len() as u64);
        for block in &self.index {
            put_varint(&mut index, block.offset);
            put_varint(&mut index, block.count);
            put_bytes(&mut index, &block.first_path);
        }
        self.out.write_all(&index)?;
        let mut footer = Vec::with_capacity(FOOTER_LEN as usize);
        footer.extend_from_slice(&self.entries_offset.to_le_bytes());
        footer.extend_from_slice(&index_offset.to_le_bytes());
        footer.extend_from_slice(&self.entry_count.to_le_bytes());
        footer.extend_from_slice(FOOTER_MAGIC);
        self.out.write_all(&footer)?;

        let digest: [u8; 32] = *self.out.hasher.finalize().as_bytes();
        let mut seal = Vec::with_capacity(SEAL_SIGNED_LEN as usize);
        seal.extend_from_slice(&digest);
        let signer = key.map(|key| {
            seal.push(1);
            seal.extend_from_slice(&key.public_key().to_bytes());
            seal.extend_from_slice(&key.sign_digest(&digest));
            key.public_key()
        });
        if signer.is_none() {
            seal.push(0);
        }
        let seal_len = seal.len() as u32;
        seal.extend_from_slice(&seal_len.to_le_bytes());
        seal.extend_from_slice(SEAL_MAGIC);
        self.out.write_all(&seal)?;
        let sealed = Sealed {
            digest,
            signer,
            entry_count: self.entry_count,
            size: self.out.written,
        };
        Ok((self.out.inner, sealed))
    }
}

/// Positioned reads, so one open baseline can serve many readers without seeking.
pub trait ReadAt {
    /// Total size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`, or fails (short data is an error).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .filter(|end| *end <= self.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self[start..end]);
        Ok(())
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

/// A verified, open baseline. Only the metadata and the block index are in memory.
pub struct BaselineReader<R> {
    source: R,
    meta: BaselineMeta,
    digest: [u8; 32],
    signer: Option<PublicKey>,
    index: Vec<IndexEntry>,
    index_offset: u64,
    entry_count: u64,
    size: u64,
}

fn read_vec<R: ReadAt + ?Sized>(source: &R, offset: u64, len: u64) -> Result<Vec<u8>, ReadError> {
    let len = usize::try_from(len).map_err(|_| ReadError::malformed("section too large"))?;
    let mut buf = vec![0u8; len];
    source.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

impl<R: ReadAt> BaselineReader<R> {
    /// Opens a baseline, verifying its digest over every byte and, when it is signed,
    /// its signature. With `trusted_key`, the baseline must be signed by exactly that
    /// key; without it a signature is checked against the key the baseline carries,
    /// which proves integrity but not origin.
    pub fn open(source: R, trusted_key: Option<&PublicKey>) -> Result<Self, ReadError> {
        let size = source.size()?;
        if size < TRAILER_LEN + u64::from(SEAL_UNSIGNED_LEN) {
            return Err(ReadError::NoSeal);
        }
        let trailer = read_vec(&source, size - TRAILER_LEN, TRAILER_LEN)?;
        if &trailer[4..] != SEAL_MAGIC {
            return Err(ReadError::NoSeal);
        }
        let seal_len = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        if seal_len != SEAL_UNSIGNED_LEN && seal_len != SEAL_SIGNED_LEN {
            return Err(ReadError::NoSeal);
        }
        let content_len = size
            .checked_sub(TRAILER_LEN + u64::from(seal_len))
            .ok_or(ReadError::NoSeal)?;
        let seal = read_vec(&source, content_len, u64::from(seal_len))?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&seal[..32]);

        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        while offset < content_len {
            let chunk = (content_len - offset).min(buf.len() as u64) as usize;
            source.read_exact_at(&mut buf[..chunk], offset)?;
            hasher.update(&buf[..chunk]);
            offset += chunk as u64;
        }
        if hasher.finalize().as_bytes() != &digest {
            return Err(ReadError::DigestMismatch);
        }

        let signer = match (seal[32], seal_len) {
            (0, SEAL_UNSIGNED_LEN) => None,
            (1, SEAL_SIGNED_LEN) => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&seal[33..65]);
                let mut signature = [0u8; 64];
                signature.copy_from_slice(&seal[65..129]);
                let key = PublicKey::from_bytes(&key).map_err(|_| ReadError::BadSignature)?;
                if !key.verify_digest(&digest, &signature) {
                    return Err(ReadError::BadSignature);
                }
                Some(key)
            }
            _ => return Err(ReadError::NoSeal),
        };
        if let Some(trusted) = trusted_key {
            match signer {
                None => return Err(ReadError::Unsigned),
                Some(found) if found != *trusted => {
                    return Err(ReadError::WrongKey {
                        expected: trusted.fingerprint(),
                        found: found.fingerprint(),
                    })
                }
                Some(_) => {}
            }
        }
        Self::parse(source, content_len, digest, signer, size)
    }

    fn parse(
        source: R,
        content_len: u64,
        digest: [u8; 32],
        signer: Option<PublicKey>,
        size: u64,
    ) -> Result<Self, ReadError> {
        if content_len < 16 + FOOTER_LEN {
            return Err(ReadError::malformed("too short for a header and footer"));
        }
        let header = read_vec(&source, 0, 16)?;
        if &header[..8] != MAGIC {
            return Err(ReadError::malformed("bad magic"));
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != FORMAT_VERSION {
            return Err(ReadError::malformed(format!(
                "format version {version} (this driftwatch reads version {FORMAT_VERSION})"
            )));
        }
        let meta_len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        if meta_len > MAX_META_BYTES || 16 + u64::from(meta_len) + FOOTER_LEN > content_len {
            return Err(ReadError::malformed("metadata length out of range"));
        }
        let meta_json = read_vec(&source, 16, u64::from(meta_len))?;
        let meta: BaselineMeta = serde_json::from_slice(&meta_json)
            .map_err(|e| ReadError::malformed(format!("metadata: {e}")))?;

        let footer = read_vec(&source, content_len - FOOTER_LEN, FOOTER_LEN)?;
        if &footer[24..] != FOOTER_MAGIC {
            return Err(ReadError::malformed("bad footer"));
        }
        let entries_offset = u64_at(&footer, 0);
        let index_offset = u64_at(&footer, 8);
        let entry_count = u64_at(&footer, 16);
        let index_end = content_len - FOOTER_LEN;
        if entries_offset != 16 + u64::from(meta_len)
            || index_offset < entries_offset
            || index_offset > index_end
        {
            return Err(ReadError::malformed("section offsets out of range"));
        }
        let index_bytes = read_vec(&source, index_offset, index_end - index_offset)?;
        let mut input = Reader::new(&index_bytes);
        let blocks = input.varint()?;
        let mut index = Vec::new();
        let mut previous_offset = entries_offset;
        let mut counted = 0u64;
        for block in 0..blocks {
            let offset = input.varint()?;
            let count = input.varint()?;
            let first_path = input.bytes("index path", codec::MAX_PATH_BYTES)?.to_vec();
            let offset_ok = if block == 0 {
                offset == entries_offset
            } else {
                offset > previous_offset
            };
            if !offset_ok || offset >= index_offset || count == 0 || count > BLOCK_ENTRIES as u64 {
                return Err(ReadError::malformed(format!("index entry {block}")));
            }
            if let Some(last) = index.last() {
                let last: &IndexEntry = last;
                if path::cmp(&last.first_path, &first_path) != Ordering::Less {
                    return Err(ReadError::malformed("index out of order"));
                }
            }
            previous_offset = offset;
            counted += count;
            index.push(IndexEntry {
                offset,
                count,
                first_path,
            });
        }
        if !input.is_empty()
            || counted != entry_count
            || (blocks == 0) != (index_offset == entries_offset)
        {
            return Err(ReadError::malformed(
                "index does not account for every entry",
            ));
        }
        Ok(BaselineReader {
            source,
            meta,
            digest,
            signer,
            index,
            index_offset,
            entry_count,
            size,
        })
    }

    /// The baseline's own description.
    pub fn meta(&self) -> &BaselineMeta {
        &self.meta
    }

    /// BLAKE3 of the signed content.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The key that signed it, when signed.
    pub fn signer(&self) -> Option<&PublicKey> {
        self.signer.as_ref()
    }

    /// The number of entries.
    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn read_block(&self, block: usize) -> Result<Vec<Entry>, ReadError> {
        let this = &self.index[block];
        let end = self
            .index
            .get(block + 1)
            .map_or(self.index_offset, |next| next.offset);
        let bytes = read_vec(&self.source, this.offset, end - this.offset)?;
        let mut input = Reader::new(&bytes);
        if input.varint()? != this.count {
            return Err(ReadError::malformed(format!("block {block} entry count")));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(this.count as usize);
        for _ in 0..this.count {
            let previous = entries.last().map_or(&[][..], |e| e.path.as_slice());
            let entry = codec::decode_entry(&mut input, previous)?;
            let in_order = match entries.last() {
                Some(previous) => path::cmp(&previous.path, &entry.path) == Ordering::Less,
                None => entry.path == this.first_path,
            };
            if !in_order {
                return Err(ReadError::malformed(format!("block {block} out of order")));
            }
            entries.push(entry);
        }
        if !input.is_empty() {
            return Err(ReadError::malformed(format!(
                "block {block} has trailing bytes"
            )));
        }
        if let Some(next) = self.index.get(block + 1) {
            if let Some(last) = entries.last() {
                if path::cmp(&last.path, &next.first_path) != Ordering::Less {
                    return Err(ReadError::malformed(format!(
                        "block {block} overlaps the next"
                    )));
                }
            }
        }
        Ok(entries)
    }

    /// Streams every entry in path order, one block in memory at a time.
    pub fn entries(&self) -> Entries<'_, R> {
        Entries {
            reader: self,
            block: 0,
            pending: Vec::new().into_iter(),
        }
    }

    /// Streams the entries at and below `prefix` (e.g. every module under
    /// `/lib/modules/6.1.0`), reading only the blocks that can hold them.
    pub fn entries_within<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = Result<Entry, ReadError>> + 'a {
        let start = self
            .index
            .partition_point(|b| path::cmp(&b.first_path, prefix) == Ordering::Less)
            .saturating_sub(1);
        Entries {
            reader: self,
            block: start,
            pending: Vec::new().into_iter(),
        }
        .skip_while(move |e| {
            e.as_ref()
                .is_ok_and(|e| path::cmp(&e.path, prefix) == Ordering::Less)
        })
        .take_while(move |e| {
            e.as_ref()
                .map_or(true, |e| path::is_within(&e.path, prefix))
        })
    }

    /// Finds one path: a binary search over the index and one block read.
    pub fn lookup(&self, wanted: &[u8]) -> Result<Option<Entry>, ReadError> {
        let block = self
            .index
            .partition_point(|b| path::cmp(&b.first_path, wanted) != Ordering::Greater);
        if block == 0 {
            return Ok(None);
        }
        Ok(self
            .read_block(block - 1)?
            .into_iter()
            .find(|entry| entry.path == wanted))
    }
}

/// Iterator over a baseline's entries; see [`BaselineReader::entries`].
pub struct Entries<'a, R> {
    reader: &'a BaselineReader<R>,
    block: usize,
    pending: std::vec::IntoIter<Entry>,
}

impl<R: ReadAt> Iterator for Entries<'_, R> {
    type Item = Result<Entry, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.pending.next() {
                return Some(Ok(entry));
            }
            if self.block >= self.reader.index.len() {
                return None;
            }
            match self.reader.read_block(self.block) {
                Ok(entries) => {
                    self.block += 1;
                    self.pending = entries.into_iter();
                }
                Err(err) => {
                    // One bad block ends the stream: nothing after it can be trusted.
                    self.block = self.reader.index.len();
                    return Some(Err(err));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::FileType;

    fn meta() -> BaselineMeta {
        BaselineMeta {
            image_id: Some("img-1".into()),
            created_at: "2026-01-01T00:00:00Z".into(),
            tool: "driftwatch test".into(),
            policy: String::new(),
            policy_digest: String::new(),
            hashes: vec!["blake3".into()],
            packages: None,
            runtime: None,
        }
    }

    fn entries(n: usize) -> Vec<Entry> {
        let mut paths: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("/d{}/f{i}", i % 7).into_bytes())
            .collect();
        paths.push(b"/".to_vec());
        paths.sort_by(|a, b| path::cmp(a, b));
        paths.dedup();
        paths
            .into_iter()
            .map(|path| Entry {
                path,
                file_type: FileType::File,
                mode: 0o644,
                blake3: Some([3; 32]),
                ..Entry::default()
            })
            .collect()
    }

    fn write(entries: &[Entry], key: Option<&PrivateKey>) -> Vec<u8> {
        let mut writer = BaselineWriter::new(Vec::new(), &meta()).unwrap();
        for entry in entries {
            writer.push(entry).unwrap();
        }
        writer.finish(key).unwrap().0
    }

    #[test]
    fn round_trip_streams_and_looks_up() {
        let all = entries(1000);
        let bytes = write(&all, None);
        let reader = BaselineReader::open(bytes.as_slice(), None).unwrap();
        assert_eq!(reader.entry_count(), all.len() as u64);
        let back: Vec<Entry> = reader.entries().map(Result::unwrap).collect();
        assert_eq!(back, all);
        for entry in all.iter().step_by(37) {
            assert_eq!(reader.lookup(&entry.path).unwrap().as_ref(), Some(entry));
        }
        assert_eq!(reader.lookup(b"/d3/nope").unwrap(), None);
        let within: Vec<Entry> = reader.entries_within(b"/d3").map(Result::unwrap).collect();
        let expected: Vec<Entry> = all
            .iter()
            .filter(|e| path::is_within(&e.path, b"/d3"))
            .cloned()
            .collect();
        assert_eq!(within, expected);
        assert!(!within.is_empty());
        assert_eq!(reader.entries_within(b"/nothing").count(), 0);
        assert_eq!(reader.lookup(b"").unwrap(), None);
    }

    #[test]
    fn same_input_same_bytes() {
        let key = PrivateKey::from_seed([5; 32]);
        assert_eq!(
            write(&entries(300), Some(&key)),
            write(&entries(300), Some(&key))
        );
    }

    #[test]
    fn empty_baseline_is_valid() {
        let bytes = write(&[], None);
        let reader = BaselineReader::open(bytes.as_slice(), None).unwrap();
        assert_eq!(reader.entries().count(), 0);
    }

    #[test]
    fn out_of_order_push_is_refused() {
        let mut writer = BaselineWriter::new(Vec::new(), &meta()).unwrap();
        let mut b = Entry {
            path: b"/b".to_vec(),
            ..Entry::default()
        };
        writer.push(&b).unwrap();
        b.path = b"/a".to_vec();
        assert!(matches!(
            writer.push(&b),
            Err(WriteError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn every_flipped_byte_and_truncation_is_detected() {
        let key = PrivateKey::from_seed([5; 32]);
        let bytes = write(&entries(200), Some(&key));
        for at in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            let result = BaselineReader::open(bad.as_slice(), Some(&key.public_key()));
            assert!(result.is_err(), "flip at {at} went unnoticed");
            assert!(result.err().unwrap().is_integrity_failure());
        }
        for cut in [0, 1, 11, 12, bytes.len() / 2, bytes.len() - 1] {
            let result = BaselineReader::open(&bytes[..cut], None);
            assert!(result.err().unwrap().is_integrity_failure(), "cut at {cut}");
        }
    }

    #[test]
    fn trust_requires_the_right_key() {
        let key = PrivateKey::from_seed([5; 32]);
        let other = PrivateKey::from_seed([6; 32]);
        let signed_by_other = write(&entries(10), Some(&other));
        let err = BaselineReader::open(signed_by_other.as_slice(), Some(&key.public_key()));
        assert!(matches!(err, Err(ReadError::WrongKey { .. })));
        let unsigned = write(&entries(10), None);
        let err = BaselineReader::open(unsigned.as_slice(), Some(&key.public_key()));
        assert!(matches!(err, Err(ReadError::Unsigned)));
    }

    #[test]
    fn a_resealed_but_malformed_body_is_rejected_not_misread() {
        // An attacker without the key can still rewrite an unsigned baseline and
        // recompute its digest; the structure checks must catch nonsense.
        let mut bytes = write(&entries(100), None);
        let seal_at = bytes.len() - 12 - 33;
        let content = &mut bytes[..seal_at];
        let footer = content.len() - 32;
        content[footer + 16] ^= 1; // entry count
        let digest = *blake3::hash(&bytes[..seal_at]).as_bytes();
        bytes[seal_at..seal_at + 32].copy_from_slice(&digest);
        let err = BaselineReader::open(bytes.as_slice(), None).err().unwrap();
        assert!(matches!(err, ReadError::Malformed { .. }), "{err}");
    }
}
