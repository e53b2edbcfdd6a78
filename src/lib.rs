#![doc = include_str!("../README.md")]

mod container;
mod error;
mod export;
mod hook;
mod import;
mod inspect;
mod progress;
mod runtime;
mod sys;
mod tar;

pub use container::overlay::{OverlayMount, WhiteoutStyle, find_overlay};
pub use container::podman::Rootfs;
pub use error::{Error, ErrorKind, Result};
pub use export::{DEFAULT_ALIGN, DEFAULT_CLONE_MIN, ExportStats, Exporter};
pub use hook::{ANNOTATIONS as HOOK_ANNOTATIONS, HookOutcome, HookState, run_hook};
pub use import::Importer;
pub use import::extract::ImportStats;
pub use inspect::{ListEntry, ListOptions, Problem, VerifyProgress, VerifyReport, list, verify};
pub use progress::Progress;
pub use runtime::{
    CheckpointOptions, CheckpointReport, Podman, RestoreOptions, RestoreReport, RestoreTarget,
};
pub use tar::compress::Compression;
