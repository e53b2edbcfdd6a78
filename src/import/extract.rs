//! The extractor: restores archive members beneath a destination directory.
//!
//! Every path is resolved one component at a time from a directory descriptor below the
//! destination, never following a symlink that leads outside it, so no member, symlink or
//! hardlink can reach outside it, and trees deeper than PATH_MAX restore. Files are written
//! unnamed (O_TMPFILE) and linked into place complete, so an interrupted import leaves no
//! half-written file under its final name and nothing existing is ever written through.
//! Directory modes and times are applied last, deepest first.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Timespec, Timestamps, UTIME_OMIT,
};
use rustix::io::Errno;

use crate::container::overlay::{self, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::error::{Context, Error, Result};
/// The stats an extraction returns, named here too for the callers that know them as this.
pub use crate::import::stats::ImportStats;
use crate::progress::Progress;
use crate::sys::mover::{End, Mover, Tail, write_all_at};
use crate::sys::temp;
use crate::tar::meta::{Kind, Meta};
use crate::tar::reader::{Entry, Reader};
use crate::tar::round_up;

/// statfs(2)'s f_type of Btrfs.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;

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

/// Whether an error stops the import: the archive cannot be read on, or DEST cannot take
/// anything more. Any other error concerns one member, which is reported and skipped.
fn is_fatal(e: &Error, archive: &Path) -> bool {
    match e {
        Error::Malformed { .. } | Error::Copy { .. } | Error::Runtime { .. } => true,
        Error::Io { path, source, .. } => {
            path == archive
                || source.raw_os_error().is_some_and(|code| {
                    [
                        Errno::NOSPC,
                        Errno::DQUOT,
                        Errno::ROFS,
                        Errno::IO,
                        Errno::MFILE,
                        Errno::NFILE,
                        Errno::NOMEM,
                    ]
                    .iter()
                    .any(|fatal| fatal.raw_os_error() == code)
                })
        }
        Error::Refused { .. } | Error::Invalid { .. } => false,
    }
}

const NO_NODE: u32 = u32::MAX;
/// The archive listed the directory: its metadata is applied at the end.
const HAS_META: u8 = 1;
/// The import created the directory.
const CREATED: u8 = 2;
/// Stale temporary names were looked for in the directory.
const SCANNED: u8 = 4;

/// A directory's deferred metadata (owner and time fit the kernel's 32-bit IDs).
#[derive(Debug, Clone, Copy, Default)]
struct DirMeta {
    mtime: i64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_nsec: u32,
}

impl DirMeta {
    fn from_meta(meta: &Meta) -> DirMeta {
        DirMeta {
            mtime: meta.mtime,
            mode: meta.mode,
            uid: meta.uid as u32,
            gid: meta.gid as u32,
            mtime_nsec: meta.mtime_nsec,
        }
    }

    fn meta(self) -> Meta {
        Meta {
            mode: self.mode,
            uid: u64::from(self.uid),
            gid: u64::from(self.gid),
            mtime: self.mtime,
            mtime_nsec: self.mtime_nsec,
            dev_major: 0,
            dev_minor: 0,
        }
    }
}

/// One directory the import entered: its parent's index and its own name (not its path).
struct DirNode {
    parent: u32,
    /// The next node whose (parent, name) has the same hash.
    next_same_hash: u32,
    name_start: usize,
    name_len: u32,
    flags: u8,
    meta: DirMeta,
}

/// Every directory the import entered, created or was given metadata for, as a tree of
/// names: about 100 bytes per directory plus its name, whatever the length of its path.
/// Node 0 is the destination itself; a parent always comes before its children.
struct DirTree {
    nodes: Vec<DirNode>,
    names: Vec<u8>,
    /// A hash of (parent, name) to the newest node with that hash.
    index: HashMap<u64, u32>,
    hasher: std::collections::hash_map::RandomState,
}

impl DirTree {
    fn new() -> DirTree {
        let root = DirNode {
            parent: NO_NODE,
            next_same_hash: NO_NODE,
            name_start: 0,
            name_len: 0,
            flags: 0,
            meta: DirMeta::default(),
        };
        DirTree { nodes: vec![root], names: Vec::new(), index: HashMap::new(), hasher: Default::default() }
    }

    fn node(&self, node: u32) -> &DirNode {
        &self.nodes[node as usize]
    }

    fn node_mut(&mut self, node: u32) -> &mut DirNode {
        &mut self.nodes[node as usize]
    }

    fn name(&self, node: u32) -> &[u8] {
        let n = self.node(node);
        &self.names[n.name_start..n.name_start + n.name_len as usize]
    }

    fn find(&self, parent: u32, name: &[u8]) -> Option<u32> {
        let mut node = *self.index.get(&self.hasher.hash_one((parent, name)))?;
        while node != NO_NODE {
            if self.node(node).parent == parent && self.name(node) == name {
                return Some(node);
            }
            node = self.node(node).next_same_hash;
        }
        None
    }

    /// The node of `name` in `parent`, added if new.
    fn child(&mut self, parent: u32, name: &[u8], flags: u8) -> u32 {
        if let Some(node) = self.find(parent, name) {
            self.node_mut(node).flags |= flags;
            return node;
        }
        let node = self.nodes.len() as u32;
        let hash = self.hasher.hash_one((parent, name));
        let next_same_hash = self.index.insert(hash, node).unwrap_or(NO_NODE);
        self.nodes.push(DirNode {
            parent,
            next_same_hash,
            name_start: self.names.len(),
            name_len: name.len() as u32,
            flags,
            meta: DirMeta::default(),
        });
        self.names.extend_from_slice(name);
        node
    }

    /// The names from below the destination down to `node`.
    fn path_names(&self, mut node: u32) -> Vec<Vec<u8>> {
        let mut names = Vec::new();
        while node != 0 {
            names.push(self.name(node).to_vec());
            node = self.node(node).parent;
        }
        names.reverse();
        names
    }

    /// The nodes with metadata to apply, deepest first (in archive order at one depth).
    fn deferred(&self) -> Vec<u32> {
        let mut depth = vec![0u32; self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            depth[i] = depth[node.parent as usize] + 1;
        }
        let mut order: Vec<u32> =
            (0..self.nodes.len() as u32).filter(|&node| self.node(node).flags & HAS_META != 0).collect();
        order.sort_by_key(|&node| Reverse(depth[node as usize]));
        order
    }
}

/// One directory of the chain that leads to the current member's parent.
struct Level {
    node: u32,
    /// Held for the deepest levels and every 64th, so a deep tree keeps few descriptors open;
    /// a dropped one is opened again from the nearest held ancestor.
    fd: Option<Rc<OwnedFd>>,
}

/// Levels at the bottom of the chain whose descriptors stay open.
const HELD_LEVELS: usize = 16;
/// Every this many levels, a descriptor stays open however deep the chain goes.
const HELD_EVERY: usize = 64;

/// Why a directory could not be entered.
enum Blocked {
    /// It does not exist (and was not to be created).
    Missing,
    /// It leads outside the destination, or is not a directory.
    Refused(String),
}

impl Blocked {
    fn reason(self) -> String {
        match self {
            Blocked::Missing => "a directory in its path does not exist".to_string(),
            Blocked::Refused(reason) => reason,
        }
    }
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
    euid: u32,
    /// DEST is on a filesystem of this host only, so stale temporary names can be recognised.
    local_fs: bool,
    options: ExtractOptions,
    mover: Mover,
    tree: DirTree,
    /// The directories leading to the previous member, from the destination down; the next
    /// member usually shares most of them.
    chain: Vec<Level>,
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

/// The file type a member creates, for checking that a name still is what was created.
fn node_type(kind: &Kind) -> FileType {
    match kind {
        Kind::Symlink(_) => FileType::Symlink,
        Kind::CharDevice => FileType::CharacterDevice,
        Kind::BlockDevice => FileType::BlockDevice,
        Kind::Fifo => FileType::Fifo,
        Kind::Regular | Kind::HardLink(_) => FileType::RegularFile,
        Kind::Directory => FileType::Directory,
    }
}

/// Overlay's own xattrs describe another host's inodes (origin, impure, uuid), or redirect,
/// copy up or whiteout lower entries: none belongs in a new layer. An opaque marker ("y") is
/// kept, under the xattr name this layer's overlay uses.
fn layer_xattrs(xattrs: &[(Vec<u8>, Vec<u8>)], mode: LayerMode) -> Vec<(Vec<u8>, Vec<u8>)> {
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
        let euid = rustix::process::geteuid();
        let mut extractor = Extractor {
            root: Rc::new(root),
            root_path: dest.to_path_buf(),
            dev,
            block: block.max(512),
            clone_tails: statfs.f_type as i64 == BTRFS_SUPER_MAGIC,
            privileged: euid.is_root(),
            euid: euid.as_raw(),
            local_fs: !SHARED_FS_MAGICS.contains(&(statfs.f_type as i64)),
            options,
            mover: Mover::new(options.share),
            tree: DirTree::new(),
            chain: Vec::new(),
            warned_owner: false,
            warned_absolute: false,
            zero_buf: Vec::new(),
            archive_info: None,
            layer: None,
            progress,
            stats: ImportStats::default(),
        };
        extractor.chain.push(Level { node: 0, fd: Some(extractor.root.clone()) });
        extractor.tree.node_mut(0).flags |= SCANNED;
        let root = extractor.root.clone();
        extractor.remove_stale_temps(root.as_fd(), b"");
        Ok(extractor)
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

    /// Restores one member. `reader` must be positioned at its data. A member that fails is
    /// reported and counted in `stats.failed`; only an error that ends the import (the
    /// archive unreadable, DEST full or read-only) is returned.
    pub fn extract(&mut self, entry: &Entry, reader: &mut Reader<'_>) -> Result<()> {
        self.stats.entries += 1;
        match self.extract_member(entry, reader) {
            Err(e) if !is_fatal(&e, reader.archive_path()) => {
                log::error!("{}: {e}; not restored", entry.name_lossy());
                self.stats.failed.push(entry.name_lossy());
                Ok(())
            }
            other => other,
        }
    }

    fn extract_member(&mut self, entry: &Entry, reader: &mut Reader<'_>) -> Result<()> {
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
        let filtered;
        let xattrs = match self.layer {
            Some(mode) => {
                filtered = layer_xattrs(&entry.xattrs, mode);
                &filtered
            }
            None => &entry.xattrs,
        };
        let Some(name) = rel.name else {
            // The archive's top directory (`./`): the destination itself.
            if *kind == Kind::Directory {
                let root = self.root.clone();
                self.set_xattrs_fd(root.as_fd(), xattrs, b"");
                self.defer(0, &entry.meta);
            }
            return Ok(());
        };
        let parent = match self.enter(&rel.parent, true)? {
            Ok(parent) => parent,
            Err(blocked) => return self.refuse(entry, blocked.reason()),
        };
        let parent_node = self.current_node();
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
                return self.delete(mode, &parent, parent_node, deleted, &target.joined());
            }
        }
        let result = match kind {
            Kind::Regular => self.create_file(&parent, name, &rel.joined(), entry, xattrs, reader),
            Kind::Directory => self.create_dir(&parent, parent_node, name, &rel, entry, xattrs),
            Kind::Symlink(target) => self.create_node(&parent, name, &rel, entry, xattrs, |dir, n| {
                rustix::fs::symlinkat(OsStr::from_bytes(target), dir, n)
            }),
            Kind::HardLink(target) => self.create_hardlink(&parent, name, &rel, entry, target),
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                let file_type = node_type(kind);
                let dev = rustix::fs::makedev(entry.meta.dev_major, entry.meta.dev_minor);
                self.create_node(&parent, name, &rel, entry, xattrs, |dir, n| {
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

    /// Records the metadata a directory gets at the end; a later header for the same
    /// directory replaces it.
    fn defer(&mut self, node: u32, meta: &Meta) {
        let node = self.tree.node_mut(node);
        node.flags |= HAS_META;
        node.meta = DirMeta::from_meta(meta);
    }

    /// The tree node of the directory `enter` opened last.
    fn current_node(&self) -> u32 {
        self.chain.last().map_or(0, |level| level.node)
    }

    /// Forgets the open directories below the destination, after something was removed or
    /// replaced that may be one of them.
    fn forget_chain(&mut self) {
        self.chain.truncate(1);
    }

    /// Opens the directory `parts` below the destination, one component at a time from the
    /// directories already open, creating missing ones when `create` is set. The outer error
    /// is an I/O failure; the inner one says why the path cannot be used.
    fn enter(&mut self, parts: &[&[u8]], create: bool) -> Result<std::result::Result<Rc<OwnedFd>, Blocked>> {
        let mut shared = 0;
        while shared < parts.len()
            && shared + 1 < self.chain.len()
            && self.tree.name(self.chain[shared + 1].node) == parts[shared]
        {
            shared += 1;
        }
        self.chain.truncate(shared + 1);
        let mut fd = match self.level_fd(shared)? {
            Ok(fd) => fd,
            Err(blocked) => return Ok(Err(blocked)),
        };
        for (i, part) in parts.iter().enumerate().skip(shared) {
            let (child, created) = match self.open_child(&fd, part, &parts[..=i], create)? {
                Ok(opened) => opened,
                Err(blocked) => return Ok(Err(blocked)),
            };
            let parent_node = self.chain[i].node;
            let node = self.tree.child(parent_node, part, if created { CREATED | SCANNED } else { 0 });
            let child = Rc::new(child);
            if self.tree.node(node).flags & SCANNED == 0 {
                // Only a directory the import did not create can hold temporary names left
                // by an earlier, killed import.
                self.tree.node_mut(node).flags |= SCANNED;
                self.remove_stale_temps(child.as_fd(), &parts[..=i].join(&b'/'));
            }
            self.chain.push(Level { node, fd: Some(child.clone()) });
            let len = self.chain.len();
            if len > HELD_LEVELS && !(len - 1 - HELD_LEVELS).is_multiple_of(HELD_EVERY) {
                self.chain[len - 1 - HELD_LEVELS].fd = None;
            }
            fd = child;
        }
        Ok(Ok(fd))
    }

    /// The descriptor of chain level `level`, opened again from the nearest ancestor whose
    /// descriptor is held if it was dropped.
    fn level_fd(&mut self, level: usize) -> Result<std::result::Result<Rc<OwnedFd>, Blocked>> {
        if let Some(fd) = &self.chain[level].fd {
            return Ok(Ok(fd.clone()));
        }
        let held = (0..level).rev().find(|&i| self.chain[i].fd.is_some()).unwrap_or(0);
        let names: Vec<Vec<u8>> =
            self.chain[1..=level].iter().map(|l| self.tree.name(l.node).to_vec()).collect();
        let parts: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
        let mut fd = self.chain[held].fd.clone().unwrap_or_else(|| self.root.clone());
        for i in held..level {
            fd = match self.open_child(&fd, parts[i], &parts[..=i], false)? {
                Ok((child, _)) => Rc::new(child),
                Err(blocked) => return Ok(Err(blocked)),
            };
        }
        self.chain[level].fd = Some(fd.clone());
        Ok(Ok(fd))
    }

    /// Opens (or creates, then opens) directory `name` in `dir`; `prefix` is its path below
    /// the destination. Says whether it was created.
    fn open_child(
        &self,
        dir: &OwnedFd,
        name: &[u8],
        prefix: &[&[u8]],
        create: bool,
    ) -> Result<std::result::Result<(OwnedFd, bool), Blocked>> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let name_os = OsStr::from_bytes(name);
        let mut created = false;
        let error = match rustix::fs::openat(dir, name_os, flags, Mode::empty()) {
            Ok(fd) => return Ok(Ok((fd, false))),
            Err(Errno::NOENT) if create => {
                // Archives need not list every directory: create the missing ones.
                match rustix::fs::mkdirat(dir, name_os, Mode::from_bits_truncate(0o755)) {
                    Ok(()) => created = true,
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(Error::io("mkdir", self.display(&prefix.join(&b'/')), e)),
                }
                match rustix::fs::openat(dir, name_os, flags, Mode::empty()) {
                    Ok(fd) => return Ok(Ok((fd, created))),
                    Err(e) => e,
                }
            }
            Err(Errno::NOENT) => return Ok(Err(Blocked::Missing)),
            Err(e) => e,
        };
        let joined = prefix.join(&b'/');
        match error {
            // Perhaps a symlink (O_NOFOLLOW with O_DIRECTORY fails with ENOTDIR there):
            // followed only as far as it stays inside the destination.
            Errno::LOOP | Errno::NOTDIR => match self.open_beneath(&joined) {
                Ok(fd) => Ok(Ok((fd, created))),
                Err(Errno::NOENT) if !create => Ok(Err(Blocked::Missing)),
                Err(e) => self.parent_failure(&joined, e).map(|r| r.map(|never| (never, false))),
            },
            e => self.parent_failure(&joined, e).map(|r| r.map(|never| (never, false))),
        }
    }

    fn parent_failure<T>(&self, rel: &[u8], e: Errno) -> Result<std::result::Result<T, Blocked>> {
        match e {
            Errno::XDEV | Errno::LOOP => Ok(Err(Blocked::Refused(format!(
                "{} leads outside the destination through a symlink",
                String::from_utf8_lossy(rel)
            )))),
            Errno::NOTDIR => {
                Ok(Err(Blocked::Refused(format!("{} is not a directory", String::from_utf8_lossy(rel)))))
            }
            e => Err(Error::io("openat2", self.display(rel), e)),
        }
    }

    fn open_beneath(&self, rel: &[u8]) -> std::result::Result<OwnedFd, Errno> {
        rustix::fs::openat2(
            &*self.root,
            OsStr::from_bytes(rel),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// Removes temporary names (`.NAME.ckpt-PID-N.tmp`) that an import or export killed
    /// before it could remove them left in `dir`: those of a process that no longer exists,
    /// untouched for a minute, on a filesystem of this host only, and, unless running as
    /// root, owned by this user.
    fn remove_stale_temps(&self, dir: BorrowedFd<'_>, rel: &[u8]) {
        if !self.local_fs {
            return;
        }
        let Ok(fd) =
            rustix::fs::openat(dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        else {
            return;
        };
        let Ok(entries) = rustix::fs::Dir::read_from(&fd) else { return };
        let mut stale = Vec::new();
        for entry in entries {
            let Ok(entry) = entry else { break };
            let name = entry.file_name().to_bytes();
            if temp::pid_of(name).is_some_and(temp::writer_gone) {
                stale.push(name.to_vec());
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for name in stale {
            let name_os = OsStr::from_bytes(&name);
            let Ok(stat) = rustix::fs::statat(dir, name_os, AtFlags::SYMLINK_NOFOLLOW) else { continue };
            if stat.st_mtime > now - STALE_AFTER_SECONDS || (!self.privileged && stat.st_uid != self.euid) {
                continue;
            }
            let flags = if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            let path = self.display(&[rel, b"/", &name].concat());
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

    fn create_file(
        &mut self,
        parent: &OwnedFd,
        name: &[u8],
        rel: &[u8],
        entry: &Entry,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        reader: &mut Reader<'_>,
    ) -> Result<()> {
        // Usually the final mode already (the umask permitting), so no chmod is needed.
        let mode = Mode::from_bits_truncate(entry.meta.mode & 0o777);
        let (tmp, temp) =
            match rustix::fs::openat(parent, ".", OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC, mode) {
                Ok(fd) => (File::from(fd), None),
                // No O_TMPFILE here (NFS, FUSE, older kernels): a hidden temporary name instead.
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {
                    let temp = temp::name_for(name);
                    let flags =
                        OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::RDWR | OFlags::CLOEXEC;
                    match rustix::fs::openat(
                        parent,
                        OsStr::from_bytes(&temp),
                        flags,
                        Mode::from_bits_truncate(0o600),
                    ) {
                        Ok(fd) => (File::from(fd), Some(temp)),
                        Err(e) => return Err(Error::io("create", self.display(rel), e)),
                    }
                }
                Err(e) => return Err(Error::io("open O_TMPFILE for", self.display(rel), e)),
            };
        let result = self.write_file(parent, name, rel, entry, xattrs, reader, &tmp, temp.as_deref());
        if let Some(temp) = temp {
            // Still there after a conflict or a failure.
            let _ = rustix::fs::unlinkat(parent, OsStr::from_bytes(&temp), AtFlags::empty());
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn write_file(
        &mut self,
        parent: &OwnedFd,
        name: &[u8],
        rel: &[u8],
        entry: &Entry,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        reader: &mut Reader<'_>,
        tmp: &File,
        temp: Option<&[u8]>,
    ) -> Result<()> {
        self.fill(tmp, entry, rel, reader)?;
        self.set_meta_fd(tmp.as_fd(), &entry.meta, xattrs, rel, true)?;
        self.stats.files += 1;
        self.stats.bytes += entry.sparse.as_ref().map_or(entry.size, |map| map.real_size);
        if let Some(progress) = &self.progress {
            progress.advance(entry.size);
        }
        if let Some(temp) = temp {
            let flags = if self.options.overwrite { RenameFlags::empty() } else { RenameFlags::NOREPLACE };
            return self.place(parent, name, rel, |dir, n| {
                rustix::fs::renameat_with(dir, OsStr::from_bytes(temp), dir, n, flags)
            });
        }
        // Linking an unnamed file by descriptor needs CAP_DAC_READ_SEARCH; without it, go
        // through its /proc magic link.
        let proc_path = format!("/proc/self/fd/{}", tmp.as_raw_fd());
        let by_fd = self.privileged;
        self.place(parent, name, rel, |dir, n| {
            if by_fd {
                rustix::fs::linkat(tmp, "", dir, n, AtFlags::EMPTY_PATH)
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

    fn create_dir(
        &mut self,
        parent: &OwnedFd,
        parent_node: u32,
        name: &[u8],
        rel: &RelPath<'_>,
        entry: &Entry,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<()> {
        let joined = rel.joined();
        let name_os = OsStr::from_bytes(name);
        let mut flags = 0;
        match rustix::fs::mkdirat(parent, name_os, Mode::from_bits_truncate(0o700)) {
            Ok(()) => flags = CREATED | SCANNED,
            Err(Errno::EXIST) => {
                let stat = rustix::fs::statat(parent, name_os, AtFlags::SYMLINK_NOFOLLOW)
                    .at_with("lstat", || self.display(&joined))?;
                if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
                    if !self.options.overwrite {
                        self.conflict(&joined);
                        return Ok(());
                    }
                    self.replace_by_dir(parent, name, &joined)?;
                    flags = CREATED | SCANNED;
                    let was_whiteout = FileType::from_raw_mode(stat.st_mode) == FileType::CharacterDevice
                        && stat.st_rdev == 0;
                    if let (Some(LayerMode::Overlay { opaque_xattr }), true) = (self.layer, was_whiteout) {
                        // The layer deletes the lower directory and has a new one: the new one
                        // hides what the lower one held.
                        self.set_opaque(parent, name, &joined, opaque_xattr)?;
                    }
                }
            }
            Err(e) => return Err(Error::io("mkdir", self.display(&joined), e)),
        }
        let node = self.tree.child(parent_node, name, flags);
        self.defer(node, &entry.meta);
        if !xattrs.is_empty() {
            let dir = rustix::fs::openat(
                parent,
                name_os,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .at_with("open", || self.display(&joined))?;
            self.set_xattrs_fd(dir.as_fd(), xattrs, &joined);
        }
        Ok(())
    }

    /// Replaces the non-directory `name` by a new empty directory (--overwrite), as GNU tar
    /// does. The two are exchanged, so the name never stops existing, then the old entry,
    /// now under the temporary name, is removed.
    fn replace_by_dir(&mut self, parent: &OwnedFd, name: &[u8], rel: &[u8]) -> Result<()> {
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
        let missing =
            || format!("hard link target {} is not in the destination", String::from_utf8_lossy(target));
        let target_parent = match self.enter(&target_rel.parent, false)? {
            Ok(dir) => dir,
            Err(Blocked::Missing) => return self.refuse(entry, missing()),
            Err(Blocked::Refused(reason)) => {
                return self.refuse(entry, format!("hard link target: {reason}"));
            }
        };
        let joined = rel.joined();
        // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never what it points to.
        let linked = self.place(parent, name, &joined, |dir, n| {
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
        parent: &OwnedFd,
        name: &[u8],
        rel: &RelPath<'_>,
        entry: &Entry,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        create: impl Fn(BorrowedFd<'_>, &OsStr) -> std::result::Result<(), Errno>,
    ) -> Result<()> {
        let joined = rel.joined();
        let temp = temp::name_for(name);
        create(parent.as_fd(), OsStr::from_bytes(&temp)).at_with("create", || self.display(&joined))?;
        let result = self.set_node_meta(parent, &temp, entry, xattrs, &joined);
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

    /// Owner, mode, xattrs and times of the node just created as `temp`, all through one
    /// O_PATH descriptor of it: in a directory others can write to, the name may be swapped
    /// for another user's symlink or file at any moment, and nothing here follows a name.
    /// chmod and setxattr go through the descriptor's /proc magic link, which leads to the
    /// opened inode itself (a symlink's too); a symlink has no mode on Linux.
    fn set_node_meta(
        &mut self,
        parent: &OwnedFd,
        temp: &[u8],
        entry: &Entry,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        rel: &[u8],
    ) -> Result<()> {
        let meta = &entry.meta;
        let fd = rustix::fs::openat(
            parent,
            OsStr::from_bytes(temp),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .at_with("open", || self.display(rel))?;
        let stat = rustix::fs::fstat(&fd).at_with("fstat", || self.display(rel))?;
        let kind = entry.kind.as_ref().map_or(FileType::Unknown, node_type);
        if FileType::from_raw_mode(stat.st_mode) != kind || stat.st_uid != self.euid {
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
        for (xname, value) in xattrs {
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
                if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                    // Only an empty directory may give way.
                    match rustix::fs::unlinkat(parent, OsStr::from_bytes(name), AtFlags::REMOVEDIR) {
                        Ok(()) => {
                            self.forget_chain();
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
                    let temp = temp::name_for(name);
                    let temp_os = OsStr::from_bytes(&temp);
                    link(parent.as_fd(), temp_os).at_with("create", || self.display(rel))?;
                    let renamed = rustix::fs::renameat(parent, temp_os, parent, OsStr::from_bytes(name))
                        .at_with("rename", || self.display(rel));
                    // rename(2) of one name of an inode onto another name of it does nothing
                    // and succeeds (a hard link to what the name already is): the temporary
                    // name is still there then, as after a failed rename.
                    let _ = rustix::fs::unlinkat(parent, temp_os, AtFlags::empty());
                    renamed
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

    /// After chown failed: says the owner is not restored (the caller then drops set-user-ID
    /// and set-group-ID bits, which would otherwise apply to the wrong owner). Without root
    /// that is expected and warned about once; as root it is a failure of this entry.
    fn owner_not_restored(&mut self, rel: &[u8], e: Errno) -> Result<bool> {
        if e == Errno::PERM && !self.privileged {
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
            // An upper dir records a deletion below a missing directory as whiteouts in new
            // directories; in a plain directory there is nothing to remove.
            let parent = match self.enter(&rel.parent, matches!(mode, LayerMode::Overlay { .. }))? {
                Ok(parent) => parent,
                Err(Blocked::Missing) => continue,
                Err(Blocked::Refused(reason)) => {
                    log::error!("deleted.files: {path}: {reason}; refused");
                    self.stats.refused.push(path.clone());
                    continue;
                }
            };
            let parent_node = self.current_node();
            let joined = rel.joined();
            if let Err(e) = self.delete(mode, &parent, parent_node, name, &joined) {
                if is_fatal(&e, Path::new("")) {
                    return Err(e);
                }
                log::error!("deleted.files: {path}: {e}; not applied");
                self.stats.failed.push(path.clone());
            }
        }
        Ok(())
    }

    /// Records the deletion of `name`: a whiteout in an upper dir, a removal elsewhere. A
    /// directory this import restored under that name replaces the deleted one: it becomes
    /// opaque, so the lower layers' entries in it stay hidden.
    fn delete(
        &mut self,
        mode: LayerMode,
        parent: &OwnedFd,
        parent_node: u32,
        name: &[u8],
        rel: &[u8],
    ) -> Result<()> {
        match mode {
            LayerMode::Overlay { opaque_xattr } => {
                let whiteout = rustix::fs::makedev(0, 0);
                let name_os = OsStr::from_bytes(name);
                match rustix::fs::mknodat(parent, name_os, FileType::CharacterDevice, Mode::empty(), whiteout)
                {
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
                            self.set_opaque(parent, name, rel, opaque_xattr)
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
            LayerMode::Plain => {
                self.forget_chain();
                remove_tree(parent.as_fd(), name).at_with("remove", || self.display(rel))
            }
        }
    }

    fn set_opaque(&self, parent: &OwnedFd, name: &[u8], rel: &[u8], opaque_xattr: &[u8]) -> Result<()> {
        let dir = rustix::fs::openat(
            parent,
            OsStr::from_bytes(name),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .at_with("open", || self.display(rel))?;
        rustix::fs::fsetxattr(&dir, OsStr::from_bytes(opaque_xattr), b"y", rustix::fs::XattrFlags::empty())
            .at_with("setxattr overlay.opaque on", || self.display(rel))
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
                self.forget_chain();
                remove_children(dir.as_fd()).at_with("remove the contents of", || self.display(&dir_rel))
            }
        }
    }

    /// Applies directory owners, modes and times, deepest first whatever the archive's
    /// order, now that nothing more will be created inside them. A directory that fails is
    /// reported and counted in `stats.failed`; the others are still done.
    pub fn finish(mut self) -> Result<ImportStats> {
        self.forget_chain();
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
            let root = self.root.clone();
            return self.set_meta_fd(root.as_fd(), &meta, &[], b"", true);
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
        self.set_meta_fd(fd.as_fd(), &meta, &[], &rel, true)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_directories_come_deepest_first() {
        let mut tree = DirTree::new();
        let b = tree.child(0, b"a", 0);
        let ab = tree.child(b, b"b", 0);
        tree.node_mut(ab).flags |= HAS_META;
        tree.node_mut(b).flags |= HAS_META;
        assert_eq!(tree.child(0, b"a", HAS_META), b);
        assert_eq!(tree.deferred(), vec![ab, b]);
        assert_eq!(tree.path_names(ab), vec![b"a".to_vec(), b"b".to_vec()]);
    }
}
