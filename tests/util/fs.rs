//! Scratch areas on loop-mounted filesystems, mounts that are undone on drop, and probes of
//! the physical layout (statfs, btrfs du, filefrag, SEEK_DATA).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{describe, require_root, sh, skip_unless};

/// Which filesystem a [`Scratch`] area lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// A fresh Btrfs on a loop-mounted sparse image (reflink capable).
    Btrfs,
    /// A fresh XFS (reflink=1, the mkfs.xfs default) on a loop-mounted sparse image.
    Xfs,
    /// A temp dir on the root filesystem (ext4 on the reference machine: no reflink).
    Plain,
}

/// A private scratch area. `root` is an empty directory you may fill freely.
///
/// Dropping it unmounts the loop filesystem (retrying while busy, then `umount -l`),
/// which frees the loop device (`mount -o loop` sets autoclear), and removes the
/// image and all directories. This also happens when the test panics.
///
/// All scratch areas live in directories named `ckpt-test.XXXXXX` under
/// `$CKPT_TEST_TMPDIR` (set by `scripts/test.sh`) or `/var/tmp`, so leftovers are easy
/// to find: `mount | grep ckpt-test`.
pub struct Scratch {
    pub kind: FsKind,
    /// The directory to work in (the mount point for Btrfs/Xfs).
    pub root: PathBuf,
    /// Mount point to unmount on drop (None for Plain).
    mount_point: Option<PathBuf>,
    /// Holds the image file and the mount point; removed on drop (after unmounting).
    dir: Option<tempfile::TempDir>,
}

impl Scratch {
    /// `root.join(rel)`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// True when the filesystem under `root` can share extents (Btrfs or XFS). For
    /// `Plain` this is normally false (ext4), but is checked rather than assumed.
    pub fn reflink_capable(&self) -> bool {
        match self.kind {
            FsKind::Btrfs | FsKind::Xfs => true,
            FsKind::Plain => matches!(fs_magic(&self.root), BTRFS_MAGIC | XFS_MAGIC),
        }
    }

    /// Bytes available to root-owned writes (statvfs f_bavail * f_frsize).
    pub fn free_bytes(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.root)
            .unwrap_or_else(|e| panic!("statvfs {}: {e}", self.root.display()));
        st.f_bavail * st.f_frsize
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mp) = self.mount_point.take() {
            unmount(&mp);
        }
        // TempDir's own drop removes the image and the directories.
        drop(self.dir.take());
    }
}

/// Statfs magic numbers (`f_type`).
pub const BTRFS_MAGIC: i64 = 0x9123_683e;
pub const XFS_MAGIC: i64 = 0x5846_5342;

/// Where scratch directories are created: `$CKPT_TEST_TMPDIR` if set (scripts/test.sh
/// sets it to a per-run directory), else `/var/tmp` (on the root filesystem; `/tmp` can
/// be a tmpfs), else the platform temp dir.
pub fn test_base_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CKPT_TEST_TMPDIR") {
        let d = PathBuf::from(d);
        fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        return d;
    }
    let var_tmp = Path::new("/var/tmp");
    if var_tmp.is_dir() { var_tmp.to_path_buf() } else { std::env::temp_dir() }
}

/// A scratch area of the given kind; loop images are 1 GiB (sparse).
/// Returns None (test should return early) when not root or when loop devices / mkfs are
/// unavailable, except under CI (env var `CI` set) where it panics with the reason.
/// `Plain` only needs a writable temp dir and never returns None.
pub fn scratch(kind: FsKind) -> Option<Scratch> {
    scratch_sized(kind, 1 << 30)
}

/// Like [`scratch`], with the loop image size in bytes (ignored for `Plain`).
/// Minimums: XFS needs 300 MiB; Btrfs 128 MiB works (about 49 MiB free for data).
pub fn scratch_sized(kind: FsKind, image_bytes: u64) -> Option<Scratch> {
    let base = test_base_dir();
    let dir = tempfile::Builder::new()
        .prefix("ckpt-test.")
        .tempdir_in(&base)
        .unwrap_or_else(|e| panic!("create temp dir in {}: {e}", base.display()));
    if kind == FsKind::Plain {
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        return Some(Scratch { kind, root, mount_point: None, dir: Some(dir) });
    }
    if !require_root(&format!("a {kind:?} loop mount")) {
        return None;
    }
    let mkfs = match kind {
        FsKind::Btrfs => "mkfs.btrfs",
        FsKind::Xfs => "mkfs.xfs",
        FsKind::Plain => unreachable!(),
    };
    let image = dir.path().join("fs.img");
    fs::File::create(&image)
        .and_then(|f| f.set_len(image_bytes))
        .unwrap_or_else(|e| panic!("create sparse image {}: {e}", image.display()));
    match Command::new(mkfs).args(["-q", "-f"]).arg(&image).stdin(Stdio::null()).output() {
        Err(e) => {
            skip_unless(false, format_args!("cannot run {mkfs}: {e}"));
            return None;
        }
        Ok(o) if !o.status.success() => {
            skip_unless(false, format_args!("{mkfs} {} failed: {}", image.display(), describe(&o)));
            return None;
        }
        Ok(_) => {}
    }
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut last = String::new();
    for attempt in 0..5 {
        match Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mnt).stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => {
                return Some(Scratch { kind, root: mnt.clone(), mount_point: Some(mnt), dir: Some(dir) });
            }
            Ok(o) => last = describe(&o),
            Err(e) => {
                last = format!("cannot run mount: {e}");
                break;
            }
        }
        // Loop device allocation can race with parallel tests: retry.
        std::thread::sleep(Duration::from_millis(200 * (attempt + 1)));
    }
    skip_unless(false, format_args!("mount -o loop {} {} failed: {last}", image.display(), mnt.display()));
    None
}

/// Unescapes a mount point from /proc/self/mountinfo (`\040` etc.).
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// True when `path` is currently a mount point (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.as_os_str().as_bytes();
    info.lines().any(|l| l.split(' ').nth(4).is_some_and(|mp| unescape_mountinfo(mp) == want))
}

/// Mount points strictly below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut prefix = dir.as_os_str().as_bytes().to_vec();
    prefix.push(b'/');
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|mp| mp.starts_with(&prefix))
        .map(|mp| PathBuf::from(OsStr::from_bytes(&mp)))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    v.dedup();
    v
}

/// Unmounts `mp` and anything a test mounted below it (e.g. an overlay), retrying while
/// busy, then falls back to a lazy unmount. Never panics (it runs in Drop, possibly
/// while unwinding).
fn unmount(mp: &Path) {
    for sub in mounts_below(mp) {
        eprintln!("unmounting {} left mounted by the test", sub.display());
        let ok = Command::new("umount").arg(&sub).stdin(Stdio::null()).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&sub).status();
        }
    }
    let mut last = String::new();
    for attempt in 0..20u64 {
        if !is_mounted(mp) {
            return;
        }
        match Command::new("umount").arg(mp).stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => return,
            Ok(o) => last = describe(&o),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
    }
    eprintln!("umount {} kept failing ({last}); falling back to umount -l", mp.display());
    let _ = Command::new("umount").arg("-l").arg(mp).status();
}

fn statfs(path: &Path) -> rustix::fs::StatFs {
    rustix::fs::statfs(path).unwrap_or_else(|e| panic!("statfs {}: {e}", path.display()))
}

/// The filesystem type magic (`statfs().f_type`) of the filesystem holding `path`.
#[allow(clippy::unnecessary_cast)] // f_type's type differs between targets
pub fn fs_magic(path: &Path) -> i64 {
    statfs(path).f_type as i64
}

/// Flushes the filesystem holding `path` (`sync -f`), so extent maps are settled.
pub fn sync_fs(path: &Path) {
    sh("sync", &[&"-f", &path]);
}

/// The columns of `btrfs filesystem du -s --raw PATH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BtrfsDu {
    pub total: u64,
    pub exclusive: u64,
    /// Bytes of extents referenced under PATH that are shared (with anything,
    /// overlaps counted once).
    pub set_shared: u64,
}

/// Runs `btrfs filesystem du -s --raw PATH` (after syncing the fs) and parses it.
pub fn btrfs_du(path: &Path) -> BtrfsDu {
    sync_fs(path);
    let out = sh("btrfs", &[&"filesystem", &"du", &"-s", &"--raw", &path]);
    // Header line, then one line: Total Exclusive "Set shared" Filename.
    let line = out
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected btrfs fi du output for {}:\n{out}", path.display()));
    let cols: Vec<u64> = line
        .split_whitespace()
        .take(3)
        .map(|c| c.parse().unwrap_or_else(|_| panic!("bad btrfs fi du line {line:?}")))
        .collect();
    assert_eq!(cols.len(), 3, "bad btrfs fi du line {line:?}");
    BtrfsDu { total: cols[0], exclusive: cols[1], set_shared: cols[2] }
}

/// The "Set shared" column of `btrfs filesystem du -s --raw PATH`: bytes of the extents
/// referenced by the file or tree at PATH that are shared with any other reference.
pub fn btrfs_shared_bytes(path: &Path) -> u64 {
    btrfs_du(path).set_shared
}

/// One extent line of `filefrag -v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Logical offset in bytes.
    pub logical: u64,
    /// Physical offset in bytes.
    pub physical: u64,
    /// Length in bytes.
    pub length: u64,
    /// Flags as printed ("last,shared,eof").
    pub flags: String,
}

impl Extent {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.split(',').any(|f| f.trim() == flag)
    }

    pub fn shared(&self) -> bool {
        self.has_flag("shared")
    }
}

/// Extents of `file` per `filefrag -v` (FIEMAP), converted from filesystem blocks to
/// bytes with the block size filefrag prints ("... blocks of N bytes").
pub fn filefrag(file: &Path) -> Vec<Extent> {
    sync_fs(file);
    let out = sh("filefrag", &[&"-v", &file]);
    let mut block_size = None;
    let mut extents = Vec::new();
    for line in out.lines() {
        if line.starts_with("File size of ") {
            // "File size of F is 1048699 (257 blocks of 4096 bytes)" ("1 block of" for
            // a one-block file).
            let i = line.rfind(" of ").unwrap_or_else(|| panic!("no block size in filefrag line {line:?}"));
            let rest = &line[i + " of ".len()..];
            let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            block_size =
                Some(n.parse::<u64>().unwrap_or_else(|_| panic!("no block size in filefrag line {line:?}")));
            continue;
        }
        // "   0:        0..     256:         24..       280:    257:             last,shared,eof"
        let parts: Vec<&str> = line.split(':').collect();
        if parts.len() < 5 || parts[0].trim().parse::<u64>().is_err() || !parts[1].contains("..") {
            continue;
        }
        let bs = block_size.expect("filefrag: extent before the block size line");
        let start = |s: &str| -> u64 {
            s.split("..")
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad filefrag line {line:?}"))
        };
        let length: u64 =
            parts[3].trim().parse().unwrap_or_else(|_| panic!("bad filefrag extent line {line:?}"));
        let flags = parts[4..]
            .iter()
            .map(|s| s.trim())
            .filter(|s| s.chars().any(|c| c.is_ascii_alphabetic()))
            .collect::<Vec<_>>()
            .join(",");
        extents.push(Extent {
            logical: start(parts[1]) * bs,
            physical: start(parts[2]) * bs,
            length: length * bs,
            flags,
        });
    }
    extents
}

/// `(shared_bytes, total_bytes)` of `file` from `filefrag -v`: bytes in extents flagged
/// "shared", and bytes in all mapped extents (holes excluded). Works on XFS (and Btrfs).
pub fn xfs_shared_blocks(file: &Path) -> (u64, u64) {
    let ext = filefrag(file);
    let shared = ext.iter().filter(|e| e.shared()).map(|e| e.length).sum();
    let total = ext.iter().map(|e| e.length).sum();
    (shared, total)
}

/// Allocated size of `path` itself: st_blocks * 512 (lstat).
pub fn allocated_bytes(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display())).blocks() * 512
}

/// Data ranges `[start, end)` of `file` per lseek(SEEK_DATA/SEEK_HOLE), clipped to its size.
pub fn data_ranges(file: &Path) -> Vec<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    let f = fs::File::open(file).unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    let size = f.metadata().unwrap().len();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let start = match seek(&f, SeekFrom::Data(pos)) {
            Ok(start) => start,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => panic!("SEEK_DATA {}: {e}", file.display()),
        };
        let end =
            seek(&f, SeekFrom::Hole(start)).unwrap_or_else(|e| panic!("SEEK_HOLE {}: {e}", file.display()));
        let end = end.min(size);
        if end > start {
            out.push((start, end));
        }
        pos = end;
    }
    out
}

/// A mount (overlay or tmpfs) that is undone on drop, also when the test panics: unmounted,
/// retrying while busy, then lazily.
pub struct Mount {
    target: PathBuf,
}

impl Mount {
    /// Mounts an overlay of `lowers` (uppermost first) and `upper` at `merged`, creating
    /// `upper`, `work` and `merged` if needed.
    pub fn overlay(lowers: &[PathBuf], upper: &Path, work: &Path, merged: &Path) -> Mount {
        for dir in [upper, work, merged] {
            fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        let lowerdir =
            lowers.iter().map(|l| l.to_str().expect("UTF-8 path").to_string()).collect::<Vec<_>>().join(":");
        let options = format!("lowerdir={lowerdir},upperdir={},workdir={}", upper.display(), work.display());
        let target = fs::canonicalize(merged).unwrap();
        sh("mount", &[&"-t", &"overlay", &"overlay", &"-o", &options, &target]);
        Mount { target }
    }

    /// Mounts a small tmpfs at `at` (created if needed).
    pub fn tmpfs(at: &Path) -> Mount {
        fs::create_dir_all(at).unwrap_or_else(|e| panic!("mkdir {}: {e}", at.display()));
        let target = fs::canonicalize(at).unwrap();
        sh("mount", &[&"-t", &"tmpfs", &"-o", &"size=16m", &"tmpfs", &target]);
        Mount { target }
    }

    /// Where it is mounted (canonical).
    pub fn target(&self) -> &Path {
        &self.target
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        for attempt in 0..20u64 {
            if !is_mounted(&self.target) {
                return;
            }
            let unmounted = Command::new("umount")
                .arg(&self.target)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if unmounted {
                return;
            }
            std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
        }
        eprintln!("umount {} kept failing; falling back to umount -l", self.target.display());
        let _ = Command::new("umount").arg("-l").arg(&self.target).status();
    }
}
