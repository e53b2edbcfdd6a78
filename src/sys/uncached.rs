//! Reads and writes that leave the page cache as they found it, for the data ckpt copies
//! (rather than clones): a checkpoint is read and written once, and caching it would evict
//! the running workloads' pages. RWF_DONTCACHE (Linux 6.14) drops the pages such an I/O
//! brings in once they are clean (written back, for a write), and leaves alone the pages that
//! were cached before, which are someone else's. A filesystem without it (EOPNOTSUPP: Btrfs
//! in 6.18) or an older kernel (EINVAL), remembered per device, gets plain reads whose pages
//! are dropped once read (`fadvise(DONTNEED)`: pages cached before are dropped too, since
//! telling them apart needs `cachestat`, which rustix lacks), and plain writes that
//! `behind` writes back and drops a few MiB behind the write front.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Mutex;

use rustix::io::{Errno, ReadWriteFlags};

use crate::sys::behind;

/// Devices where RWF_DONTCACHE was refused.
static REFUSED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn dontcache(dev: u64) -> ReadWriteFlags {
    let refused = REFUSED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if refused.contains(&dev) {
        ReadWriteFlags::empty()
    } else {
        ReadWriteFlags::from_bits_retain(libc::RWF_DONTCACHE as u32)
    }
}

fn refuse(dev: u64) {
    let mut refused = REFUSED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !refused.contains(&dev) {
        log::debug!("device {dev}: no uncached I/O (RWF_DONTCACHE); copies drop their pages after use");
        refused.push(dev);
    }
}

/// Whether copies on `dev` keep the page cache as it was.
pub(crate) fn supported(dev: u64) -> bool {
    !dontcache(dev).is_empty()
}

/// Drops the cached pages of a hole of `len` bytes at `offset` in `fd` that a copy skipped:
/// reads around it bring zero-filled pages in that no disk read completes, so uncached reads
/// do not drop them. A hole's pages are zeros that no workload needs cached.
pub(crate) fn forget_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) {
    behind::drop_pages(fd, offset, len);
}

/// Drops the pages of bytes read through the cache, where the device refused uncached reads
/// (what `sendfile` read, say).
pub(crate) fn forget_read(fd: BorrowedFd<'_>, dev: u64, offset: u64, len: u64) {
    if !supported(dev) {
        behind::drop_pages(fd, offset, len);
    }
}

/// Reads into `buf` from `offset` of `fd`, on device `dev`; the bytes read (0 at the end).
pub(crate) fn pread(fd: BorrowedFd<'_>, dev: u64, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        let flags = dontcache(dev);
        match rustix::io::preadv2(fd, &mut [io::IoSliceMut::new(buf)], offset, flags) {
            Ok(n) => {
                if flags.is_empty() {
                    behind::drop_pages(fd, offset, n as u64);
                }
                return Ok(n);
            }
            Err(Errno::OPNOTSUPP | Errno::INVAL) if !flags.is_empty() => refuse(dev),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of `buf` at `offset` of `fd`, on device `dev`.
pub(crate) fn pwrite_all(fd: BorrowedFd<'_>, dev: u64, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let flags = dontcache(dev);
        match rustix::io::pwritev2(fd, &[io::IoSlice::new(buf)], offset, flags) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                if flags.is_empty() {
                    behind::wrote(fd, offset, n as u64);
                }
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(Errno::OPNOTSUPP | Errno::INVAL) if !flags.is_empty() => refuse(dev),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A file read front to back without caching what is read (a compressed archive, say).
pub(crate) struct FileReader {
    file: std::fs::File,
    dev: u64,
    pos: u64,
}

impl FileReader {
    /// Reads `file`, which is on device `dev`, from its start.
    pub(crate) fn new(file: std::fs::File, dev: u64) -> FileReader {
        FileReader { file, dev, pos: 0 }
    }
}

impl io::Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = pread(std::os::fd::AsFd::as_fd(&self.file), self.dev, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
