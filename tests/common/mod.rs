//! Shared helpers for ckpt's integration tests.
//!
//! Every integration test file uses this module with `mod common;`. Not every
//! file uses every helper, hence the `dead_code` allowance below.
//!
//! Overview of the API (keep it stable, other test files depend on it):
//!
//! * Scratch filesystems: [`FsKind`], [`Scratch`], [`scratch`], [`scratch_sized`],
//!   [`require_root`], [`under_ci`].
//! * Running the binary: [`ckpt`], [`ckpt_ok`], [`ckpt_code`], [`ckpt_json`],
//!   [`parse_json`], [`json_u64`], [`describe`].
//! * Trees: [`make_rich_tree`] (+ the constants describing it), [`assert_trees_equal`],
//!   [`tree_stats`], [`expected_members`], [`pseudo_random_bytes`], [`set_mtime`],
//!   [`xattrs`], [`dir_names`], [`assert_same_bytes`].
//! * Physical layout / sharing probes: [`sync_fs`], [`btrfs_du`], [`btrfs_shared_bytes`],
//!   [`filefrag`], [`xfs_shared_blocks`], [`allocated_bytes`], [`data_ranges`],
//!   [`fs_magic`].
//! * Independent archive reader: [`python_data_offsets`].
//! * Shell-out helper: [`sh`], [`run`].
//!
//! All helpers panic with a message naming the path/command on failure; they are
//! meant for tests only.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A command-line argument: anything that converts to an `OsStr`
/// (`&"export"`, `&path_buf`, `&some_path`). Lets tests mix strings and paths:
/// `ckpt(&[&"export", &src, &out])`.
pub type Arg<'a> = &'a dyn AsRef<OsStr>;

// ---------------------------------------------------------------------------
// Scratch filesystems
// ---------------------------------------------------------------------------

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
    #[allow(clippy::unnecessary_cast)] // field types differ between targets
    pub fn free_bytes(&self) -> u64 {
        let st = statvfs(&self.root);
        st.f_bavail as u64 * st.f_frsize as u64
    }

    /// The filesystem block size (`statfs().f_bsize`).
    pub fn block_size(&self) -> u64 {
        statfs(&self.root).f_bsize as u64
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
pub const EXT4_MAGIC: i64 = 0xef53;

/// True when the environment variable `CI` is set: a missing capability (not root, no
/// loop device, no mkfs) is then a test failure, never a silent skip.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Skips (returns false after an eprintln) or, under CI, panics.
fn skip(reason: &str) -> bool {
    if under_ci() {
        panic!("CI is set, refusing to skip: {reason}");
    }
    eprintln!("SKIPPING TEST: {reason}");
    false
}

/// True when running as root. Otherwise prints why `what` is skipped and returns false,
/// or panics under CI.
pub fn require_root(what: &str) -> bool {
    if rustix::process::geteuid().is_root() { true } else { skip(&format!("{what} needs root")) }
}

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
            skip(&format!("cannot run {mkfs}: {e}"));
            return None;
        }
        Ok(o) if !o.status.success() => {
            skip(&format!("{mkfs} {} failed: {}", image.display(), describe(&o)));
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
    skip(&format!("mount -o loop {} {} failed: {last}", image.display(), mnt.display()));
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
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
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

fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes())
        .unwrap_or_else(|_| panic!("path with NUL byte: {}", path.display()))
}

fn statfs(path: &Path) -> libc::statfs {
    let c = cpath(path);
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    assert_eq!(r, 0, "statfs {}: {}", path.display(), std::io::Error::last_os_error());
    st
}

fn statvfs(path: &Path) -> libc::statvfs {
    let c = cpath(path);
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(r, 0, "statvfs {}: {}", path.display(), std::io::Error::last_os_error());
    st
}

/// The filesystem type magic (`statfs().f_type`) of the filesystem holding `path`.
#[allow(clippy::unnecessary_cast)] // f_type's type differs between targets
pub fn fs_magic(path: &Path) -> i64 {
    statfs(path).f_type as i64
}

// ---------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------

/// Human-readable exit status, stdout and stderr of a finished command.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn show_args(args: &[Arg]) -> String {
    args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

/// Runs a command (stdin = /dev/null) and returns its output, whatever the status.
pub fn run(cmd: &str, args: &[Arg]) -> Output {
    Command::new(cmd)
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cmd} {}`: {e}", show_args(args)))
}

/// Runs a command, asserts it exits 0, returns its stdout (lossy UTF-8).
pub fn sh(cmd: &str, args: &[Arg]) -> String {
    let out = run(cmd, args);
    assert!(out.status.success(), "`{cmd} {}` failed:\n{}", show_args(args), describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Path of the ckpt binary under test.
pub fn ckpt_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ckpt")
}

/// Runs `ckpt ARGS...` and returns its output, whatever the exit status.
pub fn ckpt(args: &[Arg]) -> Output {
    Command::new(ckpt_bin())
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ckpt {}: {e}", show_args(args)))
}

/// Runs ckpt, asserts the exit code is exactly `code`, returns the output.
pub fn ckpt_code(code: i32, args: &[Arg]) -> Output {
    expect_code(ckpt(args), code, args)
}

/// Asserts that `ckpt ARGS...` exited with `code`; its output.
pub fn expect_code(out: Output, code: i32, args: &[Arg]) -> Output {
    assert_eq!(
        out.status.code(),
        Some(code),
        "`ckpt {}`: expected exit code {code}\n{}",
        show_args(args),
        describe(&out)
    );
    out
}

/// Runs ckpt, asserts exit code 0, returns stdout as a string.
pub fn ckpt_ok(args: &[Arg]) -> String {
    let out = ckpt_code(0, args);
    String::from_utf8(out.stdout).expect("ckpt stdout is not UTF-8")
}

/// Runs ckpt (the caller passes `--json`), asserts exit 0, parses stdout as one JSON
/// object.
pub fn ckpt_json(args: &[Arg]) -> serde_json::Value {
    parse_json(&ckpt_ok(args))
}

/// Parses ckpt's `--json` stdout: exactly one JSON object (surrounding whitespace ok).
pub fn parse_json(stdout: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("ckpt --json output is not one JSON value ({e}):\n{stdout}"));
    assert!(v.is_object(), "ckpt --json output is not an object: {v}");
    v
}

/// `v[key]` as u64; panics naming the key if it is missing or not an unsigned integer.
pub fn json_u64(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key)
        .and_then(|x| x.as_u64())
        .unwrap_or_else(|| panic!("JSON field {key:?} missing or not a u64 in {v}"))
}

// ---------------------------------------------------------------------------
// Building trees
// ---------------------------------------------------------------------------

/// Deterministic non-repeating bytes (splitmix64 stream).
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sets atime and mtime of `path` (not following symlinks).
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let c = cpath(path);
    let ts = [
        libc::timespec { tv_sec: sec as libc::time_t, tv_nsec: nsec as _ },
        libc::timespec { tv_sec: sec as libc::time_t, tv_nsec: nsec as _ },
    ];
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(r, 0, "utimensat {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Sets an xattr on `path` itself (lsetxattr: does not follow symlinks).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let c = cpath(path);
    let n = CString::new(name).unwrap();
    let r = unsafe {
        libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr() as *const libc::c_void, value.len(), 0)
    };
    assert_eq!(r, 0, "lsetxattr {} {name}: {}", path.display(), std::io::Error::last_os_error());
}

/// All xattrs of `path` itself (llistxattr/lgetxattr), by name.
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = cpath(path);
    let mut out = BTreeMap::new();
    let len = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    assert!(len >= 0, "llistxattr {}: {}", path.display(), std::io::Error::last_os_error());
    if len == 0 {
        return out;
    }
    let mut names = vec![0u8; len as usize + 1024];
    let len = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr() as *mut libc::c_char, names.len()) };
    assert!(len >= 0, "llistxattr {}: {}", path.display(), std::io::Error::last_os_error());
    names.truncate(len as usize);
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let vlen = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
        assert!(
            vlen >= 0,
            "lgetxattr {} {}: {}",
            path.display(),
            String::from_utf8_lossy(name),
            std::io::Error::last_os_error()
        );
        let mut value = vec![0u8; vlen as usize + 64];
        let vlen = unsafe {
            libc::lgetxattr(c.as_ptr(), cn.as_ptr(), value.as_mut_ptr() as *mut libc::c_void, value.len())
        };
        assert!(vlen >= 0, "lgetxattr {}", path.display());
        value.truncate(vlen as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), value);
    }
    out
}

fn mknod(path: &Path, kind: libc::mode_t, perm: libc::mode_t, major: u32, minor: u32) {
    let c = cpath(path);
    let r = unsafe { libc::mknod(c.as_ptr(), kind | perm, libc::makedev(major, minor)) };
    assert_eq!(r, 0, "mknod {}: {}", path.display(), std::io::Error::last_os_error());
}

fn mkfifo(path: &Path, perm: libc::mode_t) {
    let c = cpath(path);
    let r = unsafe { libc::mkfifo(c.as_ptr(), perm) };
    assert_eq!(r, 0, "mkfifo {}: {}", path.display(), std::io::Error::last_os_error());
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("lchown {uid}:{gid} {}: {e}", path.display()));
}

fn write_file(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Relative path (inside a rich tree) of the sparse file.
pub const SPARSE_FILE: &str = "data/sparse-64M.img";
/// Apparent size of [`SPARSE_FILE`].
pub const SPARSE_SIZE: u64 = 64 << 20;
/// The data islands `(offset, length)` written into [`SPARSE_FILE`]; everything else is a
/// hole: a leading hole, holes between islands, one unaligned island, and a 15 MiB
/// trailing hole.
pub const SPARSE_ISLANDS: &[(u64, u64)] =
    &[(1 << 20, 64 << 10), (10 << 20, 4096), ((33 << 20) + 100, 5000), (48 << 20, 1 << 20)];
/// Relative path of the large multi-block file (1 MiB + 123 bytes, non-repeating data).
pub const BIG_FILE: &str = "data/big-1MiB+123.bin";
/// The v2 `security.capability` value put on `bin/cap-tool`:
/// cap_dac_override,cap_fowner,cap_net_raw=ep. Note the 0x0A byte (a newline).
pub const CAP_V2: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // magic_etc: VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
    0x0a, 0x20, 0x00, 0x00, // permitted (low 32): bits 1, 3, 13
    0x00, 0x00, 0x00, 0x00, // inheritable (low 32)
    0x00, 0x00, 0x00, 0x00, // permitted (high 32)
    0x00, 0x00, 0x00, 0x00, // inheritable (high 32)
];
/// The three names of one inode in a rich tree.
pub const HARDLINK_NAMES: [&str; 3] = ["links/hard-1", "links/hard-2", "other/hard-3"];

/// The long (> 300 bytes) relative path of a regular file in a rich tree.
pub fn long_file_path() -> String {
    format!("deep/{}/{}/{}/{}.txt", "a".repeat(100), "b".repeat(100), "c".repeat(100), "f".repeat(150))
}

/// Builds a tree with every member type and every kind of metadata ckpt must preserve,
/// at `dir` (created if missing; should be empty). Needs root (mknod, chown, trusted.*
/// and security.* xattrs).
///
/// Contents (relative to `dir`):
/// * `bin/setuid-tool` 04755 1234:5678 (5000 B), `bin/setgid-tool` 02755 0:5678,
///   `bin/cap-tool` 0755 with `security.capability` = [`CAP_V2`] (6000 B)
/// * `dirs/setgid-dir` 02775 0:5678, `dirs/sticky-dir` 01777, `dirs/private` 0700
///   4321:8765 with `secret` 0600
/// * `files/`: `empty`, `one-byte`, `4095`, `4096`, `4097`, `8192`, `mode-000` (0000),
///   `mode-640`, `future` (mtime in 2100)
/// * `data/`: [`BIG_FILE`] (1 MiB + 123 B) and [`SPARSE_FILE`] (64 MiB, [`SPARSE_ISLANDS`])
/// * `xattr/` (dir with `trusted.overlay.opaque=y` and a user xattr): `user-attrs` (user.*
///   incl. binary, empty and 1000-byte values), `trusted-attr`, `big-with-xattrs` (9000 B,
///   user + trusted), `link-with-xattr` (symlink with a trusted xattr)
/// * [`long_file_path`] (5000 B), `deep/hard-to-long` (hardlink to it, long link name),
///   `deep/long-symlink` (symlink with a > 300 byte target)
/// * `names/with space.txt`, `names/ünïcødé ファイル.bin` (4100 B), `names/emoji-🙂.txt`
/// * [`HARDLINK_NAMES`] (10000 B, 3 names), `links/empty-hard-a`/`-b` (empty, 2 names),
///   symlinks `links/rel` (relative, owned 1111:2222), `links/abs` (absolute),
///   `links/dangling`, `links/dir-link`
/// * `dev/null-like` char 1:3, `dev/whiteout` char 0:0 (overlay whiteout), `dev/big-minor`
///   char 240:200000 (XFS stores 18-bit minors), `dev/loop-like` block 7:200 0660 0:6, `dev/fifo` 0640 1234:5678
/// * `empty-dir` 0750
/// * The root gets mode 0751 and `user.root-note`.
///
/// Every entry, including dirs, symlinks and the root, gets a distinct mtime with non-zero
/// nanoseconds (set last, contents before their directory).
pub fn make_rich_tree(dir: &Path) {
    assert!(rustix::process::geteuid().is_root(), "make_rich_tree needs root");
    fs::create_dir_all(dir).unwrap();
    let p = |rel: &str| dir.join(rel);
    let mkdir = |rel: &str| fs::create_dir_all(dir.join(rel)).unwrap();

    for d in [
        "bin",
        "dirs/setgid-dir",
        "dirs/sticky-dir",
        "dirs/private",
        "files",
        "data",
        "xattr",
        "names",
        "links",
        "other",
        "dev",
        "empty-dir",
    ] {
        mkdir(d);
    }

    // --- special mode bits: content first, then chown (it clears setuid/setgid and
    // security.capability), then chmod, then the capability xattr.
    write_file(&p("bin/setuid-tool"), &pseudo_random_bytes(1, 5000));
    chown(&p("bin/setuid-tool"), 1234, 5678);
    chmod(&p("bin/setuid-tool"), 0o4755);
    write_file(&p("bin/setgid-tool"), &pseudo_random_bytes(2, 300));
    chown(&p("bin/setgid-tool"), 0, 5678);
    chmod(&p("bin/setgid-tool"), 0o2755);
    write_file(&p("bin/cap-tool"), &pseudo_random_bytes(3, 6000));
    chmod(&p("bin/cap-tool"), 0o755);
    set_xattr(&p("bin/cap-tool"), "security.capability", &CAP_V2);

    chown(&p("dirs/setgid-dir"), 0, 5678);
    chmod(&p("dirs/setgid-dir"), 0o2775);
    write_file(&p("dirs/setgid-dir/inside"), b"inherits group 5678\n");
    chown(&p("dirs/setgid-dir/inside"), 0, 5678);
    chmod(&p("dirs/sticky-dir"), 0o1777);
    write_file(&p("dirs/sticky-dir/t"), b"sticky\n");
    chmod(&p("dirs/sticky-dir/t"), 0o666);
    write_file(&p("dirs/private/secret"), &pseudo_random_bytes(4, 4500));
    chown(&p("dirs/private/secret"), 4321, 8765);
    chmod(&p("dirs/private/secret"), 0o600);
    chown(&p("dirs/private"), 4321, 8765);
    chmod(&p("dirs/private"), 0o700);

    // --- sizes around the alignment unit
    write_file(&p("files/empty"), b"");
    write_file(&p("files/one-byte"), b"x");
    for (i, size) in [4095usize, 4096, 4097, 8192].into_iter().enumerate() {
        write_file(&p(&format!("files/{size}")), &pseudo_random_bytes(10 + i as u64, size));
    }
    write_file(&p("files/mode-000"), &pseudo_random_bytes(20, 100));
    chmod(&p("files/mode-000"), 0o000);
    write_file(&p("files/mode-640"), &pseudo_random_bytes(21, 4200));
    chown(&p("files/mode-640"), 1234, 5678);
    chmod(&p("files/mode-640"), 0o640);
    write_file(&p("files/future"), b"from the future\n");

    // --- big and sparse data
    write_file(&p(BIG_FILE), &pseudo_random_bytes(30, (1 << 20) + 123));
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(p(SPARSE_FILE)).unwrap();
        for (i, &(off, len)) in SPARSE_ISLANDS.iter().enumerate() {
            f.write_all_at(&pseudo_random_bytes(40 + i as u64, len as usize), off).unwrap();
        }
        f.set_len(SPARSE_SIZE).unwrap();
        f.sync_all().unwrap();
    }

    // --- xattrs
    let ux = p("xattr/user-attrs");
    write_file(&ux, b"has user xattrs\n");
    set_xattr(&ux, "user.a", b"hello");
    set_xattr(&ux, "user.bin", &[0, 1, b'\n', 0xff, b'\n', 0]);
    set_xattr(&ux, "user.empty", b"");
    set_xattr(&ux, "user.big", &pseudo_random_bytes(50, 1000));
    set_xattr(&ux, "user.with space=and=equals", b"v=1 2\n3");
    let tx = p("xattr/trusted-attr");
    write_file(&tx, b"has a trusted xattr\n");
    set_xattr(&tx, "trusted.ckpt.test", b"t\nvalue\x00with nul");
    let bx = p("xattr/big-with-xattrs");
    write_file(&bx, &pseudo_random_bytes(51, 9000));
    set_xattr(&bx, "user.mime_type", b"application/octet-stream");
    set_xattr(&bx, "trusted.overlay.origin", &pseudo_random_bytes(52, 29));
    std::os::unix::fs::symlink("user-attrs", p("xattr/link-with-xattr")).unwrap();
    set_xattr(&p("xattr/link-with-xattr"), "trusted.ckpt.link", b"on the link");
    set_xattr(&p("xattr"), "trusted.overlay.opaque", b"y");
    set_xattr(&p("xattr"), "user.dir-attr", b"dir");

    // --- long names
    let long = long_file_path();
    assert!(long.len() > 300);
    fs::create_dir_all(p(&long).parent().unwrap()).unwrap();
    write_file(&p(&long), &pseudo_random_bytes(60, 5000));
    fs::hard_link(p(&long), p("deep/hard-to-long")).unwrap();
    std::os::unix::fs::symlink(&long["deep/".len()..], p("deep/long-symlink")).unwrap();

    // --- names with spaces and UTF-8
    write_file(&p("names/with space.txt"), b"spaces\n");
    write_file(&p("names/ünïcødé ファイル.bin"), &pseudo_random_bytes(70, 4100));
    write_file(&p("names/emoji-🙂.txt"), "🙂\n".as_bytes());

    // --- hardlinks and symlinks
    write_file(&p(HARDLINK_NAMES[0]), &pseudo_random_bytes(80, 10000));
    chown(&p(HARDLINK_NAMES[0]), 1234, 5678);
    chmod(&p(HARDLINK_NAMES[0]), 0o664);
    for name in &HARDLINK_NAMES[1..] {
        fs::hard_link(p(HARDLINK_NAMES[0]), p(name)).unwrap();
    }
    write_file(&p("links/empty-hard-a"), b"");
    fs::hard_link(p("links/empty-hard-a"), p("links/empty-hard-b")).unwrap();
    std::os::unix::fs::symlink("../files/one-byte", p("links/rel")).unwrap();
    chown(&p("links/rel"), 1111, 2222);
    std::os::unix::fs::symlink("/etc/passwd", p("links/abs")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", p("links/dangling")).unwrap();
    std::os::unix::fs::symlink("../dirs", p("links/dir-link")).unwrap();

    // --- devices and fifo
    mknod(&p("dev/null-like"), libc::S_IFCHR, 0o666, 1, 3);
    mknod(&p("dev/whiteout"), libc::S_IFCHR, 0o000, 0, 0);
    mknod(&p("dev/big-minor"), libc::S_IFCHR, 0o600, 240, 200_000);
    mknod(&p("dev/loop-like"), libc::S_IFBLK, 0o660, 7, 200);
    chown(&p("dev/loop-like"), 0, 6);
    mkfifo(&p("dev/fifo"), 0o640);
    chown(&p("dev/fifo"), 1234, 5678);

    chmod(&p("empty-dir"), 0o750);
    chmod(dir, 0o751);
    set_xattr(dir, "user.root-note", b"root of the rich tree");

    // --- mtimes last, contents before their directory, root last.
    let entries: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .contents_first(true)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .collect();
    for (i, path) in entries.iter().enumerate() {
        let i = i as i64;
        let (sec, nsec) = if path == &p("files/future") {
            (4_102_444_800 + 17, 999_999_999)
        } else {
            (1_600_000_000 + i * 3607, (123_456_789 + i * 7_777_777) % 1_000_000_000)
        };
        set_mtime(path, sec, if nsec == 0 { 1 } else { nsec });
    }
}

// ---------------------------------------------------------------------------
// Inspecting trees
// ---------------------------------------------------------------------------

/// Relative path for messages ("." for the root).
fn show_rel(rel: &Path) -> String {
    if rel.as_os_str().is_empty() { ".".to_string() } else { rel.display().to_string() }
}

/// All entries under `root` (root included as ""), not following symlinks, keyed by
/// relative path.
fn walk(root: &Path) -> BTreeMap<PathBuf, fs::Metadata> {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .map(|e| {
            let e = e.unwrap_or_else(|e| panic!("walk {}: {e}", root.display()));
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            let md = fs::symlink_metadata(e.path())
                .unwrap_or_else(|err| panic!("lstat {}: {err}", e.path().display()));
            (rel, md)
        })
        .collect()
}

fn type_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        libc::S_IFCHR => "char device",
        libc::S_IFBLK => "block device",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        _ => "unknown type",
    }
}

/// First offset where two files' contents differ (None if equal incl. length).
fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    let mut fa = fs::File::open(a).unwrap_or_else(|e| panic!("open {}: {e}", a.display()));
    let mut fb = fs::File::open(b).unwrap_or_else(|e| panic!("open {}: {e}", b.display()));
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        let n = na.min(nb);
        if let Some(i) = (0..n).find(|&i| ba[i] != bb[i]) {
            return Some(off + i as u64);
        }
        if na != nb {
            return Some(off + n as u64);
        }
        if na == 0 {
            return None;
        }
        off += n as u64;
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

/// Asserts two files have identical contents; names the first differing offset.
pub fn assert_same_bytes(a: &Path, b: &Path) {
    if let Some(off) = first_difference(a, b) {
        panic!(
            "{} and {} differ at byte offset {off} (sizes {} and {})",
            a.display(),
            b.display(),
            fs::metadata(a).unwrap().len(),
            fs::metadata(b).unwrap().len()
        );
    }
}

fn show_bytes(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if !s.contains('\0') => format!("{s:?}"),
        _ => format!("0x{}", v.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

/// Inode groups (sets of relative paths naming one inode, only groups of 2+) of the
/// non-directories in a walked tree.
fn hardlink_groups(tree: &BTreeMap<PathBuf, fs::Metadata>) -> BTreeSet<Vec<PathBuf>> {
    let mut by_ino: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    for (rel, md) in tree {
        if !md.is_dir() {
            by_ino.entry((md.dev(), md.ino())).or_default().push(rel.clone());
        }
    }
    by_ino
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect()
}

/// Asserts that trees `a` and `b` are identical in everything ckpt must preserve.
///
/// Walks both without following symlinks (roots included) and compares, per path: the
/// type, all 12 permission bits (incl. setuid/setgid/sticky), uid, gid, mtime to the
/// nanosecond (for every type, symlinks included: Linux sets symlink mtimes reliably
/// with utimensat(AT_SYMLINK_NOFOLLOW) on ext4, Btrfs and XFS), size (regular files and
/// symlinks; directory sizes are filesystem-specific and not compared), file content
/// byte for byte, symlink targets, rdev of devices, every xattr (name and value; nothing
/// is ignored), and the hardlink structure (same groups of paths naming one inode).
/// Atime and ctime are not compared (reading/restoring changes them by design).
///
/// Panics with a list of every difference, each naming the relative path.
pub fn assert_trees_equal(a: &Path, b: &Path) {
    let ta = walk(a);
    let tb = walk(b);
    let mut diffs: Vec<String> = Vec::new();

    for rel in ta.keys().filter(|k| !tb.contains_key(*k)) {
        diffs.push(format!("{}: missing in {}", show_rel(rel), b.display()));
    }
    for rel in tb.keys().filter(|k| !ta.contains_key(*k)) {
        diffs.push(format!("{}: extra in {} (not in {})", show_rel(rel), b.display(), a.display()));
    }

    for (rel, ma) in &ta {
        let Some(mb) = tb.get(rel) else { continue };
        let name = show_rel(rel);
        let pa = a.join(rel);
        let pb = b.join(rel);
        let (fa, fb) = (ma.mode() & libc::S_IFMT, mb.mode() & libc::S_IFMT);
        if fa != fb {
            diffs.push(format!("{name}: type {} vs {}", type_name(ma.mode()), type_name(mb.mode())));
            continue;
        }
        if ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            diffs.push(format!("{name}: mode {:04o} vs {:04o}", ma.mode() & 0o7777, mb.mode() & 0o7777));
        }
        if (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
            diffs.push(format!("{name}: owner {}:{} vs {}:{}", ma.uid(), ma.gid(), mb.uid(), mb.gid()));
        }
        if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
            diffs.push(format!(
                "{name}: mtime {}.{:09} vs {}.{:09}",
                ma.mtime(),
                ma.mtime_nsec(),
                mb.mtime(),
                mb.mtime_nsec()
            ));
        }
        match fa {
            libc::S_IFREG => {
                if ma.size() != mb.size() {
                    diffs.push(format!("{name}: size {} vs {}", ma.size(), mb.size()));
                } else if let Some(off) = first_difference(&pa, &pb) {
                    diffs.push(format!("{name}: content differs at byte offset {off}"));
                }
            }
            libc::S_IFLNK => {
                let (la, lb) = (fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
                if la != lb {
                    diffs.push(format!("{name}: symlink target {la:?} vs {lb:?}"));
                }
            }
            libc::S_IFCHR | libc::S_IFBLK if ma.rdev() != mb.rdev() => {
                diffs.push(format!(
                    "{name}: rdev {}:{} vs {}:{}",
                    libc::major(ma.rdev()),
                    libc::minor(ma.rdev()),
                    libc::major(mb.rdev()),
                    libc::minor(mb.rdev())
                ));
            }
            _ => {}
        }
        let (xa, xb) = (xattrs(&pa), xattrs(&pb));
        if xa != xb {
            for (k, v) in &xa {
                match xb.get(k) {
                    None => diffs.push(format!("{name}: xattr {k} missing in {}", b.display())),
                    Some(w) if w != v => {
                        diffs.push(format!("{name}: xattr {k} = {} vs {}", show_bytes(v), show_bytes(w)))
                    }
                    _ => {}
                }
            }
            for k in xb.keys().filter(|k| !xa.contains_key(*k)) {
                diffs.push(format!("{name}: extra xattr {k} = {} in {}", show_bytes(&xb[k]), b.display()));
            }
        }
    }

    let (ga, gb) = (hardlink_groups(&ta), hardlink_groups(&tb));
    for g in ga.difference(&gb) {
        diffs.push(format!("hardlink group {g:?} of {} is not a group in {}", a.display(), b.display()));
    }
    for g in gb.difference(&ga) {
        diffs.push(format!("hardlink group {g:?} of {} is not a group in {}", b.display(), a.display()));
    }

    assert!(
        diffs.is_empty(),
        "trees {} and {} differ ({} differences):\n  {}",
        a.display(),
        b.display(),
        diffs.len(),
        diffs.join("\n  ")
    );
}

/// Counts over a tree, in the units of ckpt's `--json` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Archive members ckpt should write: every entry incl. the root and every hardlink
    /// name, excluding sockets.
    pub entries: u64,
    /// Regular-file inodes (each hardlinked inode once).
    pub files: u64,
    /// Sum of the sizes of those inodes (each hardlinked inode once).
    pub bytes: u64,
    /// Sum over those inodes of the bytes in data (non-hole) ranges, per SEEK_DATA.
    pub data_bytes: u64,
    /// Sockets found (ckpt skips them).
    pub sockets: u64,
}

/// Computes [`TreeStats`] for the tree at `root`.
pub fn tree_stats(root: &Path) -> TreeStats {
    let mut st = TreeStats::default();
    let mut seen = BTreeSet::new();
    for (rel, md) in walk(root) {
        if md.file_type().is_socket() {
            st.sockets += 1;
            continue;
        }
        st.entries += 1;
        if md.is_file() && seen.insert((md.dev(), md.ino())) {
            st.files += 1;
            st.bytes += md.size();
            st.data_bytes += data_ranges(&root.join(rel)).iter().map(|(s, e)| e - s).sum::<u64>();
        }
    }
    st
}

/// The members `ckpt export SRC` must write, in order, as Python's tarfile names them
/// (root "." and "./rel", directories without trailing slash) with their tar type:
/// '5' dir, '0' regular file (first name of an inode), '1' hardlink (later names),
/// '2' symlink, '3' char device, '4' block device, '6' fifo. Sockets are left out.
/// Order: depth-first pre-order, children sorted byte-wise by name.
pub fn expected_members(src: &Path) -> Vec<(String, char)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (rel, md) in walk(src) {
        // `walk` is a BTreeMap keyed by Path: Path ordering compares component by
        // component, each byte-wise, which is exactly pre-order with sorted children.
        let name = if rel.as_os_str().is_empty() {
            ".".to_string()
        } else {
            format!("./{}", rel.to_str().expect("non UTF-8 name"))
        };
        let ft = md.file_type();
        let ty = if ft.is_dir() {
            '5'
        } else if ft.is_file() {
            if seen.insert((md.dev(), md.ino())) { '0' } else { '1' }
        } else if ft.is_symlink() {
            '2'
        } else if ft.is_char_device() {
            '3'
        } else if ft.is_block_device() {
            '4'
        } else if ft.is_fifo() {
            '6'
        } else {
            continue; // socket
        };
        out.push((name, ty));
    }
    out
}

/// Sorted names in a directory (e.g. to check that a failed export left no stray file).
pub fn dir_names(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Physical layout and sharing
// ---------------------------------------------------------------------------

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
    /// Length in bytes.
    pub length: u64,
    /// Flags as printed ("last,shared,eof").
    pub flags: String,
}

impl Extent {
    pub fn shared(&self) -> bool {
        self.flags.split(',').any(|f| f.trim() == "shared")
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
        if parts.len() < 4 || parts[0].trim().parse::<u64>().is_err() || !parts[1].contains("..") {
            continue;
        }
        let bs = block_size.expect("filefrag: extent before the block size line");
        let logical: u64 = parts[1].split("..").next().unwrap().trim().parse().unwrap();
        let length: u64 =
            parts[3].trim().parse().unwrap_or_else(|_| panic!("bad filefrag extent line {line:?}"));
        let flags = parts[4..]
            .iter()
            .map(|s| s.trim())
            .filter(|s| s.chars().any(|c| c.is_ascii_alphabetic()))
            .collect::<Vec<_>>()
            .join(",");
        extents.push(Extent { logical: logical * bs, length: length * bs, flags });
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
    use std::os::fd::AsRawFd;
    let f = fs::File::open(file).unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    let size = f.metadata().unwrap().len();
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0i64;
    while (pos as u64) < size {
        let start = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if start < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::ENXIO), "SEEK_DATA {}: {e}", file.display());
            break;
        }
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        assert!(end >= start, "SEEK_HOLE {}", file.display());
        let end = (end as u64).min(size);
        if end > start as u64 {
            out.push((start as u64, end));
        }
        pos = end as i64;
    }
    out
}

// ---------------------------------------------------------------------------
// Independent archive reader
// ---------------------------------------------------------------------------

const PY_OFFSETS: &str = r#"
import json, sys, tarfile
with tarfile.open(sys.argv[1], "r:") as t:
    for m in t:
        ty = m.type.decode("latin-1")
        if ty == "\x00":
            ty = "0"
        print(json.dumps([m.name, m.offset_data, m.size, ty]))
"#;

/// Reads `archive` with Python's tarfile (independent of ckpt and the tar crate) and
/// returns, per member in order: (name as tarfile reports it, offset of the member's
/// data in the archive, size, tar type char: '0' file, '1' hardlink, '2' symlink, '3'
/// char, '4' block, '5' dir, '6' fifo). tarfile strips the trailing '/' of directory
/// names ("./" becomes ".") and hides pax headers (the padding records).
pub fn python_data_offsets(archive: &Path) -> Vec<(String, u64, u64, char)> {
    let out = sh("python3", &[&"-c", &PY_OFFSETS, &archive]);
    out.lines()
        .map(|l| {
            let v: (String, u64, u64, String) =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad python tarfile line {l:?}: {e}"));
            let ty = v.3.chars().next().expect("empty type");
            (v.0, v.1, v.2, ty)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// A real podman with a private storage root
// ---------------------------------------------------------------------------

/// The image every [`Podman`] has: /bin/busybox (static) with one RELATIVE symlink per
/// applet (`busybox --install -s` makes absolute links that break inside the container),
/// /tmp, and /d/x (a file of the image, for tests that replace /d).
pub const BUSYBOX_IMAGE: &str = "localhost/bb";

/// A shell loop that writes a growing counter to /tmp/count every 0.1 s: a restored process
/// that continues keeps increasing it.
pub const COUNTER_LOOP: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done";

/// podman with its own configuration and storage under `dir` (on a scratch filesystem):
/// containers.conf and storage.conf that work on this kind of VM (runc, cgroupfs, file
/// events and file locks, no network, ulimits podman may set), passed to podman and to
/// `ckpt podman` by CONTAINERS_CONF and CONTAINERS_STORAGE_CONF.
///
/// Dropping it (also when the test panics) removes every container and image of this
/// storage root and unmounts whatever is still mounted below `dir`, so the scratch
/// filesystem can be unmounted. Declare it after the [`Scratch`] it lives on, so that it
/// is dropped first.
pub struct Podman {
    pub dir: PathBuf,
    containers_conf: PathBuf,
    storage_conf: PathBuf,
}

/// Why podman, runc or CRIU cannot checkpoint here, or None when they can (checked once).
fn podman_unusable() -> Option<String> {
    static REASON: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    REASON
        .get_or_init(|| {
            for (cmd, args) in
                [("podman", &["--version"][..]), ("runc", &["--version"][..]), ("criu", &["check"][..])]
            {
                match Command::new(cmd).args(args).stdin(Stdio::null()).output() {
                    Err(e) => return Some(format!("cannot run {cmd}: {e}")),
                    Ok(o) if !o.status.success() => {
                        return Some(format!("`{cmd} {}` failed: {}", args.join(" "), describe(&o)));
                    }
                    Ok(_) => {}
                }
            }
            None
        })
        .clone()
}

impl Podman {
    /// A podman whose storage lives in `s.path("podman")`, with [`BUSYBOX_IMAGE`] imported.
    /// None (skip) when not root or when podman/runc/CRIU are missing or CRIU does not work
    /// on this kernel; under CI that panics instead.
    pub fn new(s: &Scratch) -> Option<Podman> {
        if !require_root("real podman containers") {
            return None;
        }
        if let Some(reason) = podman_unusable() {
            skip(&reason);
            return None;
        }
        let dir = s.path("podman");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let containers_conf = dir.join("containers.conf");
        let storage_conf = dir.join("storage.conf");
        // File locks under the private tmp_dir: the default shm lock segment is shared with
        // every other podman on the machine.
        let conf = format!(
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n\
             lock_type = \"file\"\ntmp_dir = \"{run}/libpod\"\n\n[containers]\n\
             default_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\nnetns = \"none\"\n\
             log_driver = \"k8s-file\"\n",
            run = dir.join("run").display()
        );
        fs::write(&containers_conf, conf).unwrap();
        let storage = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            dir.join("storage").display(),
            dir.join("run").display()
        );
        fs::write(&storage_conf, storage).unwrap();
        let pm = Podman { dir, containers_conf, storage_conf };
        pm.import_busybox_image();
        Some(pm)
    }

    fn import_busybox_image(&self) {
        let rootfs = self.dir.join("image-rootfs");
        let bin = rootfs.join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(rootfs.join("tmp")).unwrap();
        fs::create_dir_all(rootfs.join("d")).unwrap();
        fs::write(rootfs.join("d/x"), b"x of the image\n").unwrap();
        fs::copy("/bin/busybox", bin.join("busybox")).expect("copy /bin/busybox (package busybox-static)");
        for applet in sh("/bin/busybox", &[&"--list"]).split_whitespace() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
            }
        }
        let script = format!("tar -C '{}' -c . | podman import -q - {BUSYBOX_IMAGE}", rootfs.display());
        let out = self.command("sh").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "importing the busybox image: {}", describe(&out));
        fs::remove_dir_all(&rootfs).unwrap();
    }

    /// `program` with this podman's configuration in its environment.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("CONTAINERS_CONF", &self.containers_conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .stdin(Stdio::null());
        c
    }

    /// Runs `podman ARGS...` and returns its output, whatever the status.
    pub fn run(&self, args: &[Arg]) -> Output {
        self.command("podman")
            .args(args.iter().map(|a| a.as_ref()))
            .output()
            .unwrap_or_else(|e| panic!("cannot run podman {}: {e}", show_args(args)))
    }

    /// Runs `podman ARGS...`, asserts exit 0, returns stdout trimmed.
    pub fn ok(&self, args: &[Arg]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "`podman {}` failed:\n{}", show_args(args), describe(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs `ckpt ARGS...` with this podman's configuration; returns the output.
    pub fn ckpt(&self, args: &[Arg]) -> Output {
        self.command(ckpt_bin())
            .args(args.iter().map(|a| a.as_ref()))
            .output()
            .unwrap_or_else(|e| panic!("cannot run ckpt {}: {e}", show_args(args)))
    }

    /// Runs `ckpt ARGS...` with this podman's configuration, asserts the exit code.
    pub fn ckpt_code(&self, code: i32, args: &[Arg]) -> Output {
        expect_code(self.ckpt(args), code, args)
    }

    /// Runs `ckpt ARGS...` with this podman's configuration, asserts exit 0, returns stdout
    /// trimmed.
    pub fn ckpt_ok(&self, args: &[Arg]) -> String {
        String::from_utf8_lossy(&self.ckpt_code(0, args).stdout).trim().to_string()
    }

    /// `podman run -d --name NAME IMAGE sh -c COUNTER_LOOP`, with `extra` options before the
    /// image; waits until the counter is written. Returns the container ID.
    pub fn run_counter(&self, name: &str, extra: &[Arg]) -> String {
        let mut args: Vec<Arg> = vec![&"run", &"-d", &"--name", &name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&BUSYBOX_IMAGE, &"/bin/sh", &"-c", &COUNTER_LOOP]);
        let id = self.ok(&args);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.run(&[&"exec", &name, &"cat", &"/tmp/count"]).stdout.is_empty() {
            assert!(std::time::Instant::now() < deadline, "container {name} never wrote /tmp/count");
            std::thread::sleep(Duration::from_millis(100));
        }
        id
    }

    /// The counter of a container running [`COUNTER_LOOP`].
    pub fn counter(&self, name: &str) -> u64 {
        let v = self.ok(&[&"exec", &name, &"cat", &"/tmp/count"]);
        v.parse().unwrap_or_else(|_| panic!("container {name}: /tmp/count holds {v:?}"))
    }

    /// Asserts that container `name`'s counter is at least `at_least` and keeps growing.
    pub fn assert_counter_continues(&self, name: &str, at_least: u64) -> u64 {
        let first = self.counter(name);
        assert!(first >= at_least, "container {name}: counter {first}, but it was {at_least} at checkpoint");
        std::thread::sleep(Duration::from_millis(600));
        let second = self.counter(name);
        assert!(second > first, "container {name}: counter stuck at {first} (then {second}): not running");
        second
    }

    /// `podman inspect --format FORMAT NAME`, trimmed.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&[&"inspect", &"--format", &format, &name])
    }

    /// The overlay upper (diff) dir of container `name`'s rootfs.
    pub fn upper_dir(&self, name: &str) -> PathBuf {
        PathBuf::from(self.inspect(name, "{{.GraphDriver.Data.UpperDir}}"))
    }

    /// IDs of all containers of this storage root, sorted.
    pub fn container_ids(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.ok(&[&"ps", &"-a", &"-q", &"--no-trunc"]).lines().map(str::to_string).collect();
        v.sort();
        v
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for args in [&["rm", "-f", "-a", "-t", "0"][..], &["rmi", "-a", "-f"][..]] {
            match self.command("podman").args(args).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!("cleanup: podman {} failed: {}", args.join(" "), describe(&o)),
                Err(e) => eprintln!("cleanup: cannot run podman: {e}"),
            }
        }
        for mp in mounts_below(&self.dir) {
            let ok = Command::new("umount").arg(&mp).stdin(Stdio::null()).status().is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&mp).status();
            }
        }
    }
}

/// The fields of hand-written tar headers, for tests that build archives byte by byte so
/// nothing depends on a tar library's idea of what is allowed.
pub mod raw_tar {
    pub const BLOCK: usize = 512;
    /// Fixed mtime of every member (2023-11-14).
    pub const MTIME: u64 = 1_700_000_000;

    /// Writes `value` as zero-padded octal filling `field` but its last byte (a NUL).
    pub fn octal(field: &mut [u8], value: u64) {
        let width = field.len() - 1;
        let digits = format!("{value:0width$o}");
        assert_eq!(digits.len(), width, "{value} does not fit {width} octal digits");
        field[..width].copy_from_slice(digits.as_bytes());
        field[width] = 0;
    }

    /// Writes `value` as a GNU base-256 number (high bit of the first byte set).
    pub fn base256(field: &mut [u8], value: u64) {
        field.fill(0);
        let n = field.len();
        field[n - 8..].copy_from_slice(&value.to_be_bytes());
        field[0] |= 0x80;
    }

    pub fn set_checksum(block: &mut [u8; BLOCK]) {
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    }
}
