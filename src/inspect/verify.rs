//! `ckpt verify`: the archive's structure (every header and its checksum, no member past the
//! end, the end-of-archive blocks of the archive and of its nested archives: `rootfs-diff.tar`
//! and each `volumes/NAME.tar`),
//! alignment, and the `ckpt.sha256` digest manifest. Separate from `list` because it judges
//! rather than shows: it reads all data, and a malformed archive is a finding, not an error.
//!
//! A file is walked twice (headers first, then the covered data hashed by offset, so that
//! progress has a total); a stream once, hashing as it passes. Both count members through
//! `Level`; `ends` judges what follows the last member and `digests` the manifest.

mod digests;
mod ends;

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::container::podman::{NestedArchives, bundle_name};
use crate::error::{Context, Error, Result};
use crate::tar::archive::{self, Opened};
use crate::tar::meta::Kind;
use crate::tar::reader::{Entry, Reader};
use crate::tar::seekable::Regions;
use crate::tar::{BLOCK, compress, manifest, must_align, round_up};

use digests::{Covered, MAX_MANIFEST};

/// What a stream's data is read in.
const CHUNK: usize = 1 << 20;

/// Something wrong with the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The member concerned (lossy UTF-8), empty when none is.
    pub member: String,
    /// Where in the archive, when known.
    pub offset: Option<u64>,
    /// What is wrong.
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

/// What `verify` found. It serializes to the object `ckpt verify --json` prints, less the
/// computed `ok`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Members of the archive itself.
    pub members: u64,
    /// Members of the nested archives (`rootfs-diff.tar`, `volumes/NAME.tar`).
    pub nested_members: u64,
    /// Regular files with data (at both levels).
    pub files: u64,
    /// Those of at least `align` bytes, and how many of them start on the boundary.
    pub large_files: u64,
    /// Large files whose data starts on the boundary.
    pub aligned_files: u64,
    /// Names of the large files that do not (lossy UTF-8).
    pub unaligned: Vec<String>,
    /// The digest manifest's member name, when the archive has one.
    pub manifest: Option<String>,
    /// Members whose data was hashed and compared with the manifest.
    pub digests_checked: u64,
    /// Bytes of member data hashed.
    pub bytes_hashed: u64,
    /// Length of the (uncompressed) archive read.
    pub archive_bytes: u64,
    /// Every header was read, up to the end-of-archive blocks.
    pub complete: bool,
    /// The alignment checked against.
    pub align: u64,
    /// Wall-clock time of the check.
    pub seconds: f64,
    /// Everything found wrong, in archive order.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether nothing was found wrong.
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
    /// Bytes of the phase done.
    pub done: u64,
    /// Unknown for streams.
    pub total: Option<u64>,
}

/// Checks `archive` (`-` for standard input; gzip and zstd are detected): every header and
/// its checksum, that no member runs past the end, the two zero blocks that end it (and those
/// of the nested `rootfs-diff.tar` and a checkpoint's `volumes/NAME.tar`), and, when its last
/// member is a `ckpt.sha256` manifest, the data of every regular member against it. Alignment to `align` is reported, not required.
/// A compressed archive is decoded to its end, so its checksums are checked too (every frame
/// of a seekable zstd archive, a corrupt one named).
///
/// Problems with the archive are in the report; `Err` is for failures to read it at all.
pub fn verify(archive: &Path, align: u64, progress: &mut dyn FnMut(VerifyProgress)) -> Result<VerifyReport> {
    run_verify(archive, align, false, progress)
}

/// Checks the headers of `archive` as [`verify`] does, but reads no data: the digest
/// manifest is not compared, and of a seekable zstd archive only the index and seek table at
/// its end are read (its frames' checksums are not checked). Other compressed archives and
/// `-` are still read to their end.
pub fn verify_headers(
    archive: &Path,
    align: u64,
    progress: &mut dyn FnMut(VerifyProgress),
) -> Result<VerifyReport> {
    run_verify(archive, align, true, progress)
}

fn run_verify(
    archive: &Path,
    align: u64,
    headers_only: bool,
    progress: &mut dyn FnMut(VerifyProgress),
) -> Result<VerifyReport> {
    let started = Instant::now();
    let mut report = VerifyReport { align, ..VerifyReport::default() };
    let mut run = Run { archive, report: &mut report, progress, headers_only };
    match archive::open(archive)? {
        Opened::File(file, len) => verify_file(&mut run, &file, len)?,
        Opened::Stream(stream) if headers_only && stream.seekable().is_some() => {
            let seekable = stream.seekable().expect("seekable").clone();
            verify_index(&mut run, seekable.regions())?;
        }
        Opened::Stream(stream) => verify_stream(&mut run, stream)?,
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// One verify under way: the archive (named in errors), what was found so far, and whom to
/// tell how far it got.
struct Run<'a> {
    archive: &'a Path,
    report: &'a mut VerifyReport,
    progress: &'a mut dyn FnMut(VerifyProgress),
    /// Headers only: no digests compared (`verify_headers`).
    headers_only: bool,
}

/// One level of the archive as verify walks it, the archive itself or a nested archive
/// (`rootfs-diff.tar`, `volumes/NAME.tar`): where its members count, and what judging its end
/// needs.
struct Level<'n> {
    /// The outer member's name, for a nested level.
    nested_in: Option<&'n [u8]>,
    /// Added to a member's data offset to place it in the archive: a nested stream's reader
    /// counts from the nested archive's start.
    base: u64,
    /// Where the end-of-archive blocks should start: after the last member's data.
    end: u64,
    last: Option<Vec<u8>>,
    /// Every header was read, up to the end-of-archive blocks.
    complete: bool,
}

impl<'n> Level<'n> {
    fn top() -> Self {
        Level { nested_in: None, base: 0, end: 0, last: None, complete: false }
    }

    /// The level inside `outer`, whose reader's offsets start at `start`; `base` as above.
    fn nested(outer: &'n Entry, start: u64, base: u64) -> Self {
        Level { nested_in: Some(&outer.name), base, end: start, last: None, complete: false }
    }

    /// The next member, counted in `report`. `None` at the end, or at a malformed header:
    /// that is a problem (named `rootfs-diff.tar/NAME` inside a nested archive), not an error.
    fn next(&mut self, report: &mut VerifyReport, reader: &mut Reader<'_>) -> Result<Option<Entry>> {
        match reader.next_entry() {
            Ok(Some(entry)) => {
                self.count(report, &entry);
                self.end = entry.data_offset + round_up(entry.size, BLOCK);
                self.last = Some(entry.name.clone());
                Ok(Some(entry))
            }
            Ok(None) => {
                self.complete = true;
                Ok(None)
            }
            Err(Error::Malformed { member, offset, reason, .. }) => {
                report.problem(&self.qualified(member.as_bytes()), Some(offset), reason);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn count(&self, report: &mut VerifyReport, entry: &Entry) {
        if self.nested_in.is_some() {
            report.nested_members += 1;
        } else {
            report.members += 1;
        }
        if entry.kind != Some(Kind::Regular) || entry.size == 0 {
            return;
        }
        report.files += 1;
        if must_align(entry.size, report.align) {
            report.large_files += 1;
            if (self.base + entry.data_offset).is_multiple_of(report.align) {
                report.aligned_files += 1;
            } else {
                let name = self.qualified(&entry.name);
                report.unaligned.push(String::from_utf8_lossy(&name).into_owned());
            }
        }
    }

    fn qualified(&self, name: &[u8]) -> Vec<u8> {
        match self.nested_in {
            Some(outer) => [outer, b"/", name].concat(),
            None => name.to_vec(),
        }
    }

    /// Judges the blocks `next` yields after the last member, when every header was read.
    fn check_end(&self, run: &mut Run<'_>, next: &mut ends::Blocks<'_>) -> Result<()> {
        if !self.complete {
            return Ok(());
        }
        let what = self.nested_in.unwrap_or_default();
        ends::check(run, what, self.last.as_deref(), self.end, next)
    }
}

// ---------------------------------------------------------------------------
// A file: headers first, then the covered data by offset.
// ---------------------------------------------------------------------------

fn verify_file(run: &mut Run<'_>, file: &File, len: u64) -> Result<()> {
    run.report.archive_bytes = len;
    let reader = Reader::from_file(file, 0, len, run.archive);
    let (mut covered, last) = walk_headers(run, reader, Place::File(file), len)?;
    let Some(manifest) = digests::find_manifest(run.report, &mut covered, last.as_deref()) else {
        return Ok(());
    };
    if run.headers_only {
        return Ok(());
    }
    if manifest.size > MAX_MANIFEST {
        digests::too_large(run.report, &manifest);
        return Ok(());
    }
    let mut text = vec![0u8; manifest.size as usize];
    file.read_exact_at(&mut text, manifest.data_offset).at("read", run.archive)?;
    hash_covered(run, file, &mut covered)?;
    digests::compare(run.report, &manifest, &text, &covered);
    Ok(())
}

/// A seekable archive's headers, from its index; no data is read.
fn verify_index(run: &mut Run<'_>, regions: &Regions) -> Result<()> {
    run.report.archive_bytes = regions.tar_len;
    let reader = Reader::from_index(regions, run.archive);
    let (mut covered, last) = walk_headers(run, reader, Place::Index(regions), regions.tar_len)?;
    digests::find_manifest(run.report, &mut covered, last.as_deref());
    Ok(())
}

/// Where the headers `walk_headers` reads are, for reading the blocks after the last member.
#[derive(Clone, Copy)]
enum Place<'a> {
    File(&'a File),
    Index(&'a Regions),
}

impl<'a> Place<'a> {
    fn blocks(self, pos: u64, end: u64) -> Box<ends::Blocks<'a>> {
        match self {
            Place::File(file) => Box::new(ends::file_blocks(file, pos, end)),
            Place::Index(regions) => Box::new(ends::index_blocks(regions, pos, end)),
        }
    }
}

/// Walks the headers, nested ones included; returns the members the manifest should cover
/// and the last member's name.
fn walk_headers(
    run: &mut Run<'_>,
    mut reader: Reader<'_>,
    place: Place<'_>,
    len: u64,
) -> Result<(Vec<Covered>, Option<Vec<u8>>)> {
    let mut level = Level::top();
    let mut covered = Vec::new();
    let mut nested_archives = NestedArchives::default();
    while let Some(entry) = level.next(run.report, &mut reader)? {
        (run.progress)(VerifyProgress { phase: "headers", done: entry.data_offset, total: Some(len) });
        if entry.kind == Some(Kind::Regular) {
            covered.push(Covered::new(&entry));
        }
        if nested_archives.is_nested(&entry) {
            let mut inner = reader.nested(&entry);
            let mut nested = Level::nested(&entry, entry.data_offset, 0);
            while nested.next(run.report, &mut inner)?.is_some() {}
            let inner_end = entry.data_offset.saturating_add(entry.size);
            nested.check_end(run, &mut place.blocks(nested.end, inner_end))?;
        }
    }
    run.report.complete = level.complete;
    level.check_end(run, &mut place.blocks(level.end, len))?;
    Ok((covered, level.last))
}

fn hash_covered(run: &mut Run<'_>, file: &File, covered: &mut [Covered]) -> Result<()> {
    let total: u64 = covered.iter().map(|c| c.size).sum();
    let mut buf = Vec::new();
    let mut done = 0;
    for c in covered {
        let mut hashed = |n| {
            done += n;
            (run.progress)(VerifyProgress { phase: "data", done, total: Some(total) });
        };
        let digest = manifest::hash_range(
            file.as_fd(),
            c.data_offset,
            c.size,
            c.sparse.as_ref(),
            &mut buf,
            &mut hashed,
        );
        c.digest = Some(digest.at("read", run.archive)?);
    }
    run.report.bytes_hashed = done;
    Ok(())
}

// ---------------------------------------------------------------------------
// A stream: one pass, hashing as the data goes by.
// ---------------------------------------------------------------------------

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

/// What a walk over a stream leaves for the manifest check.
struct Streamed {
    level: Level<'static>,
    covered: Vec<Covered>,
    manifest_text: Option<Vec<u8>>,
}

fn verify_stream(run: &mut Run<'_>, stream: Box<compress::Decompressed<'static>>) -> Result<()> {
    let mut tap = Tap { inner: stream, count: 0, hasher: None };
    let Streamed { level, mut covered, manifest_text } = {
        let mut reader = Reader::from_stream(&mut tap, run.archive);
        walk_stream(run, &mut reader)?
    };
    run.report.complete = level.complete;
    let consumed = tap.count;
    level.check_end(run, &mut ends::consumed_blocks(consumed, level.end, &mut tap))?;
    // Whatever follows (tar's record padding) is read so that the size is right.
    io::copy(&mut tap, &mut io::sink()).map_err(|e| compress::stream_error(run.archive, e))?;
    run.report.archive_bytes = tap.count;
    if let Some(problem) = tap.inner.trailer_problem() {
        run.report.problem(b"", None, problem);
    }
    let Some(manifest) = digests::find_manifest(run.report, &mut covered, level.last.as_deref()) else {
        return Ok(());
    };
    match manifest_text {
        Some(text) if text.len() as u64 == manifest.size => {
            digests::compare(run.report, &manifest, &text, &covered)
        }
        _ => digests::too_large(run.report, &manifest),
    }
    Ok(())
}

fn walk_stream(run: &mut Run<'_>, reader: &mut Reader<'_>) -> Result<Streamed> {
    let mut level = Level::top();
    let mut covered = Vec::new();
    let mut manifest_text = None;
    let mut buf = vec![0u8; CHUNK];
    let mut nested_archives = NestedArchives::default();
    while let Some(entry) = level.next(run.report, reader)? {
        (run.progress)(VerifyProgress { phase: "data", done: entry.data_offset, total: None });
        if entry.kind != Some(Kind::Regular) {
            continue;
        }
        let digest = if nested_archives.is_nested(&entry) {
            walk_nested_stream(run, reader, &entry)?
        } else {
            let (digest, text) = hash_stream(run, reader, &entry, &mut buf)?;
            manifest_text = text.or(manifest_text);
            digest
        };
        covered.push(Covered { digest: Some(digest), ..Covered::new(&entry) });
    }
    Ok(Streamed { level, covered, manifest_text })
}

/// Walks a nested archive as it passes, and returns the digest of all of its data.
fn walk_nested_stream(run: &mut Run<'_>, reader: &mut Reader<'_>, entry: &Entry) -> Result<[u8; 32]> {
    let mut tap = Tap { inner: reader, count: 0, hasher: Some(Sha256::new()) };
    let level = {
        let mut inner = Reader::from_stream(&mut tap, run.archive);
        let mut level = Level::nested(entry, 0, entry.data_offset);
        while level.next(run.report, &mut inner)?.is_some() {}
        level
    };
    let consumed = tap.count;
    level.check_end(run, &mut ends::consumed_blocks(consumed, level.end, &mut tap))?;
    io::copy(&mut tap, &mut io::sink()).map_err(|e| read_error(run.archive, entry, e))?;
    Ok(tap.hasher.take().expect("hashing").finalize().into())
}

/// Hashes a member's data as it passes; returns it too when it may be the manifest.
fn hash_stream(
    run: &mut Run<'_>,
    reader: &mut Reader<'_>,
    entry: &Entry,
    buf: &mut [u8],
) -> Result<([u8; 32], Option<Vec<u8>>)> {
    let keep = bundle_name(&entry.name) == manifest::NAME && entry.size <= MAX_MANIFEST;
    let mut text = Vec::new();
    let mut hasher = manifest::ContentHasher::new(entry.sparse.as_ref());
    let mut pos = 0;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(run.archive, entry, e)),
        };
        hasher.update(&buf[..n]);
        if keep {
            text.extend_from_slice(&buf[..n]);
        }
        pos += n as u64;
        run.report.bytes_hashed += n as u64;
        (run.progress)(VerifyProgress { phase: "data", done: entry.data_offset + pos, total: None });
    }
    Ok((hasher.finalize(), keep.then_some(text)))
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
        compress::stream_error(archive, e)
    }
}
