//! A checkpoint bundle as archive members, in the layout podman and CRI-O use: the leading
//! dumps, the bundle members podman's own export takes, and the rootfs changes as a nested
//! `rootfs-diff.tar` with `deleted.files`.

use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::container::overlay::{self, WhiteoutStyle};
use crate::container::podman::{
    BUNDLE_MEMBERS, DELETED_FILES, LEADING, ROOTFS_DIFF, Rootfs, SPEC_DUMP, check_volume_name, volume_member,
};
use crate::error::{Context, Error, Result};
use crate::export::layer::Layer;
use crate::export::member::{Body, Member, Members, Nested};
use crate::export::pieces;
use crate::export::walk::{self, Naming, Skipped, Walk};
use crate::tar::meta::{Kind, Meta};

/// The container's files a checkpoint archive carries beside its bundle, each as a nested
/// archive.
#[derive(Clone, Copy)]
pub(crate) struct ContainerFiles<'a> {
    pub rootfs: Option<&'a Rootfs>,
    /// Named volumes: name, directory.
    pub volumes: &'a [(String, PathBuf)],
    /// The first pass over the rootfs changes, made ahead.
    pub layer_plan: Option<&'a LayerPlan>,
}

/// The first pass over a layer's upper dir: the length of its nested archive, the bytes of
/// file data in it, its deletions, and what it left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LayerPlan {
    upper: PathBuf,
    style: WhiteoutStyle,
    align: u64,
    len: u64,
    bytes: u64,
    deleted: Vec<String>,
    skipped: Vec<PathBuf>,
}

/// The first pass over the layer `upper` (with its `lowers`), for a nested archive aligned to
/// `align`; what it leaves out is added to `skipped`.
pub(crate) fn plan_layer(
    upper: &Path,
    lowers: &[PathBuf],
    style: WhiteoutStyle,
    align: u64,
    skipped: &Skipped,
) -> Result<LayerPlan> {
    let own = Skipped::default();
    let mut layer = Layer::new(upper, lowers, style, own.clone())?;
    let (len, bytes) = pieces::archive_len(&mut layer, align)?;
    let plan = LayerPlan {
        upper: upper.to_path_buf(),
        style,
        align,
        len,
        bytes,
        deleted: layer.deleted(),
        skipped: own.take(),
    };
    for path in &plan.skipped {
        skipped.push(path.clone());
    }
    Ok(plan)
}

/// The members of a checkpoint archive for `bundle` in podman's layout, data aligned to
/// `align`, and the bytes of file data in the rootfs changes and volumes.
pub(crate) fn members(
    bundle: &Path,
    files: ContainerFiles<'_>,
    style: WhiteoutStyle,
    align: u64,
    skipped: &Skipped,
) -> Result<(Members<'static>, u64)> {
    let inventory = bundle.join("checkpoint/inventory.img");
    if !std::fs::symlink_metadata(&inventory).is_ok_and(|m| m.is_file()) {
        return Err(Error::unsuitable(
            inventory,
            "missing: not a checkpoint bundle (CRIU writes inventory.img)",
        ));
    }
    let leading = leading_members(bundle)?;
    let (mut trailing, mut nested_bytes) = match files.rootfs {
        Some(rootfs) => {
            for name in [ROOTFS_DIFF, DELETED_FILES] {
                let path = bundle.join(OsStr::from_bytes(name));
                if std::fs::symlink_metadata(&path).is_ok() {
                    return Err(Error::unsuitable(
                        path,
                        "the bundle already holds the rootfs changes; remove it or leave out the rootfs option",
                    ));
                }
            }
            rootfs_members(rootfs, files.layer_plan, style, align, skipped)?
        }
        None => (Vec::new(), 0),
    };
    for (name, dir) in files.volumes {
        let (member, bytes) = volume_archive(name, dir, align, skipped)?;
        trailing.push(member);
        nested_bytes += bytes;
    }
    // The walk takes what it is not told to omit: omit every other top-level name.
    let mut omit: Vec<Vec<u8>> = LEADING.iter().map(|n| n.to_vec()).collect();
    for entry in std::fs::read_dir(bundle).at("read directory", bundle)? {
        let name = entry.at("read directory", bundle)?.file_name().into_vec();
        if !BUNDLE_MEMBERS.contains(&name.as_slice()) && !omit.contains(&name) {
            log::debug!(
                "{}: not a checkpoint member, left out",
                bundle.join(OsStr::from_bytes(&name)).display()
            );
            omit.push(name);
        }
    }
    let omit: Vec<&[u8]> = omit.iter().map(Vec::as_slice).collect();
    let rest = Walk::new(bundle, Naming::Bare, skipped.clone())?.omit(&omit);
    let members = leading.into_iter().map(Ok).chain(rest).chain(trailing.into_iter().map(Ok));
    Ok((Box::new(members), nested_bytes))
}

/// `config.dump` and `spec.dump`. Podman writes both only when it exports a checkpoint
/// itself; after `podman container checkpoint --keep` the bundle has neither. `spec.dump` is
/// the container's `config.json` as podman saves it, so it is taken from there when missing;
/// `config.dump` (libpod's own container record) cannot be made by anyone but podman and is
/// left out with a warning: `podman container restore --import` needs it.
fn leading_members(bundle: &Path) -> Result<Vec<Member>> {
    let mut members = Vec::with_capacity(LEADING.len());
    for name in LEADING {
        let path = bundle.join(OsStr::from_bytes(name));
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => members.push(walk::describe(&path, name.to_vec(), &meta)?),
            Ok(_) => return Err(Error::unsuitable(path, "not a regular file")),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io("lstat", path, e)),
            Err(_) if name == SPEC_DUMP => {
                let config = bundle.join("config.json");
                match std::fs::symlink_metadata(&config) {
                    Ok(meta) if meta.is_file() => {
                        let data = std::fs::read(&config).at("read", &config)?;
                        let described = walk::describe(&config, name.to_vec(), &meta)?;
                        let meta = Meta { mode: 0o600, ..described.meta };
                        members.push(Member { body: Body::Bytes(data), meta, ..described });
                    }
                    _ => return Err(Error::unsuitable(path, "missing, and no config.json to take it from")),
                }
            }
            Err(_) => log::warn!(
                "{}: missing (podman writes it only when it exports a checkpoint): the archive \
                 cannot be restored with podman container restore --import",
                path.display()
            ),
        }
    }
    Ok(members)
}

/// `rootfs-diff.tar` and, with podman's whiteouts, `deleted.files`; and the bytes of file data
/// in the layer.
fn rootfs_members(
    rootfs: &Rootfs,
    planned: Option<&LayerPlan>,
    style: WhiteoutStyle,
    align: u64,
    skipped: &Skipped,
) -> Result<(Vec<Member>, u64)> {
    let (upper, lowers) = match rootfs {
        Rootfs::Diff { upper, lowers } => (upper.clone(), lowers.clone()),
        Rootfs::Mount(path) => {
            let mount = overlay::find_overlay(path)?.ok_or_else(|| {
                Error::unsuitable(
                    path,
                    "not an overlay mount point; name the layer's diff dir with --rootfs-diff",
                )
            })?;
            (mount.upper, mount.lowers)
        }
    };
    // The nested archive's header, which announces its length, comes before its members, and
    // deleted.files after them lists what the whole layer deletes: a first pass over the layer
    // finds both without holding its members.
    let ahead = planned.filter(|plan| plan.upper == upper && plan.style == style && plan.align == align);
    let plan = match ahead {
        Some(plan) => {
            for path in &plan.skipped {
                skipped.push(path.clone());
            }
            plan.clone()
        }
        None => plan_layer(&upper, &lowers, style, align, skipped)?,
    };
    let LayerPlan { len, bytes, deleted, .. } = plan;
    let header_meta = nested_meta(&std::fs::metadata(&upper).at("stat", &upper)?);
    let path = upper.clone();
    let expected = ahead.is_some().then(|| deleted.clone());
    let second_pass = move || -> Result<Members<'static>> {
        // What the first pass skipped has been reported, and its deletions listed; one made
        // ahead, while the layer could still change, is checked by this one (its length is
        // checked as for any nested archive).
        let layer = Layer::new(&upper, &lowers, style, Skipped::default())?;
        Ok(Box::new(match expected {
            Some(deleted) => layer.expecting_deleted(deleted),
            None => layer.members_only(),
        }))
    };
    let mut members = vec![Member {
        name: ROOTFS_DIFF.to_vec(),
        meta: header_meta,
        kind: Kind::Regular,
        body: Body::Archive(Nested { len, path, members: Box::new(second_pass) }),
        xattrs: Vec::new(),
    }];
    if !deleted.is_empty() {
        let json = serde_json::to_vec(&deleted).expect("a list of strings serializes");
        members.push(Member {
            name: DELETED_FILES.to_vec(),
            meta: header_meta,
            kind: Kind::Regular,
            body: Body::Bytes(json),
            xattrs: Vec::new(),
        });
    }
    Ok((members, bytes))
}

/// The metadata of the header of a nested archive of a directory (`dir` is its metadata):
/// private, root's, and the directory's time.
fn nested_meta(dir: &std::fs::Metadata) -> Meta {
    Meta { mode: 0o600, uid: 0, gid: 0, mtime: dir.mtime(), mtime_nsec: 0, dev_major: 0, dev_minor: 0 }
}

/// A named volume's contents as podman's export carries them: `volumes/NAME.tar`, the volume's
/// directory as `./` and what is beneath it; and the bytes of file data in it.
fn volume_archive(name: &str, dir: &Path, align: u64, skipped: &Skipped) -> Result<(Member, u64)> {
    check_volume_name(name)?;
    let meta = std::fs::metadata(dir).at("stat", dir)?;
    if !meta.is_dir() {
        return Err(Error::unsuitable(dir, format!("volume {name}: not a directory")));
    }
    // As for the rootfs changes, a first pass finds the nested archive's length.
    let walk = |skipped: Skipped, dir: &Path| Walk::new(dir, Naming::BareWithRoot, skipped);
    let (len, bytes) = pieces::archive_len(walk(skipped.clone(), dir)?, align)?;
    let (path, owned) = (dir.to_path_buf(), dir.to_path_buf());
    let second_pass = move || -> Result<Members<'static>> { Ok(Box::new(walk(Skipped::default(), &owned)?)) };
    let member = Member {
        name: volume_member(name),
        meta: nested_meta(&meta),
        kind: Kind::Regular,
        body: Body::Archive(Nested { len, path, members: Box::new(second_pass) }),
        xattrs: Vec::new(),
    };
    Ok((member, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::export::Exporter;

    /// A checkpoint bundle (it has CRIU's inventory) and a layer holding one small file.
    fn bundle_and_layer(dir: &Path) -> (PathBuf, PathBuf) {
        let (bundle, upper) = (dir.join("bundle"), dir.join("upper"));
        std::fs::create_dir_all(bundle.join("checkpoint")).unwrap();
        std::fs::write(bundle.join("checkpoint/inventory.img"), b"inventory").unwrap();
        std::fs::write(bundle.join("config.dump"), b"{}").unwrap();
        std::fs::write(bundle.join("spec.dump"), b"{}").unwrap();
        std::fs::create_dir(&upper).unwrap();
        std::fs::write(upper.join("kept"), b"kept").unwrap();
        (bundle, upper)
    }

    fn exporter(upper: &Path) -> Exporter {
        Exporter::new()
            .bundle_layout(true)
            .rootfs(Rootfs::Diff { upper: upper.to_path_buf(), lowers: Vec::new() })
    }

    #[test]
    fn a_layer_planned_ahead_and_unchanged_is_archived_as_without_the_plan() {
        let dir = tempfile::tempdir().unwrap();
        let (bundle, upper) = bundle_and_layer(dir.path());
        let (planned, unplanned) = (dir.path().join("planned.tar"), dir.path().join("unplanned.tar"));
        let plan = exporter(&upper).plan_layer(&planned).unwrap();
        exporter(&upper).with_layer_plan(plan).export(&bundle, &planned).unwrap();
        exporter(&upper).export(&bundle, &unplanned).unwrap();
        assert_eq!(std::fs::read(&planned).unwrap(), std::fs::read(&unplanned).unwrap());
    }

    #[test]
    fn a_deletion_made_after_the_layer_was_planned_fails_the_export_as_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (bundle, upper) = bundle_and_layer(dir.path());
        let out = dir.path().join("c.tar");
        let plan = exporter(&upper).plan_layer(&out).unwrap();
        // A whiteout as unprivileged overlay mounts write them: no member of its own, so the
        // nested archive keeps its length.
        let whiteout = upper.join("gone");
        std::fs::write(&whiteout, b"").unwrap();
        rustix::fs::setxattr(&whiteout, "user.overlay.whiteout", b"y", rustix::fs::XattrFlags::empty())
            .unwrap();
        let e = exporter(&upper).with_layer_plan(plan).export(&bundle, &out).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SourceChanged, "{e}");
        assert!(e.to_string().contains("deletions"), "{e}");
        assert!(!out.exists(), "a failed export left {}", out.display());
    }

    #[test]
    fn a_file_grown_after_the_layer_was_planned_fails_the_export_as_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (bundle, upper) = bundle_and_layer(dir.path());
        let out = dir.path().join("c.tar");
        let plan = exporter(&upper).plan_layer(&out).unwrap();
        std::fs::write(upper.join("kept"), vec![b'x'; 10_000]).unwrap();
        let e = exporter(&upper).with_layer_plan(plan).export(&bundle, &out).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SourceChanged, "{e}");
        assert!(!out.exists(), "a failed export left {}", out.display());
    }
}
