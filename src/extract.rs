//! The extractor: restores archive members beneath a destination directory.
//!
//! Every path is resolved relative to the destination with openat2(RESOLVE_BENEATH), so no
//! member, symlink or hardlink can reach outside it. Files are written unnamed (O_TMPFILE) and
//! linked into place complete, so an interrupted import leaves no half-written file under its
//! final name and nothing existing is ever written through. Directory modes and times are
//! applied last, deepest first.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, Timespec, Timestamps, UTIME_OMIT};
use rustix::io::Errno;

use crate::error::{Context, Error, Result};
use crate::layout::round_up;
use crate::member::{Kind, Meta};
use crate::mover::{End, Mover, Tail, write_all_at};
use crate::overlay::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::progress::Progress;
use crate::reader::{Entry, Reader};

/// statfs(2)'s f_type of Btrfs.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportStats {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    pub bytes_cloned: u64,
    pub bytes_copied: u64,
    pub seconds: f64,
    /// Members that could not be restored here (unknown types, devices without privilege).
    pub skipped: Vec<String>,
    /// Existing paths left untouched because a member wanted to replace them.
    pub conflicts: Vec<PathBuf>,
    /// Members refused: they would reach outside the destination, or they are hard links
    /// to a name the destination does not have.
    pub refused: Vec<String>,
}

impl ImportStats {
    /// Adds the counts of a second extraction (a nested layer) to these.
    pub fn absorb(&mut self, other: ImportStats) {
        self.entries += other.entries;
        self.files += other.files;
        self.bytes += other.bytes;
        self.bytes_cloned += other.bytes_cloned;
        self.bytes_copied += other.bytes_copied;
        self.skipped.extend(other.skipped);
        self.conflicts.extend(other.conflicts);
        self.refused.extend(other.refused);
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ExtractOptions {
    pub share: bool,
    pub overwrite: bool,
}

/// How deletions in a layer are applied to the directory a layer is restored into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerMode {
    /// The directory is an overlay upper dir: deletions become whiteouts (char 0:0) and opaque
    /// markers set this xattr to "y".
    Overlay { opaque_xattr: &'static [u8] },
    /// A plain directory: deleted paths are removed.
    Plain,
}

struct DeferredDir {
    rel: Vec<u8>,
    meta: Meta,
}

pub struct Extractor {
    root: Rc<OwnedFd>,
    root_path: PathBuf,
    dev: u64,
    block: u64,
    /// Whether a file's partial last block is cloned whole and the file then truncated: on
    /// Btrfs the truncated block stays shared; XFS copies it on truncation and flushes the
    /// file on close, so there the tail is copied instead.
    clone_tails: bool,
    privileged: bool,
    options: ExtractOptions,
    mover: Mover,
    dirs: Vec<DeferredDir>,
    /// The parent directory of the previous member, which is usually the next one's too.
    last_parent: Option<(Vec<u8>, Rc<OwnedFd>)>,
    warned_owner: bool,
    warned_absolute: bool,
    zero_buf: Vec<u8>,
    /// Length and device of the archive file, looked up once.
    archive_info: Option<(std::os::fd::RawFd, u64, u64)>,
    layer: Option<LayerMode>,
    progress: Option<std::sync::Arc<dyn Progress>>,
    pub stats: ImportStats,
}

/// A member's path below the destination, split into its parent's components and its name.
struct RelPath<'n> {
    parent: Vec<&'n [u8]>,
    name: Option<&'n [u8]>,
}

impl RelPath<'_> {
    fn joined(&self) -> Vec<u8> {
        let mut all = self.parent.clone();
        all.extend(self.name);
        all.join(&b'/')
    }
}

impl Extractor {
    /// Prepares to restore into `dest`, creating it if needed.
    pub fn new(
        dest: &Path,
        options: ExtractOptions,
        progress: Option<std::sync::Arc<dyn Progress>>,
    ) -> Result<Extractor> {
        match std::fs::create_dir_all(dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("mkdir", dest, e)),
        }
        let root =
            rustix::fs::open(dest, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .at("open", dest)?;
        let statfs = rustix::fs::fstatfs(&root).at("fstatfs", dest)?;
        let block = statfs.f_bsize as u64;
        let dev = rustix::fs::fstat(&root).at("fstat", dest)?.st_dev;
        Ok(Extractor {
            root: Rc::new(root),
            root_path: dest.to_path_buf(),
            dev,
            block: block.max(512),
            clone_tails: statfs.f_type as i64 == BTRFS_SUPER_MAGIC,
            privileged: rustix::process::geteuid().is_root(),
            options,
            mover: Mover::new(options.share),
            dirs: Vec::new(),
            last_parent: None,
            warned_owner: false,
            warned_absolute: false,
            zero_buf: Vec::new(),
            archive_info: None,
            layer: None,
            progress,
            stats: ImportStats::default(),
        })
    }

    /// Restores a container layer: OCI `.wh.` entries and deletions are applied per `mode`.
    pub fn set_layer(&mut self, mode: LayerMode) {
        self.layer = Some(mode);
    }

    fn display(&self, rel: &[u8]) -> PathBuf {
        self.root_path.join(OsStr::from_bytes(rel))
    }

    /// Splits a member name into safe components: no `..`, leading `/` stripped.
    fn rel_path<'n>(&mut self, name: &'n [u8]) -> std::result::Result<RelPath<'n>, String> {
        if name.starts_with(b"/") && !self.warned_absolute {
            log::warn!("removing leading '/' from member names");
            self.warned_absolute = true;
        }
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in name.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err("member name contains '..'".to_string()),
                _ => parts.push(part),
            }
        }
        let name = parts.pop();
        Ok(RelPath { parent: parts, name })
    }

    /// Restores one member. `reader` must be positioned at its data.
    pub fn extract(&mut self, entry: &Entry, reader: &mut Reader<'_>) -> Result<()> {
        self.stats.entries += 1;
        let Some(kind) = &entry.kind else {
            log::warn!(
                "{}: unsupported member type {:?} skipped",
                entry.name_lossy(),
                entry.typeflag as char
            );
            self.stats.skipped.push(entry.name_lossy());
            return Ok(());
        };
        let rel = match self.rel_path(&entry.name) {
            Ok(rel) => rel,
            Err(reason) => return self.refuse(entry, reason),
        };
        let Some(name) = rel.name else {
            // The archive's top directory (`./`): the destination itself.
            if *kind == Kind::Directory {
                let root = self.root.clone();
                self.set_xattrs_fd(root.as_fd(), &entry.xattrs, b"");
                self.dirs.push(DeferredDir { rel: Vec::new(), meta: entry.meta });
            }
            return Ok(());
        };
        let parent = match self.parent_dir(&rel.parent)? {
            Ok(parent) => parent,
            Err(reason) => return self.refuse(entry, reason),
        };
        if let Some(mode) = self.layer {
            if name == OPAQUE_MARKER {
                return self.make_opaque(mode, &parent, &rel);
            }
            if let Some(deleted) = name.strip_prefix(WHITEOUT_PREFIX) {
                // `.wh...` would delete the parent's parent (outside the destination at the
                // top), `.wh..` the parent itself.
                if matches!(deleted, b"" | b"." | b"..") {
                    return self.refuse(entry, "whiteout of '.' or '..'".to_string());
                }
                let target = RelPath { parent: rel.parent.clone(), name: Some(deleted) };
                return self.delete(mode, &parent, deleted, &target.joined());
            }
        }
        let result = match kind {
            Kind::Regular => self.create_file(&parent, name, &rel.joined(), entry, reader),
            Kind::Directory => self.create_dir(&parent, name, &rel, entry),
            Kind::Symlink(target) => self.create_node(&parent, name, &rel, entry, |dir, n| {
                rustix::fs::symlinkat(OsStr::from_bytes(target), dir, n)
            }),
            Kind::HardLink(target) => self.create_hardlink(&parent, name, &rel, entry, target),
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                let file_type = match kind {
                    Kind::CharDevice => rustix::fs::FileType::CharacterDevice,
                    Kind::BlockDevice => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::Fifo,
                };
                let dev = rustix::fs::makedev(entry.meta.dev_major, entry.meta.dev_minor);
                self.create_node(&parent, name, &rel, entry, |dir, n| {
                    rustix::fs::mknodat(dir, n, file_type, Mode::from_bits_truncate(0o600), dev)
                })
            }
        };
        match result {
            Err(Error::Io { source, .. })
                if source.raw_os_error() == Some(Errno::PERM.raw_os_error())
                    && matches!(kind, Kind::CharDevice | Kind::BlockDevice)
                    && !self.privileged =>
            {
                log::warn!("{}: cannot create a device node without privilege; skipped", entry.name_lossy());
                self.stats.skipped.push(entry.name_lossy());
                Ok(())
            }
            other => other,
        }
    }

    fn refuse(&mut self, entry: &Entry, reason: String) -> Result<()> {
        log::error!("{}: {reason}; refused", entry.name_lossy());
        self.stats.refused.push(entry.name_lossy());
        Ok(())
    }

    /// Opens the directory holding a member, creating missing ancestors. The outer error is
    /// an I/O failure; the inner one a refusal (the path leaves the destination).
    fn parent_dir(&mut self, parts: &[&[u8]]) -> Result<std::result::Result<Rc<OwnedFd>, String>> {
        if parts.is_empty() {
            return Ok(Ok(self.root.clone()));
        }
        let key = parts.join(&b'/');
        if let Some((cached, fd)) = &self.last_parent
            && *cached == key
        {
            return Ok(Ok(fd.clone()));
        }
        let fd = match self.open_beneath(&key, OFlags::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                // Archives need not list every directory: create the missing ones.
                let mut dir = self.root.clone();
                for (i, part) in parts.iter().enumerate() {
                    let sub = parts[..=i].join(&b'/');
                    match rustix::fs::mkdirat(&*dir, OsStr::from_bytes(part), Mode::from_bits_truncate(0o755))
                    {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(Error::io("mkdir", self.display(&sub), e)),
                    }
                    dir = match self.open_beneath(&sub, OFlags::empty()) {
                        Ok(fd) => Rc::new(fd),
                        Err(e) => return self.parent_failure(&sub, e),
                    };
                }
                self.last_parent = Some((key, dir.clone()));
                return Ok(Ok(dir));
            }
            Err(e) => return self.parent_failure(&key, e),
        };
        let fd = Rc::new(fd);
        self.last_parent = Some((key, fd.clone()));
        Ok(Ok(fd))
    }

    fn parent_failure<T>(&self, rel: &[u8], e: Errno) -> Result<std::result::Result<T, String>> {
        match e {
            Errno::XDEV | Errno::LOOP => Ok(Err(format!(
                "{} leads outside the destination through a symlink",
                String::from_utf8_lossy(rel)
            ))),
            Errno::NOTDIR => Ok(Err(format!("{} is not a directory", String::from_utf8_lossy(rel)))),
            e => Err(Error::io("openat2", self.display(rel), e)),
        }
    }

    fn open_beneath(&self, rel: &[u8], extra: OFlags) -> std::result::Result<OwnedFd, Errno> {
        rustix::fs::openat2(
            &*self.root,
            OsStr::from_bytes(rel),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | extra,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
    }

    fn create_file(
        &mut self,
        parent: &OwnedFd,
        name: &[u8],
        rel: &[u8],
        entry: &Entry,
        reader: &mut Reader<'_>,
    ) -> Result<()> {
        let tmp = match rustix::fs::openat(
            parent,
            ".",
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            // Usually the final mode already (the umask permitting), so no chmod is needed.
            Mode::from_bits_truncate(entry.meta.mode & 0o777),
        ) {
            Ok(fd) => File::from(fd),
            Err(e) => return Err(Error::io("open O_TMPFILE for", self.display(rel), e)),
        };
        self.fill(&tmp, entry, rel, reader)?;
        self.set_meta_fd(tmp.as_fd(), &entry.meta, &entry.xattrs, rel, true)?;
        self.stats.files += 1;
        self.stats.bytes += entry.sparse.as_ref().map_or(entry.size, |map| map.real_size);
        if let Some(progress) = &self.progress {
            progress.advance(entry.size);
        }
        // Linking an unnamed file by descriptor needs CAP_DAC_READ_SEARCH; without it, go
        // through its /proc magic link.
        let proc_path = format!("/proc/self/fd/{}", tmp.as_raw_fd());
        let by_fd = self.privileged;
        self.place(parent, name, rel, |dir, n| {
            if by_fd {
                rustix::fs::linkat(&tmp, "", dir, n, AtFlags::EMPTY_PATH)
            } else {
                rustix::fs::linkat(rustix::fs::CWD, proc_path.as_str(), dir, n, AtFlags::SYMLINK_FOLLOW)
            }
        })
    }

    /// Writes the member's data into the new file.
    fn fill(&mut self, tmp: &File, entry: &Entry, rel: &[u8], reader: &mut Reader<'_>) -> Result<()> {
        let path = reader.archive_path().to_path_buf();
        // A sparse member's stored bytes are fragments of the file; a plain one is one piece.
        let whole = [(0, entry.size)];
        let (fragments, final_size) = match &entry.sparse {
            Some(map) => (map.fragments.as_slice(), map.real_size),
            None => (&whole[..], entry.size),
        };
        if let Some(archive) = reader.file() {
            let (archive_len, archive_dev) = match self.archive_info {
                Some((fd, len, dev)) if fd == archive.as_raw_fd() => (len, dev),
                _ => {
                    let meta = archive.metadata().at("fstat", &path)?;
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
                written_end = self
                    .mover
                    .transfer(src, dst, len, self.block, tail)
                    .map_err(|e| Error::Copy { from: path.clone(), to: self.display(rel), source: e })?;
                stored += len;
            }
            // A whole last block cloned, or a hole at the end, leaves the size to set; most
            // files already have it, and a truncate costs a transaction on Btrfs.
            if entry.sparse.is_some() || written_end != final_size {
                tmp.set_len(final_size).at_with("ftruncate", || self.display(rel))?;
            }
        } else {
            for &(at, len) in fragments {
                self.copy_stream(tmp, rel, at, len, reader)?;
            }
            tmp.set_len(final_size).at_with("ftruncate", || self.display(rel))?;
        }
        let stats = self.mover.stats;
        self.stats.bytes_cloned = stats.bytes_cloned;
        self.stats.bytes_copied = stats.bytes_copied;
        Ok(())
    }

    /// Copies from a stream, leaving all-zero blocks unwritten so they become holes.
    fn copy_stream(
        &mut self,
        tmp: &File,
        rel: &[u8],
        start: u64,
        size: u64,
        reader: &mut Reader<'_>,
    ) -> Result<()> {
        let path = reader.archive_path().to_path_buf();
        if self.zero_buf.is_empty() {
            self.zero_buf = vec![0; 1 << 20];
        }
        let mut offset = 0u64;
        while offset < size {
            let want = (size - offset).min(self.zero_buf.len() as u64) as usize;
            let buf = &mut self.zero_buf[..want];
            reader.read_exact(buf).map_err(|e| Error::io("read", &path, e))?;
            for (i, chunk) in buf.chunks(4096).enumerate() {
                if chunk.iter().any(|&b| b != 0) {
                    write_all_at(tmp.as_fd(), chunk, start + offset + (i * 4096) as u64)
                        // The buffer holds self mutably: name the file from root_path alone.
                        .at_with("write", || self.root_path.join(OsStr::from_bytes(rel)))?;
                }
            }
            offset += want as u64;
        }
        self.mover.stats.bytes_copied += size;
        Ok(())
    }

    fn create_dir(&mut self, parent: &OwnedFd, name: &[u8], rel: &RelPath<'_>, entry: &Entry) -> Result<()> {
        let joined = rel.joined();
        match rustix::fs::mkdirat(parent, OsStr::from_bytes(name), Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let stat = rustix::fs::statat(parent, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)
                    .at_with("lstat", || self.display(&joined))?;
                if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Directory {
                    self.conflict(&joined);
                    return Ok(());
                }
            }
            Err(e) => return Err(Error::io("mkdir", self.display(&joined), e)),
        }
        if !entry.xattrs.is_empty() {
            let dir =
                self.open_beneath(&joined, OFlags::NOFOLLOW).at_with("open", || self.display(&joined))?;
            self.set_xattrs_fd(dir.as_fd(), &entry.xattrs, &joined);
        }
        self.dirs.push(DeferredDir { rel: joined, meta: entry.meta });
        Ok(())
    }

    fn create_hardlink(
        &mut self,
        parent: &OwnedFd,
        name: &[u8],
        rel: &RelPath<'_>,
        entry: &Entry,
        target: &[u8],
    ) -> Result<()> {
        let target_rel = match self.rel_path(target) {
            Ok(t) => t,
            Err(reason) => return self.refuse(entry, format!("hard link target: {reason}")),
        };
        let Some(target_name) = target_rel.name else {
            return self.refuse(entry, "hard link to the destination itself".into());
        };
        let target_parent = match self.parent_dir(&target_rel.parent)? {
            Ok(dir) => dir,
            Err(reason) => return self.refuse(entry, format!("hard link target: {reason}")),
        };
        let joined = rel.joined();
        // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never what it points to.
        let linked = self.place(parent, name, &joined, |dir, n| {
            rustix::fs::linkat(&*target_parent, OsStr::from_bytes(target_name), dir, n, AtFlags::empty())
        });
        match linked {
            // The target's member is missing, or was itself refused or skipped: this one
            // member cannot be restored, the rest of the archive still can.
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => self.refuse(
                entry,
                format!("hard link target {} is not in the destination", String::from_utf8_lossy(target)),
            ),
            other => other,
        }
    }

    /// Creates a symlink, device or fifo, then applies its metadata by name.
    fn create_node(
        &mut self,
        parent: &OwnedFd,
        name: &[u8],
        rel: &RelPath<'_>,
        entry: &Entry,
        create: impl Fn(BorrowedFd<'_>, &OsStr) -> std::result::Result<(), Errno>,
    ) -> Result<()> {
        let joined = rel.joined();
        // Metadata goes on under a temporary name, so what appears under the final name is
        // complete.
        let temp = temp_name(name);
        create(parent.as_fd(), OsStr::from_bytes(&temp)).at_with("create", || self.display(&joined))?;
        let result = self.set_meta_at(parent, &temp, entry, &joined);
        let flags = if self.options.overwrite { RenameFlags::empty() } else { RenameFlags::NOREPLACE };
        let placed = result.and_then(|()| {
            self.place(parent, name, &joined, |dir, n| {
                rustix::fs::renameat_with(dir, OsStr::from_bytes(&temp), dir, n, flags)
            })
        });
        // Still there after a conflict or a failure.
        let _ = rustix::fs::unlinkat(parent, OsStr::from_bytes(&temp), AtFlags::empty());
        placed
    }

    /// Gives a complete new entry its final name with `link`, which fails with EEXIST when the
    /// name is taken. An existing entry is replaced only with --overwrite, and then atomically
    /// by rename: nothing existing is written through or truncated.
    fn place(
        &mut self,
        parent: &OwnedFd,
        name: &[u8],
        rel: &[u8],
        link: impl Fn(BorrowedFd<'_>, &OsStr) -> std::result::Result<(), Errno>,
    ) -> Result<()> {
        match link(parent.as_fd(), OsStr::from_bytes(name)) {
            Ok(()) => Ok(()),
            // rename(2) of a symlink, device or fifo onto a directory fails with EISDIR.
            Err(Errno::EXIST | Errno::ISDIR) if self.options.overwrite => {
                let stat = rustix::fs::statat(parent, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)
                    .at_with("lstat", || self.display(rel))?;
                if rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory {
                    // Only an empty directory may give way.
                    match rustix::fs::unlinkat(parent, OsStr::from_bytes(name), AtFlags::REMOVEDIR) {
                        Ok(()) => {
                            self.last_parent = None;
                            link(parent.as_fd(), OsStr::from_bytes(name))
                                .at_with("create", || self.display(rel))
                        }
                        Err(Errno::NOTEMPTY | Errno::EXIST) => {
                            self.conflict(rel);
                            Ok(())
                        }
                        Err(e) => Err(Error::io("rmdir", self.display(rel), e)),
                    }
                } else {
                    let temp = temp_name(name);
                    link(parent.as_fd(), OsStr::from_bytes(&temp)).at_with("create", || self.display(rel))?;
                    rustix::fs::renameat(parent, OsStr::from_bytes(&temp), parent, OsStr::from_bytes(name))
                        .at_with("rename", || self.display(rel))
                }
            }
            Err(Errno::EXIST) => {
                self.conflict(rel);
                Ok(())
            }
            Err(e) => Err(Error::io("create", self.display(rel), e)),
        }
    }

    fn conflict(&mut self, rel: &[u8]) {
        let path = self.display(rel);
        log::error!("{}: already exists; left untouched (use --overwrite to replace)", path.display());
        self.stats.conflicts.push(path);
    }

    fn set_owner_failed(&mut self, rel: &[u8], e: Errno) -> Result<()> {
        if e == Errno::PERM && !self.privileged {
            if !self.warned_owner {
                log::warn!("not running as root: file owners are not restored");
                self.warned_owner = true;
            }
            return Ok(());
        }
        Err(Error::io("chown", self.display(rel), e))
    }

    /// Owner, then mode (chown clears setuid), then xattrs (chown clears capabilities), then
    /// times. An owner or mode the new inode already has is not set again: on Btrfs each chown
    /// and chmod is a transaction, even one that changes nothing, and an fstat is not.
    fn set_meta_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        rel: &[u8],
        times: bool,
    ) -> Result<()> {
        let now = rustix::fs::fstat(fd).at_with("fstat", || self.display(rel))?;
        let owner_kept = u64::from(now.st_uid) == meta.uid && u64::from(now.st_gid) == meta.gid;
        if !owner_kept && let Err(e) = rustix::fs::fchown(fd, Some(uid(meta.uid)), Some(gid(meta.gid))) {
            self.set_owner_failed(rel, e)?;
        }
        if !owner_kept || now.st_mode & 0o7777 != meta.mode & 0o7777 {
            rustix::fs::fchmod(fd, Mode::from_bits_truncate(meta.mode))
                .at_with("chmod", || self.display(rel))?;
        }
        self.set_xattrs_fd(fd, xattrs, rel);
        if times {
            rustix::fs::futimens(fd, &timestamps(meta)).at_with("utimensat", || self.display(rel))?;
        }
        Ok(())
    }

    fn set_xattrs_fd(&self, fd: BorrowedFd<'_>, xattrs: &[(Vec<u8>, Vec<u8>)], rel: &[u8]) {
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

    fn set_meta_at(&mut self, parent: &OwnedFd, name: &[u8], entry: &Entry, rel: &[u8]) -> Result<()> {
        let meta = &entry.meta;
        let name_os = OsStr::from_bytes(name);
        let is_symlink = matches!(entry.kind, Some(Kind::Symlink(_)));
        if let Err(e) = rustix::fs::chownat(
            parent,
            name_os,
            Some(uid(meta.uid)),
            Some(gid(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            self.set_owner_failed(rel, e)?;
        }
        if !is_symlink {
            rustix::fs::chmodat(parent, name_os, Mode::from_bits_truncate(meta.mode), AtFlags::empty())
                .at_with("chmod", || self.display(rel))?;
        }
        if !entry.xattrs.is_empty() {
            // The magic link names the parent directory itself; lsetxattr does not follow the
            // final component, so this reaches the new node, not what a symlink points to.
            let path = format!("/proc/self/fd/{}/", parent.as_raw_fd());
            let mut path = path.into_bytes();
            path.extend_from_slice(name);
            for (xname, value) in &entry.xattrs {
                if let Err(e) = rustix::fs::lsetxattr(
                    OsStr::from_bytes(&path),
                    OsStr::from_bytes(xname),
                    value,
                    rustix::fs::XattrFlags::empty(),
                ) {
                    self.xattr_failed(rel, xname, e);
                }
            }
        }
        rustix::fs::utimensat(parent, name_os, &timestamps(meta), AtFlags::SYMLINK_NOFOLLOW)
            .at_with("utimensat", || self.display(rel))
    }

    /// Applies a layer's deleted paths (`/etc/old.conf`, as in podman's deleted.files).
    pub fn apply_deletions(&mut self, mode: LayerMode, paths: &[String]) -> Result<()> {
        for path in paths {
            // Deleted paths are absolute by design: not a reason to warn.
            let rel = match self.rel_path(path.trim_start_matches('/').as_bytes()) {
                Ok(rel) => rel,
                Err(reason) => {
                    log::error!("deleted.files: {path}: {reason}; refused");
                    self.stats.refused.push(path.clone());
                    continue;
                }
            };
            let Some(name) = rel.name else { continue };
            let parent = match mode {
                LayerMode::Overlay { .. } => match self.parent_dir(&rel.parent)? {
                    Ok(parent) => parent,
                    Err(reason) => {
                        log::error!("deleted.files: {path}: {reason}; refused");
                        self.stats.refused.push(path.clone());
                        continue;
                    }
                },
                // Nothing to remove below a directory that is not there.
                LayerMode::Plain => match self.open_beneath(&rel.parent.join(&b'/'), OFlags::empty()) {
                    Ok(fd) => Rc::new(fd),
                    Err(Errno::NOENT | Errno::NOTDIR) => continue,
                    Err(e) => match self.parent_failure(&rel.parent.join(&b'/'), e)? {
                        Ok(never) => never,
                        Err(reason) => {
                            log::error!("deleted.files: {path}: {reason}; refused");
                            self.stats.refused.push(path.clone());
                            continue;
                        }
                    },
                },
            };
            self.delete(mode, &parent, name, &rel.joined())?;
        }
        Ok(())
    }

    /// Records the deletion of `name`: a whiteout in an upper dir, a removal elsewhere.
    fn delete(&mut self, mode: LayerMode, parent: &OwnedFd, name: &[u8], rel: &[u8]) -> Result<()> {
        match mode {
            LayerMode::Overlay { .. } => {
                let whiteout = rustix::fs::makedev(0, 0);
                let file_type = rustix::fs::FileType::CharacterDevice;
                match rustix::fs::mknodat(parent, OsStr::from_bytes(name), file_type, Mode::empty(), whiteout)
                {
                    Ok(()) => Ok(()),
                    Err(Errno::EXIST) => {
                        let stat =
                            rustix::fs::statat(parent, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)
                                .at_with("lstat", || self.display(rel))?;
                        let is_whiteout = rustix::fs::FileType::from_raw_mode(stat.st_mode)
                            == rustix::fs::FileType::CharacterDevice
                            && stat.st_rdev == 0;
                        if !is_whiteout {
                            self.conflict(rel);
                        }
                        Ok(())
                    }
                    Err(e) => Err(Error::io("mknod whiteout", self.display(rel), e)),
                }
            }
            LayerMode::Plain => {
                self.last_parent = None;
                remove_tree(parent.as_fd(), name).at_with("remove", || self.display(rel))
            }
        }
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
                self.last_parent = None;
                for child in list_dir(dir.as_fd()).at_with("read directory", || self.display(&dir_rel))? {
                    remove_tree(dir.as_fd(), &child).at_with("remove", || self.display(&dir_rel))?;
                }
                Ok(())
            }
        }
    }

    /// Applies directory owners, modes and times, deepest first, now that nothing more will be
    /// created inside them.
    pub fn finish(mut self) -> Result<ImportStats> {
        self.last_parent = None;
        let dirs = std::mem::take(&mut self.dirs);
        for dir in dirs.iter().rev() {
            let fd = if dir.rel.is_empty() {
                self.root.clone()
            } else {
                match self.open_beneath(&dir.rel, OFlags::NOFOLLOW) {
                    Ok(fd) => Rc::new(fd),
                    // Replaced by a later member (reported then) or not a directory now.
                    Err(Errno::LOOP | Errno::NOTDIR | Errno::XDEV) => continue,
                    Err(e) => return Err(Error::io("openat2", self.display(&dir.rel), e)),
                }
            };
            self.set_meta_fd(fd.as_fd(), &dir.meta, &[], &dir.rel, true)?;
        }
        Ok(self.stats)
    }
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

fn temp_name(name: &[u8]) -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut temp = b".".to_vec();
    temp.extend_from_slice(&name[..name.len().min(200)]);
    temp.extend_from_slice(
        format!(".ckpt-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)).as_bytes(),
    );
    temp
}

fn list_dir(dir: BorrowedFd<'_>) -> std::result::Result<Vec<Vec<u8>>, Errno> {
    let fd =
        rustix::fs::openat(dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    Ok(names)
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
            for child in list_dir(dir.as_fd())? {
                remove_tree(dir.as_fd(), &child)?;
            }
            rustix::fs::unlinkat(parent, name_os, AtFlags::REMOVEDIR)
        }
        Err(e) => Err(e),
    }
}
