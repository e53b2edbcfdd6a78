//! Seekable zstd, both sides: ckpt's `--compress zstd` output is the zstd seekable format
//! (independent frames, each with its content checksum, and a seek table in a skippable frame
//! at the end), with two skippable frames of ckpt's own: a marker right after the first
//! frame (so a file cut before its seek table is known to have had one) and, before the seek
//! table, an index of every member's header blocks, so that listing a multi-GB archive reads
//! a few KiB. Every zstd reader skips skippable frames: the file stays one zstd stream.
//!
//! Layout: `frame 0 | marker | frames... | index | seek table`; the seek table lists every
//! frame but itself, the skippable ones with a decompressed size of 0.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use zstd::zstd_safe;

use crate::sys::uncached;

/// The magic of ckpt's skippable frames (any of 0x184D2A50..5F is a skippable frame).
const CKPT_MAGIC: u32 = 0x184D_2A5C;
/// The seek table's skippable frame magic and its footer's magic (the seekable format).
const TABLE_MAGIC: u32 = 0x184D_2A5E;
const FOOTER_MAGIC: u32 = 0x8F92_EAB1;
const FOOTER_LEN: u64 = 9;
/// The seek table's descriptor: entries carry checksums.
const CHECKSUM_FLAG: u8 = 0x80;
/// What the marker frame holds.
const MARKER: &[u8] = b"ckpt seekable tar 1";
/// What the index frame's content starts with, before the compressed index.
const INDEX_TAG: &[u8] = b"ckpt-index-1";
/// The low 32 bits of XXH64 of no bytes: the seek table checksum of a skippable frame.
const EMPTY_CHECKSUM: u32 = 0x51D8_E999;

/// Index spans: bytes as they are, or a run of one byte.
const LITERAL: u8 = 0;
const FILL: u8 = 1;
/// The shortest run of one byte stored as a run.
const MIN_RUN: usize = 32;

/// Tar bytes per frame at most: zstd's window at the default level is 2 MiB, so larger
/// frames compress no better (measured: 4 MiB frames made a 0.01% smaller archive), while
/// writer and reader hold a few frames per thread.
pub(crate) const FRAME_MAX: u64 = 2 << 20;
/// A member with at least this much data gets frames of its own.
pub(crate) const LARGE_MEMBER: u64 = 1 << 20;
/// Bounds on what a reader accepts from a table it has not written.
const MAX_INDEX: u64 = 1 << 30;
/// How much of a file's end is read at once for its trailer.
const TAIL: u64 = 256 << 10;
const MAX_FRAME_DECOMPRESSED: u64 = 64 << 20;

/// One frame as the seek table describes it, and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) compressed_offset: u64,
    pub(crate) compressed_len: u64,
    /// Where its bytes start in the tar; skippable frames hold none.
    pub(crate) tar_offset: u64,
    pub(crate) tar_len: u64,
}

/// The zstd encoder of a seekable archive: tar bytes in, frames out, ended where the caller
/// says (member boundaries) or at [`FRAME_MAX`]. Frames are independent, so whole frames are
/// compressed on worker threads (one frame per thread, as `pzstd` does) while the caller
/// reads the next one; zstd's own multithreading inside a frame would wait for each frame's
/// last job before reading on. Output stays in frame order.
pub(crate) struct SeekableWriter<W: Write> {
    out: W,
    pool: Pool,
    /// Frames being compressed, oldest first, with their tar length.
    pending: VecDeque<(Receiver<io::Result<Buffers>>, u64)>,
    /// The tar bytes of the frame under way.
    frame: Vec<u8>,
    /// Buffers of frames written, for the next ones: memory stays at a few frames, never
    /// handed back and forth to the allocator.
    spare: Vec<Buffers>,
    /// Seek table entries: compressed size, decompressed size, checksum.
    entries: Vec<(u32, u32, u32)>,
    /// The index: tar offset, length and bytes of every header (and end-of-archive) region.
    index: Vec<u8>,
    tar_len: u64,
    written: u64,
}

/// A frame's tar bytes and its compressed bytes.
#[derive(Default)]
struct Buffers {
    input: Vec<u8>,
    output: Vec<u8>,
}

/// A frame to compress (its output buffer empty), and where to send it compressed.
type Job = (Buffers, SyncSender<io::Result<Buffers>>);

/// The compressing threads; they end when the pool is dropped.
struct Pool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(threads: usize) -> io::Result<Pool> {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let mut pool = Pool { jobs: Some(jobs), threads: Vec::with_capacity(threads) };
        for k in 0..threads {
            let queue = queue.clone();
            let thread = std::thread::Builder::new().name(format!("ckpt-zstd-{k}")).spawn(move || {
                let mut compressor = zstd::bulk::Compressor::new(zstd::DEFAULT_COMPRESSION_LEVEL)
                    .and_then(|mut c| c.include_checksum(true).map(|()| c));
                loop {
                    let job = queue.lock().map_err(|_| ()).and_then(|q| q.recv().map_err(|_| ()));
                    let Ok((mut buffers, reply)) = job else { return };
                    let frame = match &mut compressor {
                        Ok(c) => {
                            let bound = zstd::zstd_safe::compress_bound(buffers.input.len());
                            buffers.output.reserve_exact(bound);
                            c.compress_to_buffer(&buffers.input, &mut buffers.output).map(|_| buffers)
                        }
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    };
                    let _ = reply.send(frame);
                }
            })?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    fn submit(&self, buffers: Buffers) -> Receiver<io::Result<Buffers>> {
        let (reply, frame) = sync_channel(1);
        // A pool whose threads are gone drops the reply, which the receiver reports.
        let _ = self.jobs.as_ref().expect("running").send((buffers, reply));
        frame
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// What a writer that lays out frames needs from its encoder.
pub(crate) trait Frames: Write {
    /// Tar bytes in the frame under way.
    fn frame_len(&self) -> u64;
    /// Records the header blocks (or end-of-archive blocks) at tar offset `offset`.
    fn note_header(&mut self, offset: u64, bytes: &[u8]);
    /// Ends the frame under way, if it holds anything.
    fn end_frame(&mut self) -> io::Result<()>;
}

impl<W: Write> Frames for SeekableWriter<W> {
    fn frame_len(&self) -> u64 {
        self.frame.len() as u64
    }

    /// Runs of one byte (the pax comment's padding, a header's zeros) are stored as runs:
    /// an aligned archive's headers are mostly padding.
    fn note_header(&mut self, offset: u64, bytes: &[u8]) {
        let mut at = 0;
        while at < bytes.len() {
            let run = bytes[at..].iter().take_while(|&&b| b == bytes[at]).count();
            let literal = if run >= MIN_RUN {
                0
            } else {
                let rest = &bytes[at..];
                (1..rest.len())
                    .find(|&i| rest[i..].iter().take_while(|&&b| b == rest[i]).count() >= MIN_RUN)
                    .unwrap_or(rest.len())
            };
            self.index.extend_from_slice(&(offset + at as u64).to_le_bytes());
            if literal == 0 {
                self.index.extend_from_slice(&(run as u32).to_le_bytes());
                self.index.extend_from_slice(&[FILL, bytes[at]]);
                at += run;
            } else {
                self.index.extend_from_slice(&(literal as u32).to_le_bytes());
                self.index.push(LITERAL);
                self.index.extend_from_slice(&bytes[at..at + literal]);
                at += literal;
            }
        }
    }

    /// Hands the frame to a thread; with every thread busy, first writes out the oldest.
    fn end_frame(&mut self) -> io::Result<()> {
        if self.frame.is_empty() {
            return Ok(());
        }
        if self.pending.len() >= self.pool.threads.len() {
            self.write_oldest()?;
        }
        let len = self.frame.len() as u64;
        let mut buffers = self.spare.pop().unwrap_or_default();
        std::mem::swap(&mut buffers.input, &mut self.frame);
        self.pending.push_back((self.pool.submit(buffers), len));
        Ok(())
    }
}

impl<W: Write> SeekableWriter<W> {
    /// Default level, every frame with its content checksum, on `threads` threads.
    pub(crate) fn new(out: W, threads: usize) -> io::Result<Self> {
        Ok(SeekableWriter {
            out,
            pool: Pool::new(threads.max(1))?,
            pending: VecDeque::new(),
            frame: Vec::new(),
            spare: Vec::new(),
            entries: Vec::new(),
            index: Vec::new(),
            tar_len: 0,
            written: 0,
        })
    }

    /// Waits for the oldest frame being compressed and writes it; the first one is followed
    /// by the marker.
    fn write_oldest(&mut self) -> io::Result<()> {
        let Some((frame, len)) = self.pending.pop_front() else { return Ok(()) };
        let mut buffers =
            frame.recv().map_err(|_| io::Error::other("a zstd compression thread ended early"))??;
        let frame = &buffers.output;
        self.out.write_all(frame)?;
        self.written += frame.len() as u64;
        // A frame with a content checksum ends with it.
        let checksum = u32::from_le_bytes(frame[frame.len() - 4..].try_into().expect("4 bytes"));
        self.entries.push((to_u32(frame.len() as u64)?, to_u32(len)?, checksum));
        buffers.input.clear();
        buffers.output.clear();
        self.spare.push(buffers);
        if self.entries.len() == 1 {
            self.skippable(MARKER)?;
        }
        Ok(())
    }

    /// Writes a skippable frame of ckpt's holding `content`, listed in the seek table.
    fn skippable(&mut self, content: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(8 + content.len());
        frame.extend_from_slice(&CKPT_MAGIC.to_le_bytes());
        frame.extend_from_slice(&to_u32(content.len() as u64)?.to_le_bytes());
        frame.extend_from_slice(content);
        self.out.write_all(&frame)?;
        self.written += frame.len() as u64;
        self.entries.push((to_u32(frame.len() as u64)?, 0, EMPTY_CHECKSUM));
        Ok(())
    }

    /// Ends the last frame and writes the index and the seek table; returns the output and
    /// the bytes written to it.
    pub(crate) fn finish(mut self) -> io::Result<(W, u64)> {
        self.end_frame()?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        let mut raw = Vec::with_capacity(self.index.len() + 8);
        raw.extend_from_slice(&self.tar_len.to_le_bytes());
        raw.extend_from_slice(&self.index);
        let mut compressor = zstd::bulk::Compressor::new(zstd::DEFAULT_COMPRESSION_LEVEL)?;
        compressor.include_checksum(true)?;
        let compressed = compressor.compress(&raw)?;
        self.skippable(&[INDEX_TAG, &compressed].concat())?;
        let table = seek_table(&self.entries)?;
        self.out.write_all(&table)?;
        self.written += table.len() as u64;
        Ok((self.out, self.written))
    }
}

impl<W: Write> Write for SeekableWriter<W> {
    /// Takes tar bytes into the frame under way; a frame that reaches [`FRAME_MAX`] ends there.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.frame.capacity() < FRAME_MAX as usize {
            self.frame.reserve_exact(FRAME_MAX as usize - self.frame.len());
        }
        let room = (FRAME_MAX as usize - self.frame.len()).min(data.len());
        self.frame.extend_from_slice(&data[..room]);
        self.tar_len += room as u64;
        if self.frame.len() as u64 == FRAME_MAX {
            self.end_frame()?;
        }
        Ok(room)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn to_u32(n: u64) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::other(format!("a zstd frame of {n} bytes")))
}

fn seek_table(entries: &[(u32, u32, u32)]) -> io::Result<Vec<u8>> {
    let size = entries.len() as u64 * 12 + FOOTER_LEN;
    let mut table = Vec::with_capacity(8 + size as usize);
    table.extend_from_slice(&TABLE_MAGIC.to_le_bytes());
    table.extend_from_slice(&to_u32(size)?.to_le_bytes());
    for (compressed, decompressed, checksum) in entries {
        for n in [compressed, decompressed, checksum] {
            table.extend_from_slice(&n.to_le_bytes());
        }
    }
    table.extend_from_slice(&to_u32(entries.len() as u64)?.to_le_bytes());
    table.push(CHECKSUM_FLAG);
    table.extend_from_slice(&FOOTER_MAGIC.to_le_bytes());
    Ok(table)
}

// ---------------------------------------------------------------------------
// Reading: the trailer (seek table and index), checked against the file's length.
// ---------------------------------------------------------------------------

/// A seekable archive's frames and index, read from its end.
#[derive(Debug)]
pub(crate) struct Trailer {
    pub(crate) frames: Vec<Frame>,
    pub(crate) regions: Regions,
}

/// What the end (and the start) of a zstd file says it is.
pub(crate) enum Probe {
    /// A seekable archive whose trailer is consistent with the file.
    Seekable(Trailer),
    /// ckpt's marker is there but the trailer is missing or inconsistent: cut short or damaged.
    Damaged,
    /// Any other zstd file.
    Plain,
}

/// Reads the trailer of the zstd file `file` of `len` bytes. Read errors count as
/// inconsistency: the stream read that follows reports them.
pub(crate) fn probe(file: &File, len: u64) -> Probe {
    match read_trailer(file, len) {
        Some(trailer) => Probe::Seekable(trailer),
        None if has_marker(file, len) => Probe::Damaged,
        None => Probe::Plain,
    }
}

/// Reads `len` bytes at `offset`, uncached: the trailer is read once per open.
fn read_at(file: &File, offset: u64, len: u64) -> Option<Vec<u8>> {
    let dev = file.metadata().ok()?.dev();
    let mut buf = vec![0u8; usize::try_from(len).ok()?];
    let mut done = 0;
    while done < buf.len() {
        match uncached::pread(file.as_fd(), dev, &mut buf[done..], offset + done as u64) {
            Ok(0) | Err(_) => return None,
            Ok(n) => done += n,
        }
    }
    Some(buf)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Whether ckpt's marker frame follows the file's first frame.
fn has_marker(file: &File, len: u64) -> bool {
    let Some(head) = read_at(file, 0, len.min(1 << 20)) else { return false };
    let Ok(first) = zstd_safe::find_frame_compressed_size(&head) else { return false };
    let marker = [&CKPT_MAGIC.to_le_bytes()[..], &(MARKER.len() as u32).to_le_bytes(), MARKER].concat();
    head.get(first..).is_some_and(|rest| rest.starts_with(&marker))
}

/// The end of a file, read at once: the seek table and index usually lie inside it, and a
/// cold disk then serves one read instead of three in a row.
struct Tail<'a> {
    file: &'a File,
    at: u64,
    bytes: Vec<u8>,
}

impl Tail<'_> {
    fn read(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        match offset.checked_sub(self.at) {
            Some(from) => self.bytes.get(from as usize..(from + len) as usize).map(<[u8]>::to_vec),
            None => read_at(self.file, offset, len),
        }
    }
}

fn read_trailer(file: &File, len: u64) -> Option<Trailer> {
    let at = len.saturating_sub(TAIL);
    let tail = Tail { file, at, bytes: read_at(file, at, len - at)? };
    let footer = tail.read(len.checked_sub(FOOTER_LEN)?, FOOTER_LEN)?;
    if u32_at(&footer, 5)? != FOOTER_MAGIC || footer[4] != CHECKSUM_FLAG {
        return None;
    }
    let count = u64::from(u32_at(&footer, 0)?);
    let table_len = 8 + count * 12 + FOOTER_LEN;
    let table_at = len.checked_sub(table_len)?;
    let table = tail.read(table_at, table_len - FOOTER_LEN)?;
    if u32_at(&table, 0)? != TABLE_MAGIC || u64::from(u32_at(&table, 4)?) != table_len - 8 {
        return None;
    }
    let frames = frames_of(&table[8..], table_at)?;
    // Frame 1 is the marker, the last one the index.
    let index = frames.last()?;
    if frames.len() < 3 || frames[1].tar_len != 0 || index.tar_len != 0 {
        return None;
    }
    let regions = read_index(&tail, index, frames_tar_len(&frames))?;
    Some(Trailer { frames, regions })
}

/// The frames the seek table `entries` lists, if they fill the file up to `table_at`.
fn frames_of(entries: &[u8], table_at: u64) -> Option<Vec<Frame>> {
    let mut frames = Vec::with_capacity(entries.len() / 12);
    let (mut compressed_offset, mut tar_offset) = (0u64, 0u64);
    for entry in entries.chunks_exact(12) {
        let compressed_len = u64::from(u32_at(entry, 0)?);
        let tar_len = u64::from(u32_at(entry, 4)?);
        if compressed_len == 0
            || tar_len > MAX_FRAME_DECOMPRESSED
            || compressed_len > most_compressed(tar_len)
        {
            return None;
        }
        frames.push(Frame { compressed_offset, compressed_len, tar_offset, tar_len });
        compressed_offset += compressed_len;
        tar_offset += tar_len;
    }
    (compressed_offset == table_at).then_some(frames)
}

/// The largest a frame of `tar_len` bytes can be compressed (zstd's bound, with room for
/// the content checksum); a skippable frame (no tar bytes) at most the largest index. A
/// reader allocates a frame's compressed size: a table cannot make it allocate more.
fn most_compressed(tar_len: u64) -> u64 {
    match tar_len {
        0 => MAX_INDEX + 8,
        n => zstd_safe::compress_bound(n as usize) as u64 + 32,
    }
}

fn frames_tar_len(frames: &[Frame]) -> u64 {
    frames.iter().map(|f| f.tar_len).sum()
}

fn read_index(tail: &Tail<'_>, frame: &Frame, tar_len: u64) -> Option<Regions> {
    if frame.compressed_len > MAX_INDEX {
        return None;
    }
    let bytes = tail.read(frame.compressed_offset, frame.compressed_len)?;
    let tag_end = 8 + INDEX_TAG.len();
    if u32_at(&bytes, 0)? != CKPT_MAGIC
        || u64::from(u32_at(&bytes, 4)?) != frame.compressed_len - 8
        || bytes.get(8..tag_end)? != INDEX_TAG
    {
        return None;
    }
    let compressed = &bytes[tag_end..];
    let size = zstd_safe::get_frame_content_size(compressed).ok()??;
    if size > MAX_INDEX {
        return None;
    }
    let raw = zstd::bulk::decompress(compressed, size as usize).ok()?;
    let regions = Regions::parse(raw)?;
    (regions.tar_len == tar_len).then_some(regions)
}

/// The parts of the tar the index holds: every member's header blocks and every
/// end-of-archive pair, by tar offset, in spans that follow each other.
#[derive(Debug, Default)]
pub(crate) struct Regions {
    spans: Vec<(u64, Span)>,
    /// The decoded index, which literal spans point into.
    raw: Vec<u8>,
    /// The length of the whole tar.
    pub(crate) tar_len: u64,
}

#[derive(Debug)]
enum Span {
    /// Bytes of the index, by range.
    Bytes(std::ops::Range<usize>),
    Fill(u8, u64),
}

impl Span {
    fn len(&self) -> u64 {
        match self {
            Span::Bytes(range) => range.len() as u64,
            Span::Fill(_, len) => *len,
        }
    }
}

impl Regions {
    fn parse(raw: Vec<u8>) -> Option<Regions> {
        let tar_len = u64::from_le_bytes(raw.get(..8)?.try_into().ok()?);
        let (mut spans, mut at, mut end) = (Vec::new(), 8, 0u64);
        while at < raw.len() {
            let offset = u64::from_le_bytes(raw.get(at..at + 8)?.try_into().ok()?);
            let len = u32_at(&raw, at + 8)? as usize;
            let (span, used) = match *raw.get(at + 12)? {
                LITERAL => {
                    let bytes = at + 13..(at + 13).checked_add(len)?;
                    raw.get(bytes.clone())?;
                    (Span::Bytes(bytes), 13 + len)
                }
                FILL => (Span::Fill(*raw.get(at + 13)?, len as u64), 14),
                _ => return None,
            };
            // In order, apart, inside the tar.
            if offset < end || offset.checked_add(len as u64)? > tar_len {
                return None;
            }
            end = offset + len as u64;
            spans.push((offset, span));
            at += used;
        }
        Some(Regions { spans, raw, tar_len })
    }

    /// Fills `buf` with the bytes at `offset`, if the index holds all of them.
    pub(crate) fn read(&self, mut offset: u64, buf: &mut [u8]) -> bool {
        let Some(mut i) = self.spans.partition_point(|(start, _)| *start <= offset).checked_sub(1) else {
            return false;
        };
        let mut done = 0;
        while done < buf.len() {
            let Some((start, span)) = self.spans.get(i) else { return false };
            if offset < *start || offset >= start + span.len() {
                return false;
            }
            let from = (offset - start) as usize;
            let n = (buf.len() - done).min((span.len() - from as u64) as usize);
            match span {
                Span::Bytes(range) => {
                    buf[done..done + n].copy_from_slice(&self.raw[range.start + from..range.start + from + n])
                }
                Span::Fill(byte, _) => buf[done..done + n].fill(*byte),
            }
            (done, offset, i) = (done + n, offset + n as u64, i + 1);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    fn write(chunks: &[(u64, &[u8])]) -> (Vec<u8>, u64) {
        let mut writer = SeekableWriter::new(Vec::new(), 2).unwrap();
        for (offset, bytes) in chunks {
            writer.note_header(*offset, &bytes[..512]);
            writer.write_all(bytes).unwrap();
            writer.end_frame().unwrap();
        }
        writer.finish().unwrap()
    }

    #[test]
    fn a_written_archive_decodes_as_one_zstd_stream_and_its_trailer_reads_back() {
        let (a, b) = (vec![1u8; 1024], vec![2u8; 5 << 20]);
        let (out, written) = write(&[(0, &a), (1024, &b)]);
        assert_eq!(written, out.len() as u64);
        assert_eq!(zstd::decode_all(&out[..]).unwrap(), [a.clone(), b.clone()].concat());
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&out, 0).unwrap();
        let Probe::Seekable(trailer) = probe(&file, out.len() as u64) else { panic!("not seekable") };
        let tars: Vec<u64> = trailer.frames.iter().map(|f| f.tar_len).collect();
        assert_eq!(tars, [1024, 0, 2 << 20, 2 << 20, 1 << 20, 0]);
        let mut block = [0u8; 512];
        assert!(trailer.regions.read(1024, &mut block));
        assert_eq!(block, b[..512]);
        assert!(!trailer.regions.read(1024, &mut [0u8; 513]));
        assert_eq!(trailer.regions.tar_len, 1024 + (5 << 20));
        let cut = tempfile::tempfile().unwrap();
        cut.write_all_at(&out[..out.len() - 1], 0).unwrap();
        assert!(matches!(probe(&cut, out.len() as u64 - 1), Probe::Damaged));
    }

    #[test]
    fn a_seek_table_claiming_a_frame_larger_than_zstd_can_make_it_is_not_trusted() {
        let entry =
            |compressed: u32, tar: u32| [compressed.to_le_bytes(), tar.to_le_bytes(), [0; 4]].concat();
        // 4 GiB - 1 compressed bytes said to hold 1000 tar bytes, in a file that long.
        assert!(frames_of(&entry(u32::MAX, 1000), u64::from(u32::MAX)).is_none());
        let honest = most_compressed(1000) as u32;
        assert!(frames_of(&entry(honest, 1000), u64::from(honest)).is_some());
    }
}
