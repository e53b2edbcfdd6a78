//! Feeding podman's own `container restore --import` through named pipes, so that podman
//! makes the new container from the archive's `config.dump` itself while ckpt moves the data
//! in.
//!
//! Podman 4.3 opens its `--import` path several times (libpod's `CRGetRuntimeFromArchive`,
//! `CRImportCheckpointConfigOnly`, then `CRImportCheckpointWithoutConfig`): twice for
//! `config.dump` and `spec.dump`, before it makes the container, and once the container exists,
//! to extract the rest into its userdata dir, before it mounts the rootfs. The path is a
//! symlink to a named pipe. A read that opens it before the container exists is given a tar of
//! the two dumps; the first read after is given just the end of an archive, once ckpt has
//! moved the checkpoint and the rootfs changes into the container. Before a read's last block
//! is written the symlink is pointed at a fresh pipe: podman cannot finish that read before the
//! block, so its next open never lands in a pipe whose reader it is still closing.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::fs::{CWD, FileType, Mode, OFlags};

use crate::error::{Context, Error, Result};
use crate::tar::BLOCK;

use super::Scratch;

/// What ends a tar archive.
const END: [u8; 2 * BLOCK as usize] = [0; 2 * BLOCK as usize];
/// A header block no tar reader accepts (its checksum is wrong): podman's extraction fails
/// on it, before anything of the container is mounted or run.
const BROKEN: [u8; BLOCK as usize] = [0xff; BLOCK as usize];
/// Reads of the dumps allowed before the container must exist (podman 4.3 makes two).
const MAX_EARLY_READS: usize = 8;
/// How often the pipe is tried while podman has not opened it.
const POLL: Duration = Duration::from_millis(1);

/// The private directory holding the symlink podman is given and the pipes behind it.
pub(super) struct Handoff {
    dir: Scratch,
    link: PathBuf,
    /// What the symlink points at.
    target: PathBuf,
    pipes: usize,
}

impl Handoff {
    /// A handoff in a private directory in `dir`.
    pub(super) fn new(dir: &Path) -> Result<Handoff> {
        let dir = Scratch::create(dir, "import")?;
        let link = dir.path.join("checkpoint.tar");
        let mut handoff = Handoff { dir, link, target: PathBuf::new(), pipes: 0 };
        handoff.target = handoff.new_pipe()?;
        rustix::fs::symlink(&handoff.target, &handoff.link).at("symlink", &handoff.link)?;
        let ended = handoff.ended();
        std::fs::write(&ended, END).at("write", &ended)?;
        Ok(handoff)
    }

    /// The path to give podman as its `--import` archive.
    pub(super) fn path(&self) -> &Path {
        &self.link
    }

    /// Serves podman's reads of the archive until it has read for the container's userdata
    /// dir, or has exited (`exited`). When podman opens the path, `made` says whether the
    /// container exists yet and, if it does, moves the data in: `None` while it does not (the
    /// read gets `dumps`, a tar of `config.dump` and `spec.dump` without its end), then its
    /// result, after which the read gets the archive's end, or on an error a broken header
    /// that fails podman's restore. `None` if podman exited first.
    pub(super) fn serve<T>(
        &mut self,
        dumps: &[u8],
        exited: &AtomicBool,
        mut made: impl FnMut() -> Result<Option<T>>,
    ) -> Result<Option<Result<T>>> {
        for _ in 0..MAX_EARLY_READS {
            let current = self.target.clone();
            let Some(mut pipe) = wait_for_reader(&current, exited)? else { return Ok(None) };
            match made() {
                Ok(None) => {
                    let next = self.new_pipe()?;
                    let served = pipe.write_all(dumps).and_then(|()| {
                        self.point_at(&next).map_err(std::io::Error::other)?;
                        pipe.write_all(&END)
                    });
                    // A reader that stopped early is podman failing; its exit says why.
                    if let Err(e) = served {
                        log::debug!("podman stopped reading {}: {e}", current.display());
                    }
                }
                Ok(Some(done)) => {
                    self.end(&mut pipe, &END);
                    return Ok(Some(Ok(done)));
                }
                Err(e) => {
                    self.end(&mut pipe, &BROKEN);
                    return Ok(Some(Err(e)));
                }
            }
        }
        if let Some(mut pipe) = wait_for_reader(&self.target.clone(), exited)? {
            self.end(&mut pipe, &BROKEN);
        }
        Err(Error::Runtime {
            command: format!("podman container restore --import {}", self.link.display()),
            reason: format!("read its archive {MAX_EARLY_READS} times and had still not made the container"),
        })
    }

    /// Leaves podman nothing to wait for after `serve` failed: the path reads as an empty
    /// archive, and a read already blocked in opening a pipe is let through, to read it
    /// ended.
    pub(super) fn abandon(&mut self) {
        if let Err(e) = self.point_at(&self.ended()) {
            log::warn!("{e}");
        }
        for pipe in 0..self.pipes {
            let path = self.dir.path.join(format!("pipe-{pipe}"));
            drop(rustix::fs::open(&path, OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty()));
        }
    }

    /// Writes the last bytes of podman's last read; any later open reads an empty archive.
    fn end(&mut self, pipe: &mut File, last: &[u8]) {
        if let Err(e) = self.point_at(&self.ended()) {
            log::warn!("{e}");
        }
        if let Err(e) = pipe.write_all(last) {
            log::debug!("podman stopped reading {}: {e}", self.link.display());
        }
    }

    fn ended(&self) -> PathBuf {
        self.dir.path.join("ended.tar")
    }

    fn new_pipe(&mut self) -> Result<PathBuf> {
        let path = self.dir.path.join(format!("pipe-{}", self.pipes));
        self.pipes += 1;
        rustix::fs::mknodat(CWD, &path, FileType::Fifo, Mode::from_raw_mode(0o600), 0).at("mkfifo", &path)?;
        Ok(path)
    }

    /// Points the symlink at `target`, atomically.
    fn point_at(&mut self, target: &Path) -> Result<()> {
        let new = self.dir.path.join("checkpoint.tar.new");
        rustix::fs::symlink(target, &new).at("symlink", &new)?;
        rustix::fs::rename(&new, &self.link).at("rename", &self.link)?;
        self.target = target.to_path_buf();
        Ok(())
    }
}

/// The write end of the pipe at `path` once a reader has opened it (a reader blocked in its
/// open counts), or `None` once `exited` is set.
fn wait_for_reader(path: &Path, exited: &AtomicBool) -> Result<Option<File>> {
    loop {
        match rustix::fs::open(path, OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => {
                rustix::fs::fcntl_setfl(&fd, OFlags::empty()).at("fcntl", path)?;
                return Ok(Some(File::from(fd)));
            }
            Err(rustix::io::Errno::NXIO) if !exited.load(Ordering::Acquire) => std::thread::sleep(POLL),
            Err(rustix::io::Errno::NXIO) => return Ok(None),
            Err(e) => return Err(Error::io("open", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A tar of `names`, each holding its own name, without the end of the archive.
    fn dumps(names: &[&str]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for name in names {
            let mut header = tar::Header::new_ustar();
            header.set_size(name.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            builder.append_data(&mut header, name, name.as_bytes()).unwrap();
        }
        let mut tar = builder.into_inner().unwrap();
        tar.truncate(tar.len() - END.len());
        tar
    }

    fn read_all(path: &Path) -> Vec<u8> {
        let mut data = Vec::new();
        File::open(path).unwrap().read_to_end(&mut data).unwrap();
        data
    }

    fn names_in(tar: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar);
        archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect()
    }

    #[test]
    fn reads_before_the_container_exists_get_the_dumps_and_the_first_after_gets_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut handoff = Handoff::new(dir.path()).unwrap();
        let link = handoff.path().to_path_buf();
        let (exited, made) = (AtomicBool::new(false), AtomicBool::new(false));
        let dumps = dumps(&["config.dump", "spec.dump"]);
        std::thread::scope(|scope| {
            let podman = scope.spawn(|| {
                let early = [read_all(&link), read_all(&link)];
                made.store(true, Ordering::Release);
                let (late, later) = (read_all(&link), read_all(&link));
                exited.store(true, Ordering::Release);
                (early, late, later)
            });
            let served =
                handoff.serve(&dumps, &exited, || Ok(made.load(Ordering::Acquire).then_some("moved in")));
            assert_eq!(served.unwrap().unwrap().unwrap(), "moved in");
            let (early, late, later) = podman.join().unwrap();
            for read in early {
                assert_eq!(names_in(&read), ["config.dump", "spec.dump"]);
                assert!(read.ends_with(&END), "an early read ends as an archive does");
            }
            assert_eq!(late, END, "the read after the container is made gets only the end");
            assert_eq!(later, END, "a later read finds an empty archive, without blocking");
        });
    }

    #[test]
    fn a_failure_to_move_in_fails_podmans_read_of_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let mut handoff = Handoff::new(dir.path()).unwrap();
        let link = handoff.path().to_path_buf();
        let exited = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let podman = scope.spawn(|| {
                let read = read_all(&link);
                exited.store(true, Ordering::Release);
                read
            });
            let served = handoff.serve(b"", &exited, || -> Result<Option<()>> {
                Err(Error::refused("/layer", "not moved in (test)"))
            });
            assert!(served.unwrap().unwrap().is_err());
            let read = podman.join().unwrap();
            let mut archive = tar::Archive::new(&read[..]);
            assert!(archive.entries().unwrap().any(|e| e.is_err()), "podman's tar reader must fail");
        });
    }

    #[test]
    fn a_podman_that_exits_without_reading_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut handoff = Handoff::new(dir.path()).unwrap();
        let exited = AtomicBool::new(true);
        let served =
            handoff.serve(b"", &exited, || -> Result<Option<()>> { panic!("nothing opened the archive") });
        assert!(served.unwrap().is_none());
    }
}
