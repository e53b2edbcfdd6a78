//! Write-behind for filesystems that refuse RWF_DONTCACHE (Btrfs in 6.18): a range just
//! written is handed to writeback at once, and its pages are dropped once it is a few MiB
//! behind the write front, by when writeback has had time to finish, and again further
//! behind for the pages it had not; so writing does not wait for the disk and the cache does
//! not fill (the `dd oflag=nocache` approach).
//! What is still queued when an export or import ends is synced and dropped by [`settle`].
//!
//! `fadvise(DONTNEED)` does both steps: it starts writeback of the range's dirty pages
//! (without waiting) and drops the clean ones. rustix has no `sync_file_range`, and calling
//! it through libc would take `unsafe`.

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Mutex;

use rustix::fs::Advice;

/// How far behind the write front pages are dropped.
const LAG: u64 = 8 << 20;
/// How far behind they are dropped a second time, for those writeback had not finished at
/// the first (then the range leaves the queue).
const LAST: u64 = 4 * LAG;
/// Contiguous writes to one file are merged into ranges of up to this.
const RANGE: u64 = 1 << 20;
/// Most ranges queued: each holds a descriptor (small files make one each).
const MAX_RANGES: usize = 64;

/// A range written but not dropped yet, with its own descriptor of the file.
struct Written {
    file: OwnedFd,
    /// The file's device and inode, to merge writes that continue a range.
    id: (u64, u64),
    offset: u64,
    len: u64,
    /// Dropped once, at [`LAG`].
    dropped: bool,
}

struct Queue {
    ranges: VecDeque<Written>,
    bytes: u64,
}

static QUEUE: Mutex<Queue> = Mutex::new(Queue { ranges: VecDeque::new(), bytes: 0 });

fn queue() -> std::sync::MutexGuard<'static, Queue> {
    QUEUE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Drops the clean pages of `len` bytes at `offset` in `fd`, and starts writing back the
/// dirty ones. Only advice: a failure costs nothing but the pages.
pub(crate) fn drop_pages(fd: BorrowedFd<'_>, offset: u64, len: u64) {
    // A zero length would mean "to the end of the file".
    if let Some(len) = NonZeroU64::new(len) {
        let _ = rustix::fs::fadvise(fd, offset, Some(len), Advice::DontNeed);
    }
}

/// Notes that `len` bytes at `offset` of `fd` were just written through the cache.
pub(crate) fn wrote(fd: BorrowedFd<'_>, offset: u64, len: u64) {
    drop_pages(fd, offset, len);
    let Ok(st) = rustix::fs::fstat(fd) else { return };
    #[allow(clippy::unnecessary_cast)] // field types differ between targets
    let id = (st.st_dev as u64, st.st_ino as u64);
    let mut queue = queue();
    match queue.ranges.back_mut() {
        Some(last) if last.id == id && last.offset + last.len == offset && last.len < RANGE => {
            last.len += len
        }
        _ => {
            let Ok(file) = rustix::io::fcntl_dupfd_cloexec(fd, 0) else { return };
            queue.ranges.push_back(Written { file, id, offset, len, dropped: false });
        }
    }
    queue.bytes += len;
    let mut newer = 0;
    for range in queue.ranges.iter_mut().rev() {
        if newer >= LAG && !range.dropped {
            drop_pages(std::os::fd::AsFd::as_fd(&range.file), range.offset, range.len);
            range.dropped = true;
        }
        newer += range.len;
    }
    while queue.bytes > LAST || queue.ranges.len() > MAX_RANGES {
        let Some(oldest) = queue.ranges.pop_front() else { break };
        queue.bytes -= oldest.len;
        drop_pages(std::os::fd::AsFd::as_fd(&oldest.file), oldest.offset, oldest.len);
    }
}

/// Waits for the queued writes to reach the disk (one `syncfs` per filesystem) and drops
/// the pages of the files they went to, all of them: ranges that left the queue while still
/// under writeback included. At the end of an export or import, whose output files these
/// are, so that it leaves the cache as it was.
pub(crate) fn settle() {
    let ranges = {
        let mut queue = queue();
        queue.bytes = 0;
        std::mem::take(&mut queue.ranges)
    };
    let mut synced = Vec::new();
    let mut dropped = Vec::new();
    for range in &ranges {
        if !synced.contains(&range.id.0) {
            // Only advice too: whoever needs the data durable syncs it themselves.
            let _ = rustix::fs::syncfs(&range.file);
            synced.push(range.id.0);
        }
        if !dropped.contains(&range.id) {
            let _ = rustix::fs::fadvise(&range.file, 0, None, Advice::DontNeed);
            dropped.push(range.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn contiguous_writes_merge_and_settle_empties_the_queue() {
        let file = tempfile::tempfile().unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[1; 8192], 0).unwrap();
        settle();
        wrote(file.as_fd(), 0, 4096);
        wrote(file.as_fd(), 4096, 4096);
        assert_eq!(queue().ranges.len(), 1);
        assert_eq!(queue().bytes, 8192);
        settle();
        assert!(queue().ranges.is_empty());
    }
}
