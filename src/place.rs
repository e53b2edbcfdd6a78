//! The placer: writes a planned archive into a file at the planned offsets, moving file data
//! with the data mover (so it is shared where the filesystem allows).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Context, Error, Result};
use crate::layout::{Plan, encode_headers};
use crate::member::{Body, SourceFile};
use crate::mover::{End, Mover, Tail, write_all_at};

/// The archive being written.
pub struct Target<'a> {
    pub file: &'a File,
    pub path: &'a Path,
    pub dev: u64,
    /// Clone granularity of the archive's filesystem.
    pub block: u64,
}

/// Writes `plan` with its start at `base` in the target. Writes go strictly forward, so every
/// file's data is appended at the target's end of file and can be cloned whole, tail included.
pub fn place(plan: &Plan, base: u64, target: &Target<'_>, mover: &mut Mover) -> Result<()> {
    let fd = target.file.as_fd();
    for placed in &plan.entries {
        let headers = encode_headers(placed);
        write_all_at(fd, &headers, base + placed.header_offset).at("write", target.path)?;
        let data_offset = base + placed.data_offset;
        match &placed.member.body {
            Body::File(source) => place_file(source, data_offset, target, mover)?,
            Body::Bytes(bytes) => write_all_at(fd, bytes, data_offset).at("write", target.path)?,
            Body::Archive(inner) => place(inner, data_offset, target, mover)?,
            Body::None | Body::Members(_) => {}
        }
    }
    let end_blocks = [0u8; 1024];
    write_all_at(fd, &end_blocks, base + plan.len - 1024).at("write", target.path)
}

fn place_file(source: &SourceFile, offset: u64, target: &Target<'_>, mover: &mut Mover) -> Result<()> {
    let path = source.path.as_path();
    let file = open_source(path)?;
    let before = file.metadata().at("fstat", path)?;
    check_unchanged(source, &before)?;
    let src = End { fd: file.as_fd(), dev: before.dev(), offset: 0 };
    let dst = End { fd: target.file.as_fd(), dev: target.dev, offset };
    mover
        .transfer(src, dst, source.size, target.block, Tail::AtEof)
        .map_err(|e| transfer_error(e, path, target.path))?;
    let after = file.metadata().at("fstat", path)?;
    check_unchanged(source, &after)
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
