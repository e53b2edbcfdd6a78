//! Where an archive's bytes come from: an open file read in place between two offsets, or a
//! stream read front to back. Separate from the reader so that header decoding sees one kind
//! of input, with one position, whichever it is.
//!
//! A file's headers go through a read-ahead buffer (consecutive small members cost one read,
//! not three each); its data is read where it is, so it can also be cloned by offset.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use crate::tar::header::HEADER_LEN;
use crate::tar::seekable::Regions;
use crate::tar::{BLOCK, round_up};

/// How much a file input reads ahead for headers.
const READ_AHEAD: usize = 64 << 10;

enum Source<'a> {
    /// Positional reads of an open file, up to `end`.
    File {
        file: &'a File,
        end: u64,
    },
    Stream(Box<dyn Read + 'a>),
    /// A seekable archive's index, up to `end`: headers only, data skipped.
    Index {
        regions: &'a Regions,
        end: u64,
    },
}

/// What reading anything but headers from an index gives.
fn not_indexed(offset: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the seekable index holds nothing at tar offset {offset}"),
    )
}

pub(crate) struct Input<'a> {
    source: Source<'a>,
    /// The offset of the next byte read, in the outermost archive.
    pos: u64,
    ahead: Vec<u8>,
    ahead_at: u64,
}

/// Why a header block could not be read.
pub(crate) enum BlockError {
    /// The stream's own complaint (a decompressor's): about the archive's bytes, not the
    /// system.
    Garbled(io::Error),
    Read(io::Error),
}

impl<'a> Input<'a> {
    /// The bytes of `file` from `start` to `end`.
    pub(crate) fn file(file: &'a File, start: u64, end: u64) -> Input<'a> {
        Input::new(Source::File { file, end }, start)
    }

    /// The headers a seekable archive's index holds, from `start` to `end`.
    pub(crate) fn index(regions: &'a Regions, start: u64, end: u64) -> Input<'a> {
        Input::new(Source::Index { regions, end }, start)
    }

    /// The index and the offset it ends at, when the input is one.
    pub(crate) fn indexed(&self) -> Option<(&'a Regions, u64)> {
        match self.source {
            Source::Index { regions, end } => Some((regions, end)),
            _ => None,
        }
    }

    /// A stream whose first byte is at offset `start`.
    pub(crate) fn stream(stream: Box<dyn Read + 'a>, start: u64) -> Input<'a> {
        Input::new(Source::Stream(stream), start)
    }

    fn new(source: Source<'a>, start: u64) -> Input<'a> {
        Input { source, pos: start, ahead: Vec::new(), ahead_at: 0 }
    }

    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// The file and the offset it ends at, when the input is read in place.
    pub(crate) fn in_place(&self) -> Option<(&'a File, u64)> {
        match self.source {
            Source::File { file, end } => Some((file, end)),
            Source::Stream(_) | Source::Index { .. } => None,
        }
    }

    /// Reads exactly `buf.len()` bytes (a header's worth or so: through the read-ahead).
    pub(crate) fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match &mut self.source {
            Source::File { file, end } => {
                let (file, end) = (*file, *end);
                self.read_in_place(file, end, buf)?;
            }
            Source::Stream(stream) => stream.read_exact(buf)?,
            Source::Index { regions, end } => {
                if self.pos + buf.len() as u64 > *end {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                if !regions.read(self.pos, buf) {
                    return Err(not_indexed(self.pos));
                }
            }
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn read_in_place(&mut self, file: &File, end: u64, buf: &mut [u8]) -> io::Result<()> {
        let (pos, want) = (self.pos, buf.len() as u64);
        if pos + want > end {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let cached = |ahead: &Vec<u8>, at: u64| pos >= at && pos + want <= at + ahead.len() as u64;
        if !cached(&self.ahead, self.ahead_at) && buf.len() <= READ_AHEAD {
            let len = (READ_AHEAD as u64).min(end - pos) as usize;
            self.ahead.resize(len, 0);
            file.read_exact_at(&mut self.ahead, pos)?;
            self.ahead_at = pos;
        }
        if cached(&self.ahead, self.ahead_at) {
            let from = (pos - self.ahead_at) as usize;
            buf.copy_from_slice(&self.ahead[from..from + buf.len()]);
            Ok(())
        } else {
            file.read_exact_at(buf, pos)
        }
    }

    /// Reads a header block and how many of its bytes the input held: fewer than a block only
    /// at the physical end of the input (the rest of the block is zeros).
    pub(crate) fn read_block(&mut self) -> Result<([u8; HEADER_LEN], usize), BlockError> {
        let mut block = [0u8; HEADER_LEN];
        let offset = self.pos;
        let got = match &mut self.source {
            Source::Stream(stream) => {
                let got = fill(stream, &mut block)?;
                self.pos += got as u64;
                got
            }
            Source::File { file, end } => {
                let (file, got) = (*file, end.saturating_sub(offset).min(BLOCK) as usize);
                if got == block.len() {
                    self.read_exact(&mut block).map_err(BlockError::Read)?;
                } else {
                    file.read_exact_at(&mut block[..got], offset).map_err(BlockError::Read)?;
                }
                got
            }
            Source::Index { end, .. } => {
                let got = end.saturating_sub(offset).min(BLOCK) as usize;
                if got == block.len() {
                    self.read_exact(&mut block).map_err(BlockError::Garbled)?;
                } else if got > 0 {
                    return Err(BlockError::Garbled(not_indexed(offset)));
                }
                got
            }
        };
        Ok((block, got))
    }

    /// Moves on to `target`, reading a stream's bytes up to it.
    pub(crate) fn skip_to(&mut self, target: u64) -> io::Result<()> {
        if let Source::Stream(stream) = &mut self.source {
            let n = io::copy(&mut stream.by_ref().take(target - self.pos), &mut io::sink())?;
            if n < target - self.pos {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        self.pos = target;
        Ok(())
    }

    /// Reads `len` bytes of extension data (capped by the caller) and skips to the next block.
    pub(crate) fn read_extension(&mut self, len: u64) -> io::Result<Vec<u8>> {
        let mut data = vec![0u8; len as usize];
        self.read_exact(&mut data)?;
        self.skip_to(round_up(self.pos, BLOCK))?;
        Ok(data)
    }

    /// One read of member data at the position, past the read-ahead: data is read once.
    pub(crate) fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.source {
            Source::File { file, .. } => file.read_at(buf, self.pos)?,
            Source::Stream(stream) => stream.read(buf)?,
            Source::Index { .. } => return Err(not_indexed(self.pos)),
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads from `stream` until `block` is full or the stream ends; returns how much it read.
fn fill(stream: &mut dyn Read, block: &mut [u8]) -> Result<usize, BlockError> {
    let mut got = 0;
    while got < block.len() {
        match stream.read(&mut block[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error().is_none() => return Err(BlockError::Garbled(e)),
            Err(e) => return Err(BlockError::Read(e)),
        }
    }
    Ok(got)
}
