//! One filesystem object as driftwatch records it.

/// The type of a filesystem object. Only regular files are ever opened by the scanner;
/// for the others the type (and for devices the device number) is all there is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileType {
    /// A regular file.
    #[default]
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
    /// A named pipe (never opened: opening one can block forever).
    Fifo,
    /// A Unix domain socket.
    Socket,
    /// A character device (never opened: opening one can have side effects).
    CharDevice,
    /// A block device (never opened).
    BlockDevice,
}

impl FileType {
    /// The stable one-byte code used in the baseline encoding.
    pub fn code(self) -> u8 {
        match self {
            FileType::File => 1,
            FileType::Dir => 2,
            FileType::Symlink => 3,
            FileType::Fifo => 4,
            FileType::Socket => 5,
            FileType::CharDevice => 6,
            FileType::BlockDevice => 7,
        }
    }

    /// The inverse of [`FileType::code`]; `None` for an unknown code.
    pub fn from_code(code: u8) -> Option<FileType> {
        Some(match code {
            1 => FileType::File,
            2 => FileType::Dir,
            3 => FileType::Symlink,
            4 => FileType::Fifo,
            5 => FileType::Socket,
            6 => FileType::CharDevice,
            7 => FileType::BlockDevice,
            _ => return None,
        })
    }

    /// The name used in reports (`file`, `dir`, `symlink`, `fifo`, `socket`,
    /// `char_device`, `block_device`).
    pub fn name(self) -> &'static str {
        match self {
            FileType::File => "file",
            FileType::Dir => "dir",
            FileType::Symlink => "symlink",
            FileType::Fifo => "fifo",
            FileType::Socket => "socket",
            FileType::CharDevice => "char_device",
            FileType::BlockDevice => "block_device",
        }
    }

    /// Decodes the type bits of a `st_mode`; `None` for a type Linux does not have.
    pub fn from_mode(mode: u32) -> Option<FileType> {
        Some(match mode & 0o170000 {
            0o100000 => FileType::File,
            0o040000 => FileType::Dir,
            0o120000 => FileType::Symlink,
            0o010000 => FileType::Fifo,
            0o140000 => FileType::Socket,
            0o020000 => FileType::CharDevice,
            0o060000 => FileType::BlockDevice,
            _ => return None,
        })
    }
}

/// A modification time: seconds since the Unix epoch and nanoseconds within the second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z (negative before it).
    pub secs: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nanos: u32,
}

/// One recorded filesystem object.
///
/// `path` is absolute *inside* the scanned root and is raw bytes: names that are not
/// UTF-8 are kept exactly. Hashes are present only for regular files whose policy rule
/// checks content and that could be read consistently.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path inside the root, as bytes.
    pub path: Vec<u8>,
    /// The object's type.
    pub file_type: FileType,
    /// Permission bits including setuid (0o4000), setgid (0o2000) and sticky (0o1000).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Size in bytes (for symlinks the target's length).
    pub size: u64,
    /// Last modification time.
    pub mtime: Timestamp,
    /// Device number for character and block devices, 0 otherwise.
    pub rdev: u64,
    /// The target of a symbolic link, as bytes.
    pub link_target: Option<Vec<u8>>,
    /// Security-relevant extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// BLAKE3 of the content.
    pub blake3: Option<[u8; 32]>,
    /// SHA-256 of the content, when the policy asks for it.
    pub sha256: Option<[u8; 32]>,
}

impl Entry {
    /// True for setuid or setgid bits.
    pub fn has_set_id_bits(&self) -> bool {
        self.mode & 0o6000 != 0
    }

    /// The value of one extended attribute, if recorded.
    pub fn xattr(&self, name: &[u8]) -> Option<&[u8]> {
        self.xattrs
            .iter()
            .find(|(n, _)| n.as_slice() == name)
            .map(|(_, v)| v.as_slice())
    }
}
