//! Export: walk a tree, plan the archive, place it into a file that appears only when complete.

pub(crate) mod bundle;
pub(crate) mod holes;
pub(crate) mod layer;
pub(crate) mod member;
pub(crate) mod pieces;
pub(crate) mod place;
pub(crate) mod plan;
pub(crate) mod source;
pub(crate) mod stream;
pub(crate) mod walk;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::io::{BufWriter, Write};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::FileType;

use self::bundle::LayerPlan;
use self::member::Members;
use self::walk::{Naming, Skipped, Walk};
use crate::container::overlay::WhiteoutStyle;
use crate::container::podman::Rootfs;
use crate::error::{Context, Error, Result};
use crate::export::pieces::{Counts, Pieces};
use crate::export::place::{Placer, Target};
use crate::export::stream::{Sink, Stream};
use crate::progress::{Progress, ProgressHandle};
use crate::sys::behind;
use crate::sys::mover::{MoveStats, Mover};
use crate::sys::outfile::{Destination, OutFile, Writing};
use crate::sys::uncached;
use crate::tar::compress::{Compression, Encoder, OUTPUT_BUFFER};
use crate::tar::{DEFAULT_ALIGN, manifest};

/// Files smaller than this are copied into the archive, not cloned, by default.
///
/// Every clone splits the archive's written bytes (the headers and partial last blocks
/// between members) around a shared extent, and each such piece is then allocated and written
/// back on its own; on XFS, cloning the ~2000 files of 1-20 KB of the benchmark tree made its
/// export slower than `cp --reflink` of the same tree. Copying files of fewer than four blocks
/// instead costs about 0.3% of that tree's size in extra disk and is faster on Btrfs too. See
/// [`Exporter::clone_min`].
pub const DEFAULT_CLONE_MIN: u64 = 16 << 10;

/// Writes aligned tar archives of directory trees.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let src = dir.path().join("src");
/// std::fs::create_dir(&src)?;
/// std::fs::write(src.join("pages-1.img"), vec![7u8; 10_000])?;
///
/// let archive = dir.path().join("out.tar");
/// let stats = ckpt::Exporter::new().align(4096).digest(true).export(&src, &archive)?;
/// assert_eq!((stats.files, stats.bytes, stats.align), (1, 10_000, 4096));
/// assert_eq!(stats.bytes_cloned + stats.bytes_copied, 10_000);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Exporter {
    align: Option<u64>,
    share: bool,
    bundle: bool,
    rootfs: Option<Rootfs>,
    volumes: Vec<(String, PathBuf)>,
    whiteouts: WhiteoutStyle,
    compression: Option<Compression>,
    digest: bool,
    clone_min: u64,
    progress: Option<ProgressHandle>,
    layer_plan: Option<LayerPlan>,
}

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ExportStats {
    /// Archive members, nested ones included.
    pub entries: u64,
    /// Regular files with data (hardlinks not counted).
    pub files: u64,
    /// Sum of the regular files' sizes.
    pub bytes: u64,
    /// File bytes shared with the source (cloned).
    pub bytes_cloned: u64,
    /// File bytes placed by copying, holes kept on the copy path included.
    pub bytes_copied: u64,
    /// Bytes written to the output: the compressed size when compressed.
    pub archive_bytes: u64,
    /// The length of the tar archive itself (before compression).
    pub tar_bytes: u64,
    /// The alignment the archive was laid out with.
    pub align: u64,
    /// Wall-clock time of the export.
    pub seconds: f64,
    /// Entries that cannot be archived (sockets), left out with a warning (serialized as
    /// their count).
    #[serde(serialize_with = "crate::report::count")]
    pub skipped: Vec<PathBuf>,
}

impl Default for Exporter {
    fn default() -> Self {
        Exporter::new()
    }
}

impl Exporter {
    /// An exporter with the defaults: data aligned to the output filesystem's block size
    /// (at least [`DEFAULT_ALIGN`]), shared where possible, a plain directory tree.
    pub fn new() -> Exporter {
        Exporter {
            align: None,
            share: true,
            bundle: false,
            rootfs: None,
            volumes: Vec::new(),
            whiteouts: WhiteoutStyle::Podman,
            compression: None,
            digest: false,
            clone_min: DEFAULT_CLONE_MIN,
            progress: None,
            layer_plan: None,
        }
    }

    /// Aligns file data to `align` bytes (a power of two, at least 512) instead of the larger
    /// of 4096 and the archive filesystem's block size.
    pub fn align(mut self, align: u64) -> Exporter {
        self.align = Some(align);
        self
    }

    /// Copies files smaller than `bytes` instead of cloning them ([`DEFAULT_CLONE_MIN`] by
    /// default); 0 clones every file that has a whole block. Only where the data lands on
    /// disk changes: the archive's bytes are the same.
    pub fn clone_min(mut self, bytes: u64) -> Exporter {
        self.clone_min = bytes;
        self
    }

    /// `false` copies every byte through memory so the archive shares nothing with the source.
    pub fn share(mut self, share: bool) -> Exporter {
        self.share = share;
        self
    }

    /// Treats the source as a container checkpoint bundle and writes podman's layout:
    /// `config.dump` and `spec.dump` first, names without `./`, `checkpoint/inventory.img`
    /// required. Implied by [`Exporter::rootfs`].
    pub fn bundle_layout(mut self, bundle: bool) -> Exporter {
        self.bundle = bundle;
        self
    }

    /// Adds the container's rootfs changes as a nested, aligned `rootfs-diff.tar` (and
    /// `deleted.files`), read from the overlay layer's upper dir.
    pub fn rootfs(mut self, rootfs: Rootfs) -> Exporter {
        self.rootfs = Some(rootfs);
        self
    }

    /// Adds the contents of the container's named volume `name`, the directory `dir`, as
    /// podman's own export carries them: a nested `volumes/NAME.tar` holding the directory
    /// (as `./`) and what is beneath it, which `podman container restore --import` extracts
    /// into the volume. Implies [`Exporter::bundle_layout`].
    pub fn volume(mut self, name: impl Into<String>, dir: impl Into<PathBuf>) -> Exporter {
        self.volumes.push((name.into(), dir.into()));
        self
    }

    /// How deletions in the rootfs changes are recorded.
    pub fn whiteouts(mut self, style: WhiteoutStyle) -> Exporter {
        self.whiteouts = style;
        self
    }

    /// Compresses the archive. A compressed archive is written as a stream: its data cannot
    /// be shared with the source, and alignment no longer matters.
    pub fn compress(mut self, compression: Option<Compression>) -> Exporter {
        self.compression = compression;
        self
    }

    /// Adds a last member `ckpt.sha256` in `sha256sum` format covering every regular
    /// member, so that after extraction with any tar `sha256sum -c ckpt.sha256` checks the data
    /// (and `ckpt verify` checks it in the archive). This reads all the data once: the export
    /// is no longer metadata-only.
    pub fn digest(mut self, digest: bool) -> Exporter {
        self.digest = digest;
        self
    }

    /// Reports progress in bytes of file data to `progress`.
    pub fn progress(mut self, progress: std::sync::Arc<dyn Progress>) -> Exporter {
        self.progress = Some(ProgressHandle(progress));
        self
    }

    /// The first pass over the rootfs changes (a layer's diff dir) of an archive written to
    /// the file `out`, made ahead of the export, while the layer may still change. Given back
    /// with [`with_layer_plan`](Self::with_layer_plan), the export does not make it again; if
    /// the layer has changed since, the export fails with kind `SourceChanged`.
    pub(crate) fn plan_layer(&self, out: &Path) -> Result<LayerPlan> {
        let Some(Rootfs::Diff { upper, lowers }) = &self.rootfs else {
            return Err(Error::usage("rootfs", "a layer is planned ahead only from its diff dir"));
        };
        let align = match self.compression {
            Some(_) => self.stream_align(),
            None => {
                let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                self.file_align(rustix::fs::statfs(dir).at("statfs", dir)?.f_bsize as u64)
            }
        };
        bundle::plan_layer(upper, lowers, self.whiteouts, align, &Skipped::default())
    }

    /// The alignment of an archive placed by offset into a file on a filesystem of
    /// `fs_block`-byte blocks.
    fn file_align(&self, fs_block: u64) -> u64 {
        self.align.unwrap_or(DEFAULT_ALIGN.max(fs_block))
    }

    /// The alignment of an archive written front to back (compressed, or into a pipe).
    fn stream_align(&self) -> u64 {
        self.align.unwrap_or(DEFAULT_ALIGN)
    }

    /// Uses `plan`, made by [`plan_layer`](Self::plan_layer), as the first pass over the
    /// rootfs changes.
    pub(crate) fn with_layer_plan(mut self, plan: LayerPlan) -> Exporter {
        self.layer_plan = Some(plan);
        self
    }

    /// Archives the contents of `src` into `out` (`-` for standard output): as `tar -C src -cf out .` would name them, or
    /// in the checkpoint layout when asked for. A regular `out` (or a new one) is replaced
    /// when the archive is complete; a character device or fifo is written into.
    pub fn export(&self, src: &Path, out: &Path) -> Result<ExportStats> {
        self.export_checked(src, out, &mut || Ok(()))
    }

    /// Exports as [`export`](Self::export) does, and runs `check` once the archive is
    /// written, before it replaces a regular `out`: an error from `check` is the export's,
    /// and leaves such an `out` as it was (a stream has been written by then).
    pub(crate) fn export_checked(
        &self,
        src: &Path,
        out: &Path,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<ExportStats> {
        let started = Instant::now();
        if let Some(align) = self.align {
            check_align(align)?;
        }
        let skipped = Skipped::default();
        let result = if out == Path::new("-") {
            self.write_stream(src, &skipped, std::io::stdout().as_fd(), Path::new("<stdout>"))
                .and_then(|stats| check().map(|()| stats))
        } else {
            Destination::open(out).and_then(|destination| match destination {
                Destination::Stream(file) => self
                    .write_stream(src, &skipped, file.as_fd(), out)
                    .and_then(|stats| check().map(|()| stats)),
                Destination::Replace(out_file) if self.compression.is_some() => {
                    self.write_compressed_file(src, &skipped, out_file, out, check)
                }
                Destination::Replace(out_file) => self.write_file(src, &skipped, out_file, out, check),
            })
        };
        if let Some(progress) = self.progress_receiver() {
            progress.finish();
        }
        // Where uncached writes were refused, the last pages written are still cached.
        behind::settle();
        let mut stats = result?;
        stats.skipped = skipped.take();
        stats.skipped.sort();
        stats.skipped.dedup();
        for path in &stats.skipped {
            log::warn!("{}: socket skipped (tar cannot hold sockets)", path.display());
        }
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// The archive for `src`, planned member by member as it is written; with `holes`, files
    /// with holes are stored as sparse members.
    fn pieces(&self, src: &Path, align: u64, skipped: &Skipped, holes: bool) -> Result<Pieces<'static>> {
        let bundle = self.bundle || self.rootfs.is_some() || !self.volumes.is_empty();
        let (members, rootfs_bytes) = if bundle {
            let files = bundle::ContainerFiles {
                rootfs: self.rootfs.as_ref(),
                volumes: &self.volumes,
                layer_plan: self.layer_plan.as_ref(),
            };
            bundle::members(src, files, self.whiteouts, align, skipped)?
        } else {
            (Box::new(Walk::new(src, Naming::DotSlash, skipped.clone())?) as Members, 0)
        };
        if let Some(progress) = self.progress_receiver() {
            // A bar needs its total before the walk that archives the data.
            progress.start(walk::data_bytes(src) + rootfs_bytes);
        }
        let manifest_name = self.digest.then(|| {
            let prefix = if bundle { "" } else { "./" };
            [prefix.as_bytes(), manifest::NAME].concat()
        });
        let pieces = Pieces::new(members, align, manifest_name);
        Ok(if holes { pieces.sparse_files() } else { pieces })
    }

    /// Places the archive by offset, sharing data with the sources where possible.
    fn write_file(
        &self,
        src: &Path,
        skipped: &Skipped,
        out_file: OutFile,
        out: &Path,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<ExportStats> {
        let file = out_file.file();
        let fs_block = rustix::fs::fstatfs(file).at("fstatfs", out)?.f_bsize as u64;
        let align = self.file_align(fs_block);
        let mut pieces = self.pieces(src, align, skipped, false)?;
        let dev = file.metadata().at("fstat", out)?.dev();
        let target = Target { file, path: out, dev, block: fs_block.max(512) };
        let mut placer =
            Placer::new(target, Mover::new(self.share), self.clone_min, self.progress_receiver());
        placer.place(&mut pieces)?;
        let MoveStats { bytes_cloned, bytes_copied } = placer.mover.stats;
        let len = pieces.len().expect("every piece was placed");
        file.set_len(len).at("ftruncate", out)?;
        check()?;
        out_file.commit()?;
        Ok(stats(&pieces, align, bytes_cloned, bytes_copied, len))
    }

    /// Writes the archive front to back into `fd`: standard output, a fifo or a character
    /// device.
    fn write_stream(
        &self,
        src: &Path,
        skipped: &Skipped,
        fd: BorrowedFd<'_>,
        name: &Path,
    ) -> Result<ExportStats> {
        if std::io::IsTerminal::is_terminal(&fd) {
            return Err(Error::usage(
                name.display().to_string(),
                "refusing to write an archive to a terminal",
            ));
        }
        // Standard output redirected into a file inside SRC: that file is the archive.
        let st = rustix::fs::fstat(fd).at("fstat", name)?;
        let regular = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
        #[allow(clippy::unnecessary_cast)] // field types differ between targets
        let _writing = regular.then(|| Writing::new(st.st_dev as u64, st.st_ino as u64));
        let align = self.stream_align();
        // A pipe or device cannot keep holes by offset, and a compressor would be fed the
        // zeros: there files with holes become sparse members. A seekable regular file on
        // standard output gets plain members, as a file archive has.
        let holes = self.compression.is_some() || !regular;
        let mut pieces = self.pieces(src, align, skipped, holes)?;
        let (copied, written) = match self.compression {
            None => {
                // A larger pipe lets sendfile move more per call and the reader wake less often
                // (a hint: a pipe keeps its size when refused, and other files have none).
                let _ = rustix::pipe::fcntl_setpipe_size(fd, PIPE_SIZE);
                let mut stream = Stream::new(Sink::Fd(fd), name, self.progress_receiver());
                stream.write_pieces(&mut pieces)?;
                (stream.bytes_copied, pieces.len().expect("every piece was written"))
            }
            Some(compression) => self.write_compressed(&mut pieces, compression, fd, name)?,
        };
        Ok(stats(&pieces, align, 0, copied, written))
    }

    fn progress_receiver(&self) -> Option<&dyn Progress> {
        self.progress.as_ref().map(|p| p.0.as_ref())
    }

    /// Compresses the archive into `fd`; returns the bytes of file data copied and the
    /// compressed bytes written.
    fn write_compressed(
        &self,
        pieces: &mut Pieces<'_>,
        compression: Compression,
        fd: BorrowedFd<'_>,
        name: &Path,
    ) -> Result<(u64, u64)> {
        // Into a regular file the output is written uncached: it is read again only on import.
        let st = rustix::fs::fstat(fd).at("fstat", name)?;
        #[allow(clippy::unnecessary_cast)] // field types differ between targets
        let file_dev =
            (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile).then_some(st.st_dev as u64);
        let output = BufWriter::with_capacity(OUTPUT_BUFFER, FdWriter { fd, file_dev, written: 0 });
        let mut encoder = Encoder::new(compression, output).at("start compressor for", name)?;
        let sink = match &mut encoder {
            Encoder::Zstd(frames) => Sink::Framed(&mut **frames),
            other => Sink::Writer(Box::new(other)),
        };
        let mut stream = Stream::new(sink, name, self.progress_receiver());
        stream.write_pieces(pieces)?;
        stream.flush()?;
        let copied = stream.bytes_copied;
        drop(stream);
        let output =
            encoder.finish().and_then(|w| w.into_inner().map_err(|e| e.into_error())).at("write", name)?;
        Ok((copied, output.written))
    }

    fn write_compressed_file(
        &self,
        src: &Path,
        skipped: &Skipped,
        out_file: OutFile,
        out: &Path,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<ExportStats> {
        let compression = self.compression.expect("compressed output");
        let align = self.stream_align();
        let mut pieces = self.pieces(src, align, skipped, true)?;
        let (copied, written) =
            self.write_compressed(&mut pieces, compression, out_file.file().as_fd(), out)?;
        check()?;
        out_file.commit()?;
        Ok(stats(&pieces, align, 0, copied, written))
    }
}

/// Writes to a descriptor the caller keeps open, counting the bytes.
struct FdWriter<'a> {
    fd: BorrowedFd<'a>,
    /// The device of a regular file written from its start, which is written uncached.
    file_dev: Option<u64>,
    written: u64,
}

impl Write for FdWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = match self.file_dev {
            Some(dev) => uncached::pwrite_all(self.fd, dev, buf, self.written).map(|()| buf.len())?,
            None => rustix::io::write(self.fd, buf)?,
        };
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn stats(pieces: &Pieces<'_>, align: u64, bytes_cloned: u64, bytes_copied: u64, written: u64) -> ExportStats {
    let Counts { entries, files, bytes } = pieces.counts();
    ExportStats {
        entries,
        files,
        bytes,
        bytes_cloned,
        bytes_copied,
        archive_bytes: written,
        tar_bytes: pieces.len().unwrap_or(0),
        align,
        ..ExportStats::default()
    }
}

/// 1 MiB: the most an unprivileged process may ask for by default (`/proc/sys/fs/pipe-max-size`).
const PIPE_SIZE: usize = 1 << 20;

pub(crate) fn check_align(align: u64) -> Result<()> {
    if !align.is_power_of_two() || align < 512 {
        return Err(Error::usage(
            format!("--align {align}"),
            "alignment must be a power of two of at least 512",
        ));
    }
    Ok(())
}
