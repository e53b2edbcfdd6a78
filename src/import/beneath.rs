//! Path safety beneath the destination: member names split into components without `..`,
//! and directories opened one component at a time from descriptors below DEST, never
//! following a symlink that leads outside it (openat2 RESOLVE_BENEATH where a component is
//! a symlink), so no member, symlink or hard link can reach outside it. The chain of open
//! directories to the previous member is kept, since the next member usually shares most of
//! it, with only some of its descriptors held so trees deeper than PATH_MAX restore with few
//! descriptors open. Separate because every other job relies on it and none may bypass it.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::{Context, Error, Result};
use crate::import::tree::{CREATED, DirTree, SCANNED};

/// Levels at the bottom of the chain whose descriptors stay open.
const HELD_LEVELS: usize = 16;
/// Every this many levels, a descriptor stays open however deep the chain goes.
const HELD_EVERY: usize = 64;

/// A member's path below the destination, split into its parent's components and its name.
pub(crate) struct RelPath<'n> {
    pub(crate) parent: Vec<&'n [u8]>,
    pub(crate) name: Option<&'n [u8]>,
}

impl RelPath<'_> {
    pub(crate) fn joined(&self) -> Vec<u8> {
        let mut all = self.parent.clone();
        all.extend(self.name);
        all.join(&b'/')
    }
}

/// Where an entry goes: a directory opened beneath the destination, the name in it, and the
/// entry's path below the destination (for messages).
#[derive(Clone, Copy)]
pub(crate) struct Slot<'a> {
    pub(crate) dir: &'a OwnedFd,
    pub(crate) name: &'a [u8],
    pub(crate) rel: &'a [u8],
}

/// Why a directory could not be entered.
pub(crate) enum Blocked {
    /// It does not exist (and was not to be created).
    Missing,
    /// It leads outside the destination, or is not a directory.
    Refused(String),
}

impl Blocked {
    pub(crate) fn reason(self) -> String {
        match self {
            Blocked::Missing => "a directory in its path does not exist".to_string(),
            Blocked::Refused(reason) => reason,
        }
    }
}

/// A directory entered, or why it cannot be.
pub(crate) type Entered = std::result::Result<Rc<OwnedFd>, Blocked>;

/// One directory of the chain that leads to the current member's parent.
struct Level {
    node: u32,
    /// Held for the deepest levels and every 64th, so a deep tree keeps few descriptors open;
    /// a dropped one is opened again from the nearest held ancestor.
    fd: Option<Rc<OwnedFd>>,
}

/// The destination and the directories open below it.
pub(crate) struct Beneath {
    root: Rc<OwnedFd>,
    root_path: PathBuf,
    /// The directories leading to the previous member, from the destination down.
    chain: Vec<Level>,
    warned_absolute: bool,
}

impl Beneath {
    /// Opens `dest`, creating it if needed.
    pub(crate) fn open(dest: &Path) -> Result<Beneath> {
        match std::fs::create_dir_all(dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("mkdir", dest, e)),
        }
        let root =
            rustix::fs::open(dest, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .at("open", dest)?;
        let root = Rc::new(root);
        let chain = vec![Level { node: 0, fd: Some(root.clone()) }];
        Ok(Beneath { root, root_path: dest.to_path_buf(), chain, warned_absolute: false })
    }

    pub(crate) fn root(&self) -> Rc<OwnedFd> {
        self.root.clone()
    }

    /// The path of `rel` below the destination, for messages.
    pub(crate) fn display(&self, rel: &[u8]) -> PathBuf {
        self.root_path.join(OsStr::from_bytes(rel))
    }

    /// Splits a member name into safe components: no `..`, leading `/` stripped.
    pub(crate) fn rel_path<'n>(&mut self, name: &'n [u8]) -> std::result::Result<RelPath<'n>, String> {
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

    /// The tree node of the directory `enter` opened last.
    pub(crate) fn current_node(&self) -> u32 {
        self.chain.last().map_or(0, |level| level.node)
    }

    /// Forgets the open directories below the destination, after something was removed or
    /// replaced that may be one of them.
    pub(crate) fn forget_chain(&mut self) {
        self.chain.truncate(1);
    }

    /// Opens the directory `parts` below the destination, one component at a time from the
    /// directories already open, creating missing ones when `create` is set, and recording
    /// each in `tree`. `found` is given each directory entered for the first time that this
    /// import did not create, with its path below the destination. The outer error is an
    /// I/O failure; the inner one says why the path cannot be used.
    pub(crate) fn enter(
        &mut self,
        tree: &mut DirTree,
        parts: &[&[u8]],
        create: bool,
        mut found: impl FnMut(BorrowedFd<'_>, &[u8]),
    ) -> Result<Entered> {
        let mut shared = 0;
        while shared < parts.len()
            && shared + 1 < self.chain.len()
            && tree.name(self.chain[shared + 1].node) == parts[shared]
        {
            shared += 1;
        }
        self.chain.truncate(shared + 1);
        let mut fd = match self.level_fd(tree, shared)? {
            Ok(fd) => fd,
            Err(blocked) => return Ok(Err(blocked)),
        };
        for (i, part) in parts.iter().enumerate().skip(shared) {
            let (child, created) = match self.open_child(&fd, part, &parts[..=i], create)? {
                Ok(opened) => opened,
                Err(blocked) => return Ok(Err(blocked)),
            };
            let parent_node = self.chain[i].node;
            let node = tree.child(parent_node, part, if created { CREATED | SCANNED } else { 0 });
            let child = Rc::new(child);
            if tree.node(node).flags & SCANNED == 0 {
                tree.node_mut(node).flags |= SCANNED;
                found(child.as_fd(), &parts[..=i].join(&b'/'));
            }
            self.push_level(node, child.clone());
            fd = child;
        }
        Ok(Ok(fd))
    }

    /// Adds a level to the chain, dropping the descriptor of the level that stops being one
    /// of the deepest unless it is one of those held however deep the chain goes.
    fn push_level(&mut self, node: u32, fd: Rc<OwnedFd>) {
        self.chain.push(Level { node, fd: Some(fd) });
        let len = self.chain.len();
        if len > HELD_LEVELS && !(len - 1 - HELD_LEVELS).is_multiple_of(HELD_EVERY) {
            self.chain[len - 1 - HELD_LEVELS].fd = None;
        }
    }

    /// The descriptor of chain level `level`, opened again from the nearest ancestor whose
    /// descriptor is held if it was dropped.
    fn level_fd(&mut self, tree: &DirTree, level: usize) -> Result<Entered> {
        if let Some(fd) = &self.chain[level].fd {
            return Ok(Ok(fd.clone()));
        }
        let held = (0..level).rev().find(|&i| self.chain[i].fd.is_some()).unwrap_or(0);
        let names: Vec<Vec<u8>> = self.chain[1..=level].iter().map(|l| tree.name(l.node).to_vec()).collect();
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
}
