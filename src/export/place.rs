//! The placer: writes a planned archive into a file at the planned offsets, moving file data
//! with the data mover (so it is shared where the filesystem allows).

use std::fs::File;
use std::num::NonZeroU64;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::Advice;

use crate::error::{Context, Result};
use crate::export::pieces::{Covered, Piece, Pieces};
use crate::export::source::{self, SourceFile};
use crate::progress::Progress;
use crate::sys::mover::{End, Mover, Tail, shrunk, write_all_at};
use crate::sys::uncached;
use crate::tar::BLOCK;
use crate::tar::manifest;

/// The archive being written.
pub(crate) struct Target<'a> {
    pub file: &'a File,
    pub path: &'a Path,
    pub dev: u64,
    /// Clone granularity of the archive's filesystem.
    pub block: u64,
}

/// Writes the archive's pieces into its target. Within each window of files, every aligned file's whole
/// blocks are cloned first; then headers, padding, small files, tails and whatever could not
/// be cloned are written, adjacent pieces coalesced into one write. Cloning first matters: a
/// clone into a file with dirty pages before the destination waits for their writeback, and
/// an unaligned tail cloned at the end of file makes the next extension rewrite that block
/// anyway (so the tail block of a member followed by another member is never shared in the
/// archive).
pub(crate) struct Placer<'a> {
    pub target: Target<'a>,
    pub mover: Mover,
    pub progress: Option<&'a dyn Progress>,
    /// Files smaller than this are copied whole rather than cloned (see
    /// [`crate::DEFAULT_CLONE_MIN`]).
    clone_min: u64,
    /// The members the digest manifest lists, hashed once everything is placed.
    covered: Vec<Covered>,
    /// Pending bytes for the archive, starting at `pending_at`.
    pending: Vec<u8>,
    pending_at: u64,
    buf: Vec<u8>,
}

/// Remaining data up to this size is read into the pending write rather than moved on its own.
const SMALL_REST: u64 = 64 << 10;
/// Files opened and cloned together before their tails and headers are written.
const WINDOW_FILES: usize = 256;
/// Pieces held at most (a tree of directories and links has headers but no files).
const WINDOW_PIECES: usize = 4 * WINDOW_FILES;
/// Pending bytes are written out once they reach this size.
const PENDING_LIMIT: usize = 1 << 20;

impl<'a> Placer<'a> {
    pub(crate) fn new(
        target: Target<'a>,
        mover: Mover,
        clone_min: u64,
        progress: Option<&'a dyn Progress>,
    ) -> Placer<'a> {
        Placer {
            target,
            mover,
            progress,
            clone_min,
            covered: Vec::new(),
            pending: Vec::new(),
            pending_at: 0,
            buf: Vec::new(),
        }
    }

    /// Writes the whole archive, a window of files at a time: each file is opened once, its
    /// whole blocks cloned with the rest of the window's, then its tail (or all of it, if
    /// it could not be cloned) written with the headers around it. Windows bound the open
    /// files and the memory held, and make a clone wait behind dirty pages at most once per
    /// window.
    pub(crate) fn place(&mut self, pieces: &mut Pieces<'_>) -> Result<()> {
        let mut window = Vec::new();
        let mut manifest_at = None;
        loop {
            window.clear();
            let mut files = 0;
            while files < WINDOW_FILES && window.len() < WINDOW_PIECES {
                let Some(piece) = pieces.next() else { break };
                let piece = piece?;
                files += usize::from(matches!(piece, Piece::File { .. }));
                window.push(piece);
            }
            if window.is_empty() {
                break;
            }
            let mut opened = Vec::with_capacity(files);
            for piece in &window {
                if let Piece::File { offset, source } = piece {
                    opened.push(self.clone_file(source, *offset)?);
                }
            }
            let mut opened = opened.into_iter();
            for piece in window.drain(..) {
                match piece {
                    Piece::Header { offset, bytes, digest } => {
                        self.put(offset, &bytes)?;
                        self.covered.extend(digest);
                    }
                    Piece::Bytes { offset, bytes } => self.put(offset, &bytes)?,
                    Piece::File { offset, source } => {
                        let (file, cloned) = opened.next().expect("one opened file per file piece");
                        self.fill_file(&source, &file, offset, cloned)?;
                    }
                    Piece::Manifest { offset, len } => manifest_at = Some((offset, len)),
                    // Only streams plan sparse members: here holes stay holes by offset.
                    Piece::Sparse { .. } => unreachable!("a sparse member in a file archive"),
                    Piece::End { offset } => self.put(offset, &[0u8; 1024])?,
                }
            }
        }
        self.flush()?;
        if let Some((offset, len)) = manifest_at {
            self.write_manifest(offset, len)?;
        }
        Ok(())
    }

    /// Opens a source file, clones its whole blocks if its data is aligned, and starts reading
    /// the small rest that will be copied: with a window's reads queued together the disk
    /// serves them in parallel instead of one synchronous read per file.
    fn clone_file(&mut self, source: &SourceFile, offset: u64) -> Result<(File, u64)> {
        let path = source.path.as_path();
        let file = source::open(source)?;
        let block = self.target.block;
        let worth_it = offset.is_multiple_of(block)
            && source.size >= block.max(self.clone_min)
            && self.mover.may_clone(source.dev, self.target.dev);
        let cloned = if worth_it {
            let src = End { fd: file.as_fd(), dev: source.dev, offset: 0 };
            let dst = End { fd: self.target.file.as_fd(), dev: self.target.dev, offset };
            self.mover.clone_blocks(src, dst, source.size, block).map_err(|e| {
                source::error_of(source, &file, source::transfer_error(e, path, self.target.path))
            })?
        } else {
            0
        };
        let rest = source.size - cloned;
        if rest > 0 && rest <= SMALL_REST {
            // Only a hint: failing to read ahead costs nothing but the overlap.
            let _ = rustix::fs::fadvise(&file, cloned, NonZeroU64::new(rest), Advice::WillNeed);
        }
        Ok((file, cloned))
    }

    /// Writes what the clone left of a file, then checks the file did not change since the
    /// walk (one fstat after all reads catches a change before or during them).
    fn fill_file(&mut self, source: &SourceFile, file: &File, offset: u64, cloned: u64) -> Result<()> {
        let path = source.path.as_path();
        let rest = source.size - cloned;
        if rest > 0 && rest <= SMALL_REST {
            let mut data = std::mem::take(&mut self.buf);
            data.resize(rest as usize, 0);
            let read = file.read_exact_at(&mut data, cloned);
            let result = read.map_err(|e| {
                source::transfer_error(
                    if e.kind() == std::io::ErrorKind::UnexpectedEof { shrunk() } else { e },
                    path,
                    self.target.path,
                )
            });
            let result = result
                .map_err(|e| source::error_of(source, file, e))
                .and_then(|()| self.put(offset + cloned, &data));
            self.buf = data;
            result?;
            self.mover.stats.bytes_copied += rest;
        } else if rest > 0 {
            let src = End { fd: file.as_fd(), dev: source.dev, offset: cloned };
            let dst = End { fd: self.target.file.as_fd(), dev: self.target.dev, offset: offset + cloned };
            let moved = if source.size < self.clone_min {
                // Below --clone-min: a copy, even where copy_file_range would clone.
                self.mover.copy_unshared(src, dst, rest)
            } else {
                self.mover.transfer(src, dst, rest, self.target.block, Tail::Copy)
            };
            moved.map_err(|e| {
                source::error_of(source, file, source::transfer_error(e, path, self.target.path))
            })?;
        }
        source::check_unchanged(source, file)?;
        if let Some(progress) = self.progress {
            progress.advance(source.size);
        }
        Ok(())
    }

    /// Queues `bytes` for `offset`. Offsets only grow; a gap shorter than a tar block is tar
    /// padding and filled with zeros, a longer one holds data placed otherwise and is skipped.
    fn put(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        let end = self.pending_at + self.pending.len() as u64;
        debug_assert!(offset >= end || self.pending.is_empty());
        if self.pending.is_empty() || offset < end || offset - end >= BLOCK {
            self.flush()?;
            self.pending_at = offset;
        } else {
            self.pending.resize(self.pending.len() + (offset - end) as usize, 0);
        }
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= PENDING_LIMIT {
            let next = self.pending_at + self.pending.len() as u64;
            self.flush()?;
            self.pending_at = next;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            let (fd, dev) = (self.target.file.as_fd(), self.target.dev);
            // Where nothing is cloned the archive is all copies, and is written uncached like
            // the copies; between clones, headers are too small to be worth it.
            let written = if self.mover.may_clone(dev, dev) {
                write_all_at(fd, &self.pending, self.pending_at)
            } else {
                uncached::pwrite_all(fd, dev, &self.pending, self.pending_at)
            };
            written.at("write", self.target.path)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Hashes every member the manifest lists as the archive now holds it (as a reader will
    /// see it), then writes the manifest.
    fn write_manifest(&mut self, offset: u64, len: u64) -> Result<()> {
        let fd = self.target.file.as_fd();
        let path = self.target.path;
        let mut manifest = Vec::with_capacity(len as usize);
        for covered in std::mem::take(&mut self.covered) {
            let hash =
                manifest::hash_range(fd, covered.data_offset, covered.size, None, &mut self.buf, &mut |_| {})
                    .at("read back", path)?;
            manifest.extend(manifest::line(&covered.name, &hash));
        }
        assert_eq!(manifest.len() as u64, len, "manifest length was planned");
        write_all_at(fd, &manifest, offset).at("write", path)?;
        Ok(())
    }
}
