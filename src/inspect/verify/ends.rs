//! The end of an archive: two zero blocks after the last member. Judged apart from the walk
//! because a file and a stream reach those blocks differently (by offset, or after the
//! reader has already taken part of them), and both levels (the archive and a nested
//! `rootfs-diff.tar`) end the same way.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use super::Run;
use crate::error::{Context, Result};
use crate::tar::BLOCK;
use crate::tar::seekable::Regions;

/// Yields the blocks after the last member: `None` at the end of the input, a short block
/// when the input ends inside one.
pub(super) type Blocks<'b> = dyn FnMut() -> io::Result<Option<Vec<u8>>> + 'b;

/// Judges what `next` yields after the last member (`last`), whose data ends at `end`;
/// problems name `what` (empty for the archive itself).
pub(super) fn check(
    run: &mut Run<'_>,
    what: &[u8],
    last: Option<&[u8]>,
    end: u64,
    next: &mut Blocks<'_>,
) -> Result<()> {
    let after = match last {
        Some(name) => format!(" after member {:?}", String::from_utf8_lossy(name)),
        None => String::new(),
    };
    for (i, offset) in [end, end + BLOCK].into_iter().enumerate() {
        let reason = match next().at("read", run.archive)? {
            Some(block) if block.len() as u64 == BLOCK && block.iter().all(|&b| b == 0) => continue,
            Some(block) if (block.len() as u64) < BLOCK => {
                format!("truncated: ends in a partial block of {} bytes{after}", block.len())
            }
            // The reader stops at the first zero block; a second one that is not zero is
            // what GNU tar calls a lone zero block.
            Some(_) => "a lone zero block: the second end-of-archive block is not zero".to_string(),
            None if i == 0 => format!("truncated: no end-of-archive blocks{after}"),
            None => format!("truncated: only one of the two end-of-archive blocks{after}"),
        };
        run.report.problem(what, Some(offset), reason);
        break;
    }
    Ok(())
}

/// Blocks of a file between `pos` and `end`.
pub(super) fn file_blocks(
    file: &File,
    mut pos: u64,
    end: u64,
) -> impl FnMut() -> io::Result<Option<Vec<u8>>> {
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

/// Blocks of a seekable archive's index between `pos` and `end`: the end-of-archive blocks
/// are in it; anything else there is not, and reads as an error.
pub(super) fn index_blocks(
    regions: &Regions,
    mut pos: u64,
    end: u64,
) -> impl FnMut() -> io::Result<Option<Vec<u8>>> + '_ {
    move || {
        if pos >= end {
            return Ok(None);
        }
        let len = BLOCK.min(end - pos) as usize;
        let mut block = vec![0u8; len];
        if !regions.read(pos, &mut block) {
            let what = format!("the seekable index holds nothing at tar offset {pos}");
            return Err(io::Error::new(io::ErrorKind::InvalidData, what));
        }
        pos += len as u64;
        Ok(Some(block))
    }
}

/// The blocks after `end` in a stream of which `consumed` bytes were read: the reader has
/// already read the first zero block (or part of one) when it stopped.
pub(super) fn consumed_blocks<R: Read>(
    consumed: u64,
    end: u64,
    stream: &mut R,
) -> impl FnMut() -> io::Result<Option<Vec<u8>>> + '_ {
    let mut seen = consumed.saturating_sub(end);
    move || {
        if seen > 0 {
            let n = seen.min(BLOCK);
            seen -= n;
            // The reader only stops on a block of zeros, or at the end of the input.
            return Ok(Some(vec![0u8; n as usize]));
        }
        let mut block = Vec::with_capacity(BLOCK as usize);
        stream.by_ref().take(BLOCK).read_to_end(&mut block)?;
        Ok(if block.is_empty() { None } else { Some(block) })
    }
}
