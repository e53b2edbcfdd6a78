//! Import: open the archive (a file whose data can be cloned, or a stream, compressed or not),
//! and hand each member to the extractor; in checkpoint archives, restore the nested
//! `rootfs-diff.tar` straight into the container's layer.

mod beneath;
mod create;
mod data;
pub(crate) mod extract;
mod layer;
mod meta;
pub(crate) mod stats;
mod tree;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::container::overlay;
use crate::container::podman::{self, Rootfs};
use crate::error::{Error, Result};
use crate::import::extract::{ExtractOptions, Extractor};
use crate::import::layer::LayerMode;
use crate::import::stats::ImportStats;
use crate::progress::{Progress, ProgressHandle};
use crate::tar::archive::{self, Opened};
use crate::tar::frames;
use crate::tar::meta::Kind;
use crate::tar::reader::{Entry, Reader};

/// Restores archives into directories.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let src = dir.path().join("src");
/// std::fs::create_dir(&src)?;
/// std::fs::write(src.join("config.dump"), b"{}")?;
/// let archive = dir.path().join("out.tar");
/// ckpt::Exporter::new().export(&src, &archive)?;
///
/// let dest = dir.path().join("restored");
/// let stats = ckpt::Importer::new().import(&archive, &dest)?;
/// assert_eq!(std::fs::read(dest.join("config.dump"))?, b"{}");
/// assert!(stats.conflicts.is_empty() && stats.refused.is_empty());
///
/// // Nothing existing is replaced unless asked: a second import reports a conflict.
/// let again = ckpt::Importer::new().import(&archive, &dest)?;
/// assert_eq!(again.conflicts.len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Importer {
    options: ExtractOptions,
    rootfs: Option<Rootfs>,
    progress: Option<ProgressHandle>,
    /// When set, only the members under these top-level names are restored.
    only: Option<Vec<Vec<u8>>>,
    /// Named volumes whose nested `volumes/NAME.tar` is restored into a directory.
    volumes: Vec<VolumeTarget>,
    /// Threads decoding a seekable zstd archive; None for the default.
    jobs: Option<usize>,
    /// Set by the caller to stop the import at the next member.
    cancel: Option<Arc<AtomicBool>>,
}

impl Default for Importer {
    fn default() -> Self {
        Importer::new()
    }
}

/// A named volume restored into a directory of its own.
#[derive(Debug, Clone)]
struct VolumeTarget {
    name: String,
    /// Its nested archive's bundle name, `volumes/NAME.tar`.
    member: Vec<u8>,
    dir: PathBuf,
}

/// Where a layer is restored to, and how its deletions are applied.
struct LayerTarget {
    dir: PathBuf,
    mode: LayerMode,
}

impl Importer {
    /// An importer with the defaults: data shared with the archive where possible, existing
    /// entries left alone (reported as conflicts), every member restored.
    pub fn new() -> Importer {
        Importer {
            options: ExtractOptions { share: true, overwrite: false, private: false },
            rootfs: None,
            progress: None,
            only: None,
            volumes: Vec::new(),
            jobs: None,
            cancel: None,
        }
    }

    /// `false` copies every byte instead of sharing extents with the archive.
    pub fn share(mut self, share: bool) -> Importer {
        self.options.share = share;
        self
    }

    /// Replace existing entries (by unlink and rename, never by writing into them).
    pub fn overwrite(mut self, overwrite: bool) -> Importer {
        self.options.overwrite = overwrite;
        self
    }

    /// Restores a checkpoint archive's `rootfs-diff.tar` into the container's layer (and
    /// applies `deleted.files` there) instead of as a file in the bundle.
    pub fn rootfs(mut self, rootfs: Rootfs) -> Importer {
        self.rootfs = Some(rootfs);
        self
    }

    /// Restores only the members named `names` at the top level of the archive (with
    /// everything beneath them), leaving the rest out: e.g. a checkpoint's `checkpoint/`
    /// images without the files a runtime owns in the new container's bundle. The rootfs
    /// changes go to the layer given with [`Importer::rootfs`] either way.
    pub fn only<N: AsRef<[u8]>>(mut self, names: impl IntoIterator<Item = N>) -> Importer {
        self.only = Some(names.into_iter().map(|n| n.as_ref().to_vec()).collect());
        self
    }

    /// Restores a checkpoint archive's nested `volumes/NAME.tar` (a named volume's contents,
    /// as podman's export and ckpt's carry them) into `dir`, the volume's directory, instead
    /// of as a file in the bundle. An archive without that member is an error of kind
    /// `Unsuitable`, once the rest is restored; a name that cannot be a volume's (empty, with a
    /// slash or a leading dot) is one of kind `Usage`, before anything is restored.
    pub fn volume(mut self, name: &str, dir: impl Into<PathBuf>) -> Importer {
        self.volumes.push(VolumeTarget {
            name: name.to_string(),
            member: podman::volume_member(name),
            dir: dir.into(),
        });
        self
    }

    /// Decodes a seekable zstd archive (ckpt's `--compress zstd`) on `jobs` threads ahead of
    /// the extraction, each holding one frame (2 MiB) at most. The default is `CKPT_JOBS`
    /// from the environment, else the number of cores up to 4. Other archives are read as
    /// before: plain files are cloned, other streams decoded on one thread.
    pub fn jobs(mut self, jobs: usize) -> Importer {
        self.jobs = Some(jobs.max(1));
        self
    }

    /// Stops the import before its next member once `cancel` is set, with an error of kind
    /// `Cancelled`: the members restored so far stay as restored (each file whole), as after
    /// any other error; nothing of the member it stopped at is written. A member's data is
    /// not interrupted, so a cancel waits for the file being filled.
    pub fn cancel_on(mut self, cancel: Arc<AtomicBool>) -> Importer {
        self.cancel = Some(cancel);
        self
    }

    /// Declares the destination private: no one else can reach it until the import has
    /// succeeded, and it is discarded if the import fails (a staged restore). Files are then
    /// written under their own names rather than unnamed and linked when complete; a file
    /// that fails is still removed.
    pub(crate) fn private_destination(mut self) -> Importer {
        self.options.private = true;
        self
    }

    fn check_cancelled(&self, archive: &Path) -> Result<()> {
        match &self.cancel {
            Some(cancel) if cancel.load(Ordering::Relaxed) => {
                Err(Error::Cancelled { path: archive.to_path_buf(), op: "import" })
            }
            _ => Ok(()),
        }
    }

    /// Whether a bundle member of this (bundle-relative) name is restored.
    fn selected(&self, name: &[u8]) -> bool {
        let top = name.split(|&b| b == b'/').next().unwrap_or(name);
        self.only.as_ref().is_none_or(|only| only.iter().any(|n| n == top))
    }

    /// Reports progress in bytes of file data restored to `progress`; the total given to
    /// `start` is the archive's size (0 when reading a stream).
    pub fn progress(mut self, progress: std::sync::Arc<dyn Progress>) -> Importer {
        self.progress = Some(ProgressHandle(progress));
        self
    }

    /// Restores every member of `archive` (`-` for standard input) beneath `dest`. Conflicts
    /// with existing entries and refused members are reported in the stats; the caller decides
    /// whether they are fatal.
    pub fn import(&self, archive: &Path, dest: &Path) -> Result<ImportStats> {
        self.import_noting_layer_root(archive, dest).map(|(stats, _)| stats)
    }

    /// Restores as [`import`](Self::import) does, and says whether the archive gave the
    /// layer's own directory its metadata (a `./` member in the rootfs changes): a layer
    /// restored elsewhere and then moved into place must take that directory with it.
    pub(crate) fn import_noting_layer_root(
        &self,
        archive: &Path,
        dest: &Path,
    ) -> Result<(ImportStats, bool)> {
        let started = Instant::now();
        for volume in &self.volumes {
            podman::check_volume_name(&volume.name)?;
        }
        let layer = self.rootfs.as_ref().map(layer_target).transpose()?;
        let mut opened = archive::open_jobs(archive, self.jobs.unwrap_or_else(frames::default_jobs))?;
        let (mut reader, seekable) = match &mut opened {
            Opened::File(file, len) => (Reader::from_file(file, 0, *len, archive), Some((&*file, *len))),
            Opened::Stream(stream) => (Reader::from_stream(stream, archive), None),
        };
        let progress = self.progress.as_ref().map(|p| p.0.clone());
        if let Some(progress) = &progress {
            progress.start(seekable.map_or(0, |(_, len)| len));
        }
        let result = match seekable {
            Some((file, len)) => {
                let done = AtomicBool::new(false);
                std::thread::scope(|scope| {
                    scope.spawn(|| prefetch_headers(file, len, archive, &done));
                    let result = self.extract_all(&mut reader, archive, dest, layer, progress.clone());
                    done.store(true, Ordering::Relaxed);
                    result
                })
            }
            None => self.extract_all(&mut reader, archive, dest, layer, progress.clone()),
        };
        if let Some(progress) = &progress {
            progress.finish();
        }
        // Where uncached writes were refused, the last pages written are still cached.
        crate::sys::behind::settle();
        let (mut stats, layer_root) = result?;
        drop(reader);
        if let Opened::Stream(stream) = &mut opened {
            stream.finish(archive)?;
        }
        stats.seconds = started.elapsed().as_secs_f64();
        Ok((stats, layer_root))
    }

    fn extract_all(
        &self,
        reader: &mut Reader<'_>,
        archive: &Path,
        dest: &Path,
        layer: Option<LayerTarget>,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<(ImportStats, bool)> {
        let mut bundle = Extractor::new(dest, self.options, progress.clone())?;
        let mut layer_extractor = match &layer {
            Some(target) => {
                // Applying a layer means replacing what it changed, as podman's restore does.
                let options = ExtractOptions { overwrite: true, ..self.options };
                let mut extractor = Extractor::new(&target.dir, options, progress.clone())?;
                extractor.set_layer(target.mode);
                Some(extractor)
            }
            None => None,
        };
        let mut volumes = Vec::with_capacity(self.volumes.len());
        for volume in &self.volumes {
            volumes.push((Extractor::new(&volume.dir, self.options, progress.clone())?, false));
        }
        let mut deleted = Vec::new();
        let mut targets =
            Targets { bundle: &mut bundle, layer: layer_extractor.as_mut(), volumes: &mut volumes };
        let walked = self.extract_members(reader, archive, &mut targets, &mut deleted);
        // Directory metadata is applied even when the archive could not be read to its end:
        // what was restored gets its modes and times.
        let bundle_stats = bundle.finish();
        let mut volume_stats = Vec::with_capacity(volumes.len());
        for (target, (volume, found)) in self.volumes.iter().zip(volumes) {
            let finished = volume.finish();
            // An archive not read to its end has its own error.
            volume_stats.push(if found || walked.is_err() {
                finished
            } else {
                let name = String::from_utf8_lossy(&target.member);
                Err(Error::unsuitable(
                    archive,
                    format!(
                        "has no {name}: the volume's contents are not in it (checkpointed without volumes?)"
                    ),
                ))
            });
        }
        let mut layer_stats = None;
        let mut layer_root = false;
        if let (Some(mut layer), Some(target)) = (layer_extractor, layer) {
            layer_root = layer.root_has_meta();
            // Podman applies the deletions after the changes, as here; a layer whose changes
            // were not all read gets none of its deletions.
            let applied = match &walked {
                Ok(()) => {
                    deleted.sort_unstable();
                    deleted.dedup();
                    layer.apply_deletions(target.mode, &deleted)
                }
                Err(_) => Ok(()),
            };
            let finished = layer.finish();
            layer_stats = Some(applied.and(finished));
        }
        walked?;
        let mut stats = bundle_stats?;
        if let Some(layer_stats) = layer_stats {
            stats.absorb(layer_stats?);
        }
        for volume in volume_stats {
            stats.absorb(volume?);
        }
        Ok((stats, layer_root))
    }

    fn extract_members(
        &self,
        reader: &mut Reader<'_>,
        archive: &Path,
        targets: &mut Targets<'_>,
        deleted: &mut Vec<String>,
    ) -> Result<()> {
        loop {
            self.check_cancelled(archive)?;
            let Some(entry) = reader.next_entry()? else { break };
            let reader = &mut *reader;
            let name = podman::bundle_name(&entry.name);
            let volume = match entry.kind {
                Some(Kind::Regular) => self.volumes.iter().position(|v| v.member == name),
                _ => None,
            };
            if let Some(i) = volume {
                let (extractor, found) = &mut targets.volumes[i];
                *found = true;
                self.extract_nested(reader, archive, &entry, extractor)?;
                continue;
            }
            let bundle = &mut *targets.bundle;
            match targets.layer.as_deref_mut() {
                Some(layer) if podman::is_rootfs_diff(&entry) => {
                    self.extract_nested(reader, archive, &entry, layer)?
                }
                Some(_) if name == podman::DELETED_FILES && entry.kind == Some(Kind::Regular) => {
                    if entry.size > podman::MAX_DELETED_FILES {
                        return Err(Error::damaged(
                            archive,
                            format!("deleted.files of {} bytes", entry.size),
                        ));
                    }
                    let data = reader.read_data_to_end(entry.size)?;
                    deleted.extend(podman::parse_deleted_files(&data, archive)?);
                }
                _ if self.selected(name) => bundle.extract(&entry, reader)?,
                _ => log::debug!("{}: not selected, left out", entry.name_lossy()),
            }
        }
        Ok(())
    }

    /// Restores the members of the archive nested in `entry` with `extractor`.
    fn extract_nested(
        &self,
        reader: &mut Reader<'_>,
        archive: &Path,
        entry: &Entry,
        extractor: &mut Extractor,
    ) -> Result<()> {
        let mut inner = reader.nested(entry);
        loop {
            self.check_cancelled(archive)?;
            let Some(member) = inner.next_entry()? else { return Ok(()) };
            extractor.extract(&member, &mut inner)?;
        }
    }
}

/// Where an import puts what it restores.
struct Targets<'a> {
    bundle: &'a mut Extractor,
    layer: Option<&'a mut Extractor>,
    /// Each volume's extractor, and whether its archive was found.
    volumes: &'a mut [(Extractor, bool)],
}

/// Reads the archive's headers (and the small members packed between them) ahead of the
/// extraction, on its own thread: the extraction's cold reads of an archive on disk become
/// page cache hits, and its system calls overlap the disk's latency. Only the page cache is
/// shared; errors are left for the extraction to find and report.
fn prefetch_headers(file: &File, len: u64, archive: &Path, done: &AtomicBool) {
    let mut stack = vec![Reader::from_file(file, 0, len, archive)];
    while let Some(reader) = stack.last_mut() {
        if done.load(Ordering::Relaxed) {
            return;
        }
        match reader.next_entry() {
            Ok(Some(entry)) => {
                if podman::is_rootfs_diff(&entry) && stack.len() == 1 {
                    let end = entry.data_offset.saturating_add(entry.size).min(len);
                    stack.push(Reader::from_file(file, entry.data_offset, end, archive));
                }
            }
            Ok(None) | Err(_) => {
                stack.pop();
            }
        }
    }
}

fn layer_target(rootfs: &Rootfs) -> Result<LayerTarget> {
    Ok(match rootfs {
        Rootfs::Diff { upper, .. } => LayerTarget {
            dir: upper.clone(),
            mode: LayerMode::Overlay { opaque_xattr: overlay::TRUSTED_OPAQUE },
        },
        Rootfs::Mount(path) => match overlay::find_overlay(path)? {
            Some(mount) => {
                let mode = LayerMode::Overlay { opaque_xattr: mount.opaque_xattr() };
                LayerTarget { dir: mount.upper, mode }
            }
            None => LayerTarget { dir: path.clone(), mode: LayerMode::Plain },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::progress::Progress;

    /// An archive of three files, `a`, `b` and `c`, each holding 64 KiB of its own letter.
    fn three_files(dir: &Path) -> PathBuf {
        let src = dir.join("src");
        std::fs::create_dir(&src).unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(src.join(name), name.repeat(64 << 10)).unwrap();
        }
        let archive = dir.join("three.tar");
        crate::Exporter::new().export(&src, &archive).unwrap();
        archive
    }

    fn restored_names(dest: &Path) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(dest) {
            Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    #[test]
    fn an_import_cancelled_before_it_starts_restores_nothing_and_says_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let archive = three_files(dir.path());
        let dest = dir.path().join("dest");
        let cancel = Arc::new(AtomicBool::new(true));
        let err = Importer::new().cancel_on(cancel).import(&archive, &dest).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
        assert!(err.to_string().contains("three.tar: import cancelled"), "{err}");
        assert!(restored_names(&dest).is_empty());
    }

    /// Cancels its import once the first file's data has been moved.
    struct CancelAfterFirstFile(Arc<AtomicBool>);

    impl Progress for CancelAfterFirstFile {
        fn advance(&self, _bytes: u64) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    #[test]
    fn an_import_cancelled_midway_stops_before_the_next_member_leaving_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let archive = three_files(dir.path());
        let dest = dir.path().join("dest");
        let cancel = Arc::new(AtomicBool::new(false));
        let err = Importer::new()
            .cancel_on(cancel.clone())
            .progress(Arc::new(CancelAfterFirstFile(cancel)))
            .import(&archive, &dest)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
        let names = restored_names(&dest);
        assert_eq!(names.len(), 1, "one file restored, then the import stopped: {names:?}");
        let name = &names[0];
        assert_eq!(std::fs::read(dest.join(name)).unwrap(), name.repeat(64 << 10).into_bytes());
    }

    /// What `dest` holds: each file's name, mode, modification time and content.
    fn files_in(dest: &Path) -> Vec<(String, u32, i64, Vec<u8>)> {
        use std::os::unix::fs::MetadataExt;
        let mut files: Vec<_> = restored_names(dest)
            .into_iter()
            .map(|name| {
                let path = dest.join(&name);
                let meta = std::fs::metadata(&path).unwrap();
                (name, meta.mode(), meta.mtime(), std::fs::read(&path).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn a_private_destination_gets_the_files_any_destination_gets() {
        let dir = tempfile::tempdir().unwrap();
        let archive = three_files(dir.path());
        let (public, private) = (dir.path().join("public"), dir.path().join("private"));
        Importer::new().import(&archive, &public).unwrap();
        let stats = Importer::new().private_destination().import(&archive, &private).unwrap();
        assert_eq!(stats.files, 3);
        assert_eq!(files_in(&private), files_in(&public));
    }

    /// A whole gzip stream of `three_files`'s archive cut off inside b's data: found out
    /// only as b is written, since a stream's length is not known ahead.
    fn cut_inside_b(dir: &Path) -> PathBuf {
        use std::io::Write;
        let bytes = std::fs::read(three_files(dir)).unwrap();
        let b_data = bytes.windows(4096).position(|w| w.iter().all(|&c| c == b'b')).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes[..b_data + 1000]).unwrap();
        let cut = dir.join("cut.tar.gz");
        std::fs::write(&cut, gz.finish().unwrap()).unwrap();
        cut
    }

    #[test]
    fn a_stream_cut_off_inside_a_file_is_a_bad_archive_and_leaves_no_part_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let cut = cut_inside_b(dir.path());
        let dest = dir.path().join("dest");
        let err = Importer::new().import(&cut, &dest).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadArchive, "{err}");
        assert!(err.to_string().contains("in the middle of the data of member \"./b\""), "{err}");
        assert_eq!(restored_names(&dest), ["a"]);
    }

    #[test]
    fn a_private_destination_keeps_no_file_whose_data_a_stream_cuts_off() {
        let dir = tempfile::tempdir().unwrap();
        let cut = cut_inside_b(dir.path());
        let dest = dir.path().join("dest");
        let err = Importer::new().private_destination().import(&cut, &dest).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadArchive, "{err}");
        assert_eq!(restored_names(&dest), ["a"], "the cut-off file is removed");
    }

    #[test]
    fn a_private_destination_reports_a_name_given_twice_as_a_conflict_keeping_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut joined = Vec::new();
        for (n, letter) in ["x", "y"].into_iter().enumerate() {
            let src = dir.path().join(format!("src{n}"));
            std::fs::create_dir(&src).unwrap();
            std::fs::write(src.join("a"), letter.repeat(5000)).unwrap();
            let archive = dir.path().join(format!("{n}.tar"));
            crate::Exporter::new().export(&src, &archive).unwrap();
            let mut bytes = std::fs::read(&archive).unwrap();
            if n == 0 {
                // Without its end of archive, so that the second archive's members follow.
                while bytes.len() >= 512 && bytes[bytes.len() - 512..].iter().all(|&b| b == 0) {
                    bytes.truncate(bytes.len() - 512);
                }
            }
            joined.extend(bytes);
        }
        let archive = dir.path().join("twice.tar");
        std::fs::write(&archive, joined).unwrap();
        let dest = dir.path().join("dest");
        let stats = Importer::new().private_destination().import(&archive, &dest).unwrap();
        assert_eq!(stats.conflicts, [dest.join("a")]);
        assert_eq!(std::fs::read(dest.join("a")).unwrap(), "x".repeat(5000).into_bytes());
    }
}
