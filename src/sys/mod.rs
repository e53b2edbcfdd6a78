//! The system layer: moving file data (clone, then copy_file_range, then plain copies) and
//! writing a file that appears only when complete.

pub(crate) mod behind;
pub(crate) mod clone;
pub(crate) mod mover;
pub(crate) mod outfile;
pub(crate) mod temp;
pub(crate) mod uncached;
