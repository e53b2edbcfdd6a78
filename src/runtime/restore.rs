//! `ckpt podman restore`: a new container made as the archive's config.dump says, or the
//! archived container rolled back, gets the checkpoint cloned in; podman restores the process.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use rustix::fs::RenameFlags;
use serde_json::Value;

use crate::container::podman::{self, Rootfs};
use crate::error::{Context, Error, Result};
use crate::export::member::{Body, Member};
use crate::export::plan::{Planner, encode_headers};
use crate::import::Importer;
use crate::import::stats::ImportStats;
use crate::inspect::member::read_members;
use crate::tar::meta::{Kind, Meta};
use crate::tar::{BLOCK, round_up};

use super::handoff::Handoff;
use super::replay::{Places, create_args, respec};
use super::stage::{NewContainer, Stage, Staged};
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
        let container = match target {
            RestoreTarget::New { name } => {
                return self.restore_new(archive, &dumps, name.as_deref(), options);
            }
            RestoreTarget::Existing(container) => container,
        };
        let started = Instant::now();
        let info = self.prepare_rollback(container, archive, &dumps)?;
        let podman_seconds = started.elapsed().as_secs_f64();
        let import = rollback(archive, &info, options.share)?;
        let podman_seconds = podman_seconds + self.resume(&info, options)?;
        Ok(RestoreReport { container: info.id, podman_seconds, import })
    }

    /// Restores into a new container: made by podman's own import, the data moved in as it
    /// does, when the checkpoint's store is on this host and there are no volumes to fill;
    /// otherwise made by ckpt with `podman create`, and the data restored into it.
    fn restore_new(
        &self,
        archive: &Path,
        dumps: &Dumps,
        name: Option<&str>,
        options: &RestoreOptions,
    ) -> Result<RestoreReport> {
        let config = dumps.config.as_ref().ok_or_else(|| {
            Error::unsuitable(archive, "has no config.dump: which container to create is not known")
        })?;
        let bad = |why: &str| Error::unsuitable(archive, format!("config.dump: {why}"));
        if config.get("pod").and_then(Value::as_str).is_some_and(|p| !p.is_empty()) {
            return Err(bad(
                "the container was in a pod: restore it with podman container restore --import --pod",
            ));
        }
        if dumps.spec.is_none() {
            return Err(Error::unsuitable(
                archive,
                "has no spec.dump: the runtime spec the process ran under is not known",
            ));
        }
        let old_name = config.get("name").and_then(Value::as_str).unwrap_or_default();
        let name = name.unwrap_or(old_name);
        if name.is_empty() {
            return Err(bad("no container name; give one with --name"));
        }
        // Podman 4.3's import restores neither volumes as ckpt does (it refuses those that
        // exist, anonymous ones too) nor containers with secrets (CRIU finds no mount point
        // for them); and a container is made of the image by ID.
        let secrets = config.get("secrets").and_then(Value::as_array).is_some_and(|s| !s.is_empty());
        let image = checkpointed_image(config);
        if named_volumes(config).is_empty()
            && !secrets
            && let Some(stage) = Stage::in_store_of(config, image)
        {
            return self.restore_imported(archive, dumps, name, options, &stage);
        }
        self.restore_created(archive, dumps, name, options)
    }

    /// Restores into a new container that podman's own `restore --import` makes from the
    /// archive's `config.dump`, fed through a [`Handoff`]: while podman starts, the archive is
    /// restored into a stage in the store; once podman has made the container, the stage is
    /// moved into it, and podman mounts its rootfs and restores the process.
    fn restore_imported(
        &self,
        archive: &Path,
        dumps: &Dumps,
        name: &str,
        options: &RestoreOptions,
        stage: &Stage,
    ) -> Result<RestoreReport> {
        // Podman may use another store than the checkpoint's, where the name is free.
        let before = stage.named(name)?;
        let config = dumps.config.as_ref().expect("a new container is made from config.dump");
        let mut handoff = Handoff::new(stage.containers())?;
        let mut args: Vec<&OsStr> = ["container", "restore", "--import"].map(OsStr::new).to_vec();
        args.push(handoff.path().as_os_str());
        args.extend(["--name", name].map(OsStr::new));
        args.extend(criu_flags(options.tcp_established, options.file_locks).map(OsStr::new));
        let importer = Importer::new().share(options.share).only(podman::RESTORED_MEMBERS);
        let since = SystemTime::now();
        let started = Instant::now();
        let podman = self.start(&args)?;
        let exited = AtomicBool::new(false);
        // A podman that fails before it makes the container leaves the stage unused: its
        // import stops rather than cloning (or with --no-clone copying) the rest first.
        let unused = Arc::new(AtomicBool::new(false));
        let staging_importer = importer.clone().cancel_on(unused.clone());
        let mut made: Option<String> = None;
        let (served, (podman_result, podman_seconds)) = std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let result = podman.wait();
                exited.store(true, Ordering::Release);
                (result, started.elapsed().as_secs_f64())
            });
            let mut staging = Some(scope.spawn(|| {
                let staged = stage.import(staging_importer, archive)?;
                // What the stage copied rather than cloned (on XFS, each file's partial last
                // block) is dirty in the page cache: written back while podman restores the
                // process, it is on disk when the restore returns, instead of costing
                // whoever syncs next.
                if staged.stats.bytes_copied > 0 {
                    scope.spawn(|| stage.write_back());
                }
                Ok(staged)
            }));
            let served = handoff.serve(&dumps.tar(), &exited, || {
                let Some(new) = stage.made(name, &before)? else { return Ok(None) };
                made = Some(new.id.clone());
                let staged = staging.take().expect("podman makes the container once");
                let staged = staged.join().expect("staging does not panic")?;
                move_in(archive, config, &new, staged, &importer).map(Some)
            });
            if served.is_err() {
                handoff.abandon();
            }
            if let Some(staging) = staging {
                // Podman exited before making the container: the stage is removed with it.
                unused.store(true, Ordering::Relaxed);
                if let Ok(Err(e)) = staging.join() {
                    log::debug!("staging stopped: {e}");
                }
            }
            (served, waiter.join().expect("waiting for podman does not panic"))
        });
        let remove_made = || {
            if let Some(id) = &made {
                self.remove(id);
            }
        };
        match served {
            Ok(Some(Ok(import))) => match podman_result {
                Ok(_) => {
                    let container = made.clone().expect("a container was made");
                    Ok(RestoreReport { container, podman_seconds, import })
                }
                Err(e) => {
                    remove_made();
                    Err(e)
                }
            },
            Ok(Some(Err(e))) | Err(e) => {
                remove_made();
                Err(e)
            }
            Ok(None) => {
                let e = podman_result.err().unwrap_or_else(|| Error::Runtime {
                    command: format!("podman container restore --import {}", handoff.path().display()),
                    reason: "restored a container without reading its checkpoint".into(),
                });
                // Podman made the container where ckpt did not look: in another store.
                let Some(id) = self.made_since(name, checkpointed_image(config), since) else {
                    return Err(e);
                };
                log::debug!(
                    "podman made {name} outside {}; restoring in place",
                    stage.containers().display()
                );
                self.remove(&id);
                self.restore_created(archive, dumps, name, options)
            }
        }
    }

    /// The ID of the container `name` if it was made of `image` at `since` or later: the one
    /// this restore's podman made, since names are unique.
    fn made_since(&self, name: &str, image: &str, since: SystemTime) -> Option<String> {
        let format = "{{.ID}} {{.Image}} {{.Created.UnixNano}}";
        let out = self.run(&["container", "inspect", "--format", format, name]).ok()?;
        let mut words = out.split_whitespace();
        let (id, made_of, created) = (words.next()?, words.next()?, words.next()?);
        let created: u128 = created.parse().ok()?;
        let since = since.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_nanos();
        (created >= since && made_of == image).then(|| id.to_string())
    }

    /// Restores into a new container made with `podman create` as the archive's
    /// `config.dump` says: the archive is restored into it, then podman restores the process.
    fn restore_created(
        &self,
        archive: &Path,
        dumps: &Dumps,
        name: &str,
        options: &RestoreOptions,
    ) -> Result<RestoreReport> {
        let started = Instant::now();
        let (info, made) = self.make_new(archive, dumps, name, options)?;
        let create_seconds = started.elapsed().as_secs_f64();
        let importer = Importer::new().share(options.share).only(podman::RESTORED_MEMBERS);
        let restored = self.place_new(archive, &info, &made, importer).and_then(|import| {
            let podman_seconds = create_seconds + self.resume(&info, options)?;
            Ok((import, podman_seconds))
        });
        match restored {
            Ok((import, podman_seconds)) => Ok(RestoreReport { container: info.id, podman_seconds, import }),
            Err(e) => {
                self.remove_made(&made);
                Err(e)
            }
        }
    }

    /// Makes the new container as the archive's `config.dump` says and readies it for the
    /// checkpoint; removed again if that fails.
    fn make_new(
        &self,
        archive: &Path,
        dumps: &Dumps,
        name: &str,
        options: &RestoreOptions,
    ) -> Result<(Container, Made)> {
        let config = dumps.config.as_ref().expect("a new container is made from config.dump");
        let old_volumes = named_volumes(config);
        if let Some((name, _)) = old_volumes.iter().find(|(name, _)| podman::check_volume_name(name).is_err())
        {
            return Err(Error::unsuitable(archive, format!("config.dump: {name:?} is not a volume name")));
        }
        // Volumes podman makes for the new container are removed with it if the restore fails.
        let volumes_before = if old_volumes.is_empty() { Vec::new() } else { self.volume_names()? };
        let id = self.create_like(archive, config, name)?;
        let mut made = Made { id, volumes: Vec::new(), fill: Vec::new() };
        let prepared = self.inspect(&made.id).and_then(|info| {
            made.volumes =
                info.volumes.iter().map(|v| v.name.clone()).filter(|n| !volumes_before.contains(n)).collect();
            if !options.ignore_volumes {
                made.fill = volumes_to_fill(&old_volumes, &info)?;
            }
            self.prepare_new(info, archive, dumps)
        });
        match prepared {
            Ok(info) => Ok((info, made)),
            Err(e) => {
                self.remove_made(&made);
                Err(e)
            }
        }
    }

    /// Restores the checkpoint and rootfs changes into the new container. A new container's
    /// layer holds nothing of its own yet: the archive's changes are applied to an empty layer.
    fn place_new(
        &self,
        archive: &Path,
        info: &Container,
        made: &Made,
        importer: Importer,
    ) -> Result<ImportStats> {
        let mut importer = importer.rootfs(Rootfs::Diff { upper: info.upper.clone(), lowers: Vec::new() });
        for (name, dir) in &made.fill {
            importer = importer.volume(name, dir);
        }
        let stats = importer.import(archive, &info.bundle)?;
        complete(&stats, &info.bundle)?;
        Ok(stats)
    }

    /// Has podman restore the process from the container's checkpoint; the seconds it took.
    fn resume(&self, info: &Container, options: &RestoreOptions) -> Result<f64> {
        let started = Instant::now();
        let mut args = vec!["container", "restore"];
        args.extend(criu_flags(options.tcp_established, options.file_locks));
        args.push(&info.id);
        self.run(&args)?;
        Ok(started.elapsed().as_secs_f64())
    }

    /// The names of the volumes podman has.
    fn volume_names(&self) -> Result<Vec<String>> {
        Ok(self.run(&["volume", "ls", "--quiet"])?.lines().map(str::to_string).collect())
    }

    /// Removes a container made for a restore that failed, and the volumes made with it.
    fn remove_made(&self, made: &Made) {
        self.remove(&made.id);
        for volume in &made.volumes {
            if let Err(e) = self.run(&["volume", "rm", "--force", volume]) {
                log::warn!("cannot remove volume {volume}, made for the restore: {e}");
            }
        }
    }

    /// Creates a container as `config` (the archive's `config.dump`) says; its ID.
    fn create_like(&self, archive: &Path, config: &Value, name: &str) -> Result<String> {
        let bad = |why: String| Error::unsuitable(archive, format!("config.dump: {why}"));
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

    /// Gives the new container `info` the runtime spec the checkpointed process ran under, with
    /// the old container's places made its own; podman's restore then mounts its rootfs and
    /// makes its `/etc/hosts`, secrets and `/dev/shm` as it would for `init`.
    fn prepare_new(&self, info: Container, archive: &Path, dumps: &Dumps) -> Result<Container> {
        let spec = dumps.spec.as_ref().expect("a new container needs spec.dump");
        let config = dumps.config.as_ref().expect("a new container is made from config.dump");
        let text = |key: &str| config.get(key).and_then(Value::as_str).filter(|v| !v.is_empty());
        let refuse = |why: String| {
            Error::unsuitable(
                archive,
                format!("{why}; the recreated container would not be the checkpointed one"),
            )
        };
        same_image(archive, config, &info.image)?;
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
            new_volumes: info.volumes.iter().map(|v| (v.dest.as_str(), v.dir.as_path())).collect(),
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

/// A container made for a restore.
struct Made {
    id: String,
    /// The volumes podman made with it.
    volumes: Vec<String>,
    /// The volumes whose archived contents are put back: the archive's name for each (the
    /// checkpointed container's), and the new container's volume directory.
    fill: Vec<(String, PathBuf)>,
}

/// The checkpointed container's named volumes, from `config.dump`: name, destination.
fn named_volumes(config: &Value) -> Vec<(String, String)> {
    let volumes = config.get("namedVolumes").and_then(Value::as_array);
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
    volumes.into_iter().flatten().map(|v| (text(v, "volumeName"), text(v, "dest"))).collect()
}

/// Where each of the checkpointed container's volumes is put back: into the new container's
/// volume at the same destination (an anonymous volume gets a new name), which must be empty,
/// since ckpt does not merge a checkpoint into what a volume already holds.
fn volumes_to_fill(old: &[(String, String)], new: &Container) -> Result<Vec<(String, PathBuf)>> {
    let mut fill = Vec::with_capacity(old.len());
    for (name, dest) in old {
        let Some(volume) = new.volumes.iter().find(|v| &v.dest == dest) else {
            return Err(Error::refused(
                &new.bundle,
                format!("the new container has no volume at {dest}, where volume {name} was"),
            ));
        };
        let mut entries = std::fs::read_dir(&volume.dir).at("read directory", &volume.dir)?;
        if entries.next().is_some() {
            return Err(Error::refused(
                &volume.dir,
                format!(
                    "volume {} already holds files, which ckpt does not merge a checkpoint into: \
                     remove the volume, or give --ignore-volumes to use it as it is",
                    volume.name
                ),
            ));
        }
        fill.push((name.clone(), volume.dir.clone()));
    }
    Ok(fill)
}

/// A failed member means the checkpoint is not whole: a restore from it would not be the
/// checkpointed process.
fn complete(stats: &ImportStats, bundle: &Path) -> Result<()> {
    if let Some(first) = stats.refused.first().or(stats.failed.first()) {
        return Err(Error::refused(bundle, format!("checkpoint member not restored: {first}")));
    }
    if let Some(first) = stats.conflicts.first() {
        return Err(Error::refused(first, "already exists; the checkpoint was not restored over it"));
    }
    Ok(())
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
        .rootfs(Rootfs::Diff { upper: new_upper.path.clone(), lowers: Vec::new() })
        // The scratch dirs are this process's own, swapped in only when complete.
        .private_destination();
    let stats = importer.import(archive, &new_bundle.path)?;
    complete(&stats, &new_bundle.path)?;
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
pub(super) fn swap_in(from: &Path, to: &Path) -> Result<()> {
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
    /// Each dump as the archive holds it.
    raw: Vec<(&'static [u8], Vec<u8>)>,
}

impl Dumps {
    /// A tar of the dumps, without the blocks that end an archive.
    fn tar(&self) -> Vec<u8> {
        let mut planner = Planner::new(BLOCK);
        let mut out = Vec::new();
        for (name, data) in &self.raw {
            let meta =
                Meta { mode: 0o600, uid: 0, gid: 0, mtime: 0, mtime_nsec: 0, dev_major: 0, dev_minor: 0 };
            let member = Member {
                name: name.to_vec(),
                meta,
                kind: Kind::Regular,
                body: Body::Bytes(data.clone()),
                xattrs: Vec::new(),
            };
            let placed = planner.place(member);
            out.extend(encode_headers(&placed));
            out.extend_from_slice(data);
            out.resize(round_up(out.len() as u64, BLOCK) as usize, 0);
        }
        out
    }
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
    let raw: Vec<(&'static [u8], Vec<u8>)> =
        names.into_iter().zip(found).filter_map(|(name, data)| Some((name, data?))).collect();
    let parse = |wanted: &[u8]| -> Result<Option<Value>> {
        let Some((name, data)) = raw.iter().find(|(name, _)| *name == wanted) else { return Ok(None) };
        serde_json::from_slice(data)
            .map(Some)
            .map_err(|e| Error::damaged(archive, format!("{}: not JSON: {e}", String::from_utf8_lossy(name))))
    };
    let (config, spec) = (parse(podman::CONFIG_DUMP)?, parse(podman::SPEC_DUMP)?);
    Ok(Dumps { config, spec, raw })
}

/// The ID of the image the checkpointed container ran on (empty when `config` names none).
fn checkpointed_image(config: &Value) -> &str {
    config.get("rootfsImageID").and_then(Value::as_str).unwrap_or_default()
}

/// Refuses a new container made of another image than the checkpointed one ran on
/// (`config.dump`'s `rootfsImageID`): the rootfs changes would apply to other files.
fn same_image(archive: &Path, config: &Value, image: &str) -> Result<()> {
    match Some(checkpointed_image(config)).filter(|old| !old.is_empty()) {
        Some(old) if old != image => Err(Error::unsuitable(
            archive,
            format!(
                "the checkpointed container ran on image {old}, the new one is made of {image}; the \
                 recreated container would not be the checkpointed one"
            ),
        )),
        _ => Ok(()),
    }
}

/// Moves what was staged into the container podman has just made for the archive (`new`),
/// before podman mounts its rootfs; restores the archive into it in place when the stage is
/// not on its mounts.
fn move_in(
    archive: &Path,
    config: &Value,
    new: &NewContainer,
    staged: Staged<'_>,
    importer: &Importer,
) -> Result<ImportStats> {
    same_image(archive, config, &new.image)?;
    complete(&staged.stats, &new.bundle)?;
    if overlay_uses_upper(&new.upper)? {
        return Err(Error::refused(&new.upper, "podman mounted the layer before ckpt had restored it"));
    }
    if staged.fits(&new.bundle, &new.upper)? {
        return staged.place(&new.bundle, &new.upper);
    }
    let importer = importer.clone().rootfs(Rootfs::Diff { upper: new.upper.clone(), lowers: Vec::new() });
    let stats = importer.import(archive, &new.bundle)?;
    complete(&stats, &new.bundle)?;
    Ok(stats)
}
