//! Archive container checkpoints as ordinary tar files whose data is shared with the
//! filesystem (reflinks on Btrfs and XFS), not copied.
//!
//! Every regular file's data starts on a filesystem-block boundary, so [`Exporter`] clones
//! it from the source into the archive and [`Importer`] clones it from the archive into the
//! destination; any tar reader still reads the archive. [`list`] and [`verify`] look into an
//! archive without restoring it, [`read_member`] returns one member's data, [`run_hook`] is the OCI runtime hook, and [`Podman`]
//! checkpoints and restores podman containers through podman's command line with the data
//! moved by ckpt.
//!
//! ```no_run
//! use std::path::Path;
//!
//! let stats = ckpt::Exporter::new()
//!     .bundle_layout(true)
//!     .rootfs(ckpt::Rootfs::Diff { upper: "/var/lib/containers/storage/overlay/L/diff".into(), lowers: vec![] })
//!     .export(Path::new("/run/bundle"), Path::new("/var/lib/checkpoints/c.tar"))?;
//! println!("{} of {} bytes shared", stats.bytes_cloned, stats.bytes);
//! # Ok::<(), ckpt::Error>(())
//! ```
//!
//! Errors name the operation and the path or member, and have an [`ErrorKind`] a caller can
//! act on. README.md, beside this crate's `Cargo.toml`, covers usage, the archive layout,
//! podman integration, performance and the architecture.
#![deny(missing_docs, unreachable_pub)]

/// The README's examples are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod container;
mod error;
mod export;
mod hook;
mod import;
mod inspect;
mod progress;
mod registry;
mod report;
mod runtime;
mod sys;
mod tar;

pub use container::overlay::{OverlayMount, WhiteoutStyle, find_overlay};
pub use container::podman::Rootfs;
pub use error::{Error, ErrorKind, Result};
pub use export::{DEFAULT_CLONE_MIN, ExportStats, Exporter};
pub use hook::{ANNOTATIONS as HOOK_ANNOTATIONS, HookOutcome, HookState, run_hook};
pub use import::Importer;
pub use import::stats::ImportStats;
pub use inspect::{
    ListEntry, ListOptions, Problem, VerifyProgress, VerifyReport, list, read_member, verify, verify_headers,
};
pub use progress::Progress;
pub use registry::{Access, PullStats, PushStats, Reference, Registry, Version};
pub use runtime::{
    CheckpointOptions, CheckpointReport, Podman, RestoreOptions, RestoreReport, RestoreTarget,
};
pub use tar::DEFAULT_ALIGN;
pub use tar::compress::Compression;
