//! The placer: writes a planned archive into a file at the planned offsets, moving file data
//! with the data mover (so it is shared where the filesystem allows).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::digest;
use crate::error::{Context, Error, Result};
use crate::layout::{Plan, encode_headers};
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

/// Writes a plan into its target.
pub struct Placer<'a> {
    pub target: Target<'a>,
    pub mover: Mover,
    pub progress: Option<&'a dyn Progress>,
    /// The digest manifest being built, when one was asked for.
    pub manifest: Option<Vec<u8>>,
    buf: Vec<u8>,
}

impl<'a> Placer<'a> {
    pub fn new(
        target: Target<'a>,
        mover: Mover,
        progress: Option<&'a dyn Progress>,
        digest: bool,
    ) -> Placer<'a> {
        Placer { target, mover, progress, manifest: digest.then(Vec::new), buf: Vec::new() }
    }

    /// Writes `plan` with its start at `base` in the target. Writes go strictly forward, so
    /// every file's data is appended at the target's end of file and can be cloned whole, tail
    /// included. `top` marks the outermost archive, whose members the manifest covers.
    pub fn place(&mut self, plan: &Plan, base: u64, top: bool) -> Result<()> {
        let fd = self.target.file.as_fd();
        let path = self.target.path;
        for placed in &plan.entries {
            let headers = encode_headers(placed);
            write_all_at(fd, &headers, base + placed.header_offset).at("write", path)?;
            let data_offset = base + placed.data_offset;
            match &placed.member.body {
                Body::File(source) => self.place_file(source, data_offset)?,
                Body::Bytes(bytes) => write_all_at(fd, bytes, data_offset).at("write", path)?,
                Body::Archive(inner) => self.place(inner, data_offset, false)?,
                Body::Manifest(len) => {
                    let manifest = self.manifest.take().unwrap_or_default();
                    assert_eq!(manifest.len() as u64, *len, "manifest length was planned");
                    write_all_at(fd, &manifest, data_offset).at("write", path)?;
                }
                Body::None | Body::Members(_) => {}
            }
            if top && self.manifest.is_some() && digest::covered(&placed.member) {
                // Hash what the archive now holds, as a reader will see it.
                let size = placed.member.data_size();
                let hash = digest::hash_range(fd, data_offset, size, &mut self.buf).at("read back", path)?;
                self.manifest.as_mut().expect("checked").extend(digest::line(&placed.member.name, &hash));
            }
        }
        let end_blocks = [0u8; 1024];
        write_all_at(fd, &end_blocks, base + plan.len - 1024).at("write", path)
    }

    fn place_file(&mut self, source: &SourceFile, offset: u64) -> Result<()> {
        let path = source.path.as_path();
        let file = open_source(path)?;
        let before = file.metadata().at("fstat", path)?;
        check_unchanged(source, &before)?;
        let src = End { fd: file.as_fd(), dev: before.dev(), offset: 0 };
        let dst = End { fd: self.target.file.as_fd(), dev: self.target.dev, offset };
        self.mover
            .transfer(src, dst, source.size, self.target.block, Tail::AtEof)
            .map_err(|e| transfer_error(e, path, self.target.path))?;
        let after = file.metadata().at("fstat", path)?;
        check_unchanged(source, &after)?;
        if let Some(progress) = self.progress {
            progress.advance(source.size);
        }
        Ok(())
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
