//! Paths are bytes on Linux.
//!
//! Every path driftwatch records is the raw byte string the kernel gave it, absolute
//! inside the scanned root. Two helpers live here because both the baseline format and
//! the reports depend on them: the sort order of entries, and the lossless-but-readable
//! rendering of names that are not UTF-8.

use std::cmp::Ordering;

/// Orders paths component by component (`/a/b` < `/a-c` < `/a/` never occurs).
///
/// This is the order of a depth-first walk that visits each directory's children sorted
/// by name, so a walker can produce entries already in baseline order and a check can
/// merge the live walk with the baseline as two sorted streams. It equals a byte-wise
/// comparison in which `/` sorts before every other byte.
pub fn cmp(a: &[u8], b: &[u8]) -> Ordering {
    fn key(byte: u8) -> u16 {
        if byte == b'/' {
            0
        } else {
            u16::from(byte) + 1
        }
    }
    for (x, y) in a.iter().zip(b.iter()) {
        match key(*x).cmp(&key(*y)) {
            Ordering::Equal => continue,
            other => return other,
        }
    }
    a.len().cmp(&b.len())
}

/// True when `path` is `ancestor` itself or lies below it (`/usr` covers `/usr/bin`,
/// not `/usrx`).
pub fn is_within(path: &[u8], ancestor: &[u8]) -> bool {
    if ancestor == b"/" {
        return path.first() == Some(&b'/');
    }
    path.starts_with(ancestor)
        && (path.len() == ancestor.len() || path.get(ancestor.len()) == Some(&b'/'))
}

/// Renders a path for people: UTF-8 runs as they are, every other byte as `\xNN`.
///
/// This is readable but not reversible when a name itself contains `\x`; reports carry
/// the exact bytes beside it (see [`crate::report::FileFinding::path_bytes_b64`]).
pub fn display(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len());
    for chunk in path.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// True when the path is valid UTF-8, i.e. [`display`] is lossless.
pub fn is_utf8(path: &[u8]) -> bool {
    std::str::from_utf8(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_order_matches_depth_first_walk() {
        let mut paths: Vec<&[u8]> = vec![b"/a-c", b"/a/b", b"/a", b"/ab", b"/a/b/c", b"/"];
        paths.sort_by(|a, b| cmp(a, b));
        let expected: Vec<&[u8]> = vec![b"/", b"/a", b"/a/b", b"/a/b/c", b"/a-c", b"/ab"];
        assert_eq!(paths, expected);
    }

    #[test]
    fn within_respects_component_boundaries() {
        assert!(is_within(b"/usr/bin", b"/usr"));
        assert!(is_within(b"/usr", b"/usr"));
        assert!(!is_within(b"/usrx", b"/usr"));
        assert!(is_within(b"/anything", b"/"));
    }

    #[test]
    fn display_escapes_invalid_bytes_only() {
        assert_eq!(display(b"/tmp/caf\xc3\xa9"), "/tmp/café");
        assert_eq!(display(b"/tmp/\xff\xfe"), "/tmp/\\xff\\xfe");
    }
}
