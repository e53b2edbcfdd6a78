//! Copies leave the page cache as they found it: where ckpt copies rather than clones, the
//! pages it reads and writes are dropped once clean (RWF_DONTCACHE), and pages that were
//! cached before it ran stay. Measured with `fincore` on the files involved, so other
//! processes' pages do not count: on XFS, which supports uncached I/O, and on Btrfs, which
//! refuses it (6.18) and where ckpt drops what it read and wrote behind itself.

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::util::*;

/// Bytes of `path` in the page cache.
fn resident(path: &Path) -> u64 {
    let out = sh("fincore", &[&"--bytes", &"--noheadings", &"--output", &"RES", &path]);
    out.trim().parse().unwrap_or_else(|e| panic!("fincore {}: {out:?}: {e}", path.display()))
}

fn resident_all(paths: &[PathBuf]) -> u64 {
    paths.iter().map(|p| resident(p)).sum()
}

/// Writes `path` back and drops its pages, so that the run under test starts cold for it.
fn evict(path: &Path) {
    let file = fs::File::open(path).unwrap();
    file.sync_all().unwrap();
    rustix::fs::fadvise(file.as_fd(), 0, None, rustix::fs::Advice::DontNeed).unwrap();
    assert_eq!(resident(path), 0, "{}: still cached after fadvise(DONTNEED)", path.display());
}

/// An XFS scratch area with a tree of a 32 MiB file and a 16 MiB sparse file (1 MiB of data
/// every 2 MiB), not cached.
fn cold_tree() -> Option<(Scratch, PathBuf, Vec<PathBuf>)> {
    cold_tree_on(FsKind::Xfs)
}

/// The same on `kind`.
fn cold_tree_on(kind: FsKind) -> Option<(Scratch, PathBuf, Vec<PathBuf>)> {
    if !require_root("loop-mounted filesystems") || !have("fincore") {
        return None;
    }
    let scratch = scratch(kind)?;
    let src = scratch.root.join("src");
    fs::create_dir(&src).unwrap();
    let big = src.join("pages.img");
    fs::write(&big, pseudo_random_bytes(7, 32 << 20)).unwrap();
    // Holes no longer than a read-ahead window (Btrfs reads 4 MiB ahead), which reading the
    // data before each one brings into the cache as zeros.
    let sparse = src.join("sparse.img");
    let file = fs::File::create(&sparse).unwrap();
    file.set_len(16 << 20).unwrap();
    for at in (0u64..16 << 20).step_by(2 << 20) {
        std::os::unix::fs::FileExt::write_all_at(&file, &pseudo_random_bytes(at, 1 << 20), at).unwrap();
    }
    let files = vec![big, sparse];
    for f in &files {
        evict(f);
    }
    Some((scratch, src, files))
}

/// What may stay cached of a run that moved 40 MiB: headers and bookkeeping.
const LEFT_AT_MOST: u64 = 1 << 20;

/// `ckpt import --no-clone` of `archive` (evicted first) into `dest` under the scratch root
/// leaves neither the archive nor the restored files cached, and restores `files` exactly.
fn assert_copying_import_leaves_nothing_cached(scratch: &Scratch, archive: &Path, files: &[PathBuf]) {
    evict(archive);
    let dest = scratch.root.join("dest");
    ckpt_ok(&[&"import", &"--no-clone", &archive, &dest]);
    sync_fs(&scratch.root);
    let restored: Vec<PathBuf> = ["pages.img", "sparse.img"].iter().map(|n| dest.join(n)).collect();
    let imported = resident_all(&restored) + resident(archive);
    assert!(imported <= LEFT_AT_MOST, "import on {} left {imported} bytes cached", scratch.root.display());
    assert_same_bytes(&files[0], &restored[0]);
    assert_same_bytes(&files[1], &restored[1]);
}

#[test]
fn a_copying_export_and_import_leave_neither_the_files_nor_the_archive_cached() {
    let Some((scratch, src, files)) = cold_tree() else { return };
    let archive = scratch.root.join("a.tar");
    ckpt_ok(&[&"export", &"--no-clone", &src, &archive]);
    sync_fs(&scratch.root);
    let exported = resident_all(&files) + resident(&archive);
    assert!(exported <= LEFT_AT_MOST, "export left {exported} bytes cached");

    assert_copying_import_leaves_nothing_cached(&scratch, &archive, &files);
}

#[test]
fn a_zstd_export_and_its_import_leave_neither_the_files_nor_the_archive_cached() {
    let Some((scratch, src, files)) = cold_tree() else { return };
    let archive = scratch.root.join("a.tar.zst");
    ckpt_ok(&[&"export", &"--compress", &"zstd", &src, &archive]);
    sync_fs(&scratch.root);
    let exported = resident_all(&files) + resident(&archive);
    assert!(exported <= LEFT_AT_MOST, "zstd export left {exported} bytes cached");

    evict(&archive);
    let dest = scratch.root.join("dest");
    ckpt_ok(&[&"import", &archive, &dest]);
    sync_fs(&scratch.root);
    let restored: Vec<PathBuf> = ["pages.img", "sparse.img"].iter().map(|n| dest.join(n)).collect();
    let imported = resident_all(&restored) + resident(&archive);
    assert!(imported <= LEFT_AT_MOST, "zstd import left {imported} bytes cached");
    assert_same_bytes(&files[0], &restored[0]);
}

#[test]
fn pages_cached_before_a_copying_export_stay_cached() {
    let Some((scratch, src, files)) = cold_tree() else { return };
    let big = &files[0];
    let size = fs::metadata(big).unwrap().len();
    // Read twice, so that its pages are on the active list: reclaim, when the tests running
    // beside this one fill memory, takes inactive pages first.
    fs::read(big).unwrap();
    fs::read(big).unwrap();
    assert_eq!(resident(big), size, "reading {} did not cache it", big.display());
    ckpt_ok(&[&"export", &"--no-clone", &src, &scratch.root.join("a.tar")]);
    // An export that dropped what it read would leave none of the 32 MiB; reclaim may take a
    // few pages all the same.
    let kept = resident(big);
    assert!(
        kept + LEFT_AT_MOST >= size,
        "the export evicted pages it found cached: {kept} of {size} bytes left"
    );
}

#[test]
fn a_zstd_export_on_btrfs_leaves_neither_the_files_nor_the_archive_cached() {
    let Some((scratch, src, files)) = cold_tree_on(FsKind::Btrfs) else { return };
    let archive = scratch.root.join("a.tar.zst");
    ckpt_ok(&[&"export", &"--compress", &"zstd", &src, &archive]);
    sync_fs(&scratch.root);
    let exported = resident_all(&files) + resident(&archive);
    assert!(exported <= LEFT_AT_MOST, "zstd export on Btrfs left {exported} bytes cached");
}

#[test]
fn a_copying_import_on_btrfs_leaves_neither_the_archive_nor_the_files_cached() {
    let Some((scratch, src, files)) = cold_tree_on(FsKind::Btrfs) else { return };
    let archive = scratch.root.join("a.tar");
    ckpt_ok(&[&"export", &src, &archive]);
    sync_fs(&scratch.root);
    assert_copying_import_leaves_nothing_cached(&scratch, &archive, &files);
}

#[test]
fn a_piped_export_on_btrfs_leaves_the_files_uncached() {
    let Some((_scratch, src, files)) = cold_tree_on(FsKind::Btrfs) else { return };
    let mut child = std::process::Command::new(ckpt_bin())
        .arg("export")
        .arg(&src)
        .arg("-")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let streamed = std::io::copy(child.stdout.as_mut().unwrap(), &mut std::io::sink()).unwrap();
    assert!(child.wait().unwrap().success(), "ckpt export {} -", src.display());
    assert!(streamed > 32 << 20, "{streamed} bytes streamed");
    let left = resident_all(&files);
    assert!(left <= LEFT_AT_MOST, "a piped export on Btrfs left {left} bytes of its files cached");
}
