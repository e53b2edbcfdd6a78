//! Where an archive goes. A regular file (or a name that does not exist yet) is replaced only
//! when the archive is complete: written unnamed (O_TMPFILE) or under a hidden temporary name
//! in the target's directory, synced, then linked or renamed into place, so a failure or a kill
//! leaves the previous file, if any, untouched. A character device or a fifo is written into
//! as a stream, never replaced. Archives hold process memory: every file is created 0600.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, RawDir, RenameFlags};
use rustix::io::Errno;

use crate::error::{Context, Error, Result};
use crate::sys::temp;

/// The mode of every archive: it holds process memory (podman writes its archives 0600 too).
const ARCHIVE_MODE: Mode = Mode::RUSR.union(Mode::WUSR);

/// Set to 1, export writes under a temporary name as where O_TMPFILE is unsupported (NFS): a
/// test and debug knob.
pub(crate) const NO_TMPFILE_VAR: &str = "CKPT_NO_TMPFILE";

/// The archives (dev, ino) this process is writing; walks leave them out.
static WRITING: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// The archives being written now, as (dev, ino).
pub(crate) fn being_written() -> Vec<(u64, u64)> {
    WRITING.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Marks a file as an archive being written for as long as it lives, so that no walk archives
/// the archive into itself.
pub(crate) struct Writing((u64, u64));

impl Writing {
    pub(crate) fn new(dev: u64, ino: u64) -> Writing {
        WRITING.lock().unwrap_or_else(|e| e.into_inner()).push((dev, ino));
        Writing((dev, ino))
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        let mut writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = writing.iter().position(|id| *id == self.0) {
            writing.swap_remove(i);
        }
    }
}

/// What an archive's path names.
pub(crate) enum Destination {
    /// A regular file, or nothing yet: replaced atomically when complete.
    Replace(OutFile),
    /// A character device or a fifo, written into front to back.
    Stream(File),
}

impl Destination {
    /// Opens `target` for an archive. A symlink is followed: to a device or fifo, which is
    /// written into, or to a regular file (or nothing), which is replaced where the chain of
    /// links ends. Directories, block devices and sockets are refused.
    pub(crate) fn open(target: &Path) -> Result<Destination> {
        let meta = match std::fs::symlink_metadata(target) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return OutFile::create(target, None).map(Destination::Replace);
            }
            Err(e) => return Err(Error::io("lstat", target, e)),
        };
        let file_type = meta.file_type();
        if file_type.is_file() {
            return OutFile::create(target, Some(&meta)).map(Destination::Replace);
        }
        if !file_type.is_symlink() {
            return stream(target, &meta, OFlags::NOFOLLOW);
        }
        match std::fs::metadata(target) {
            // A dangling link: the archive is created where it points, as tar does.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                OutFile::create(&resolve(target)?, None).map(Destination::Replace)
            }
            Err(e) => Err(Error::io("stat", target, e)),
            Ok(followed) if followed.is_file() => {
                let end = resolve(target)?;
                // A link in /proc names an open file rather than a path: replace only a path
                // that leads to the very file the link does.
                match std::fs::symlink_metadata(&end) {
                    Ok(m) if m.is_file() && (m.dev(), m.ino()) == (followed.dev(), followed.ino()) => {
                        OutFile::create(&end, Some(&m)).map(Destination::Replace)
                    }
                    _ => Err(Error::refused(
                        target,
                        "a symlink to a regular file that has no path to replace it at",
                    )),
                }
            }
            Ok(followed) => stream(target, &followed, OFlags::empty()),
        }
    }
}

/// Opens a character device or fifo for writing; refuses every other non-regular file.
fn stream(target: &Path, meta: &std::fs::Metadata, flags: OFlags) -> Result<Destination> {
    let file_type = meta.file_type();
    if file_type.is_dir() {
        return Err(Error::unsuitable(target, "is a directory"));
    }
    if !file_type.is_char_device() && !file_type.is_fifo() {
        let what = if file_type.is_block_device() { "block device" } else { "socket" };
        return Err(Error::refused(target, format!("is a {what}: refusing to write an archive onto it")));
    }
    // A fifo's open waits for a reader, as with any writer.
    let fd =
        rustix::fs::open(target, OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOCTTY | flags, Mode::empty())
            .at("open", target)?;
    let now = FileType::from_raw_mode(rustix::fs::fstat(&fd).at("fstat", target)?.st_mode);
    if now != FileType::CharacterDevice && now != FileType::Fifo {
        return Err(Error::unsuitable(target, "changed while being opened: no longer a device or fifo"));
    }
    Ok(Destination::Stream(File::from(fd)))
}

/// The path a chain of symlinks ends at (which may not exist yet).
fn resolve(target: &Path) -> Result<PathBuf> {
    let mut path = target.to_path_buf();
    // The kernel's limit on links followed in one lookup.
    for _ in 0..40 {
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&path).at("readlink", &path)?;
                path = match path.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            _ => return Ok(path),
        }
    }
    Err(Error::io("resolve", target, Errno::LOOP))
}

pub(crate) struct OutFile {
    file: File,
    dir: OwnedFd,
    target: PathBuf,
    name: OsString,
    /// Set when the file had to be created under a temporary name.
    temp_name: Option<OsString>,
    /// The new file and the one it replaces, kept out of the walk.
    _writing: Vec<Writing>,
}

impl OutFile {
    /// Creates the unnamed file that will replace `target` (whose lstat is `existing`, if it
    /// exists), after removing what killed exports left in its directory.
    fn create(target: &Path, existing: Option<&std::fs::Metadata>) -> Result<OutFile> {
        let name =
            target.file_name().ok_or_else(|| Error::unsuitable(target, "not a file name"))?.to_os_string();
        let dir_path = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir =
            rustix::fs::open(dir_path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .at("open directory", dir_path)?;
        remove_stale_temps(&dir, dir_path);
        let flags = OFlags::RDWR | OFlags::CLOEXEC;
        let unnamed = if std::env::var_os(NO_TMPFILE_VAR).is_some_and(|v| v == "1") {
            Err(Errno::OPNOTSUPP)
        } else {
            rustix::fs::openat(&dir, ".", flags | OFlags::TMPFILE, ARCHIVE_MODE)
        };
        let (fd, temp_name) = match unnamed {
            Ok(fd) => (fd, None),
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => {
                let temp_name = temp_name_for(&name);
                let fd =
                    rustix::fs::openat(&dir, &temp_name, flags | OFlags::CREATE | OFlags::EXCL, ARCHIVE_MODE)
                        .at("create", &dir_path.join(&temp_name))?;
                (fd, Some(temp_name))
            }
            Err(e) => return Err(Error::io("open O_TMPFILE in", dir_path, e)),
        };
        let file = File::from(fd);
        let mut out =
            OutFile { file, dir, target: target.to_path_buf(), name, temp_name, _writing: Vec::new() };
        // The umask may have taken bits from the mode asked for; 0600 is the mode either way.
        rustix::fs::fchmod(&out.file, ARCHIVE_MODE).at("chmod", target)?;
        // Held until the process ends: another ckpt removes a temporary file only when it can
        // take this lock (see remove_stale_temps). Filesystems without locks keep theirs.
        let _ = rustix::fs::flock(&out.file, FlockOperation::NonBlockingLockExclusive);
        let st = rustix::fs::fstat(&out.file).at("fstat", target)?;
        #[allow(clippy::unnecessary_cast)] // field types differ between targets
        out._writing.push(Writing::new(st.st_dev as u64, st.st_ino as u64));
        if let Some(meta) = existing {
            out._writing.push(Writing::new(meta.dev(), meta.ino()));
        }
        Ok(out)
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Syncs the data and gives the file its name, replacing any previous file atomically.
    pub(crate) fn commit(mut self) -> Result<()> {
        self.file.sync_all().at("fsync", &self.target)?;
        let temp_name = match self.temp_name.take() {
            Some(temp) => temp,
            None => {
                let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&self.file));
                let link = |name: &OsStr| {
                    rustix::fs::linkat(
                        rustix::fs::CWD,
                        proc_path.as_str(),
                        &self.dir,
                        name,
                        AtFlags::SYMLINK_FOLLOW,
                    )
                };
                match link(&self.name) {
                    Ok(()) => return self.sync_dir(),
                    // Replace the existing file by renaming over it, never by writing into it.
                    Err(Errno::EXIST) => {
                        let temp = temp_name_for(&self.name);
                        link(&temp).at("link", &self.target)?;
                        temp
                    }
                    Err(e) => return Err(Error::io("link", &self.target, e)),
                }
            }
        };
        if let Err(e) =
            rustix::fs::renameat_with(&self.dir, &temp_name, &self.dir, &self.name, RenameFlags::empty())
        {
            let _ = rustix::fs::unlinkat(&self.dir, &temp_name, AtFlags::empty());
            return Err(Error::io("rename", &self.target, e));
        }
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<()> {
        rustix::fs::fsync(self.dir.as_fd()).at("fsync directory of", &self.target)
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        if let Some(temp) = &self.temp_name {
            let _ = rustix::fs::unlinkat(&self.dir, temp, AtFlags::empty());
        }
    }
}

/// A temporary name for `name` in its directory.
pub(crate) fn temp_name_for(name: &OsStr) -> OsString {
    OsString::from_vec(temp::name_for(name.as_bytes()))
}

/// Removes the temporary files that killed ckpt processes left in `dir` (which nothing else
/// would ever remove where O_TMPFILE is unsupported): names made by [`temp_name_for`] whose
/// process is gone and whose lock no process holds (the lock also covers a writer in another
/// pid namespace). Best effort: what cannot be checked is left alone.
pub(crate) fn remove_stale_temps(dir: &OwnedFd, dir_path: &Path) {
    let mut buf = vec![MaybeUninit::uninit(); 16 << 10];
    let mut stale: Vec<CString> = Vec::new();
    let mut entries = RawDir::new(dir.as_fd(), &mut buf);
    while let Some(Ok(entry)) = entries.next() {
        let name = entry.file_name();
        if temp::pid_of(name.to_bytes()).is_some_and(temp::writer_gone) {
            stale.push(name.to_owned());
        }
    }
    for name in stale {
        if unlocked_regular_file(dir, &name) {
            match rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::empty()) {
                Ok(()) => log::info!(
                    "{}: removed, left behind by a ckpt that was killed",
                    dir_path.join(OsStr::from_bytes(name.to_bytes())).display()
                ),
                Err(e) => log::debug!("{}: not removed: {e}", dir_path.display()),
            }
        }
    }
}

fn unlocked_regular_file(dir: &OwnedFd, name: &CStr) -> bool {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let Ok(fd) = rustix::fs::openat(dir, name, flags, Mode::empty()) else { return false };
    rustix::fs::fstat(&fd).is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
        && rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok()
}
