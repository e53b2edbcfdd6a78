//! Container checkpoints in podman's layout (issue "P2 · Container checkpoints").
//!
//! A real overlay (two lower dirs, an upper dir, a workdir) is mounted on a scratch Btrfs or
//! XFS, changed through the mount (files added, modified, deleted, a directory replaced,
//! xattrs, hardlinks, a symlink, mode and owner changes), and a CRIU-shaped bundle (with a
//! 1 GiB sparse pages image) is built beside it. Then:
//!
//! * `ckpt export --rootfs MOUNT`: the outer layout (names, order, `checkpoint/`,
//!   `rootfs-diff.tar`, `deleted.files`) is checked with GNU tar and Python's tarfile, the
//!   nested tar's members' data offsets (outer + inner) are aligned, no `trusted.overlay.*`
//!   leaks into its pax headers, and every full data block is physically shared with its
//!   source (filefrag -v physical addresses, btrfs filesystem du, filefrag "shared").
//! * `ckpt import --rootfs-diff NEWUPPER`: a new overlay over the SAME lower dirs and the new
//!   upper shows the same merged view; the bundle is restored (sparse pages with holes); the
//!   restored files share extents with the archive.
//! * `--whiteouts oci` writes and reads `.wh.` entries.
//! * Archives in podman's layout made by GNU tar (plain, zstd, gzip, via stdin) import into a
//!   fresh upper and into a plain directory.
//! * Errors: not an overlay mount, no checkpoint/inventory.img, metacopy/redirect uppers.
//!
//! Every overlay mount is held by a guard that unmounts it before the scratch filesystem
//! goes away, also when a test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::*;

/// The alignment ckpt must use on these filesystems (4096-byte blocks).
const BLOCK: u64 = 4096;

// ---------------------------------------------------------------------------
// Tree comparison
// ---------------------------------------------------------------------------

/// Relative paths (no leading `./`, no trailing `/`) of every entry below `root`, root
/// excluded, with their metadata; sorted.
fn entries(root: &Path) -> BTreeMap<String, fs::Metadata> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .map(|e| {
            let e = e.unwrap_or_else(|e| panic!("walk {}: {e}", root.display()));
            let rel = e.path().strip_prefix(root).unwrap().to_str().expect("UTF-8 name").to_string();
            (rel, fs::symlink_metadata(e.path()).unwrap())
        })
        .collect()
}

/// Compares two trees except for their roots' own metadata: the same top-level names
/// (minus `exclude` in `a`), and each top-level directory equal per [`assert_trees_equal`].
/// Top-level non-directories are compared with [`assert_same_entry`].
fn assert_children_equal(a: &Path, b: &Path, exclude: &[&str]) {
    let names = |dir: &Path, exclude: &[&str]| -> Vec<String> {
        dir_names(dir)
            .into_iter()
            .map(|n| n.into_string().unwrap())
            .filter(|n| !exclude.contains(&n.as_str()))
            .collect()
    };
    assert_eq!(
        names(a, exclude),
        names(b, &[]),
        "top-level entries of {} (expected) and {} differ",
        a.display(),
        b.display()
    );
    for name in names(a, exclude) {
        if fs::symlink_metadata(a.join(&name)).unwrap().is_dir() {
            assert_trees_equal(&a.join(&name), &b.join(&name));
        } else {
            assert_same_entry(&a.join(&name), &b.join(&name), false);
        }
    }
}

/// Compares two bundle trees entry by entry (the roots' own metadata excluded): type, mode,
/// owner, mtime, size, content, xattrs. With `holes`, the data ranges must be equal too and
/// content is compared in them only, so a 1 GiB sparse pages image is cheap to compare.
fn assert_bundles_equal(a: &Path, b: &Path, holes: bool) {
    let (ea, eb) = (entries(a), entries(b));
    assert_eq!(
        ea.keys().collect::<Vec<_>>(),
        eb.keys().collect::<Vec<_>>(),
        "entries of the bundles {} and {}",
        a.display(),
        b.display()
    );
    for rel in ea.keys() {
        assert_same_entry(&a.join(rel), &b.join(rel), holes);
    }
}

/// One entry (not a tree): type, mode, owner, mtime, xattrs; size and content of a regular
/// file (with `holes`: equal data ranges and equal bytes in them); a symlink's target.
fn assert_same_entry(a: &Path, b: &Path, holes: bool) {
    let (ma, mb) = (fs::symlink_metadata(a).unwrap(), fs::symlink_metadata(b).unwrap());
    let what = format!("{} vs {}", a.display(), b.display());
    assert_eq!(ma.mode(), mb.mode(), "{what}: type and mode");
    assert_eq!((ma.uid(), ma.gid()), (mb.uid(), mb.gid()), "{what}: owner");
    assert_eq!((ma.mtime(), ma.mtime_nsec()), (mb.mtime(), mb.mtime_nsec()), "{what}: mtime");
    assert_eq!(xattrs(a), xattrs(b), "{what}: xattrs");
    if ma.file_type().is_symlink() {
        assert_eq!(fs::read_link(a).unwrap(), fs::read_link(b).unwrap(), "{what}: symlink target");
    }
    if ma.is_file() && !holes {
        assert_eq!(ma.len(), mb.len(), "{what}: size");
        assert_same_bytes(a, b);
    } else if ma.is_file() {
        assert_eq!(ma.len(), mb.len(), "{what}: size");
        let ranges = data_ranges(a);
        assert_eq!(ranges, data_ranges(b), "{what}: data ranges (holes)");
        let (fa, fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
        for (start, end) in ranges {
            let mut off = start;
            while off < end {
                let n = (end - off).min(4 << 20) as usize;
                let (mut ba, mut bb) = (vec![0u8; n], vec![0u8; n]);
                fa.read_exact_at(&mut ba, off).unwrap();
                fb.read_exact_at(&mut bb, off).unwrap();
                assert!(ba == bb, "{what}: content differs in [{off}, {})", off + n as u64);
                off += n as u64;
            }
        }
    }
}

/// Sets distinct mtimes (with nanoseconds) on every entry below `root` (root included),
/// contents before their directory.
fn set_distinct_mtimes(root: &Path, base: i64) {
    for (i, path) in entries_contents_first(root).iter().enumerate() {
        let i = i as i64;
        set_mtime(path, base + i * 977, 100_000_001 + i * 13_131_313 % 800_000_000);
    }
}

// ---------------------------------------------------------------------------
// Physical sharing, with physical addresses (filefrag -v)
// ---------------------------------------------------------------------------

/// Physical address of the byte at `offset` per `extents`, and its extent.
fn phys_at(extents: &[Extent], offset: u64) -> Option<(u64, &Extent)> {
    let i = extents.partition_point(|e| e.logical + e.length <= offset);
    let e = extents.get(i)?;
    (e.logical <= offset).then(|| (e.physical + (offset - e.logical), e))
}

/// Bytes of `file`'s data (SEEK_DATA ranges) in whole blocks before its unaligned tail.
fn full_data_blocks(file: &Path) -> u64 {
    let full = fs::metadata(file).unwrap().len() / BLOCK * BLOCK;
    data_ranges(file).iter().map(|&(s, e)| e.min(full).saturating_sub(s) / BLOCK * BLOCK).sum()
}

/// Asserts that every whole data block of `file` is the very same physical block as the
/// archive's block at `archive_offset` + its offset, flagged shared in both. Returns the
/// bytes checked (at least [`full_data_blocks`]).
fn assert_blocks_shared(file: &Path, archive: &Path, archive_offset: u64, what: &str) -> u64 {
    assert_eq!(
        archive_offset % BLOCK,
        0,
        "{what}: data offset {archive_offset} in the archive is not aligned"
    );
    let full = fs::metadata(file).unwrap().len() / BLOCK * BLOCK;
    let src = filefrag(file);
    let arc = filefrag(archive);
    let mut checked = 0;
    let mut bad = Vec::new();
    for e in &src {
        if e.has_flag("unwritten") {
            continue; // preallocated, reads as zeros: a hole as far as data goes
        }
        if ["inline", "unknown", "delalloc", "encoded"].iter().any(|f| e.has_flag(f)) {
            bad.push(format!("{what}: extent at {} has flags {} (not a plain extent)", e.logical, e.flags));
            continue;
        }
        let end = (e.logical + e.length).min(full);
        let mut off = e.logical;
        while off < end {
            let want = e.physical + (off - e.logical);
            match phys_at(&arc, archive_offset + off) {
                Some((p, a)) if p == want && a.shared() && e.shared() => checked += BLOCK,
                other => bad.push(format!(
                    "{what}: block at {off} (physical {want}, flags {}) vs archive offset {}: {other:?}",
                    e.flags,
                    archive_offset + off
                )),
            }
            off += BLOCK;
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} blocks of {} not shared with {} at offset {archive_offset}; first ones:\n  {}",
        bad.len(),
        file.display(),
        archive.display(),
        bad.iter().take(10).cloned().collect::<Vec<_>>().join("\n  ")
    );
    let want = full_data_blocks(file);
    assert!(
        checked >= want,
        "{what}: only {checked} of {want} whole data bytes of {} are mapped",
        file.display()
    );
    checked
}

/// Shared bytes of `path` as the filesystem's own tool reports them: `btrfs filesystem du`
/// "Set shared" on Btrfs, extents flagged "shared" by `filefrag -v` on XFS.
fn fs_shared_bytes(kind: FsKind, path: &Path) -> u64 {
    match kind {
        FsKind::Btrfs => btrfs_shared_bytes(path),
        _ => xfs_shared_blocks(path).0,
    }
}

// ---------------------------------------------------------------------------
// Independent reader of the outer and the nested tar (Python tarfile)
// ---------------------------------------------------------------------------

/// The outer archive, its nested `rootfs-diff.tar` and its `deleted.files`, per Python's
/// tarfile.
fn py_layout(archive: &Path) -> PyListing {
    python_members(archive, Some("rootfs-diff.tar"), Some("deleted.files"))
}

/// Member names exactly as stored, per GNU tar.
fn gnu_tar_names(archive: &Path) -> Vec<String> {
    sh("tar", &[&"-tf", &archive]).lines().map(str::to_string).collect()
}

// ---------------------------------------------------------------------------
// The CRIU-shaped bundle
// ---------------------------------------------------------------------------

/// The data islands of a pages image of `size` bytes: at the start, two inside, at the end.
fn pages_islands(size: u64) -> Vec<(u64, u64)> {
    let at = |num: u64| size * num / 10 / BLOCK * BLOCK;
    vec![(0, 64 << 10), (at(3), (1 << 20) + 3 * BLOCK), (at(7) + 5 * BLOCK, 2 * BLOCK), (size - BLOCK, BLOCK)]
}

const BUNDLE_NAMES: [&str; 11] = [
    "config.dump",
    "spec.dump",
    "checkpoint/",
    "checkpoint/core-1.img",
    "checkpoint/inventory.img",
    "checkpoint/pagemap-1.img",
    "checkpoint/pages-1.img",
    "network.status",
    "stats-dump",
    "rootfs-diff.tar",
    "deleted.files",
];

/// A checkpoint bundle as podman leaves it before export: CRIU images in `checkpoint/`
/// (pages-1.img of `pages_size` bytes, sparse), libpod's config and the OCI spec.
fn make_bundle(dir: &Path, pages_size: u64) {
    let islands = pages_islands(pages_size)
        .into_iter()
        .enumerate()
        .map(|(i, (off, len))| (off, pseudo_random_bytes(910 + i as u64, len as usize)))
        .collect();
    Bundle::new()
        .file(
            "config.dump",
            br#"{"id":"4f1c0d7e9a","name":"ckpt-test","rootfsImageName":"docker.io/library/debian:12","createCommand":["podman","run","debian"]}"#,
        )
        .file(
            "spec.dump",
            br#"{"ociVersion":"1.1.0","process":{"args":["sleep","inf"]},"root":{"path":"/var/lib/containers/storage/overlay/x/merged"},"annotations":{"io.container.manager":"libpod","io.podman.annotations.autoremove":"FALSE"}}"#,
        )
        .file("network.status", b"[]")
        .file("stats-dump", pseudo_random_bytes(900, 600))
        .file("checkpoint/inventory.img", pseudo_random_bytes(901, 52))
        .file("checkpoint/core-1.img", pseudo_random_bytes(902, 6000))
        .file("checkpoint/pagemap-1.img", pseudo_random_bytes(903, 212))
        .sparse("checkpoint/pages-1.img", pages_size, islands)
        .write(dir);
}

fn check_sparse_pages(pages: &Path, size: u64) {
    let md = fs::metadata(pages).unwrap();
    assert_eq!(md.len(), size, "{}", pages.display());
    let data: u64 = pages_islands(size).iter().map(|&(_, l)| l).sum();
    assert!(
        allocated_bytes(pages) <= data + (256 << 10),
        "{} is not sparse: {} bytes allocated for {data} bytes of data",
        pages.display(),
        allocated_bytes(pages)
    );
}

// ---------------------------------------------------------------------------
// The container: an overlay changed through its mount
// ---------------------------------------------------------------------------

/// Paths deleted through the mount (whiteouts) and the lower entries that the replaced
/// directory `/opt/app` hides (from both lower dirs).
const DELETED: [&str; 7] = [
    "/etc/old.conf",
    "/etc/old2.conf",
    "/opt/app/four",
    "/opt/app/one",
    "/opt/app/sub",
    "/opt/app/two",
    "/var/cache/gone",
];
/// The kernel whiteouts in the upper dir.
const WHITEOUTS: [&str; 3] = ["etc/old.conf", "etc/old2.conf", "var/cache/gone"];
const BIG: &str = "new/big.bin";
const BIG_SIZE: u64 = (6 << 20) + 123;
const PAGES_SIZE: u64 = 1 << 30;

struct Container {
    // Fields drop in order: the overlay mounts go before the scratch filesystem.
    _mount: Mount,
    s: Scratch,
}

impl Container {
    fn path(&self, rel: &str) -> PathBuf {
        self.s.path(rel)
    }

    fn lowers(&self) -> Vec<PathBuf> {
        vec![self.path("lower1"), self.path("lower2")]
    }
}

fn make_lowers(s: &Scratch) {
    let l2 = |rel: &str| s.path("lower2").join(rel);
    write_with_parents(&l2("etc/os-release"), b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n");
    write_with_parents(&l2("etc/old.conf"), b"old = true\n");
    write_with_parents(&l2("etc/passwd"), b"root:x:0:0:root:/root:/bin/bash\n");
    write_with_parents(&l2("usr/lib/libfoo.so"), &pseudo_random_bytes(200, 65541));
    write_with_parents(&l2("usr/share/doc/readme"), b"read me\n");
    write_with_parents(&l2("opt/app/one"), b"one\n");
    write_with_parents(&l2("opt/app/two"), &pseudo_random_bytes(201, 5000));
    write_with_parents(&l2("opt/app/sub/three"), b"three\n");
    write_with_parents(&l2("var/cache/gone/a"), b"a\n");
    write_with_parents(&l2("var/cache/gone/b"), &pseudo_random_bytes(202, 9000));
    write_with_parents(&l2("var/cache/keep"), b"keep\n");
    write_with_parents(&l2("data/modify.bin"), &pseudo_random_bytes(203, 20000));
    write_with_parents(&l2("data/chmod-me"), b"chmod me\n");
    write_with_parents(&l2("data/chown-me"), b"chown me\n");
    set_xattr(&l2("data/chown-me"), "user.lower", b"from the lower layer");
    let l1 = |rel: &str| s.path("lower1").join(rel);
    write_with_parents(&l1("etc/hostname"), b"lower1\n");
    write_with_parents(&l1("etc/old2.conf"), b"old2\n");
    write_with_parents(&l1("opt/app/four"), b"four\n");
    write_with_parents(&l1("usr/bin/tool"), &pseudo_random_bytes(204, 9000));
    chmod(&l1("usr/bin/tool"), 0o755);
    set_distinct_mtimes(&s.path("lower2"), 1_500_000_000);
    set_distinct_mtimes(&s.path("lower1"), 1_550_000_000);
}

/// Changes the container's rootfs through its overlay mount at `m`.
fn change_through_mount(m: &Path) {
    let p = |rel: &str| m.join(rel);
    // Added files: a multi-MiB one, a 4097-byte one, hardlinks, symlinks.
    fs::create_dir(p("new")).unwrap();
    write_with_parents(&p(BIG), &pseudo_random_bytes(300, BIG_SIZE as usize));
    write_with_parents(&p("new/f4097"), &pseudo_random_bytes(301, 4097));
    write_with_parents(&p("new/small.txt"), b"small\n");
    write_with_parents(&p("new/hl-a"), &pseudo_random_bytes(302, 10000));
    fs::hard_link(p("new/hl-a"), p("new/hl-b")).unwrap();
    symlink("../etc/hostname", &p("new/link"));
    symlink("/usr/bin/tool", &p("lnk"));
    // Modified (copied up).
    let f = fs::OpenOptions::new().write(true).open(p("data/modify.bin")).unwrap();
    f.write_all_at(b"PATCHED IN THE CONTAINER", 5000).unwrap();
    drop(f);
    let mut f = fs::OpenOptions::new().append(true).open(p("usr/bin/tool")).unwrap();
    std::io::Write::write_all(&mut f, b"appended\n").unwrap();
    drop(f);
    // Deleted: two files from different lower dirs, a whole lower directory.
    fs::remove_file(p("etc/old.conf")).unwrap();
    fs::remove_file(p("etc/old2.conf")).unwrap();
    fs::remove_dir_all(p("var/cache/gone")).unwrap();
    // A directory replaced: opaque in the upper dir.
    fs::remove_dir_all(p("opt/app")).unwrap();
    fs::create_dir(p("opt/app")).unwrap();
    write_with_parents(&p("opt/app/new.txt"), b"new app\n");
    // Xattrs.
    set_xattr(&p(BIG), "user.note", b"a big new file");
    set_xattr(&p("new/f4097"), "user.bin", &[0, 1, b'\n', 0xff, b'=', 0]);
    set_xattr(&p("data/modify.bin"), "user.changed", b"yes");
    set_xattr(&p("new"), "user.dir", b"a new directory");
    // Modes and owners.
    chmod(&p("data/chmod-me"), 0o600);
    chown(&p("data/chown-me"), 1234, 5678);
    chown(&p("new/small.txt"), 42, 43);
    chmod(&p("new/small.txt"), 0o640);
    chown(&p("lnk"), 7, 8);
    chmod(&p("new"), 0o750);
    // Times with nanoseconds.
    set_mtime(&p(BIG), 1_700_000_000, 123_456_789);
    set_mtime(&p("new/f4097"), 1_650_000_000, 1);
    set_mtime(&p("new/link"), 1_600_000_123, 5);
    set_mtime(&p("data/chmod-me"), 1_600_000_456, 999_999_999);
}

/// The overlay and the bundle on a fresh `kind` filesystem, or None when it is unavailable.
fn container(kind: FsKind) -> Option<Container> {
    let s = scratch(kind)?;
    make_lowers(&s);
    let mount = Mount::overlay(
        &[s.path("lower1"), s.path("lower2")],
        &s.path("upper"),
        &s.path("work"),
        &s.path("merged"),
    );
    let c = Container { _mount: mount, s };
    change_through_mount(&c.path("merged"));
    make_bundle(&c.path("bundle"), PAGES_SIZE);
    fs::create_dir(c.path("out")).unwrap();

    // The upper dir is what the tests think it is.
    let upper = c.path("upper");
    for w in WHITEOUTS {
        assert!(is_whiteout(&upper.join(w)), "setup: {w} is not a whiteout in the upper dir");
    }
    assert_eq!(
        xattrs(&upper.join("opt/app")).get("trusted.overlay.opaque").map(Vec::as_slice),
        Some(&b"y"[..]),
        "setup: opt/app is not opaque in the upper dir"
    );
    assert!(
        entries(&upper).keys().any(|rel| xattrs(&upper.join(rel))
            .keys()
            .any(|k| k.starts_with("trusted.overlay."))
            && !is_whiteout(&upper.join(rel))
            && rel != "opt/app"),
        "setup: the kernel wrote no overlay-internal xattrs (origin/impure) into the upper dir"
    );
    let (a, b) =
        (fs::symlink_metadata(upper.join(WHITEOUTS[0])), fs::symlink_metadata(upper.join(WHITEOUTS[1])));
    if a.unwrap().ino() != b.unwrap().ino() {
        eprintln!("note: this kernel's whiteouts are not hardlinks of one inode");
    }
    Some(c)
}

// ---------------------------------------------------------------------------
// Export checks
// ---------------------------------------------------------------------------

fn outer_member<'a>(layout: &'a PyListing, name: &str) -> &'a PyMember {
    layout
        .members
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no member {name} in the archive"))
}

fn inner_member<'a>(inner: &'a [PyMember], name: &str) -> &'a PyMember {
    inner.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no member {name} in rootfs-diff.tar"))
}

/// The outer archive: names as stored, order, types, alignment.
fn check_outer_layout(archive: &Path, layout: &PyListing, with_deleted: bool) {
    let names = gnu_tar_names(archive);
    let expected: Vec<&str> =
        BUNDLE_NAMES.iter().copied().filter(|n| with_deleted || *n != "deleted.files").collect();
    assert_eq!(
        &names[..2],
        ["config.dump", "spec.dump"],
        "config.dump and spec.dump must come first: {names:?}"
    );
    for n in &names {
        assert!(!n.starts_with("./") && !n.starts_with('/'), "member name {n:?} is not bundle-relative");
    }
    assert_eq!(
        names.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        expected.iter().copied().collect::<BTreeSet<_>>(),
        "outer member names"
    );
    assert_eq!(names.len(), expected.len(), "duplicate outer members: {names:?}");
    let last: Vec<&str> =
        names[names.len() - if with_deleted { 2 } else { 1 }..].iter().map(String::as_str).collect();
    let want_last: &[&str] =
        if with_deleted { &["rootfs-diff.tar", "deleted.files"] } else { &["rootfs-diff.tar"] };
    assert_eq!(last, want_last, "rootfs-diff.tar (then deleted.files) must come after the bundle: {names:?}");
    let cp = names.iter().position(|n| n == "checkpoint/").unwrap();
    assert!(
        names.iter().enumerate().all(|(i, n)| !n.starts_with("checkpoint/") || n == "checkpoint/" || i > cp),
        "checkpoint/ must precede its members: {names:?}"
    );
    // Python agrees on types and sees aligned data.
    assert_eq!(outer_member(layout, "checkpoint").ty, "5", "checkpoint/ is not a directory member");
    for m in &layout.members {
        if m.ty == "0" && m.size >= BLOCK {
            assert_eq!(m.offset % BLOCK, 0, "outer member {} data at {} is not aligned", m.name, m.offset);
        }
    }
    let rd = outer_member(layout, "rootfs-diff.tar");
    assert_eq!(rd.ty, "0", "rootfs-diff.tar is not a regular file member");
    assert_eq!(rd.offset % BLOCK, 0, "rootfs-diff.tar's data at {} is not aligned", rd.offset);
}

/// The nested tar: the upper dir's entries (minus whiteouts), aligned relative to the outer
/// file, no overlay-internal xattrs, whiteouts not turned into hardlinks or devices.
fn check_inner(upper: &Path, inner: &[PyMember], oci_markers: &[&str]) {
    let mut want: BTreeSet<String> = entries(upper)
        .into_iter()
        .filter(|(rel, _)| !is_whiteout(&upper.join(rel)))
        .map(|(rel, _)| rel)
        .collect();
    want.extend(oci_markers.iter().map(|s| s.to_string()));
    // An entry for the upper dir itself (the container's `/`) may lead the nested tar.
    let inner = match inner.first() {
        Some(root) if root.name == "." => {
            assert_eq!(root.ty, "5", "rootfs-diff.tar's root entry is not a directory");
            &inner[1..]
        }
        _ => inner,
    };
    let got: BTreeSet<String> = inner.iter().map(|m| m.name.clone()).collect();
    assert_eq!(got, want, "members of rootfs-diff.tar vs the upper dir's entries");
    assert_eq!(got.len(), inner.len(), "duplicate members in rootfs-diff.tar");
    for m in inner {
        assert!(!m.name.starts_with("./") && !m.name.starts_with('/'), "inner name {:?}", m.name);
        assert!(m.ty != "3" && m.ty != "4", "{}: device member in rootfs-diff.tar (a whiteout?)", m.name);
        if m.ty == "0" && m.size >= BLOCK {
            assert_eq!(
                m.offset % BLOCK,
                0,
                "{}: data at outer offset {} (outer + inner) is not aligned",
                m.name,
                m.offset
            );
        }
        for key in &m.pax {
            assert!(
                !key.contains("trusted.overlay.") && !key.contains("user.overlay."),
                "{}: overlay-internal xattr in the pax header: {key}",
                m.name
            );
        }
        if m.name.rsplit('/').next().unwrap().starts_with(".wh.") {
            assert_eq!(
                (m.ty.as_str(), m.size),
                ("0", 0),
                "{}: OCI marker must be an empty regular file",
                m.name
            );
        }
    }
    let links: Vec<(&str, &str)> =
        inner.iter().filter(|m| m.ty == "1").map(|m| (m.name.as_str(), m.linkname.as_str())).collect();
    assert_eq!(links, [("new/hl-b", "new/hl-a")], "hardlink members of rootfs-diff.tar");
    for (name, key) in [
        (BIG, "SCHILY.xattr.user.note"),
        ("new/f4097", "SCHILY.xattr.user.bin"),
        ("new", "SCHILY.xattr.user.dir"),
    ] {
        assert!(inner_member(inner, name).pax.iter().any(|k| k == key), "{name}: no {key} in its pax header");
    }
    for name in [BIG, "new/f4097"] {
        let m = inner_member(inner, name);
        assert_eq!(m.offset % BLOCK, 0, "{name}: data at outer offset {} is not aligned", m.offset);
    }
}

/// Every source file's whole blocks are the archive's; the archive keeps the pages' holes.
fn check_export_sharing(kind: FsKind, c: &Container, archive: &Path, layout: &PyListing) {
    let inner = layout.nested.as_ref().unwrap();
    let mut sources: Vec<(PathBuf, u64, String)> = Vec::new();
    for rel in ["checkpoint/core-1.img", "checkpoint/pages-1.img"] {
        sources.push((c.path("bundle").join(rel), outer_member(layout, rel).offset, rel.to_string()));
    }
    for rel in [BIG, "new/f4097", "new/hl-a", "data/modify.bin", "usr/bin/tool"] {
        sources.push((c.path("upper").join(rel), inner_member(inner, rel).offset, format!("upper/{rel}")));
    }
    let mut total = 0;
    for (file, offset, what) in &sources {
        let checked = assert_blocks_shared(file, archive, *offset, what);
        let reported = fs_shared_bytes(kind, file);
        assert!(
            reported >= full_data_blocks(file),
            "{what}: the filesystem reports {reported} shared bytes of {} for {}",
            full_data_blocks(file),
            file.display()
        );
        total += checked;
    }
    let reported = fs_shared_bytes(kind, archive);
    assert!(
        reported >= total,
        "archive: the filesystem reports {reported} shared bytes, expected >= {total}"
    );
    // The 1 GiB pages image keeps its holes inside the archive.
    let size = fs::metadata(archive).unwrap().len();
    assert!(size > PAGES_SIZE, "archive of {size} bytes cannot hold the pages image");
    assert!(
        allocated_bytes(archive) < 32 << 20,
        "archive of {size} bytes has {} bytes allocated: the pages image's holes were filled",
        allocated_bytes(archive)
    );
}

fn expected_deleted() -> BTreeSet<String> {
    DELETED.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------
// Import checks
// ---------------------------------------------------------------------------

/// The restored bundle: every file as in the original (pages with their holes), and no
/// rootfs-diff.tar or deleted.files (they went to the layer).
fn check_restored_bundle(orig: &Path, restored: &Path, pages_size: u64) {
    assert_bundles_equal(orig, restored, true);
    let (a, b) = (orig.join("checkpoint/pages-1.img"), restored.join("checkpoint/pages-1.img"));
    assert_eq!(data_ranges(&b), data_ranges(&a), "the restored pages image's data ranges (holes lost?)");
    check_sparse_pages(&b, pages_size);
}

/// The merged views are equal: everything below the root first, then the root itself (the
/// upper dir's own mode, owner, mtime and xattrs are the container's `/`).
fn assert_merged_equal(orig: &Path, restored: &Path) {
    assert_children_equal(orig, restored, &[]);
    assert_trees_equal(orig, restored);
}

fn check_no_host_overlay_xattrs(upper: &Path, opaque_allowed: &[&str]) {
    for rel in entries(upper).keys() {
        for k in xattrs(&upper.join(rel)).keys() {
            if k.starts_with("trusted.overlay.") {
                assert!(
                    k == "trusted.overlay.opaque" && opaque_allowed.contains(&rel.as_str()),
                    "{rel}: overlay xattr {k} in the restored upper dir"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Tests 1-3: podman's layout, export from the mount, import into a new upper
// ---------------------------------------------------------------------------

fn podman_roundtrip(kind: FsKind) {
    let Some(c) = container(kind) else { return };
    let archive = c.path("out/checkpoint.tar");
    // --clone-min 0: every file with a whole block is cloned, small ones too, so that sharing
    // proves every file (in both tars) is aligned where the filesystem needs it.
    let v = ckpt_json(&[
        &"export",
        &"--json",
        &"--clone-min",
        &"0",
        &"--rootfs",
        &c.path("merged"),
        &c.path("bundle"),
        &archive,
    ]);
    assert!(json_u64(&v, "bytes_cloned") >= BIG_SIZE, "export cloned too little: {v}");
    assert_eq!(dir_names(&c.path("out")), ["checkpoint.tar"], "export left other files beside OUT");

    let layout = py_layout(&archive);
    check_outer_layout(&archive, &layout, true);
    let inner = layout.nested.as_ref().expect("no rootfs-diff.tar");
    check_inner(&c.path("upper"), inner, &[]);
    let deleted: Vec<String> = serde_json::from_str(layout.text.as_deref().expect("no deleted.files"))
        .expect("deleted.files is JSON");
    let deleted_set: BTreeSet<String> = deleted.iter().cloned().collect();
    assert_eq!(deleted_set.len(), deleted.len(), "duplicates in deleted.files: {deleted:?}");
    assert_eq!(deleted_set, expected_deleted(), "deleted.files");
    check_export_sharing(kind, &c, &archive, &layout);

    // Import into a fresh bundle dir and a fresh upper dir.
    let (bundle2, upper2) = (c.path("bundle2"), c.path("upper2"));
    let v = ckpt_json(&[&"import", &"--json", &"--rootfs-diff", &upper2, &archive, &bundle2]);
    assert!(json_u64(&v, "bytes_cloned") >= BIG_SIZE, "import cloned too little: {v}");
    check_restored_bundle(&c.path("bundle"), &bundle2, PAGES_SIZE);
    for d in &DELETED {
        assert!(is_whiteout(&upper2.join(&d[1..])), "{d}: no whiteout in the restored upper dir");
    }
    check_no_host_overlay_xattrs(&upper2, &[]);
    let big_offset = inner_member(inner, BIG).offset;
    assert_blocks_shared(&upper2.join(BIG), &archive, big_offset, "restored upper/new/big.bin");
    let pages_offset = outer_member(&layout, "checkpoint/pages-1.img").offset;
    assert_blocks_shared(&bundle2.join("checkpoint/pages-1.img"), &archive, pages_offset, "restored pages");
    assert!(fs_shared_bytes(kind, &upper2.join(BIG)) >= full_data_blocks(&upper2.join(BIG)));

    // The same lower dirs under the new upper dir: the same merged view.
    let _mount2 = Mount::overlay(&c.lowers(), &upper2, &c.path("work2"), &c.path("merged2"));
    assert_merged_equal(&c.path("merged"), &c.path("merged2"));
}

#[test]
fn podman_layout_roundtrip_btrfs() {
    podman_roundtrip(FsKind::Btrfs);
}

#[test]
fn podman_layout_roundtrip_xfs() {
    podman_roundtrip(FsKind::Xfs);
}

// ---------------------------------------------------------------------------
// Test 4: OCI whiteouts
// ---------------------------------------------------------------------------

const OCI_MARKERS: [&str; 4] =
    ["etc/.wh.old.conf", "etc/.wh.old2.conf", "opt/app/.wh..wh..opq", "var/cache/.wh.gone"];

fn oci_roundtrip(kind: FsKind) {
    let Some(c) = container(kind) else { return };
    let archive = c.path("out/oci.tar");
    ckpt_ok(&[
        &"export",
        &"--whiteouts",
        &"oci",
        &"--rootfs",
        &c.path("merged"),
        &c.path("bundle"),
        &archive,
    ]);
    let layout = py_layout(&archive);
    check_outer_layout(&archive, &layout, false);
    assert!(layout.text.is_none(), "--whiteouts oci wrote deleted.files");
    let inner = layout.nested.as_ref().expect("no rootfs-diff.tar");
    check_inner(&c.path("upper"), inner, &OCI_MARKERS);
    let markers: BTreeSet<&str> = inner
        .iter()
        .map(|m| m.name.as_str())
        .filter(|n| n.rsplit('/').next().unwrap().starts_with(".wh."))
        .collect();
    assert_eq!(markers, OCI_MARKERS.iter().copied().collect(), "OCI markers in rootfs-diff.tar");
    for m in &OCI_MARKERS {
        let dir = m.rsplit_once('/').unwrap().0;
        let (marker, dir_member) = (
            inner.iter().position(|x| x.name == *m).unwrap(),
            inner.iter().position(|x| x.name == dir).unwrap(),
        );
        assert!(dir_member < marker, "{m} comes before its directory");
    }

    let (bundle2, upper2) = (c.path("bundle2"), c.path("upper2"));
    ckpt_ok(&[&"import", &"--rootfs-diff", &upper2, &archive, &bundle2]);
    check_restored_bundle(&c.path("bundle"), &bundle2, PAGES_SIZE);
    for w in WHITEOUTS {
        assert!(is_whiteout(&upper2.join(w)), "{w}: no whiteout in the restored upper dir");
    }
    assert_eq!(
        xattrs(&upper2.join("opt/app")).get("trusted.overlay.opaque").map(Vec::as_slice),
        Some(&b"y"[..]),
        "opt/app is not opaque in the restored upper dir"
    );
    for rel in entries(&upper2).keys() {
        assert!(!rel.rsplit('/').next().unwrap().starts_with(".wh."), "{rel}: OCI marker left as a file");
    }
    for hidden in ["opt/app/one", "opt/app/two", "opt/app/sub", "opt/app/four"] {
        assert!(
            fs::symlink_metadata(upper2.join(hidden)).is_err(),
            "{hidden}: unexpected entry in the upper"
        );
    }
    check_no_host_overlay_xattrs(&upper2, &["opt/app"]);

    let _mount2 = Mount::overlay(&c.lowers(), &upper2, &c.path("work2"), &c.path("merged2"));
    assert_merged_equal(&c.path("merged"), &c.path("merged2"));
}

#[test]
fn oci_whiteouts_roundtrip_btrfs() {
    oci_roundtrip(FsKind::Btrfs);
}

#[test]
fn oci_whiteouts_roundtrip_xfs() {
    oci_roundtrip(FsKind::Xfs);
}

// ---------------------------------------------------------------------------
// Test 5: archives in podman's layout made by other tools
// ---------------------------------------------------------------------------

const FOREIGN_DELETED: [&str; 2] = ["/etc/old.conf", "/usr/lib/gone"];
const FOREIGN_PAGES: u64 = 8 << 20;

fn ckpt_with_stdin(args: &[Arg], stdin: &Path) -> Output {
    Command::new(ckpt_bin())
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(fs::File::open(stdin).unwrap())
        .output()
        .unwrap()
}

/// Lower layer, changes and deletions of a container, archived by GNU tar.
struct Foreign {
    lower: PathBuf,
    expected_merged: PathBuf,
    bundle: PathBuf,
    stage: PathBuf,
}

fn make_foreign(s: &Scratch) -> Foreign {
    let lower = s.path("flower");
    let l = |rel: &str| lower.join(rel);
    write_with_parents(&l("etc/old.conf"), b"old\n");
    write_with_parents(&l("etc/keep.conf"), b"keep\n");
    set_xattr(&l("etc/keep.conf"), "user.keep", b"kept");
    write_with_parents(&l("usr/lib/gone/a"), b"a\n");
    write_with_parents(&l("usr/lib/gone/b"), &pseudo_random_bytes(500, 7000));
    write_with_parents(&l("usr/lib/libz.so"), &pseudo_random_bytes(501, 5000));
    write_with_parents(&l("data/modify.bin"), &pseudo_random_bytes(502, 8192));
    write_with_parents(&l("data/untouched"), b"untouched\n");
    set_distinct_mtimes(&lower, 1_400_000_000);

    // The changes, as a layer's diff: changed files and their directories.
    let changes = s.path("fchanges");
    let ch = |rel: &str| changes.join(rel);
    write_with_parents(&ch("etc/new.conf"), b"new = 1\n");
    set_xattr(&ch("etc/new.conf"), "user.origin", b"gnu tar");
    fs::create_dir_all(ch("usr/lib")).unwrap();
    write_with_parents(&ch("data/modify.bin"), &pseudo_random_bytes(503, 12345));
    write_with_parents(&ch("data/big.bin"), &pseudo_random_bytes(504, (3 << 20) + 7));
    chown(&ch("data/big.bin"), 1000, 1000);
    chmod(&ch("data/big.bin"), 0o604);
    write_with_parents(&ch("data/hl-1"), &pseudo_random_bytes(505, 4097));
    fs::hard_link(ch("data/hl-1"), ch("data/hl-2")).unwrap();
    symlink("modify.bin", &ch("data/link"));
    chmod(&ch("etc"), 0o711);
    set_distinct_mtimes(&changes, 1_700_000_000);

    // rootfs-diff.tar: every changed entry, listed (parents first), by GNU tar.
    let stage = s.path("fstage");
    fs::create_dir(&stage).unwrap();
    let list: Vec<String> = entries(&changes).into_keys().collect();
    let mut args: Vec<String> = [
        "--format=pax",
        "--xattrs",
        "--xattrs-include=user.*",
        "--numeric-owner",
        "--no-recursion",
        "-C",
        changes.to_str().unwrap(),
        "-cf",
        stage.join("rootfs-diff.tar").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(list);
    let arg_refs: Vec<Arg> = args.iter().map(|a| a as Arg).collect();
    sh("tar", &arg_refs);
    write_with_parents(
        &stage.join("deleted.files"),
        format!("[\n  \"{}\",\n  \"{}\"\n]\n", FOREIGN_DELETED[0], FOREIGN_DELETED[1]).as_bytes(),
    );

    let bundle = s.path("fbundle");
    make_bundle(&bundle, FOREIGN_PAGES);

    // What the container's rootfs must look like: the lower, minus the deletions, plus the
    // changes as GNU tar extracts them.
    let expected = s.path("fexpected");
    sh("cp", &[&"-a", &lower, &expected]);
    for d in FOREIGN_DELETED {
        sh("rm", &[&"-rf", &expected.join(&d[1..])]);
    }
    sh(
        "tar",
        &[
            &"--xattrs",
            &"--xattrs-include=user.*",
            &"--numeric-owner",
            &"-C",
            &expected,
            &"-xpf",
            &stage.join("rootfs-diff.tar"),
        ],
    );
    Foreign { lower, expected_merged: expected, bundle, stage }
}

fn foreign_archive(kind: FsKind) {
    let Some(s) = scratch(kind) else { return };
    let f = make_foreign(&s);
    let out = s.path("fout");
    fs::create_dir(&out).unwrap();
    let plain = out.join("podman.tar");
    sh(
        "tar",
        &[
            &"--format=pax",
            &"--sort=name",
            &"-cf",
            &plain,
            &"-C",
            &f.bundle,
            &"config.dump",
            &"spec.dump",
            &"checkpoint",
            &"network.status",
            &"stats-dump",
            &"-C",
            &f.stage,
            &"rootfs-diff.tar",
            &"deleted.files",
        ],
    );
    let zst = out.join("podman.tar.zst");
    sh("zstd", &[&"-q", &plain, &"-o", &zst]);
    let gz = out.join("podman-gz.tar");
    fs::copy(&plain, &gz).unwrap();
    sh("gzip", &[&"-n", &gz]);
    let gz = out.join("podman-gz.tar.gz");

    // Into a fresh upper dir: by file (zstd, plain) and by stdin (plain, gzip).
    let cases: [(&str, &Path, bool); 4] = [
        ("zstd", zst.as_path(), false),
        ("plain", plain.as_path(), false),
        ("stdin", plain.as_path(), true),
        ("stdin-gzip", gz.as_path(), true),
    ];
    for (i, (what, archive, stdin)) in cases.into_iter().enumerate() {
        let (bundle, upper) = (s.path(format!("b-{what}")), s.path(format!("up-{what}")));
        if stdin {
            let o = ckpt_with_stdin(&[&"import", &"--rootfs-diff", &upper, &"-", &bundle], archive);
            assert_eq!(o.status.code(), Some(0), "{what}: ckpt import - \n{}", describe(&o));
        } else {
            ckpt_ok(&[&"import", &"--rootfs-diff", &upper, &archive, &bundle]);
        }
        assert_bundles_equal(&f.bundle, &bundle, false);
        for d in FOREIGN_DELETED {
            assert!(is_whiteout(&upper.join(&d[1..])), "{what}: {d} is not a whiteout in the upper dir");
        }
        let _mount = Mount::overlay(
            std::slice::from_ref(&f.lower),
            &upper,
            &s.path(format!("w{i}")),
            &s.path(format!("m{i}")),
        );
        assert_children_equal(&f.expected_merged, &s.path(format!("m{i}")), &[]);
    }

    // Into a plain directory holding the lower's files: deleted paths are removed.
    let plain_root = s.path("plainroot");
    sh("cp", &[&"-a", &f.lower, &plain_root]);
    let bundle = s.path("b-plaindir");
    ckpt_ok(&[&"import", &"--overwrite", &"--rootfs", &plain_root, &plain, &bundle]);
    assert_bundles_equal(&f.bundle, &bundle, false);
    for d in FOREIGN_DELETED {
        assert!(
            fs::symlink_metadata(plain_root.join(&d[1..])).is_err(),
            "{d} was not removed from the plain dir"
        );
    }
    assert_children_equal(&f.expected_merged, &plain_root, &[]);

    // Without a rootfs option, rootfs-diff.tar and deleted.files are bundle files.
    let bundle = s.path("b-asis");
    ckpt_ok(&[&"import", &plain, &bundle]);
    for name in ["rootfs-diff.tar", "deleted.files"] {
        assert_same_bytes(&f.stage.join(name), &bundle.join(name));
        fs::remove_file(bundle.join(name)).unwrap();
    }
    assert_bundles_equal(&f.bundle, &bundle, false);
}

#[test]
fn foreign_podman_archive_btrfs() {
    foreign_archive(FsKind::Btrfs);
}

#[test]
fn foreign_podman_archive_xfs() {
    foreign_archive(FsKind::Xfs);
}

// ---------------------------------------------------------------------------
// Test 6: errors
// ---------------------------------------------------------------------------

fn assert_fails_naming(args: &[Arg], needles: &[&str], out_dir: &Path) {
    let o = ckpt_code(1, args);
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    for needle in needles {
        assert!(
            err.contains(&needle.to_lowercase()),
            "stderr does not mention {needle:?}:\n{}",
            describe(&o)
        );
    }
    assert!(
        dir_names(out_dir).is_empty(),
        "a failed export left {:?} in {}",
        dir_names(out_dir),
        out_dir.display()
    );
}

#[test]
fn export_errors() {
    let Some(s) = scratch(FsKind::Plain) else { return };
    if !require_root("overlay xattrs and mounts") {
        return;
    }
    let bundle = s.path("bundle");
    make_bundle(&bundle, 1 << 20);
    let out = s.path("out");
    fs::create_dir(&out).unwrap();
    let archive = out.join("checkpoint.tar");

    // --rootfs on a directory that is no mount point, and on a mount point of another type.
    let plain_dir = s.path("rootfs");
    write_with_parents(&plain_dir.join("etc/hostname"), b"h\n");
    assert_fails_naming(
        &[&"export", &"--rootfs", &plain_dir, &bundle, &archive],
        &["not an overlay mount"],
        &out,
    );
    let tmpfs = Mount::tmpfs(&s.path("tmpfs"));
    assert_fails_naming(
        &[&"export", &"--rootfs", &tmpfs.target(), &bundle, &archive],
        &["not an overlay mount"],
        &out,
    );
    drop(tmpfs);

    // A bundle without checkpoint/inventory.img (with and without rootfs changes).
    let upper = s.path("upper");
    write_with_parents(&upper.join("etc/new.conf"), b"new\n");
    let broken = s.path("broken");
    make_bundle(&broken, 1 << 20);
    fs::remove_file(broken.join("checkpoint/inventory.img")).unwrap();
    assert_fails_naming(
        &[&"export", &"--rootfs-diff", &upper, &broken, &archive],
        &["checkpoint/inventory.img"],
        &out,
    );
    assert_fails_naming(&[&"export", &"--bundle", &broken, &archive], &["checkpoint/inventory.img"], &out);
    // Without spec.dump.
    let no_spec = s.path("nospec");
    make_bundle(&no_spec, 1 << 20);
    fs::remove_file(no_spec.join("spec.dump")).unwrap();
    assert_fails_naming(&[&"export", &"--rootfs-diff", &upper, &no_spec, &archive], &["spec.dump"], &out);

    // Uppers written with metacopy=on / redirect_dir=on are refused, naming the path.
    let meta_upper = s.path("meta-upper");
    write_with_parents(&meta_upper.join("usr/bin/meta-only"), b"");
    set_xattr(&meta_upper.join("usr/bin/meta-only"), "trusted.overlay.metacopy", b"");
    assert_fails_naming(
        &[&"export", &"--rootfs-diff", &meta_upper, &bundle, &archive],
        &["usr/bin/meta-only", "metacopy"],
        &out,
    );
    let redirect_upper = s.path("redirect-upper");
    fs::create_dir_all(redirect_upper.join("opt/renamed")).unwrap();
    set_xattr(&redirect_upper.join("opt/renamed"), "trusted.overlay.redirect", b"/opt/original");
    assert_fails_naming(
        &[&"export", &"--rootfs-diff", &redirect_upper, &bundle, &archive],
        &["opt/renamed", "redirect"],
        &out,
    );

    // Both rootfs options: a usage error.
    let o = ckpt_code(2, &[&"export", &"--rootfs", &plain_dir, &"--rootfs-diff", &upper, &bundle, &archive]);
    assert!(!o.stderr.is_empty());
    assert!(dir_names(&out).is_empty());

    // And the happy path from the same inputs works (the failures above were not spurious).
    ckpt_ok(&[&"export", &"--rootfs-diff", &upper, &bundle, &archive]);
    assert_eq!(dir_names(&out), ["checkpoint.tar"]);
}

/// A container's userdata dir holds more than its checkpoint: the runtime spec, logs and, in
/// plain text, its secrets. A bundle archive takes only the members podman's own export takes;
/// without podman's spec.dump (after `checkpoint --keep`), it is the bundle's config.json.
#[test]
fn bundle_export_takes_podmans_members_only_never_secrets() {
    let Some(s) = scratch(FsKind::Plain) else { return };
    let bundle = s.path("bundle");
    make_bundle(&bundle, 1 << 20);
    fs::remove_file(bundle.join("spec.dump")).unwrap();
    fs::remove_file(bundle.join("config.dump")).unwrap();
    let spec = br#"{"ociVersion":"1.0.2","process":{"args":["sh"]}}"#;
    write_with_parents(&bundle.join("config.json"), spec);
    write_with_parents(&bundle.join("secrets/db-password"), b"hunter2-secret-value");
    write_with_parents(&bundle.join("dump.log"), b"criu log");
    write_with_parents(&bundle.join("ctr.log"), b"container output\n");
    fs::create_dir_all(bundle.join("shm")).unwrap();
    let archive = s.path("out.tar");
    let o = ckpt(&[&"export", &"--bundle", &bundle, &archive]);
    assert!(o.status.success(), "{}", describe(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("config.dump"), "no warning: {}", describe(&o));

    let names = gnu_tar_names(&archive);
    assert_eq!(names[0], "spec.dump", "{names:?}");
    for absent in ["secrets/", "secrets/db-password", "dump.log", "shm/", "config.json", "config.dump"] {
        assert!(!names.iter().any(|n| n == absent), "{absent} archived: {names:?}");
    }
    for present in ["checkpoint/inventory.img", "ctr.log", "network.status"] {
        assert!(names.iter().any(|n| n == present), "{present} missing: {names:?}");
    }
    let bytes = fs::read(&archive).unwrap();
    assert!(
        !bytes.windows(20).any(|w| w == b"hunter2-secret-value"),
        "the secret's bytes are in the archive"
    );
    let dest = s.path("restored");
    ckpt_ok(&[&"import", &archive, &dest]);
    assert_eq!(fs::read(dest.join("spec.dump")).unwrap(), spec);
}

/// A volume directory (a file, a directory, a 100 kB file) and the archive of a bundle with it
/// as volume vol1.
fn export_with_volume(s: &Scratch) -> (PathBuf, PathBuf) {
    let bundle = s.path("bundle");
    make_bundle(&bundle, 1 << 20);
    let volume = s.path("volume");
    write_with_parents(&volume.join("sub/f"), b"in the volume\n");
    fs::write(volume.join("big"), pseudo_random_bytes(5, 100_000)).unwrap();
    let archive = s.path("out.tar");
    ckpt_ok(&[&"export", &"--volume", &format!("vol1={}", volume.display()), &bundle, &archive]);
    (volume, archive)
}

/// A named volume given with --volume is a nested `volumes/NAME.tar`, as podman's export
/// writes it: GNU tar extracts it into a tree equal to the volume, its directory first as `./`.
#[test]
fn bundle_export_with_a_volume_nests_its_directory_as_podman_does() {
    let Some(s) = scratch(FsKind::Plain) else { return };
    let (volume, archive) = export_with_volume(&s);

    let names = gnu_tar_names(&archive);
    assert!(names.iter().any(|n| n == "volumes/vol1.tar"), "{names:?}");
    let extracted = s.path("extracted");
    fs::create_dir(&extracted).unwrap();
    let nested = |tar_args: &str| {
        let script = format!("tar -xOf '{}' volumes/vol1.tar | tar {tar_args}", archive.display());
        sh("sh", &[&"-c", &script])
    };
    assert_eq!(nested("-t").lines().next(), Some("./"));
    nested(&format!("-x -C '{}'", extracted.display()));
    assert_trees_equal(&volume, &extracted);
}

/// A volume name that would put its member elsewhere than volumes/ is a usage error, and
/// nothing is written.
#[test]
fn bundle_export_refuses_a_volume_name_with_a_slash_and_writes_nothing() {
    let Some(s) = scratch(FsKind::Plain) else { return };
    let bundle = s.path("bundle");
    make_bundle(&bundle, 1 << 20);
    let out = s.path("out");
    fs::create_dir(&out).unwrap();
    let given = format!("../x={}", s.path("bundle").display());
    let o = ckpt_code(2, &[&"export", &"--volume", &given, &bundle, &out.join("c.tar")]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a volume name"), "{}", describe(&o));
    assert!(dir_names(&out).is_empty(), "{:?}", dir_names(&out));
}

/// `ckpt import --volume NAME=DIR` restores the archive's `volumes/NAME.tar` into DIR, not as
/// a file of the bundle; a volume the archive lacks is an error that names it.
#[test]
fn import_with_a_volume_restores_its_nested_archive_into_the_directory() {
    let Some(s) = scratch(FsKind::Plain) else { return };
    let (volume, archive) = export_with_volume(&s);

    let (dest, restored) = (s.path("dest"), s.path("restored-volume"));
    ckpt_ok(&[&"import", &"--volume", &format!("vol1={}", restored.display()), &archive, &dest]);
    assert_trees_equal(&volume, &restored);
    assert!(!dest.join("volumes").exists(), "volumes/ was restored into the bundle too");
    let o = ckpt_code(
        1,
        &[&"import", &"--volume", &format!("other={}", s.path("o").display()), &archive, &s.path("d2")],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("volumes/other.tar"), "{}", describe(&o));
}

/// `list --nested` and `verify` walk a volume's nested archive as they walk rootfs-diff.tar:
/// its members are listed under `volumes/NAME.tar/`, and a damaged header inside it is found
/// and named.
#[test]
fn list_nested_and_verify_walk_a_volume_archive() {
    let Some(s) = scratch(FsKind::Plain) else { return };
    let (_, archive) = export_with_volume(&s);
    let listing = ckpt_ok(&[&"list", &"--json", &"--nested", &archive]);
    let members: Vec<serde_json::Value> = listing.lines().map(parse_json).collect();
    let big = members
        .iter()
        .find(|m| m["name"].as_str() == Some("volumes/vol1.tar/big"))
        .unwrap_or_else(|| panic!("no volumes/vol1.tar/big in\n{listing}"));
    assert_eq!(big["nested_in"], "volumes/vol1.tar", "{big}");
    let v = ckpt_json(&[&"verify", &"--json", &archive]);
    assert!(json_u64(&v, "nested_members") >= 3, "{v}");

    let header = json_u64(big, "data_offset") - 512;
    let file = fs::OpenOptions::new().read(true).write(true).open(&archive).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, header + 101).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], header + 101).unwrap();
    let o = ckpt_code(1, &[&"verify", &archive]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("volumes/vol1.tar/big") && err.contains("checksum"), "{}", describe(&o));
}

/// Outside a checkpoint archive a `volumes/NAME.tar` is a file like any other: verify and
/// `list --nested` do not read it as a nested archive.
#[test]
fn verify_and_list_take_a_volumes_tar_outside_a_checkpoint_for_a_plain_file() {
    let Some(s) = scratch(FsKind::Plain) else { return };
    let tree = s.path("tree");
    write_with_parents(&tree.join("volumes/db.tar"), &pseudo_random_bytes(7, 10_000));
    let archive = s.path("t.tar");
    ckpt_ok(&[&"export", &tree, &archive]);
    let v = ckpt_json(&[&"verify", &"--json", &archive]);
    assert_eq!(json_u64(&v, "nested_members"), 0, "{v}");
    let listing = ckpt_ok(&[&"list", &"--nested", &archive]);
    assert!(listing.contains("volumes/db.tar") && !listing.contains("volumes/db.tar/"), "{listing}");
}

/// A volume name that would restore a member other than one file in volumes/ is a usage
/// error, before anything is restored.
#[test]
fn import_refuses_a_volume_name_with_a_slash_and_restores_nothing() {
    let Some(s) = scratch(FsKind::Plain) else { return };
    let (_, archive) = export_with_volume(&s);
    let (dest, volume) = (s.path("dest"), s.path("restored-volume"));
    let given = format!("../x={}", volume.display());
    let o = ckpt_code(2, &[&"import", &"--volume", &given, &archive, &dest]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a volume name"), "{}", describe(&o));
    assert!(!dest.exists() && !volume.exists(), "the import wrote before refusing");
}
