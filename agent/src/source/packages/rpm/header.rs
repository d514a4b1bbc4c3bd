//! The rpm header format, as the database stores it: a tag → typed value table.
//!
//! Both backends (`rpmdb.sqlite` and BerkeleyDB `Packages`) store one header per
//! installed package, *without* the 8-byte magic a header has inside an `.rpm` file:
//!
//! ```text
//! il: u32 BE   number of index entries
//! dl: u32 BE   length of the data store
//! il × { tag: u32 BE, type: u32 BE, offset: i32 BE, count: u32 BE }
//! dl bytes     data store; each entry's value starts at `offset` inside it
//! ```
//!
//! Everything in a blob is untrusted: a corrupt or crafted database must produce a
//! [`HeaderError`], never a panic, an out-of-bounds read, a loop or an allocation larger
//! than the blob. So [`Header::parse`] checks the counts against fixed limits and against
//! the blob's real length before looking at any entry, checks every entry's offset, type
//! and alignment up front, and the typed accessors check each value's extent again as
//! they read it (strings must end with a NUL inside the data store). Arithmetic on
//! counts and offsets is done in `u64` or checked, so it cannot overflow.
//!
//! Region tags (61–63) describe which part of the header is signed; the checks above do
//! not need them, so they are neither validated nor relied on.

use thiserror::Error;

/// At most this many index entries (rpm's own `HEADER_TAGS_MAX`).
pub const MAX_TAGS: u32 = 0xffff;
/// At most this many data bytes (rpm's `HEADER_DATA_MAX`, 256 MiB).
pub const MAX_DATA: u32 = 0x0fff_ffff;
/// The largest blob the two limits allow; backends refuse to assemble larger values.
pub const MAX_BLOB: u64 = 8 + 16 * MAX_TAGS as u64 + MAX_DATA as u64;

/// Region tags: `HEADERIMAGE`, `HEADERSIGNATURES`, `HEADERIMMUTABLE`.
const REGION_TAGS: std::ops::RangeInclusive<u32> = 61..=63;

/// Value types (`rpmTagType`).
const TYPE_NULL: u32 = 0;
const TYPE_CHAR: u32 = 1;
const TYPE_INT8: u32 = 2;
const TYPE_INT16: u32 = 3;
const TYPE_INT32: u32 = 4;
const TYPE_INT64: u32 = 5;
const TYPE_STRING: u32 = 6;
const TYPE_BIN: u32 = 7;
const TYPE_STRING_ARRAY: u32 = 8;
const TYPE_I18NSTRING: u32 = 9;

/// Why a header blob was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Shorter than the two counts.
    #[error("header is {len} bytes, too short for its 8-byte preamble")]
    TooShort {
        /// The blob's length.
        len: usize,
    },
    /// No index entries at all.
    #[error("header has no tags")]
    NoTags,
    /// `il` over [`MAX_TAGS`].
    #[error("header claims {count} tags (at most {MAX_TAGS})")]
    TooManyTags {
        /// The claimed count.
        count: u32,
    },
    /// `dl` over [`MAX_DATA`].
    #[error("header claims {len} data bytes (at most {MAX_DATA})")]
    DataTooLarge {
        /// The claimed length.
        len: u32,
    },
    /// `8 + 16 × il + dl` is not the blob's length.
    #[error("header is {actual} bytes but its counts (8 + 16 × {tags} + {data}) say {expected}")]
    LengthMismatch {
        /// The blob's length.
        actual: usize,
        /// `il`.
        tags: u32,
        /// `dl`.
        data: u32,
        /// What the counts add up to.
        expected: u64,
    },
    /// An index entry is inconsistent with the data store.
    #[error("tag {tag} (index entry {index}): {reason}")]
    BadEntry {
        /// Position in the index.
        index: usize,
        /// The entry's tag.
        tag: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A tag holds a different type than the reader needs.
    #[error("tag {tag} has type {found}, expected {expected}")]
    WrongType {
        /// The tag.
        tag: u32,
        /// Its type code.
        found: u32,
        /// The type the reader needs.
        expected: &'static str,
    },
}

/// One index entry, checked against the data store by [`Header::parse`].
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Position in the index, for error messages.
    index: usize,
    tag: u32,
    kind: u32,
    /// Inside the data store (checked).
    offset: usize,
    count: u32,
}

/// A parsed header borrowing its blob: an index of entries plus the data store.
#[derive(Debug)]
pub struct Header<'a> {
    entries: Vec<Entry>,
    data: &'a [u8],
}

impl<'a> Header<'a> {
    /// Parses a header blob (no magic), checking every count, offset and extent the
    /// index claims.
    pub fn parse(blob: &'a [u8]) -> Result<Self, HeaderError> {
        let (Some(il), Some(dl)) = (be_u32(blob, 0), be_u32(blob, 4)) else {
            return Err(HeaderError::TooShort { len: blob.len() });
        };
        if il == 0 {
            return Err(HeaderError::NoTags);
        }
        if il > MAX_TAGS {
            return Err(HeaderError::TooManyTags { count: il });
        }
        if dl > MAX_DATA {
            return Err(HeaderError::DataTooLarge { len: dl });
        }
        // Exact, as rpm itself requires: trailing bytes would be data no entry can
        // reach, and a short blob would put the data store out of bounds.
        let expected = 8 + 16 * u64::from(il) + u64::from(dl);
        if u64::try_from(blob.len()).ok() != Some(expected) {
            return Err(HeaderError::LengthMismatch {
                actual: blob.len(),
                tags: il,
                data: dl,
                expected,
            });
        }
        // Both in bounds: the length check above proved 8 + 16 × il + dl == blob.len().
        let (index, data) = blob
            .get(8..)
            .and_then(|rest| rest.split_at_checked(rest.len().checked_sub(dl as usize)?))
            .ok_or(HeaderError::TooShort { len: blob.len() })?;
        // il ≤ blob.len() / 16, so this allocation is bounded by the blob.
        let mut entries = Vec::with_capacity(il as usize);
        for (position, raw) in index.chunks_exact(16).enumerate() {
            let field = |at: usize| be_u32(raw, at).unwrap_or(0);
            let entry = (field(0), field(4), field(8), field(12));
            entries.push(check_entry(position, entry, data.len())?);
        }
        Ok(Header { entries, data })
    }

    /// The first entry for `tag` (rpm writes each tag once).
    fn find(&self, tag: u32) -> Option<&Entry> {
        self.entries.iter().find(|e| e.tag == tag)
    }

    /// A single string (`STRING`, or the first of an `I18NSTRING`), without its NUL.
    pub fn string(&self, tag: u32) -> Result<Option<&'a [u8]>, HeaderError> {
        let Some(entry) = self.find(tag) else {
            return Ok(None);
        };
        if entry.kind != TYPE_STRING && entry.kind != TYPE_I18NSTRING {
            return Err(wrong_type(entry, "string"));
        }
        let (first, _) = self.c_string(entry, entry.offset)?;
        Ok(Some(first))
    }

    /// A `STRING_ARRAY` (or `I18NSTRING`), each string without its NUL.
    pub fn string_array(&self, tag: u32) -> Result<Option<Vec<&'a [u8]>>, HeaderError> {
        let Some(entry) = self.find(tag) else {
            return Ok(None);
        };
        if entry.kind != TYPE_STRING_ARRAY && entry.kind != TYPE_I18NSTRING {
            return Err(wrong_type(entry, "string array"));
        }
        // check_entry bounded count by the bytes left, one NUL each at least.
        let mut strings = Vec::with_capacity(entry.count as usize);
        let mut at = entry.offset;
        for _ in 0..entry.count {
            let (string, next) = self.c_string(entry, at)?;
            strings.push(string);
            at = next;
        }
        Ok(Some(strings))
    }

    /// An `INT32` array; rpm's int32 values are unsigned in practice (epochs, flags,
    /// indexes), so they are returned as `u32`.
    pub fn u32_array(&self, tag: u32) -> Result<Option<Vec<u32>>, HeaderError> {
        let Some(entry) = self.find(tag) else {
            return Ok(None);
        };
        if entry.kind != TYPE_INT32 {
            return Err(wrong_type(entry, "int32"));
        }
        let bytes = self.fixed(entry, 4)?;
        Ok(Some(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }

    /// An `INT16` array (file modes).
    pub fn u16_array(&self, tag: u32) -> Result<Option<Vec<u16>>, HeaderError> {
        let Some(entry) = self.find(tag) else {
            return Ok(None);
        };
        if entry.kind != TYPE_INT16 {
            return Err(wrong_type(entry, "int16"));
        }
        let bytes = self.fixed(entry, 2)?;
        Ok(Some(
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect(),
        ))
    }

    /// The bytes of a fixed-size array (extent already checked by `check_entry`; checked
    /// again here so that no accessor relies on another function's invariant).
    fn fixed(&self, entry: &Entry, size: u64) -> Result<&'a [u8], HeaderError> {
        let len = u64::from(entry.count) * size;
        let end = (entry.offset as u64).saturating_add(len);
        usize::try_from(end)
            .ok()
            .and_then(|end| self.data.get(entry.offset..end))
            .ok_or_else(|| bad(entry, "value runs past the end of the data"))
    }

    /// The NUL-terminated string at `at` and the offset just after its NUL.
    fn c_string(&self, entry: &Entry, at: usize) -> Result<(&'a [u8], usize), HeaderError> {
        let rest = self
            .data
            .get(at..)
            .ok_or_else(|| bad(entry, "string starts past the end of the data"))?;
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad(entry, "string is not NUL-terminated inside the data"))?;
        Ok((&rest[..len], at + len + 1))
    }
}

/// Checks one raw index entry `(tag, type, offset, count)` against a data store of
/// `dl` bytes.
fn check_entry(
    index: usize,
    (tag, kind, offset, count): (u32, u32, u32, u32),
    dl: usize,
) -> Result<Entry, HeaderError> {
    let fail = |reason| HeaderError::BadEntry { index, tag, reason };
    let entry = Entry {
        index,
        tag,
        kind,
        offset: offset as usize,
        count,
    };
    if REGION_TAGS.contains(&tag) {
        // Not relied on; the offset is kept but never used.
        return Ok(Entry { offset: 0, ..entry });
    }
    // The offset is an i32 on disk: negative values land above MAX_DATA and fail here.
    if offset as usize >= dl && !(kind == TYPE_NULL && offset as usize == dl) {
        return Err(fail("offset is outside the data"));
    }
    if count == 0 && kind != TYPE_NULL {
        return Err(fail("count is zero"));
    }
    let remaining = (dl - entry.offset) as u64;
    let size: u64 = match kind {
        TYPE_NULL => 0,
        TYPE_CHAR | TYPE_INT8 | TYPE_BIN => 1,
        TYPE_INT16 => 2,
        TYPE_INT32 => 4,
        TYPE_INT64 => 8,
        TYPE_STRING if count != 1 => return Err(fail("a string must have count 1")),
        TYPE_STRING | TYPE_STRING_ARRAY | TYPE_I18NSTRING => {
            // Every string takes at least its NUL: a larger count cannot fit, and
            // refusing it here bounds what the accessors allocate.
            if u64::from(count) > remaining {
                return Err(fail("more strings than data bytes"));
            }
            return Ok(entry);
        }
        _ => return Err(fail("unknown type")),
    };
    if size > 1 && !u64::from(offset).is_multiple_of(size) {
        return Err(fail("offset is not aligned for its type"));
    }
    if u64::from(count) * size > remaining {
        return Err(fail("value runs past the end of the data"));
    }
    Ok(entry)
}

fn bad(entry: &Entry, reason: &'static str) -> HeaderError {
    HeaderError::BadEntry {
        index: entry.index,
        tag: entry.tag,
        reason,
    }
}

fn wrong_type(entry: &Entry, expected: &'static str) -> HeaderError {
    HeaderError::WrongType {
        tag: entry.tag,
        found: entry.kind,
        expected,
    }
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Builds header blobs for tests, laid out the way rpm lays them out (values aligned
/// for their type, index in insertion order).
#[cfg(test)]
pub mod testing {
    use super::*;

    /// One entry to lay out: tag, type, count and the value's bytes.
    #[derive(Default)]
    pub struct Builder {
        entries: Vec<(u32, u32, u32, Vec<u8>)>,
    }

    impl Builder {
        pub fn new() -> Self {
            Builder::default()
        }

        /// Any entry, with raw value bytes.
        pub fn raw(mut self, tag: u32, kind: u32, count: u32, bytes: &[u8]) -> Self {
            self.entries.push((tag, kind, count, bytes.to_vec()));
            self
        }

        pub fn string(self, tag: u32, value: &str) -> Self {
            let mut bytes = value.as_bytes().to_vec();
            bytes.push(0);
            self.raw(tag, TYPE_STRING, 1, &bytes)
        }

        pub fn strings(self, tag: u32, values: &[&[u8]]) -> Self {
            let mut bytes = Vec::new();
            for value in values {
                bytes.extend_from_slice(value);
                bytes.push(0);
            }
            self.raw(tag, TYPE_STRING_ARRAY, values.len() as u32, &bytes)
        }

        pub fn u32s(self, tag: u32, values: &[u32]) -> Self {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
            self.raw(tag, TYPE_INT32, values.len() as u32, &bytes)
        }

        pub fn u16s(self, tag: u32, values: &[u16]) -> Self {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
            self.raw(tag, TYPE_INT16, values.len() as u32, &bytes)
        }

        pub fn build(&self) -> Vec<u8> {
            let mut index = Vec::new();
            let mut data: Vec<u8> = Vec::new();
            for (tag, kind, count, bytes) in &self.entries {
                let align = match *kind {
                    TYPE_INT16 => 2,
                    TYPE_INT32 => 4,
                    TYPE_INT64 => 8,
                    _ => 1,
                };
                while !data.len().is_multiple_of(align) {
                    data.push(0);
                }
                for field in [*tag, *kind, data.len() as u32, *count] {
                    index.extend_from_slice(&field.to_be_bytes());
                }
                data.extend_from_slice(bytes);
            }
            let mut blob = Vec::new();
            blob.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
            blob.extend_from_slice(&(data.len() as u32).to_be_bytes());
            blob.extend_from_slice(&index);
            blob.extend_from_slice(&data);
            blob
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Builder;
    use super::*;
    use proptest::prelude::*;

    const NAME: u32 = 1000;
    const EPOCH: u32 = 1003;
    const FILEMODES: u32 = 1030;
    const BASENAMES: u32 = 1117;

    fn fixture() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/rpm/dw-hello.header"
        );
        std::fs::read(path).expect("fixture header")
    }

    fn set_u32(blob: &mut [u8], at: usize, value: u32) {
        blob[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }

    /// Reads every tag with every accessor: whatever the blob, this must not panic.
    fn read_everything(blob: &[u8]) {
        if let Ok(header) = Header::parse(blob) {
            for entry in header.entries.clone() {
                let _ = header.string(entry.tag);
                let _ = header.string_array(entry.tag);
                let _ = header.u32_array(entry.tag);
                let _ = header.u16_array(entry.tag);
            }
        }
    }

    /// True when the blob is rejected, or no accessor can read `tag` from it.
    fn unreadable(blob: &[u8], tag: u32) -> bool {
        Header::parse(blob).map_or(true, |h| {
            h.string(tag).is_err()
                && h.string_array(tag).is_err()
                && h.u32_array(tag).is_err()
                && h.u16_array(tag).is_err()
        })
    }

    #[test]
    fn parses_a_real_header() {
        let blob = fixture();
        let header = Header::parse(&blob).expect("valid header");
        assert_eq!(header.string(NAME), Ok(Some(&b"dw-hello"[..])));
        assert_eq!(header.string(1001), Ok(Some(&b"1.0"[..])));
        assert_eq!(header.string(1002), Ok(Some(&b"1"[..])));
        assert_eq!(header.string(1022), Ok(Some(&b"noarch"[..])));
        assert_eq!(header.u32_array(EPOCH), Ok(None));
        let basenames = header.string_array(BASENAMES).expect("basenames");
        assert_eq!(
            basenames,
            Some(vec![
                &b"dw-hello.conf"[..],
                b"dw-hello",
                b"dw-hi",
                b"dw-hello",
                b"data.txt",
                b"dw-hello.log"
            ])
        );
        let modes = header
            .u16_array(FILEMODES)
            .expect("modes")
            .expect("present");
        assert_eq!(modes[2], 0o120_777, "dw-hi is a symlink");
        assert_eq!(header.u32_array(5011), Ok(Some(vec![8])), "sha256");
    }

    #[test]
    fn the_first_entry_is_a_region_tag_and_is_not_needed() {
        let mut blob = fixture();
        assert_eq!(&blob[8..12], &63u32.to_be_bytes(), "HEADERIMMUTABLE first");
        // Point the region entry's offset and count anywhere: nothing relies on them.
        set_u32(&mut blob, 16, 0xffff_fff0);
        set_u32(&mut blob, 20, u32::MAX);
        let header = Header::parse(&blob).expect("region entries are not checked");
        assert_eq!(header.string(NAME), Ok(Some(&b"dw-hello"[..])));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let blob = fixture();
        for len in 0..blob.len() {
            assert!(Header::parse(&blob[..len]).is_err(), "length {len}");
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(matches!(
            Header::parse(&longer),
            Err(HeaderError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn lying_counts_are_errors() {
        let blob = fixture();
        let il = u32::from_be_bytes(blob[0..4].try_into().unwrap());
        let dl = u32::from_be_bytes(blob[4..8].try_into().unwrap());
        for (at, value) in [
            (0, 0),
            (0, il - 1),
            (0, il + 1),
            (0, MAX_TAGS + 1),
            (0, u32::MAX),
            (4, 0),
            (4, dl - 1),
            (4, dl + 1),
            (4, MAX_DATA + 1),
            (4, u32::MAX),
        ] {
            let mut lying = blob.clone();
            set_u32(&mut lying, at, value);
            assert!(Header::parse(&lying).is_err(), "field {at} = {value}");
        }
        // A blob that is exactly as long as lying counts claim is still checked entry
        // by entry: one fewer tag turns the last index entry into data.
        let mut lying = blob.clone();
        set_u32(&mut lying, 0, il - 1);
        set_u32(&mut lying, 4, dl + 16);
        read_everything(&lying);
    }

    #[test]
    fn offsets_outside_the_data_are_errors() {
        for offset in [6, 7, 0x7fff_ffff, 0x8000_0000, u32::MAX] {
            let mut blob = Builder::new().string(NAME, "hello").build();
            set_u32(&mut blob, 8 + 8, offset);
            assert!(
                matches!(Header::parse(&blob), Err(HeaderError::BadEntry { .. })),
                "offset {offset:#x}"
            );
        }
    }

    #[test]
    fn huge_counts_are_errors() {
        let cases = [
            (BASENAMES, Builder::new().strings(BASENAMES, &[b"a", b"b"])),
            (EPOCH, Builder::new().u32s(EPOCH, &[1, 2])),
            (FILEMODES, Builder::new().u16s(FILEMODES, &[1, 2])),
            (7, Builder::new().raw(7, 7, 3, b"bin")),
        ];
        for (tag, builder) in cases {
            for count in [3, 5, 0x1000_0000, u32::MAX] {
                let mut blob = builder.build();
                set_u32(&mut blob, 8 + 12, count);
                assert!(unreadable(&blob, tag), "tag {tag} count {count}");
            }
        }
        // Beyond the data's length, counts are refused before anything is allocated.
        let mut blob = Builder::new().strings(BASENAMES, &[b"a"]).build();
        set_u32(&mut blob, 8 + 12, u32::MAX);
        assert!(Header::parse(&blob).is_err());
        // A zero count is never valid either.
        let mut blob = Builder::new().u32s(EPOCH, &[1]).build();
        set_u32(&mut blob, 8 + 12, 0);
        assert!(Header::parse(&blob).is_err());
    }

    #[test]
    fn strings_must_end_inside_the_data() {
        let blob = Builder::new()
            .raw(NAME, TYPE_STRING, 1, b"no terminator")
            .build();
        let header = Header::parse(&blob).expect("extent of a string is checked on read");
        assert!(header.string(NAME).is_err());

        // Three strings claimed, two present: the third would start past the end.
        let blob = Builder::new()
            .raw(BASENAMES, TYPE_STRING_ARRAY, 3, b"a\0b\0c")
            .build();
        let header = Header::parse(&blob).expect("count fits the bytes");
        assert!(header.string_array(BASENAMES).is_err());
        let blob = Builder::new()
            .raw(BASENAMES, TYPE_STRING_ARRAY, 3, b"a\0")
            .build();
        assert!(Header::parse(&blob).is_err(), "more strings than bytes");

        // A string count other than 1.
        let blob = Builder::new().raw(NAME, TYPE_STRING, 2, b"a\0b\0").build();
        assert!(Header::parse(&blob).is_err());
    }

    #[test]
    fn integers_must_be_aligned_and_typed() {
        // An int32 at data offset 1.
        let blob = Builder::new()
            .raw(1, TYPE_CHAR, 1, b"x")
            .raw(EPOCH, TYPE_INT8, 4, &[0, 0, 0, 1])
            .build();
        let mut misaligned = blob.clone();
        set_u32(&mut misaligned, 8 + 16 + 4, TYPE_INT32);
        set_u32(&mut misaligned, 8 + 16 + 12, 1);
        assert!(matches!(
            Header::parse(&misaligned),
            Err(HeaderError::BadEntry { reason, .. }) if reason.contains("aligned")
        ));

        let header = Header::parse(&blob).expect("valid");
        assert!(matches!(
            header.u32_array(EPOCH),
            Err(HeaderError::WrongType { tag: EPOCH, .. })
        ));
        assert!(header.string(EPOCH).is_err());
        assert!(header.string_array(EPOCH).is_err());
        assert!(header.u16_array(EPOCH).is_err());

        let unknown = Builder::new().raw(EPOCH, 42, 1, b"x").build();
        assert!(Header::parse(&unknown).is_err());
    }

    #[test]
    fn builder_round_trips() {
        let blob = Builder::new()
            .string(NAME, "n")
            .strings(BASENAMES, &[b"a", b"", b"c"])
            .u16s(FILEMODES, &[0o100_644, 0o40_755])
            .u32s(EPOCH, &[7])
            .build();
        let header = Header::parse(&blob).expect("valid");
        assert_eq!(header.string(NAME), Ok(Some(&b"n"[..])));
        assert_eq!(
            header.string_array(BASENAMES),
            Ok(Some(vec![&b"a"[..], b"", b"c"]))
        );
        assert_eq!(
            header.u16_array(FILEMODES),
            Ok(Some(vec![0o100_644, 0o40_755]))
        );
        assert_eq!(header.u32_array(EPOCH), Ok(Some(vec![7])));
        assert_eq!(header.u32_array(1), Ok(None));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(blob in proptest::collection::vec(any::<u8>(), 0..512)) {
            read_everything(&blob);
        }

        #[test]
        fn random_bodies_behind_plausible_counts_never_panic(
            il in 1u32..8,
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            // Counts that match the length, so parsing gets past the preamble.
            let mut blob = Vec::new();
            let index_len = 16 * il as usize;
            let mut body = body;
            body.resize(body.len().max(index_len), 0);
            blob.extend_from_slice(&il.to_be_bytes());
            blob.extend_from_slice(&((body.len() - index_len) as u32).to_be_bytes());
            blob.extend_from_slice(&body);
            read_everything(&blob);
        }

        #[test]
        fn corrupted_real_headers_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16)
        ) {
            let mut blob = fixture();
            for (at, value) in edits {
                let at = at.index(blob.len());
                blob[at] = value;
            }
            read_everything(&blob);
        }
    }
}
