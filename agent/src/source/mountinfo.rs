//! `/proc/PID/mountinfo`, parsed losslessly: mount points are bytes (a path need not be
//! UTF-8, and a hostile one must not make the table unreadable), octal escapes undone.
//! Used where the kernel's mount table is the truth about what a process sees: the
//! container source finds overlay roots and volume mounts here.

/// One line: `id parent major:minor root mountpoint options [optional…] - fstype
/// source superopts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountLine {
    /// The device number of the mounted filesystem (`st_dev` of files on it).
    pub device: (u32, u32),
    /// The directory of the filesystem that is mounted (field 4), unescaped.
    pub root: Vec<u8>,
    /// Where it is mounted (field 5), unescaped.
    pub mount_point: Vec<u8>,
    /// Per-mount options (`rw`, `nosuid`, …).
    pub mount_options: String,
    /// The filesystem type (`overlay`, `ext4`, `tmpfs`, …).
    pub fs_type: String,
    /// The superblock's options, raw (overlay's `lowerdir=…,upperdir=…`; paths in them
    /// may hold escaped commas and colons).
    pub super_options: Vec<u8>,
}

/// Undoes mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash); anything else is kept as it is.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            if let Some(digits) = field.get(i + 1..i + 4) {
                if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    let value = digits
                        .iter()
                        .fold(0u16, |acc, d| acc * 8 + u16::from(d - b'0'));
                    if let Ok(byte) = u8::try_from(value) {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

fn device(field: &[u8]) -> Option<(u32, u32)> {
    let text = std::str::from_utf8(field).ok()?;
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Parses one line; `None` when it is malformed.
pub fn parse_line(line: &[u8]) -> Option<MountLine> {
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let separator = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
    Some(MountLine {
        device: device(fields.get(2)?)?,
        root: unescape(fields.get(3)?),
        mount_point: unescape(fields.get(4)?),
        mount_options: String::from_utf8_lossy(fields.get(5)?).into_owned(),
        fs_type: String::from_utf8_lossy(fields.get(separator + 1)?).into_owned(),
        super_options: fields.get(separator + 3)?.to_vec(),
    })
}

/// Parses a whole table; malformed lines are counted, not fatal (the other mounts are
/// still true).
pub fn parse(text: &[u8]) -> (Vec<MountLine>, usize) {
    let mut malformed = 0;
    let lines = text
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .filter_map(|line| {
            let parsed = parse_line(line);
            malformed += usize::from(parsed.is_none());
            parsed
        })
        .collect();
    (lines, malformed)
}

/// Splits superblock options at commas and undoes their escapes. The kernel shows a
/// comma inside an option's value octal-escaped (`\054`), so a raw comma always
/// separates options.
pub fn split_super_options(raw: &[u8]) -> Vec<Vec<u8>> {
    raw.split(|b| *b == b',')
        .filter(|option| !option.is_empty())
        .map(unescape)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_lines_parse_with_escapes() {
        let text = b"53 49 0:43 / /var/lib/x/merged rw,relatime - overlay overlay rw,lowerdir=/a\\054b:/c,upperdir=/u\\040d,workdir=/w\n\
garbage\n\
41 27 0:38 / /mnt/my\\040disk rw,nosuid - vfat /dev/sdb1 rw\n";
        let (lines, malformed) = parse(text);
        assert_eq!(malformed, 1);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].device, (0, 43));
        assert_eq!(lines[0].fs_type, "overlay");
        assert_eq!(lines[1].mount_point, b"/mnt/my disk");
        let options = split_super_options(&lines[0].super_options);
        assert_eq!(
            options,
            [
                b"rw".to_vec(),
                b"lowerdir=/a,b:/c".to_vec(),
                b"upperdir=/u d".to_vec(),
                b"workdir=/w".to_vec()
            ]
        );
    }

    #[test]
    fn hostile_lines_never_panic() {
        for line in [&b""[..], b"- - -", b"1 2 x:y / / rw - a b c", b"\\\\\\"] {
            let _ = parse(line);
            let _ = split_super_options(line);
        }
    }
}
