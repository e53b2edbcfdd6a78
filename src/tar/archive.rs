//! Opening an archive by name: a plain regular file is read in place (headers by offset, data
//! left where it is, to be cloned or skipped); standard input (`-`), pipes, devices and
//! compressed files are read front to back as one stream.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::error::{Context, Error, Result};
use crate::sys::uncached;
use crate::tar::compress::{self, Compression, Decompressed};

/// An opened archive.
pub(crate) enum Opened {
    /// A plain (uncompressed) regular file and its length.
    File(File, u64),
    /// Everything else, decompressed when its first bytes say it is compressed.
    Stream(Box<Decompressed<'static>>),
}

/// Opens `archive` (`-` for standard input); a directory is refused.
pub(crate) fn open(archive: &Path) -> Result<Opened> {
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
        if Compression::detect(&magic[..n]).is_none() {
            return Ok(Opened::File(file, meta.len()));
        }
    }
    // A compressed file is read once: uncached, so it does not evict the running workloads'
    // pages. Pipes and devices have no page cache to spare.
    let input: Box<dyn io::Read> =
        if meta.is_file() { Box::new(uncached::FileReader::new(file, meta.dev())) } else { Box::new(file) };
    Ok(Opened::Stream(Box::new(compress::decompress(input, archive)?)))
}
