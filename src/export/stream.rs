//! The stream writer: writes a planned archive front to back to a pipe, a device or a
//! compressor, where nothing can be placed by offset or shared. File data is read uncached
//! into a buffer; to a plain descriptor it goes with sendfile instead (no copy through user
//! space) where the source's filesystem cannot read uncached, since sendfile caches it (the
//! pages it read are dropped after). A sparse member's data is its map followed by the
//! source's data ranges.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::io::Errno;

use sha2::{Digest, Sha256};

use crate::error::{Context, Error, Result};
use crate::export::holes;
use crate::export::pieces::{Piece, Pieces};
use crate::export::source::{self, SourceFile};
use crate::progress::Progress;
use crate::sys::mover::shrunk;
use crate::sys::uncached;
use crate::tar::manifest;
use crate::tar::seekable::{FRAME_MAX, Frames, LARGE_MEMBER};
use crate::tar::sparse::SparseMap;

/// Where the archive's bytes go.
pub(crate) enum Sink<'a> {
    /// A descriptor written directly (stdout).
    Fd(BorrowedFd<'a>),
    /// A compressor or other writer.
    Writer(Box<dyn Write + 'a>),
    /// A seekable zstd encoder, whose frames end at member boundaries.
    Framed(&'a mut dyn Frames),
}

pub(crate) struct Stream<'a> {
    sink: Sink<'a>,
    /// What to call the output in error messages.
    name: &'a Path,
    pos: u64,
    /// Bytes of file data written.
    pub bytes_copied: u64,
    buf: Vec<u8>,
    progress: Option<&'a dyn Progress>,
    /// Hashes everything written while a listed member's data goes out.
    hasher: Option<Sha256>,
    /// How much of what sendfile moved a descriptor sink may still hold (a pipe: its size).
    held: u64,
}

/// What a descriptor sink that is not a pipe is taken to hold of what was sent to it.
const HELD_BY_OTHER_SINKS: u64 = 1 << 20;

const ZEROS: [u8; 4096] = [0; 4096];

impl<'a> Stream<'a> {
    pub(crate) fn new(sink: Sink<'a>, name: &'a Path, progress: Option<&'a dyn Progress>) -> Stream<'a> {
        let held = match &sink {
            Sink::Fd(fd) => rustix::pipe::fcntl_getpipe_size(*fd).map_or(HELD_BY_OTHER_SINKS, |n| n as u64),
            _ => 0,
        };
        Stream { sink, name, pos: 0, bytes_copied: 0, buf: Vec::new(), progress, hasher: None, held }
    }

    /// Flushes a writer sink (a compressor is finished by its owner).
    pub(crate) fn flush(&mut self) -> Result<()> {
        match &mut self.sink {
            Sink::Writer(writer) => writer.flush().at("write", self.name),
            Sink::Framed(writer) => writer.flush().at("write", self.name),
            Sink::Fd(_) => Ok(()),
        }
    }

    fn write(&mut self, mut buf: &[u8]) -> Result<()> {
        self.pos += buf.len() as u64;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(buf);
        }
        match &mut self.sink {
            Sink::Writer(writer) => writer.write_all(buf).at("write", self.name),
            Sink::Framed(writer) => writer.write_all(buf).at("write", self.name),
            Sink::Fd(fd) => {
                while !buf.is_empty() {
                    match rustix::io::write(*fd, buf) {
                        Ok(n) => buf = &buf[n..],
                        Err(Errno::INTR) => {}
                        Err(e) => return Err(Error::io("write", self.name, e)),
                    }
                }
                Ok(())
            }
        }
    }

    fn pad_to(&mut self, offset: u64) -> Result<()> {
        while self.pos < offset {
            let n = (offset - self.pos).min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..n])?;
        }
        Ok(())
    }

    /// Writes the archive front to back. Data of the members the digest manifest lists is
    /// hashed on its way out.
    pub(crate) fn write_pieces(&mut self, pieces: &mut Pieces<'_>) -> Result<()> {
        // The member being hashed and where its data ends.
        let mut hashing: Option<(Vec<u8>, u64)> = None;
        let mut manifest = Vec::new();
        let mut first = true;
        for piece in pieces {
            let piece = piece?;
            self.frame_before(&piece)?;
            match piece {
                Piece::Header { offset, bytes, digest } => {
                    self.pad_to(offset)?;
                    self.write(&bytes)?;
                    if let Some(covered) = digest {
                        self.hasher = Some(Sha256::new());
                        hashing = Some((covered.name, covered.data_offset + covered.size));
                    }
                }
                Piece::File { offset, source } => {
                    self.pad_to(offset)?;
                    self.framed_alone(source.size, |stream| stream.file_data(&source))?;
                }
                Piece::Sparse { offset, source, map } => {
                    self.pad_to(offset)?;
                    self.framed_alone(map.data_len(), |stream| stream.sparse_data(&source, &map))?;
                }
                Piece::Bytes { offset, bytes } => {
                    self.pad_to(offset)?;
                    self.write(&bytes)?;
                }
                Piece::Manifest { offset, len } => {
                    self.pad_to(offset)?;
                    assert_eq!(manifest.len() as u64, len, "manifest length was planned");
                    self.write(&manifest)?;
                }
                Piece::End { offset } => {
                    self.pad_to(offset)?;
                    self.write(&ZEROS[..1024])?;
                }
            }
            if let Some((name, end)) = hashing.take_if(|(_, end)| self.pos >= *end) {
                debug_assert_eq!(self.pos, end);
                let hasher = self.hasher.take().expect("hashing");
                manifest.extend(manifest::line(&name, &hasher.finalize().into()));
            }
            // The first frame is small, so that a reader finds ckpt's marker after it.
            if std::mem::take(&mut first) {
                self.end_frame()?;
            }
        }
        Ok(())
    }

    /// Into a seekable encoder: indexes `piece`'s headers, and ends the frame under way
    /// before the piece when the piece would make it larger than a frame should be.
    fn frame_before(&mut self, piece: &Piece) -> Result<()> {
        let Sink::Framed(frames) = &mut self.sink else { return Ok(()) };
        let (offset, len) = match piece {
            Piece::Header { offset, bytes, .. } => {
                frames.note_header(*offset, bytes);
                (*offset, bytes.len() as u64)
            }
            Piece::File { offset, source } => (*offset, source.size),
            // The map is read as a header is, so the index holds it too.
            Piece::Sparse { offset, map, .. } => {
                let text = map.pax1_text();
                frames.note_header(*offset, &text);
                (*offset, text.len() as u64 + map.data_len())
            }
            Piece::Bytes { offset, bytes } => (*offset, bytes.len() as u64),
            Piece::Manifest { offset, len } => (*offset, *len),
            Piece::End { offset } => {
                frames.note_header(*offset, &ZEROS[..1024]);
                (*offset, 1024)
            }
        };
        if frames.frame_len() + (offset + len).saturating_sub(self.pos) > FRAME_MAX {
            frames.end_frame().at("write", self.name)?;
        }
        Ok(())
    }

    /// Writes a member's data with `write`; data of `len` bytes or more gets frames of its
    /// own, so that it decodes apart from its neighbours.
    fn framed_alone(&mut self, len: u64, write: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let large = len >= LARGE_MEMBER;
        if large {
            self.end_frame()?;
        }
        write(self)?;
        if large {
            self.end_frame()?;
        }
        Ok(())
    }

    fn end_frame(&mut self) -> Result<()> {
        match &mut self.sink {
            Sink::Framed(frames) => frames.end_frame().at("write", self.name),
            _ => Ok(()),
        }
    }

    fn file_data(&mut self, source: &SourceFile) -> Result<()> {
        let file = source::open(source)?;
        // Checked before anything is sent: data a reader has seen cannot be taken back.
        source::check_unchanged(source, &file)?;
        self.range(source, &file, 0, source.size)?;
        self.file_done(source, &file)
    }

    /// Writes a sparse member's data: its map, then the data ranges it lists. The digest
    /// covers the file the member stands for (its holes as zeros), as an extracted copy has
    /// it; the map is no part of it.
    fn sparse_data(&mut self, source: &SourceFile, map: &SparseMap) -> Result<()> {
        let file = source::open(source)?;
        source::check_unchanged(source, &file)?;
        holes::check_unchanged(source, &file, map)?;
        let hasher = self.hasher.take();
        self.write(&map.pax1_text())?;
        self.hasher = hasher;
        let mut end = 0;
        for &(at, len) in &map.fragments {
            if let Some(hasher) = &mut self.hasher {
                manifest::hash_zeros(hasher, at - end);
            }
            // Reading the data beside a hole reads ahead into it.
            uncached::forget_hole(file.as_fd(), end, at - end);
            self.range(source, &file, at, at + len)?;
            end = at + len;
        }
        self.file_done(source, &file)
    }

    /// Checks, once all of its data is written, that the source did not change meanwhile.
    fn file_done(&mut self, source: &SourceFile, file: &File) -> Result<()> {
        source::check_unchanged(source, file)?;
        self.bytes_copied += source.size;
        if let Some(progress) = self.progress {
            progress.advance(source.size);
        }
        Ok(())
    }

    /// Writes bytes `from..to` of the source `file`.
    fn range(&mut self, source: &SourceFile, file: &File, from: u64, to: u64) -> Result<()> {
        let fail = |e| source::error_of(source, file, source::transfer_error(e, &source.path, self.name));
        // Data that must be hashed goes through user space, and so does data that can be read
        // without caching it (sendfile would cache it).
        let sent = match &self.sink {
            Sink::Fd(fd) if self.hasher.is_none() && !uncached::supported(source.dev) => {
                // The pages sendfile moves stay in the pipe until its reader takes them, and a
                // page the pipe holds cannot be dropped: the range's last pipe-full goes
                // through the buffer, which pushes the sent pages out before they are dropped.
                let send_to = to.saturating_sub(self.held).max(from);
                send(*fd, file, from, send_to).map_err(fail)?
            }
            _ => from,
        };
        self.pos += sent - from;
        self.copy_through_buffer(file, source.dev, sent, to).map_err(fail)?;
        uncached::forget_read(file.as_fd(), source.dev, from, sent - from);
        Ok(())
    }

    fn copy_through_buffer(&mut self, file: &File, dev: u64, from: u64, to: u64) -> io::Result<()> {
        if from == to {
            return Ok(());
        }
        if self.buf.is_empty() {
            self.buf = vec![0; 256 << 10];
        }
        let mut offset = from;
        while offset < to {
            let want = (to - offset).min(self.buf.len() as u64) as usize;
            let n = uncached::pread(file.as_fd(), dev, &mut self.buf[..want], offset)?;
            if n == 0 {
                return Err(shrunk());
            }
            let chunk = std::mem::take(&mut self.buf);
            let result = self.write(&chunk[..n]).map_err(io::Error::other);
            self.buf = chunk;
            result?;
            offset += n as u64;
        }
        Ok(())
    }
}

/// Sends bytes `from..to` of `file` to `out` in the kernel; returns where it stopped, which is
/// before `to` only when the kernel cannot sendfile to this descriptor.
fn send(out: BorrowedFd<'_>, file: &File, from: u64, to: u64) -> io::Result<u64> {
    let mut offset = from;
    while offset < to {
        let want = (to - offset).min(1 << 30) as usize;
        match rustix::fs::sendfile(out, file.as_fd(), Some(&mut offset), want) {
            Ok(0) => return Err(shrunk()),
            Ok(_) => {}
            Err(Errno::INTR | Errno::AGAIN) => {}
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) if offset == from => return Ok(from),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(offset)
}
