//! Looking into archives without restoring them: `list` (every member with its data offset
//! and alignment, headers only) and `verify` (structure, end-of-archive blocks, alignment,
//! and the `ckpt.sha256` digest manifest when the archive carries one).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::container::podman::{bundle_name, is_rootfs_diff};
use crate::error::{Context, Error, Result};
use crate::tar::archive::{self, Opened};
use crate::tar::compress;
use crate::tar::manifest;
use crate::tar::meta::Kind;
use crate::tar::reader::{Entry, Reader};

const BLOCK: u64 = 512;
/// The digest manifest's name (after `./`, if any): the archive's last member.
/// A manifest larger than this is not one (about 10 million lines).
const MAX_MANIFEST: u64 = 1 << 30;
const CHUNK: usize = 1 << 20;

/// One archive member as `ckpt list` shows it.
#[derive(Debug, Clone)]
pub struct ListEntry {
    /// The member's name; nested members carry the outer member's name and a `/` in front
    /// (`rootfs-diff.tar/etc/hosts`).
    pub name: Vec<u8>,
    /// The outer member (`rootfs-diff.tar`) a nested member belongs to.
    pub nested_in: Option<Vec<u8>>,
    pub typeflag: u8,
    /// `file`, `dir`, `symlink`, `hardlink`, `char`, `block`, `fifo` or `other`.
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// A symlink's target or a hardlink's first name.
    pub link: Option<Vec<u8>>,
    /// Where the member's first header (pax header included) starts.
    pub header_offset: u64,
    /// Where its data starts, in the (uncompressed) archive.
    pub data_offset: u64,
    /// For regular files with data: whether the data starts on the alignment boundary.
    pub aligned: Option<bool>,
    /// Extended attribute names.
    pub xattrs: Vec<Vec<u8>>,
}

impl ListEntry {
    fn new(entry: &Entry, prefix: Option<&[u8]>, data_offset: u64, header_offset: u64, align: u64) -> Self {
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
            mtime: entry.meta.mtime,
            mtime_nsec: entry.meta.mtime_nsec,
            dev_major: entry.meta.dev_major,
            dev_minor: entry.meta.dev_minor,
            link,
            header_offset,
            data_offset,
            aligned: has_data.then_some(data_offset.is_multiple_of(align)),
            xattrs: entry.xattrs.iter().map(|(name, _)| name.clone()).collect(),
        }
    }

    /// `ls -l`-like: type and mode, owner, size, mtime (UTC), data offset, alignment, name.
    ///
    /// ```text
    /// -rw-r--r-- 0/0             5000 2023-11-14 22:13:20 @4096 aligned ./bin/tool
    /// ```
    pub fn text_line(&self) -> String {
        let size = match self.kind {
            "char" | "block" => format!("{},{}", self.dev_major, self.dev_minor),
            _ => self.size.to_string(),
        };
        let aligned = match self.aligned {
            Some(true) => "aligned",
            Some(false) => "unaligned",
            None => "-",
        };
        let mut line = format!(
            "{} {:>11} {:>12} {} @{:<11} {:<9} {}",
            mode_string(self.kind, self.mode),
            format!("{}/{}", self.uid, self.gid),
            size,
            utc_time(self.mtime),
            self.data_offset,
            aligned,
            escape(&self.name)
        );
        match (self.kind, &self.link) {
            ("symlink", Some(target)) => line += &format!(" -> {}", escape(target)),
            ("hardlink", Some(target)) => line += &format!(" link to {}", escape(target)),
            _ => {}
        }
        line
    }

    /// One JSON object: every field, names as (lossy) UTF-8 strings, the mode as an octal
    /// string.
    pub fn json(&self) -> serde_json::Value {
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut v = serde_json::json!({
            "name": lossy(&self.name),
            "type": self.kind,
            "typeflag": (self.typeflag as char).to_string(),
            "mode": format!("{:04o}", self.mode),
            "uid": self.uid,
            "gid": self.gid,
            "size": self.size,
            "mtime": self.mtime,
            "mtime_nsec": self.mtime_nsec,
            "header_offset": self.header_offset,
            "data_offset": self.data_offset,
            "aligned": self.aligned,
            "xattrs": self.xattrs.iter().map(|x| lossy(x)).collect::<Vec<_>>(),
        });
        let map = v.as_object_mut().expect("an object");
        if let Some(link) = &self.link {
            map.insert("link".into(), lossy(link).into());
        }
        if matches!(self.kind, "char" | "block") {
            map.insert("dev_major".into(), self.dev_major.into());
            map.insert("dev_minor".into(), self.dev_minor.into());
        }
        if let Some(outer) = &self.nested_in {
            map.insert("nested_in".into(), lossy(outer).into());
        }
        v
    }
}

/// What `list` reports.
#[derive(Debug, Clone, Copy)]
pub struct ListOptions {
    /// Also list the members of a nested `rootfs-diff.tar`.
    pub nested: bool,
    /// The boundary `aligned` is measured against.
    pub align: u64,
}

impl Default for ListOptions {
    fn default() -> Self {
        ListOptions { nested: false, align: crate::DEFAULT_ALIGN }
    }
}

/// Calls `each` for every member of `archive` (`-` for standard input; gzip and zstd are
/// detected), reading headers only: the data of a plain file is skipped by offset.
pub fn list(
    archive: &Path,
    options: &ListOptions,
    each: &mut dyn FnMut(&ListEntry) -> Result<()>,
) -> Result<()> {
    let mut opened = archive::open(archive)?;
    let mut reader = Reader::open(&mut opened, archive);
    while let Some(entry) = reader.next_entry()? {
        each(&ListEntry::new(&entry, None, entry.data_offset, entry.header_offset, options.align))?;
        if !(options.nested && is_rootfs_diff(&entry)) {
            continue;
        }
        let mut inner = reader.nested(&entry);
        while let Some(member) = inner.next_entry()? {
            let line = ListEntry::new(
                &member,
                Some(&entry.name),
                member.data_offset,
                member.header_offset,
                options.align,
            );
            each(&line)?;
        }
    }
    drop(reader);
    match &mut opened {
        Opened::Stream(stream) => stream.finish(archive),
        Opened::File(..) => Ok(()),
    }
}

/// `-rwsr-xr-x`, with the type letter of `tar tv` (`h` for hardlinks).
fn mode_string(kind: &str, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        "dir" => 'd',
        "symlink" => 'l',
        "hardlink" => 'h',
        "char" => 'c',
        "block" => 'b',
        "fifo" => 'p',
        "file" => '-',
        _ => '?',
    });
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, (bit, set, unset)) in special.into_iter().enumerate() {
        let shift = 6 - 3 * i;
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & bit != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
fn utc_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

/// A name for a line of text: UTF-8 kept, `\` doubled, control characters and invalid bytes
/// as `\n`, `\t` or `\xNN`.
fn escape(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// verify
// ---------------------------------------------------------------------------

/// Something wrong with the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The member concerned (lossy UTF-8), empty when none is.
    pub member: String,
    pub offset: Option<u64>,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.member.is_empty(), self.offset) {
            (false, Some(offset)) => {
                write!(f, "member {:?} at offset {offset}: {}", self.member, self.reason)
            }
            (false, None) => write!(f, "member {:?}: {}", self.member, self.reason),
            (true, Some(offset)) => write!(f, "at offset {offset}: {}", self.reason),
            (true, None) => write!(f, "{}", self.reason),
        }
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Members of the archive itself.
    pub members: u64,
    /// Members of a nested `rootfs-diff.tar`.
    pub nested_members: u64,
    /// Regular files with data (at both levels).
    pub files: u64,
    /// Those of at least `align` bytes, and how many of them start on the boundary.
    pub large_files: u64,
    pub aligned_files: u64,
    /// Names of the large files that do not (lossy UTF-8).
    pub unaligned: Vec<String>,
    /// The digest manifest's member name, when the archive has one.
    pub manifest: Option<String>,
    /// Members whose data was hashed and compared with the manifest.
    pub digests_checked: u64,
    pub bytes_hashed: u64,
    /// Length of the (uncompressed) archive read.
    pub archive_bytes: u64,
    /// Every header was read, up to the end-of-archive blocks.
    pub complete: bool,
    pub align: u64,
    pub seconds: f64,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, member: &[u8], offset: Option<u64>, reason: impl Into<String>) {
        let member = String::from_utf8_lossy(member).into_owned();
        self.problems.push(Problem { member, offset, reason: reason.into() });
    }
}

/// How far `verify` has got.
#[derive(Debug, Clone, Copy)]
pub struct VerifyProgress {
    /// `"headers"` while walking the headers of a file, `"data"` while hashing (or reading a
    /// stream).
    pub phase: &'static str,
    pub done: u64,
    /// Unknown for streams.
    pub total: Option<u64>,
}

/// A regular top-level member whose digest the manifest should hold.
struct Covered {
    name: Vec<u8>,
    data_offset: u64,
    size: u64,
    /// Computed while streaming; computed from the file afterwards otherwise.
    digest: Option<[u8; 32]>,
}

/// Checks `archive` (`-` for standard input; gzip and zstd are detected): every header and
/// its checksum, that no member runs past the end, the two zero blocks that end it (and those
/// of a nested `rootfs-diff.tar`), and, when its last member is a `ckpt.sha256` manifest, the
/// data of every regular member against it. Alignment to `align` is reported, not required.
///
/// Problems with the archive are in the report; `Err` is for failures to read it at all.
pub fn verify(archive: &Path, align: u64, progress: &mut dyn FnMut(VerifyProgress)) -> Result<VerifyReport> {
    let started = Instant::now();
    let mut report = VerifyReport { align, ..VerifyReport::default() };
    match archive::open(archive)? {
        Opened::File(file, len) => verify_file(&file, len, archive, &mut report, progress)?,
        Opened::Stream(stream) => verify_stream(stream, archive, &mut report, progress)?,
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A malformed archive becomes a problem; anything else stays an error.
/// Problems inside a nested archive name the member as `rootfs-diff.tar/NAME`.
fn structural(
    report: &mut VerifyReport,
    result: Result<Option<Entry>>,
    nested_in: Option<&[u8]>,
) -> Result<Option<Entry>> {
    match result {
        Ok(entry) => Ok(entry),
        Err(Error::Malformed { member, offset, reason, .. }) => {
            let name = match nested_in {
                Some(outer) => [outer, b"/", member.as_bytes()].concat(),
                None => member.into_bytes(),
            };
            report.problem(&name, Some(offset), reason);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn note_member(report: &mut VerifyReport, entry: &Entry, prefix: Option<&[u8]>, data_offset: u64) {
    if prefix.is_some() {
        report.nested_members += 1;
    } else {
        report.members += 1;
    }
    if entry.kind != Some(Kind::Regular) || entry.size == 0 {
        return;
    }
    report.files += 1;
    if entry.size >= report.align {
        report.large_files += 1;
        if data_offset.is_multiple_of(report.align) {
            report.aligned_files += 1;
        } else {
            let name = match prefix {
                Some(outer) => [outer, b"/", &entry.name].concat(),
                None => entry.name.clone(),
            };
            report.unaligned.push(String::from_utf8_lossy(&name).into_owned());
        }
    }
}

fn member_end(entry: &Entry) -> u64 {
    entry.data_offset + entry.size.div_ceil(BLOCK) * BLOCK
}

/// Judges what follows the last member: `next` yields the blocks after `end` (None at the
/// end of the input, Some(partial) for a short final block).
fn check_end(
    report: &mut VerifyReport,
    what: &[u8],
    last: Option<&[u8]>,
    end: u64,
    next: &mut dyn FnMut() -> io::Result<Option<Vec<u8>>>,
    archive: &Path,
) -> Result<()> {
    let after = |last: Option<&[u8]>| match last {
        Some(name) => format!(" after member {:?}", String::from_utf8_lossy(name)),
        None => String::new(),
    };
    for (i, offset) in [end, end + BLOCK].into_iter().enumerate() {
        match next().at("read", archive)? {
            Some(block) if block.len() as u64 == BLOCK && block.iter().all(|&b| b == 0) => {}
            Some(block) if (block.len() as u64) < BLOCK => {
                report.problem(
                    what,
                    Some(offset),
                    format!("truncated: ends in a partial block of {} bytes{}", block.len(), after(last)),
                );
                return Ok(());
            }
            Some(_) => {
                // The reader stops at the first zero block; a second one that is not zero
                // is what GNU tar calls a lone zero block.
                report.problem(
                    what,
                    Some(offset),
                    "a lone zero block: the second end-of-archive block is not zero",
                );
                return Ok(());
            }
            None => {
                let reason = if i == 0 {
                    format!("truncated: no end-of-archive blocks{}", after(last))
                } else {
                    format!("truncated: only one of the two end-of-archive blocks{}", after(last))
                };
                report.problem(what, Some(offset), reason);
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Blocks of a file between `pos` and `end`, for check_end.
fn file_blocks(file: &File, mut pos: u64, end: u64) -> impl FnMut() -> io::Result<Option<Vec<u8>>> {
    move || {
        if pos >= end {
            return Ok(None);
        }
        let len = BLOCK.min(end - pos) as usize;
        let mut block = vec![0u8; len];
        file.read_exact_at(&mut block, pos)?;
        pos += len as u64;
        Ok(Some(block))
    }
}

/// Blocks of a stream, for check_end.
fn stream_blocks<R: Read>(stream: &mut R) -> impl FnMut() -> io::Result<Option<Vec<u8>>> + '_ {
    move || {
        let mut block = Vec::with_capacity(BLOCK as usize);
        stream.by_ref().take(BLOCK).read_to_end(&mut block)?;
        Ok(if block.is_empty() { None } else { Some(block) })
    }
}

fn verify_file(
    file: &File,
    len: u64,
    archive: &Path,
    report: &mut VerifyReport,
    progress: &mut dyn FnMut(VerifyProgress),
) -> Result<()> {
    report.archive_bytes = len;
    let mut covered = Vec::new();
    let mut reader = Reader::from_file(file, 0, len, archive);
    let mut end = 0;
    let mut last: Option<Vec<u8>> = None;
    let complete = loop {
        let result = reader.next_entry();
        let failed_before = report.problems.len();
        let Some(entry) = structural(report, result, None)? else {
            break report.problems.len() == failed_before;
        };
        progress(VerifyProgress { phase: "headers", done: entry.data_offset, total: Some(len) });
        note_member(report, &entry, None, entry.data_offset);
        end = member_end(&entry);
        if entry.kind == Some(Kind::Regular) {
            covered.push(Covered {
                name: entry.name.clone(),
                data_offset: entry.data_offset,
                size: entry.size,
                digest: None,
            });
        }
        if is_rootfs_diff(&entry) {
            let inner_end = entry.data_offset.saturating_add(entry.size);
            let mut inner = reader.nested(&entry);
            let mut inner_last: Option<Vec<u8>> = None;
            let mut pos = entry.data_offset;
            let inner_complete = loop {
                let result = inner.next_entry();
                let failed_before = report.problems.len();
                let Some(member) = structural(report, result, Some(&entry.name))? else {
                    break report.problems.len() == failed_before;
                };
                note_member(report, &member, Some(&entry.name), member.data_offset);
                pos = member_end(&member);
                inner_last = Some(member.name);
            };
            if inner_complete {
                let mut blocks = file_blocks(file, pos, inner_end);
                check_end(report, &entry.name, inner_last.as_deref(), pos, &mut blocks, archive)?;
            }
        }
        last = Some(entry.name);
    };
    report.complete = complete;
    if complete {
        let mut blocks = file_blocks(file, end, len);
        check_end(report, b"", last.as_deref(), end, &mut blocks, archive)?;
    }
    let Some(manifest) = take_manifest(&mut covered, last.as_deref()) else {
        misplaced_manifest(report, &covered);
        return Ok(());
    };
    report.manifest = Some(String::from_utf8_lossy(&manifest.name).into_owned());
    if manifest.size > MAX_MANIFEST {
        report.problem(
            &manifest.name,
            Some(manifest.data_offset),
            format!("{} bytes: too large", manifest.size),
        );
        return Ok(());
    }
    let mut text = vec![0u8; manifest.size as usize];
    file.read_exact_at(&mut text, manifest.data_offset).at("read", archive)?;
    let total: u64 = covered.iter().map(|c| c.size).sum();
    let mut buf = Vec::new();
    let mut done = 0;
    for c in &mut covered {
        let mut hashed = |n| {
            done += n;
            progress(VerifyProgress { phase: "data", done, total: Some(total) });
        };
        let digest = manifest::hash_range(file.as_fd(), c.data_offset, c.size, &mut buf, &mut hashed);
        c.digest = Some(digest.at("read", archive)?);
    }
    report.bytes_hashed = done;
    compare(report, &manifest, &text, &covered);
    Ok(())
}

/// Counts (and optionally hashes) what passes through.
struct Tap<R> {
    inner: R,
    count: u64,
    hasher: Option<Sha256>,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

fn verify_stream(
    stream: Box<compress::Decompressed<'static>>,
    archive: &Path,
    report: &mut VerifyReport,
    progress: &mut dyn FnMut(VerifyProgress),
) -> Result<()> {
    let mut tap = Tap { inner: stream, count: 0, hasher: None };
    let mut covered = Vec::new();
    let mut manifest_text = None;
    let mut end = 0;
    let mut last: Option<Vec<u8>> = None;
    let mut buf = vec![0u8; CHUNK];
    let complete = {
        let mut reader = Reader::from_stream(&mut tap, archive);
        let mut pos = 0;
        loop {
            let result = reader.next_entry();
            let failed_before = report.problems.len();
            let Some(entry) = structural(report, result, None)? else {
                break report.problems.len() == failed_before;
            };
            progress(VerifyProgress { phase: "data", done: entry.data_offset, total: None });
            note_member(report, &entry, None, entry.data_offset);
            end = member_end(&entry);
            if entry.kind != Some(Kind::Regular) {
                last = Some(entry.name);
                continue;
            }
            let digest = if is_rootfs_diff(&entry) {
                let mut inner_tap = Tap { inner: &mut reader, count: 0, hasher: Some(Sha256::new()) };
                let mut inner_end = 0;
                let mut inner_last: Option<Vec<u8>> = None;
                let inner_complete = {
                    let mut inner = Reader::from_stream(&mut inner_tap, archive);
                    loop {
                        let result = inner.next_entry();
                        let failed_before = report.problems.len();
                        let Some(member) = structural(report, result, Some(&entry.name))? else {
                            break report.problems.len() == failed_before;
                        };
                        let data_offset = entry.data_offset + member.data_offset;
                        note_member(report, &member, Some(&entry.name), data_offset);
                        inner_end = member_end(&member);
                        inner_last = Some(member.name);
                    }
                };
                if inner_complete {
                    let consumed = inner_tap.count;
                    let mut blocks = consumed_blocks(consumed, inner_end, &mut inner_tap);
                    check_end(report, &entry.name, inner_last.as_deref(), inner_end, &mut blocks, archive)?;
                }
                io::copy(&mut inner_tap, &mut io::sink()).map_err(|e| read_error(archive, &entry, e))?;
                inner_tap.hasher.take().expect("hashing").finalize().into()
            } else {
                let keep = bundle_name(&entry.name) == manifest::NAME && entry.size <= MAX_MANIFEST;
                let mut text = Vec::new();
                let mut hasher = Sha256::new();
                loop {
                    let n = match reader.read(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(read_error(archive, &entry, e)),
                    };
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    if keep {
                        text.extend_from_slice(&buf[..n]);
                    }
                    pos += n as u64;
                    report.bytes_hashed += n as u64;
                    progress(VerifyProgress { phase: "data", done: entry.data_offset + pos, total: None });
                }
                pos = 0;
                if keep {
                    manifest_text = Some(text);
                }
                hasher.finalize().into()
            };
            covered.push(Covered {
                name: entry.name.clone(),
                data_offset: entry.data_offset,
                size: entry.size,
                digest: Some(digest),
            });
            last = Some(entry.name);
        }
    };
    report.complete = complete;
    if complete {
        let consumed = tap.count;
        let mut blocks = consumed_blocks(consumed, end, &mut tap);
        check_end(report, b"", last.as_deref(), end, &mut blocks, archive)?;
    }
    // Whatever follows (tar's record padding) is read so that the size is right.
    io::copy(&mut tap, &mut io::sink()).map_err(|e| compress::stream_error(archive, e))?;
    report.archive_bytes = tap.count;
    let Some(manifest) = take_manifest(&mut covered, last.as_deref()) else {
        misplaced_manifest(report, &covered);
        return Ok(());
    };
    report.manifest = Some(String::from_utf8_lossy(&manifest.name).into_owned());
    match manifest_text {
        Some(text) if text.len() as u64 == manifest.size => compare(report, &manifest, &text, &covered),
        _ => report.problem(
            &manifest.name,
            Some(manifest.data_offset),
            format!("{} bytes: too large", manifest.size),
        ),
    }
    Ok(())
}

fn read_error(archive: &Path, entry: &Entry, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::Malformed {
            archive: archive.to_path_buf(),
            member: entry.name_lossy(),
            offset: entry.header_offset,
            reason: "archive ends in the middle of the member's data".into(),
        }
    } else {
        Error::io("read", archive, e)
    }
}

/// The blocks after `end` in a stream of which `consumed` bytes were read: the reader has
/// already read the first zero block (or part of one) when it stopped.
fn consumed_blocks<R: Read>(
    consumed: u64,
    end: u64,
    stream: &mut R,
) -> impl FnMut() -> io::Result<Option<Vec<u8>>> + '_ {
    let mut seen = consumed.saturating_sub(end);
    let mut rest = stream_blocks(stream);
    move || {
        if seen > 0 {
            let n = seen.min(BLOCK);
            seen -= n;
            // The reader only stops on a block of zeros, or at the end of the input.
            return Ok(Some(vec![0u8; n as usize]));
        }
        rest()
    }
}

/// Removes the manifest (the last member, regular, named `ckpt.sha256`) from `covered`.
fn take_manifest(covered: &mut Vec<Covered>, last: Option<&[u8]>) -> Option<Covered> {
    let last = last?;
    if bundle_name(last) != manifest::NAME {
        return None;
    }
    match covered.last() {
        Some(c) if c.name == last => covered.pop(),
        _ => None,
    }
}

/// A `ckpt.sha256` that is not the last member is not the archive's manifest (members after
/// it would be unchecked): a problem, since whoever wrote it meant its digests to be checked.
fn misplaced_manifest(report: &mut VerifyReport, covered: &[Covered]) {
    if let Some(c) = covered.iter().find(|c| bundle_name(&c.name) == manifest::NAME) {
        report.problem(
            &c.name,
            Some(c.data_offset),
            "ckpt.sha256 is not the last member: digests not checked",
        );
    }
}

fn compare(report: &mut VerifyReport, manifest: &Covered, text: &[u8], covered: &[Covered]) {
    let lines = match manifest::parse(text) {
        Ok(lines) => lines,
        Err(why) => {
            report.problem(
                &manifest.name,
                Some(manifest.data_offset),
                format!("not a sha256sum manifest: {why}"),
            );
            return;
        }
    };
    let mut listed: HashMap<Vec<u8>, VecDeque<[u8; 32]>> = HashMap::new();
    let mut order = Vec::new();
    for (name, hash) in lines {
        if !listed.contains_key(&name) {
            order.push(name.clone());
        }
        listed.entry(name).or_default().push_back(hash);
    }
    for c in covered {
        let digest = c.digest.expect("hashed");
        match listed.get_mut(&c.name).and_then(VecDeque::pop_front) {
            None => report.problem(&c.name, Some(c.data_offset), "not listed in the digest manifest"),
            Some(expected) if expected != digest => report.problem(
                &c.name,
                Some(c.data_offset),
                format!(
                    "sha256 mismatch: data is {}, manifest says {}",
                    manifest::hex(&digest),
                    manifest::hex(&expected)
                ),
            ),
            Some(_) => report.digests_checked += 1,
        }
    }
    for name in order {
        if listed.get(&name).is_some_and(|left| !left.is_empty()) {
            report.problem(
                &name,
                None,
                "listed in the digest manifest but not a regular member of the archive",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(mode_string("file", 0o644), "-rw-r--r--");
        assert_eq!(mode_string("file", 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string("dir", 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string("dir", 0o2740), "drwxr-S---");
        assert_eq!(mode_string("hardlink", 0), "h---------");
    }

    #[test]
    fn times() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00");
        assert_eq!(utc_time(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(utc_time(-1), "1969-12-31 23:59:59");
        assert_eq!(utc_time(4_102_444_800), "2100-01-01 00:00:00");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn escapes() {
        assert_eq!(escape(b"./a b"), "./a b");
        assert_eq!(escape("ünï".as_bytes()), "ünï");
        assert_eq!(escape(b"a\nb\\c\x01\xff"), "a\\nb\\\\c\\x01\\xff");
    }
}
