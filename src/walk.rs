//! The source walker: turns a directory tree into archive members in a stable order.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use crate::member::{Body, Kind, Member, Meta, SourceFile};

/// What the walk skipped (sockets cannot be archived).
#[derive(Debug, Default)]
pub struct Skipped {
    pub paths: Vec<PathBuf>,
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

/// Lists `root` and everything below it in depth-first order, sorted byte-wise within each
/// directory, so the same tree always gives the same archive.
pub fn walk(root: &Path, naming: Naming, skipped: &mut Skipped) -> Result<Vec<Member>> {
    let meta = std::fs::symlink_metadata(root).at("lstat", root)?;
    if !meta.is_dir() {
        return Err(Error::invalid(root, "not a directory"));
    }
    let mut members = Vec::new();
    // The first name seen for each multiply-linked inode; later names become tar hardlinks.
    let mut first_names: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
    for entry in walker {
        let entry = entry.map_err(|e| walk_error(root, e))?;
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(path);
        let meta = entry.metadata().map_err(|e| walk_error(root, e))?;
        let file_type = meta.file_type();
        let mut name = match naming {
            Naming::DotSlash if rel.as_os_str().is_empty() => b".".to_vec(),
            Naming::DotSlash => [b"./", rel.as_os_str().as_bytes()].concat(),
            Naming::Bare if rel.as_os_str().is_empty() => continue,
            Naming::BareWithRoot if rel.as_os_str().is_empty() => b".".to_vec(),
            Naming::Bare | Naming::BareWithRoot => rel.as_os_str().as_bytes().to_vec(),
        };
        if file_type.is_dir() && !name.ends_with(b"/") {
            name.push(b'/');
        }
        let mut member = Member {
            name,
            meta: Meta::from_std(&meta),
            kind: Kind::Directory,
            body: Body::None,
            xattrs: read_xattrs(path)?,
        };
        if file_type.is_socket() {
            log::warn!("{}: socket skipped (tar cannot hold sockets)", path.display());
            skipped.paths.push(path.to_path_buf());
            continue;
        }
        if !file_type.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = first_names.get(&key) {
                member.kind = Kind::HardLink(first.clone());
                members.push(member);
                continue;
            }
            first_names.insert(key, member.name.clone());
        }
        member.kind = if file_type.is_dir() {
            Kind::Directory
        } else if file_type.is_file() {
            member.body = Body::File(SourceFile {
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
        members.push(member);
    }
    Ok(members)
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
