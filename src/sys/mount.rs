//! Which mount a path is on, and where that mount starts. Data meant to be cloned must sit on
//! the same mount as its clones: `FICLONERANGE` refuses two mounts even of one filesystem.

use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, StatxFlags};

use crate::error::{Context, Result};

/// A mount, named by the kernel's mount ID and the directory it starts at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub(crate) id: u64,
    pub(crate) top: PathBuf,
}

/// The mount `path` is on, or would be on once created: that of its nearest existing
/// ancestor, symbolic links resolved.
pub(crate) fn of(path: &Path) -> Result<Mount> {
    let absolute = std::path::absolute(path).at("resolve", path)?;
    let existing = absolute.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
    let mut top = existing.canonicalize().at("resolve", existing)?;
    let id = mount_id(&top)?;
    while let Some(parent) = top.parent() {
        if mount_id(parent)? != id {
            break;
        }
        top = parent.to_path_buf();
    }
    Ok(Mount { id, top })
}

/// Whether `a` and `b` are on one mount of one filesystem (and one Btrfs subvolume), so
/// that rename(2) moves entries from one to the other.
pub(crate) fn renames_between(a: &Path, b: &Path) -> Result<bool> {
    let statx = |path: &Path| {
        rustix::fs::statx(CWD, path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID).at("statx", path)
    };
    let (a, b) = (statx(a)?, statx(b)?);
    Ok(a.stx_mnt_id == b.stx_mnt_id
        && (a.stx_dev_major, a.stx_dev_minor) == (b.stx_dev_major, b.stx_dev_minor))
}

fn mount_id(path: &Path) -> Result<u64> {
    let st = rustix::fs::statx(CWD, path, AtFlags::empty(), StatxFlags::MNT_ID).at("statx", path)?;
    Ok(st.stx_mnt_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_not_yet_created_is_on_its_existing_ancestors_mount() {
        let dir = tempfile::tempdir().unwrap();
        let here = of(dir.path()).unwrap();
        assert_eq!(of(&dir.path().join("not/yet/made")).unwrap(), here);
        assert!(dir.path().canonicalize().unwrap().starts_with(&here.top));
    }

    #[test]
    fn the_proc_mount_starts_at_proc() {
        let proc = of(Path::new("/proc/self/status")).unwrap();
        assert_eq!(proc.top, Path::new("/proc"));
        assert_ne!(proc.id, of(Path::new("/")).unwrap().id);
    }
}
