//! The system layer: moving file data (clone, then copy_file_range, then plain copies),
//! writing a file that appears only when complete, which mount a path is on, and a cgroup's
//! freezer.

pub(crate) mod behind;
pub(crate) mod clone;
pub(crate) mod freezer;
pub(crate) mod mount;
pub(crate) mod mover;
pub(crate) mod outfile;
pub(crate) mod temp;
pub(crate) mod uncached;
