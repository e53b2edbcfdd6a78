//! The archive reader: walks the headers of a tar archive (ustar, pax, GNU, v7), from a file
//! (headers read in place, data left where it is so it can be cloned) or from a stream.
//! Every header field is validated; nothing is allocated from a size in a header beyond a
//! fixed cap, so hostile input costs bounded memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tar::BLOCK;
use crate::tar::archive::Opened;
use crate::tar::meta::{Kind, Meta};
use crate::tar::pax;

/// Largest pax extended header accepted (xattr values are at most 64 KiB each on Linux).
const MAX_PAX_LEN: u64 = 16 << 20;
/// Most bytes of extended attribute names one file can have on Linux (names NUL-terminated).
const XATTR_LIST_MAX: usize = 64 << 10;
/// Largest GNU long name or long link target accepted.
const MAX_LONG_NAME: u64 = 64 << 10;

/// One member as the archive describes it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Vec<u8>,
    /// None for a type ckpt cannot restore (e.g. GNU volume labels); `typeflag` says which.
    pub kind: Option<Kind>,
    pub typeflag: u8,
    pub meta: Meta,
    /// Bytes of data stored in the archive.
    pub size: u64,
    /// Where the member's first header (pax or GNU long name included) starts.
    pub header_offset: u64,
    pub data_offset: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For a sparse member (GNU or pax sparse formats): where its stored fragments go.
    pub sparse: Option<SparseMap>,
}

/// The layout of a sparse member: its data in the archive is `fragments`' bytes, one after
/// the other; each goes at its offset in a file of `real_size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseMap {
    pub fragments: Vec<(u64, u64)>,
    pub real_size: u64,
}

/// Most fragments a sparse map may list (memory stays bounded on hostile input).
const MAX_FRAGMENTS: usize = 1 << 20;

impl Entry {
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

enum Input<'a> {
    /// Positional reads of an open file between two offsets.
    File {
        file: &'a File,
        end: u64,
    },
    Stream(Box<dyn Read + 'a>),
}

pub struct Reader<'a> {
    input: Input<'a>,
    archive: PathBuf,
    pos: u64,
    next_header: u64,
    data_left: u64,
    /// What global pax headers said so far, resolved once rather than per member.
    globals: PaxFields,
    done: bool,
    /// Read-ahead for headers in a file: consecutive small members need one read, not three
    /// per member.
    ahead: Vec<u8>,
    ahead_at: u64,
    /// Name and header offset of the member whose data comes next, for error messages.
    current: Option<(Vec<u8>, u64)>,
}

/// How much a file reader reads ahead for headers.
const READ_AHEAD: usize = 64 << 10;

/// Fields a pax or GNU extension header sets for the next member.
#[derive(Default)]
struct Pending {
    fields: PaxFields,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    start: Option<u64>,
}

impl<'a> Reader<'a> {
    /// Reads the archive stored in `file` between offsets `start` and `end`.
    pub fn from_file(file: &'a File, start: u64, end: u64, archive: &Path) -> Reader<'a> {
        Reader::new(Input::File { file, end }, start, archive)
    }

    pub fn from_stream(stream: impl Read + 'a, archive: &Path) -> Reader<'a> {
        Reader::new(Input::Stream(Box::new(stream)), 0, archive)
    }

    /// Reads an opened archive: in place when it is a plain file, else front to back.
    pub fn open(opened: &'a mut Opened, archive: &Path) -> Reader<'a> {
        match opened {
            Opened::File(file, len) => Reader::from_file(file, 0, *len, archive),
            Opened::Stream(stream) => Reader::from_stream(stream, archive),
        }
    }

    /// Reads the archive held in the data of `entry`, the member just read: in place when
    /// this archive is a file, else from this stream. Offsets stay those of the outer archive.
    pub fn nested(&mut self, entry: &Entry) -> Reader<'_> {
        let archive = self.archive.clone();
        let end = entry.data_offset.saturating_add(entry.size);
        match self.input {
            Input::File { file, end: outer_end } => {
                Reader::new(Input::File { file, end: end.min(outer_end) }, entry.data_offset, &archive)
            }
            Input::Stream(_) => Reader::new(Input::Stream(Box::new(self)), entry.data_offset, &archive),
        }
    }

    fn new(input: Input<'a>, start: u64, archive: &Path) -> Reader<'a> {
        Reader {
            input,
            archive: archive.to_path_buf(),
            pos: start,
            next_header: start,
            data_left: 0,
            globals: PaxFields::default(),
            done: false,
            ahead: Vec::new(),
            ahead_at: 0,
            current: None,
        }
    }

    /// The file the archive is read from, when its data can be reached by offset.
    pub fn file(&self) -> Option<&'a File> {
        match self.input {
            Input::File { file, .. } => Some(file),
            Input::Stream(_) => None,
        }
    }

    pub fn archive_path(&self) -> &Path {
        &self.archive
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
                None => self.malformed(b"", self.pos, "archive ends in the middle of a member"),
            }
        } else {
            Error::io("read", &self.archive, e)
        }
    }

    /// Reads exactly `buf.len()` bytes at the current position.
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match &mut self.input {
            Input::File { file, end } => {
                let (pos, want) = (self.pos, buf.len() as u64);
                if pos + want > *end {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let cached = |ahead: &Vec<u8>, at: u64| pos >= at && pos + want <= at + ahead.len() as u64;
                if !cached(&self.ahead, self.ahead_at) && buf.len() <= READ_AHEAD {
                    let len = (READ_AHEAD as u64).min(*end - pos) as usize;
                    self.ahead.resize(len, 0);
                    std::os::unix::fs::FileExt::read_exact_at(*file, &mut self.ahead, pos)?;
                    self.ahead_at = pos;
                }
                if cached(&self.ahead, self.ahead_at) {
                    let from = (pos - self.ahead_at) as usize;
                    buf.copy_from_slice(&self.ahead[from..from + buf.len()]);
                } else {
                    std::os::unix::fs::FileExt::read_exact_at(*file, buf, pos)?;
                }
            }
            Input::Stream(stream) => stream.read_exact(buf)?,
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Reads a header block, or None at the physical end of the input. A partial block is
    /// malformed: the error names what the partial header holds.
    fn read_block(&mut self) -> Result<Option<[u8; 512]>> {
        let mut block = [0u8; 512];
        let offset = self.pos;
        let got = match &mut self.input {
            Input::Stream(stream) => {
                let mut got = 0;
                while got < block.len() {
                    match stream.read(&mut block[got..]) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // A decompressor's complaint is about the archive; EIO and the like are not.
                        Err(e) if e.raw_os_error().is_none() => {
                            return Err(self.malformed(b"", offset, format!("cannot read a header: {e}")));
                        }
                        Err(e) => return Err(Error::io("read", &self.archive, e)),
                    }
                }
                self.pos += got as u64;
                got
            }
            Input::File { file, end } => {
                let (file, got) = (*file, end.saturating_sub(offset).min(BLOCK) as usize);
                if got == block.len() {
                    self.read_exact(&mut block).map_err(|e| self.read_error(e))?;
                } else {
                    std::os::unix::fs::FileExt::read_exact_at(file, &mut block[..got], offset)
                        .map_err(|e| self.read_error(e))?;
                }
                got
            }
        };
        match got {
            512 => Ok(Some(block)),
            0 => Ok(None),
            _ => Err(self.malformed(
                &raw_name(&block),
                offset,
                format!("archive ends {got} bytes into a header"),
            )),
        }
    }

    fn skip_to(&mut self, target: u64) -> io::Result<()> {
        if let Input::Stream(stream) = &mut self.input {
            let n = io::copy(&mut stream.by_ref().take(target - self.pos), &mut io::sink())?;
            if n < target - self.pos {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        self.pos = target;
        Ok(())
    }

    /// Reads `len` bytes of extension data (capped by the caller) and skips to the next block.
    fn read_extension(&mut self, len: u64) -> io::Result<Vec<u8>> {
        let mut data = vec![0u8; len as usize];
        self.read_exact(&mut data)?;
        let next = crate::tar::round_up(self.pos, BLOCK);
        self.skip_to(next)?;
        Ok(data)
    }

    /// The next member, or None after the end-of-archive blocks (or the end of the input).
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        let next = self.next_header;
        self.skip_to(next).map_err(|e| self.read_error(e))?;
        self.data_left = 0;
        let previous = self.current.take();
        let mut pending = Pending::default();
        // Bytes of the extended headers (local and global) read for this member.
        let mut pending_len = 0u64;
        loop {
            let offset = self.pos;
            let Some(block) = self.read_block()? else {
                if pending.start.is_some() {
                    return Err(self.malformed(b"", offset, "archive ends after an extended header"));
                }
                // As verify reports it: a tar archive ends with zero blocks, so one without
                // them was cut short (at a member boundary, so no member shows it).
                let reason = match &previous {
                    Some((name, _)) => format!(
                        "truncated: no end-of-archive blocks after member {:?}",
                        String::from_utf8_lossy(name)
                    ),
                    None => "empty: no tar header, not an archive".to_string(),
                };
                return Err(self.malformed(b"", offset, reason));
            };
            if block.iter().all(|&b| b == 0) {
                // The end: two zero blocks (one is tolerated, as GNU tar does).
                self.done = true;
                self.warn_lone_zero_block(offset);
                return Ok(None);
            }
            pending.start.get_or_insert(offset);
            let header = tar::Header::from_byte_slice(&block);
            self.check_checksum(&block, offset)?;
            let typeflag = block[156];
            let size = self.number(&block[124..136], &block, offset, "size")?;
            match typeflag {
                b'x' | b'g' => {
                    if size > MAX_PAX_LEN {
                        return Err(self.malformed(
                            &raw_name(&block),
                            offset,
                            format!("pax header of {size} bytes"),
                        ));
                    }
                    // Many extended headers in a row must not add up to more than one may hold.
                    pending_len += size;
                    if pending_len > MAX_PAX_LEN {
                        return Err(self.malformed(
                            &raw_name(&block),
                            offset,
                            format!("extended headers of more than {MAX_PAX_LEN} bytes"),
                        ));
                    }
                    let data = self.read_extension(size).map_err(|e| self.read_error(e))?;
                    let fields = if typeflag == b'g' { &mut self.globals } else { &mut pending.fields };
                    let parsed = pax::records(&data).try_for_each(|record| {
                        let (key, value) = record?;
                        fields.set(key, value);
                        Ok(())
                    });
                    if typeflag == b'g' {
                        self.globals.limit_global_xattrs();
                    }
                    parsed.map_err(|e: pax::BadRecord| self.malformed(&raw_name(&block), offset, e.0))?;
                }
                b'L' | b'K' => {
                    if size > MAX_LONG_NAME {
                        return Err(self.malformed(
                            &raw_name(&block),
                            offset,
                            format!("GNU long name of {size} bytes"),
                        ));
                    }
                    let mut data = self.read_extension(size).map_err(|e| self.read_error(e))?;
                    if let Some(nul) = data.iter().position(|&b| b == 0) {
                        data.truncate(nul);
                    }
                    if typeflag == b'L' {
                        pending.long_name = Some(data);
                    } else {
                        pending.long_link = Some(data);
                    }
                }
                _ => {
                    let entry = self.finish_entry(header, &block, offset, pending, size)?;
                    self.data_left = entry.size;
                    self.current = Some((entry.name.clone(), entry.header_offset));
                    self.next_header = entry
                        .size
                        .checked_next_multiple_of(BLOCK)
                        .and_then(|len| entry.data_offset.checked_add(len))
                        .filter(|&next| i64::try_from(next).is_ok())
                        .ok_or_else(|| {
                            self.malformed(&entry.name, offset, format!("impossible size {}", entry.size))
                        })?;
                    if let Input::File { end, .. } = self.input
                        && self.next_header > end
                    {
                        return Err(self.malformed(
                            &entry.name,
                            entry.header_offset,
                            format!("member of {} bytes runs past the end of the archive", entry.size),
                        ));
                    }
                    return Ok(Some(entry));
                }
            }
        }
    }

    /// Warns, as GNU tar does, when the zero block at `offset` is not followed by another: what
    /// comes after it is not read. Files only (peeking into a stream would consume it).
    fn warn_lone_zero_block(&self, offset: u64) {
        let Input::File { file, end } = self.input else { return };
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

    fn check_checksum(&self, block: &[u8; 512], offset: u64) -> Result<()> {
        let stored = parse_octal(&block[148..156]);
        let unsigned: u64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| if (148..156).contains(&i) { u64::from(b' ') } else { u64::from(b) })
            .sum();
        let signed: i64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| if (148..156).contains(&i) { i64::from(b' ') } else { i64::from(b as i8) })
            .sum();
        match stored {
            Some(sum) if sum == unsigned || sum as i64 == signed => Ok(()),
            _ => Err(self.malformed(
                &raw_name(block),
                offset,
                "header checksum mismatch (not a tar archive, or corrupt)",
            )),
        }
    }

    fn number(&self, field: &[u8], block: &[u8; 512], offset: u64, what: &str) -> Result<u64> {
        parse_number(field).ok_or_else(|| {
            self.malformed(&raw_name(block), offset, format!("bad number in the {what} field"))
        })
    }

    fn finish_entry(
        &mut self,
        header: &tar::Header,
        block: &[u8; 512],
        offset: u64,
        pending: Pending,
        mut size: u64,
    ) -> Result<Entry> {
        let typeflag = block[156];
        let mut name = match (pending.long_name, header.as_ustar()) {
            (Some(long), _) => long,
            (None, Some(ustar)) => {
                let prefix = cstr(&ustar.prefix);
                let mut name = prefix.to_vec();
                if !name.is_empty() {
                    name.push(b'/');
                }
                name.extend_from_slice(cstr(&ustar.name));
                name
            }
            (None, None) => raw_name(block),
        };
        let mut link = pending.long_link.unwrap_or_else(|| cstr(&block[157..257]).to_vec());
        let (local, global) = (pending.fields, &self.globals);
        if let Some(path) = local.path.as_ref().or(global.path.as_ref()) {
            name = path.clone();
        }
        if let Some(target) = local.linkpath.as_ref().or(global.linkpath.as_ref()) {
            link = target.clone();
        }
        let sparse = local.sparse.over(&global.sparse);
        if let Some(real) = &sparse.name {
            name = real.clone();
        }
        if let Some(reason) = global.bad.as_ref().or(local.bad.as_ref()) {
            return Err(self.malformed(&name, offset, reason.clone()));
        }
        if let Some(n) = local.size.or(global.size) {
            size = n;
        }
        let mode = self.number(&block[100..108], block, offset, "mode")?;
        // Type bits (S_IFMT) are allowed in the field; anything above them is not a mode.
        if mode > 0o177777 {
            return Err(self.malformed(&name, offset, format!("mode {mode:o} is out of range")));
        }
        let mut meta = Meta {
            mode: (mode & 0o7777) as u32,
            uid: self.number(&block[108..116], block, offset, "uid")?,
            gid: self.number(&block[116..124], block, offset, "gid")?,
            mtime: parse_mtime(&block[136..148])
                .ok_or_else(|| self.malformed(&raw_name(block), offset, "bad number in the mtime field"))?,
            mtime_nsec: 0,
            dev_major: 0,
            dev_minor: 0,
        };
        meta.uid = local.uid.or(global.uid).unwrap_or(meta.uid);
        meta.gid = local.gid.or(global.gid).unwrap_or(meta.gid);
        if let Some((secs, nsec)) = local.mtime.or(global.mtime) {
            (meta.mtime, meta.mtime_nsec) = (secs, nsec);
        }
        for (what, id) in [("uid", meta.uid), ("gid", meta.gid)] {
            if !id_in_range(id) {
                return Err(self.malformed(&name, offset, format!("{what} {id} is out of range")));
            }
        }
        if matches!(typeflag, b'3' | b'4') {
            let major = self.number(&block[329..337], block, offset, "devmajor")?;
            let minor = self.number(&block[337..345], block, offset, "devminor")?;
            // What Linux can encode (12-bit major, 20-bit minor): mknod would drop the rest.
            if major > MAX_DEV_MAJOR || minor > MAX_DEV_MINOR {
                return Err(self.malformed(
                    &name,
                    offset,
                    format!("device number {major},{minor} is out of range"),
                ));
            }
            (meta.dev_major, meta.dev_minor) = (major as u32, minor as u32);
        }
        // bsdtar writes every xattr twice: URL-encoded names in SCHILY records, exact names and
        // base64 values in its own, which are the ones to trust.
        let libarchive = local.libarchive_xattrs.over(&global.libarchive_xattrs);
        let schily = local.xattrs.over(&global.xattrs);
        let merged = if libarchive.list.is_empty() { schily } else { libarchive };
        if merged.names_len > XATTR_LIST_MAX {
            return Err(self.malformed(&name, offset, "more extended attributes than Linux can hold"));
        }
        let mut xattrs = merged.list;
        if name.contains(&0) || link.contains(&0) {
            return Err(self.malformed(&name, offset, "name contains a NUL byte"));
        }
        if name.is_empty() {
            return Err(self.malformed(&name, offset, "empty member name"));
        }
        let kind = match typeflag {
            b'0' | b'\0' | b'7' if name.ends_with(b"/") && header.as_ustar().is_none() => {
                Some(Kind::Directory)
            }
            b'0' | b'\0' | b'7' => Some(Kind::Regular),
            b'1' => Some(Kind::HardLink(link)),
            b'2' => Some(Kind::Symlink(link)),
            b'3' => Some(Kind::CharDevice),
            b'4' => Some(Kind::BlockDevice),
            b'5' | b'D' => Some(Kind::Directory),
            b'6' => Some(Kind::Fifo),
            b'S' => Some(Kind::Regular),
            b'M' | b'N' => {
                return Err(self.malformed(&name, offset, "multi-volume archives are not supported"));
            }
            _ => None,
        };
        xattrs.sort();
        let mut sparse_map = None;
        if typeflag == b'S' {
            sparse_map = Some(self.old_gnu_sparse_map(block, &name, offset)?);
        } else if let Some(map) = sparse.map {
            let real_size =
                sparse.real_size.ok_or_else(|| self.malformed(&name, offset, "sparse map without size"))?;
            sparse_map = Some(SparseMap { fragments: map, real_size });
        } else if sparse.major == Some(1) {
            let real_size = sparse
                .real_size
                .ok_or_else(|| self.malformed(&name, offset, "sparse member without size"))?;
            let (fragments, map_len) = self.pax1_sparse_map(&name, offset, size)?;
            size -= map_len;
            sparse_map = Some(SparseMap { fragments, real_size });
        } else if sparse.major.is_some() {
            return Err(self.malformed(&name, offset, "unknown pax sparse format version"));
        }
        if let Some(map) = &sparse_map {
            // Checked: a wrapped sum could match the member's size.
            let stored = map.fragments.iter().try_fold(0u64, |sum, f| sum.checked_add(f.1));
            let fits = i64::try_from(map.real_size).is_ok()
                && map
                    .fragments
                    .iter()
                    .all(|&(at, len)| at.checked_add(len).is_some_and(|end| end <= map.real_size));
            if stored != Some(size) || !fits {
                return Err(self.malformed(&name, offset, "sparse map does not match the member's data"));
            }
        }
        Ok(Entry {
            name,
            kind,
            typeflag,
            meta,
            size,
            header_offset: pending.start.unwrap_or(offset),
            data_offset: self.pos,
            xattrs,
            sparse: sparse_map,
        })
    }

    /// Old GNU sparse ('S'): four map entries in the header, more in extension blocks.
    fn old_gnu_sparse_map(&mut self, block: &[u8; 512], name: &[u8], offset: u64) -> Result<SparseMap> {
        let bad = |this: &Self| this.malformed(name, offset, "bad GNU sparse header");
        let real_size = parse_number(&block[483..495]).ok_or_else(|| bad(self))?;
        let mut fragments = Vec::new();
        let mut entries: Vec<u8> = block[386..482].to_vec();
        let mut extended = block[482] != 0;
        loop {
            for entry in entries.chunks(24) {
                if entry[0] == 0 {
                    continue;
                }
                let at = parse_number(&entry[..12]).ok_or_else(|| bad(self))?;
                let len = parse_number(&entry[12..]).ok_or_else(|| bad(self))?;
                fragments.push((at, len));
            }
            if !extended {
                break;
            }
            if fragments.len() > MAX_FRAGMENTS {
                return Err(self.malformed(name, offset, "sparse map too long"));
            }
            let mut ext = [0u8; 512];
            self.read_exact(&mut ext).map_err(|e| self.read_error(e))?;
            entries = ext[..504].to_vec();
            extended = ext[504] != 0;
        }
        Ok(SparseMap { fragments, real_size })
    }

    /// Pax sparse 1.0: the map is decimal text at the start of the data, padded to a block.
    /// Returns the fragments and the map's length in the archive.
    fn pax1_sparse_map(&mut self, name: &[u8], offset: u64, size: u64) -> Result<(Vec<(u64, u64)>, u64)> {
        let bad = |this: &Self| this.malformed(name, offset, "bad pax sparse map");
        // Only the current line is kept: the map's text may be as long as the member.
        let mut map_len = 0u64;
        let mut line = Vec::new();
        let mut numbers = Vec::new();
        let mut wanted = None;
        while wanted.is_none_or(|n| numbers.len() < n) {
            if map_len + BLOCK > size {
                return Err(bad(self));
            }
            let mut block = [0u8; 512];
            self.read_exact(&mut block).map_err(|e| self.read_error(e))?;
            map_len += BLOCK;
            for &byte in &block {
                if byte != b'\n' {
                    // A decimal u64 has at most 20 digits.
                    if line.len() == 20 {
                        return Err(bad(self));
                    }
                    line.push(byte);
                    continue;
                }
                let n = pax::parse_decimal(&line).ok_or_else(|| bad(self))?;
                line.clear();
                if wanted.is_none() {
                    let count =
                        usize::try_from(n).ok().filter(|&c| c <= MAX_FRAGMENTS).ok_or_else(|| bad(self))?;
                    wanted = Some(1 + 2 * count);
                }
                numbers.push(n);
                if wanted.is_some_and(|w| numbers.len() >= w) {
                    break;
                }
            }
        }
        let fragments = numbers[1..].chunks(2).map(|pair| (pair[0], pair[1])).collect();
        Ok((fragments, map_len))
    }
}

/// Reads the current member's data (streams and files alike).
impl Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(self.data_left.min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let read = match &mut self.input {
            Input::File { file, .. } => {
                std::os::unix::fs::FileExt::read_at(*file, &mut buf[..want], self.pos)
            }
            Input::Stream(stream) => stream.read(&mut buf[..want]),
        };
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
        self.pos += n as u64;
        self.data_left -= n as u64;
        Ok(n)
    }
}

/// The pax records that describe a sparse member.
#[derive(Default, Clone)]
struct SparseRecords {
    major: Option<u64>,
    name: Option<Vec<u8>>,
    real_size: Option<u64>,
    map: Option<Vec<(u64, u64)>>,
}

impl SparseRecords {
    /// These records, with `base`'s where these have none.
    fn over(self, base: &SparseRecords) -> SparseRecords {
        SparseRecords {
            major: self.major.or(base.major),
            name: self.name.or_else(|| base.name.clone()),
            real_size: self.real_size.or(base.real_size),
            map: self.map.or_else(|| base.map.clone()),
        }
    }
}

/// Extended attributes by name, in the order first seen; a later value replaces an earlier
/// one in constant time (a header may hold a million records).
#[derive(Default, Clone)]
struct Xattrs {
    list: Vec<(Vec<u8>, Vec<u8>)>,
    index: HashMap<Vec<u8>, usize>,
    /// Bytes of the names as Linux counts them (each NUL-terminated).
    names_len: usize,
    /// Bytes of names and values.
    bytes: usize,
}

impl Xattrs {
    /// Adds or replaces `name`; false (and nothing stored) when the names would exceed what
    /// Linux can hold on one file.
    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) -> bool {
        if let Some(&i) = self.index.get(&name) {
            self.bytes = self.bytes - self.list[i].1.len() + value.len();
            self.list[i].1 = value;
            return true;
        }
        if self.names_len + name.len() + 1 > XATTR_LIST_MAX {
            return false;
        }
        self.names_len += name.len() + 1;
        self.bytes += name.len() + value.len();
        self.index.insert(name.clone(), self.list.len());
        self.list.push((name, value));
        true
    }

    /// These attributes, with `base`'s that these do not replace.
    fn over(self, base: &Xattrs) -> Xattrs {
        if base.list.is_empty() {
            return self;
        }
        // The common case of global xattrs only: a copy of the list, no index.
        let mut merged = Xattrs { list: base.list.clone(), index: HashMap::new(), ..*base };
        if self.list.is_empty() {
            return merged;
        }
        merged.index = base.index.clone();
        for (name, value) in self.list {
            if !merged.insert(name, value) {
                // Reported by the caller, which sees the total.
                merged.names_len = XATTR_LIST_MAX + 1;
                break;
            }
        }
        merged
    }
}

/// What the pax records of one member's extended headers (or of all global headers so far)
/// say, each record interpreted once, as it is read.
#[derive(Default, Clone)]
struct PaxFields {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    sparse: SparseRecords,
    xattrs: Xattrs,
    libarchive_xattrs: Xattrs,
    /// The first record that is wrong; reported once the member's name is known.
    bad: Option<String>,
}

/// Most bytes of extended attributes global headers may give every member: each member
/// gets a copy, so this bounds the work per member.
const MAX_GLOBAL_XATTRS: usize = 64 << 10;

impl PaxFields {
    /// Takes in one record; later records for the same key replace earlier ones. Keys ckpt
    /// does not use (`comment`, `atime`, `uname`, ...) are dropped.
    fn set(&mut self, key: &[u8], value: &[u8]) {
        match key {
            b"path" => self.path = Some(value.to_vec()),
            b"linkpath" => self.linkpath = Some(value.to_vec()),
            b"size" => self.size = self.decimal(value, "size", |n| i64::try_from(n).is_ok()),
            b"uid" => self.uid = self.decimal(value, "uid", id_in_range),
            b"gid" => self.gid = self.decimal(value, "gid", id_in_range),
            b"mtime" => match pax::parse_time(value) {
                Some(time) => self.mtime = Some(time),
                None => self.fail(format!("bad pax mtime record {}", shown(value))),
            },
            b"GNU.sparse.major" => self.sparse.major = self.decimal(value, "GNU.sparse.major", |_| true),
            b"GNU.sparse.name" => self.sparse.name = Some(value.to_vec()),
            b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                self.sparse.real_size = self.decimal(value, "sparse size", |n| i64::try_from(n).is_ok())
            }
            b"GNU.sparse.map" => match parse_map_list(value) {
                Some(map) => self.sparse.map = Some(map),
                None => self.fail("bad pax sparse map record".into()),
            },
            b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                self.fail("pax sparse format 0.0 is not supported".into())
            }
            _ => {
                if let Some(xattr) = key.strip_prefix(b"SCHILY.xattr.") {
                    if !self.xattrs.insert(unescape_xattr_name(xattr), value.to_vec()) {
                        self.fail("more extended attributes than Linux can hold".into());
                    }
                } else if let Some(xattr) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
                    match percent_decode(xattr).zip(decode_base64(value)) {
                        Some((xattr, value)) => {
                            if !self.libarchive_xattrs.insert(xattr, value) {
                                self.fail("more extended attributes than Linux can hold".into());
                            }
                        }
                        None => self.fail("bad pax LIBARCHIVE.xattr record".into()),
                    }
                }
            }
        }
    }

    fn fail(&mut self, reason: String) {
        self.bad.get_or_insert(reason);
    }

    /// A decimal record value that `fits`; anything else is an error, never a wrap.
    fn decimal(&mut self, value: &[u8], what: &str, fits: impl Fn(u64) -> bool) -> Option<u64> {
        match pax::parse_decimal(value) {
            Some(n) if fits(n) => Some(n),
            Some(n) => {
                self.fail(format!("pax {what} {n} is out of range"));
                None
            }
            None => {
                self.fail(format!("bad pax {what} record {}", shown(value)));
                None
            }
        }
    }

    /// Global headers apply to every member that follows: too many extended attributes there
    /// would be copied to each one.
    fn limit_global_xattrs(&mut self) {
        if self.xattrs.bytes + self.libarchive_xattrs.bytes > MAX_GLOBAL_XATTRS {
            self.xattrs = Xattrs::default();
            self.libarchive_xattrs = Xattrs::default();
            self.fail(format!(
                "global pax headers with more than {MAX_GLOBAL_XATTRS} bytes of extended attributes"
            ));
        }
    }
}

/// Whether a uid or gid can be given to chown: -1 (4294967295) means "leave it unchanged".
fn id_in_range(id: u64) -> bool {
    id < u64::from(u32::MAX)
}

/// Largest device major and minor Linux encodes.
const MAX_DEV_MAJOR: u64 = 0xfff;
const MAX_DEV_MINOR: u64 = 0xfffff;

/// A record value for an error message: quoted, at most 40 bytes of it.
fn shown(value: &[u8]) -> String {
    let cut = &value[..value.len().min(40)];
    let more = if cut.len() < value.len() { "..." } else { "" };
    format!("{:?}{more}", String::from_utf8_lossy(cut))
}

/// `GNU.sparse.map`: `offset,size,offset,size,...`.
fn parse_map_list(value: &[u8]) -> Option<Vec<(u64, u64)>> {
    if value.is_empty() {
        return Some(Vec::new());
    }
    let numbers: Vec<u64> = value.split(|&b| b == b',').map(pax::parse_decimal).collect::<Option<_>>()?;
    if !numbers.len().is_multiple_of(2) || numbers.len() / 2 > MAX_FRAGMENTS {
        return None;
    }
    Some(numbers.chunks(2).map(|p| (p[0], p[1])).collect())
}

/// GNU tar escapes `=` and `%` in xattr names inside pax keywords.
fn unescape_xattr_name(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        let rest = &name[i..];
        if rest.len() >= 3 && rest[0] == b'%' && rest[1..3].eq_ignore_ascii_case(b"3D") {
            out.push(b'=');
            i += 3;
        } else if rest.len() >= 3 && rest[0] == b'%' && &rest[1..3] == b"25" {
            out.push(b'%');
            i += 3;
        } else {
            out.push(name[i]);
            i += 1;
        }
    }
    out
}

/// Decodes `%XX` escapes (libarchive URL-encodes xattr names).
fn percent_decode(name: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        if name[i] == b'%' {
            let hex = std::str::from_utf8(name.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(name[i]);
            i += 1;
        }
    }
    Some(out)
}

fn decode_base64(value: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    // Padding is optional: libarchive leaves it out.
    let unpadded = value.trim_ascii_end();
    let unpadded = &unpadded[..unpadded.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1)];
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(unpadded).ok()
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn raw_name(block: &[u8]) -> Vec<u8> {
    cstr(&block[..100]).to_vec()
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let field = cstr(field);
    let digits: &[u8] = field.trim_ascii();
    if digits.is_empty() {
        return Some(0);
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if (b'0'..=b'7').contains(&d) { n.checked_mul(8)?.checked_add(u64::from(d - b'0')) } else { None }
    })
}

/// An unsigned numeric field: octal, or GNU base-256 (high bit set).
fn parse_number(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 == 0 {
        return parse_octal(field);
    }
    if field[0] == 0xff {
        return None; // negative
    }
    let mut n = u64::from(field[0] & 0x7f);
    for &b in &field[1..] {
        n = n.checked_mul(256)?.checked_add(u64::from(b))?;
    }
    Some(n)
}

/// The mtime field, which base-256 allows to be negative.
fn parse_mtime(field: &[u8]) -> Option<i64> {
    if field[0] == 0xff {
        let mut n: i64 = -1;
        for &b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(i64::from(b))?;
        }
        // Two's complement: the leading 0xff bytes carry the sign.
        return if n < 0 { Some(n) } else { None };
    }
    parse_number(field).and_then(|n| i64::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_records_replace_earlier_ones_in_linear_time() {
        let mut fields = PaxFields::default();
        fields.set(b"path", b"a");
        fields.set(b"SCHILY.xattr.user.x", b"1");
        fields.set(b"path", b"long-name");
        fields.set(b"SCHILY.xattr.user.x", b"22");
        fields.set(b"comment", b"ignored");
        assert_eq!(fields.path.as_deref(), Some(&b"long-name"[..]));
        assert_eq!(fields.xattrs.list, vec![(b"user.x".to_vec(), b"22".to_vec())]);
        assert_eq!((fields.xattrs.names_len, fields.xattrs.bytes), (7, 8));
        // A million replacements of one name (a scan per record took minutes).
        for i in 0..1_000_000 {
            fields.set(b"SCHILY.xattr.user.x", i.to_string().as_bytes());
        }
        assert_eq!(fields.xattrs.list.len(), 1);
        assert!(fields.bad.is_none());
    }

    #[test]
    fn out_of_range_numbers_are_errors_not_wraps() {
        for (key, value) in [
            (&b"uid"[..], &b"4294967296"[..]),
            (b"uid", b"4294967295"),
            (b"gid", b"18446744073709551616"),
            (b"size", b"9223372036854775808"),
            (b"mtime", b"9223372036854775808"),
            (b"uid", b"-1"),
            (b"GNU.sparse.realsize", b"18446744073709551615"),
        ] {
            let mut fields = PaxFields::default();
            fields.set(key, value);
            assert!(fields.bad.is_some(), "{key:?}={value:?}");
            assert!(fields.uid.is_none() && fields.gid.is_none() && fields.size.is_none());
        }
        let mut fields = PaxFields::default();
        fields.set(b"uid", b"4294967294");
        assert_eq!(fields.uid, Some(4_294_967_294));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"  644 \0"), Some(0o644));
        assert_eq!(parse_number(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(parse_number(b"0009\0"), None);
        assert_eq!(parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00]), Some(256));
        assert_eq!(parse_number(&[0xff; 12]), None);
        assert_eq!(parse_mtime(&[0xff; 12]), Some(-1));
        assert_eq!(
            parse_number(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax::parse_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(pax::parse_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(pax::parse_time(b"7"), Some((7, 0)));
        assert_eq!(pax::parse_time(b"1.0000000019"), Some((1, 1)));
        assert_eq!(pax::parse_time(b"x"), None);
        assert_eq!(pax::parse_time(b"1.x"), None);
        let (s, n) = (-3i64, 250_000_000u32);
        assert_eq!(pax::parse_time(pax::format_time(s, n).as_bytes()), Some((s, n)));
    }
}
