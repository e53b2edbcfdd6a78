//! Building trees with every kind of member and metadata, and comparing trees.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FileType;

use super::data_ranges;

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
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, utimensat};
    let ts = Timespec { tv_sec: sec, tv_nsec: nsec as _ };
    utimensat(CWD, path, &Timestamps { last_access: ts, last_modification: ts }, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

/// Sets an xattr on `path` itself (lsetxattr: does not follow symlinks).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("lsetxattr {} {name}: {e}", path.display()));
}

/// All xattrs of `path` itself (llistxattr/lgetxattr), by name.
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let fail = |op: &str, e: rustix::io::Errno| -> ! { panic!("{op} {}: {e}", path.display()) };
    let len = rustix::fs::llistxattr_query(path).unwrap_or_else(|e| fail("llistxattr", e));
    let mut names = Vec::with_capacity(len + 1024);
    rustix::fs::llistxattr(path, rustix::buffer::spare_capacity(&mut names))
        .unwrap_or_else(|e| fail("llistxattr", e));
    let mut out = BTreeMap::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::ffi::OsStr::from_bytes(name);
        let vlen = rustix::fs::lgetxattr_query(path, name).unwrap_or_else(|e| fail("lgetxattr", e));
        let mut value = Vec::with_capacity(vlen + 64);
        rustix::fs::lgetxattr(path, name, rustix::buffer::spare_capacity(&mut value))
            .unwrap_or_else(|e| fail("lgetxattr", e));
        out.insert(name.to_string_lossy().into_owned(), value);
    }
    out
}

/// Makes a device node, fifo or other special file of `kind` (mknod).
pub fn mknod(path: &Path, kind: rustix::fs::FileType, perm: u32, major: u32, minor: u32) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        kind,
        rustix::fs::Mode::from_raw_mode(perm),
        rustix::fs::makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

/// An overlay whiteout at `path`: a character device 0:0.
pub fn mknod_whiteout(path: &Path) {
    mknod(path, rustix::fs::FileType::CharacterDevice, 0, 0, 0);
}

/// True when `path` is an overlay whiteout.
pub fn is_whiteout(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

pub fn mkfifo(path: &Path, perm: u32) {
    rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::from_raw_mode(perm))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
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
    mknod(&p("dev/null-like"), FileType::CharacterDevice, 0o666, 1, 3);
    mknod_whiteout(&p("dev/whiteout"));
    mknod(&p("dev/big-minor"), FileType::CharacterDevice, 0o600, 240, 200_000);
    mknod(&p("dev/loop-like"), FileType::BlockDevice, 0o660, 7, 200);
    chown(&p("dev/loop-like"), 0, 6);
    mkfifo(&p("dev/fifo"), 0o640);
    chown(&p("dev/fifo"), 1234, 5678);

    chmod(&p("empty-dir"), 0o750);
    chmod(dir, 0o751);
    set_xattr(dir, "user.root-note", b"root of the rich tree");

    // --- mtimes last, contents before their directory, root last.
    for (i, path) in entries_contents_first(dir).iter().enumerate() {
        let i = i as i64;
        let (sec, nsec) = if path == &p("files/future") {
            (4_102_444_800 + 17, 999_999_999)
        } else {
            (1_600_000_000 + i * 3607, (123_456_789 + i * 7_777_777) % 1_000_000_000)
        };
        set_mtime(path, sec, if nsec == 0 { 1 } else { nsec });
    }
}

/// Every entry below `dir` (`dir` included), by name, each directory after its contents:
/// the order in which setting mtimes leaves them set.
pub fn entries_contents_first(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .contents_first(true)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .collect()
}

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

fn type_name(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::CharacterDevice => "char device",
        FileType::BlockDevice => "block device",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::Unknown => "unknown type",
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
        let (fa, fb) = (FileType::from_raw_mode(ma.mode()), FileType::from_raw_mode(mb.mode()));
        if fa != fb {
            diffs.push(format!("{name}: type {} vs {}", type_name(fa), type_name(fb)));
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
            FileType::RegularFile => {
                if ma.size() != mb.size() {
                    diffs.push(format!("{name}: size {} vs {}", ma.size(), mb.size()));
                } else if let Some(off) = first_difference(&pa, &pb) {
                    diffs.push(format!("{name}: content differs at byte offset {off}"));
                }
            }
            FileType::Symlink => {
                let (la, lb) = (fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
                if la != lb {
                    diffs.push(format!("{name}: symlink target {la:?} vs {lb:?}"));
                }
            }
            FileType::CharacterDevice | FileType::BlockDevice if ma.rdev() != mb.rdev() => {
                diffs.push(format!(
                    "{name}: rdev {}:{} vs {}:{}",
                    rustix::fs::major(ma.rdev()),
                    rustix::fs::minor(ma.rdev()),
                    rustix::fs::major(mb.rdev()),
                    rustix::fs::minor(mb.rdev())
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

/// Writes `data` to `path`, creating its missing parent directories first.
pub fn write_with_parents(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    write_file(path, data);
}

pub fn symlink(target: impl AsRef<Path>, link: &Path) {
    let target = target.as_ref();
    std::os::unix::fs::symlink(target, link)
        .unwrap_or_else(|e| panic!("symlink {} -> {}: {e}", link.display(), target.display()));
}

/// Inode groups (relative paths naming one inode, only groups of 2+, each sorted) of the
/// non-directories below `root`.
pub fn hardlink_groups_below(root: &Path) -> BTreeSet<Vec<PathBuf>> {
    hardlink_groups(&walk(root))
}
