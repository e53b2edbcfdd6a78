//! `ckpt list`: every member with its data offset and alignment, from the headers only.
//! Its own file because listing needs nothing of verify (no hashing, no end-of-archive
//! judgement): it is the reader's view of an archive, shaped for people and programs.

use std::path::Path;

use serde::{Serialize, Serializer};

use crate::container::podman::NestedArchives;
use crate::error::Result;
use crate::tar::archive::{self, Opened};
use crate::tar::meta::Kind;
use crate::tar::reader::{Entry, Reader};

/// One archive member as `ckpt list` shows it. It serializes to the object `ckpt list
/// --json` prints: names as (lossy) UTF-8 strings, the mode as an octal string.
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry {
    /// The member's name; nested members carry the outer member's name and a `/` in front
    /// (`rootfs-diff.tar/etc/hosts`).
    #[serde(serialize_with = "lossy")]
    pub name: Vec<u8>,
    /// The outer member (`rootfs-diff.tar`) a nested member belongs to.
    #[serde(serialize_with = "lossy_some", skip_serializing_if = "Option::is_none")]
    pub nested_in: Option<Vec<u8>>,
    /// The header's type flag (`0`, `5`, `x`, ...).
    #[serde(serialize_with = "one_char")]
    pub typeflag: u8,
    /// `file`, `dir`, `symlink`, `hardlink`, `char`, `block`, `fifo` or `other`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Permission bits with setuid, setgid and sticky (serialized as 4 octal digits).
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    /// The owner's user ID.
    pub uid: u64,
    /// The owner's group ID.
    pub gid: u64,
    /// The size of the member's data as stored in the archive.
    pub size: u64,
    /// The size of the file it restores: a sparse member's full length, holes included
    /// (what `tar -tv` shows), else `size`.
    pub file_size: u64,
    /// Modification time: seconds since the epoch.
    pub mtime: i64,
    /// And nanoseconds (pax times keep them).
    pub mtime_nsec: u32,
    /// Device numbers, for character and block devices only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_major: Option<u32>,
    /// The device's minor number, with `dev_major`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_minor: Option<u32>,
    /// A symlink's target or a hardlink's first name.
    #[serde(serialize_with = "lossy_some", skip_serializing_if = "Option::is_none")]
    pub link: Option<Vec<u8>>,
    /// Where the member's first header (pax header included) starts.
    pub header_offset: u64,
    /// Where its data starts, in the (uncompressed) archive.
    pub data_offset: u64,
    /// For regular files with data: whether the data starts on the alignment boundary.
    pub aligned: Option<bool>,
    /// Extended attribute names.
    #[serde(serialize_with = "lossy_all")]
    pub xattrs: Vec<Vec<u8>>,
}

impl ListEntry {
    /// `entry` as listed; `prefix` is the outer member's name for a nested member.
    fn new(entry: &Entry, prefix: Option<&[u8]>, align: u64) -> Self {
        let (kind, link) = match &entry.kind {
            Some(Kind::Regular) => ("file", None),
            Some(Kind::Directory) => ("dir", None),
            Some(Kind::Symlink(target)) => ("symlink", Some(target.clone())),
            Some(Kind::HardLink(target)) => ("hardlink", Some(target.clone())),
            Some(Kind::CharDevice) => ("char", None),
            Some(Kind::BlockDevice) => ("block", None),
            Some(Kind::Fifo) => ("fifo", None),
            None => ("other", None),
        };
        let name = match prefix {
            Some(outer) => [outer, b"/", &entry.name].concat(),
            None => entry.name.clone(),
        };
        let device = matches!(entry.kind, Some(Kind::CharDevice | Kind::BlockDevice));
        let has_data = entry.kind == Some(Kind::Regular) && entry.size > 0;
        ListEntry {
            name,
            nested_in: prefix.map(<[u8]>::to_vec),
            typeflag: entry.typeflag,
            kind,
            mode: entry.meta.mode,
            uid: entry.meta.uid,
            gid: entry.meta.gid,
            size: entry.size,
            file_size: entry.sparse.as_ref().map_or(entry.size, |map| map.real_size),
            mtime: entry.meta.mtime,
            mtime_nsec: entry.meta.mtime_nsec,
            dev_major: device.then_some(entry.meta.dev_major),
            dev_minor: device.then_some(entry.meta.dev_minor),
            link,
            header_offset: entry.header_offset,
            data_offset: entry.data_offset,
            aligned: has_data.then_some(entry.data_offset.is_multiple_of(align)),
            xattrs: entry.xattrs.iter().map(|(name, _)| name.clone()).collect(),
        }
    }
}

fn lossy<S: Serializer>(bytes: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

/// For the optional names, which are left out when `None`.
fn lossy_some<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match bytes {
        Some(bytes) => lossy(bytes, s),
        None => s.serialize_none(),
    }
}

fn lossy_all<S: Serializer>(names: &[Vec<u8>], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(names.iter().map(|name| String::from_utf8_lossy(name)))
}

fn one_char<S: Serializer>(typeflag: &u8, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_char(char::from(*typeflag))
}

fn octal<S: Serializer>(mode: &u32, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}

/// What `list` reports.
#[derive(Debug, Clone, Copy)]
pub struct ListOptions {
    /// Also list the members of the nested archives: `rootfs-diff.tar` and a checkpoint's
    /// `volumes/NAME.tar`.
    pub nested: bool,
    /// The boundary `aligned` is measured against.
    pub align: u64,
}

impl Default for ListOptions {
    fn default() -> Self {
        ListOptions { nested: false, align: crate::tar::DEFAULT_ALIGN }
    }
}

/// Calls `each` for every member of `archive` (`-` for standard input; gzip and zstd are
/// detected), reading headers only: the data of a plain file is skipped by offset, and of a
/// seekable zstd archive (ckpt's `--compress zstd`) only the index at its end is read.
pub fn list(
    archive: &Path,
    options: &ListOptions,
    each: &mut dyn FnMut(&ListEntry) -> Result<()>,
) -> Result<()> {
    let mut opened = archive::open(archive)?;
    if let Opened::Stream(stream) = &opened
        && let Some(seekable) = stream.seekable()
    {
        let seekable = seekable.clone();
        return list_members(&mut Reader::from_index(seekable.regions(), archive), options, each);
    }
    list_members(&mut Reader::open(&mut opened, archive), options, each)?;
    match &mut opened {
        Opened::Stream(stream) => stream.finish(archive),
        Opened::File(..) => Ok(()),
    }
}

fn list_members(
    reader: &mut Reader<'_>,
    options: &ListOptions,
    each: &mut dyn FnMut(&ListEntry) -> Result<()>,
) -> Result<()> {
    let mut nested_archives = NestedArchives::default();
    while let Some(entry) = reader.next_entry()? {
        each(&ListEntry::new(&entry, None, options.align))?;
        if !(nested_archives.is_nested(&entry) && options.nested) {
            continue;
        }
        let mut inner = reader.nested(&entry);
        while let Some(member) = inner.next_entry()? {
            each(&ListEntry::new(&member, Some(&entry.name), options.align))?;
        }
    }
    Ok(())
}
