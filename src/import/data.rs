//! Filling a new regular file with its member's data: from an archive file, by cloning whole
//! blocks and copying the rest (through the mover, which says which side a failure such as
//! ENOSPC belongs to); from a stream, by writing only the blocks that are not all zeros; a
//! sparse member's fragments at their offsets either way. Separate because it is the one
//! job that moves bytes, and the one that knows the destination filesystem's block rules.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use crate::import::extract::Filesystem;
use crate::sys::mover::{End, MoveStats, Mover, Tail};
use crate::sys::uncached;
use crate::tar::reader::{Entry, Reader};
use crate::tar::round_up;

/// statfs(2)'s f_type of Btrfs.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;

/// Writes file data into files on one destination filesystem.
pub(crate) struct FileData {
    /// The destination's device and block size.
    dev: u64,
    block: u64,
    /// Whether a file's partial last block is cloned whole and the file then truncated: on
    /// Btrfs the truncated block stays shared; XFS copies it on truncation and flushes the
    /// file on close, so there the tail is copied instead.
    clone_tails: bool,
    mover: Mover,
    /// The buffer a stream's data is read into, allocated with the first streamed file.
    buf: Vec<u8>,
    /// Descriptor, length and device of the archive file, looked up once.
    archive_info: Option<(RawFd, u64, u64)>,
}

impl FileData {
    /// For files created in the directory `root`, opened as `dest`, on filesystem `fs`;
    /// `share` allows cloning.
    pub(crate) fn new(root: &OwnedFd, fs: Filesystem, dest: &Path, share: bool) -> Result<FileData> {
        let dev = rustix::fs::fstat(root).at("fstat", dest)?.st_dev;
        Ok(FileData {
            dev,
            block: fs.block.max(512),
            clone_tails: fs.magic == BTRFS_SUPER_MAGIC,
            mover: Mover::new(share),
            buf: Vec::new(),
            archive_info: None,
        })
    }

    /// The bytes cloned and copied so far.
    pub(crate) fn moved(&self) -> MoveStats {
        self.mover.stats
    }

    /// Writes the member's data into the new file `tmp`, named `path()` in messages, and
    /// gives it its size. `reader` must be positioned at the member's data.
    pub(crate) fn fill(
        &mut self,
        tmp: &File,
        entry: &Entry,
        reader: &mut Reader<'_>,
        path: impl Fn() -> PathBuf,
    ) -> Result<()> {
        // A sparse member's stored bytes are fragments of the file; a plain one is one piece.
        let whole = [(0, entry.size)];
        let (fragments, final_size) = match &entry.sparse {
            Some(map) => (map.fragments.as_slice(), map.real_size),
            None => (&whole[..], entry.size),
        };
        let written_end = match reader.file() {
            Some(archive) => {
                let from = reader.archive_path();
                Some(self.fill_from_file(tmp, entry, fragments, (archive, from), &path)?)
            }
            None => {
                for &(at, len) in fragments {
                    self.copy_stream(tmp, at, len, reader, &path)?;
                }
                None
            }
        };
        // A whole last block cloned, or a hole at the end, leaves the size to set; most
        // files from an archive file already have it, and a truncate costs a transaction on
        // Btrfs.
        if entry.sparse.is_some() || written_end != Some(final_size) {
            tmp.set_len(final_size).at_with("ftruncate", path)?;
        }
        Ok(())
    }

    /// Clones or copies the fragments from the archive file `archive`, opened as `from`;
    /// says where the writes ended.
    fn fill_from_file(
        &mut self,
        tmp: &File,
        entry: &Entry,
        fragments: &[(u64, u64)],
        (archive, from): (&File, &Path),
        path: &impl Fn() -> PathBuf,
    ) -> Result<u64> {
        let (archive_len, archive_dev) = match self.archive_info {
            Some((fd, len, dev)) if fd == archive.as_raw_fd() => (len, dev),
            _ => {
                let meta = archive.metadata().at("fstat", from)?;
                self.archive_info = Some((archive.as_raw_fd(), meta.len(), meta.dev()));
                (meta.len(), meta.dev())
            }
        };
        let mut stored = entry.data_offset;
        let mut written_end = 0;
        for &(at, len) in fragments {
            // Cloning the whole last block (then truncating) shares the tail too; the bytes
            // after the data in that block belong to the next header, never to the file.
            let tail = if self.clone_tails
                && entry.sparse.is_none()
                && stored + round_up(len, self.block) <= archive_len
            {
                Tail::Overshoot
            } else {
                Tail::Copy
            };
            let src = End { fd: archive.as_fd(), dev: archive_dev, offset: stored };
            let dst = End { fd: tmp.as_fd(), dev: self.dev, offset: at };
            written_end = self.mover.transfer(src, dst, len, self.block, tail).map_err(|e| Error::Copy {
                from: from.to_path_buf(),
                to: path(),
                source: e,
            })?;
            stored += len;
        }
        Ok(written_end)
    }

    /// Copies from a stream, leaving all-zero blocks unwritten so they become holes.
    fn copy_stream(
        &mut self,
        tmp: &File,
        start: u64,
        size: u64,
        reader: &mut Reader<'_>,
        path: &impl Fn() -> PathBuf,
    ) -> Result<()> {
        if self.buf.is_empty() {
            self.buf = vec![0; 1 << 20];
        }
        let mut offset = 0u64;
        while offset < size {
            let want = (size - offset).min(self.buf.len() as u64) as usize;
            let buf = &mut self.buf[..want];
            reader.read_data_exact(buf)?;
            for (from, to) in data_runs(buf, 4096) {
                let at = start + offset + from as u64;
                uncached::pwrite_all(tmp.as_fd(), self.dev, &buf[from..to], at).at_with("write", path)?;
            }
            offset += want as u64;
        }
        self.mover.stats.bytes_copied += size;
        Ok(())
    }
}

/// The byte ranges of `buf` that hold data, in whole `block`s (the last may be short): runs of
/// blocks that are not all zeros, each written with one call.
fn data_runs(buf: &[u8], block: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut blocks = buf.chunks(block).enumerate().peekable();
    std::iter::from_fn(move || {
        let (first, _) = blocks.find(|(_, chunk)| chunk.iter().any(|&b| b != 0))?;
        let mut end = (first * block + block).min(buf.len());
        while let Some((i, _)) = blocks.next_if(|(_, chunk)| chunk.iter().any(|&b| b != 0)) {
            end = (i * block + block).min(buf.len());
        }
        Some((first * block, end))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_runs_skip_zero_blocks_and_join_the_rest() {
        let mut buf = vec![0u8; 4096 * 5 + 100];
        buf[10] = 1; // block 0
        buf[4096 + 5] = 1; // block 1
        buf[4096 * 3] = 1; // block 3
        buf[4096 * 5 + 99] = 1; // the short last block
        let runs: Vec<_> = data_runs(&buf, 4096).collect();
        assert_eq!(runs, [(0, 8192), (4096 * 3, 4096 * 4), (4096 * 5, 4096 * 5 + 100)]);
        assert_eq!(data_runs(&[0u8; 8192], 4096).count(), 0);
    }
}
