//! Creating entries atomically: a regular file is written unnamed (O_TMPFILE, or under a
//! hidden temporary name where the filesystem has none) and a symlink, device or fifo is
//! made under a temporary name, each given its final name only when complete, so an
//! interrupted import leaves no half-made entry under its final name (in a private
//! destination, discarded unless the import completes, a file is written under its own name
//! instead). An existing name is a conflict, or with --overwrite is replaced by rename, never
//! written through. Hard links, directories, and the removal of temporary names a killed run
//! left behind live here too. Separate because this is the one place that decides what may
//! replace what.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use rustix::process::Uid;

use crate::error::{Context, Error, Result};
use crate::import::beneath::{Blocked, Slot};
use crate::import::extract::{Extractor, Filesystem};
use crate::import::layer::LayerMode;
use crate::import::tree::{CREATED, SCANNED};
use crate::sys::temp;
use crate::tar::meta::Kind;
use crate::tar::reader::{Entry, Reader};

/// statfs(2)'s f_type of filesystems other hosts may share (NFS, SMB, CIFS, Ceph, FUSE, AFS,
/// 9P, GFS2, OCFS2): there a temporary name's process ID says nothing about whether its
/// process is still alive.
const SHARED_FS_MAGICS: [i64; 10] = [
    0x6969,
    0x517b,
    0xff53_4d42,
    0xfe53_4d42,
    0x00c3_6400,
    0x6573_5546,
    0x5346_414f,
    0x0102_1997,
    0x0116_1970,
    0x7461_636f,
];

/// A temporary name whose process is gone is removed only when it is at least this old, in
/// case a process of the same ID in another PID namespace is still using it.
const STALE_AFTER_SECONDS: i64 = 60;

/// The file type a member creates, for checking that a name still is what was created.
pub(crate) fn node_type(kind: &Kind) -> FileType {
    match kind {
        Kind::Symlink(_) => FileType::Symlink,
        Kind::CharDevice => FileType::CharacterDevice,
        Kind::BlockDevice => FileType::BlockDevice,
        Kind::Fifo => FileType::Fifo,
        Kind::Regular | Kind::HardLink(_) => FileType::RegularFile,
        Kind::Directory => FileType::Directory,
    }
}

/// The file a regular member is written into: unnamed, or under a temporary name where the
/// filesystem has no O_TMPFILE, until it is complete; or, in a private destination, under
/// its own name from the start.
struct NewFile {
    file: File,
    temp: Option<Vec<u8>>,
    named: bool,
}

/// What a member is created from: its header, and the xattrs to give it (a layer's are
/// filtered).
#[derive(Clone, Copy)]
pub(crate) struct Member<'a> {
    pub(crate) entry: &'a Entry,
    pub(crate) xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

impl Extractor {
    /// Creates `member`, of type `kind`, at `slot`, in the directory of tree node
    /// `parent_node`. `reader` must be positioned at its data.
    pub(crate) fn create(
        &mut self,
        kind: &Kind,
        slot: Slot<'_>,
        parent_node: u32,
        member: Member<'_>,
        reader: &mut Reader<'_>,
    ) -> Result<()> {
        let entry = member.entry;
        let result = match kind {
            Kind::Regular => self.create_file(slot, member, reader),
            Kind::Directory => self.create_dir(slot, parent_node, member),
            Kind::Symlink(target) => self
                .create_node(slot, member, |dir, n| rustix::fs::symlinkat(OsStr::from_bytes(target), dir, n)),
            Kind::HardLink(target) => self.create_hardlink(slot, entry, target),
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                let file_type = node_type(kind);
                let dev = rustix::fs::makedev(entry.meta.dev_major, entry.meta.dev_minor);
                self.create_node(slot, member, |dir, n| {
                    rustix::fs::mknodat(dir, n, file_type, Mode::from_bits_truncate(0o600), dev)
                })
            }
        };
        match result {
            Err(Error::Io { source, .. })
                if source.raw_os_error() == Some(Errno::PERM.raw_os_error())
                    && matches!(kind, Kind::CharDevice | Kind::BlockDevice)
                    && !self.privileged() =>
            {
                log::warn!("{}: cannot create a device node without privilege; skipped", entry.name_lossy());
                self.stats.skipped.push(entry.name_lossy());
                Ok(())
            }
            other => other,
        }
    }

    fn create_file(&mut self, slot: Slot<'_>, member: Member<'_>, reader: &mut Reader<'_>) -> Result<()> {
        let new = self.new_file(slot, member.entry)?;
        let result = self.write_file(slot, member, reader, &new);
        if let Some(temp) = &new.temp {
            // Still there after a conflict or a failure.
            let _ = rustix::fs::unlinkat(slot.dir, OsStr::from_bytes(temp), AtFlags::empty());
        }
        if new.named && result.is_err() {
            // Made by this import a moment ago, in a directory no one else can reach.
            let _ = rustix::fs::unlinkat(slot.dir, OsStr::from_bytes(slot.name), AtFlags::empty());
        }
        result
    }

    fn new_file(&self, slot: Slot<'_>, entry: &Entry) -> Result<NewFile> {
        // Usually the final mode already (the umask permitting), so no chmod is needed.
        let mode = Mode::from_bits_truncate(entry.meta.mode & 0o777);
        if self.options.private {
            let flags = OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::RDWR | OFlags::CLOEXEC;
            match rustix::fs::openat(slot.dir, OsStr::from_bytes(slot.name), flags, mode) {
                Ok(fd) => return Ok(NewFile { file: File::from(fd), temp: None, named: true }),
                // The name is taken (an archive may hold a name twice): written unnamed, it
                // is then a conflict or, with --overwrite, replaces what is there.
                Err(Errno::EXIST) => {}
                Err(e) => return Err(Error::io("create", self.display(slot.rel), e)),
            }
        }
        match rustix::fs::openat(slot.dir, ".", OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC, mode) {
            Ok(fd) => Ok(NewFile { file: File::from(fd), temp: None, named: false }),
            // No O_TMPFILE here (NFS, FUSE, older kernels): a hidden temporary name instead.
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {
                let temp = temp::name_for(slot.name);
                let flags = OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::RDWR | OFlags::CLOEXEC;
                match rustix::fs::openat(
                    slot.dir,
                    OsStr::from_bytes(&temp),
                    flags,
                    Mode::from_bits_truncate(0o600),
                ) {
                    Ok(fd) => Ok(NewFile { file: File::from(fd), temp: Some(temp), named: false }),
                    Err(e) => Err(Error::io("create", self.display(slot.rel), e)),
                }
            }
            Err(e) => Err(Error::io("open O_TMPFILE for", self.display(slot.rel), e)),
        }
    }

    fn write_file(
        &mut self,
        slot: Slot<'_>,
        member: Member<'_>,
        reader: &mut Reader<'_>,
        new: &NewFile,
    ) -> Result<()> {
        let entry = member.entry;
        let beneath = &self.beneath;
        self.data.fill(&new.file, entry, reader, || beneath.display(slot.rel))?;
        let moved = self.data.moved();
        self.stats.bytes_cloned = moved.bytes_cloned;
        self.stats.bytes_copied = moved.bytes_copied;
        self.set_meta_fd(new.file.as_fd(), &entry.meta, member.xattrs, slot.rel)?;
        self.stats.files += 1;
        self.stats.bytes += entry.sparse.as_ref().map_or(entry.size, |map| map.real_size);
        if let Some(progress) = &self.progress {
            progress.advance(entry.size);
        }
        self.link_file(slot, new)
    }

    /// Gives the complete new file its name.
    fn link_file(&mut self, slot: Slot<'_>, new: &NewFile) -> Result<()> {
        if new.named {
            return Ok(());
        }
        if let Some(temp) = &new.temp {
            let flags = if self.options.overwrite { RenameFlags::empty() } else { RenameFlags::NOREPLACE };
            return self.place(slot, |dir, n| {
                rustix::fs::renameat_with(dir, OsStr::from_bytes(temp), dir, n, flags)
            });
        }
        // Linking an unnamed file by descriptor needs CAP_DAC_READ_SEARCH; without it, go
        // through its /proc magic link.
        let proc_path = format!("/proc/self/fd/{}", new.file.as_raw_fd());
        let by_fd = self.privileged();
        self.place(slot, |dir, n| {
            if by_fd {
                rustix::fs::linkat(&new.file, "", dir, n, AtFlags::EMPTY_PATH)
            } else {
                rustix::fs::linkat(rustix::fs::CWD, proc_path.as_str(), dir, n, AtFlags::SYMLINK_FOLLOW)
            }
        })
    }

    fn create_dir(&mut self, slot: Slot<'_>, parent_node: u32, member: Member<'_>) -> Result<()> {
        let name_os = OsStr::from_bytes(slot.name);
        let mut flags = 0;
        match rustix::fs::mkdirat(slot.dir, name_os, Mode::from_bits_truncate(0o700)) {
            Ok(()) => flags = CREATED | SCANNED,
            Err(Errno::EXIST) => {
                let stat = rustix::fs::statat(slot.dir, name_os, AtFlags::SYMLINK_NOFOLLOW)
                    .at_with("lstat", || self.display(slot.rel))?;
                let file_type = FileType::from_raw_mode(stat.st_mode);
                if file_type != FileType::Directory {
                    if !self.options.overwrite {
                        self.conflict(slot.rel);
                        return Ok(());
                    }
                    self.replace_by_dir(slot)?;
                    flags = CREATED | SCANNED;
                    let was_whiteout = file_type == FileType::CharacterDevice && stat.st_rdev == 0;
                    if let (Some(LayerMode::Overlay { opaque_xattr }), true) = (self.layer, was_whiteout) {
                        // The layer deletes the lower directory and has a new one: the new one
                        // hides what the lower one held.
                        self.set_opaque(slot, opaque_xattr)?;
                    }
                }
            }
            Err(e) => return Err(Error::io("mkdir", self.display(slot.rel), e)),
        }
        let node = self.tree.child(parent_node, slot.name, flags);
        self.defer(node, &member.entry.meta);
        if !member.xattrs.is_empty() {
            let dir = rustix::fs::openat(
                slot.dir,
                name_os,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .at_with("open", || self.display(slot.rel))?;
            self.set_xattrs_fd(dir.as_fd(), member.xattrs, slot.rel);
        }
        Ok(())
    }

    /// Replaces the non-directory at `slot` by a new empty directory (--overwrite), as GNU
    /// tar does. The two are exchanged, so the name never stops existing, then the old entry,
    /// now under the temporary name, is removed.
    fn replace_by_dir(&mut self, slot: Slot<'_>) -> Result<()> {
        let Slot { dir: parent, name, rel } = slot;
        let temp = temp::name_for(name);
        let temp_os = OsStr::from_bytes(&temp);
        let name_os = OsStr::from_bytes(name);
        rustix::fs::mkdirat(parent, temp_os, Mode::from_bits_truncate(0o700))
            .at_with("mkdir", || self.display(rel))?;
        let result = match rustix::fs::renameat_with(parent, temp_os, parent, name_os, RenameFlags::EXCHANGE)
        {
            Ok(()) => rustix::fs::unlinkat(parent, temp_os, AtFlags::empty())
                .at_with("unlink", || self.display(rel)),
            // A filesystem without RENAME_EXCHANGE: the name is missing for a moment.
            Err(Errno::INVAL) => rustix::fs::unlinkat(parent, name_os, AtFlags::empty())
                .and_then(|()| {
                    rustix::fs::renameat_with(parent, temp_os, parent, name_os, RenameFlags::NOREPLACE)
                })
                .at_with("replace by a directory", || self.display(rel)),
            Err(e) => Err(Error::io("rename", self.display(rel), e)),
        };
        if result.is_err() {
            // Whichever the temporary name holds now: the new empty directory or the old entry.
            if rustix::fs::unlinkat(parent, temp_os, AtFlags::REMOVEDIR).is_err() {
                let _ = rustix::fs::unlinkat(parent, temp_os, AtFlags::empty());
            }
        }
        result
    }

    fn create_hardlink(&mut self, slot: Slot<'_>, entry: &Entry, target: &[u8]) -> Result<()> {
        let target_rel = match self.beneath.rel_path(target) {
            Ok(t) => t,
            Err(reason) => return self.refuse(entry, format!("hard link target: {reason}")),
        };
        let Some(target_name) = target_rel.name else {
            return self.refuse(entry, "hard link to the destination itself".into());
        };
        let missing =
            || format!("hard link target {} is not in the destination", String::from_utf8_lossy(target));
        let target_parent = match self.enter(&target_rel.parent, false)? {
            Ok(dir) => dir,
            Err(Blocked::Missing) => return self.refuse(entry, missing()),
            Err(Blocked::Refused(reason)) => {
                return self.refuse(entry, format!("hard link target: {reason}"));
            }
        };
        // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never what it points to.
        let linked = self.place(slot, |dir, n| {
            rustix::fs::linkat(&*target_parent, OsStr::from_bytes(target_name), dir, n, AtFlags::empty())
        });
        match linked {
            // The target's member is missing, or was itself refused or skipped: this one
            // member cannot be restored, the rest of the archive still can.
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => self.refuse(entry, missing()),
            other => other,
        }
    }

    /// Creates a symlink, device or fifo under a temporary name, applies its metadata there,
    /// then renames it into place, so what appears under the final name is complete.
    fn create_node(
        &mut self,
        slot: Slot<'_>,
        member: Member<'_>,
        create: impl Fn(BorrowedFd<'_>, &OsStr) -> std::result::Result<(), Errno>,
    ) -> Result<()> {
        let temp = temp::name_for(slot.name);
        create(slot.dir.as_fd(), OsStr::from_bytes(&temp)).at_with("create", || self.display(slot.rel))?;
        let result = self.set_node_meta(slot.dir, &temp, member, slot.rel);
        let flags = if self.options.overwrite { RenameFlags::empty() } else { RenameFlags::NOREPLACE };
        let placed = result.and_then(|()| {
            self.place(slot, |dir, n| rustix::fs::renameat_with(dir, OsStr::from_bytes(&temp), dir, n, flags))
        });
        // Still there after a conflict or a failure.
        let _ = rustix::fs::unlinkat(slot.dir, OsStr::from_bytes(&temp), AtFlags::empty());
        placed
    }

    /// Gives a complete new entry its final name with `link`, which fails with EEXIST when the
    /// name is taken. An existing entry is replaced only with --overwrite, and then atomically
    /// by rename: nothing existing is written through or truncated.
    fn place(
        &mut self,
        slot: Slot<'_>,
        link: impl Fn(BorrowedFd<'_>, &OsStr) -> std::result::Result<(), Errno>,
    ) -> Result<()> {
        match link(slot.dir.as_fd(), OsStr::from_bytes(slot.name)) {
            Ok(()) => Ok(()),
            // rename(2) of a symlink, device or fifo onto a directory fails with EISDIR.
            Err(Errno::EXIST | Errno::ISDIR) if self.options.overwrite => self.replace(slot, link),
            Err(Errno::EXIST) => {
                self.conflict(slot.rel);
                Ok(())
            }
            Err(e) => Err(Error::io("create", self.display(slot.rel), e)),
        }
    }

    /// `place` with --overwrite, the name being taken.
    fn replace(
        &mut self,
        slot: Slot<'_>,
        link: impl Fn(BorrowedFd<'_>, &OsStr) -> std::result::Result<(), Errno>,
    ) -> Result<()> {
        let Slot { dir: parent, name, rel } = slot;
        let stat = rustix::fs::statat(parent, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)
            .at_with("lstat", || self.display(rel))?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            // Only an empty directory may give way.
            return match rustix::fs::unlinkat(parent, OsStr::from_bytes(name), AtFlags::REMOVEDIR) {
                Ok(()) => {
                    self.beneath.forget_chain();
                    link(parent.as_fd(), OsStr::from_bytes(name)).at_with("create", || self.display(rel))
                }
                Err(Errno::NOTEMPTY | Errno::EXIST) => {
                    self.conflict(rel);
                    Ok(())
                }
                Err(e) => Err(Error::io("rmdir", self.display(rel), e)),
            };
        }
        let temp = temp::name_for(name);
        let temp_os = OsStr::from_bytes(&temp);
        link(parent.as_fd(), temp_os).at_with("create", || self.display(rel))?;
        let renamed = rustix::fs::renameat(parent, temp_os, parent, OsStr::from_bytes(name))
            .at_with("rename", || self.display(rel));
        // rename(2) of one name of an inode onto another name of it does nothing and
        // succeeds (a hard link to what the name already is): the temporary name is still
        // there then, as after a failed rename.
        let _ = rustix::fs::unlinkat(parent, temp_os, AtFlags::empty());
        renamed
    }

    pub(crate) fn conflict(&mut self, rel: &[u8]) {
        let path = self.display(rel);
        log::error!("{}: already exists; left untouched (use --overwrite to replace)", path.display());
        self.stats.conflicts.push(path);
    }
}

/// Removes temporary names (`.NAME.ckpt-PID-N.tmp`) that an import or export killed before
/// it could remove them left in a directory: those of a process that no longer exists,
/// untouched for a minute, on a filesystem of this host only, and, unless running as root,
/// owned by this user.
pub(crate) struct StaleTemps {
    dest: PathBuf,
    /// DEST is on a filesystem of this host only, so stale temporary names can be recognised.
    local_fs: bool,
    euid: Uid,
}

impl StaleTemps {
    /// For directories below `dest`, on filesystem `fs`.
    pub(crate) fn new(dest: &Path, fs: Filesystem, euid: Uid) -> StaleTemps {
        let local_fs = !SHARED_FS_MAGICS.contains(&fs.magic);
        StaleTemps { dest: dest.to_path_buf(), local_fs, euid }
    }

    /// Removes the stale temporary names in `dir`, `rel` below the destination.
    pub(crate) fn remove(&self, dir: BorrowedFd<'_>, rel: &[u8]) {
        if !self.local_fs {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for name in gone_writers(dir) {
            let name_os = OsStr::from_bytes(&name);
            let Ok(stat) = rustix::fs::statat(dir, name_os, AtFlags::SYMLINK_NOFOLLOW) else { continue };
            if stat.st_mtime > now - STALE_AFTER_SECONDS
                || (!self.euid.is_root() && stat.st_uid != self.euid.as_raw())
            {
                continue;
            }
            let flags = if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            let path = self.dest.join(OsStr::from_bytes(rel)).join(name_os);
            match rustix::fs::unlinkat(dir, name_os, flags) {
                Ok(()) => log::info!("{}: removed a stale temporary name", path.display()),
                Err(e) => log::warn!(
                    "{}: cannot remove a stale temporary name: {}",
                    path.display(),
                    std::io::Error::from(e)
                ),
            }
        }
    }
}

/// The temporary names in `dir` whose process no longer exists.
fn gone_writers(dir: BorrowedFd<'_>) -> Vec<Vec<u8>> {
    let Ok(fd) =
        rustix::fs::openat(dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
    else {
        return Vec::new();
    };
    let Ok(entries) = rustix::fs::Dir::read_from(&fd) else { return Vec::new() };
    let mut stale = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else { break };
        let name = entry.file_name().to_bytes();
        if temp::pid_of(name).is_some_and(temp::writer_gone) {
            stale.push(name.to_vec());
        }
    }
    stale
}
