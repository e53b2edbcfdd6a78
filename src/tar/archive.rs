//! Opening an archive by name: a plain regular file is read in place (headers by offset, data
//! left where it is, to be cloned or skipped); standard input (`-`), pipes, devices and
//! compressed files are read front to back as one stream: a seekable zstd file (ckpt's
//! `--compress zstd`) by frames, decoded ahead on worker threads, its index at hand.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::error::{Context, Error, Result};
use crate::sys::uncached;
use std::sync::Arc;

use crate::tar::compress::{self, Compression, Decompressed};
use crate::tar::frames::{self, Seekable};
use crate::tar::seekable::{self, Probe};

/// An opened archive.
pub(crate) enum Opened {
    /// A plain (uncompressed) regular file and its length.
    File(File, u64),
    /// Everything else, decompressed when its first bytes say it is compressed.
    Stream(Box<Decompressed<'static>>),
}

/// Opens `archive` (`-` for standard input); a directory is refused. A seekable archive is
/// decoded on the default number of threads ([`frames::default_jobs`]).
pub(crate) fn open(archive: &Path) -> Result<Opened> {
    open_jobs(archive, frames::default_jobs())
}

/// Opens `archive`, decoding a seekable one on `jobs` threads.
pub(crate) fn open_jobs(archive: &Path, jobs: usize) -> Result<Opened> {
    if archive == Path::new("-") {
        return Ok(Opened::Stream(Box::new(compress::decompress(Box::new(io::stdin()), archive)?)));
    }
    let file = File::open(archive).at("open", archive)?;
    let meta = file.metadata().at("fstat", archive)?;
    if meta.is_dir() {
        return Err(Error::unsuitable(archive, "is a directory, not an archive"));
    }
    if meta.is_file() {
        let mut magic = [0u8; 4];
        let n = file.read_at(&mut magic, 0).at("read", archive)?;
        match Compression::detect(&magic[..n]) {
            None => return Ok(Opened::File(file, meta.len())),
            Some(Compression::Zstd) => return open_zstd(file, meta.len(), archive, jobs),
            Some(Compression::Gzip) => {}
        }
    }
    // A compressed file is read once: uncached, so it does not evict the running workloads'
    // pages. Pipes and devices have no page cache to spare.
    let input: Box<dyn io::Read> =
        if meta.is_file() { Box::new(uncached::FileReader::new(file, meta.dev())) } else { Box::new(file) };
    Ok(Opened::Stream(Box::new(compress::decompress(input, archive)?)))
}

/// A zstd file: by frames when it is seekable; else as a stream, which fails at its end when
/// ckpt's marker says the file had a seek table that is gone.
fn open_zstd(file: File, len: u64, archive: &Path, jobs: usize) -> Result<Opened> {
    let damaged = match seekable::probe(&file, len) {
        Probe::Seekable(trailer) => {
            let seekable = Seekable::new(file, archive, trailer).at("fstat", archive)?;
            return Ok(Opened::Stream(Box::new(compress::seekable(Arc::new(seekable), jobs))));
        }
        Probe::Damaged => true,
        Probe::Plain => false,
    };
    let dev = file.metadata().at("fstat", archive)?.dev();
    let mut stream = compress::decompress(Box::new(uncached::FileReader::new(file, dev)), archive)?;
    if damaged {
        stream.set_damaged_trailer();
    }
    Ok(Opened::Stream(Box::new(stream)))
}
