//! An output file that appears under its name only when complete: written unnamed (O_TMPFILE)
//! or under a hidden temporary name in the target's directory, synced, then linked or renamed
//! into place. A failure or a kill leaves the previous file, if any, untouched.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::error::{Context, Error, Result};

pub struct OutFile {
    file: File,
    dir: OwnedFd,
    target: PathBuf,
    name: OsString,
    /// Set when the file had to be created under a temporary name.
    temp_name: Option<OsString>,
}

impl OutFile {
    pub fn create(target: &Path) -> Result<OutFile> {
        let name =
            target.file_name().ok_or_else(|| Error::invalid(target, "not a file name"))?.to_os_string();
        let dir_path = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir =
            rustix::fs::open(dir_path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .at("open directory", dir_path)?;
        if let Ok(meta) = std::fs::symlink_metadata(target)
            && meta.is_dir()
        {
            return Err(Error::invalid(target, "is a directory"));
        }
        let mode = Mode::from_bits_truncate(0o666);
        let flags = OFlags::RDWR | OFlags::CLOEXEC;
        match rustix::fs::openat(&dir, ".", flags | OFlags::TMPFILE, mode) {
            Ok(fd) => {
                Ok(OutFile { file: File::from(fd), dir, target: target.to_path_buf(), name, temp_name: None })
            }
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => {
                let temp_name = temp_name_for(&name);
                let fd = rustix::fs::openat(&dir, &temp_name, flags | OFlags::CREATE | OFlags::EXCL, mode)
                    .at("create", &dir_path.join(&temp_name))?;
                Ok(OutFile {
                    file: File::from(fd),
                    dir,
                    target: target.to_path_buf(),
                    name,
                    temp_name: Some(temp_name),
                })
            }
            Err(e) => Err(Error::io("open O_TMPFILE in", dir_path, e)),
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Syncs the data and gives the file its name, replacing any previous file atomically.
    pub fn commit(mut self) -> Result<()> {
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

fn temp_name_for(name: &OsStr) -> OsString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut temp = OsString::from(".");
    temp.push(OsStr::from_bytes(&name.as_bytes()[..name.len().min(200)]));
    temp.push(format!(".ckpt-{}-{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    temp
}
