//! Fuzzes ckpt's archive reader, and the extractor behind it, through the public API.
//!
//! The reader is crate-private, so each input goes through `ckpt::list` (headers only, nested
//! `rootfs-diff.tar` included) and through `ckpt::Importer`, from a regular file (headers read
//! in place, data cloned or copied by offset) and from a pipe (the streaming path). The file
//! import also restores a nested `rootfs-diff.tar` into a plain "rootfs" directory, which
//! applies `.wh.` whiteouts and `deleted.files` as deletions.
//!
//! Imports go into a directory on a tmpfs beside a canary file: afterwards nothing may have
//! appeared, vanished or changed beside the destination and the rootfs. Errors are expected;
//! panics, hangs, running out of memory and escapes are what the fuzzer looks for.
//!
//! Each input is also compressed with gzip and with zstd (content checksum on, as ckpt
//! writes it) and read through the same list and import calls, which then decompress it as
//! a stream; for odd first bytes one byte of the compressed stream is flipped first, so
//! corrupt and truncated-looking streams reach the decompressor and the reader behind it.
//!
//! Tar header checksums would stop almost every mutation at the first header, so before use
//! every 512-byte block that carries the `ustar` magic gets its checksum recomputed (blocks
//! without the magic keep theirs, so the checksum check itself is still exercised).
//!
//! Run from the repository root (stable toolchain):
//!   RUSTC_BOOTSTRAP=1 cargo fuzz run reader fuzz/seeds -- -dict=fuzz/tar.dict -max_len=65536
#![no_main]

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

const CANARY: &[u8] = b"canary: must never change\n";

struct Work {
    dir: PathBuf,
    canary_mtime: (i64, i64),
}

fn work() -> &'static Work {
    static WORK: OnceLock<Work> = OnceLock::new();
    WORK.get_or_init(|| {
        let base = std::env::var_os("CKPT_FUZZ_DIR").map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
        let dir = base.join(format!("ckpt-fuzz.{}", std::process::id()));
        if dir.exists() {
            clean(&dir);
        }
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("canary"), CANARY).unwrap();
        let meta = fs::metadata(dir.join("canary")).unwrap();
        Work { dir, canary_mtime: (meta.mtime(), meta.mtime_nsec()) }
    })
}

/// Removes a tree an import left, including directories with mode 0000.
fn clean(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else { return };
    if meta.is_dir() {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        for entry in fs::read_dir(path).unwrap().flatten() {
            clean(&entry.path());
        }
        fs::remove_dir(path).unwrap_or_else(|e| panic!("rmdir {}: {e}", path.display()));
    } else {
        fs::remove_file(path).unwrap_or_else(|e| panic!("rm {}: {e}", path.display()));
    }
}

/// Recomputes the checksum of every block that looks like a ustar or GNU header.
fn fix_checksums(data: &mut [u8]) {
    for block in data.chunks_exact_mut(512) {
        if &block[257..262] != b"ustar" {
            continue;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }
}

fn check_beside(work: &Work, what: &str) {
    let mut names: Vec<_> = fs::read_dir(&work.dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    for name in &names {
        assert!(
            ["a.tar", "canary", "dest", "rootfs"].iter().any(|a| name.as_os_str() == *a),
            "{what}: the import created {name:?} beside the destination"
        );
    }
    let canary = work.dir.join("canary");
    let meta = fs::symlink_metadata(&canary).unwrap_or_else(|e| panic!("{what}: canary gone: {e}"));
    assert!(meta.is_file(), "{what}: canary replaced");
    assert_eq!(fs::read(&canary).unwrap(), CANARY, "{what}: canary content changed");
    assert_eq!((meta.mtime(), meta.mtime_nsec()), work.canary_mtime, "{what}: canary mtime changed");
    let rootfs = work.dir.join("rootfs");
    assert!(
        fs::symlink_metadata(&rootfs).is_ok_and(|m| m.is_dir()),
        "{what}: rootfs dir replaced or removed"
    );
}

fn list(archive: &Path) {
    let options = ckpt::ListOptions { nested: true, ..ckpt::ListOptions::default() };
    let mut count = 0u64;
    let _ = ckpt::list(archive, &options, &mut |entry| {
        count += 1;
        let _ = entry.text_line();
        Ok(())
    });
}

fn from_file(work: &Work, data: &[u8]) {
    let archive = work.dir.join("a.tar");
    let dest = work.dir.join("dest");
    let rootfs = work.dir.join("rootfs");
    fs::write(&archive, data).unwrap();
    list(&archive);
    fs::create_dir(&rootfs).unwrap();
    fs::write(rootfs.join("keep"), b"keep").unwrap();
    let importer = ckpt::Importer::new().rootfs(ckpt::Rootfs::Mount(rootfs.clone()));
    let _ = importer.import(&archive, &dest);
    check_beside(work, "file import");
    clean(&dest);
    clean(&rootfs);
    fs::remove_file(&archive).unwrap();
}

fn from_pipe(work: &Work, data: &[u8]) {
    let dest = work.dir.join("dest");
    let (reader, mut writer) = std::io::pipe().unwrap();
    // Large enough for the whole input, so no writer thread is needed.
    let want = data.len().next_power_of_two().max(65536) as libc::c_int;
    unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    writer.write_all(data).unwrap();
    drop(writer);
    let path = PathBuf::from(format!("/proc/self/fd/{}", reader.as_raw_fd()));
    let _ = ckpt::Importer::new().share(false).overwrite(true).import(&path, &dest);
    drop(reader);
    fs::create_dir(work.dir.join("rootfs")).unwrap();
    check_beside(work, "stream import");
    clean(&work.dir.join("rootfs"));
    clean(&dest);
}

/// `data` as gzip and as zstd, one byte flipped when `flip` says where.
fn compressed(data: &[u8], flip: Option<usize>) -> [Vec<u8>; 2] {
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(data).unwrap();
    let mut zstd = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    zstd.include_checksum(true).unwrap();
    zstd.write_all(data).unwrap();
    let mut out = [gzip.finish().unwrap(), zstd.finish().unwrap()];
    if let Some(at) = flip {
        for stream in &mut out {
            let at = at % stream.len();
            stream[at] ^= 0x20;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let work = work();
    let mut data = data.to_vec();
    fix_checksums(&mut data);
    from_file(work, &data);
    if data.len() <= 1 << 20 {
        from_pipe(work, &data);
        let flip = data.first().filter(|&&b| b & 1 == 1).map(|_| data.iter().map(|&b| usize::from(b)).sum());
        for stream in compressed(&data, flip) {
            from_file(work, &stream);
            from_pipe(work, &stream);
        }
    }
});
