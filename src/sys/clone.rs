//! The one system call rustix has no safe wrapper for. All of the crate's `unsafe` is here.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// `struct file_clone_range` from <linux/fs.h>.
#[repr(C)]
struct FileCloneRange {
    src_fd: i64,
    src_offset: u64,
    src_length: u64,
    dest_offset: u64,
}

/// `_IOW(0x94, 13, struct file_clone_range)`.
const FICLONERANGE: libc::c_ulong = 0x4020_940d;

/// Shares `len` bytes of `src` at `src_offset` into `dst` at `dst_offset` (FICLONERANGE).
/// Offsets and length must be multiples of the filesystem block size, except for a range that
/// ends at the source's end of file and at or beyond the destination's.
pub fn clone_range(
    src: impl AsFd,
    src_offset: u64,
    dst: impl AsFd,
    dst_offset: u64,
    len: u64,
) -> io::Result<()> {
    let args = FileCloneRange {
        src_fd: i64::from(src.as_fd().as_raw_fd()),
        src_offset,
        src_length: len,
        dest_offset: dst_offset,
    };
    // SAFETY: both descriptors are borrowed for the duration of the call, so they stay open;
    // FICLONERANGE only reads `args`, which is a live, correctly laid out (repr(C)) struct of
    // the size encoded in the request number.
    let rc = unsafe { libc::ioctl(dst.as_fd().as_raw_fd(), FICLONERANGE, &args) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
