//! Metadata of restored entries: owner, then mode (set-user-ID and set-group-ID only where
//! the owner was restored), then xattrs, then times, through a descriptor of the new inode
//! and never through a name. Directories get theirs last, deepest first, once nothing more
//! is created in them (which would change their times, and a read-only mode would forbid).
//! Separate because which bits an inode may get, and when, is its own policy.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, UTIME_OMIT};
use rustix::io::Errno;

use crate::error::{Context, Error, Result};
use crate::import::create::{Member, node_type};
use crate::import::extract::Extractor;
use crate::import::stats::ImportStats;
use crate::import::tree::{DirMeta, HAS_META};
use crate::tar::meta::Meta;

impl Extractor {
    /// After chown failed: says the owner is not restored (the caller then drops set-user-ID
    /// and set-group-ID bits, which would otherwise apply to the wrong owner). Without root
    /// that is expected and warned about once; as root it is a failure of this entry.
    fn owner_not_restored(&mut self, rel: &[u8], e: Errno) -> Result<bool> {
        if e == Errno::PERM && !self.privileged() {
            if !self.warned_owner {
                log::warn!(
                    "not running as root: file owners, and set-user-ID and set-group-ID bits, are not restored"
                );
                self.warned_owner = true;
            }
            return Ok(false);
        }
        let error = Error::io("chown", self.display(rel), e);
        log::error!("{error}; set-user-ID and set-group-ID bits not restored");
        self.stats.failed.push(String::from_utf8_lossy(rel).into_owned());
        Ok(false)
    }

    /// Owner, then mode (chown clears setuid), then xattrs (chown clears capabilities), then
    /// times. An owner or mode the new inode already has is not set again: on Btrfs each chown
    /// and chmod is a transaction, even one that changes nothing, and an fstat is not.
    pub(crate) fn set_meta_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        rel: &[u8],
    ) -> Result<()> {
        let now = rustix::fs::fstat(fd).at_with("fstat", || self.display(rel))?;
        let owner_kept = u64::from(now.st_uid) == meta.uid && u64::from(now.st_gid) == meta.gid;
        let restored = owner_kept
            || match rustix::fs::fchown(fd, Some(uid(meta.uid)), Some(gid(meta.gid))) {
                Ok(()) => true,
                Err(e) => self.owner_not_restored(rel, e)?,
            };
        let mode = restored_mode(meta, restored);
        if !owner_kept || now.st_mode & 0o7777 != mode.bits() {
            rustix::fs::fchmod(fd, mode).at_with("chmod", || self.display(rel))?;
        }
        self.set_xattrs_fd(fd, xattrs, rel);
        rustix::fs::futimens(fd, &timestamps(meta)).at_with("utimensat", || self.display(rel))
    }

    pub(crate) fn set_xattrs_fd(&self, fd: BorrowedFd<'_>, xattrs: &[(Vec<u8>, Vec<u8>)], rel: &[u8]) {
        for (name, value) in xattrs {
            if let Err(e) =
                rustix::fs::fsetxattr(fd, OsStr::from_bytes(name), value, rustix::fs::XattrFlags::empty())
            {
                self.xattr_failed(rel, name, e);
            }
        }
    }

    fn xattr_failed(&self, rel: &[u8], name: &[u8], e: Errno) {
        log::warn!(
            "{}: cannot set extended attribute {}: {}",
            self.display(rel).display(),
            String::from_utf8_lossy(name),
            std::io::Error::from(e)
        );
    }

    /// Owner, mode, xattrs and times of the node just created as `temp`, all through one
    /// O_PATH descriptor of it: in a directory others can write to, the name may be swapped
    /// for another user's symlink or file at any moment, and nothing here follows a name.
    /// chmod and setxattr go through the descriptor's /proc magic link, which leads to the
    /// opened inode itself (a symlink's too); a symlink has no mode on Linux.
    pub(crate) fn set_node_meta(
        &mut self,
        parent: &OwnedFd,
        temp: &[u8],
        member: Member<'_>,
        rel: &[u8],
    ) -> Result<()> {
        let meta = &member.entry.meta;
        let fd = rustix::fs::openat(
            parent,
            OsStr::from_bytes(temp),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .at_with("open", || self.display(rel))?;
        let stat = rustix::fs::fstat(&fd).at_with("fstat", || self.display(rel))?;
        let kind = member.entry.kind.as_ref().map_or(FileType::Unknown, node_type);
        if FileType::from_raw_mode(stat.st_mode) != kind || stat.st_uid != self.euid.as_raw() {
            return Err(Error::refused(self.display(rel), "its temporary name was replaced by another user"));
        }
        let owner_kept = u64::from(stat.st_uid) == meta.uid && u64::from(stat.st_gid) == meta.gid;
        let restored = owner_kept
            || match rustix::fs::chownat(
                &fd,
                "",
                Some(uid(meta.uid)),
                Some(gid(meta.gid)),
                AtFlags::EMPTY_PATH,
            ) {
                Ok(()) => true,
                Err(e) => self.owner_not_restored(rel, e)?,
            };
        let magic = format!("/proc/self/fd/{}", fd.as_raw_fd());
        if kind != FileType::Symlink {
            rustix::fs::chmodat(
                rustix::fs::CWD,
                magic.as_str(),
                restored_mode(meta, restored),
                AtFlags::empty(),
            )
            .at_with("chmod", || self.display(rel))?;
        }
        for (xname, value) in member.xattrs {
            if let Err(e) = rustix::fs::setxattr(
                magic.as_str(),
                OsStr::from_bytes(xname),
                value,
                rustix::fs::XattrFlags::empty(),
            ) {
                self.xattr_failed(rel, xname, e);
            }
        }
        rustix::fs::utimensat(&fd, "", &timestamps(meta), AtFlags::EMPTY_PATH)
            .at_with("utimensat", || self.display(rel))
    }

    /// Records the metadata a directory gets at the end; a later header for the same
    /// directory replaces it.
    pub(crate) fn defer(&mut self, node: u32, meta: &Meta) {
        let node = self.tree.node_mut(node);
        node.flags |= HAS_META;
        node.meta = DirMeta::from_meta(meta);
    }

    /// Whether the archive gave the destination directory itself metadata (its `./`).
    pub(crate) fn root_has_meta(&self) -> bool {
        self.tree.node(0).flags & HAS_META != 0
    }

    /// Applies directory owners, modes and times, deepest first whatever the archive's
    /// order, now that nothing more will be created inside them. A directory that fails is
    /// reported and counted in `stats.failed`; the others are still done.
    pub(crate) fn finish(mut self) -> Result<ImportStats> {
        self.beneath.forget_chain();
        for node in self.tree.deferred() {
            if let Err(e) = self.apply_dir_meta(node) {
                log::error!("{e}; directory metadata not restored");
                let rel = self.tree.path_names(node).join(&b'/');
                self.stats.failed.push(String::from_utf8_lossy(&rel).into_owned());
            }
        }
        Ok(self.stats)
    }

    fn apply_dir_meta(&mut self, node: u32) -> Result<()> {
        let meta = self.tree.node(node).meta.meta();
        if node == 0 {
            let root = self.beneath.root();
            return self.set_meta_fd(root.as_fd(), &meta, &[], b"");
        }
        let names = self.tree.path_names(node);
        let parts: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
        let Some((name, parents)) = parts.split_last() else { return Ok(()) };
        // Gone or replaced by a later member (reported then): nothing to apply.
        let Ok(parent) = self.enter(parents, false)? else { return Ok(()) };
        let rel = parts.join(&b'/');
        let fd = match rustix::fs::openat(
            &*parent,
            OsStr::from_bytes(name),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::NOTDIR | Errno::NOENT) => return Ok(()),
            Err(e) => return Err(Error::io("open", self.display(&rel), e)),
        };
        self.set_meta_fd(fd.as_fd(), &meta, &[], &rel)
    }
}

/// The mode to set: set-user-ID and set-group-ID only on an inode whose owner was restored,
/// as they would otherwise grant the importing user's (or root's) identity.
fn restored_mode(meta: &Meta, owner_restored: bool) -> Mode {
    let mode = if owner_restored { meta.mode } else { meta.mode & !0o6000 };
    Mode::from_bits_truncate(mode & 0o7777)
}

fn timestamps(meta: &Meta) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: UTIME_OMIT },
        last_modification: Timespec { tv_sec: meta.mtime, tv_nsec: i64::from(meta.mtime_nsec) as _ },
    }
}

fn uid(id: u64) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(id as u32)
}

fn gid(id: u64) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(id as u32)
}
