//! `ckpt podman restore`: a new container made as the archive's config.dump says, or the
//! archived container rolled back, gets the checkpoint cloned in; podman restores the process.

use std::path::Path;
use std::time::Instant;

use rustix::fs::RenameFlags;
use serde_json::Value;

use crate::container::podman::{self, Rootfs};
use crate::error::{Context, Error, Result};
use crate::import::Importer;
use crate::import::stats::ImportStats;
use crate::inspect::member::read_members;

use super::replay::{Places, create_args, respec};
use super::{
    Container, Podman, RestoreOptions, RestoreReport, RestoreTarget, Scratch, criu_flags,
    remove_stale_rootfs_diff,
};

/// The largest `config.dump` or `spec.dump` read from an archive (memory stays bounded).
const MAX_DUMP: u64 = 16 << 20;

impl Podman {
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
        args.extend(criu_flags(options.tcp_established, options.file_locks));
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
                "the container has named volumes, whose contents ckpt's restore does not put back: restore it with podman container restore --import, which extracts them from the archive's volumes/".into(),
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

    /// Gives the new container `id` the runtime spec the checkpointed process ran under, with
    /// the old container's places made its own; podman's restore then mounts its rootfs and
    /// makes its `/etc/hosts`, secrets and `/dev/shm` as it would for `init`.
    fn prepare_new(&self, id: &str, archive: &Path, dumps: &Dumps) -> Result<Container> {
        let info = self.inspect(id)?;
        let spec = dumps.spec.as_ref().ok_or_else(|| {
            Error::unsuitable(
                archive,
                "has no spec.dump: the runtime spec the process ran under is not known",
            )
        })?;
        let config = dumps.config.as_ref().expect("a new container is made from config.dump");
        let text = |key: &str| config.get(key).and_then(Value::as_str).filter(|v| !v.is_empty());
        let refuse = |why: String| {
            Error::unsuitable(
                archive,
                format!("{why}; the recreated container would not be the checkpointed one"),
            )
        };
        if let Some(image) = text("rootfsImageID").filter(|image| *image != info.image) {
            return Err(refuse(format!(
                "the checkpointed container ran on image {image}, the new one is made of {}",
                info.image
            )));
        }
        let old_id = text("id").ok_or_else(|| refuse("config.dump has no container ID".into()))?;
        let layer = info
            .upper
            .parent()
            .ok_or_else(|| Error::unsuitable(&info.upper, "a layer's diff dir has a parent"))?;
        let places = Places {
            old_id,
            old_dirs: [
                text("staticDir").map(Path::new),
                text("pid_file").and_then(|p| Path::new(p).parent()),
            ],
            new_id: &info.id,
            new_dirs: [Some(info.bundle.as_path()), info.run_dir.as_deref()],
            new_root: &layer.join("merged"),
        };
        let spec = respec(spec, &places).map_err(refuse)?;
        let path = info.bundle.join("config.json");
        let json = serde_json::to_vec(&spec).expect("a JSON value serializes");
        std::fs::write(&path, json).at("write", &path)?;
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

/// Whether a mounted overlay uses `upper` as its upper dir.
fn overlay_uses_upper(upper: &Path) -> Result<bool> {
    let mountinfo = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(mountinfo).at("read", Path::new(mountinfo))?;
    let needle = format!("upperdir={}", upper.display());
    Ok(text.lines().any(|line| line.split([',', ' ']).any(|option| option == needle)))
}

/// The archive's `config.dump` and `spec.dump`, parsed.
struct Dumps {
    config: Option<Value>,
    spec: Option<Value>,
}

/// Reads `config.dump` and `spec.dump` from the archive; they come first in ckpt's archives
/// and early in podman's, so the rest is not read (and of a seekable one only their frames).
fn read_dumps(archive: &Path) -> Result<Dumps> {
    let names = [podman::CONFIG_DUMP, podman::SPEC_DUMP];
    let found = read_members(archive, &names, MAX_DUMP)?;
    if found.iter().all(Option::is_none) {
        return Err(Error::unsuitable(
            archive,
            "holds neither config.dump nor spec.dump: not a container checkpoint",
        ));
    }
    let mut parsed = names.iter().zip(found).map(|(name, data)| {
        let json = |data: Vec<u8>| serde_json::from_slice(&data);
        data.map(json)
            .transpose()
            .map_err(|e| Error::damaged(archive, format!("{}: not JSON: {e}", String::from_utf8_lossy(name))))
    });
    let config = parsed.next().expect("config.dump")?;
    Ok(Dumps { config, spec: parsed.next().expect("spec.dump")? })
}
