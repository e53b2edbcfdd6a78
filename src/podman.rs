//! The checkpoint archive layout podman and CRI-O use (`podman container checkpoint
//! --export`): the bundle's files with `config.dump` and `spec.dump` first, then CRIU's
//! `checkpoint/` images, and the container's rootfs changes as a nested `rootfs-diff.tar` with
//! the deleted paths in `deleted.files`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use crate::member::{Body, Kind, Member, Meta};
use crate::overlay::{self, WhiteoutStyle};
use crate::walk::{self, Naming, Skipped};

pub const ROOTFS_DIFF: &[u8] = b"rootfs-diff.tar";
pub const DELETED_FILES: &[u8] = b"deleted.files";
/// Written first so readers (podman's import, checkpointctl) can stop early.
const LEADING: [&[u8]; 2] = [b"config.dump", b"spec.dump"];
/// deleted.files is a list of paths; anything larger than this is not one (memory stays
/// bounded on hostile input).
pub const MAX_DELETED_FILES: u64 = 8 << 20;

/// Where a container's rootfs changes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rootfs {
    /// The container's overlay mount point: its upper and lower dirs are looked up.
    Mount(PathBuf),
    /// A layer's diff (upper) dir, with its lower dirs when known.
    Diff { upper: PathBuf, lowers: Vec<PathBuf> },
}

/// The members of a checkpoint archive for `bundle`, in podman's layout.
pub(crate) fn bundle_members(
    bundle: &Path,
    rootfs: Option<&Rootfs>,
    style: WhiteoutStyle,
    skipped: &mut Skipped,
) -> Result<Vec<Member>> {
    let inventory = bundle.join("checkpoint/inventory.img");
    if !std::fs::symlink_metadata(&inventory).is_ok_and(|m| m.is_file()) {
        return Err(Error::invalid(
            inventory,
            "missing: not a checkpoint bundle (CRIU writes inventory.img)",
        ));
    }
    let mut rest = walk::walk(bundle, Naming::Bare, skipped)?;
    let mut members = Vec::with_capacity(rest.len() + 2);
    for name in LEADING {
        let index = rest.iter().position(|m| m.name == name && m.kind == Kind::Regular).ok_or_else(|| {
            Error::invalid(
                bundle.join(String::from_utf8_lossy(name).as_ref()),
                "missing from the checkpoint bundle",
            )
        })?;
        members.push(rest.remove(index));
    }
    if let Some(rootfs) = rootfs {
        if let Some(clash) = rest.iter().find(|m| m.name == ROOTFS_DIFF || m.name == DELETED_FILES) {
            return Err(Error::invalid(
                bundle.join(String::from_utf8_lossy(&clash.name).as_ref()),
                "the bundle already holds the rootfs changes; remove it or leave out the rootfs option",
            ));
        }
        members.extend(rest);
        members.extend(rootfs_members(rootfs, style, skipped)?);
    } else {
        members.extend(rest);
    }
    Ok(members)
}

fn rootfs_members(rootfs: &Rootfs, style: WhiteoutStyle, skipped: &mut Skipped) -> Result<Vec<Member>> {
    let (upper, lowers) = match rootfs {
        Rootfs::Diff { upper, lowers } => (upper.clone(), lowers.clone()),
        Rootfs::Mount(path) => {
            let mount = overlay::find_overlay(path)?.ok_or_else(|| {
                Error::invalid(
                    path,
                    "not an overlay mount point; name the layer's diff dir with --rootfs-diff",
                )
            })?;
            (mount.upper, mount.lowers)
        }
    };
    let diff = overlay::read_layer(&upper, &lowers, style, skipped)?;
    // The nested archive's header takes its owner and time from the upper dir.
    let meta = std::fs::metadata(&upper).at("stat", &upper)?;
    let header_meta =
        Meta { mode: 0o600, uid: 0, gid: 0, mtime: meta.mtime(), mtime_nsec: 0, dev_major: 0, dev_minor: 0 };
    let mut members = vec![Member {
        name: ROOTFS_DIFF.to_vec(),
        meta: header_meta,
        kind: Kind::Regular,
        body: Body::Members(diff.members),
        xattrs: Vec::new(),
    }];
    if !diff.deleted.is_empty() {
        let json = serde_json::to_vec(&diff.deleted).expect("a list of strings serializes");
        members.push(Member {
            name: DELETED_FILES.to_vec(),
            meta: header_meta,
            kind: Kind::Regular,
            body: Body::Bytes(json),
            xattrs: Vec::new(),
        });
    }
    Ok(members)
}

/// The bundle-relative name of a member (`./config.dump` and `config.dump` alike).
pub(crate) fn bundle_name(name: &[u8]) -> &[u8] {
    let mut name = name;
    while let Some(rest) = name.strip_prefix(b"./") {
        name = rest;
    }
    name.strip_prefix(b"/").unwrap_or(name)
}

/// Parses `deleted.files`: a JSON array of absolute paths.
pub(crate) fn parse_deleted_files(data: &[u8], archive: &Path) -> Result<Vec<String>> {
    serde_json::from_slice(data)
        .map_err(|e| Error::invalid(archive, format!("deleted.files is not a JSON list of paths: {e}")))
}
