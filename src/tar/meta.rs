//! What a tar member is and the inode metadata it carries, on both sides of the format: what
//! export writes and what the reader decodes.

use std::os::unix::fs::MetadataExt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Regular,
    Directory,
    Symlink(Vec<u8>),
    /// A second or later name of an inode; holds the first name.
    HardLink(Vec<u8>),
    CharDevice,
    BlockDevice,
    Fifo,
}

/// The inode metadata an archive member carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Meta {
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
}

impl Meta {
    pub(crate) fn from_std(meta: &std::fs::Metadata) -> Meta {
        let rdev = meta.rdev();
        Meta {
            mode: meta.mode() & 0o7777,
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
            dev_major: rustix::fs::major(rdev),
            dev_minor: rustix::fs::minor(rdev),
        }
    }
}
