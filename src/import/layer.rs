//! Overlay deletions, when the destination is a container layer: OCI whiteouts (`.wh.NAME`)
//! and opaque markers (`.wh..wh..opq`) in the archive, podman's `deleted.files`, a replaced
//! directory made opaque, and overlay's private xattrs, which are never written. In an
//! overlay upper dir deletions become whiteouts (char 0:0) and opaque xattrs; in a plain
//! directory the deleted paths are removed. Separate because only a layer has deletions, and
//! what a deletion means depends on what the layer is restored into.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::container::overlay::{self, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::error::{Context, Error, Result};
use crate::import::beneath::{Blocked, RelPath, Slot};
use crate::import::extract::{Extractor, is_fatal};
use crate::import::tree::{CREATED, HAS_META};
use crate::tar::reader::Entry;

/// How deletions in a layer are applied to the directory a layer is restored into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LayerMode {
    /// The directory is an overlay upper dir: deletions become whiteouts (char 0:0) and opaque
    /// markers set this xattr to "y".
    Overlay { opaque_xattr: &'static [u8] },
    /// A plain directory: deleted paths are removed.
    Plain,
}

/// Overlay's own xattrs describe another host's inodes (origin, impure, uuid), or redirect,
/// copy up or whiteout lower entries: none belongs in a new layer. An opaque marker ("y") is
/// kept, under the xattr name this layer's overlay uses.
pub(crate) fn layer_xattrs(xattrs: &[(Vec<u8>, Vec<u8>)], mode: LayerMode) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut kept = Vec::new();
    for (name, value) in xattrs {
        let key = overlay::private_xattr_key(name);
        match (key, mode) {
            (None, _) => kept.push((name.clone(), value.clone())),
            (Some(b"opaque"), LayerMode::Overlay { opaque_xattr }) if value == b"y" => {
                kept.push((opaque_xattr.to_vec(), value.clone()));
            }
            (Some(_), _) => {}
        }
    }
    kept
}

impl Extractor {
    /// Applies `entry` if it is an OCI opaque marker or whiteout, at `rel` in `parent` (tree
    /// node `parent_node`); `None` for any other member, which is created as usual.
    pub(crate) fn apply_marker(
        &mut self,
        mode: LayerMode,
        parent: &OwnedFd,
        parent_node: u32,
        rel: &RelPath<'_>,
        entry: &Entry,
    ) -> Option<Result<()>> {
        let name = rel.name?;
        if name == OPAQUE_MARKER {
            return Some(self.make_opaque(mode, parent, rel));
        }
        let deleted = name.strip_prefix(WHITEOUT_PREFIX)?;
        // `.wh...` would delete the parent's parent (outside the destination at the top),
        // `.wh..` the parent itself.
        if matches!(deleted, b"" | b"." | b"..") {
            return Some(self.refuse(entry, "whiteout of '.' or '..'".to_string()));
        }
        let target = RelPath { parent: rel.parent.clone(), name: Some(deleted) };
        let joined = target.joined();
        Some(self.delete(mode, Slot { dir: parent, name: deleted, rel: &joined }, parent_node))
    }

    /// Applies a layer's deleted paths (`/etc/old.conf`, as in podman's deleted.files).
    pub(crate) fn apply_deletions(&mut self, mode: LayerMode, paths: &[String]) -> Result<()> {
        for path in paths {
            if let Err(e) = self.apply_deletion(mode, path)? {
                if is_fatal(&e, Path::new("")) {
                    return Err(e);
                }
                log::error!("deleted.files: {path}: {e}; not applied");
                self.stats.failed.push(path.clone());
            }
        }
        Ok(())
    }

    /// Applies one deleted path; a path that is refused is reported here. The outer error is
    /// one entering its parent directory, which ends the import; the inner one the deletion's.
    fn apply_deletion(&mut self, mode: LayerMode, path: &str) -> Result<Result<()>> {
        // Deleted paths are absolute by design: not a reason to warn.
        let rel = match self.beneath.rel_path(path.trim_start_matches('/').as_bytes()) {
            Ok(rel) => rel,
            Err(reason) => {
                self.refuse_deletion(path, &reason);
                return Ok(Ok(()));
            }
        };
        let Some(name) = rel.name else { return Ok(Ok(())) };
        // An upper dir records a deletion below a missing directory as whiteouts in new
        // directories; in a plain directory there is nothing to remove.
        let parent = match self.enter(&rel.parent, matches!(mode, LayerMode::Overlay { .. }))? {
            Ok(parent) => parent,
            Err(Blocked::Missing) => return Ok(Ok(())),
            Err(Blocked::Refused(reason)) => {
                self.refuse_deletion(path, &reason);
                return Ok(Ok(()));
            }
        };
        let parent_node = self.beneath.current_node();
        let joined = rel.joined();
        Ok(self.delete(mode, Slot { dir: &parent, name, rel: &joined }, parent_node))
    }

    fn refuse_deletion(&mut self, path: &str, reason: &str) {
        log::error!("deleted.files: {path}: {reason}; refused");
        self.stats.refused.push(path.to_string());
    }

    /// Records the deletion at `slot`, in the directory of tree node `parent_node`: a
    /// whiteout in an upper dir, a removal elsewhere. A directory this import restored under
    /// that name replaces the deleted one: it becomes opaque, so the lower layers' entries in
    /// it stay hidden.
    fn delete(&mut self, mode: LayerMode, slot: Slot<'_>, parent_node: u32) -> Result<()> {
        let Slot { dir: parent, name, rel } = slot;
        let LayerMode::Overlay { opaque_xattr } = mode else {
            self.beneath.forget_chain();
            return remove_tree(parent.as_fd(), name).at_with("remove", || self.display(rel));
        };
        let whiteout = rustix::fs::makedev(0, 0);
        let name_os = OsStr::from_bytes(name);
        match rustix::fs::mknodat(parent, name_os, FileType::CharacterDevice, Mode::empty(), whiteout) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => {
                let stat = rustix::fs::statat(parent, name_os, AtFlags::SYMLINK_NOFOLLOW)
                    .at_with("lstat", || self.display(rel))?;
                let file_type = FileType::from_raw_mode(stat.st_mode);
                let restored_here = self
                    .tree
                    .find(parent_node, name)
                    .is_some_and(|node| self.tree.node(node).flags & (HAS_META | CREATED) != 0);
                if file_type == FileType::Directory && restored_here {
                    self.set_opaque(slot, opaque_xattr)
                } else {
                    if !(file_type == FileType::CharacterDevice && stat.st_rdev == 0) {
                        self.conflict(rel);
                    }
                    Ok(())
                }
            }
            Err(e) => Err(Error::io("mknod whiteout", self.display(rel), e)),
        }
    }

    /// Makes the directory at `slot` opaque.
    pub(crate) fn set_opaque(&self, slot: Slot<'_>, opaque_xattr: &[u8]) -> Result<()> {
        let dir = rustix::fs::openat(
            slot.dir,
            OsStr::from_bytes(slot.name),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .at_with("open", || self.display(slot.rel))?;
        rustix::fs::fsetxattr(&dir, OsStr::from_bytes(opaque_xattr), b"y", rustix::fs::XattrFlags::empty())
            .at_with("setxattr overlay.opaque on", || self.display(slot.rel))
    }

    /// An OCI opaque marker: the directory hides what the lower layers have in it.
    fn make_opaque(&mut self, mode: LayerMode, dir: &OwnedFd, rel: &RelPath<'_>) -> Result<()> {
        let dir_rel = rel.parent.join(&b'/');
        match mode {
            LayerMode::Overlay { opaque_xattr } => rustix::fs::fsetxattr(
                dir,
                OsStr::from_bytes(opaque_xattr),
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .at_with("setxattr overlay.opaque on", || self.display(&dir_rel)),
            LayerMode::Plain => {
                self.beneath.forget_chain();
                remove_children(dir.as_fd()).at_with("remove the contents of", || self.display(&dir_rel))
            }
        }
    }
}

/// Up to `max` names in `dir` (not `.` and `..`).
fn list_dir_batch(dir: BorrowedFd<'_>, max: usize) -> std::result::Result<Vec<Vec<u8>>, Errno> {
    let fd =
        rustix::fs::openat(dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
            if names.len() == max {
                break;
            }
        }
    }
    Ok(names)
}

/// Removes everything in `dir`, a batch of names at a time, so memory does not grow with
/// the number of entries.
fn remove_children(dir: BorrowedFd<'_>) -> std::result::Result<(), Errno> {
    loop {
        let batch = list_dir_batch(dir, 256)?;
        if batch.is_empty() {
            return Ok(());
        }
        for child in batch {
            remove_tree(dir, &child)?;
        }
    }
}

/// Removes `name` in `parent` and, for a directory, everything in it, never following symlinks.
fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> std::result::Result<(), Errno> {
    let name_os = OsStr::from_bytes(name);
    match rustix::fs::unlinkat(parent, name_os, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => {
            let dir = rustix::fs::openat(
                parent,
                name_os,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            remove_children(dir.as_fd())?;
            rustix::fs::unlinkat(parent, name_os, AtFlags::REMOVEDIR)
        }
        Err(e) => Err(e),
    }
}
