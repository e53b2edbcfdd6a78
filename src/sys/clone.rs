//! The one system call rustix has no safe wrapper for. All of the crate's `unsafe` is here.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Shares `len` bytes of `src` at `src_offset` into `dst` at `dst_offset` (FICLONERANGE).
/// Offsets and length must be multiples of the filesystem block size, except for a range that
/// ends at the source's end of file and at or beyond the destination's.
pub(crate) fn clone_range(
    src: impl AsFd,
    src_offset: u64,
    dst: impl AsFd,
    dst_offset: u64,
    len: u64,
) -> io::Result<()> {
    let args = libc::file_clone_range {
        src_fd: i64::from(src.as_fd().as_raw_fd()),
        src_offset,
        src_length: len,
        dest_offset: dst_offset,
    };
    // SAFETY: both descriptors are borrowed for the duration of the call, so they stay open;
    // FICLONERANGE only reads `args`, a live `file_clone_range` as libc lays it out for this
    // architecture, of the size the request number encodes.
    let rc = unsafe { libc::ioctl(dst.as_fd().as_raw_fd(), libc::FICLONERANGE, &args) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
