//! A source file as the walk saw it: opened safely by its name in the walked directory, and
//! checked against what the walk saw, so that a file that changed while it was archived is
//! reported as changed rather than archived torn.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Context, Error, Result};
use crate::export::walk::{Inode, type_name};

/// A regular file to be archived, with what the walk saw of it so that a change while it is
/// being archived can be detected.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    /// The full path, for messages; the file is opened by its name in `dir`.
    pub path: PathBuf,
    /// The directory that holds the file, as the walk opened it.
    pub dir: Arc<OwnedFd>,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub mtime: (i64, i64),
}

/// Opens a source file by its name in the directory the walk opened, never following a
/// symlink. O_NONBLOCK keeps the open from waiting forever on a source that was swapped for a
/// fifo (a regular file ignores the flag); what was opened is checked by [`check_unchanged`].
pub(crate) fn open(source: &SourceFile) -> Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let name = source.path.file_name().expect("a walked path ends in the entry's name");
    // O_NOATIME keeps archiving from dirtying inodes; only the owner (or root) may ask for it.
    let opened = match rustix::fs::openat(&*source.dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rustix::fs::openat(&*source.dir, name, flags, Mode::empty()),
        other => other,
    };
    opened.map(File::from).map_err(|e| {
        // A failed open is most often the entry having become a symlink, socket or other.
        let now = rustix::fs::statat(&*source.dir, name, AtFlags::SYMLINK_NOFOLLOW);
        match now.ok().and_then(|st| changes(source, &Inode::from_stat(&st))) {
            Some(changed) => changed_error(source, &changed),
            None => Error::io("open", &source.path, e),
        }
    })
}

/// Fails when the opened `file` is no longer what the walk saw: another inode or file type, or
/// another size or mtime (one fstat after all reads catches a change before or during them).
pub(crate) fn check_unchanged(source: &SourceFile, file: &File) -> Result<()> {
    let now = Inode::from_stat(&rustix::fs::fstat(file).at("fstat", &source.path)?);
    match changes(source, &now) {
        Some(changed) => Err(changed_error(source, &changed)),
        None => Ok(()),
    }
}

/// The error of a failed read of `source`: the change that caused it, if the file changed.
pub(crate) fn error_of(source: &SourceFile, file: &File, error: Error) -> Error {
    check_unchanged(source, file).err().unwrap_or(error)
}

/// What changed since the walk, e.g. "size 4096 -> 8192, mtime 1.000000000 -> 2.000000000".
fn changes(source: &SourceFile, now: &Inode) -> Option<String> {
    let mut changed = Vec::new();
    if now.file_type != FileType::RegularFile {
        changed.push(format!("type regular file -> {}", type_name(now.file_type)));
    }
    if (now.dev, now.ino) != (source.dev, source.ino) {
        changed.push(format!("inode {}:{} -> {}:{}", source.dev, source.ino, now.dev, now.ino));
    }
    if now.size != source.size {
        changed.push(format!("size {} -> {}", source.size, now.size));
    }
    if now.mtime != source.mtime {
        let (was, is) = (source.mtime, now.mtime);
        changed.push(format!("mtime {}.{:09} -> {}.{:09}", was.0, was.1, is.0, is.1));
    }
    (!changed.is_empty()).then(|| changed.join(", "))
}

fn changed_error(source: &SourceFile, changed: &str) -> Error {
    Error::changed(&source.path, changed)
}

/// Names the side of a failed transfer: a short read is the source's fault, the rest is
/// attributed to writing the archive.
pub(crate) fn transfer_error(e: std::io::Error, source: &Path, target: &Path) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::changed(source, e.to_string())
    } else {
        Error::Copy { from: source.to_path_buf(), to: target.to_path_buf(), source: e }
    }
}
