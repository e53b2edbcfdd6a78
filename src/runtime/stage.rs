//! Restoring into a new container while podman makes it: the checkpoint and the rootfs
//! changes are cloned into private directories in podman's store, the new container's
//! directories are known only once podman has made it, and then the staged entries are
//! renamed into them. The clones and podman's own start-up overlap.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, RenameFlags};
use serde_json::Value;

use crate::container::podman;
use crate::container::store::{stored_containers, stored_images};
use crate::error::{Context, Error, Result};
use crate::import::Importer;
use crate::import::stats::ImportStats;
use crate::sys::mount;

use super::Scratch;
use super::restore::swap_in;

/// Private directories beside the directories podman keeps its containers' userdata dirs and
/// its layers in (each a mount of its own: podman bind-mounts its layers' directory), holding
/// a checkpoint's bundle members and rootfs changes until their container exists.
pub(super) struct Stage {
    /// The store's containers directory (`GRAPHROOT/overlay-containers`).
    containers: PathBuf,
    /// The store's layers directory (`GRAPHROOT/overlay`).
    layers: PathBuf,
    bundle: Scratch,
    diff: Scratch,
}

/// A checkpoint restored into a stage.
pub(super) struct Staged<'a> {
    stage: &'a Stage,
    pub(super) stats: ImportStats,
    /// Whether the archive gave the layer's own directory its metadata (`./`).
    layer_root: bool,
}

/// A container podman has just made in the stage's store.
pub(super) struct NewContainer {
    pub id: String,
    /// The ID of the image it is made of.
    pub image: String,
    /// Its userdata dir.
    pub bundle: PathBuf,
    /// Its layer's upper dir.
    pub upper: PathBuf,
}

impl Stage {
    /// A stage in the overlay store the checkpointed container was in (its userdata dir was
    /// `STORAGE/overlay-containers/ID/userdata`, as `config.dump`'s `staticDir` says), when
    /// this host has that store and it holds the image `image`: a restore on the host of the
    /// checkpoint lands there. `None` when there is no such store.
    pub(super) fn in_store_of(config: &Value, image: &str) -> Option<Stage> {
        let static_dir = Path::new(config.get("staticDir").and_then(Value::as_str)?);
        let containers = static_dir.parent()?.parent()?;
        let store = containers.parent()?;
        let layers = store.join("overlay");
        // The archive names the directories: only those of a containers/storage store that no
        // other user can change are used.
        if !static_dir.is_absolute()
            || static_dir.file_name()? != "userdata"
            || containers.file_name()? != "overlay-containers"
            || !containers.join("containers.json").is_file()
            || !layers.is_dir()
            || !out_of_others_reach(store)
            || ![containers, &layers].into_iter().all(|dir| out_of_others_reach_below(store, dir))
            || !stored_images(&store.join("overlay-images")).is_ok_and(|ids| ids.iter().any(|i| i == image))
        {
            return None;
        }
        let made = Scratch::create(containers, "restore").and_then(|bundle| {
            let diff = Scratch::create(&layers, "restore")?;
            Ok(Stage { containers: containers.to_path_buf(), layers: layers.clone(), bundle, diff })
        });
        match made {
            Ok(stage) => Some(stage),
            Err(e) => {
                log::debug!("not staging the restore in {}: {e}", containers.display());
                None
            }
        }
    }

    /// The store's containers directory.
    pub(super) fn containers(&self) -> &Path {
        &self.containers
    }

    /// The IDs of the store's containers named `name`.
    pub(super) fn named(&self, name: &str) -> Result<Vec<String>> {
        let all = stored_containers(&self.containers)?;
        Ok(all.into_iter().filter(|c| c.names.iter().any(|n| n == name)).map(|c| c.id).collect())
    }

    /// The store's container named `name` that is none of `before`, with its directories,
    /// once it has them.
    pub(super) fn made(&self, name: &str, before: &[String]) -> Result<Option<NewContainer>> {
        let all = stored_containers(&self.containers)?;
        let found = all.into_iter().find(|c| c.names.iter().any(|n| n == name) && !before.contains(&c.id));
        let Some(found) = found else { return Ok(None) };
        let (bundle, upper) = (found.userdata(&self.containers)?, found.upper(&self.layers)?);
        if !bundle.is_dir() || !upper.is_dir() {
            return Ok(None);
        }
        Ok(Some(NewContainer { id: found.id, image: found.image, bundle, upper }))
    }

    /// Writes back the filesystems of the store's containers and layers directories
    /// (`syncfs`, once if they share one). Only a head start for the data: a failure is the
    /// next sync's to report.
    pub(super) fn write_back(&self) {
        let mut synced = None;
        for dir in [&self.containers, &self.layers] {
            let synced_now = std::fs::File::open(dir).and_then(|dir| {
                let dev = dir.metadata()?.dev();
                if synced != Some(dev) {
                    rustix::fs::syncfs(&dir)?;
                }
                Ok(dev)
            });
            match synced_now {
                Ok(dev) => synced = Some(dev),
                Err(e) => log::debug!("syncfs {}: {e}", dir.display()),
            }
        }
    }

    /// Restores `archive` with `importer` (whose rootfs is set here) into the stage.
    pub(super) fn import(&self, importer: Importer, archive: &Path) -> Result<Staged<'_>> {
        let upper = self.diff.path.clone();
        // Only this process can reach the stage, and it is removed unless the whole import
        // succeeds: no file needs to be written unnamed first.
        let importer =
            importer.rootfs(podman::Rootfs::Diff { upper, lowers: Vec::new() }).private_destination();
        let (stats, layer_root) = importer.import_noting_layer_root(archive, &self.bundle.path)?;
        Ok(Staged { stage: self, stats, layer_root })
    }
}

impl Staged<'_> {
    /// Whether the staged entries can be renamed into a new container's userdata dir
    /// `bundle` and upper dir `upper`: each stage is on the mount and filesystem of its
    /// directory, and the layer is still empty.
    pub(super) fn fits(&self, bundle: &Path, upper: &Path) -> Result<bool> {
        for (stage, dir) in [(&self.stage.bundle.path, bundle), (&self.stage.diff.path, upper)] {
            if !mount::renames_between(stage, dir)? {
                log::debug!("{}: not on the mount of {}; restoring in place", stage.display(), dir.display());
                return Ok(false);
            }
        }
        let mut entries = std::fs::read_dir(upper).at("read directory", upper)?;
        Ok(entries.next().is_none())
    }

    /// Renames the staged bundle members into the new container's userdata dir `bundle` and
    /// the rootfs changes into its upper dir `upper`; what a rename would replace is refused
    /// instead.
    pub(super) fn place(self, bundle: &Path, upper: &Path) -> Result<ImportStats> {
        for name in podman::RESTORED_MEMBERS {
            let from = self.stage.bundle.path.join(name);
            if std::fs::symlink_metadata(&from).is_ok() {
                move_new(&from, &bundle.join(name))?;
            }
        }
        let diff = &self.stage.diff.path;
        if self.layer_root {
            // The staged directory is the layer's as the archive has it; it replaces the new
            // container's empty one.
            swap_in(diff, upper)?;
        } else {
            // The layer's directory keeps podman's owner, mode and times; only its entries move.
            for entry in std::fs::read_dir(diff).at("read directory", diff)? {
                let entry = entry.at("read directory", diff)?;
                move_new(&entry.path(), &upper.join(entry.file_name()))?;
            }
        }
        log::debug!(
            "{} and {}: restored there while podman made the container, moved into the container",
            self.stage.bundle.path.display(),
            diff.display()
        );
        Ok(self.stats)
    }
}

/// Whether no other user can rename, replace or add entries in `dir`, nor in any directory
/// above it: each is this user's or root's, and writable by no one else unless sticky.
fn out_of_others_reach(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else { return false };
    dir.ancestors().all(|d| std::fs::symlink_metadata(d).is_ok_and(|m| private(&m)))
}

/// Whether `dir`, in the directory `store` (out of others' reach itself), is out of others'
/// reach: when it is directly in `store`, only `dir` is looked at.
fn out_of_others_reach_below(store: &Path, dir: &Path) -> bool {
    let (Ok(store), Ok(dir)) = (store.canonicalize(), dir.canonicalize()) else { return false };
    if dir.parent() != Some(store.as_path()) {
        return out_of_others_reach(&dir);
    }
    std::fs::symlink_metadata(&dir).is_ok_and(|m| private(&m))
}

/// Whether only this user or root can rename, replace or add entries in the directory `m`.
fn private(m: &std::fs::Metadata) -> bool {
    let me = rustix::process::geteuid().as_raw();
    (m.uid() == me || m.uid() == 0) && (m.mode() & 0o022 == 0 || m.mode() & 0o1000 != 0)
}

/// Renames `from` to `to`, which must not exist.
fn move_new(from: &Path, to: &Path) -> Result<()> {
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => {
            Err(Error::refused(to, "already exists; the checkpoint was not restored over it"))
        }
        Err(e) => Err(Error::io("rename into place", to, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_store_below_a_directory_others_can_write_to_is_not_staged_in() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        let store = open.join("storage");
        std::fs::create_dir_all(&store).unwrap();
        let set =
            |path: &Path, mode: u32| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        set(&open, 0o755).unwrap();
        assert!(out_of_others_reach(&store), "{}", store.display());
        set(&open, 0o777).unwrap();
        assert!(!out_of_others_reach(&store));
        // Sticky, as /tmp: others cannot rename or replace what is not theirs.
        set(&open, 0o1777).unwrap();
        assert!(out_of_others_reach(&store));
        set(&store, 0o775).unwrap();
        assert!(!out_of_others_reach(&store));
    }
}
