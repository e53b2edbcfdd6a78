//! The source walker: turns a directory tree into archive members in a stable order, one at a
//! time, so memory does not grow with the number of files.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::error::{Context, Error, Result};
use crate::member::{Body, Kind, Member, Meta, SourceFile};

/// A stream of members, in archive order.
pub type Members<'a> = Box<dyn Iterator<Item = Result<Member>> + 'a>;

/// Entries that cannot be archived (sockets), shared between the walkers of one export and
/// reported once it ends.
#[derive(Debug, Default, Clone)]
pub struct Skipped(Rc<RefCell<Vec<PathBuf>>>);

impl Skipped {
    pub fn push(&self, path: PathBuf) {
        self.0.borrow_mut().push(path);
    }

    pub fn take(&self) -> Vec<PathBuf> {
        std::mem::take(&mut self.0.borrow_mut())
    }
}

/// How members are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `./`, `./a`, `./dir/`: what `tar -C ROOT -cf OUT .` writes.
    DotSlash,
    /// `a`, `dir/`, without an entry for the root: the layout of podman's checkpoint archives.
    Bare,
    /// `./` for the root (so its owner, mode, times and xattrs travel), then `a`, `dir/`.
    BareWithRoot,
}

/// Lists a tree in depth-first order, sorted byte-wise within each directory, so the same tree
/// always gives the same archive.
pub struct Walk {
    root: PathBuf,
    naming: Naming,
    entries: walkdir::IntoIter,
    /// The first name seen for each multiply-linked inode; later names become tar hardlinks.
    first_names: HashMap<(u64, u64), Vec<u8>>,
    /// Top-level names to leave out (written elsewhere in the archive).
    omit: Vec<Vec<u8>>,
    skipped: Skipped,
}

impl Walk {
    pub fn new(root: &Path, naming: Naming, skipped: Skipped) -> Result<Walk> {
        let meta = std::fs::symlink_metadata(root).at("lstat", root)?;
        if !meta.is_dir() {
            return Err(Error::invalid(root, "not a directory"));
        }
        let entries = walkdir::WalkDir::new(root)
            .follow_links(false)
            .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()))
            .into_iter();
        Ok(Walk {
            root: root.to_path_buf(),
            naming,
            entries,
            first_names: HashMap::new(),
            omit: Vec::new(),
            skipped,
        })
    }

    /// Leaves out these entries directly under the root.
    pub fn omit(mut self, names: &[&[u8]]) -> Walk {
        self.omit = names.iter().map(|n| n.to_vec()).collect();
        self
    }

    /// The member for one entry, or None for an entry that is not archived.
    fn member(&mut self, entry: walkdir::DirEntry) -> Result<Option<Member>> {
        let root = self.root.as_path();
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(path);
        let meta = entry.metadata().map_err(|e| walk_error(root, e))?;
        let file_type = meta.file_type();
        if file_type.is_socket() {
            self.skipped.push(path.to_path_buf());
            return Ok(None);
        }
        let mut name = match self.naming {
            Naming::DotSlash if rel.as_os_str().is_empty() => b".".to_vec(),
            Naming::DotSlash => [b"./", rel.as_os_str().as_bytes()].concat(),
            Naming::Bare if rel.as_os_str().is_empty() => return Ok(None),
            Naming::BareWithRoot if rel.as_os_str().is_empty() => b".".to_vec(),
            Naming::Bare | Naming::BareWithRoot => rel.as_os_str().as_bytes().to_vec(),
        };
        if file_type.is_dir() && !name.ends_with(b"/") {
            name.push(b'/');
        }
        if !file_type.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.first_names.get(&key) {
                let target = first.clone();
                let member = describe(path, name, &meta)?;
                return Ok(Some(Member { kind: Kind::HardLink(target), body: Body::None, ..member }));
            }
            self.first_names.insert(key, name.clone());
        }
        Ok(Some(describe(path, name, &meta)?))
    }
}

/// The member named `name` for the file at `path`, whose lstat is `meta`.
pub fn describe(path: &Path, name: Vec<u8>, meta: &std::fs::Metadata) -> Result<Member> {
    let file_type = meta.file_type();
    let mut body = Body::None;
    let kind = if file_type.is_dir() {
        Kind::Directory
    } else if file_type.is_file() {
        body = Body::File(SourceFile {
            path: path.to_path_buf(),
            size: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        });
        Kind::Regular
    } else if file_type.is_symlink() {
        let target = std::fs::read_link(path).at("readlink", path)?;
        Kind::Symlink(target.into_os_string().into_encoded_bytes())
    } else if file_type.is_char_device() {
        Kind::CharDevice
    } else if file_type.is_block_device() {
        Kind::BlockDevice
    } else if file_type.is_fifo() {
        Kind::Fifo
    } else {
        return Err(Error::invalid(path, "unknown file type"));
    };
    Ok(Member { name, meta: Meta::from_std(meta), kind, body, xattrs: read_xattrs(path)? })
}

impl Iterator for Walk {
    type Item = Result<Member>;

    fn next(&mut self) -> Option<Result<Member>> {
        loop {
            let entry = match self.entries.next()? {
                Ok(entry) => entry,
                Err(e) => return Some(Err(walk_error(&self.root, e))),
            };
            if entry.depth() == 1 && self.omit.iter().any(|n| n.as_slice() == entry.file_name().as_bytes()) {
                if entry.file_type().is_dir() {
                    self.entries.skip_current_dir();
                }
                continue;
            }
            match self.member(entry) {
                Ok(None) => continue,
                other => return other.transpose(),
            }
        }
    }
}

/// The bytes of regular file data under `root`, each inode counted once: the total a progress
/// bar needs before the walk that archives them.
pub fn data_bytes(root: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .filter(|meta| meta.is_file() && (meta.nlink() == 1 || seen.insert((meta.dev(), meta.ino()))))
        .map(|meta| meta.len())
        .sum()
}

fn walk_error(root: &Path, e: walkdir::Error) -> Error {
    let path = e.path().unwrap_or(root).to_path_buf();
    match e.into_io_error() {
        Some(io) => Error::io("read directory", path, io),
        None => Error::invalid(path, "filesystem loop"),
    }
}

/// Every extended attribute of `path` (not following symlinks), sorted by name.
pub fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = loop {
        let size = match rustix::fs::llistxattr_query(path) {
            Ok(0) => return Ok(Vec::new()),
            Ok(size) => size,
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("llistxattr", path, e)),
        };
        let mut buf = vec![0u8; size];
        match rustix::fs::llistxattr(path, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                break buf;
            }
            // The list grew between the two calls.
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(Error::io("llistxattr", path, e)),
        }
    };
    let mut xattrs = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let os_name = OsStr::from_bytes(name);
        let value = loop {
            let size = match rustix::fs::lgetxattr_query(path, os_name) {
                Ok(size) => size,
                // Removed since it was listed.
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(Error::io("lgetxattr", path, e)),
            };
            let mut buf = vec![0u8; size];
            match rustix::fs::lgetxattr(path, os_name, &mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    break Some(buf);
                }
                Err(rustix::io::Errno::RANGE) => continue,
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(Error::io("lgetxattr", path, e)),
            }
        };
        if let Some(value) = value {
            xattrs.push((name.to_vec(), value));
        }
    }
    xattrs.sort();
    Ok(xattrs)
}
