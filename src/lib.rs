#![doc = include_str!("../README.md")]

mod compress;
mod digest;
mod error;
mod export;
mod extract;
mod hook;
mod import;
mod inspect;
mod layout;
mod member;
mod mover;
mod outfile;
mod overlay;
mod pax;
mod pieces;
mod place;
mod podman;
mod podman_cli;
mod progress;
mod reader;
mod stream;
mod sys;
mod walk;

pub use compress::Compression;
pub use error::{Error, Result};
pub use export::{DEFAULT_ALIGN, DEFAULT_CLONE_MIN, ExportStats, Exporter};
pub use extract::ImportStats;
pub use hook::{HookOutcome, HookState, run_hook};
pub use import::Importer;
pub use inspect::{ListEntry, ListOptions, Problem, VerifyProgress, VerifyReport, list, verify};
pub use overlay::{OverlayMount, WhiteoutStyle, find_overlay};
pub use podman::Rootfs;
pub use podman_cli::{
    CheckpointOptions, CheckpointReport, Podman, RestoreOptions, RestoreReport, RestoreTarget,
};
pub use progress::Progress;
