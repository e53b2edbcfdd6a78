//! Checkpoint and restore through a real podman: ckpt drives podman's command line for what
//! only podman can do (freeze the process with CRIU, keep its container database, restore the
//! process) and moves the data itself, by cloning, where podman would copy it twice through
//! tar.
//!
//! - Checkpoint: `podman container checkpoint --keep --export` has CRIU write its images into
//!   the container's userdata dir and podman write `config.dump` and `spec.dump` there (it
//!   writes them only when exporting). Podman's own archive is sent into a pipe that ckpt
//!   drains and discards, with the rootfs and volumes left out, so it costs one read of the
//!   CRIU images from the page cache. ckpt then archives the userdata dir's checkpoint
//!   members and the rootfs changes from the layer's upper dir.
//! - Restore into a new container: the archive's `config.dump` holds the command line that
//!   created the container (`CreateCommand`); ckpt replays it as `podman create`, makes podman
//!   write the new container's runtime spec (`podman init`, `podman stop`), refuses if that
//!   spec differs from the archive's `spec.dump` where it matters to the process, clones the
//!   checkpoint into the new userdata dir and the rootfs changes into the new upper dir, and
//!   has podman restore the process (`podman container restore`).
//! - Rollback: the same container gets the archive's checkpoint and rootfs changes, built
//!   beside its own and swapped in with `renameat2(RENAME_EXCHANGE)`, then is restored.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use rustix::fs::{Mode, OFlags, RenameFlags};
use serde_json::Value;

use crate::container::podman::{self, Rootfs};
use crate::error::{Context, Error, Result};
use crate::export::{ExportStats, Exporter};
use crate::import::Importer;
use crate::import::extract::ImportStats;
use crate::tar::archive;
use crate::tar::reader::Reader;

/// What podman leaves in the userdata dir after `checkpoint --export` without `--keep`
/// removes (libpod `checkpoint`): ckpt mirrors it.
const CHECKPOINT_LEFTOVERS: [&str; 4] = ["dump.log", "stats-dump", "config.dump", "spec.dump"];

/// The largest `config.dump` or `spec.dump` read from an archive (memory stays bounded).
const MAX_DUMP: u64 = 16 << 20;

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
    upper: PathBuf,
    lowers: Vec<PathBuf>,
    /// Named volumes mounted into the container.
    volumes: Vec<String>,
}

impl Podman {
    /// `podman` from `PATH`, or the program named by `CKPT_PODMAN`.
    pub fn new() -> Podman {
        Podman { program: std::env::var_os("CKPT_PODMAN").unwrap_or_else(|| "podman".into()) }
    }

    /// Checkpoints the running `container` and writes its archive to `out` with `exporter`
    /// (whose compression, sharing and progress settings apply), in podman's layout.
    pub fn checkpoint(
        &self,
        container: &str,
        out: &Path,
        exporter: Exporter,
        options: &CheckpointOptions,
    ) -> Result<CheckpointReport> {
        let info = self.inspect(container)?;
        if info.state != "running" {
            return Err(
                self.refusal(container, format!("is {}, not running: nothing to checkpoint", info.state))
            );
        }
        for volume in &info.volumes {
            log::warn!(
                "{container}: the archive does not hold the contents of named volume {volume} \
                 (podman container checkpoint --export does)"
            );
        }
        let started = Instant::now();
        let drain = Drain::new(out)?;
        let mut args: Vec<&OsStr> =
            ["container", "checkpoint", "--keep", "--ignore-rootfs", "--ignore-volumes"]
                .map(OsStr::new)
                .to_vec();
        args.extend(["--compress", "none", "--export"].map(OsStr::new));
        args.push(drain.fifo.as_os_str());
        // Not podman's --leave-running: the process would go on changing its files while
        // they are archived. It is stopped, archived, then restored from the checkpoint.
        for (set, flag) in
            [(options.tcp_established, "--tcp-established"), (options.file_locks, "--file-locks")]
        {
            if set {
                args.push(OsStr::new(flag));
            }
        }
        args.push(OsStr::new(&info.id));
        let podman_result = drain.run(|| self.run(&args));
        podman_result?;
        let mut podman_seconds = started.elapsed().as_secs_f64();
        remove_stale_rootfs_diff(&info.bundle)?;
        let exporter = exporter
            .bundle_layout(true)
            .rootfs(Rootfs::Diff { upper: info.upper.clone(), lowers: info.lowers });
        let export = exporter.export(&info.bundle, out);
        if !options.keep {
            for name in CHECKPOINT_LEFTOVERS {
                let path = info.bundle.join(name);
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    log::warn!("{}: cannot remove: {e}", path.display());
                }
            }
        }
        // Asked to stay running, the container does so even when its archive failed.
        let mut restored = Ok(String::new());
        if options.leave_running {
            let started = Instant::now();
            let mut args = vec!["container", "restore", "--keep"];
            if options.tcp_established {
                args.push("--tcp-established");
            }
            if options.file_locks {
                args.push("--file-locks");
            }
            args.push(&info.id);
            restored = self.run(&args);
            podman_seconds += started.elapsed().as_secs_f64();
        }
        let export = match (export, restored) {
            (Ok(export), Ok(_)) => export,
            (Err(e), Ok(_)) => return Err(e),
            (Ok(_), Err(e)) => {
                log::error!("{}: archived to {}, but not running again", info.id, out.display());
                return Err(e);
            }
            (Err(e), Err(restore)) => {
                log::error!("{}: not running again: {restore}", info.id);
                return Err(e);
            }
        };
        Ok(CheckpointReport { container: info.id, podman_seconds, export })
    }

    /// Restores the checkpoint in `archive` (ckpt's or podman's own, compressed or not).
    pub fn restore(
        &self,
        archive: &Path,
        target: &RestoreTarget,
        options: &RestoreOptions,
    ) -> Result<RestoreReport> {
        let dumps = read_dumps(archive)?;
        let started = Instant::now();
        let (info, created) = match target {
            RestoreTarget::New { name } => {
                let config = dumps.config.as_ref().ok_or_else(|| {
                    Error::unsuitable(archive, "has no config.dump: which container to create is not known")
                })?;
                let id = self.create_like(archive, config, name.as_deref())?;
                let made = self.prepare_new(&id, archive, &dumps);
                match made {
                    Ok(info) => (info, true),
                    Err(e) => {
                        self.remove(&id);
                        return Err(e);
                    }
                }
            }
            RestoreTarget::Existing(container) => (self.prepare_rollback(container, archive, &dumps)?, false),
        };
        let mut podman_seconds = started.elapsed().as_secs_f64();
        let result = self.place_and_restore(archive, &info, created, options, &mut podman_seconds);
        match result {
            Ok(import) => Ok(RestoreReport { container: info.id, podman_seconds, import }),
            Err(e) => {
                if created {
                    self.remove(&info.id);
                }
                Err(e)
            }
        }
    }

    fn place_and_restore(
        &self,
        archive: &Path,
        info: &Container,
        created: bool,
        options: &RestoreOptions,
        podman_seconds: &mut f64,
    ) -> Result<ImportStats> {
        let import = if created {
            // A new container's layer holds nothing of its own yet but the mount points runc
            // made: the archive's changes are applied over them.
            let importer = Importer::new()
                .share(options.share)
                .only(podman::RESTORED_MEMBERS)
                .rootfs(Rootfs::Diff { upper: info.upper.clone(), lowers: Vec::new() });
            complete(importer.import(archive, &info.bundle)?, &info.bundle)?
        } else {
            rollback(archive, info, options.share)?
        };
        let started = Instant::now();
        let mut args = vec!["container", "restore"];
        if options.tcp_established {
            args.push("--tcp-established");
        }
        if options.file_locks {
            args.push("--file-locks");
        }
        args.push(&info.id);
        self.run(&args)?;
        *podman_seconds += started.elapsed().as_secs_f64();
        Ok(import)
    }

    /// Creates a container as `config` (the archive's `config.dump`) says; its ID.
    fn create_like(&self, archive: &Path, config: &Value, name: Option<&str>) -> Result<String> {
        let bad = |why: String| Error::unsuitable(archive, format!("config.dump: {why}"));
        if config.get("pod").and_then(Value::as_str).is_some_and(|p| !p.is_empty()) {
            return Err(bad(
                "the container was in a pod: restore it with podman container restore --import --pod".into(),
            ));
        }
        if config.get("namedVolumes").and_then(Value::as_array).is_some_and(|v| !v.is_empty()) {
            return Err(bad(
                "the container has named volumes, whose contents ckpt does not carry: restore it with podman container restore --import".into(),
            ));
        }
        let old_name = config.get("name").and_then(Value::as_str).unwrap_or_default();
        let name = name.unwrap_or(old_name);
        if name.is_empty() {
            return Err(bad("no container name; give one with --name".into()));
        }
        let args = create_args(config, name).map_err(bad)?;
        let mut full: Vec<&str> = Vec::new();
        let runtime = config.get("runtime").and_then(Value::as_str).filter(|r| !r.is_empty());
        if let Some(runtime) = runtime {
            full.extend(["--runtime", runtime]);
        }
        full.push("create");
        full.extend(args.iter().map(String::as_str));
        let id = self.run(&full)?;
        let id = id.trim().lines().last().unwrap_or_default().to_string();
        if id.is_empty() {
            return Err(self.refusal(name, "podman create printed no container ID".into()));
        }
        Ok(id)
    }

    /// Gives the new container `id` its runtime spec and leaves it exited, as restore needs,
    /// and checks that spec against the archive's.
    fn prepare_new(&self, id: &str, archive: &Path, dumps: &Dumps) -> Result<Container> {
        self.run(&["init", id])?;
        self.run(&["stop", "-t", "0", id])?;
        let info = self.inspect(id)?;
        if let Some(old) = &dumps.spec {
            let config = info.bundle.join("config.json");
            let new: Value = serde_json::from_slice(&std::fs::read(&config).at("read", &config)?)
                .map_err(|e| Error::unsuitable(&config, format!("not JSON: {e}")))?;
            let differences = spec_differences(old, &new);
            if !differences.is_empty() {
                return Err(Error::unsuitable(
                    archive,
                    format!(
                        "the recreated container would not be the checkpointed one: its {} differ from spec.dump; \
                         restore it with podman container restore --import",
                        differences.join(", ")
                    ),
                ));
            }
        }
        Ok(info)
    }

    /// Checks that `container` is the archive's and can be rolled back.
    fn prepare_rollback(&self, container: &str, archive: &Path, dumps: &Dumps) -> Result<Container> {
        let info = self.inspect(container)?;
        let archived = dumps.config.as_ref().and_then(|c| c.get("id")).and_then(Value::as_str);
        match archived {
            Some(id) if id == info.id => {}
            Some(id) => {
                return Err(self.refusal(
                    container,
                    format!("{} holds a checkpoint of container {id}", archive.display()),
                ));
            }
            None => {
                return Err(Error::unsuitable(
                    archive,
                    "has no config.dump: whose checkpoint it is is not known",
                ));
            }
        }
        if !matches!(info.state.as_str(), "exited" | "stopped" | "configured" | "created") {
            return Err(self.refusal(
                container,
                format!(
                    "is {}: stop it first (podman stop {container}); a rollback replaces its state",
                    info.state
                ),
            ));
        }
        if overlay_uses_upper(&info.upper)? {
            return Err(self.refusal(
                container,
                format!("its layer {} is mounted (podman mount?): unmount it first", info.upper.display()),
            ));
        }
        Ok(info)
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
            upper: upper.into(),
            lowers: lowers.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect(),
            volumes: c
                .get("Mounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|m| m.get("Type").and_then(Value::as_str) == Some("volume"))
                .filter_map(|m| m.get("Name").and_then(Value::as_str).map(str::to_string))
                .collect(),
        })
    }

    /// Runs podman with `args`; its standard output. A failure carries podman's message.
    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        let shown = || {
            let words: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
            format!("{} {}", self.program.to_string_lossy(), words.join(" "))
        };
        log::debug!("running {}", shown());
        let output = Command::new(&self.program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Runtime { command: shown(), reason: format!("cannot run: {e}") })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let message = stderr.trim().lines().last().unwrap_or("no message").to_string();
            return Err(Error::Runtime { command: shown(), reason: format!("{}: {message}", output.status) });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
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

/// A failed member means the checkpoint is not whole: a restore from it would not be the
/// checkpointed process.
fn complete(stats: ImportStats, bundle: &Path) -> Result<ImportStats> {
    if let Some(first) = stats.refused.first().or(stats.failed.first()) {
        return Err(Error::refused(bundle, format!("checkpoint member not restored: {first}")));
    }
    if let Some(first) = stats.conflicts.first() {
        return Err(Error::refused(first, "already exists; the checkpoint was not restored over it"));
    }
    Ok(stats)
}

/// Builds the archive's checkpoint and rootfs changes beside the container's own, then swaps
/// them in, so a failure leaves the container as it was.
fn rollback(archive: &Path, info: &Container, share: bool) -> Result<ImportStats> {
    let layer = info
        .upper
        .parent()
        .ok_or_else(|| Error::unsuitable(&info.upper, "a layer's diff dir has a parent"))?;
    let new_upper = Scratch::create(layer, "diff")?;
    let new_bundle = Scratch::create(&info.bundle, "restore")?;
    let importer = Importer::new()
        .share(share)
        .only(podman::RESTORED_MEMBERS.iter().copied().chain(["network.status"]))
        .rootfs(Rootfs::Diff { upper: new_upper.path.clone(), lowers: Vec::new() });
    let stats = complete(importer.import(archive, &new_bundle.path)?, &new_bundle.path)?;
    remove_stale_rootfs_diff(&info.bundle)?;
    for name in podman::RESTORED_MEMBERS.iter().chain(&["network.status"]) {
        let from = new_bundle.path.join(name);
        if std::fs::symlink_metadata(&from).is_ok() {
            swap_in(&from, &info.bundle.join(name))?;
        }
    }
    swap_in(&new_upper.path, &info.upper)?;
    Ok(stats)
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

/// Puts `from` at `to`; what was at `to` is removed once `from` is in its place.
fn swap_in(from: &Path, to: &Path) -> Result<()> {
    match rustix::fs::renameat_with(rustix::fs::CWD, from, rustix::fs::CWD, to, RenameFlags::EXCHANGE) {
        Ok(()) => {
            let old = from;
            let removed = if std::fs::symlink_metadata(old).is_ok_and(|m| m.is_dir()) {
                std::fs::remove_dir_all(old)
            } else {
                std::fs::remove_file(old)
            };
            removed.at("remove the replaced", old)
        }
        Err(rustix::io::Errno::NOENT) => rustix::fs::rename(from, to).at("rename into place", to),
        Err(e) => Err(Error::io("exchange", to, e)),
    }
}

/// A private directory beside `near`, removed with what it holds unless it was swapped away.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn create(dir: &Path, what: &str) -> Result<Scratch> {
        let path = dir.join(format!(".ckpt-{what}-{}", std::process::id()));
        if std::fs::symlink_metadata(&path).is_ok() {
            std::fs::remove_dir_all(&path).at("remove stale", &path)?;
        }
        rustix::fs::mkdir(&path, Mode::from_raw_mode(0o700)).at("mkdir", &path)?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Whether a mounted overlay uses `upper` as its upper dir.
fn overlay_uses_upper(upper: &Path) -> Result<bool> {
    let mountinfo = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(mountinfo).at("read", Path::new(mountinfo))?;
    let needle = format!("upperdir={}", upper.display());
    Ok(text.lines().any(|line| line.split([',', ' ']).any(|option| option == needle)))
}

/// A pipe that podman's own export is written into and drained from, so it costs no disk.
struct Drain {
    dir: Scratch,
    fifo: PathBuf,
}

impl Drain {
    fn new(out: &Path) -> Result<Drain> {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = Scratch::create(parent, "export")?;
        let fifo = dir.path.join("podman-export.tar");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .at("mkfifo", &fifo)?;
        Ok(Drain { dir, fifo })
    }

    /// Runs `producer` (podman writing into the pipe) while reading the pipe to its end.
    fn run<T>(&self, producer: impl FnOnce() -> Result<T>) -> Result<T> {
        // The read end opens at once without blocking; the write end held here keeps the pipe
        // from reading as ended before podman opens it, and is closed once podman is done,
        // so the read ends exactly when podman's writes do (or at once, if it never wrote).
        let read_end =
            rustix::fs::open(&self.fifo, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
                .at("open", &self.fifo)?;
        rustix::fs::fcntl_setfl(&read_end, OFlags::empty()).at("fcntl", &self.fifo)?;
        let write_end = rustix::fs::open(&self.fifo, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())
            .at("open", &self.fifo)?;
        let mut pipe = File::from(read_end);
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || std::io::copy(&mut pipe, &mut std::io::sink()));
            let result = producer();
            drop(write_end);
            let drained = reader.join().expect("the drain does not panic");
            let bytes = drained.at("read", &self.fifo)?;
            log::debug!("podman's export, {bytes} bytes, drained from {}", self.dir.path.display());
            result
        })
    }
}

/// The archive's `config.dump` and `spec.dump`, parsed.
struct Dumps {
    config: Option<Value>,
    spec: Option<Value>,
}

/// Reads `config.dump` and `spec.dump` from the archive; they come first in ckpt's archives
/// and early in podman's, so the rest is not read.
fn read_dumps(archive: &Path) -> Result<Dumps> {
    let mut opened = archive::open(archive)?;
    let mut reader = Reader::open(&mut opened, archive);
    let mut found: BTreeMap<&[u8], Value> = BTreeMap::new();
    while found.len() < 2 {
        let Some(entry) = reader.next_entry()? else { break };
        let name = podman::bundle_name(&entry.name);
        let Some(wanted) = [podman::CONFIG_DUMP, podman::SPEC_DUMP].into_iter().find(|w| *w == name) else {
            continue;
        };
        if entry.size > MAX_DUMP {
            return Err(Error::damaged(archive, format!("{} of {} bytes", entry.name_lossy(), entry.size)));
        }
        let mut data = Vec::with_capacity(entry.size as usize);
        (&mut reader).take(entry.size).read_to_end(&mut data).at("read", archive)?;
        let value = serde_json::from_slice(&data)
            .map_err(|e| Error::damaged(archive, format!("{}: not JSON: {e}", entry.name_lossy())))?;
        found.insert(wanted, value);
    }
    if found.is_empty() {
        return Err(Error::unsuitable(
            archive,
            "holds neither config.dump nor spec.dump: not a container checkpoint",
        ));
    }
    Ok(Dumps { config: found.remove(podman::CONFIG_DUMP), spec: found.remove(podman::SPEC_DUMP) })
}

/// `podman create` arguments that make the container `config.dump`'s `CreateCommand` made,
/// named `name`: podman's own record of the command line, replayed as podman's
/// `generate systemd --new` does, without what only `run` takes or what names the old one.
fn create_args(config: &Value, name: &str) -> std::result::Result<Vec<String>, String> {
    let command: Vec<&str> = config
        .get("CreateCommand")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if command.is_empty() {
        return Err(
            "no CreateCommand (the container was made through podman's API, not its command line)".into()
        );
    }
    let verb = command
        .iter()
        .position(|w| matches!(*w, "run" | "create"))
        .ok_or("CreateCommand has neither run nor create")?;
    // The image and the container's command follow the options; the command is recorded on
    // its own, so the image is the last word before it.
    let image = config.get("RawImageName").and_then(Value::as_str).unwrap_or_default();
    let cmd_len = config.get("command").and_then(Value::as_array).map_or(0, Vec::len);
    let image_at = command.len().checked_sub(cmd_len + 1).filter(|&i| i > verb && command[i] == image);
    let image_at = match image_at {
        Some(i) => i,
        None => command
            .iter()
            .rposition(|w| *w == image)
            .filter(|&i| i > verb)
            .ok_or("cannot find the image in CreateCommand")?,
    };
    let mut args = vec!["--name".to_string(), name.to_string()];
    let mut options = command[verb + 1..image_at].iter();
    while let Some(&option) = options.next() {
        match option {
            "-d" | "--detach" | "--detach=true" | "--replace" | "--replace=true" => {}
            "--name" | "--detach-keys" | "--sig-proxy" => {
                options.next();
            }
            _ if option.starts_with("--name=")
                || option.starts_with("--detach-keys=")
                || option.starts_with("--sig-proxy=") => {}
            // Combined short flags: -dit.
            _ if option.len() > 2
                && option.starts_with('-')
                && !option.starts_with("--")
                && option[1..].bytes().all(|b| b"ditP".contains(&b)) =>
            {
                let kept: String = option[1..].chars().filter(|&c| c != 'd').collect();
                if !kept.is_empty() {
                    args.push(format!("-{kept}"));
                }
            }
            _ => args.push(option.to_string()),
        }
    }
    args.extend(command[image_at..].iter().map(|w| w.to_string()));
    Ok(args)
}

/// The parts of two OCI runtime specs in which they differ, of those that shape the process a
/// checkpoint restores: what runs, as whom, with which privileges, limits, namespaces and
/// mounts. Names, IDs, hostnames and host paths differ between two containers by nature.
fn spec_differences(old: &Value, new: &Value) -> Vec<String> {
    let mut differences = Vec::new();
    for (what, pointer) in [
        ("process arguments", "/process/args"),
        ("working directory", "/process/cwd"),
        ("user", "/process/user"),
        ("terminal", "/process/terminal"),
        ("capabilities", "/process/capabilities"),
        ("rlimits", "/process/rlimits"),
        ("no_new_privileges", "/process/noNewPrivileges"),
        ("read-only rootfs", "/root/readonly"),
        ("seccomp profile", "/linux/seccomp"),
        ("masked paths", "/linux/maskedPaths"),
        ("read-only paths", "/linux/readonlyPaths"),
        ("sysctls", "/linux/sysctl"),
        ("ID mappings", "/linux/uidMappings"),
    ] {
        if old.pointer(pointer) != new.pointer(pointer) {
            differences.push(what.to_string());
        }
    }
    if env(old) != env(new) {
        differences.push("environment".into());
    }
    if namespaces(old) != namespaces(new) {
        differences.push("namespaces".into());
    }
    if mounts(old) != mounts(new) {
        differences.push("mounts".into());
    }
    differences
}

/// The environment, less `HOSTNAME`, which podman sets to each container's own.
fn env(spec: &Value) -> Vec<&str> {
    let mut env: Vec<&str> =
        strings(spec.pointer("/process/env")).filter(|v| !v.starts_with("HOSTNAME=")).collect();
    env.sort_unstable();
    env
}

fn namespaces(spec: &Value) -> Vec<&str> {
    let mut types: Vec<&str> = spec
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ns| ns.get("type").and_then(Value::as_str))
        .collect();
    types.sort_unstable();
    types
}

/// Each mount's destination, type and options (its source is a path on the host).
fn mounts(spec: &Value) -> Vec<(String, String, Vec<&str>)> {
    let mut mounts: Vec<_> = spec
        .get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|m| {
            let text = |key| m.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
            let mut options: Vec<&str> = strings(m.get("options")).collect();
            options.sort_unstable();
            (text("destination"), text("type"), options)
        })
        .collect();
    mounts.sort();
    mounts
}

fn strings(value: Option<&Value>) -> impl Iterator<Item = &str> {
    value.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(create: &[&str], command: &[&str]) -> Value {
        serde_json::json!({"CreateCommand": create, "RawImageName": "localhost/bb", "command": command})
    }

    #[test]
    fn create_args_replay_run_as_create_without_detach_and_with_the_new_name() {
        let c = config(
            &[
                "podman",
                "--root",
                "/s",
                "run",
                "-dit",
                "--name",
                "old",
                "-e",
                "A=1",
                "localhost/bb",
                "sh",
                "-c",
                "-d",
            ],
            &["sh", "-c", "-d"],
        );
        assert_eq!(
            create_args(&c, "new").unwrap(),
            ["--name", "new", "-it", "-e", "A=1", "localhost/bb", "sh", "-c", "-d"]
        );
    }

    #[test]
    fn create_args_without_a_recorded_command_line_are_refused() {
        assert!(create_args(&serde_json::json!({}), "x").is_err());
    }

    #[test]
    fn spec_differences_ignore_hostname_and_host_paths_but_not_capabilities() {
        let old = serde_json::json!({
            "hostname": "a", "process": {"args": ["sh"], "env": ["HOSTNAME=a", "X=1"], "capabilities": {"bounding": ["CAP_KILL"]}},
            "mounts": [{"destination": "/etc/hosts", "type": "bind", "source": "/old/hosts", "options": ["bind"]}]
        });
        let mut new = old.clone();
        new["hostname"] = "b".into();
        new["process"]["env"] = serde_json::json!(["X=1", "HOSTNAME=b"]);
        new["mounts"][0]["source"] = "/new/hosts".into();
        assert!(spec_differences(&old, &new).is_empty());
        new["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_KILL", "CAP_SYS_ADMIN"]);
        assert_eq!(spec_differences(&old, &new), ["capabilities"]);
    }
}
