//! `ckpt podman checkpoint`: podman checkpoints the container into its userdata dir, its own
//! export drained and discarded; ckpt archives the checkpoint and the layer.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::fs::{Mode, OFlags};

use crate::container::podman::Rootfs;
use crate::error::{Context, Result};
use crate::export::Exporter;

use super::{
    CheckpointOptions, CheckpointReport, Container, Podman, Scratch, Volume, criu_flags,
    remove_stale_rootfs_diff,
};

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
        let mut podman_seconds = self.freeze(&info, out, options)?;
        remove_stale_rootfs_diff(&info.bundle)?;
        let mut exporter = exporter
            .bundle_layout(true)
            .rootfs(Rootfs::Diff { upper: info.upper.clone(), lowers: info.lowers.clone() });
        for volume in volumes {
            exporter = exporter.volume(&volume.name, &volume.dir);
        }
        let export = exporter.export(&info.bundle, out);
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

    /// Has podman checkpoint the container, its export drained beside `out`; the seconds it
    /// took. Not podman's --leave-running: the process would go on changing its files while
    /// they are archived. It is stopped, archived, then restored from the checkpoint.
    fn freeze(&self, info: &Container, out: &Path, options: &CheckpointOptions) -> Result<f64> {
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
        drain.run(|| self.run(&args))?;
        Ok(started.elapsed().as_secs_f64())
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
