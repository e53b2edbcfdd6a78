//! A cgroup's freezer: cgroup v1's `freezer.state`, or cgroup v2's `cgroup.freeze` and
//! `cgroup.events`. Freezing stops every task in the cgroup where it is; the kernel reports
//! the cgroup frozen once the last one has stopped.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};

/// How often the state is read while the cgroup freezes.
const POLL: Duration = Duration::from_micros(200);

/// The freezer of one cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Freezer {
    /// cgroup v1: the cgroup's directory in the freezer hierarchy.
    V1(PathBuf),
    /// cgroup v2: the cgroup's directory in the unified hierarchy.
    V2(PathBuf),
}

impl Freezer {
    /// The freezer of the cgroup `cgroup` (a path from a hierarchy's root, as
    /// `/proc/PID/cgroup` gives it) under the cgroup mounts at `root` (`/sys/fs/cgroup`): the
    /// v1 freezer hierarchy's when there is one, else the unified one's. `None` when the cgroup
    /// has neither, or its path is not a plain absolute path.
    pub(crate) fn of(root: &Path, cgroup: &str) -> Option<Freezer> {
        let path = Path::new(cgroup);
        let plain = path.is_absolute()
            && path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !plain {
            return None;
        }
        let relative = path.strip_prefix("/").ok()?;
        let v1 = root.join("freezer").join(relative);
        if v1.join("freezer.state").is_file() {
            return Some(Freezer::V1(v1));
        }
        let v2 = root.join(relative);
        v2.join("cgroup.freeze").is_file().then_some(Freezer::V2(v2))
    }

    /// Freezes the cgroup and waits until it is frozen; false if it is not within `timeout`
    /// (its tasks are then being frozen still).
    pub(crate) fn freeze(&self, timeout: Duration) -> Result<bool> {
        let (file, value) = self.control(true);
        std::fs::write(&file, value).at("write", &file)?;
        let started = Instant::now();
        while !self.frozen()? {
            if started.elapsed() > timeout {
                return Ok(false);
            }
            std::thread::sleep(POLL);
        }
        Ok(true)
    }

    /// Thaws the cgroup; one that no longer exists (its tasks are gone) is not an error.
    pub(crate) fn thaw(&self) -> Result<()> {
        let (file, value) = self.control(false);
        match std::fs::write(&file, value) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other.at("write", &file),
        }
    }

    /// Whether every task of the cgroup is frozen.
    pub(crate) fn frozen(&self) -> Result<bool> {
        match self {
            Freezer::V1(dir) => {
                let state = dir.join("freezer.state");
                Ok(std::fs::read_to_string(&state).at("read", &state)?.trim() == "FROZEN")
            }
            Freezer::V2(dir) => {
                let events = dir.join("cgroup.events");
                let text = std::fs::read_to_string(&events).at("read", &events)?;
                match text.lines().find_map(|line| line.strip_prefix("frozen ")) {
                    Some(frozen) => Ok(frozen.trim() == "1"),
                    None => Err(Error::unsuitable(events, "no frozen line")),
                }
            }
        }
    }

    /// The file that freezes or thaws the cgroup, and what to write to it.
    fn control(&self, freeze: bool) -> (PathBuf, &'static str) {
        match self {
            Freezer::V1(dir) => (dir.join("freezer.state"), if freeze { "FROZEN" } else { "THAWED" }),
            Freezer::V2(dir) => (dir.join("cgroup.freeze"), if freeze { "1" } else { "0" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_freezer_hierarchy_is_preferred_to_the_unified_one() {
        let root = tempfile::tempdir().unwrap();
        let v1 = root.path().join("freezer/libpod_parent/c1");
        let v2 = root.path().join("libpod_parent/c1");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cgroup.freeze"), "0").unwrap();
        assert_eq!(Freezer::of(root.path(), "/libpod_parent/c1"), Some(Freezer::V2(v2)));
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("freezer.state"), "THAWED").unwrap();
        assert_eq!(Freezer::of(root.path(), "/libpod_parent/c1"), Some(Freezer::V1(v1)));
    }

    #[test]
    fn a_cgroup_path_that_is_not_plain_has_no_freezer() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.freeze"), "0").unwrap();
        for path in ["", "relative", "/a/../.."] {
            assert_eq!(Freezer::of(&root.path().join("x"), path), None, "{path:?}");
        }
        assert_eq!(Freezer::of(root.path(), "/../"), None);
    }

    #[test]
    fn a_v2_cgroup_is_frozen_when_its_events_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let freezer = Freezer::V2(dir.path().to_path_buf());
        std::fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert!(!freezer.frozen().unwrap());
        std::fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        assert!(freezer.frozen().unwrap());
    }
}
