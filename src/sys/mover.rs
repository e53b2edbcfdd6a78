//! The data mover: places a byte range of one file into another, sharing extents where the
//! filesystem can (FICLONERANGE), else copying in the kernel (copy_file_range, where it may
//! still share), else through a buffer with uncached reads and writes (`sys::uncached`). What works is remembered per pair of filesystems, so a filesystem without reflink
//! costs one failed call, not one per file.

use std::collections::HashMap;
use std::io;
use std::os::fd::BorrowedFd;

use rustix::io::Errno;

use crate::sys::{clone, uncached};

/// How data gets from one filesystem to another, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rung {
    Clone,
    CopyFileRange,
    ReadWrite,
}

/// What may be done with the block that holds the end of the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Clone whole blocks only; copy the unaligned tail.
    Copy,
    /// The source has readable bytes up to the next block boundary and the caller truncates
    /// the destination to the range's end afterwards, so the tail's whole block can be cloned.
    /// (`transfer` says where its writes ended, so the caller knows whether it must.)
    Overshoot,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MoveStats {
    pub bytes_cloned: u64,
    pub bytes_copied: u64,
}

/// One side of a transfer: an open file, the device it lives on, and an offset in it.
#[derive(Clone, Copy)]
pub(crate) struct End<'a> {
    pub fd: BorrowedFd<'a>,
    pub dev: u64,
    pub offset: u64,
}

pub(crate) struct Mover {
    first_rung: Rung,
    /// The best rung known to work for a (source device, destination device) pair.
    pairs: HashMap<(u64, u64), Rung>,
    buf: Vec<u8>,
    pub stats: MoveStats,
}

/// Whether a copy may end up sharing extents (copy_file_range may clone).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sharing {
    Allowed,
    Refused,
}

/// Ranges shorter than this are copied without looking for holes.
const HOLE_SEARCH_MIN: u64 = 128 << 10;

/// Size of the bounce buffer for the last-resort copy.
const COPY_CHUNK: usize = 1 << 20;

impl Mover {
    /// `share`: false forces a copy through memory, so that the destination owns independent
    /// blocks (copy_file_range may share extents without saying so).
    pub(crate) fn new(share: bool) -> Mover {
        Mover {
            first_rung: if share { Rung::Clone } else { Rung::ReadWrite },
            pairs: HashMap::new(),
            buf: Vec::new(),
            stats: MoveStats::default(),
        }
    }

    /// Places `len` bytes from `src` into `dst`. `block` is the clone granularity (the
    /// destination filesystem's block size). Holes in the source stay holes on the copy paths.
    pub(crate) fn transfer(
        &mut self,
        src: End<'_>,
        dst: End<'_>,
        len: u64,
        block: u64,
        tail: Tail,
    ) -> io::Result<u64> {
        let (clone_len, covers) = match tail {
            Tail::Copy => (len - len % block, len - len % block),
            Tail::Overshoot => (len.div_ceil(block) * block, len),
        };
        let cloned = self.try_clone(src, dst, clone_len, block)?;
        let done = if cloned { covers } else { 0 };
        self.stats.bytes_cloned += done;
        if done < len {
            let src = End { offset: src.offset + done, ..src };
            let dst = End { offset: dst.offset + done, ..dst };
            self.stats.bytes_copied += len - done;
            return self.copy_sparse(src, dst, len - done, Sharing::Allowed);
        }
        Ok(dst.offset + if cloned { clone_len } else { 0 })
    }

    /// Whether a clone between these devices may work (it has not failed for good).
    pub(crate) fn may_clone(&self, src_dev: u64, dst_dev: u64) -> bool {
        self.rung((src_dev, dst_dev)) == Rung::Clone
    }

    /// Clones the whole blocks of a `len`-byte range; returns the bytes cloned, 0 when the
    /// filesystems (or this file) do not allow it. The rest is the caller's to copy.
    pub(crate) fn clone_blocks(
        &mut self,
        src: End<'_>,
        dst: End<'_>,
        len: u64,
        block: u64,
    ) -> io::Result<u64> {
        let clone_len = len - len % block;
        let done = if self.try_clone(src, dst, clone_len, block)? { clone_len } else { 0 };
        self.stats.bytes_cloned += done;
        Ok(done)
    }

    fn try_clone(&mut self, src: End<'_>, dst: End<'_>, len: u64, block: u64) -> io::Result<bool> {
        let pair = (src.dev, dst.dev);
        if len == 0
            || self.rung(pair) != Rung::Clone
            || !src.offset.is_multiple_of(block)
            || !dst.offset.is_multiple_of(block)
        {
            return Ok(false);
        }
        match clone::clone_range(src.fd, src.offset, dst.fd, dst.offset, len) {
            Ok(()) => Ok(true),
            Err(e) => self.clone_failed(pair, e).map(|()| false),
        }
    }

    fn rung(&self, pair: (u64, u64)) -> Rung {
        self.pairs.get(&pair).copied().unwrap_or(self.first_rung).max(self.first_rung)
    }

    fn demote(&mut self, pair: (u64, u64), below: Rung) {
        let next = match below {
            Rung::Clone => Rung::CopyFileRange,
            _ => Rung::ReadWrite,
        };
        let current = self.rung(pair);
        if current <= below {
            log::debug!("{:?} unavailable between devices {pair:?}; using {next:?}", below);
            self.pairs.insert(pair, next);
        }
    }

    fn clone_failed(&mut self, pair: (u64, u64), e: io::Error) -> io::Result<()> {
        match Errno::from_io_error(&e) {
            // Not this pair of filesystems, ever.
            Some(Errno::OPNOTSUPP | Errno::XDEV | Errno::NOSYS | Errno::NOTTY | Errno::BADF) => {
                self.demote(pair, Rung::Clone);
                Ok(())
            }
            // This file only: unaligned range, or (Btrfs) one file with and one without data
            // checksums; the next file may clone.
            Some(Errno::INVAL | Errno::PERM | Errno::TXTBSY) => Ok(()),
            _ => Err(e),
        }
    }

    /// Copies `len` bytes through memory, keeping holes, so that the destination shares no
    /// extent with the source even where both could (copy_file_range clones within one
    /// filesystem); returns where the last byte written to the destination ends.
    pub(crate) fn copy_unshared(&mut self, src: End<'_>, dst: End<'_>, len: u64) -> io::Result<u64> {
        self.stats.bytes_copied += len;
        self.copy_sparse(src, dst, len, Sharing::Refused)
    }

    /// Copies `len` bytes, skipping the source's holes (left unwritten in the destination);
    /// returns where the last byte written to the destination ends.
    fn copy_sparse(&mut self, src: End<'_>, dst: End<'_>, len: u64, sharing: Sharing) -> io::Result<u64> {
        // Looking for holes costs more than copying a short range (SEEK_DATA may flush).
        if len <= HOLE_SEARCH_MIN {
            self.copy(src, dst, len, sharing)?;
            return Ok(dst.offset + len);
        }
        let end = src.offset + len;
        let mut pos = src.offset;
        let mut written = dst.offset;
        while pos < end {
            let data = match rustix::fs::seek(src.fd, rustix::fs::SeekFrom::Data(pos)) {
                Ok(data) => data,
                // No data after pos: the rest is a hole.
                Err(Errno::NXIO) => end,
                // No hole support: all of it is data.
                Err(Errno::INVAL | Errno::OPNOTSUPP) => pos,
                Err(e) => return Err(e.into()),
            };
            uncached::forget_hole(src.fd, pos, data.min(end) - pos);
            if data >= end {
                return Ok(written);
            }
            let hole = match rustix::fs::seek(src.fd, rustix::fs::SeekFrom::Hole(data)) {
                Ok(hole) => hole.min(end),
                Err(_) => end,
            };
            let skip = data - src.offset;
            let src_at = End { offset: src.offset + skip, ..src };
            let dst_at = End { offset: dst.offset + skip, ..dst };
            self.copy(src_at, dst_at, hole - data, sharing)?;
            written = dst_at.offset + (hole - data);
            pos = hole;
        }
        Ok(written)
    }

    fn copy(&mut self, src: End<'_>, dst: End<'_>, len: u64, sharing: Sharing) -> io::Result<()> {
        let pair = (src.dev, dst.dev);
        let (mut src_off, mut dst_off, mut left) = (src.offset, dst.offset, len);
        // Between filesystems that cannot clone, copy_file_range copies through the page
        // cache: uncached reads and writes copy the same bytes and leave the cache alone.
        let uncached = uncached::supported(src.dev) && uncached::supported(dst.dev);
        let rung = self.rung(pair);
        if sharing == Sharing::Allowed && (rung == Rung::Clone || (rung == Rung::CopyFileRange && !uncached))
        {
            while left > 0 {
                let want = left.min(1 << 30) as usize;
                match rustix::fs::copy_file_range(
                    src.fd,
                    Some(&mut src_off),
                    dst.fd,
                    Some(&mut dst_off),
                    want,
                ) {
                    Ok(0) => return Err(shrunk()),
                    Ok(n) => left -= n as u64,
                    Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL | Errno::BADF)
                        if left == len =>
                    {
                        self.demote(pair, Rung::CopyFileRange);
                        break;
                    }
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if left == 0 {
                return Ok(());
            }
        }
        if self.buf.is_empty() {
            self.buf = vec![0; COPY_CHUNK];
        }
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = match uncached::pread(src.fd, src.dev, &mut self.buf[..want], src_off)? {
                0 => return Err(shrunk()),
                n => n,
            };
            uncached::pwrite_all(dst.fd, dst.dev, &self.buf[..n], dst_off)?;
            src_off += n as u64;
            dst_off += n as u64;
            left -= n as u64;
        }
        Ok(())
    }
}

/// The error for a source that ended before the size it had when it was walked.
pub(crate) fn shrunk() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "file ended early: it shrank while being read")
}

/// Writes all of `buf` at `offset`.
pub(crate) fn write_all_at(fd: BorrowedFd<'_>, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::pwrite(fd, buf, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
