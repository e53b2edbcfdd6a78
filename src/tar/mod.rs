//! The tar format: reading and validating archives (ustar, pax, GNU, v7), pax records, the
//! compressed wrappings, and the `ckpt.sha256` manifest format. Nothing here knows about
//! files on disk or containers.

pub(crate) mod archive;
pub(crate) mod compress;
mod extensions;
pub(crate) mod frames;
mod header;
mod input;
pub(crate) mod manifest;
pub(crate) mod meta;
pub(crate) mod pax;
pub(crate) mod reader;
pub(crate) mod seekable;
pub(crate) mod sparse;

/// The smallest alignment used by default: the page and block size of every common filesystem.
pub const DEFAULT_ALIGN: u64 = 4096;

/// A tar block: headers, and the padding after each member's data, are whole blocks.
pub(crate) const BLOCK: u64 = 512;

/// `n` rounded up to a multiple of `to`.
pub(crate) fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// ckpt's alignment rule: the data of a regular file of `size` bytes starts on a multiple of
/// `align` when it holds at least one whole aligned block, the part a clone can share (a
/// nested archive's data always does). Export lays archives out by it; verify checks it.
pub(crate) fn must_align(size: u64, align: u64) -> bool {
    size >= align
}
