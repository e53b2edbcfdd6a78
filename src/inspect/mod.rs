//! Looking into archives without restoring them: `list` (every member with its data offset
//! and alignment, headers only; `present` is how a member looks as a line of text) and
//! `verify` (structure, end-of-archive blocks, alignment, and the `ckpt.sha256` digest
//! manifest when the archive carries one).

mod list;
mod present;

pub use list::{ListEntry, ListOptions, list};

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
