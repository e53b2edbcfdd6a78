//! gzip and zstd: recognised by their magic bytes on import, written on request on export.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Context, Error, Result};
use crate::tar::frames::{FrameReader, Seekable};
use crate::tar::seekable::SeekableWriter;

/// A compression format for whole archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (flate2; multi-member streams are read whole).
    Gzip,
    /// zstd (multithreaded when writing).
    Zstd,
}

impl Compression {
    /// The format whose magic bytes start `data`, if any.
    pub fn detect(data: &[u8]) -> Option<Compression> {
        if data.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// An archive stream as read: decompressed if its first bytes said it was compressed.
/// Decompressor errors say what is wrong with the compressed data.
pub(crate) struct Decompressed<'a> {
    inner: Inner<'a>,
    /// ckpt's seekable marker was found but its seek table or index was not: the stream is
    /// read all the same (it may say what is wrong), and then fails.
    damaged_trailer: bool,
}

type Buffered<'a> = BufReader<Box<dyn Read + 'a>>;

enum Inner<'a> {
    Plain(Buffered<'a>),
    Gzip(flate2::bufread::MultiGzDecoder<Buffered<'a>>),
    Zstd(zstd::stream::read::Decoder<'static, Buffered<'a>>),
    Seekable(FrameReader),
}

/// Wraps a stream in a decompressor if its first bytes say it is compressed.
pub(crate) fn decompress<'a>(input: Box<dyn Read + 'a>, archive: &Path) -> Result<Decompressed<'a>> {
    let mut buffered = BufReader::with_capacity(1 << 20, input);
    let magic = buffered.fill_buf().at("read", archive)?;
    let inner = match Compression::detect(magic) {
        None => Inner::Plain(buffered),
        Some(Compression::Gzip) => Inner::Gzip(flate2::bufread::MultiGzDecoder::new(buffered)),
        Some(Compression::Zstd) => {
            Inner::Zstd(zstd::stream::read::Decoder::with_buffer(buffered).at("zstd", archive)?)
        }
    };
    Ok(Decompressed { inner, damaged_trailer: false })
}

/// The tar stream of a seekable archive, decoded on `jobs` threads.
pub(crate) fn seekable(seekable: Arc<Seekable>, jobs: usize) -> Decompressed<'static> {
    Decompressed { inner: Inner::Seekable(FrameReader::new(seekable, jobs)), damaged_trailer: false }
}

/// What is wrong with a seekable archive whose trailer is missing or inconsistent.
pub(crate) const DAMAGED_TRAILER: &str = "truncated or damaged: the seek table or index at the end of this seekable zstd archive is missing or inconsistent";

impl Decompressed<'_> {
    /// Marks a stream as ckpt's seekable archive without its trailer (see `damaged_trailer`).
    pub(crate) fn set_damaged_trailer(&mut self) {
        self.damaged_trailer = true;
    }

    /// The problem [`DAMAGED_TRAILER`] describes, once the stream was read to its end.
    pub(crate) fn trailer_problem(&self) -> Option<&'static str> {
        self.damaged_trailer.then_some(DAMAGED_TRAILER)
    }

    /// The seekable archive read, when it is one.
    pub(crate) fn seekable(&self) -> Option<&Arc<Seekable>> {
        match &self.inner {
            Inner::Seekable(frames) => Some(frames.seekable()),
            _ => None,
        }
    }

    /// Reads a compressed stream to its end, where its checksums are (the gzip CRC, zstd's
    /// content checksum): the tar inside ends earlier, and data already read may be wrong
    /// until the end says it is not. A plain stream is left as it is.
    pub(crate) fn finish(&mut self, archive: &Path) -> Result<()> {
        if matches!(self.inner, Inner::Plain(_)) {
            return Ok(());
        }
        io::copy(self, &mut io::sink()).map_err(|e| stream_error(archive, e))?;
        match self.trailer_problem() {
            Some(problem) => Err(Error::damaged(archive, problem)),
            None => Ok(()),
        }
    }
}

impl Read for Decompressed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (result, format) = match &mut self.inner {
            Inner::Plain(r) => return r.read(buf),
            Inner::Gzip(r) => (r.read(buf), "gzip"),
            Inner::Zstd(r) => (r.read(buf), "zstd"),
            // Its errors name the frame already.
            Inner::Seekable(r) => return r.read(buf),
        };
        result.map_err(|e| describe(format, e))
    }
}

/// A decompressor's error, said plainly; errors of the input itself (EIO, ...) stay as they are.
pub(crate) fn describe(format: &str, e: io::Error) -> io::Error {
    if e.raw_os_error().is_some() || e.kind() == io::ErrorKind::Interrupted {
        return e;
    }
    let text = e.to_string();
    let what = if e.kind() == io::ErrorKind::UnexpectedEof {
        format!("truncated compressed stream: the {format} data ends early, or is corrupt")
    } else if text.contains("checksum") && format == "gzip" {
        "gzip CRC mismatch: the compressed data is corrupt".to_string()
    } else if text.contains("checksum") {
        "zstd checksum mismatch: the compressed data is corrupt".to_string()
    } else if text.contains("header") || text.contains("frame descriptor") {
        format!(
            "bad {format} header: corrupt, or not {format} data after the end of the compressed stream ({text})"
        )
    } else {
        format!("corrupt {format} data ({text})")
    };
    io::Error::new(e.kind(), what)
}

/// An error reading `archive` as a stream: the archive's fault when the decompressor
/// complains, the system's otherwise.
pub(crate) fn stream_error(archive: &Path, e: io::Error) -> Error {
    if e.raw_os_error().is_some() {
        Error::io("read", archive, e)
    } else {
        Error::damaged(archive, e.to_string())
    }
}

/// Output buffered in front of a compressor's destination.
pub(crate) const OUTPUT_BUFFER: usize = 256 << 10;

/// A compressing writer that must be finished to write its trailer.
pub(crate) enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(Box<SeekableWriter<W>>),
}

impl<W: Write> Encoder<W> {
    /// Default levels; zstd on every core, as `zstd -T0` does, written seekable
    /// (`tar::seekable`): frames of at most 2 MiB compressed one per core, each with its
    /// content checksum, so that `zstd -t`, verify and import detect corrupted data.
    pub(crate) fn new(compression: Compression, inner: W) -> io::Result<Encoder<W>> {
        Ok(match compression {
            Compression::Gzip => {
                Encoder::Gzip(flate2::write::GzEncoder::new(inner, flate2::Compression::default()))
            }
            Compression::Zstd => {
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                Encoder::Zstd(Box::new(SeekableWriter::new(inner, threads)?))
            }
        })
    }

    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish().map(|(w, _)| w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}
