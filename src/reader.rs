//! The archive reader: walks the headers of a tar archive (ustar, pax, GNU, v7), from a file
//! (headers read in place, data left where it is so it can be cloned) or from a stream.
//! Every header field is validated; nothing is allocated from a size in a header beyond a
//! fixed cap, so hostile input costs bounded memory.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::layout::BLOCK;
use crate::member::{Kind, Meta};
use crate::pax;

/// Largest pax extended header accepted (xattr values are at most 64 KiB each on Linux).
const MAX_PAX_LEN: u64 = 16 << 20;
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
}

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
    globals: Vec<(Vec<u8>, Vec<u8>)>,
    done: bool,
}

/// Fields a pax or GNU extension header sets for the next member.
#[derive(Default)]
struct Pending {
    records: Vec<(Vec<u8>, Vec<u8>)>,
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

    fn new(input: Input<'a>, start: u64, archive: &Path) -> Reader<'a> {
        Reader {
            input,
            archive: archive.to_path_buf(),
            pos: start,
            next_header: start,
            data_left: 0,
            globals: Vec::new(),
            done: false,
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
            self.malformed(b"", self.pos, "archive ends in the middle of a member")
        } else {
            Error::io("read", &self.archive, e)
        }
    }

    /// Reads exactly `buf.len()` bytes at the current position.
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match &mut self.input {
            Input::File { file, end } => {
                if self.pos + buf.len() as u64 > *end {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                std::os::unix::fs::FileExt::read_exact_at(*file, buf, self.pos)?;
            }
            Input::Stream(stream) => stream.read_exact(buf)?,
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Reads a block, or None at the physical end of the input.
    fn read_block(&mut self) -> io::Result<Option<[u8; 512]>> {
        let mut block = [0u8; 512];
        match self.read_exact(&mut block) {
            Ok(()) => Ok(Some(block)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && self.at_physical_end()? => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn at_physical_end(&mut self) -> io::Result<bool> {
        Ok(match &self.input {
            Input::File { end, .. } => self.pos >= *end,
            // read_exact on a stream gives no count; a partial final block is malformed anyway.
            Input::Stream(_) => true,
        })
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
        let next = crate::layout::round_up(self.pos, BLOCK);
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
        let mut pending = Pending::default();
        loop {
            let offset = self.pos;
            let Some(block) = self.read_block().map_err(|e| self.read_error(e))? else {
                if pending.start.is_some() {
                    return Err(self.malformed(b"", offset, "archive ends after an extended header"));
                }
                self.done = true;
                return Ok(None);
            };
            if block.iter().all(|&b| b == 0) {
                // The end: two zero blocks (one is tolerated, as GNU tar does).
                self.done = true;
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
                    let data = self.read_extension(size).map_err(|e| self.read_error(e))?;
                    let mut records = Vec::new();
                    for record in pax::records(&data) {
                        let (key, value) =
                            record.map_err(|e| self.malformed(&raw_name(&block), offset, e.0))?;
                        records.push((key.to_vec(), value.to_vec()));
                    }
                    if typeflag == b'g' {
                        merge_records(&mut self.globals, records);
                    } else {
                        merge_records(&mut pending.records, records);
                    }
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
                    self.next_header = entry
                        .data_offset
                        .checked_add(crate::layout::round_up(entry.size, BLOCK))
                        .ok_or_else(|| self.malformed(&entry.name, offset, "size overflows"))?;
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
        let mode = self.number(&block[100..108], block, offset, "mode")?;
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
        if matches!(typeflag, b'3' | b'4') {
            let major = self.number(&block[329..337], block, offset, "devmajor")?;
            let minor = self.number(&block[337..345], block, offset, "devminor")?;
            meta.dev_major =
                u32::try_from(major).map_err(|_| self.malformed(&name, offset, "device major too large"))?;
            meta.dev_minor =
                u32::try_from(minor).map_err(|_| self.malformed(&name, offset, "device minor too large"))?;
        }
        let mut xattrs = Vec::new();
        let records = self.globals.iter().chain(pending.records.iter());
        for (key, value) in records {
            let bad = |what: &str| self.malformed(&name, offset, format!("bad pax {what} record"));
            match key.as_slice() {
                b"path" => name = value.clone(),
                b"linkpath" => link = value.clone(),
                b"size" => size = parse_decimal(value).ok_or_else(|| bad("size"))?,
                b"uid" => meta.uid = parse_decimal(value).ok_or_else(|| bad("uid"))?,
                b"gid" => meta.gid = parse_decimal(value).ok_or_else(|| bad("gid"))?,
                b"mtime" => {
                    (meta.mtime, meta.mtime_nsec) = parse_pax_time(value).ok_or_else(|| bad("mtime"))?
                }
                b"GNU.sparse.major" | b"GNU.sparse.map" | b"GNU.sparse.size" => {
                    return Err(self.malformed(
                        &name,
                        offset,
                        "sparse members (tar --sparse) are not supported",
                    ));
                }
                _ => {
                    if let Some(xattr) = key.strip_prefix(b"SCHILY.xattr.") {
                        xattrs.retain(|(n, _): &(Vec<u8>, Vec<u8>)| n != xattr);
                        xattrs.push((xattr.to_vec(), value.clone()));
                    }
                }
            }
        }
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
            b'S' => {
                return Err(self.malformed(
                    &name,
                    offset,
                    "GNU sparse members (tar --sparse) are not supported",
                ));
            }
            b'M' | b'N' => {
                return Err(self.malformed(&name, offset, "multi-volume archives are not supported"));
            }
            _ => None,
        };
        xattrs.sort();
        Ok(Entry {
            name,
            kind,
            typeflag,
            meta,
            size,
            header_offset: pending.start.unwrap_or(offset),
            data_offset: self.pos,
            xattrs,
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
        let n = match &mut self.input {
            Input::File { file, .. } => {
                std::os::unix::fs::FileExt::read_at(*file, &mut buf[..want], self.pos)?
            }
            Input::Stream(stream) => stream.read(&mut buf[..want])?,
        };
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        self.data_left -= n as u64;
        Ok(n)
    }
}

/// Later records for the same key replace earlier ones.
fn merge_records(into: &mut Vec<(Vec<u8>, Vec<u8>)>, records: Vec<(Vec<u8>, Vec<u8>)>) {
    for (key, value) in records {
        into.retain(|(k, _)| *k != key);
        into.push((key, value));
    }
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

fn parse_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A pax time: `[-]SECONDS[.FRACTION]`.
fn parse_pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let (negative, value) = match value.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (secs, frac) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &[][..]),
    };
    let secs = i64::try_from(parse_decimal(secs)?).ok()?;
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut nsec = 0u32;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    if negative && nsec > 0 {
        Some((-secs - 1, 1_000_000_000 - nsec))
    } else if negative {
        Some((-secs, 0))
    } else {
        Some((secs, nsec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"7"), Some((7, 0)));
        assert_eq!(parse_pax_time(b"1.0000000019"), Some((1, 1)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
        let (s, n) = (-3i64, 250_000_000u32);
        assert_eq!(parse_pax_time(crate::layout::format_pax_time(s, n).as_bytes()), Some((s, n)));
    }
}
