//! The archive reader: walks the headers of a tar archive (ustar, pax, GNU, v7), from a file
//! (headers read in place, data left where it is so it can be cloned) or from a stream, and
//! turns each member's headers into one `Entry`. Every header field is validated; nothing is
//! allocated from a size in a header beyond a fixed cap, so hostile input costs bounded
//! memory.
//!
//! The jobs it builds on each have their own file: `input` (where the bytes come from),
//! `header` (one header block's fields), `extensions` (pax records, GNU long names) and
//! `sparse` (sparse maps). This file decides what a sequence of headers means and names the
//! archive, member and offset in every error.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tar::BLOCK;
use crate::tar::archive::Opened;
use crate::tar::compress;
use crate::tar::extensions::{self, Extended, PaxFields, Pending};
use crate::tar::header::{BadField, Header, id_in_range};
use crate::tar::input::{BlockError, Input};
use crate::tar::meta::{Kind, Meta};
use crate::tar::seekable::Regions;
pub(crate) use crate::tar::sparse::SparseMap;
use crate::tar::sparse::{self, SparseError};

/// One member as the archive describes it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) name: Vec<u8>,
    /// None for a type ckpt cannot restore (e.g. GNU volume labels); `typeflag` says which.
    pub(crate) kind: Option<Kind>,
    pub(crate) typeflag: u8,
    pub(crate) meta: Meta,
    /// Bytes of data stored in the archive.
    pub(crate) size: u64,
    /// Where the member's first header (pax or GNU long name included) starts.
    pub(crate) header_offset: u64,
    pub(crate) data_offset: u64,
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For a sparse member (GNU or pax sparse formats): where its stored fragments go.
    pub(crate) sparse: Option<SparseMap>,
}

impl Entry {
    pub(crate) fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

pub(crate) struct Reader<'a> {
    input: Input<'a>,
    archive: PathBuf,
    next_header: u64,
    data_left: u64,
    /// What global pax headers said so far, resolved once rather than per member.
    globals: PaxFields,
    done: bool,
    /// Name and header offset of the member whose data comes next, for error messages.
    current: Option<(Vec<u8>, u64)>,
}

impl<'a> Reader<'a> {
    /// Reads the archive stored in `file` between offsets `start` and `end`.
    pub(crate) fn from_file(file: &'a File, start: u64, end: u64, archive: &Path) -> Reader<'a> {
        Reader::new(Input::file(file, start, end), archive)
    }

    /// Reads the headers a seekable archive's index holds; member data cannot be read.
    pub(crate) fn from_index(regions: &'a Regions, archive: &Path) -> Reader<'a> {
        Reader::new(Input::index(regions, 0, regions.tar_len), archive)
    }

    pub(crate) fn from_stream(stream: impl Read + 'a, archive: &Path) -> Reader<'a> {
        Reader::new(Input::stream(Box::new(stream), 0), archive)
    }

    /// Reads an opened archive: in place when it is a plain file, else front to back.
    pub(crate) fn open(opened: &'a mut Opened, archive: &Path) -> Reader<'a> {
        match opened {
            Opened::File(file, len) => Reader::from_file(file, 0, *len, archive),
            Opened::Stream(stream) => Reader::from_stream(stream, archive),
        }
    }

    /// Reads the archive held in the data of `entry`, the member just read: in place when
    /// this archive is a file, else from this stream. Offsets stay those of the outer archive.
    pub(crate) fn nested(&mut self, entry: &Entry) -> Reader<'_> {
        let archive = self.archive.clone();
        let end = entry.data_offset.saturating_add(entry.size);
        let input = match (self.input.in_place(), self.input.indexed()) {
            (Some((file, outer_end)), _) => Input::file(file, entry.data_offset, end.min(outer_end)),
            (_, Some((regions, outer_end))) => Input::index(regions, entry.data_offset, end.min(outer_end)),
            (None, None) => Input::stream(Box::new(self), entry.data_offset),
        };
        Reader::new(input, &archive)
    }

    fn new(input: Input<'a>, archive: &Path) -> Reader<'a> {
        Reader {
            next_header: input.pos(),
            input,
            archive: archive.to_path_buf(),
            data_left: 0,
            globals: PaxFields::default(),
            done: false,
            current: None,
        }
    }

    /// The file the archive is read from, when its data can be reached by offset.
    pub(crate) fn file(&self) -> Option<&'a File> {
        self.input.in_place().map(|(file, _)| file)
    }

    pub(crate) fn archive_path(&self) -> &Path {
        &self.archive
    }

    /// Fills `buf` from the current member's data. An archive that ends there or a stream
    /// that does not decode is the archive's fault (`BadArchive`); only an OS error is `Io`.
    pub(crate) fn read_data_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        let read = self.read_exact(buf);
        read.map_err(|e| compress::stream_error(&self.archive, e))
    }

    /// The current member's data, all `size` bytes of it, in memory; errors as for
    /// [`read_data_exact`](Self::read_data_exact).
    pub(crate) fn read_data_to_end(&mut self, size: u64) -> Result<Vec<u8>> {
        let mut data = Vec::with_capacity(size.min(1 << 20) as usize);
        let read = self.by_ref().take(size).read_to_end(&mut data);
        read.map_err(|e| compress::stream_error(&self.archive, e))?;
        Ok(data)
    }

    fn malformed(&self, member: &[u8], offset: u64, reason: impl Into<String>) -> Error {
        Error::Malformed {
            archive: self.archive.clone(),
            member: String::from_utf8_lossy(member).into_owned(),
            offset,
            reason: reason.into(),
        }
    }

    fn read_error(&self, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            match &self.current {
                Some((name, offset)) => {
                    self.malformed(name, *offset, "archive ends in the middle of the member's data")
                }
                None => self.malformed(b"", self.input.pos(), "archive ends in the middle of a member"),
            }
        } else {
            Error::io("read", &self.archive, e)
        }
    }

    /// A header field that cannot be used. A number that is not one is reported under the
    /// header's name field; one out of range under the member's `name`.
    fn bad_field(&self, header: &Header, name: &[u8], offset: u64, bad: BadField) -> Error {
        match bad {
            BadField::Number(what) => {
                self.malformed(&header.raw_name(), offset, format!("bad number in the {what} field"))
            }
            BadField::Range(reason) => self.malformed(name, offset, reason),
        }
    }

    /// Reads a header block, or None at the physical end of the input. A partial block is
    /// malformed: the error names what the partial header holds.
    fn read_block(&mut self) -> Result<Option<Header>> {
        let offset = self.input.pos();
        let (block, got) = self.input.read_block().map_err(|e| match e {
            BlockError::Garbled(e) => self.malformed(b"", offset, format!("cannot read a header: {e}")),
            BlockError::Read(e) => self.read_error(e),
        })?;
        let header = Header::new(block);
        match got {
            512 => Ok(Some(header)),
            0 => Ok(None),
            _ => Err(self.malformed(
                &header.raw_name(),
                offset,
                format!("archive ends {got} bytes into a header"),
            )),
        }
    }

    /// The next member, or None after the end-of-archive blocks (or the end of the input).
    pub(crate) fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        let next = self.next_header;
        self.input.skip_to(next).map_err(|e| self.read_error(e))?;
        self.data_left = 0;
        let previous = self.current.take();
        let mut pending = Pending::default();
        loop {
            let offset = self.input.pos();
            let Some(header) = self.read_block()? else {
                return Err(self.unterminated(&pending, previous.as_ref(), offset));
            };
            if header.is_zero() {
                // The end: two zero blocks (one is tolerated, as GNU tar does).
                self.done = true;
                self.warn_lone_zero_block(offset);
                return Ok(None);
            }
            pending.start.get_or_insert(offset);
            if !header.checksum_matches() {
                let reason = "header checksum mismatch (not a tar archive, or corrupt)";
                return Err(self.malformed(&header.raw_name(), offset, reason));
            }
            let size = header.size().map_err(|bad| self.bad_field(&header, b"", offset, bad))?;
            match header.typeflag() {
                b'x' | b'g' => self.read_pax(&header, offset, size, &mut pending)?,
                b'L' | b'K' => self.read_long_name(&header, offset, size, &mut pending)?,
                _ => return self.start_member(&header, offset, pending, size).map(Some),
            }
        }
    }

    /// The error for an input that ends where a header should be, at `offset`.
    fn unterminated(&self, pending: &Pending, previous: Option<&(Vec<u8>, u64)>, offset: u64) -> Error {
        if pending.start.is_some() {
            return self.malformed(b"", offset, "archive ends after an extended header");
        }
        // As verify reports it: a tar archive ends with zero blocks, so one without
        // them was cut short (at a member boundary, so no member shows it).
        let reason = match previous {
            Some((name, _)) => format!(
                "truncated: no end-of-archive blocks after member {:?}",
                String::from_utf8_lossy(name)
            ),
            None => "empty: no tar header, not an archive".to_string(),
        };
        self.malformed(b"", offset, reason)
    }

    /// Warns, as GNU tar does, when the zero block at `offset` is not followed by another: what
    /// comes after it is not read. Files only (peeking into a stream would consume it).
    fn warn_lone_zero_block(&self, offset: u64) {
        let Some((file, end)) = self.input.in_place() else { return };
        let mut next = [0u8; 512];
        let len = end.saturating_sub(offset + BLOCK).min(BLOCK) as usize;
        if std::os::unix::fs::FileExt::read_exact_at(file, &mut next[..len], offset + BLOCK).is_ok()
            && (len < next.len() || next.iter().any(|&b| b != 0))
        {
            let after = end - offset - BLOCK;
            let what = if after == 0 {
                "the second end-of-archive block is missing".to_string()
            } else {
                format!("the {after} bytes after it are ignored")
            };
            log::warn!("{}: a lone zero block at offset {offset}; {what}", self.archive.display());
        }
    }

    /// A pax header ('x' for the next member, 'g' for all that follow) of `size` bytes.
    fn read_pax(&mut self, header: &Header, offset: u64, size: u64, pending: &mut Pending) -> Result<()> {
        pending.admit_pax(size).map_err(|reason| self.malformed(&header.raw_name(), offset, reason))?;
        let data = self.input.read_extension(size).map_err(|e| self.read_error(e))?;
        let global = header.typeflag() == b'g';
        let fields = if global { &mut self.globals } else { &mut pending.fields };
        fields.read_records(&data, global).map_err(|e| self.malformed(&header.raw_name(), offset, e.0))
    }

    /// A GNU long name ('L') or long link target ('K') of `size` bytes for the next member.
    fn read_long_name(
        &mut self,
        header: &Header,
        offset: u64,
        size: u64,
        pending: &mut Pending,
    ) -> Result<()> {
        extensions::admit_long_name(size)
            .map_err(|reason| self.malformed(&header.raw_name(), offset, reason))?;
        let data = self.input.read_extension(size).map_err(|e| self.read_error(e))?;
        pending.set_long(header.typeflag(), data);
        Ok(())
    }

    /// The member whose header is `header`: its entry, and where its data and the next
    /// header are.
    fn start_member(&mut self, header: &Header, offset: u64, pending: Pending, size: u64) -> Result<Entry> {
        let entry = self.finish_entry(header, offset, pending, size)?;
        self.data_left = entry.size;
        self.current = Some((entry.name.clone(), entry.header_offset));
        self.next_header = entry
            .size
            .checked_next_multiple_of(BLOCK)
            .and_then(|len| entry.data_offset.checked_add(len))
            .filter(|&next| i64::try_from(next).is_ok())
            .ok_or_else(|| self.malformed(&entry.name, offset, format!("impossible size {}", entry.size)))?;
        if let Some((_, end)) = self.input.in_place()
            && self.next_header > end
        {
            return Err(self.malformed(
                &entry.name,
                entry.header_offset,
                format!("member of {} bytes runs past the end of the archive", entry.size),
            ));
        }
        Ok(entry)
    }

    /// The entry `header` and the extension headers before it (`pending`) describe, each
    /// field checked in a fixed order: which error a header with several faults reports is
    /// part of the reader's behaviour.
    fn finish_entry(&mut self, header: &Header, offset: u64, pending: Pending, size: u64) -> Result<Entry> {
        let start = pending.start.unwrap_or(offset);
        let mut ext = pending.resolve(&self.globals);
        let name = ext.name.take().unwrap_or_else(|| header.name());
        let link = ext.link.take().unwrap_or_else(|| header.link());
        if let Some(reason) = &ext.bad {
            return Err(self.malformed(&name, offset, reason.clone()));
        }
        let mut size = ext.size.unwrap_or(size);
        let meta = self.meta(header, &ext, &name, offset)?;
        let xattrs = ext
            .xattrs
            .into_sorted()
            .ok_or_else(|| self.malformed(&name, offset, "more extended attributes than Linux can hold"))?;
        if name.contains(&0) || link.contains(&0) {
            return Err(self.malformed(&name, offset, "name contains a NUL byte"));
        }
        if name.is_empty() {
            return Err(self.malformed(&name, offset, "empty member name"));
        }
        let kind = self.kind(header, &name, link, offset)?;
        let sparse =
            sparse::read_map(header, ext.sparse, &mut self.input, &mut size).map_err(|e| match e {
                SparseError::Bad(reason) => self.malformed(&name, offset, reason),
                SparseError::Read(e) => self.read_error(e),
            })?;
        let data_offset = self.input.pos();
        Ok(Entry {
            name,
            kind,
            typeflag: header.typeflag(),
            meta,
            size,
            header_offset: start,
            data_offset,
            xattrs,
            sparse,
        })
    }

    /// The member's metadata: the header's, replaced by what pax records say.
    fn meta(&self, header: &Header, ext: &Extended, name: &[u8], offset: u64) -> Result<Meta> {
        let bad = |bad| self.bad_field(header, name, offset, bad);
        let mut meta = Meta {
            mode: header.mode().map_err(bad)?,
            uid: header.uid().map_err(bad)?,
            gid: header.gid().map_err(bad)?,
            mtime: header.mtime().map_err(bad)?,
            mtime_nsec: 0,
            dev_major: 0,
            dev_minor: 0,
        };
        meta.uid = ext.uid.unwrap_or(meta.uid);
        meta.gid = ext.gid.unwrap_or(meta.gid);
        if let Some((secs, nsec)) = ext.mtime {
            (meta.mtime, meta.mtime_nsec) = (secs, nsec);
        }
        for (what, id) in [("uid", meta.uid), ("gid", meta.gid)] {
            if !id_in_range(id) {
                return Err(self.malformed(name, offset, format!("{what} {id} is out of range")));
            }
        }
        if matches!(header.typeflag(), b'3' | b'4') {
            (meta.dev_major, meta.dev_minor) = header.device().map_err(bad)?;
        }
        Ok(meta)
    }

    /// What the typeflag makes the member; None for a type ckpt cannot restore.
    fn kind(&self, header: &Header, name: &[u8], link: Vec<u8>, offset: u64) -> Result<Option<Kind>> {
        Ok(match header.typeflag() {
            // Before ustar, a directory was a regular file whose name ends in a slash.
            b'0' | b'\0' | b'7' if name.ends_with(b"/") && !header.is_ustar() => Some(Kind::Directory),
            b'0' | b'\0' | b'7' => Some(Kind::Regular),
            b'1' => Some(Kind::HardLink(link)),
            b'2' => Some(Kind::Symlink(link)),
            b'3' => Some(Kind::CharDevice),
            b'4' => Some(Kind::BlockDevice),
            b'5' | b'D' => Some(Kind::Directory),
            b'6' => Some(Kind::Fifo),
            b'S' => Some(Kind::Regular),
            b'M' | b'N' => {
                return Err(self.malformed(name, offset, "multi-volume archives are not supported"));
            }
            _ => None,
        })
    }
}

/// Reads the current member's data (streams and files alike).
impl Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(self.data_left.min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let read = self.input.read_data(&mut buf[..want]);
        // Errors name the member (a decompressor's "incomplete frame" would not).
        let member = || {
            let (name, offset) = self.current.clone().unwrap_or_default();
            (String::from_utf8_lossy(&name).into_owned(), offset)
        };
        let n = match read {
            Ok(0) => {
                let (name, offset) = member();
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "archive ends in the middle of the data of member {name:?} (header at offset {offset})"
                    ),
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted || e.raw_os_error().is_some() => return Err(e),
            Err(e) => {
                let (name, offset) = member();
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e}, in the data of member {name:?} (header at offset {offset})"),
                ));
            }
        };
        self.data_left -= n as u64;
        Ok(n)
    }
}
