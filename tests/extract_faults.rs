//! Import faults on the extraction side: --overwrite gaps, directory metadata order, members
//! that fail alone, metadata of special files, set-id bits without the owner, stale temporary
//! names, deep trees, memory per deferred directory, and podman's replaced directories in a
//! layer.
//!
//! Archives are written byte by byte by the small pax writer below. Every import runs into a
//! DEST beside a canary file that must stay untouched. Tests that matter for permissions run
//! ckpt as root and as `nobody` (setpriv), on a scratch directory nobody can write.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::util::*;

// ---------------------------------------------------------------------------
// A tiny pax writer
// ---------------------------------------------------------------------------

const MTIME: i64 = crate::util::MTIME as i64;

/// One member; names and link targets of any length go in pax records.
#[derive(Clone)]
struct M {
    name: Vec<u8>,
    typeflag: u8,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    link: Vec<u8>,
    data: Vec<u8>,
    xattrs: Vec<(String, Vec<u8>)>,
    dev: (u32, u32),
}

fn member(name: impl AsRef<[u8]>, typeflag: u8) -> M {
    M {
        name: name.as_ref().to_vec(),
        typeflag,
        mode: if typeflag == b'5' { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        mtime: MTIME,
        link: Vec::new(),
        data: Vec::new(),
        xattrs: Vec::new(),
        dev: (0, 0),
    }
}

fn file(name: impl AsRef<[u8]>, data: &[u8]) -> M {
    M { data: data.to_vec(), ..member(name, b'0') }
}

fn dir(name: impl AsRef<[u8]>) -> M {
    member(name, b'5')
}

fn link(name: &str, typeflag: u8, target: &str) -> M {
    M { link: target.as_bytes().to_vec(), ..member(name, typeflag) }
}

impl M {
    fn mode(mut self, mode: u32) -> M {
        self.mode = mode;
        self
    }

    fn owner(mut self, uid: u32, gid: u32) -> M {
        self.uid = uid;
        self.gid = gid;
        self
    }

    fn mtime(mut self, mtime: i64) -> M {
        self.mtime = mtime;
        self
    }

    fn xattr(mut self, name: &str, value: &[u8]) -> M {
        self.xattrs.push((name.to_string(), value.to_vec()));
        self
    }
}

fn header(name: &[u8], typeflag: u8, size: u64, m: &M) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    let n = name.len().min(99);
    b[..n].copy_from_slice(&name[..n]);
    octal(&mut b[100..108], u64::from(m.mode));
    octal(&mut b[108..116], u64::from(m.uid));
    octal(&mut b[116..124], u64::from(m.gid));
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], m.mtime as u64);
    b[156] = typeflag;
    let l = m.link.len().min(99);
    b[157..157 + l].copy_from_slice(&m.link[..l]);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b[329..337], u64::from(m.dev.0));
    octal(&mut b[337..345], u64::from(m.dev.1));
    set_checksum(&mut b);
    b
}

fn padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
}

fn tar(members: &[M]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let mut pax = pax_record(b"path", &m.name);
        if !m.link.is_empty() {
            pax.extend(pax_record(b"linkpath", &m.link));
        }
        for (name, value) in &m.xattrs {
            pax.extend(pax_record(format!("SCHILY.xattr.{name}").as_bytes(), value));
        }
        out.extend_from_slice(&header(b"PaxHeaders/x", b'x', pax.len() as u64, m));
        padded(&mut out, &pax);
        out.extend_from_slice(&header(&m.name, m.typeflag, m.data.len() as u64, m));
        padded(&mut out, &m.data);
    }
    out.extend_from_slice(&[0u8; 2 * BLOCK]);
    out
}

// ---------------------------------------------------------------------------
// A work area with a canary, and running ckpt as root or as nobody
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum As {
    Root,
    Nobody,
}

const NOBODY: u32 = 65534;

struct Area {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    dest: PathBuf,
    canary: PathBuf,
    who: As,
}

impl Area {
    /// None when the test cannot run as `who` here (skipped; a failure under CI).
    fn new(who: As) -> Option<Area> {
        if !require_root(&format!("an import as {who:?}")) {
            return None;
        }
        let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let work = tmp.path().join("work");
        fs::create_dir(&work).unwrap();
        let canary = work.join("canary");
        fs::write(&canary, b"canary\n").unwrap();
        set_mtime(&canary, 1_234_567_890, 0);
        if who == As::Nobody {
            sh("chown", &[&"-R", &format!("{NOBODY}:{NOBODY}"), &work]);
        }
        let dest = work.join("dest");
        Some(Area { _tmp: tmp, work, dest, canary, who })
    }

    fn write_archive(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.work.join(name);
        fs::write(&path, bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        path
    }

    fn ckpt(&self, args: &[&dyn AsRef<OsStr>]) -> Output {
        let mut cmd = match self.who {
            As::Root => Command::new(ckpt_bin()),
            As::Nobody => as_nobody(ckpt_bin()),
        };
        let out = cmd.args(args.iter().map(|a| a.as_ref())).stdin(Stdio::null()).output().unwrap();
        self.check_canary();
        out
    }

    /// Imports `members` into DEST with `flags`; asserts the exit code.
    fn import(&self, members: &[M], flags: &[&str], code: i32) -> Output {
        let archive = self.write_archive("a.tar", &tar(members));
        let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"import"];
        for flag in flags {
            args.push(flag);
        }
        args.push(&archive);
        args.push(&self.dest);
        let out = self.ckpt(&args);
        assert_eq!(out.status.code(), Some(code), "ckpt import as {:?}: {}", self.who, describe(&out));
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{}", describe(&out));
        out
    }

    fn check_canary(&self) {
        let meta = fs::symlink_metadata(&self.canary).expect("the canary is gone");
        assert_eq!(fs::read(&self.canary).unwrap(), b"canary\n", "the canary was written");
        assert_eq!((meta.mtime(), meta.nlink(), meta.mode() & 0o7777), (1_234_567_890, 1, 0o644));
        let beside: Vec<_> = fs::read_dir(&self.work).unwrap().map(|e| e.unwrap().file_name()).collect();
        for name in &beside {
            let name = name.to_string_lossy();
            assert!(
                ["canary", "dest", "a.tar", "upper", "bundle", "lower", "merged", "ovl-work"]
                    .contains(&name.as_ref()),
                "{name} appeared beside DEST"
            );
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dest.join(rel)
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display())).mode() & 0o7777
}

/// Every name below `root` that looks like a ckpt temporary name.
fn temp_names(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains(".ckpt-") {
                found.push(entry.path().display().to_string());
            }
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
    }
    found
}

/// Runs `$body` once as root and once as nobody, as two named tests.
macro_rules! as_root_and_nobody {
    ($root:ident, $nobody:ident, $body:expr) => {
        #[test]
        fn $root() {
            if let Some(area) = Area::new(As::Root) {
                ($body)(area);
            }
        }

        #[test]
        fn $nobody() {
            if let Some(area) = Area::new(As::Nobody) {
                ($body)(area);
            }
        }
    };
}

// ---------------------------------------------------------------------------
// 1. --overwrite
// ---------------------------------------------------------------------------

as_root_and_nobody!(
    overwrite_replaces_a_file_by_the_archives_directory_as_root,
    overwrite_replaces_a_file_by_the_archives_directory_as_nobody,
    |a: Area| {
        a.import(&[file("d", b"a file\n"), file("s", b"x"), link("l", b'2', "somewhere")], &[], 0);
        let members = [dir("d").mode(0o750), file("d/inside", b"inside\n"), dir("s"), dir("l/")];
        let out = a.import(&members, &[], 1);
        assert!(stderr_of(&out).contains("already exists"), "{}", describe(&out));
        assert_eq!(fs::read(a.path("d")).unwrap(), b"a file\n", "replaced without --overwrite");

        a.import(&members, &["--overwrite"], 0);
        assert_eq!(fs::read(a.path("d/inside")).unwrap(), b"inside\n");
        assert_eq!(mode_of(&a.path("d")), 0o750);
        assert!(a.path("s").is_dir() && fs::symlink_metadata(a.path("l")).unwrap().is_dir());
        assert_eq!(temp_names(&a.dest), Vec::<String>::new());
    }
);

as_root_and_nobody!(
    overwrite_with_a_hard_link_to_what_the_name_already_is_leaves_no_temp_name_as_root,
    overwrite_with_a_hard_link_to_what_the_name_already_is_leaves_no_temp_name_as_nobody,
    |a: Area| {
        let members =
            [file("f", b"data\n"), link("g", b'1', "f"), link("g", b'1', "f"), link("f", b'1', "f")];
        a.import(&members, &["--overwrite"], 0);
        a.import(&members, &["--overwrite"], 0);
        assert_eq!(fs::read(a.path("g")).unwrap(), b"data\n");
        assert_eq!(fs::metadata(a.path("f")).unwrap().ino(), fs::metadata(a.path("g")).unwrap().ino());
        assert_eq!(temp_names(&a.dest), Vec::<String>::new());
    }
);

#[test]
fn overwrite_of_every_kind_by_every_kind_leaves_no_temp_name() {
    let Some(a) = Area::new(As::Root) else { return };
    let kinds = |name: &str| {
        vec![
            file(name, b"file\n"),
            link(name, b'2', "target"),
            member(name, b'6'),
            M { dev: (1, 3), ..member(name, b'3') },
            link(name, b'1', "base"),
        ]
    };
    let mut members = vec![file("base", b"base\n")];
    for first in kinds("x") {
        for second in kinds("x") {
            members.push(first.clone());
            members.push(second);
        }
    }
    a.import(&members, &["--overwrite"], 0);
    assert_eq!(temp_names(&a.dest), Vec::<String>::new());
    assert_eq!(fs::read(a.path("x")).unwrap(), b"base\n");
}

// ---------------------------------------------------------------------------
// 2. Directory metadata order
// ---------------------------------------------------------------------------

as_root_and_nobody!(
    directory_modes_apply_deepest_first_whatever_the_archive_order_as_root,
    directory_modes_apply_deepest_first_whatever_the_archive_order_as_nobody,
    |a: Area| {
        let members = [
            dir("a/b/").mode(0o555).mtime(1_600_000_000),
            file("a/b/f", b"f\n"),
            dir("a/").mode(0o000).mtime(1_500_000_000),
        ];
        let out = a.import(&members, &[], 0);
        assert!(!stderr_of(&out).contains("denied"), "{}", describe(&out));
        fs::set_permissions(a.path("a"), fs::Permissions::from_mode(0o755)).unwrap();
        let b = fs::metadata(a.path("a/b")).unwrap();
        assert_eq!((b.mode() & 0o7777, b.mtime()), (0o555, 1_600_000_000));
        assert_eq!(fs::read(a.path("a/b/f")).unwrap(), b"f\n");
        fs::set_permissions(a.path("a"), fs::Permissions::from_mode(0o000)).unwrap();
        let top = fs::metadata(a.path("a")).unwrap();
        assert_eq!((top.mode() & 0o7777, top.mtime()), (0o000, 1_500_000_000));
        fs::set_permissions(a.path("a"), fs::Permissions::from_mode(0o755)).unwrap();
    }
);

#[test]
fn a_repeated_directory_header_updates_its_deferred_metadata() {
    let Some(a) = Area::new(As::Root) else { return };
    let members = [
        dir("d").mode(0o700).mtime(1_400_000_000),
        dir("e"),
        file("d/f", b"f"),
        dir("d/").mode(0o751).mtime(1_450_000_000),
    ];
    a.import(&members, &[], 0);
    let d = fs::metadata(a.path("d")).unwrap();
    assert_eq!((d.mode() & 0o7777, d.mtime()), (0o751, 1_450_000_000));
}

// ---------------------------------------------------------------------------
// 3. One failing member does not end the import
// ---------------------------------------------------------------------------

/// `bad` fails with `what` on stderr; the members around it and the directory metadata are
/// restored, and ckpt exits 1.
fn fails_alone(a: &Area, bad: Vec<M>, what: &[&str]) {
    let mut members = vec![dir("top").mode(0o750).mtime(1_300_000_000), file("top/before", b"before\n")];
    members.extend(bad);
    members.push(file("top/after", b"after\n"));
    members.push(dir("last").mode(0o711).mtime(1_300_000_001));
    let out = a.import(&members, &[], 1);
    let err = stderr_of(&out);
    for w in what {
        assert!(err.contains(w), "stderr lacks {w:?}: {}", describe(&out));
    }
    assert!(err.contains("failed"), "{}", describe(&out));
    assert_eq!(fs::read(a.path("top/before")).unwrap(), b"before\n");
    assert_eq!(fs::read(a.path("top/after")).unwrap(), b"after\n");
    let top = fs::metadata(a.path("top")).unwrap();
    assert_eq!((top.mode() & 0o7777, top.mtime()), (0o750, 1_300_000_000));
    assert_eq!(mode_of(&a.path("last")), 0o711);
    assert_eq!(temp_names(&a.dest), Vec::<String>::new());
}

as_root_and_nobody!(
    a_300_byte_name_component_fails_alone_as_root,
    a_300_byte_name_component_fails_alone_as_nobody,
    |a: Area| {
        let long = "n".repeat(300);
        let bad = vec![file(format!("top/{long}"), b"x"), file(format!("top/{long}/below"), b"x")];
        fails_alone(&a, bad, &[&format!("top/{long}"), "File name too long"]);
    }
);

as_root_and_nobody!(
    a_hard_link_to_a_directory_fails_alone_as_root,
    a_hard_link_to_a_directory_fails_alone_as_nobody,
    |a: Area| {
        fails_alone(&a, vec![link("top/dirlink", b'1', "top")], &["top/dirlink", "create"]);
    }
);

#[test]
fn an_unreadable_archive_ends_the_import_after_applying_directory_metadata() {
    let Some(a) = Area::new(As::Root) else { return };
    let mut bytes = tar(&[dir("d").mode(0o711).mtime(1_200_000_000), file("d/f", b"f")]);
    bytes.truncate(bytes.len() - 2 * BLOCK);
    bytes.extend_from_slice(&[0xff; BLOCK]);
    let archive = a.write_archive("a.tar", &bytes);
    let out = a.ckpt(&[&"import", &archive, &a.dest]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stderr_of(&out).contains("offset"), "{}", describe(&out));
    let d = fs::metadata(a.path("d")).unwrap();
    assert_eq!((d.mode() & 0o7777, d.mtime()), (0o711, 1_200_000_000));
}

// ---------------------------------------------------------------------------
// 4 and 5. Metadata of special files; set-id bits
// ---------------------------------------------------------------------------

as_root_and_nobody!(
    symlinks_and_fifos_get_their_own_metadata_never_their_targets_as_root,
    symlinks_and_fifos_get_their_own_metadata_never_their_targets_as_nobody,
    |a: Area| {
        let uid = if a.who == As::Root { 1234 } else { NOBODY };
        // Only root may set trusted.* xattrs; user.* ones are not allowed on fifos or symlinks.
        let with_xattr = |m: M| if a.who == As::Root { m.xattr("trusted.k", b"v") } else { m };
        let members = [
            with_xattr(link("out", b'2', "../canary").owner(uid, uid).mtime(1_100_000_000)),
            with_xattr(member("fifo", b'6').mode(0o640).owner(uid, uid).mtime(1_100_000_001)),
        ];
        a.import(&members, &[], 0);
        let l = fs::symlink_metadata(a.path("out")).unwrap();
        assert_eq!((l.uid(), l.mtime()), (uid, 1_100_000_000));
        let f = fs::symlink_metadata(a.path("fifo")).unwrap();
        assert!(f.file_type().is_fifo());
        assert_eq!((f.mode() & 0o7777, f.uid(), f.mtime()), (0o640, uid, 1_100_000_001));
        if a.who == As::Root {
            for name in ["out", "fifo"] {
                assert_eq!(
                    xattrs(&a.path(name)).get("trusted.k").map(Vec::as_slice),
                    Some(&b"v"[..]),
                    "{name}"
                );
            }
        }
    }
);

#[test]
fn set_id_bits_are_dropped_when_the_owner_is_not_restored_as_nobody() {
    let Some(a) = Area::new(As::Nobody) else { return };
    let members = [
        file("suid", b"#!/bin/sh\n").mode(0o6755).owner(0, 0),
        dir("sgid").mode(0o2775).owner(0, 0),
        dir("sticky").mode(0o1777).owner(0, 0),
        file("mine", b"x").mode(0o4755).owner(NOBODY, NOBODY),
    ];
    let out = a.import(&members, &[], 0);
    assert!(stderr_of(&out).contains("not restored"), "{}", describe(&out));
    assert_eq!(mode_of(&a.path("suid")), 0o755);
    assert_eq!(mode_of(&a.path("sgid")), 0o775);
    assert_eq!(mode_of(&a.path("sticky")), 0o1777);
    assert_eq!(mode_of(&a.path("mine")), 0o4755, "the owner is restored: its set-user-ID bit stays");
}

#[test]
fn set_id_bits_are_kept_with_the_owner_as_root() {
    let Some(a) = Area::new(As::Root) else { return };
    let members = [file("suid", b"x").mode(0o6755).owner(1234, 5678), dir("sgid").mode(0o2775).owner(1, 2)];
    a.import(&members, &[], 0);
    let f = fs::metadata(a.path("suid")).unwrap();
    assert_eq!((f.mode() & 0o7777, f.uid(), f.gid()), (0o6755, 1234, 5678));
    assert_eq!(mode_of(&a.path("sgid")), 0o2775);
}

// ---------------------------------------------------------------------------
// 6. Stale temporary names
// ---------------------------------------------------------------------------

as_root_and_nobody!(
    stale_temp_names_of_dead_processes_are_removed_by_the_next_import_as_root,
    stale_temp_names_of_dead_processes_are_removed_by_the_next_import_as_nobody,
    |a: Area| {
        a.import(&[dir("sub"), file("sub/keep", b"keep\n")], &[], 0);
        let dead = dead_pid();
        let live = std::process::id();
        let stale = [format!(".f.ckpt-{dead}-0.tmp"), format!("sub/.l.ckpt-{dead}-7.tmp")];
        let kept = [
            format!(".g.ckpt-{live}-1.tmp"),
            format!(".h.ckpt-{dead}-2.tmp"),
            format!(".i.ckpt-{dead}-x.tmp"),
        ];
        for name in stale.iter().chain(&kept) {
            fs::write(a.path(name), b"partial").unwrap();
            if a.who == As::Nobody {
                sh("chown", &[&"-h", &format!("{NOBODY}:{NOBODY}"), &a.path(name)]);
            }
        }
        for name in stale.iter().chain(&kept[..1]).chain(&kept[2..]) {
            sh("touch", &[&"-h", &"-d", &"2020-01-01", &a.path(name)]);
        }
        a.import(&[file("sub/new", b"new\n")], &[], 0);
        for name in &stale {
            assert!(fs::symlink_metadata(a.path(name)).is_err(), "{name} is still there");
        }
        for name in &kept {
            assert!(fs::symlink_metadata(a.path(name)).is_ok(), "{name} was removed");
        }
        assert_eq!(fs::read(a.path("sub/keep")).unwrap(), b"keep\n");
    }
);

// ---------------------------------------------------------------------------
// 7. Deep trees
// ---------------------------------------------------------------------------

/// Opens `parts` below `root` one component at a time (the path is longer than PATH_MAX).
fn open_deep(root: &Path, parts: &[&str]) -> rustix::fd::OwnedFd {
    use rustix::fs::{Mode, OFlags};
    let mut fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    for part in parts {
        fd = rustix::fs::openat(&fd, *part, OFlags::RDONLY | OFlags::NOFOLLOW, Mode::empty())
            .unwrap_or_else(|e| panic!("open {part} below {}: {e}", root.display()));
    }
    fd
}

as_root_and_nobody!(
    a_tree_3000_levels_deep_restores_as_root,
    a_tree_3000_levels_deep_restores_as_nobody,
    |a: Area| {
        const DEPTH: usize = 3000;
        let mut members = Vec::new();
        let mut path = String::new();
        for level in 0..DEPTH {
            path.push_str("dd/");
            members.push(
                dir(&path)
                    .mode(if level % 2 == 0 { 0o750 } else { 0o705 })
                    .mtime(1_000_000_000 + level as i64),
            );
        }
        members.push(file(format!("{path}bottom"), b"the bottom\n").mtime(999));
        members.push(link(&format!("{path}hard"), b'1', &format!("{path}bottom")));
        assert!(path.len() > 4096);
        a.import(&members, &[], 0);
        let parts = vec!["dd"; DEPTH];
        let bottom = open_deep(&a.dest, &[&parts[..], &["bottom"]].concat());
        assert_eq!(
            fs::read(format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&bottom))).unwrap(),
            b"the bottom\n"
        );
        let deepest = rustix::fs::fstat(open_deep(&a.dest, &parts)).unwrap();
        assert_eq!((deepest.st_mode & 0o7777, deepest.st_mtime), (0o705, 1_000_000_000 + DEPTH as i64 - 1));
        let hard = rustix::fs::fstat(open_deep(&a.dest, &[&parts[..], &["hard"]].concat())).unwrap();
        assert_eq!(hard.st_nlink, 2);
        // Cleaning up a tree this deep needs a tool that does not build whole paths.
        sh("rm", &[&"-rf", &a.dest]);
    }
);

// ---------------------------------------------------------------------------
// 8. Memory per deferred directory
// ---------------------------------------------------------------------------

#[test]
fn deferred_directory_memory_does_not_grow_with_their_path_length() {
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    // 3 KB of path above every directory: 30 levels of 100-byte names.
    let prefix: String = (0..30).map(|i| format!("{i:02}{}/", "p".repeat(98))).collect();
    let mut rss = Vec::new();
    for count in [1_000usize, 10_000] {
        let mut members = vec![dir(&prefix)];
        members.extend((0..count).map(|i| dir(format!("{prefix}{i:06}/")).mode(0o750)));
        let archive = tmp.path().join(format!("{count}.tar"));
        fs::write(&archive, tar(&members)).unwrap();
        let dest = tmp.path().join(format!("dest-{count}"));
        let Some(kib) = peak_rss_kib(&[&"import", &archive, &dest]) else { return };
        rss.push(kib);
        assert_eq!(mode_of(&dest.join(format!("{prefix}{:06}", count - 1))), 0o750);
        fs::remove_file(&archive).unwrap();
    }
    eprintln!("import: peak RSS {} KiB for 1,000 deferred directories, {} KiB for 10,000", rss[0], rss[1]);
    // ~100 bytes and a name each; their 3 KB paths held would be 27 MB more.
    assert!(rss[1] < rss[0] + 4096, "peak RSS grew from {} KiB to {} KiB", rss[0], rss[1]);
}

// ---------------------------------------------------------------------------
// 9. podman's replaced directories in a layer
// ---------------------------------------------------------------------------

/// A podman checkpoint archive: `inner` as rootfs-diff.tar, `deleted` as deleted.files.
fn podman_archive(inner: &[M], deleted: &str) -> Vec<u8> {
    Bundle::new()
        .file("config.dump", "{}")
        .file("checkpoint/inventory.img", "inventory")
        .file("rootfs-diff.tar", tar(inner))
        .file("deleted.files", deleted)
        .archive()
}

#[test]
fn a_directory_podman_deletes_and_brings_back_becomes_opaque_in_the_layer() {
    let Some(a) = Area::new(As::Root) else { return };
    let lower = a.work.join("lower");
    fs::create_dir_all(lower.join("d/old-sub")).unwrap();
    fs::write(lower.join("d/old.txt"), b"old\n").unwrap();
    fs::write(lower.join("gone"), b"gone\n").unwrap();
    let inner = [
        dir("d/").mode(0o755),
        file("d/new.txt", b"new\n").xattr("trusted.overlay.origin", b"\0foreign").xattr("user.keep", b"k"),
        dir("e/").xattr("trusted.overlay.impure", b"y").xattr("trusted.overlay.opaque", b"x"),
        file("e/f", b"f").xattr("trusted.overlay.metacopy", b"").xattr("trusted.overlay.redirect", b"/x"),
        file("w", b"").xattr("trusted.overlay.whiteout", b"y"),
    ];
    let archive = a.write_archive("a.tar", &podman_archive(&inner, r#"["/d","/gone"]"#));
    let upper = a.work.join("upper");
    let bundle = a.work.join("bundle");
    let out = a.ckpt(&[&"import", &"--rootfs-diff", &upper, &archive, &bundle]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(xattrs(&upper.join("d")).get("trusted.overlay.opaque").map(Vec::as_slice), Some(&b"y"[..]));
    for rel in ["d", "d/new.txt", "e", "e/f", "w"] {
        let overlay: Vec<_> =
            xattrs(&upper.join(rel)).into_keys().filter(|k| k.starts_with("trusted.overlay.")).collect();
        let expected: &[&str] = if rel == "d" { &["trusted.overlay.opaque"] } else { &[] };
        assert_eq!(overlay, expected, "{rel}: overlay-private xattrs written into the layer");
    }
    assert_eq!(xattrs(&upper.join("d/new.txt")).get("user.keep").map(Vec::as_slice), Some(&b"k"[..]));
    fs::remove_dir_all(&bundle).unwrap();

    let merged = a.work.join("merged");
    let workdir = a.work.join("ovl-work");
    let guard = Mount::overlay(std::slice::from_ref(&lower), &upper, &workdir, &merged);
    let mut names: Vec<_> = fs::read_dir(merged.join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(
        names,
        vec![OsStr::new("new.txt").to_os_string()],
        "the merged /d shows the image's old entries"
    );
    assert_eq!(fs::read(merged.join("d/new.txt")).unwrap(), b"new\n");
    assert!(fs::symlink_metadata(merged.join("gone")).is_err(), "/gone is still visible");
    drop(guard);
    for dir in [&upper, &workdir, &merged] {
        let _ = fs::remove_dir_all(dir);
    }
}

#[test]
fn an_oci_whiteout_followed_by_the_same_directory_makes_it_opaque() {
    let Some(a) = Area::new(As::Root) else { return };
    let inner = [file(".wh.d", b""), dir("d/"), file("d/new", b"n")];
    let archive = a.write_archive("a.tar", &podman_archive(&inner, "[]"));
    let upper = a.work.join("upper");
    let bundle = a.work.join("bundle");
    let out = a.ckpt(&[&"import", &"--rootfs-diff", &upper, &archive, &bundle]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(upper.join("d").is_dir());
    assert_eq!(xattrs(&upper.join("d")).get("trusted.overlay.opaque").map(Vec::as_slice), Some(&b"y"[..]));
    assert_eq!(temp_names(&upper), Vec::<String>::new());
    for dir in [&upper, &bundle] {
        fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn a_5000_byte_name_fails_alone_and_is_named_on_stderr() {
    let Some(a) = Area::new(As::Root) else { return };
    let long = format!("top/{}", "x".repeat(5000));
    let out = a.import(&[dir("top"), file(&long, b"x"), file("top/ok", b"ok")], &[], 1);
    assert!(stderr_of(&out).contains(&long), "{}", describe(&out));
    assert_eq!(fs::read(a.path("top/ok")).unwrap(), b"ok");
}
