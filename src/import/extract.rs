//! The extractor: restores archive members beneath a destination directory, one at a time,
//! by sequencing the jobs that each have their own file: resolving the member's parent
//! beneath DEST (`beneath`), applying a layer's deletions (`layer`), creating the entry
//! atomically (`create`) with its data (`data`) and metadata (`meta`), and, at the end, the
//! directories' metadata, deepest first. It also decides which errors end the import and
//! which only cost one member.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::io::Errno;
use rustix::process::Uid;

use crate::error::{Context, Error, Result};
use crate::import::beneath::{Beneath, Entered, Slot};
use crate::import::create::{Member, StaleTemps};
use crate::import::data::FileData;
use crate::import::layer::{LayerMode, layer_xattrs};
/// The stats an extraction returns, named here too for the callers that know them as this.
use crate::import::stats::ImportStats;
use crate::import::tree::{DirTree, SCANNED};
use crate::progress::Progress;
use crate::tar::meta::Kind;
use crate::tar::reader::{Entry, Reader};

#[derive(Debug, Clone, Copy)]
pub(crate) struct ExtractOptions {
    pub(crate) share: bool,
    pub(crate) overwrite: bool,
    /// The destination is reachable by no one else until the whole import has succeeded,
    /// and is discarded otherwise: a file may be written under its own name, since no one
    /// can see it half-written, which saves a metadata transaction (the link) per file.
    pub(crate) private: bool,
}

/// Whether an error stops the import: the archive cannot be read on, or DEST cannot take
/// anything more. Any other error concerns one member, which is reported and skipped.
pub(crate) fn is_fatal(e: &Error, archive: &Path) -> bool {
    match e {
        Error::Malformed { .. } | Error::Damaged { .. } | Error::Copy { .. } | Error::Runtime { .. } => true,
        Error::Io { path, source, .. } => {
            path == archive
                || source.raw_os_error().is_some_and(|code| {
                    [
                        Errno::NOSPC,
                        Errno::DQUOT,
                        Errno::ROFS,
                        Errno::IO,
                        Errno::MFILE,
                        Errno::NFILE,
                        Errno::NOMEM,
                    ]
                    .iter()
                    .any(|fatal| fatal.raw_os_error() == code)
                })
        }
        _ => false,
    }
}

/// What statfs(2) says of the destination's filesystem.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Filesystem {
    /// Its type (f_type).
    pub(crate) magic: i64,
    /// Its block size (f_bsize).
    pub(crate) block: u64,
}

/// Restores members beneath one destination directory.
pub(crate) struct Extractor {
    pub(crate) beneath: Beneath,
    /// The directories seen, with their deferred metadata.
    pub(crate) tree: DirTree,
    pub(crate) data: FileData,
    temps: StaleTemps,
    pub(crate) options: ExtractOptions,
    pub(crate) euid: Uid,
    pub(crate) warned_owner: bool,
    pub(crate) layer: Option<LayerMode>,
    pub(crate) progress: Option<Arc<dyn Progress>>,
    pub(crate) stats: ImportStats,
}

impl Extractor {
    /// Prepares to restore into `dest`, creating it if needed.
    pub(crate) fn new(
        dest: &Path,
        options: ExtractOptions,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<Extractor> {
        let beneath = Beneath::open(dest)?;
        let root = beneath.root();
        let statfs = rustix::fs::fstatfs(&*root).at("fstatfs", dest)?;
        // The width of these fields differs between architectures.
        let fs = Filesystem { magic: statfs.f_type as i64, block: statfs.f_bsize as u64 };
        let data = FileData::new(&root, fs, dest, options.share)?;
        let euid = rustix::process::geteuid();
        let mut extractor = Extractor {
            beneath,
            tree: DirTree::new(),
            data,
            temps: StaleTemps::new(dest, fs, euid),
            options,
            euid,
            warned_owner: false,
            layer: None,
            progress,
            stats: ImportStats::default(),
        };
        extractor.tree.node_mut(0).flags |= SCANNED;
        extractor.temps.remove(root.as_fd(), b"");
        Ok(extractor)
    }

    /// Restores a container layer: OCI `.wh.` entries and deletions are applied per `mode`.
    pub(crate) fn set_layer(&mut self, mode: LayerMode) {
        self.layer = Some(mode);
    }

    /// Whether this process may give files any owner.
    pub(crate) fn privileged(&self) -> bool {
        self.euid.is_root()
    }

    /// The path of `rel` below the destination, for messages.
    pub(crate) fn display(&self, rel: &[u8]) -> PathBuf {
        self.beneath.display(rel)
    }

    /// Opens the directory `parts` below the destination (see [`Beneath::enter`]).
    pub(crate) fn enter(&mut self, parts: &[&[u8]], create: bool) -> Result<Entered> {
        let temps = &self.temps;
        // Only a directory the import did not create can hold temporary names left by an
        // earlier, killed import.
        self.beneath.enter(&mut self.tree, parts, create, |dir, rel| temps.remove(dir, rel))
    }

    /// Restores one member. `reader` must be positioned at its data. A member that fails is
    /// reported and counted in `stats.failed`; only an error that ends the import (the
    /// archive unreadable, DEST full or read-only) is returned.
    pub(crate) fn extract(&mut self, entry: &Entry, reader: &mut Reader<'_>) -> Result<()> {
        self.stats.entries += 1;
        match self.extract_member(entry, reader) {
            Err(e) if !is_fatal(&e, reader.archive_path()) => {
                log::error!("{}: {e}; not restored", entry.name_lossy());
                self.stats.failed.push(entry.name_lossy());
                Ok(())
            }
            other => other,
        }
    }

    fn extract_member(&mut self, entry: &Entry, reader: &mut Reader<'_>) -> Result<()> {
        let Some(kind) = &entry.kind else {
            log::warn!(
                "{}: unsupported member type {:?} skipped",
                entry.name_lossy(),
                entry.typeflag as char
            );
            self.stats.skipped.push(entry.name_lossy());
            return Ok(());
        };
        let rel = match self.beneath.rel_path(&entry.name) {
            Ok(rel) => rel,
            Err(reason) => return self.refuse(entry, reason),
        };
        let filtered;
        let xattrs = match self.layer {
            Some(mode) => {
                filtered = layer_xattrs(&entry.xattrs, mode);
                &filtered
            }
            None => &entry.xattrs,
        };
        let member = Member { entry, xattrs };
        let Some(name) = rel.name else {
            // The archive's top directory (`./`): the destination itself.
            if *kind == Kind::Directory {
                self.set_xattrs_fd(self.beneath.root().as_fd(), xattrs, b"");
                self.defer(0, &entry.meta);
            }
            return Ok(());
        };
        let parent = match self.enter(&rel.parent, true)? {
            Ok(parent) => parent,
            Err(blocked) => return self.refuse(entry, blocked.reason()),
        };
        let parent_node = self.beneath.current_node();
        if let Some(mode) = self.layer
            && let Some(applied) = self.apply_marker(mode, &parent, parent_node, &rel, entry)
        {
            return applied;
        }
        let joined = rel.joined();
        self.create(kind, Slot { dir: &parent, name, rel: &joined }, parent_node, member, reader)
    }

    pub(crate) fn refuse(&mut self, entry: &Entry, reason: String) -> Result<()> {
        log::error!("{}: {reason}; refused", entry.name_lossy());
        self.stats.refused.push(entry.name_lossy());
        Ok(())
    }
}
