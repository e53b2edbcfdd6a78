//! `ckpt podman checkpoint`: podman checkpoints the container into its userdata dir, its own
//! export drained and discarded; ckpt archives the checkpoint and the layer.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};

use crate::container::podman::Rootfs;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::export::bundle::LayerPlan;
use crate::export::{ExportStats, Exporter};
use crate::sys::freezer::Freezer;

use super::{
    CheckpointOptions, CheckpointReport, Container, Podman, Scratch, Started, Volume, criu_flags,
    remove_stale_rootfs_diff,
};

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long a container's cgroup may take to freeze before CRIU is left to freeze it.
const FREEZE_WAIT: Duration = Duration::from_secs(1);

/// What podman leaves in the userdata dir after `checkpoint --export` without `--keep`
/// removes (libpod `checkpoint`): ckpt mirrors it.
const CHECKPOINT_LEFTOVERS: [&str; 4] = ["dump.log", "stats-dump", "config.dump", "spec.dump"];

impl Podman {
    /// Checkpoints the running `container` and writes its archive to `out` with `exporter`
    /// (whose compression, sharing and progress settings apply), in podman's layout.
    pub fn checkpoint(
        &self,
        container: &str,
        out: &Path,
        exporter: Exporter,
        options: &CheckpointOptions,
    ) -> Result<CheckpointReport> {
        let info = self.running(container)?;
        let volumes: &[Volume] = if options.ignore_volumes { &[] } else { &info.volumes };
        if let Some(volume) = volumes.iter().find(|v| v.dir.as_os_str().is_empty()) {
            return Err(self.refusal(
                container,
                format!(
                    "podman names no directory for its volume {:?}, so it cannot be archived",
                    volume.name
                ),
            ));
        }
        let mut exporter = exporter
            .bundle_layout(true)
            .rootfs(Rootfs::Diff { upper: info.upper.clone(), lowers: info.lowers.clone() });
        for volume in volumes {
            exporter = exporter.volume(&volume.name, &volume.dir);
        }
        // CRIU 4.2 freezes the container's cgroup and, finding it still freezing, looks again
        // only 100 ms later; one found frozen already is seized at once.
        let frozen = Freezer::of(Path::new(CGROUP_ROOT), &info.cgroup).filter(|freezer| {
            let frozen = freezer.freeze(FREEZE_WAIT);
            let ok = matches!(frozen, Ok(true));
            if !ok {
                log::debug!("{}: not frozen ahead of CRIU: {frozen:?}", info.cgroup);
                thaw(freezer);
            }
            ok
        });
        let frozen_and_archived = std::thread::scope(|scope| {
            // The layer's first pass is made while podman has CRIU dump the process; the
            // export checks that the layer has not changed since (the container is frozen,
            // but others may change it).
            let planning = scope.spawn(|| exporter.plan_layer(out));
            self.dump(&info, out, options, |podman_exited| {
                // Podman has written its export: the checkpoint is complete and the container
                // stopped. It is archived while podman cleans up, and replaces OUT only if
                // podman then succeeds.
                remove_stale_rootfs_diff(&info.bundle)?;
                let planned = planning.join().expect("planning the layer does not panic");
                export_planned(&exporter, planned, &info.bundle, out, podman_exited)
            })
        });
        // Podman failed: the container runs on, as after podman's own failed checkpoint (a
        // checkpoint that succeeded has stopped it, and its cgroup is gone).
        if let (Err(_), Some(freezer)) = (&frozen_and_archived, &frozen) {
            thaw(freezer);
        }
        let (export, mut podman_seconds) = frozen_and_archived?;
        if !options.keep {
            remove_leftovers(&info.bundle);
        }
        // Asked to stay running, the container does so even when its archive failed.
        let resumed = if options.leave_running {
            let started = Instant::now();
            let mut args = vec!["container", "restore", "--keep"];
            args.extend(criu_flags(options.tcp_established, options.file_locks));
            args.push(&info.id);
            let resumed = self.run(&args);
            podman_seconds += started.elapsed().as_secs_f64();
            resumed.map(drop)
        } else {
            Ok(())
        };
        let export = match (export, resumed) {
            (Ok(export), Ok(())) => export,
            (Err(e), Ok(())) => return Err(e),
            (Ok(_), Err(e)) => {
                log::error!("{}: archived to {}, but not running again", info.id, out.display());
                return Err(e);
            }
            (Err(e), Err(resume)) => {
                log::error!("{}: not running again: {resume}", info.id);
                return Err(e);
            }
        };
        Ok(CheckpointReport { container: info.id, podman_seconds, export })
    }

    /// The running `container`'s facts.
    fn running(&self, container: &str) -> Result<Container> {
        let info = self.inspect(container)?;
        if info.state != "running" {
            return Err(
                self.refusal(container, format!("is {}, not running: nothing to checkpoint", info.state))
            );
        }
        Ok(info)
    }

    /// Has podman checkpoint the container, its export drained beside `out`, and once that
    /// export has ended runs `then` with a function that waits for podman to exit (an error if
    /// it failed); `then`'s result and the seconds podman took, or podman's error. Not
    /// podman's --leave-running: the process would go on changing its files while they are
    /// archived. It is stopped, archived, then restored from the checkpoint.
    fn dump<T>(
        &self,
        info: &Container,
        out: &Path,
        options: &CheckpointOptions,
        then: impl FnOnce(&mut dyn FnMut() -> Result<()>) -> Result<T>,
    ) -> Result<(Result<T>, f64)> {
        let started = Instant::now();
        let drain = Drain::new(out)?;
        let mut args: Vec<&OsStr> =
            ["container", "checkpoint", "--keep", "--ignore-rootfs", "--ignore-volumes"]
                .map(OsStr::new)
                .to_vec();
        args.extend(["--compress", "none", "--export"].map(OsStr::new));
        args.push(drain.fifo.as_os_str());
        args.extend(criu_flags(options.tcp_established, options.file_locks).map(OsStr::new));
        args.push(OsStr::new(&info.id));
        let podman = self.start(&args)?;
        drain.run(podman, started, then)
    }
}

/// Exports `bundle` to `out` with the layer's first pass `planned` ahead; again without it if
/// the layer changed after that pass (where the cgroup could not be frozen first, the process
/// ran on until CRIU froze it).
fn export_planned(
    exporter: &Exporter,
    planned: Result<LayerPlan>,
    bundle: &Path,
    out: &Path,
    podman_exited: &mut dyn FnMut() -> Result<()>,
) -> Result<ExportStats> {
    let plan = match planned {
        Ok(plan) => plan,
        Err(e) => {
            log::debug!("the layer was not planned ahead: {e}");
            return exporter.export_checked(bundle, out, podman_exited);
        }
    };
    match exporter.clone().with_layer_plan(plan).export_checked(bundle, out, podman_exited) {
        Err(e) if e.kind() == ErrorKind::SourceChanged => {
            log::debug!("{e}; archiving it again, from two fresh walks");
            exporter.export_checked(bundle, out, podman_exited)
        }
        other => other,
    }
}

fn thaw(freezer: &Freezer) {
    if let Err(e) = freezer.thaw() {
        log::warn!("{e}: the container's cgroup stays frozen");
    }
}

/// Removes what podman's checkpoint leaves in the userdata dir that its own export removes.
fn remove_leftovers(bundle: &Path) {
    for name in CHECKPOINT_LEFTOVERS {
        let path = bundle.join(name);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("{}: cannot remove: {e}", path.display());
        }
    }
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

    /// Reads the pipe while `podman` writes its export into it; once the export has ended,
    /// runs `then` with a function that waits for podman to exit (an error if podman failed).
    /// Podman is waited for in any case: `then`'s result and the seconds from `started` to
    /// podman's exit, or podman's error (with `then`'s own failure, if it had one, logged).
    fn run<T>(
        &self,
        podman: Started,
        started: Instant,
        then: impl FnOnce(&mut dyn FnMut() -> Result<()>) -> Result<T>,
    ) -> Result<(Result<T>, f64)> {
        // The read end opens at once without blocking; the write end held here keeps the pipe
        // from reading as ended before podman opens it, and is closed once podman has written
        // (or has exited), so the read ends exactly when podman's writes do.
        let read_end =
            rustix::fs::open(&self.fifo, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
                .at("open", &self.fifo)?;
        rustix::fs::fcntl_setfl(&read_end, OFlags::empty()).at("fcntl", &self.fifo)?;
        let write_end = rustix::fs::open(&self.fifo, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())
            .at("open", &self.fifo)?;
        let mut pipe = File::from(read_end);
        let command = podman.command.clone();
        std::thread::scope(|scope| {
            let (wrote_or_exited, event) = mpsc::channel();
            let reader = {
                let wrote = wrote_or_exited.clone();
                scope.spawn(move || {
                    let mut first = [0u8; 64 << 10];
                    let n = pipe.read(&mut first)?;
                    if n > 0 {
                        let _ = wrote.send(());
                    }
                    Ok::<u64, std::io::Error>(n as u64 + std::io::copy(&mut pipe, &mut std::io::sink())?)
                })
            };
            let waiter = scope.spawn(move || {
                let exited = podman.wait();
                let seconds = started.elapsed().as_secs_f64();
                let _ = wrote_or_exited.send(());
                (exited, seconds)
            });
            let _ = event.recv();
            drop(write_end);
            let drained = reader.join().expect("the drain does not panic").at("read", &self.fifo);
            let mut exit = Exit { waiter: Some(waiter), exited: None };
            let then_result = match &drained {
                Ok(0) | Err(_) => None,
                Ok(bytes) => {
                    log::debug!("podman's export, {bytes} bytes, drained from {}", self.dir.path.display());
                    Some(then(&mut || match exit.wait() {
                        (Ok(_), _) => Ok(()),
                        (Err(_), _) => Err(Error::Runtime {
                            command: command.clone(),
                            reason: "failed: the archive is not written".into(),
                        }),
                    }))
                }
            };
            let (podman_result, seconds) = exit.into_result();
            // Podman's failure decides what became of the container; an archive that failed
            // on its own (not on finding podman failed) is said too.
            if let (Err(_), Some(Err(e))) = (&podman_result, &then_result)
                && e.kind() != ErrorKind::Runtime
            {
                log::error!("the archive was not written either: {e}");
            }
            podman_result?;
            drained?;
            let then_result = then_result
                .ok_or_else(|| Error::Runtime { command, reason: "wrote no checkpoint export".into() })?;
            Ok((then_result, seconds))
        })
    }
}

/// Podman's exit, waited for once.
struct Exit<'scope> {
    waiter: Option<std::thread::ScopedJoinHandle<'scope, (Result<String>, f64)>>,
    exited: Option<(Result<String>, f64)>,
}

impl Exit<'_> {
    fn wait(&mut self) -> &(Result<String>, f64) {
        if let Some(waiter) = self.waiter.take() {
            self.exited = Some(waiter.join().expect("waiting for podman does not panic"));
        }
        self.exited.as_ref().expect("podman was waited for")
    }

    fn into_result(mut self) -> (Result<String>, f64) {
        self.wait();
        self.exited.expect("podman was waited for")
    }
}
