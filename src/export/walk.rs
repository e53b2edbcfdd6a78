//! The source walker: turns a directory tree into archive members in a stable order, one at a
//! time, so memory does not grow with the number of files.
//!
//! It works on directory descriptors, never on full paths: every entry is looked up in its
//! parent's descriptor without following symlinks, so a tree deeper than PATH_MAX walks, and a
//! directory swapped for a symlink while the export runs cannot lead outside the tree.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, OsStr};
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, Stat};
use rustix::io::Errno;

use crate::error::{Context, Error, Result};
use crate::export::member::{Body, Member};
use crate::export::source::SourceFile;
use crate::sys::outfile;
use crate::tar::meta::{Kind, Meta};

/// Entries that cannot be archived (sockets), shared between the walkers of one export and
/// reported once it ends.
#[derive(Debug, Default, Clone)]
pub(crate) struct Skipped(Rc<RefCell<Vec<PathBuf>>>);

impl Skipped {
    pub(crate) fn push(&self, path: PathBuf) {
        self.0.borrow_mut().push(path);
    }

    pub(crate) fn take(&self) -> Vec<PathBuf> {
        std::mem::take(&mut self.0.borrow_mut())
    }
}

/// How members are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Naming {
    /// `./`, `./a`, `./dir/`: what `tar -C ROOT -cf OUT .` writes.
    DotSlash,
    /// `a`, `dir/`, without an entry for the root: the layout of podman's checkpoint archives.
    Bare,
    /// `./` for the root (so its owner, mode, times and xattrs travel), then `a`, `dir/`.
    BareWithRoot,
}

/// What a stat said about an entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inode {
    pub file_type: FileType,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub mtime: (i64, i64),
    pub meta: Meta,
}

impl Inode {
    #[allow(clippy::unnecessary_cast)] // field types differ between targets
    pub(crate) fn from_stat(st: &Stat) -> Inode {
        let mtime = (st.st_mtime as i64, st.st_mtime_nsec as i64);
        let rdev = st.st_rdev as u64;
        Inode {
            file_type: FileType::from_raw_mode(st.st_mode as _),
            size: st.st_size as u64,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            nlink: st.st_nlink as u64,
            mtime,
            meta: Meta {
                mode: st.st_mode as u32 & 0o7777,
                uid: u64::from(st.st_uid),
                gid: u64::from(st.st_gid),
                mtime: mtime.0,
                mtime_nsec: mtime.1.clamp(0, 999_999_999) as u32,
                dev_major: rustix::fs::major(rdev),
                dev_minor: rustix::fs::minor(rdev),
            },
        }
    }

    fn from_std(meta: &std::fs::Metadata) -> Inode {
        use std::os::unix::fs::MetadataExt;
        Inode {
            file_type: FileType::from_raw_mode(meta.mode()),
            size: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
            nlink: meta.nlink(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            meta: Meta::from_std(meta),
        }
    }
}

/// What to call a file type in a message.
pub(crate) fn type_name(file_type: FileType) -> &'static str {
    match file_type {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "unknown file type",
    }
}

/// Directories are opened without following a symlink in their place.
const DIR_FLAGS: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);
/// Directories held open at most; a shallower one is closed and, when the walk climbs back to
/// it, reopened through its child's `..` and checked to be the same directory. This bounds the
/// descriptors of a tree thousands of levels deep.
const OPEN_LEVELS: usize = 64;
/// The getdents buffer.
const DIRENT_BUFFER: usize = 32 << 10;

/// A directory's names, sorted byte-wise, each followed by a NUL in one buffer: an entry costs
/// its name's length plus 5 bytes.
#[derive(Default)]
struct Names {
    bytes: Vec<u8>,
    starts: Vec<u32>,
}

impl Names {
    fn read(dir: BorrowedFd<'_>, buf: &mut [MaybeUninit<u8>]) -> io::Result<Names> {
        let mut names = Names::default();
        let mut entries = RawDir::new(dir, buf);
        while let Some(entry) = entries.next() {
            let entry = entry?;
            let name = entry.file_name().to_bytes_with_nul();
            if name == b".\0" || name == b"..\0" {
                continue;
            }
            let start = u32::try_from(names.bytes.len())
                .map_err(|_| io::Error::other("more than 4 GiB of names in one directory"))?;
            names.starts.push(start);
            names.bytes.extend_from_slice(name);
        }
        // Each name ends in a NUL, which sorts before every other byte, and the names of one
        // directory differ: comparing the rest of the buffer orders them as the names.
        let bytes = &names.bytes;
        names.starts.sort_unstable_by(|&a, &b| bytes[a as usize..].cmp(&bytes[b as usize..]));
        Ok(names)
    }

    fn len(&self) -> usize {
        self.starts.len()
    }

    fn get(&self, i: usize) -> &CStr {
        CStr::from_bytes_until_nul(&self.bytes[self.starts[i] as usize..]).expect("names end in a NUL")
    }
}

/// One directory being listed.
struct Level {
    /// None while closed to bound the open descriptors (never the deepest level).
    dir: Option<Arc<OwnedFd>>,
    /// Its (dev, ino), to check a reopened directory against.
    id: (u64, u64),
    names: Names,
    next: usize,
    /// The length of the directory's own path below the root.
    prefix: usize,
}

/// An entry the tree walk found.
struct Found {
    inode: Inode,
    /// The directory that holds it; None for the root.
    parent: Option<Arc<OwnedFd>>,
    /// A directory's own descriptor.
    own: Option<Arc<OwnedFd>>,
}

/// The depth-first walk over descriptors, sorted byte-wise within each directory.
struct Tree {
    root: PathBuf,
    levels: Vec<Level>,
    /// The current entry's path below the root ("" for the root).
    rel: Vec<u8>,
    /// The current entry's name, NUL-terminated.
    name: Vec<u8>,
    buf: Vec<MaybeUninit<u8>>,
    /// The root, returned before its contents.
    root_found: Option<Found>,
    /// Names directly under the root to leave out.
    omit: Vec<Vec<u8>>,
}

impl Tree {
    fn new(root: &Path) -> Result<Tree> {
        let fd = match rustix::fs::open(root, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOTDIR | Errno::LOOP) => return Err(Error::unsuitable(root, "not a directory")),
            Err(e) => return Err(Error::io("open", root, e)),
        };
        let inode = Inode::from_stat(&rustix::fs::fstat(&fd).at("fstat", root)?);
        let mut buf = vec![MaybeUninit::uninit(); DIRENT_BUFFER];
        let names = Names::read(fd.as_fd(), &mut buf).at("read directory", root)?;
        let fd = Arc::new(fd);
        Ok(Tree {
            root: root.to_path_buf(),
            levels: vec![Level {
                dir: Some(fd.clone()),
                id: (inode.dev, inode.ino),
                names,
                next: 0,
                prefix: 0,
            }],
            rel: Vec::new(),
            name: Vec::new(),
            buf,
            root_found: Some(Found { inode, parent: None, own: Some(fd) }),
            omit: Vec::new(),
        })
    }

    /// The full path of the entry at `rel[..len]`, for messages and errors.
    fn path_of(&self, len: usize) -> PathBuf {
        if len == 0 { self.root.clone() } else { self.root.join(OsStr::from_bytes(&self.rel[..len])) }
    }

    fn path(&self) -> PathBuf {
        self.path_of(self.rel.len())
    }

    fn next(&mut self) -> Option<Result<Found>> {
        if let Some(root) = self.root_found.take() {
            return Some(Ok(root));
        }
        loop {
            let depth = self.levels.len();
            let level = self.levels.last_mut()?;
            if level.next == level.names.len() {
                if let Err(e) = self.climb() {
                    return Some(Err(e));
                }
                continue;
            }
            let name = level.names.get(level.next);
            level.next += 1;
            self.name.clear();
            self.name.extend_from_slice(name.to_bytes_with_nul());
            self.rel.truncate(level.prefix);
            if level.prefix > 0 {
                self.rel.push(b'/');
            }
            self.rel.extend_from_slice(name.to_bytes());
            if depth == 1 && self.omit.iter().any(|n| n.as_slice() == name.to_bytes()) {
                continue;
            }
            let dir = level.dir.clone().expect("the deepest level is open");
            return Some(self.visit(dir));
        }
    }

    /// Stats the current entry in `dir`; a directory is opened and listed, and becomes the
    /// deepest level.
    fn visit(&mut self, dir: Arc<OwnedFd>) -> Result<Found> {
        let name = CStr::from_bytes_with_nul(&self.name).expect("NUL-terminated");
        let st =
            rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW).at_with("lstat", || self.path())?;
        let inode = Inode::from_stat(&st);
        if inode.file_type != FileType::Directory {
            return Ok(Found { inode, parent: Some(dir), own: None });
        }
        let fd = match rustix::fs::openat(&*dir, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOTDIR | Errno::LOOP) => {
                return Err(Error::changed(self.path(), "a directory was replaced by another file type"));
            }
            Err(e) => return Err(Error::io("open directory", self.path(), e)),
        };
        // The metadata of what was opened, in case the name was swapped since the lstat.
        let inode = Inode::from_stat(&rustix::fs::fstat(&fd).at_with("fstat", || self.path())?);
        let names = Names::read(fd.as_fd(), &mut self.buf).at_with("read directory", || self.path())?;
        let fd = Arc::new(fd);
        self.levels.push(Level {
            dir: Some(fd.clone()),
            id: (inode.dev, inode.ino),
            names,
            next: 0,
            prefix: self.rel.len(),
        });
        if let Some(shallow) = self.levels.len().checked_sub(OPEN_LEVELS + 1) {
            self.levels[shallow].dir = None;
        }
        Ok(Found { inode, parent: Some(dir), own: Some(fd) })
    }

    /// Leaves the deepest directory, reopening its parent if that was closed. A failure ends
    /// the walk.
    fn climb(&mut self) -> Result<()> {
        let done = self.levels.pop().expect("a level to leave");
        let Some(parent) = self.levels.last() else { return Ok(()) };
        if parent.dir.is_some() {
            return Ok(());
        }
        let (id, prefix) = (parent.id, parent.prefix);
        let child = done.dir.expect("the deepest level is open");
        let reopened = rustix::fs::openat(&*child, c"..", DIR_FLAGS, Mode::empty())
            .and_then(|fd| rustix::fs::fstat(&fd).map(|st| (fd, Inode::from_stat(&st))));
        let result = match reopened {
            Ok((fd, now)) if (now.dev, now.ino) == id => {
                self.levels.last_mut().expect("the parent level").dir = Some(Arc::new(fd));
                return Ok(());
            }
            Ok((_, now)) => {
                Err(Error::changed(self.path_of(prefix), format!("moved (inode {} -> {})", id.1, now.ino)))
            }
            Err(e) => Err(Error::io("open directory", self.path_of(prefix), e)),
        };
        self.levels.clear();
        result
    }
}

/// Lists a tree in depth-first order, sorted byte-wise within each directory, so the same tree
/// always gives the same archive.
pub(crate) struct Walk {
    tree: Tree,
    naming: Naming,
    /// The first name seen for each multiply-linked inode; later names become tar hardlinks.
    first_names: HashMap<(u64, u64), Vec<u8>>,
    skipped: Skipped,
    /// The archives being written (dev, ino), never archived into themselves.
    archives: Vec<(u64, u64)>,
    /// The `/proc/self/fd/N/NAME` path an entry's extended attributes are read through.
    xattr_path: Vec<u8>,
}

impl Walk {
    pub(crate) fn new(root: &Path, naming: Naming, skipped: Skipped) -> Result<Walk> {
        Ok(Walk {
            tree: Tree::new(root)?,
            naming,
            first_names: HashMap::new(),
            skipped,
            archives: outfile::being_written(),
            xattr_path: Vec::new(),
        })
    }

    /// Leaves out these entries directly under the root.
    pub(crate) fn omit(mut self, names: &[&[u8]]) -> Walk {
        self.tree.omit = names.iter().map(|n| n.to_vec()).collect();
        self
    }

    /// The member for one entry, or None for an entry that is not archived.
    fn member(&mut self, found: Found) -> Result<Option<Member>> {
        let Found { inode, parent, own } = found;
        let tree = &self.tree;
        if inode.file_type == FileType::Socket {
            self.skipped.push(tree.path());
            return Ok(None);
        }
        if inode.file_type == FileType::RegularFile && self.archives.contains(&(inode.dev, inode.ino)) {
            log::warn!("{}: file is the archive; not dumped", tree.path().display());
            return Ok(None);
        }
        let rel = tree.rel.as_slice();
        let mut name = match self.naming {
            Naming::DotSlash if rel.is_empty() => b".".to_vec(),
            Naming::DotSlash => [b"./", rel].concat(),
            Naming::Bare if rel.is_empty() => return Ok(None),
            Naming::BareWithRoot if rel.is_empty() => b".".to_vec(),
            Naming::Bare | Naming::BareWithRoot => rel.to_vec(),
        };
        let is_dir = inode.file_type == FileType::Directory;
        if is_dir && !name.ends_with(b"/") {
            name.push(b'/');
        }
        let at = match (&own, &parent) {
            (Some(dir), _) => At::Dir(dir.as_fd()),
            (None, Some(parent)) => At::Entry(parent, CStr::from_bytes_with_nul(&tree.name).expect("NUL")),
            (None, None) => unreachable!("only the root has no parent, and it is a directory"),
        };
        let path = || tree.path();
        if !is_dir && inode.nlink > 1 {
            let key = (inode.dev, inode.ino);
            if let Some(first) = self.first_names.get(&key) {
                let target = first.clone();
                let member = describe_at(at, &path, name, &inode, &mut self.xattr_path)?;
                return Ok(Some(Member { kind: Kind::HardLink(target), body: Body::None, ..member }));
            }
            self.first_names.insert(key, name.clone());
        }
        Ok(Some(describe_at(at, &path, name, &inode, &mut self.xattr_path)?))
    }
}

impl Iterator for Walk {
    type Item = Result<Member>;

    fn next(&mut self) -> Option<Result<Member>> {
        loop {
            let found = match self.tree.next()? {
                Ok(found) => found,
                Err(e) => return Some(Err(e)),
            };
            match self.member(found) {
                Ok(None) => continue,
                other => return other.transpose(),
            }
        }
    }
}

/// Where an entry is, to read its link target and extended attributes.
#[derive(Clone, Copy)]
enum At<'a> {
    /// An open directory.
    Dir(BorrowedFd<'a>),
    /// The entry of this name in this directory, not followed if it is a symlink.
    Entry(&'a Arc<OwnedFd>, &'a CStr),
}

/// The member named `name` for the file at `path`, whose lstat is `meta`.
pub(crate) fn describe(path: &Path, name: Vec<u8>, meta: &std::fs::Metadata) -> Result<Member> {
    let dir_path = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = rustix::fs::open(dir_path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .at("open directory", dir_path)?;
    let file_name = path.file_name().ok_or_else(|| Error::unsuitable(path, "not a file name"))?;
    let file_name =
        std::ffi::CString::new(file_name.as_bytes()).map_err(|_| Error::unsuitable(path, "NUL in name"))?;
    let dir = Arc::new(dir);
    describe_at(
        At::Entry(&dir, &file_name),
        &|| path.to_path_buf(),
        name,
        &Inode::from_std(meta),
        &mut Vec::new(),
    )
}

/// The member named `name` for the entry `at`, whose lstat is `inode`.
fn describe_at(
    at: At<'_>,
    path: &dyn Fn() -> PathBuf,
    name: Vec<u8>,
    inode: &Inode,
    xattr_path: &mut Vec<u8>,
) -> Result<Member> {
    let mut body = Body::None;
    let kind = match (inode.file_type, at) {
        (FileType::Directory, _) => Kind::Directory,
        (FileType::RegularFile, At::Entry(dir, _)) => {
            body = Body::File(SourceFile {
                path: path(),
                dir: dir.clone(),
                size: inode.size,
                dev: inode.dev,
                ino: inode.ino,
                mtime: inode.mtime,
            });
            Kind::Regular
        }
        (FileType::Symlink, At::Entry(dir, entry)) => {
            let target = rustix::fs::readlinkat(&**dir, entry, Vec::new()).at_with("readlink", path)?;
            Kind::Symlink(target.into_bytes())
        }
        (FileType::CharacterDevice, _) => Kind::CharDevice,
        (FileType::BlockDevice, _) => Kind::BlockDevice,
        (FileType::Fifo, _) => Kind::Fifo,
        _ => return Err(Error::unsuitable(path(), "unknown file type")),
    };
    let source = match at {
        At::Dir(fd) => XattrSource::Fd(fd),
        At::Entry(dir, entry) => {
            // No call reads an entry's extended attributes relative to a directory descriptor
            // on older kernels; procfs names the entry by its directory's descriptor instead.
            xattr_path.clear();
            write!(xattr_path, "/proc/self/fd/{}/", dir.as_raw_fd()).expect("writing to a Vec");
            xattr_path.extend_from_slice(entry.to_bytes_with_nul());
            XattrSource::Path(CStr::from_bytes_with_nul(xattr_path).expect("one NUL at the end"))
        }
    };
    let xattrs = read_xattrs(source).at_with("read extended attributes of", path)?;
    Ok(Member { name, meta: inode.meta, kind, body, xattrs })
}

/// The bytes of regular file data under `root`, each inode counted once: the total a progress
/// bar needs before the walk that archives them.
pub(crate) fn data_bytes(root: &Path) -> u64 {
    let Ok(mut tree) = Tree::new(root) else { return 0 };
    let mut seen = HashSet::new();
    let mut total = 0;
    while let Some(Ok(Found { inode, .. })) = tree.next() {
        if inode.file_type == FileType::RegularFile
            && (inode.nlink == 1 || seen.insert((inode.dev, inode.ino)))
        {
            total += inode.size;
        }
    }
    total
}

/// What extended attributes are read from.
#[derive(Clone, Copy)]
enum XattrSource<'a> {
    Fd(BorrowedFd<'a>),
    /// A path whose last component is not followed.
    Path(&'a CStr),
}

impl XattrSource<'_> {
    fn list_size(self) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::flistxattr_query(fd),
            XattrSource::Path(path) => rustix::fs::llistxattr_query(path),
        }
    }

    fn list(self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::flistxattr(fd, buf),
            XattrSource::Path(path) => rustix::fs::llistxattr(path, buf),
        }
    }

    fn value_size(self, name: &OsStr) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
            XattrSource::Path(path) => rustix::fs::lgetxattr_query(path, name),
        }
    }

    fn value(self, name: &OsStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::fgetxattr(fd, name, buf),
            XattrSource::Path(path) => rustix::fs::lgetxattr(path, name, buf),
        }
    }
}

/// Every extended attribute of `source`, sorted by name.
fn read_xattrs(source: XattrSource<'_>) -> rustix::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = loop {
        let size = match source.list_size() {
            Ok(0) | Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Ok(size) => size,
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; size];
        match source.list(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                break buf;
            }
            // The list grew between the two calls.
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    };
    let mut xattrs = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let os_name = OsStr::from_bytes(name);
        let value = loop {
            let size = match source.value_size(os_name) {
                Ok(size) => size,
                // Removed since it was listed.
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(e),
            };
            let mut buf = vec![0u8; size];
            match source.value(os_name, &mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    break Some(buf);
                }
                Err(Errno::RANGE) => continue,
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(e),
            }
        };
        if let Some(value) = value {
            xattrs.push((name.to_vec(), value));
        }
    }
    xattrs.sort();
    Ok(xattrs)
}
