//! The placer: writes a planned archive into a file at the planned offsets, moving file data
//! with the data mover (so it is shared where the filesystem allows).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::digest;
use crate::error::{Context, Error, Result};
use crate::layout::{BLOCK, Plan, encode_headers};
use crate::member::{Body, SourceFile};
use crate::mover::{End, Mover, Tail, write_all_at};
use crate::progress::Progress;

/// The archive being written.
pub struct Target<'a> {
    pub file: &'a File,
    pub path: &'a Path,
    pub dev: u64,
    /// Clone granularity of the archive's filesystem.
    pub block: u64,
}

/// Writes a plan into its target in two passes. First every aligned file's whole blocks are
/// cloned; then headers, padding, small files, tails and whatever could not be cloned are
/// written, adjacent pieces coalesced into one write. Cloning first matters: a clone into a
/// file with dirty pages before the destination waits for their writeback, and an unaligned
/// tail cloned at the end of file makes the next extension rewrite that block anyway (so the
/// tail block of a member followed by another member is never shared in the archive).
pub struct Placer<'a> {
    pub target: Target<'a>,
    pub mover: Mover,
    pub progress: Option<&'a dyn Progress>,
    /// The digest manifest being built, when one was asked for.
    pub manifest: Option<Vec<u8>>,
    /// Pending bytes for the archive, starting at `pending_at`.
    pending: Vec<u8>,
    pending_at: u64,
    buf: Vec<u8>,
}

/// Remaining data up to this size is read into the pending write rather than moved on its own.
const SMALL_REST: u64 = 64 << 10;
/// Pending bytes are written out once they reach this size.
const PENDING_LIMIT: usize = 1 << 20;

impl<'a> Placer<'a> {
    pub fn new(
        target: Target<'a>,
        mover: Mover,
        progress: Option<&'a dyn Progress>,
        digest: bool,
    ) -> Placer<'a> {
        Placer {
            target,
            mover,
            progress,
            manifest: digest.then(Vec::new),
            pending: Vec::new(),
            pending_at: 0,
            buf: Vec::new(),
        }
    }

    /// Writes the whole archive.
    pub fn place(&mut self, plan: &Plan) -> Result<()> {
        let mut cloned = Vec::new();
        self.clone_pass(plan, 0, &mut cloned)?;
        self.fill_pass(plan, 0, &mut cloned.into_iter())?;
        self.flush()?;
        if self.manifest.is_some() {
            self.write_manifest(plan)?;
        }
        Ok(())
    }

    /// Clones the whole blocks of every aligned file; records per file how much was cloned.
    fn clone_pass(&mut self, plan: &Plan, base: u64, cloned: &mut Vec<u64>) -> Result<()> {
        let block = self.target.block;
        for placed in &plan.entries {
            match &placed.member.body {
                Body::File(source) => {
                    let offset = base + placed.data_offset;
                    let worth_it = offset.is_multiple_of(block)
                        && source.size >= block
                        && self.mover.may_clone(source.dev, self.target.dev);
                    cloned.push(if worth_it { self.clone_file(source, offset)? } else { 0 });
                }
                Body::Archive(inner) => self.clone_pass(inner, base + placed.data_offset, cloned)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn clone_file(&mut self, source: &SourceFile, offset: u64) -> Result<u64> {
        let path = source.path.as_path();
        let file = open_source(path)?;
        check_unchanged(source, &file.metadata().at("fstat", path)?)?;
        let src = End { fd: file.as_fd(), dev: source.dev, offset: 0 };
        let dst = End { fd: self.target.file.as_fd(), dev: self.target.dev, offset };
        let cloned = self
            .mover
            .clone_blocks(src, dst, source.size, self.target.block)
            .map_err(|e| transfer_error(e, path, self.target.path))?;
        check_unchanged(source, &file.metadata().at("fstat", path)?)?;
        if let Some(progress) = self.progress {
            progress.advance(cloned);
        }
        Ok(cloned)
    }

    /// Writes everything the clone pass left.
    fn fill_pass(&mut self, plan: &Plan, base: u64, cloned: &mut std::vec::IntoIter<u64>) -> Result<()> {
        for placed in &plan.entries {
            self.put(base + placed.header_offset, &encode_headers(placed))?;
            let data_offset = base + placed.data_offset;
            match &placed.member.body {
                Body::File(source) => {
                    let done = cloned.next().expect("one clone record per file");
                    self.fill_file(source, data_offset, done)?;
                }
                Body::Bytes(bytes) => self.put(data_offset, bytes)?,
                Body::Archive(inner) => self.fill_pass(inner, data_offset, cloned)?,
                // Written once everything before it can be hashed.
                Body::Manifest(_) => {}
                Body::None | Body::Members(_) => {}
            }
        }
        self.put(base + plan.len - 1024, &[0u8; 1024])
    }

    fn fill_file(&mut self, source: &SourceFile, offset: u64, cloned: u64) -> Result<()> {
        let rest = source.size - cloned;
        if rest == 0 {
            return Ok(());
        }
        let path = source.path.as_path();
        let file = open_source(path)?;
        check_unchanged(source, &file.metadata().at("fstat", path)?)?;
        if rest <= SMALL_REST {
            let mut data = std::mem::take(&mut self.buf);
            data.resize(rest as usize, 0);
            let read = file.read_exact_at(&mut data, cloned);
            let result = read.map_err(|e| transfer_error(shrunk_if_eof(e), path, self.target.path));
            let result = result.and_then(|()| self.put(offset + cloned, &data));
            self.buf = data;
            result?;
            self.mover.stats.bytes_copied += rest;
        } else {
            let src = End { fd: file.as_fd(), dev: source.dev, offset: cloned };
            let dst = End { fd: self.target.file.as_fd(), dev: self.target.dev, offset: offset + cloned };
            self.mover
                .transfer(src, dst, rest, self.target.block, Tail::Copy)
                .map_err(|e| transfer_error(e, path, self.target.path))?;
        }
        check_unchanged(source, &file.metadata().at("fstat", path)?)?;
        if let Some(progress) = self.progress {
            progress.advance(rest);
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
            write_all_at(self.target.file.as_fd(), &self.pending, self.pending_at)
                .at("write", self.target.path)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Hashes every covered top-level member as the archive now holds it (as a reader will see
    /// it), then writes the manifest.
    fn write_manifest(&mut self, plan: &Plan) -> Result<()> {
        let fd = self.target.file.as_fd();
        let path = self.target.path;
        let mut manifest = self.manifest.take().unwrap_or_default();
        for placed in &plan.entries {
            match &placed.member.body {
                Body::Manifest(len) => {
                    assert_eq!(manifest.len() as u64, *len, "manifest length was planned");
                    write_all_at(fd, &manifest, placed.data_offset).at("write", path)?;
                }
                _ if digest::covered(&placed.member) => {
                    let size = placed.member.data_size();
                    let hash = digest::hash_range(fd, placed.data_offset, size, &mut self.buf)
                        .at("read back", path)?;
                    manifest.extend(digest::line(&placed.member.name, &hash));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn shrunk_if_eof(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file ended early: it shrank while being read")
    } else {
        e
    }
}

pub(crate) fn open_source(path: &Path) -> Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    // O_NOATIME keeps archiving from dirtying inodes; only the owner (or root) may ask for it.
    match rustix::fs::open(path, flags | OFlags::NOATIME, Mode::empty()) {
        Ok(fd) => Ok(File::from(fd)),
        Err(Errno::PERM) => rustix::fs::open(path, flags, Mode::empty()).map(File::from).at("open", path),
        Err(e) => Err(Error::io("open", path, e)),
    }
}

pub(crate) fn check_unchanged(source: &SourceFile, now: &std::fs::Metadata) -> Result<()> {
    if now.ino() != source.ino || now.len() != source.size || (now.mtime(), now.mtime_nsec()) != source.mtime
    {
        return Err(Error::invalid(
            &source.path,
            format!(
                "changed while being archived (size {} -> {}, mtime {}.{:09} -> {}.{:09})",
                source.size,
                now.len(),
                source.mtime.0,
                source.mtime.1,
                now.mtime(),
                now.mtime_nsec()
            ),
        ));
    }
    Ok(())
}

/// Names the side of a failed transfer: a short read is the source's fault, the rest is
/// attributed to writing the archive.
fn transfer_error(e: std::io::Error, source: &Path, target: &Path) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::invalid(source, e.to_string())
    } else {
        Error::Copy { from: source.to_path_buf(), to: target.to_path_buf(), source: e }
    }
}
