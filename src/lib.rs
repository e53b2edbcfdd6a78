//! ckpt writes ordinary tar archives in which every regular file's data starts on a
//! filesystem-block boundary, so that file data can be shared (reflinked) between the source
//! tree, the archive and the restored tree instead of being copied.
//!
//! Data flows one way: [`walk`](crate::walk) lists the tree, the layout planner decides where
//! every header and data block goes, and the placer moves the data with the cheapest mechanism
//! the filesystems offer (clone, then copy_file_range, then read/write).

mod compress;
mod error;
mod export;
mod extract;
mod import;
mod layout;
mod member;
mod mover;
mod outfile;
mod overlay;
mod pax;
mod place;
mod podman;
mod reader;
mod stream;
mod sys;
mod walk;

pub use compress::Compression;
pub use error::{Error, Result};
pub use export::{DEFAULT_ALIGN, ExportStats, Exporter};
pub use extract::ImportStats;
pub use import::Importer;
pub use overlay::{OverlayMount, WhiteoutStyle, find_overlay};
pub use podman::Rootfs;
