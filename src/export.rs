//! Export: walk a tree, plan the archive, place it into a file that appears only when complete.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::io::{BufWriter, Write};
use std::os::fd::AsFd;

use crate::compress::{Compression, Encoder};
use crate::digest;
use crate::error::{Context, Error, Result};
use crate::layout::{self, Plan};
use crate::member::{Body, Member};
use crate::mover::{MoveStats, Mover};
use crate::outfile::OutFile;
use crate::overlay::WhiteoutStyle;
use crate::place::{Placer, Target};
use crate::podman::{self, Rootfs};
use crate::progress::{Progress, ProgressHandle};
use crate::stream::{Sink, Stream};
use crate::walk::{self, Naming, Skipped};

/// The smallest alignment used by default: the page and block size of every common filesystem.
pub const DEFAULT_ALIGN: u64 = 4096;

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
    whiteouts: WhiteoutStyle,
    compression: Option<Compression>,
    digest: bool,
    progress: Option<ProgressHandle>,
}

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportStats {
    /// Archive members, nested ones included.
    pub entries: u64,
    /// Regular files with data (hardlinks not counted).
    pub files: u64,
    /// Sum of the regular files' sizes.
    pub bytes: u64,
    pub bytes_cloned: u64,
    /// File bytes placed by copying, holes kept on the copy path included.
    pub bytes_copied: u64,
    pub archive_bytes: u64,
    pub align: u64,
    pub seconds: f64,
    /// Entries that cannot be archived (sockets), left out with a warning.
    pub skipped: Vec<PathBuf>,
}

impl Default for Exporter {
    fn default() -> Self {
        Exporter::new()
    }
}

impl Exporter {
    pub fn new() -> Exporter {
        Exporter {
            align: None,
            share: true,
            bundle: false,
            rootfs: None,
            whiteouts: WhiteoutStyle::Podman,
            compression: None,
            digest: false,
            progress: None,
        }
    }

    /// Aligns file data to `align` bytes (a power of two, at least 512) instead of the larger
    /// of 4096 and the archive filesystem's block size.
    pub fn align(mut self, align: u64) -> Exporter {
        self.align = Some(align);
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

    /// Archives the contents of `src` into `out` (`-` for standard output): as `tar -C src -cf out .` would name them, or
    /// in the checkpoint layout when asked for.
    pub fn export(&self, src: &Path, out: &Path) -> Result<ExportStats> {
        let started = Instant::now();
        let mut skipped = Skipped::default();
        let bundle = self.bundle || self.rootfs.is_some();
        let mut members = if bundle {
            podman::bundle_members(src, self.rootfs.as_ref(), self.whiteouts, &mut skipped)?
        } else {
            walk::walk(src, Naming::DotSlash, &mut skipped)?
        };
        if self.digest {
            members.push(digest::manifest_member(&members, if bundle { "" } else { "./" }));
        }
        let progress = self.progress_receiver();
        if let Some(progress) = progress {
            progress.start(total_bytes(&members));
        }
        let result = self.write_members(members, out, started);
        if let Some(progress) = progress {
            progress.finish();
        }
        let mut stats = result?;
        stats.skipped = skipped.paths;
        Ok(stats)
    }

    /// Lays out `members` in the given order and writes them to `out`.
    fn write_members(&self, members: Vec<Member>, out: &Path, started: Instant) -> Result<ExportStats> {
        if let Some(align) = self.align {
            check_align(align)?;
        }
        let to_stdout = out == Path::new("-");
        let mut stats = if !to_stdout && self.compression.is_none() {
            self.write_file(members, out)?
        } else {
            let align = self.align.unwrap_or(DEFAULT_ALIGN);
            let plan = layout::plan(members, align);
            let bytes_copied =
                if to_stdout { self.write_stdout(&plan)? } else { self.write_compressed_file(&plan, out)? };
            let mut stats =
                ExportStats { bytes_copied, archive_bytes: plan.len, align, ..ExportStats::default() };
            count(&plan, &mut stats);
            stats
        };
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Places the archive by offset, sharing data with the sources where possible.
    fn write_file(&self, members: Vec<Member>, out: &Path) -> Result<ExportStats> {
        let out_file = OutFile::create(out)?;
        let file = out_file.file();
        let fs_block = rustix::fs::fstatfs(file).at("fstatfs", out)?.f_bsize as u64;
        let align = self.align.unwrap_or(DEFAULT_ALIGN.max(fs_block));
        let plan = layout::plan(members, align);
        let dev = file.metadata().at("fstat", out)?.dev();
        let target = Target { file, path: out, dev, block: fs_block.max(512) };
        let mut placer = Placer::new(target, Mover::new(self.share), self.progress_receiver(), self.digest);
        placer.place(&plan)?;
        let MoveStats { bytes_cloned, bytes_copied } = placer.mover.stats;
        drop(placer);
        file.set_len(plan.len).at("ftruncate", out)?;
        out_file.commit()?;
        let mut stats = ExportStats {
            bytes_cloned,
            bytes_copied,
            archive_bytes: plan.len,
            align,
            ..ExportStats::default()
        };
        count(&plan, &mut stats);
        Ok(stats)
    }

    fn write_stdout(&self, plan: &Plan) -> Result<u64> {
        let stdout = std::io::stdout();
        let name = Path::new("<stdout>");
        if std::io::IsTerminal::is_terminal(&stdout) {
            return Err(Error::invalid(name, "refusing to write an archive to a terminal"));
        }
        match self.compression {
            None => {
                let mut stream =
                    Stream::new(Sink::Fd(stdout.as_fd()), name, self.progress_receiver(), self.digest);
                stream.write_plan(plan, 0, true)?;
                Ok(stream.bytes_copied)
            }
            Some(compression) => {
                let lock = stdout.lock();
                let mut encoder = Encoder::new(compression, BufWriter::with_capacity(1 << 20, lock))
                    .at("start compressor for", name)?;
                let copied = self.write_stream(plan, &mut encoder, name)?;
                encoder.finish().and_then(|mut w| w.flush()).at("write", name)?;
                Ok(copied)
            }
        }
    }

    fn progress_receiver(&self) -> Option<&dyn Progress> {
        self.progress.as_ref().map(|p| p.0.as_ref())
    }

    fn write_stream(&self, plan: &Plan, writer: &mut dyn Write, name: &Path) -> Result<u64> {
        let mut stream =
            Stream::new(Sink::Writer(Box::new(writer)), name, self.progress_receiver(), self.digest);
        stream.write_plan(plan, 0, true)?;
        stream.flush()?;
        Ok(stream.bytes_copied)
    }

    fn write_compressed_file(&self, plan: &Plan, out: &Path) -> Result<u64> {
        let compression = self.compression.expect("compressed output");
        let out_file = OutFile::create(out)?;
        let mut encoder = Encoder::new(compression, BufWriter::with_capacity(1 << 20, out_file.file()))
            .at("start compressor for", out)?;
        let copied = self.write_stream(plan, &mut encoder, out)?;
        encoder.finish().and_then(|mut w| w.flush()).at("write", out)?;
        out_file.commit()?;
        Ok(copied)
    }
}

fn total_bytes(members: &[Member]) -> u64 {
    members
        .iter()
        .map(|m| match &m.body {
            Body::File(f) => f.size,
            Body::Members(inner) => total_bytes(inner),
            _ => 0,
        })
        .sum()
}

pub(crate) fn check_align(align: u64) -> Result<()> {
    if !align.is_power_of_two() || align < 512 {
        return Err(Error::invalid(
            format!("--align {align}"),
            "alignment must be a power of two of at least 512",
        ));
    }
    Ok(())
}

fn count(plan: &Plan, stats: &mut ExportStats) {
    for placed in &plan.entries {
        stats.entries += 1;
        match &placed.member.body {
            Body::File(f) => {
                stats.files += 1;
                stats.bytes += f.size;
            }
            Body::Archive(inner) => count(inner, stats),
            _ => {}
        }
    }
}
