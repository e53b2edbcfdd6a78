//! The layout planner: decides where every header and every byte of data goes before anything
//! is written, and encodes the headers.
//!
//! A member whose data must be aligned gets a pax extended header whose `comment` record is
//! sized so that the data that follows the member's ustar header starts on the boundary:
//!
//! ```text
//!  offset  H            H+512                 D-512          D (multiple of align)
//!          | pax header | pax records+comment | ustar header | file data ... | pad to 512 |
//! ```

use std::borrow::Cow;

use crate::export::holes;
use crate::export::member::{Body, Member};
use crate::tar::meta::{Kind, Meta};
use crate::tar::{BLOCK, must_align, pax, round_up};

/// Largest value that fits an 8-byte octal header field (uid, gid, mode).
const MAX_OCTAL_8: u64 = 0o7777777;
/// Largest value that fits a 12-byte octal header field (size, mtime).
const MAX_OCTAL_12: u64 = 0o77777777777;

/// A member with its place in the archive. Offsets are relative to the archive's start, which
/// must itself sit on an aligned offset (true for a file, and for a nested archive, whose data
/// is aligned).
#[derive(Debug)]
pub(crate) struct Placed {
    pub member: Member,
    pub header_offset: u64,
    /// Length of the pax extended header's data, padding record included; 0 when the member
    /// has no extended header.
    pub pax_len: u64,
    /// Length of the `comment` padding record (0 for none).
    pub padding: usize,
    pub data_offset: u64,
}

impl Placed {
    pub(crate) fn data_end(&self) -> u64 {
        self.data_offset + self.member.data_size()
    }
}

/// Lays out members one after another, in the order given, with data aligned to `align`.
#[derive(Debug)]
pub(crate) struct Planner {
    align: u64,
    /// Where the next member's headers go.
    offset: u64,
}

impl Planner {
    /// `align` is a power of two of at least 512.
    pub(crate) fn new(align: u64) -> Planner {
        assert!(align.is_power_of_two() && align >= BLOCK);
        Planner { align, offset: 0 }
    }

    pub(crate) fn place(&mut self, member: Member) -> Placed {
        let records = pax_records(&member).len();
        let aligned = needs_alignment(&member, self.align);
        // A sparse member's data starts with its map: the fragments after it are aligned.
        let map_len = match &member.body {
            Body::Sparse(_, map) => map.pax1_text().len() as u64,
            _ => 0,
        };
        let (pax_len, padding) = pax_layout(self.offset + map_len, records, aligned, self.align);
        let data_offset =
            self.offset + BLOCK + if pax_len > 0 { BLOCK + round_up(pax_len, BLOCK) } else { 0 };
        let placed = Placed { member, header_offset: self.offset, pax_len, padding, data_offset };
        self.offset = round_up(placed.data_end(), BLOCK);
        placed
    }

    /// Where the two zero blocks that end the archive go.
    pub(crate) fn end(&self) -> u64 {
        self.offset
    }

    /// The archive's length so far, end blocks included.
    pub(crate) fn len(&self) -> u64 {
        self.offset + 2 * BLOCK
    }
}

fn needs_alignment(member: &Member, align: u64) -> bool {
    align > BLOCK
        && match &member.body {
            Body::File(f) => must_align(f.size, align),
            Body::Sparse(_, map) => must_align(map.data_len(), align),
            Body::Archive(_) => true,
            _ => false,
        }
}

/// Chooses the length of the pax data (0: no extended header) and of its padding record, for
/// a member whose header starts at `start` and whose required records take `records` bytes.
fn pax_layout(start: u64, records: usize, aligned: bool, align: u64) -> (u64, usize) {
    if !aligned {
        return (records as u64, 0);
    }
    if records == 0 && (start + BLOCK).is_multiple_of(align) {
        return (0, 0);
    }
    // Each extra block of pax data moves the data by 512 bytes, so within align/512 steps the
    // data lands on the boundary; the padding must then be empty or hold a whole record.
    let mut blocks = (records as u64).div_ceil(BLOCK).max(1);
    loop {
        let data = start + BLOCK + blocks * BLOCK + BLOCK;
        let padding = (blocks * BLOCK) as usize - records;
        if data.is_multiple_of(align) && (padding == 0 || padding >= pax::MIN_PADDING) {
            return (blocks * BLOCK, padding);
        }
        blocks += 1;
    }
}

/// The header blocks of a placed member: the pax extended header (if any) and the ustar header.
pub(crate) fn encode_headers(placed: &Placed) -> Vec<u8> {
    let member = &placed.member;
    let mut out = Vec::with_capacity((placed.data_offset - placed.header_offset) as usize);
    if placed.pax_len > 0 {
        let mut records = pax_records(member);
        if placed.padding > 0 {
            pax::push_padding(&mut records, placed.padding);
        }
        debug_assert_eq!(records.len() as u64, placed.pax_len);
        let mut header = tar::Header::new_ustar();
        set_name_field(&mut header, b"././@PaxHeader");
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(records.len() as u64);
        header.set_mtime(member.meta.mtime.clamp(0, MAX_OCTAL_12 as i64) as u64);
        header.set_entry_type(tar::EntryType::XHeader);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&records);
        out.resize(round_up(out.len() as u64, BLOCK) as usize, 0);
    }
    out.extend_from_slice(ustar_header(member).as_bytes());
    debug_assert_eq!(out.len() as u64, placed.data_offset - placed.header_offset);
    out
}

/// The name in the member's ustar header (or `path` record): a sparse member's stand-in.
fn header_name(member: &Member) -> Cow<'_, [u8]> {
    match &member.body {
        Body::Sparse(..) => Cow::Owned(holes::stand_in_name(&member.name)),
        _ => Cow::Borrowed(&member.name),
    }
}

/// The pax records a member needs, without padding.
fn pax_records(member: &Member) -> Vec<u8> {
    let mut out = Vec::new();
    let name = header_name(member);
    let path = split_ustar_name(&name).is_none().then_some(&*name);
    let linkpath = match &member.kind {
        Kind::Symlink(target) | Kind::HardLink(target) if target.len() > 100 => Some(&target[..]),
        _ => None,
    };
    let sparse = match &member.body {
        Body::Sparse(_, map) => Some(map),
        _ => None,
    };
    let sparse_name = sparse.map(|_| &member.name[..]);
    // Pax says path records are UTF-8; bsdtar (and GNU tar with a UTF-8 locale) fail to
    // convert other bytes unless told they are binary. First, as it applies to the header.
    if path.into_iter().chain(linkpath).chain(sparse_name).any(|name| std::str::from_utf8(name).is_err()) {
        pax::push_record(&mut out, b"hdrcharset", b"BINARY");
    }
    if let Some(path) = path {
        pax::push_record(&mut out, b"path", path);
    }
    if let Some(target) = linkpath {
        pax::push_record(&mut out, b"linkpath", target);
    }
    // As `tar --sparse --format=posix` writes them; the map is at the start of the data.
    if let Some(map) = sparse {
        pax::push_record(&mut out, b"GNU.sparse.major", b"1");
        pax::push_record(&mut out, b"GNU.sparse.minor", b"0");
        pax::push_record(&mut out, b"GNU.sparse.name", &member.name);
        pax::push_record(&mut out, b"GNU.sparse.realsize", map.real_size.to_string().as_bytes());
    }
    let size = member.data_size();
    if size > MAX_OCTAL_12 {
        pax::push_record(&mut out, b"size", size.to_string().as_bytes());
    }
    let Meta { uid, gid, mtime, mtime_nsec, .. } = member.meta;
    if uid > MAX_OCTAL_8 {
        pax::push_record(&mut out, b"uid", uid.to_string().as_bytes());
    }
    if gid > MAX_OCTAL_8 {
        pax::push_record(&mut out, b"gid", gid.to_string().as_bytes());
    }
    if mtime_nsec != 0 || mtime < 0 || mtime as u64 > MAX_OCTAL_12 {
        pax::push_record(&mut out, b"mtime", pax::format_time(mtime, mtime_nsec).as_bytes());
    }
    for (name, value) in &member.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        // As GNU tar does: `=` would end the keyword, `%` starts an escape.
        for &b in name {
            match b {
                b'=' => key.extend_from_slice(b"%3D"),
                b'%' => key.extend_from_slice(b"%25"),
                b => key.push(b),
            }
        }
        pax::push_record(&mut out, &key, value);
    }
    out
}

/// Splits a name into the ustar prefix and name fields, or None if it does not fit.
fn split_ustar_name(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((&[], name));
    }
    if name.len() > 256 {
        return None;
    }
    // The prefix ends at a slash; the name part must be non-empty and at most 100 bytes.
    let body = name.strip_suffix(b"/").unwrap_or(name);
    (0..body.len().min(156))
        .rev()
        .filter(|&i| body[i] == b'/')
        .map(|i| (&name[..i], &name[i + 1..]))
        .find(|(prefix, rest)| prefix.len() <= 155 && rest.len() <= 100 && !rest.is_empty())
}

fn set_name_field(header: &mut tar::Header, name: &[u8]) {
    let ustar = header.as_ustar_mut().expect("ustar header");
    let n = name.len().min(ustar.name.len());
    ustar.name[..n].copy_from_slice(&name[..n]);
}

fn ustar_header(member: &Member) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    let meta = &member.meta;
    let name = header_name(member);
    match split_ustar_name(&name) {
        Some((prefix, name)) => {
            let ustar = header.as_ustar_mut().expect("ustar header");
            ustar.prefix[..prefix.len()].copy_from_slice(prefix);
            ustar.name[..name.len()].copy_from_slice(name);
        }
        // The pax `path` record holds the real name; readers without pax see a truncation.
        None => set_name_field(&mut header, &name),
    }
    header.set_mode(meta.mode & 0o7777);
    header.set_uid(meta.uid);
    header.set_gid(meta.gid);
    header.set_size(member.data_size());
    header.set_mtime(meta.mtime.clamp(0, MAX_OCTAL_12 as i64) as u64);
    let entry_type = match &member.kind {
        Kind::Regular => tar::EntryType::Regular,
        Kind::Directory => tar::EntryType::Directory,
        Kind::Symlink(_) => tar::EntryType::Symlink,
        Kind::HardLink(_) => tar::EntryType::Link,
        Kind::CharDevice => tar::EntryType::Char,
        Kind::BlockDevice => tar::EntryType::Block,
        Kind::Fifo => tar::EntryType::Fifo,
    };
    header.set_entry_type(entry_type);
    if let Kind::Symlink(target) | Kind::HardLink(target) = &member.kind {
        let ustar = header.as_ustar_mut().expect("ustar header");
        let n = target.len().min(ustar.linkname.len());
        ustar.linkname[..n].copy_from_slice(&target[..n]);
    }
    if matches!(member.kind, Kind::CharDevice | Kind::BlockDevice) {
        // Linux device numbers (12-bit major, 20-bit minor) always fit the 7 octal digits.
        let _ = header.set_device_major(meta.dev_major);
        let _ = header.set_device_minor(meta.dev_minor);
    }
    header.set_cksum();
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::source::SourceFile;

    fn file(name: &[u8], size: u64, xattr_len: usize) -> Member {
        Member {
            name: name.to_vec(),
            meta: Meta { mode: 0o644, mtime: 1_700_000_000, mtime_nsec: 5, ..Meta::default() },
            kind: Kind::Regular,
            body: Body::File(SourceFile {
                path: "x".into(),
                dir: std::sync::Arc::new(std::fs::File::open(".").unwrap().into()),
                size,
                dev: 1,
                ino: 1,
                mtime: (0, 0),
            }),
            xattrs: if xattr_len > 0 { vec![(b"user.x".to_vec(), vec![b'\n'; xattr_len])] } else { vec![] },
        }
    }

    #[test]
    fn every_phase_and_record_size_aligns() {
        for align in [4096u64, 65536] {
            let mut members = Vec::new();
            for i in 0..300usize {
                let name = format!("./{}", "n".repeat(1 + i % 290));
                members.push(file(name.as_bytes(), align + i as u64 * 37, (i * 13) % 1500));
                members.push(file(format!("./s{i}").as_bytes(), (i as u64 * 97) % 3000, 0));
            }
            let mut planner = Planner::new(align);
            let mut expected_offset = 0;
            for member in members {
                let placed = planner.place(member);
                assert_eq!(placed.header_offset, expected_offset);
                let headers = encode_headers(&placed);
                assert_eq!(headers.len() as u64, placed.data_offset - placed.header_offset);
                if placed.member.data_size() >= align {
                    assert_eq!(placed.data_offset % align, 0);
                }
                expected_offset = round_up(placed.data_end(), BLOCK);
            }
        }
    }

    #[test]
    fn ustar_name_split() {
        let long = [b"a".repeat(150), b"b".repeat(100)].join(&b'/');
        let (prefix, name) = split_ustar_name(&long).unwrap();
        assert_eq!((prefix.len(), name.len()), (150, 100));
        assert!(split_ustar_name(&b"c".repeat(101)).is_none());
    }

    #[test]
    fn pax_times_before_the_epoch() {
        assert_eq!(pax::format_time(-2, 500_000_000), "-1.500000000");
        assert_eq!(pax::format_time(3, 7), "3.000000007");
        assert_eq!(pax::format_time(-4, 0), "-4");
    }
}
