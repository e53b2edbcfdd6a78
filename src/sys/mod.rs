//! The system layer: moving file data (clone, then copy_file_range, then plain copies) and
//! writing a file that appears only when complete.

pub mod clone;
pub mod mover;
pub mod outfile;
pub mod temp;
