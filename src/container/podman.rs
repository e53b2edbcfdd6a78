//! The checkpoint archive layout podman and CRI-O use (`podman container checkpoint
//! --export`): the bundle's files with `config.dump` and `spec.dump` first, then CRIU's
//! `checkpoint/` images, and the container's rootfs changes as a nested `rootfs-diff.tar` with
//! the deleted paths in `deleted.files`. The names and rules only; export and import apply them.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tar::meta::Kind;
use crate::tar::reader::Entry;

pub(crate) const ROOTFS_DIFF: &[u8] = b"rootfs-diff.tar";
pub(crate) const DELETED_FILES: &[u8] = b"deleted.files";
pub(crate) const CONFIG_DUMP: &[u8] = b"config.dump";
pub(crate) const SPEC_DUMP: &[u8] = b"spec.dump";
/// Written first so readers (podman's import, checkpointctl) can stop early.
pub(crate) const LEADING: [&[u8]; 2] = [CONFIG_DUMP, SPEC_DUMP];
/// deleted.files is a list of paths; anything larger than this is not one (memory stays
/// bounded on hostile input).
pub(crate) const MAX_DELETED_FILES: u64 = 8 << 20;

/// Where a container's rootfs changes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rootfs {
    /// The container's overlay mount point: its upper and lower dirs are looked up.
    Mount(PathBuf),
    /// A layer's diff (upper) dir, with its lower dirs when known.
    Diff {
        /// The diff dir.
        upper: PathBuf,
        /// Its lower dirs, topmost first (an export needs them to list what an opaque
        /// directory hides).
        lowers: Vec<PathBuf>,
    },
}

/// The bundle members podman's own export takes (libpod `exportCheckpoint`), after the
/// leading ones, plus CRI-O's `bind.mounts`. Everything else in a container's userdata dir
/// (config.json, secrets/, shm/, dump.log, ...) belongs to the runtime or must not leave the
/// host: secrets are held there in plain text.
pub(crate) const BUNDLE_MEMBERS: [&[u8]; 9] = [
    b"artifacts",
    b"bind.mounts",
    b"checkpoint",
    b"ctr.log",
    b"devshm-checkpoint.tar",
    b"network.status",
    b"stats-dump",
    ROOTFS_DIFF,
    DELETED_FILES,
];

/// The bundle members a restore puts into a container's userdata dir: CRIU's images and the
/// `/dev/shm` contents podman restores from there. The archive's other members describe the
/// old container, and its userdata files (config.json, ctr.log, ...) belong to the runtime.
pub(crate) const RESTORED_MEMBERS: [&str; 2] = ["checkpoint", "devshm-checkpoint.tar"];

/// The bundle-relative name of a member (`./config.dump` and `config.dump` alike).
pub(crate) fn bundle_name(name: &[u8]) -> &[u8] {
    let mut name = name;
    while let Some(rest) = name.strip_prefix(b"./") {
        name = rest;
    }
    name.strip_prefix(b"/").unwrap_or(name)
}

/// The bundle name of named volume `name`'s contents, a nested archive, in podman's export.
pub(crate) fn volume_member(name: &str) -> Vec<u8> {
    format!("volumes/{name}.tar").into_bytes()
}

/// Refuses a volume name whose member would not be one file directly in `volumes/`.
pub(crate) fn check_volume_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(Error::usage(
            format!("volume {name:?}"),
            "not a volume name (empty, or with a slash or a leading dot)",
        ));
    }
    Ok(())
}

/// Whether `entry` is the container's rootfs changes, the archive nested in a checkpoint
/// archive: a regular file named `rootfs-diff.tar` at the top of the bundle.
pub(crate) fn is_rootfs_diff(entry: &Entry) -> bool {
    entry.kind == Some(Kind::Regular) && bundle_name(&entry.name) == ROOTFS_DIFF
}

/// Tells the archives nested in a checkpoint archive from its other members, member by
/// member: `rootfs-diff.tar` always, and a named volume's `volumes/NAME.tar` once the archive
/// has shown itself a checkpoint's (a `config.dump`, `spec.dump` or `checkpoint/` member
/// before it, as in podman's layout and ckpt's), so that a `volumes/x.tar` in an archive of
/// some other tree is not taken for one.
#[derive(Debug, Default)]
pub(crate) struct NestedArchives {
    in_checkpoint: bool,
}

impl NestedArchives {
    /// Whether `entry`, the next member of the archive, is a nested archive.
    pub(crate) fn is_nested(&mut self, entry: &Entry) -> bool {
        let name = bundle_name(&entry.name);
        self.in_checkpoint |= LEADING.contains(&name) || name.starts_with(b"checkpoint/");
        let volume = || {
            let volume = name.strip_prefix(b"volumes/").and_then(|n| n.strip_suffix(b".tar"));
            volume.and_then(|n| std::str::from_utf8(n).ok()).is_some_and(|n| check_volume_name(n).is_ok())
        };
        entry.kind == Some(Kind::Regular) && (name == ROOTFS_DIFF || (self.in_checkpoint && volume()))
    }
}

/// Parses `deleted.files`: a JSON array of absolute paths.
pub(crate) fn parse_deleted_files(data: &[u8], archive: &Path) -> Result<Vec<String>> {
    serde_json::from_slice(data)
        .map_err(|e| Error::damaged(archive, format!("deleted.files is not a JSON list of paths: {e}")))
}
