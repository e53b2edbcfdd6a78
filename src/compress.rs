//! gzip and zstd: recognised by their magic bytes on import, written on request on export.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

use crate::error::{Context, Result};

/// A compression format for whole archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
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

/// Wraps a stream in a decompressor if its first bytes say it is compressed.
pub fn decompress<'a>(input: Box<dyn Read + 'a>, archive: &Path) -> Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(1 << 20, input);
    let magic = buffered.fill_buf().at("read", archive)?;
    Ok(match Compression::detect(magic) {
        None => Box::new(buffered),
        Some(Compression::Gzip) => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Some(Compression::Zstd) => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buffered).at("zstd", archive)?)
        }
    })
}

/// Output buffered in front of a compressor's destination.
pub const OUTPUT_BUFFER: usize = 256 << 10;

const ZSTD_JOB_SIZE: u32 = 1 << 20;

/// A compressing writer that must be finished to write its trailer.
pub enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    /// Default levels, and zstd on every core, as `zstd -T0` does, but in 1 MiB jobs (`zstd
    /// -B1M`): zstd's default jobs of 4x its window keep ~60 MiB of buffers for two workers,
    /// 1 MiB jobs ~14 MiB; at the default level they compress as well and as fast.
    pub fn new(compression: Compression, inner: W) -> io::Result<Encoder<W>> {
        Ok(match compression {
            Compression::Gzip => {
                Encoder::Gzip(flate2::write::GzEncoder::new(inner, flate2::Compression::default()))
            }
            Compression::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(inner, zstd::DEFAULT_COMPRESSION_LEVEL)?;
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
                encoder.multithread(threads)?;
                encoder.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
                Encoder::Zstd(encoder)
            }
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
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
