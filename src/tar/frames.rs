//! Reading a seekable archive by frames: one frame decoded on its own (one member's data, for
//! `read_member`), or all of them in order as the tar stream, decoded ahead on worker
//! threads. A frame that does not decode is named: its number, where it is in the
//! compressed file, and the member it holds.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

use zstd::bulk::Decompressor;

use crate::sys::uncached;
use crate::tar::compress::describe;
use crate::tar::reader::Reader;
use crate::tar::seekable::{Frame, Regions, Trailer};

/// An open seekable archive: its file and what its trailer says.
#[derive(Debug)]
pub(crate) struct Seekable {
    file: File,
    dev: u64,
    archive: PathBuf,
    trailer: Trailer,
}

impl Seekable {
    pub(crate) fn new(file: File, archive: &Path, trailer: Trailer) -> io::Result<Seekable> {
        let dev = file.metadata()?.dev();
        Ok(Seekable { file, dev, archive: archive.to_path_buf(), trailer })
    }

    /// The header blocks of every member, by tar offset.
    pub(crate) fn regions(&self) -> &Regions {
        &self.trailer.regions
    }

    /// The frames that hold tar bytes, by their number in the seek table.
    fn data_frames(&self) -> Vec<usize> {
        let frames = &self.trailer.frames;
        (0..frames.len()).filter(|&i| frames[i].tar_len > 0).collect()
    }

    /// The tar bytes of frame `i`, checked against its content checksum and the seek table.
    fn decode(&self, i: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.decode_into(i, &mut Vec::new(), &mut out, &mut Decompressor::new()?)?;
        Ok(out)
    }

    /// Decodes frame `i` into `out` (cleared first), reading it into `src`: buffers and a
    /// decoder a caller keeps for the next frame.
    fn decode_into(
        &self,
        i: usize,
        src: &mut Vec<u8>,
        out: &mut Vec<u8>,
        decoder: &mut Decompressor<'static>,
    ) -> io::Result<()> {
        self.read_frame(i, src)?;
        self.decode_frame(i, src, out, decoder)
    }

    /// Reads the compressed bytes of frame `i` into `src`, uncached.
    fn read_frame(&self, i: usize, src: &mut Vec<u8>) -> io::Result<()> {
        let frame = self.trailer.frames[i];
        src.resize(frame.compressed_len as usize, 0);
        let mut done = 0;
        while done < src.len() {
            let at = frame.compressed_offset + done as u64;
            let n = uncached::pread(self.file.as_fd(), self.dev, &mut src[done..], at)?;
            if n == 0 {
                return Err(self.frame_error(i, "the file ends inside it (truncated while read)"));
            }
            done += n;
        }
        Ok(())
    }

    /// Decodes the compressed bytes `src` of frame `i` into `out` (cleared first) with
    /// `decoder`, which keeps its context from frame to frame rather than allocating one each.
    fn decode_frame(
        &self,
        i: usize,
        src: &[u8],
        out: &mut Vec<u8>,
        decoder: &mut Decompressor<'static>,
    ) -> io::Result<()> {
        let frame = self.trailer.frames[i];
        out.clear();
        out.reserve_exact(frame.tar_len as usize);
        let n = decoder
            .decompress_to_buffer(src, out)
            .map_err(|e| self.frame_error(i, &describe("zstd", e).to_string()))?;
        if n as u64 != frame.tar_len {
            let what = format!("holds {n} bytes, the seek table says {}", frame.tar_len);
            return Err(self.frame_error(i, &what));
        }
        Ok(())
    }

    /// The tar bytes from `offset` to `offset + len`, decoding only the frames that hold them.
    pub(crate) fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset + len;
        let mut out = Vec::with_capacity(len as usize);
        for i in self.data_frames() {
            let frame = self.trailer.frames[i];
            if frame.tar_offset + frame.tar_len <= offset || frame.tar_offset >= end {
                continue;
            }
            let bytes = self.decode(i)?;
            let from = offset.saturating_sub(frame.tar_offset) as usize;
            let to = (end - frame.tar_offset).min(frame.tar_len) as usize;
            out.extend_from_slice(&bytes[from..to]);
        }
        if out.len() as u64 != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the seek table does not cover the member",
            ));
        }
        Ok(out)
    }

    fn frame_error(&self, i: usize, what: &str) -> io::Error {
        let Frame { compressed_offset, tar_offset, .. } = self.trailer.frames[i];
        let member = self.member_at(tar_offset);
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "zstd frame {} of {} (at compressed offset {compressed_offset}, holding member {member:?} at tar offset {tar_offset}): {what}",
                i + 1,
                self.trailer.frames.len()
            ),
        )
    }

    /// The name of the top-level member the tar byte at `offset` belongs to.
    fn member_at(&self, offset: u64) -> String {
        let mut reader = Reader::from_index(self.regions(), &self.archive);
        let mut name = String::new();
        while let Ok(Some(entry)) = reader.next_entry() {
            if entry.header_offset > offset && !name.is_empty() {
                break;
            }
            name = entry.name_lossy();
        }
        name
    }
}

/// The tar stream of a seekable archive, its frames decoded in order, ahead of the reader on
/// `jobs` threads (inline for one): each thread holds one decoded frame at most, so memory
/// is bounded by jobs x frame size.
pub(crate) struct FrameReader {
    seekable: Arc<Seekable>,
    jobs: usize,
    order: Arc<[usize]>,
    next: usize,
    current: Vec<u8>,
    at: usize,
    workers: Option<Vec<Receiver<io::Result<Vec<u8>>>>>,
    /// Buffers of frames read, for the threads to decode into: memory stays at a few
    /// frames, never handed back and forth to the allocator.
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    /// The compressed bytes of a frame decoded inline, and its decoder.
    src: Vec<u8>,
    decoder: Option<Decompressor<'static>>,
}

impl FrameReader {
    pub(crate) fn new(seekable: Arc<Seekable>, jobs: usize) -> FrameReader {
        let order = seekable.data_frames().into();
        FrameReader {
            seekable,
            jobs,
            order,
            next: 0,
            current: Vec::new(),
            at: 0,
            workers: None,
            spare: Arc::default(),
            src: Vec::new(),
            decoder: None,
        }
    }

    pub(crate) fn seekable(&self) -> &Arc<Seekable> {
        &self.seekable
    }

    /// Starts the threads: one reads the frames front to back (one sequential reader, so
    /// that uncached reads leave nothing cached, as a stream's do) and hands frame j to
    /// decoding thread j mod n, which hands it on decoded when the reader comes to it.
    fn start(&mut self) -> io::Result<()> {
        let n = self.jobs.min(self.order.len());
        let (mut workers, mut inputs) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for k in 0..n {
            let (input, compressed) = sync_channel::<io::Result<(usize, Vec<u8>)>>(0);
            let (tx, rx) = sync_channel(0);
            let (seekable, spare) = (self.seekable.clone(), self.spare.clone());
            std::thread::Builder::new().name(format!("ckpt-unzstd-{k}")).spawn(move || {
                let mut decoder = match Decompressor::new() {
                    Ok(decoder) => decoder,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                for frame in compressed {
                    let mut out = spare.lock().ok().and_then(|mut s| s.pop()).unwrap_or_default();
                    let frame = frame.and_then(|(i, src)| {
                        let decoded = seekable.decode_frame(i, &src, &mut out, &mut decoder).map(|()| out);
                        if let Ok(mut spare) = spare.lock() {
                            spare.push(src);
                        }
                        decoded
                    });
                    let failed = frame.is_err();
                    // The reader stopped (done, or failed elsewhere): so do we.
                    if tx.send(frame).is_err() || failed {
                        break;
                    }
                }
            })?;
            workers.push(rx);
            inputs.push(input);
        }
        let (seekable, order, spare) = (self.seekable.clone(), self.order.clone(), self.spare.clone());
        std::thread::Builder::new().name("ckpt-unzstd-read".into()).spawn(move || {
            for (j, &i) in order.iter().enumerate() {
                let mut src = spare.lock().ok().and_then(|mut s| s.pop()).unwrap_or_default();
                let frame = seekable.read_frame(i, &mut src).map(|()| (i, src));
                let failed = frame.is_err();
                if inputs[j % n].send(frame).is_err() || failed {
                    break;
                }
            }
        })?;
        self.workers = Some(workers);
        Ok(())
    }

    fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.next == self.order.len() {
            return Ok(None);
        }
        if self.jobs > 1 && self.workers.is_none() {
            self.start()?;
        }
        let done = std::mem::take(&mut self.current);
        self.at = 0;
        let frame = match &self.workers {
            Some(workers) => {
                if let Ok(mut spare) = self.spare.lock() {
                    spare.push(done);
                }
                workers[self.next % workers.len()]
                    .recv()
                    .map_err(|_| io::Error::other("a zstd decoding thread ended early"))?
            }
            None => {
                let mut out = done;
                let i = self.order[self.next];
                let decoder = match &mut self.decoder {
                    Some(decoder) => decoder,
                    None => self.decoder.insert(Decompressor::new()?),
                };
                self.seekable.decode_into(i, &mut self.src, &mut out, decoder).map(|()| out)
            }
        };
        self.next += 1;
        frame.map(Some)
    }
}

impl Read for FrameReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.next_frame()? {
                Some(frame) => (self.current, self.at) = (frame, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Threads that decode a seekable archive when nobody says: `CKPT_JOBS`, else the cores up
/// to 4 (decoding outruns the writes that follow it well before that).
pub(crate) fn default_jobs() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match std::env::var("CKPT_JOBS") {
        Ok(value) => match value.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => {
                log::warn!(
                    "CKPT_JOBS={value:?} is not a number of threads (1 or more): using {}",
                    cores.min(4)
                );
                cores.min(4)
            }
        },
        Err(_) => cores.min(4),
    }
}
