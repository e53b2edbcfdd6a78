//! Checkpoint and restore through a real podman: ckpt drives podman's command line for what
//! only podman can do (freeze the process with CRIU, keep its container database, restore the
//! process) and moves the data itself, by cloning, where podman would copy it twice through
//! tar.
//!
//! - Checkpoint: ckpt freezes the container's cgroup, so that CRIU, finding it frozen, does
//!   not wait for it to freeze. `podman container checkpoint --keep --export` has CRIU write
//!   its images into the container's userdata dir and podman write `config.dump` and
//!   `spec.dump` there (it writes them only when exporting). Podman's own archive is sent
//!   into a pipe that ckpt drains and discards, with the rootfs and volumes left out, so it
//!   costs one read of the CRIU images from the page cache. Once that export has ended, while podman cleans up,
//!   ckpt archives the userdata dir's checkpoint members, the rootfs changes from the layer's
//!   upper dir and each named volume's directory, as podman's export would; the archive is
//!   committed only if podman succeeds. The layer's first pass (the nested archive's length,
//!   its deletions) is made ahead, while CRIU dumps, and checked by the second.
//! - Restore into a new container on the host of the checkpoint's store: podman's own
//!   `container restore --import` makes the container from the archive's `config.dump` and
//!   `spec.dump`, which ckpt feeds it through a named pipe (see `handoff`); ckpt clones the
//!   checkpoint and the rootfs changes into a stage in the store meanwhile, and moves them
//!   into the container once podman has made it and before podman mounts its rootfs. Podman
//!   copies only the two dumps.
//! - Restore into a new container otherwise (another host's store, named volumes or secrets,
//!   which podman 4.3's import does not restore as ckpt does, or an image the store lacks):
//!   the archive's `config.dump` holds the command line that created the container
//!   (`CreateCommand`); ckpt replays it as `podman create`, gives the new container the
//!   archive's `spec.dump` as its runtime spec with the old container's paths made the new
//!   one's (as podman's own `restore --import` does), clones the checkpoint into the new
//!   userdata dir, the rootfs changes into the new upper dir and each named volume's contents
//!   into the new container's volume, and has podman restore the process (`podman container
//!   restore`).
//! - Rollback: the same container gets the archive's checkpoint and rootfs changes, built
//!   beside its own and swapped in with `renameat2(RENAME_EXCHANGE)`, then is restored.

mod checkpoint;
mod handoff;
mod replay;
mod restore;
mod stage;

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rustix::fs::{Mode, OFlags};
use serde_json::Value;

use crate::container::podman;
use crate::error::{Context, Error, Result};
use crate::export::ExportStats;
use crate::import::stats::ImportStats;
use crate::sys::temp;

/// The podman command line ckpt drives.
#[derive(Debug, Clone)]
pub struct Podman {
    program: OsString,
}

impl Default for Podman {
    fn default() -> Self {
        Podman::new()
    }
}

/// How `podman container checkpoint` is asked to checkpoint.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// Leave the container running after its checkpoint: it is restored from the
    /// checkpoint once its files are archived, so files and memory are of one moment.
    pub leave_running: bool,
    /// Keep everything podman wrote into the userdata dir (`--keep`).
    pub keep: bool,
    /// Checkpoint established TCP connections.
    pub tcp_established: bool,
    /// Checkpoint file locks.
    pub file_locks: bool,
    /// Leave the contents of the container's named volumes out of the archive.
    pub ignore_volumes: bool,
}

/// How `podman container restore` is asked to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore established TCP connections.
    pub tcp_established: bool,
    /// Restore file locks.
    pub file_locks: bool,
    /// `false` copies every byte instead of sharing it with the archive.
    pub share: bool,
    /// Leave the new container's named volumes as they are (created empty when missing)
    /// instead of putting the archive's contents of them back.
    pub ignore_volumes: bool,
}

/// Which container a checkpoint is restored into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreTarget {
    /// A new container made as the archive's `config.dump` says, named `name` (default: the
    /// checkpointed container's name).
    New {
        /// The new container's name.
        name: Option<String>,
    },
    /// The checkpointed container itself, rolled back to the checkpoint.
    Existing(String),
}

/// What a checkpoint did.
#[derive(Debug, Clone)]
pub struct CheckpointReport {
    /// The container's full ID.
    pub container: String,
    /// Seconds podman took to checkpoint (CRIU's dump and podman's own bookkeeping).
    pub podman_seconds: f64,
    /// The archive written.
    pub export: ExportStats,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The restored container's full ID.
    pub container: String,
    /// Seconds podman took to create the container and restore the process.
    pub podman_seconds: f64,
    /// The data restored from the archive.
    pub import: ImportStats,
}

/// The facts about a container that ckpt needs, from `podman container inspect`.
#[derive(Debug)]
struct Container {
    id: String,
    state: String,
    /// The userdata dir: podman's checkpoint bundle.
    bundle: PathBuf,
    /// The run dir podman keeps the container's pid file in (and `/etc/hosts`, ...).
    run_dir: Option<PathBuf>,
    /// The ID of the image the container's rootfs is made of.
    image: String,
    /// Its cgroup, from a hierarchy's root (empty when podman names none).
    cgroup: String,
    upper: PathBuf,
    lowers: Vec<PathBuf>,
    /// Named volumes mounted into the container.
    volumes: Vec<Volume>,
}

/// A named volume mounted into a container.
#[derive(Debug)]
struct Volume {
    name: String,
    /// The directory that holds its contents (empty when podman names none).
    dir: PathBuf,
    /// Where it is mounted in the container.
    dest: String,
}

impl Podman {
    /// `podman` from `PATH`, or the program named by `CKPT_PODMAN`.
    pub fn new() -> Podman {
        Podman { program: std::env::var_os("CKPT_PODMAN").unwrap_or_else(|| "podman".into()) }
    }

    fn inspect(&self, container: &str) -> Result<Container> {
        let out = self.run(&["container", "inspect", "--format", "json", container])?;
        let bad = |why: &str| self.refusal(container, format!("podman container inspect: {why}"));
        let value: Value = serde_json::from_str(&out).map_err(|_| bad("not JSON"))?;
        let c = value.get(0).ok_or_else(|| bad("no container"))?;
        let text = |pointer: &str| c.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string();
        let driver = text("/GraphDriver/Name");
        if driver != "overlay" {
            return Err(self.refusal(
                container,
                format!("uses the {driver:?} storage driver; ckpt reads overlay layers"),
            ));
        }
        let upper = text("/GraphDriver/Data/UpperDir");
        let bundle = text("/StaticDir");
        if upper.is_empty() || bundle.is_empty() {
            return Err(bad("no UpperDir or StaticDir"));
        }
        let lowers = text("/GraphDriver/Data/LowerDir");
        Ok(Container {
            id: text("/Id"),
            state: text("/State/Status"),
            bundle: bundle.into(),
            run_dir: Path::new(&text("/PidFile")).parent().map(Path::to_path_buf),
            image: text("/Image"),
            cgroup: text("/State/CgroupPath"),
            upper: upper.into(),
            lowers: lowers.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect(),
            volumes: c
                .get("Mounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|m| m.get("Type").and_then(Value::as_str) == Some("volume"))
                .map(|m| {
                    let text = |key: &str| m.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
                    Volume { name: text("Name"), dir: text("Source").into(), dest: text("Destination") }
                })
                .collect(),
        })
    }

    /// Runs podman with `args`; its standard output. A failure carries podman's message.
    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        self.start(args)?.wait()
    }

    /// Starts podman with `args`, its output captured.
    fn start<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Started> {
        let words: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
        let command = format!("{} {}", self.program.to_string_lossy(), words.join(" "));
        log::debug!("running {command}");
        let child = Command::new(&self.program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Runtime { command: command.clone(), reason: format!("cannot run: {e}") })?;
        Ok(Started { child, command })
    }

    fn refusal(&self, container: &str, reason: String) -> Error {
        Error::Runtime { command: format!("container {container}"), reason }
    }

    /// Removes a container ckpt made for a restore that then failed.
    fn remove(&self, id: &str) {
        if let Err(e) = self.run(&["rm", "-f", id]) {
            log::warn!("cannot remove the container made for the restore: {e}");
        }
    }
}

/// A podman command that is running.
struct Started {
    child: Child,
    command: String,
}

impl Started {
    /// Waits for podman to exit; its standard output. A failure carries podman's message.
    fn wait(self) -> Result<String> {
        let command = self.command;
        let output = self.child.wait_with_output().map_err(|e| Error::Runtime {
            command: command.clone(),
            reason: format!("cannot wait for it: {e}"),
        })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let message = stderr.trim().lines().last().unwrap_or("no message").to_string();
            return Err(Error::Runtime { command, reason: format!("{}: {message}", output.status) });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// A private directory in `dir`, `.ckpt-WHAT-PID`, removed with what it holds unless it was
/// swapped away. It is locked while this process lives, so that a later ckpt can tell one a
/// killed ckpt left behind (it may hold a checkpoint: process memory) and remove it.
struct Scratch {
    path: PathBuf,
    _lock: Option<OwnedFd>,
}

impl Scratch {
    fn create(dir: &Path, what: &str) -> Result<Scratch> {
        remove_stale_scratch(dir, what);
        let path = dir.join(format!(".ckpt-{what}-{}", std::process::id()));
        if std::fs::symlink_metadata(&path).is_ok() {
            std::fs::remove_dir_all(&path).at("remove stale", &path)?;
        }
        rustix::fs::mkdir(&path, Mode::from_raw_mode(0o700)).at("mkdir", &path)?;
        // Filesystems without locks keep what killed processes left.
        let lock = lock_dir(&path);
        Ok(Scratch { path, _lock: lock })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes the `.ckpt-WHAT-PID` directories in `dir` whose process is gone and whose lock no
/// process holds (the lock also covers a ckpt in another pid namespace). Best effort.
fn remove_stale_scratch(dir: &Path, what: &str) {
    let prefix = format!(".ckpt-{what}-");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let pid = pid.parse().ok().filter(|_| pid.bytes().all(|b| b.is_ascii_digit()));
        let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) else { continue };
        let path = entry.path();
        if temp::writer_gone(pid) && lock_dir(&path).is_some() {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => log::info!("{}: removed, left behind by a ckpt that was killed", path.display()),
                Err(e) => log::debug!("{}: not removed: {e}", path.display()),
            }
        }
    }
}

/// The directory `path` (not a symlink to one), locked exclusively; `None` if it cannot be.
fn lock_dir(path: &Path) -> Option<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty()).ok()?;
    rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(fd)
}

/// Podman 4.3's own export means to remove the rootfs-diff.tar and deleted.files it writes
/// into the userdata dir, but does not (libpod's exportCheckpoint assigns the list to a
/// shadowed variable). Left from an earlier export they are stale, and
/// `podman container restore` would apply them over the container's layer.
fn remove_stale_rootfs_diff(bundle: &Path) -> Result<()> {
    for name in [podman::ROOTFS_DIFF, podman::DELETED_FILES] {
        let path = bundle.join(OsStr::from_bytes(name));
        match std::fs::remove_file(&path) {
            Ok(()) => log::debug!("{}: removed, left by an earlier podman export", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", path, e)),
        }
    }
    Ok(())
}

/// The flags that ask CRIU, through podman, to keep established TCP connections and file
/// locks: the same for a checkpoint and its restore.
fn criu_flags<'a>(tcp_established: bool, file_locks: bool) -> impl Iterator<Item = &'a str> {
    [(tcp_established, "--tcp-established"), (file_locks, "--file-locks")]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_dir_of_a_killed_ckpt_is_removed_and_a_locked_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let gone_pid = || {
            let mut child = Command::new("true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            pid
        };
        let stale = dir.path().join(format!(".ckpt-restore-{}", gone_pid()));
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("pages-1.img"), b"process memory").unwrap();
        // A ckpt of a gone process ID, alive in another pid namespace, holds its lock.
        let locked = dir.path().join(format!(".ckpt-restore-{}", gone_pid()));
        std::fs::create_dir(&locked).unwrap();
        let _lock = lock_dir(&locked).unwrap();

        let scratch = Scratch::create(dir.path(), "restore").unwrap();
        assert!(!stale.exists(), "the killed ckpt's scratch dir is still there");
        assert!(locked.exists(), "a locked scratch dir was removed");
        assert!(scratch.path.is_dir());
        drop(scratch);
        assert!(locked.exists());
    }
}
