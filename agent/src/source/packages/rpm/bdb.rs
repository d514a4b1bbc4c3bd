//! A read-only reader for the BerkeleyDB hash file `Packages` of rpm < 4.16 (EL7, EL8).
//!
//! Linking libdb would pull a C library into the agent and open the file the way rpm
//! does (with an environment, locks and a page cache in `/var/lib/rpm/__db.*`), which a
//! scanner of read-only images and live hosts must not do. The part of the format rpm's
//! `Packages` uses is small, so this module reads it with plain positioned reads, like
//! rpm's own `bdb_ro` backend:
//!
//! - page 0 is the hash meta page: magic `0x061561` (its byte order is the file's byte
//!   order), version 8–10, page size, last page number, the highest bucket in use and
//!   the `spares` table that maps a bucket number to its first page;
//! - each bucket is a chain of hash pages (type 2 or 13, linked by `next_pgno`) holding
//!   an index of item offsets; items come in key/value pairs and are either inline
//!   (`H_KEYDATA`) or a pointer to a chain of overflow pages (`H_OFFPAGE`, type 7);
//! - keys are header numbers (a `u32` in the file's byte order); key 0 holds rpm's
//!   instance counter, not a header; values are header blobs.
//!
//! Every number in the file is untrusted: page numbers are checked against the last
//! page and the file's length, every page is read at most once (so a cycle in a chain is
//! an error, not a hang), item offsets must lie inside their page, and an assembled value
//! may not exceed [`MAX_BLOB`]. Memory stays bounded by one page per chain being walked
//! plus the value being assembled.
//!
//! Not supported, with a clear error: checksummed or encrypted databases, btree or
//! queue databases, and duplicate items (rpm writes none of them for `Packages`).

use super::header::MAX_BLOB;
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use thiserror::Error;

/// Hash database magic number, in the file's byte order.
const HASH_MAGIC: u32 = 0x0006_1561;
/// Btree magic, recognised only to give a clearer error.
const BTREE_MAGIC: u32 = 0x0005_3162;
/// Page types (`P_*` in BerkeleyDB's `db_page.h`).
const P_HASH_UNSORTED: u8 = 2;
const P_OVERFLOW: u8 = 7;
const P_HASHMETA: u8 = 8;
const P_HASH: u8 = 13;
/// Item types on hash pages (`H_*`).
const H_KEYDATA: u8 = 1;
const H_DUPLICATE: u8 = 2;
const H_OFFPAGE: u8 = 3;
const H_OFFDUP: u8 = 4;
/// `DBMETA_CHKSUM` in the meta page's flags byte: pages carry a checksum area that
/// shifts their layout.
const DBMETA_CHKSUM: u8 = 0x01;
/// Bytes of the generic page header (lsn, pgno, prev, next, entries, hf_offset, level,
/// type) that precede a page's index or overflow data.
const PAGE_HEADER: usize = 26;
/// The meta page fields we read all lie in its first 512 bytes (the smallest page).
const META_LEN: usize = 512;
/// Initial capacity cap for an overflow value: the claimed length is untrusted, so the
/// buffer grows with the data actually read rather than with the claim.
const OVERFLOW_PREALLOC: usize = 1 << 20;

/// Positioned reads, so that tests can read from memory and the agent from a file.
pub trait PageSource {
    /// The source's length in bytes.
    fn byte_len(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; a short read is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl PageSource for File {
    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

/// A database already in memory (tests, fuzzing).
impl PageSource for [u8] {
    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Why the database could not be walked.
#[derive(Debug, Error)]
pub enum BdbError {
    /// A read failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The file is not a database this reader supports, or is inconsistent.
    #[error("{0}")]
    Malformed(String),
}

fn malformed(reason: impl Into<String>) -> BdbError {
    BdbError::Malformed(reason.into())
}

/// One record: a header number and its header blob.
#[derive(Debug)]
pub struct Record {
    /// The key (rpm's header instance number).
    pub hnum: u32,
    /// The value (a header blob, not yet parsed).
    pub value: Vec<u8>,
}

/// The file's byte order (BerkeleyDB writes in the creating machine's order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    Little,
    Big,
}

impl Order {
    fn u32(self, bytes: &[u8], at: usize) -> Option<u32> {
        let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(match self {
            Order::Little => u32::from_le_bytes(b),
            Order::Big => u32::from_be_bytes(b),
        })
    }

    fn u16(self, bytes: &[u8], at: usize) -> Option<u16> {
        let b: [u8; 2] = bytes.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(match self {
            Order::Little => u16::from_le_bytes(b),
            Order::Big => u16::from_be_bytes(b),
        })
    }
}

/// What the meta page says, checked.
#[derive(Debug)]
struct Meta {
    order: Order,
    page_size: usize,
    last_pgno: u32,
    max_bucket: u32,
    spares: [u32; 32],
}

impl Meta {
    fn read<S: PageSource + ?Sized>(src: &S) -> Result<Meta, BdbError> {
        let len = src.byte_len()?;
        if len < META_LEN as u64 {
            return Err(malformed(format!(
                "{len} bytes is too short for a BerkeleyDB meta page"
            )));
        }
        let mut page = [0u8; META_LEN];
        src.read_exact_at(&mut page, 0)?;
        let field = |order: Order, at| order.u32(&page, at).unwrap_or(0);
        let order = if field(Order::Little, 12) == HASH_MAGIC {
            Order::Little
        } else if field(Order::Big, 12) == HASH_MAGIC {
            Order::Big
        } else if field(Order::Little, 12) == BTREE_MAGIC || field(Order::Big, 12) == BTREE_MAGIC {
            return Err(malformed(
                "BerkeleyDB btree database, not the hash database rpm uses for Packages",
            ));
        } else {
            return Err(malformed("not a BerkeleyDB hash database (bad magic)"));
        };
        let version = field(order, 16);
        if !(8..=10).contains(&version) {
            return Err(malformed(format!(
                "unsupported BerkeleyDB hash version {version}"
            )));
        }
        let page_size = field(order, 20);
        if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
            return Err(malformed(format!("invalid page size {page_size}")));
        }
        let (encryption, page_type, flags) = (page[24], page[25], page[26]);
        if encryption != 0 {
            return Err(malformed(
                "encrypted BerkeleyDB databases are not supported",
            ));
        }
        if page_type != P_HASHMETA {
            return Err(malformed(format!(
                "page 0 has type {page_type}, not a hash meta page"
            )));
        }
        if flags & DBMETA_CHKSUM != 0 {
            return Err(malformed(
                "checksummed BerkeleyDB databases are not supported",
            ));
        }
        let last_pgno = field(order, 32);
        let pages_in_file = len / u64::from(page_size);
        if u64::from(last_pgno) >= pages_in_file {
            return Err(malformed(format!(
                "meta page claims {} pages but the file holds {pages_in_file}",
                u64::from(last_pgno) + 1
            )));
        }
        let max_bucket = field(order, 72);
        // Every bucket has its own page, so a larger claim cannot be true.
        if max_bucket >= last_pgno {
            return Err(malformed(format!(
                "meta page claims {} buckets in {} pages",
                u64::from(max_bucket) + 1,
                u64::from(last_pgno) + 1
            )));
        }
        let mut spares = [0u32; 32];
        for (i, spare) in spares.iter_mut().enumerate() {
            *spare = field(order, 96 + 4 * i);
        }
        Ok(Meta {
            order,
            page_size: page_size as usize,
            last_pgno,
            max_bucket,
            spares,
        })
    }

    /// `BUCKET_TO_PAGE`: bucket + spares[⌈log2(bucket + 1)⌉].
    fn bucket_page(&self, bucket: u32) -> Result<u32, BdbError> {
        let bits = (u32::BITS - bucket.leading_zeros()) as usize;
        self.spares
            .get(bits)
            .and_then(|spare| bucket.checked_add(*spare))
            .ok_or_else(|| malformed(format!("bucket {bucket} maps to no page")))
    }
}

/// Iterates over a hash database's records, bucket by bucket.
///
/// Stops after the first error (a later record cannot be trusted once the structure
/// is known to be broken).
pub struct Records<'s, S: ?Sized> {
    src: &'s S,
    meta: Meta,
    /// Pages already read: a page linked twice is a cycle.
    visited: HashSet<u32>,
    /// The current bucket page and a scratch page for overflow chains.
    page: Vec<u8>,
    overflow: Vec<u8>,
    loaded: bool,
    bucket: u32,
    /// Next key/value pair on `page`.
    pair: usize,
    finished: bool,
}

impl<'s, S: PageSource + ?Sized> Records<'s, S> {
    /// Reads and checks the meta page.
    pub fn open(src: &'s S) -> Result<Self, BdbError> {
        let meta = Meta::read(src)?;
        Ok(Records {
            src,
            page: vec![0; meta.page_size],
            overflow: vec![0; meta.page_size],
            meta,
            visited: HashSet::new(),
            loaded: false,
            bucket: 0,
            pair: 0,
            finished: false,
        })
    }

    fn step(&mut self) -> Result<Option<Record>, BdbError> {
        loop {
            if self.loaded {
                let entries = usize::from(self.u16(20));
                if (self.pair + 1) * 2 <= entries {
                    let index = self.pair * 2;
                    self.pair += 1;
                    let key = self.item(index, 4)?;
                    let hnum = match <[u8; 4]>::try_from(key.as_slice()) {
                        Ok(_) => self.meta.order.u32(&key, 0).unwrap_or(0),
                        Err(_) => {
                            return Err(malformed(format!(
                                "page {}: key of {} bytes, not a 4-byte header number",
                                self.pgno(),
                                key.len()
                            )))
                        }
                    };
                    // Key 0 is rpm's header instance counter.
                    if hnum == 0 {
                        continue;
                    }
                    let value = self.item(index + 1, MAX_BLOB)?;
                    return Ok(Some(Record { hnum, value }));
                }
                let next = self.u32(16);
                if next != 0 {
                    self.load(next)?;
                    continue;
                }
                if self.bucket >= self.meta.max_bucket {
                    return Ok(None);
                }
                self.bucket += 1;
            }
            let first = self.meta.bucket_page(self.bucket)?;
            self.load(first)?;
        }
    }

    /// Loads a hash page of the current bucket and checks its index fits.
    fn load(&mut self, pgno: u32) -> Result<(), BdbError> {
        read_page(
            self.src,
            &self.meta,
            &mut self.visited,
            &mut self.page,
            pgno,
        )?;
        let kind = self.page[25];
        if kind != P_HASH && kind != P_HASH_UNSORTED {
            return Err(malformed(format!(
                "page {pgno} (bucket {}) has type {kind}, not a hash page",
                self.bucket
            )));
        }
        let entries = usize::from(self.u16(20));
        if !entries.is_multiple_of(2) || PAGE_HEADER + 2 * entries > self.meta.page_size {
            return Err(malformed(format!(
                "page {pgno} claims {entries} items, not a whole number of pairs that fit"
            )));
        }
        self.loaded = true;
        self.pair = 0;
        Ok(())
    }

    /// Item `index` of the current page, resolved to its bytes (at most `max` of them).
    fn item(&mut self, index: usize, max: u64) -> Result<Vec<u8>, BdbError> {
        let page_size = self.meta.page_size;
        let entries = usize::from(self.u16(20));
        let offset = |i: usize| usize::from(self.u16(PAGE_HEADER + 2 * i));
        let start = offset(index);
        // Items are packed from the end of the page downwards in index order, so an
        // item ends where the previous one starts (the first at the end of the page).
        let end = match index {
            0 => page_size,
            _ => offset(index - 1),
        };
        if start < PAGE_HEADER + 2 * entries || start >= end || end > page_size {
            return Err(malformed(format!(
                "page {}: item {index} at {start}..{end} is outside the page's item area",
                self.pgno()
            )));
        }
        let bytes = &self.page[start..end];
        match bytes[0] {
            H_KEYDATA => {
                let data = &bytes[1..];
                if data.len() as u64 > max {
                    return Err(malformed(format!(
                        "page {}: item {index} is {} bytes (at most {max})",
                        self.pgno(),
                        data.len()
                    )));
                }
                Ok(data.to_vec())
            }
            H_OFFPAGE => {
                let order = self.meta.order;
                let (Some(first), Some(len), 12) =
                    (order.u32(bytes, 4), order.u32(bytes, 8), bytes.len())
                else {
                    return Err(malformed(format!(
                        "page {}: overflow item {index} is {} bytes, not 12",
                        self.pgno(),
                        bytes.len()
                    )));
                };
                if len == 0 || u64::from(len) > max {
                    return Err(malformed(format!(
                        "page {}: overflow item {index} claims {len} bytes (1 to {max})",
                        self.pgno()
                    )));
                }
                self.read_overflow(first, len as usize)
            }
            H_DUPLICATE | H_OFFDUP => Err(malformed(format!(
                "page {}: duplicate items, which rpm never writes to Packages",
                self.pgno()
            ))),
            other => Err(malformed(format!(
                "page {}: item {index} has unknown type {other}",
                self.pgno()
            ))),
        }
    }

    /// Concatenates an overflow chain's data until `len` bytes are read.
    fn read_overflow(&mut self, first: u32, len: usize) -> Result<Vec<u8>, BdbError> {
        let mut value = Vec::with_capacity(len.min(OVERFLOW_PREALLOC));
        let mut pgno = first;
        while value.len() < len {
            if pgno == 0 {
                return Err(malformed(format!(
                    "overflow chain from page {first} ends after {} of {len} bytes",
                    value.len()
                )));
            }
            read_page(
                self.src,
                &self.meta,
                &mut self.visited,
                &mut self.overflow,
                pgno,
            )?;
            let order = self.meta.order;
            let kind = self.overflow[25];
            if kind != P_OVERFLOW {
                return Err(malformed(format!(
                    "page {pgno} has type {kind}, not an overflow page"
                )));
            }
            // On overflow pages hf_offset is the number of data bytes on the page.
            let on_page = usize::from(order.u16(&self.overflow, 22).unwrap_or(0));
            let wanted = len - value.len();
            if on_page == 0 || on_page > wanted || PAGE_HEADER + on_page > self.meta.page_size {
                return Err(malformed(format!(
                    "overflow page {pgno} holds {on_page} bytes, {wanted} still expected"
                )));
            }
            value.extend_from_slice(&self.overflow[PAGE_HEADER..PAGE_HEADER + on_page]);
            pgno = order.u32(&self.overflow, 16).unwrap_or(0);
        }
        Ok(value)
    }

    fn u16(&self, at: usize) -> u16 {
        self.meta.order.u16(&self.page, at).unwrap_or(0)
    }

    fn u32(&self, at: usize) -> u32 {
        self.meta.order.u32(&self.page, at).unwrap_or(0)
    }

    fn pgno(&self) -> u32 {
        self.u32(8)
    }
}

impl<S: PageSource + ?Sized> Iterator for Records<'_, S> {
    type Item = Result<Record, BdbError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        match self.step() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(e) => {
                self.finished = true;
                Some(Err(e))
            }
        }
    }
}

/// Reads page `pgno` into `buf` (one page long), refusing out-of-range page numbers,
/// pages read before (a cycle) and pages that do not carry their own number.
fn read_page<S: PageSource + ?Sized>(
    src: &S,
    meta: &Meta,
    visited: &mut HashSet<u32>,
    buf: &mut [u8],
    pgno: u32,
) -> Result<(), BdbError> {
    if pgno == 0 || pgno > meta.last_pgno {
        return Err(malformed(format!(
            "link to page {pgno}, outside 1..={}",
            meta.last_pgno
        )));
    }
    if !visited.insert(pgno) {
        return Err(malformed(format!(
            "page {pgno} is linked twice (a cycle or a shared page)"
        )));
    }
    src.read_exact_at(buf, u64::from(pgno) * meta.page_size as u64)?;
    let stored = meta.order.u32(buf, 8).unwrap_or(0);
    if stored != pgno {
        return Err(malformed(format!("page {pgno} says it is page {stored}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The little-endian fixture has 512-byte pages: 1–2 are the two bucket pages, 3–20
    /// overflow chains holding the four headers.
    const PAGE: usize = 512;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/rpm/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).expect("fixture")
    }

    fn read(bytes: &[u8]) -> Result<Vec<Record>, BdbError> {
        Records::open(bytes)?.collect()
    }

    fn set_le(bytes: &mut [u8], at: usize, value: u32) {
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn page_type(bytes: &[u8], pgno: usize) -> u8 {
        bytes[pgno * PAGE + 25]
    }

    fn reason(result: Result<Vec<Record>, BdbError>) -> String {
        match result {
            Ok(records) => panic!("expected an error, read {} records", records.len()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn reads_every_header_and_skips_the_counter() {
        let records = read(&fixture("Packages")).expect("valid database");
        let mut hnums: Vec<u32> = records.iter().map(|r| r.hnum).collect();
        hnums.sort();
        assert_eq!(hnums, [1, 2, 3, 4]);
        let header = fixture("dw-hello.header");
        assert!(records.iter().any(|r| r.value == header), "dw-hello's blob");
        for record in &records {
            super::super::header::Header::parse(&record.value).expect("a header");
        }
    }

    #[test]
    fn big_endian_with_inline_values_reads_the_same() {
        let sorted = |mut records: Vec<Record>| {
            records.sort_by_key(|r| r.hnum);
            records
                .into_iter()
                .map(|r| (r.hnum, r.value))
                .collect::<Vec<_>>()
        };
        let little = sorted(read(&fixture("Packages")).expect("little-endian"));
        let big = sorted(read(&fixture("Packages-be")).expect("big-endian"));
        assert_eq!(little, big);
    }

    #[test]
    fn bucket_chains_are_followed() {
        // Make bucket 1's page an overflow page of bucket 0: one bucket, two pages.
        let mut bytes = fixture("Packages");
        set_le(&mut bytes, 72, 0); // max_bucket
        set_le(&mut bytes, PAGE + 16, 2); // page 1 → page 2
        assert_eq!(read(&bytes).expect("chained bucket").len(), 4);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = fixture("Packages");
        for len in 0..bytes.len() {
            assert!(read(&bytes[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn cycles_are_errors_not_hangs() {
        let bytes = fixture("Packages");
        for pgno in 1..bytes.len() / PAGE {
            let next = u32::from_le_bytes(bytes[pgno * PAGE + 16..][..4].try_into().unwrap());
            // The last page of a chain has no successor to follow, so only pages whose
            // link is followed can form a cycle.
            if page_type(&bytes, pgno) == P_OVERFLOW && next == 0 {
                continue;
            }
            let mut looped = bytes.clone();
            set_le(&mut looped, pgno * PAGE + 16, pgno as u32);
            assert!(
                reason(read(&looped)).contains("linked twice"),
                "page {pgno} linked to itself"
            );
        }
        // Two items sharing one overflow chain.
        let mut shared = bytes.clone();
        let start = (4..bytes.len() / PAGE)
            .find(|&p| page_type(&bytes, p) == P_OVERFLOW && bytes[p * PAGE + 12] == 0)
            .expect("a second chain");
        set_le(&mut shared, 3 * PAGE + 16, start as u32);
        assert!(read(&shared).is_err());
    }

    #[test]
    fn wrong_page_types_are_errors() {
        for (pgno, kind) in [(1, P_OVERFLOW), (2, 0), (3, P_HASH), (5, P_HASHMETA)] {
            let mut bytes = fixture("Packages");
            bytes[pgno * PAGE + 25] = kind;
            assert!(reason(read(&bytes)).contains("type"), "page {pgno}");
        }
        // A page that does not carry its own number.
        let mut bytes = fixture("Packages");
        set_le(&mut bytes, 4 * PAGE + 8, 9);
        assert!(reason(read(&bytes)).contains("says it is page 9"));
    }

    #[test]
    fn items_outside_their_page_are_errors() {
        for (at, value) in [
            (PAGE + 20, 0xffff),          // more items than fit
            (PAGE + 20, 5),               // not pairs
            (PAGE + 26, 0xffff),          // key offset past the page
            (PAGE + 26, 10),              // key offset inside the index
            (PAGE + 28, 0xffff),          // value after its key
            (3 * PAGE + 22, 0),           // overflow page with no data
            (3 * PAGE + 22, PAGE as u32), // more data than the page holds
        ] {
            let mut bytes = fixture("Packages");
            bytes[at..at + 2].copy_from_slice(&(value as u16).to_le_bytes());
            assert!(read(&bytes).is_err(), "offset {at} = {value}");
        }
    }

    #[test]
    fn overflow_lengths_are_checked() {
        let bytes = fixture("Packages");
        // Find an overflow item on page 1 and lie about its length.
        let entries = usize::from(u16::from_le_bytes([bytes[PAGE + 20], bytes[PAGE + 21]]));
        let item = (0..entries)
            .map(|i| {
                usize::from(u16::from_le_bytes([
                    bytes[PAGE + 26 + 2 * i],
                    bytes[PAGE + 27 + 2 * i],
                ]))
            })
            .find(|&off| bytes[PAGE + off] == H_OFFPAGE)
            .expect("an overflow item");
        for len in [0, 1, 100_000, u32::MAX] {
            let mut lying = bytes.clone();
            set_le(&mut lying, PAGE + item + 8, len);
            assert!(read(&lying).is_err(), "length {len}");
        }
        let mut duplicate = bytes.clone();
        duplicate[PAGE + item] = H_OFFDUP;
        assert!(reason(read(&duplicate)).contains("duplicate"));
    }

    #[test]
    fn meta_page_claims_are_checked() {
        let cases: [(usize, u32, &str); 8] = [
            (12, 0x1234_5678, "bad magic"),
            (12, BTREE_MAGIC, "btree"),
            (16, 7, "version 7"),
            (20, 1000, "page size 1000"),
            (20, 1024, "pages but the file holds"),
            (32, u32::MAX, "pages but the file holds"),
            (72, 20, "buckets in"),
            (72, u32::MAX, "buckets in"),
        ];
        for (at, value, expected) in cases {
            let mut bytes = fixture("Packages");
            set_le(&mut bytes, at, value);
            let reason = reason(read(&bytes));
            assert!(reason.contains(expected), "{at} = {value}: {reason}");
        }
        for (at, value, expected) in [
            (24, 1, "encrypted"),
            (26, 1, "checksummed"),
            (25, 9, "meta"),
        ] {
            let mut bytes = fixture("Packages");
            bytes[at] = value;
            let reason = reason(read(&bytes));
            assert!(reason.contains(expected), "{at} = {value}: {reason}");
        }
        // Spares that map a bucket to no page, or to the meta page.
        let mut bytes = fixture("Packages");
        set_le(&mut bytes, 96 + 4, u32::MAX);
        assert!(read(&bytes).is_err());
        let mut bytes = fixture("Packages");
        set_le(&mut bytes, 96, 0);
        assert!(read(&bytes).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn corrupted_databases_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            big_endian in any::<bool>(),
        ) {
            let mut bytes = fixture(if big_endian { "Packages-be" } else { "Packages" });
            for (at, value) in edits {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            if let Ok(records) = Records::open(bytes.as_slice()) {
                // Bounded: each record or error consumes at least one page.
                for record in records.take(bytes.len()).flatten() {
                    let _ = super::super::header::Header::parse(&record.value);
                }
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(records) = Records::open(bytes.as_slice()) {
                for _ in records.take(bytes.len()) {}
            }
        }
    }
}
