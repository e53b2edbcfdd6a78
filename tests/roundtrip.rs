//! Core end-to-end tests: a rich tree (every member type and kind of metadata) goes
//! through `ckpt export` and `ckpt import` on Btrfs, XFS and a plain (ext4) directory.
//! Checked independently of ckpt: alignment (Python tarfile), member order and types,
//! member data at the offsets Python reports, fidelity of the restored tree, physical
//! sharing (btrfs fi du / filefrag), sparseness, `--json` counters, determinism,
//! `--clone-min`, `--no-clone`, failure paths (no partial or clobbered OUT) and exit codes.

use crate::util::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The alignment ckpt must use on these filesystems (all have 4096-byte blocks).
const ALIGN: u64 = 4096;

/// Files below this size are copied into the archive by default (ckpt's `--clone-min`).
const CLONE_MIN: u64 = ckpt::DEFAULT_CLONE_MIN;

fn align_up(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

fn align_down(x: u64) -> u64 {
    x / ALIGN * ALIGN
}

/// Bytes of the sparse file's islands that fill whole aligned blocks (a conservative
/// lower bound of what must be shared).
fn sparse_full_blocks() -> u64 {
    SPARSE_ISLANDS.iter().map(|&(o, l)| align_down(o + l).saturating_sub(align_up(o))).sum()
}

/// Bytes actually written into the sparse file.
fn sparse_data() -> u64 {
    SPARSE_ISLANDS.iter().map(|&(_, l)| l).sum()
}

/// Lower bound of `bytes_cloned + bytes_copied`: all file data except the sparse file's
/// holes.
fn data_lower_bound(stats: &TreeStats) -> u64 {
    stats.bytes - SPARSE_SIZE + sparse_data()
}

/// Regular-file inodes of at least one alignment unit: (relative path of the first
/// name in archive order, size).
fn big_files(src: &Path) -> Vec<(String, u64)> {
    expected_members(src)
        .into_iter()
        .filter(|(_, ty)| *ty == '0')
        .filter_map(|(name, _)| {
            let rel = name.strip_prefix("./").unwrap().to_string();
            let size = fs::metadata(src.join(&rel)).unwrap().len();
            (size >= ALIGN).then_some((rel, size))
        })
        .collect()
}

/// What must be shared between a source file and the archive after an export with
/// `--clone-min clone_min`: nothing for a smaller file (copied), else the aligned part of the
/// data (the tail block may be copied, or un-shared again when the next header is written
/// into it).
fn export_share_lower(rel: &str, size: u64, clone_min: u64) -> u64 {
    if size < clone_min {
        0
    } else if rel == SPARSE_FILE {
        sparse_full_blocks()
    } else {
        align_down(size)
    }
}

/// Asserts which source files share their data with an archive just exported with
/// `--clone-min clone_min`: at least [`export_share_lower`] bytes each, and none at all for
/// files below `clone_min` (copied, not cloned).
fn check_export_sharing(kind: FsKind, src: &Path, big: &[(String, u64)], clone_min: u64) {
    let mut wrong = Vec::new();
    for (rel, size) in big {
        let want = export_share_lower(rel, *size, clone_min);
        let got = shared_bytes_of(kind, &src.join(rel));
        if got < want || (want == 0 && got != 0) {
            wrong.push(format!(
                "{rel} (size {size}): {got} shared, want {}{want}",
                if want > 0 { ">= " } else { "" }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "after export --clone-min {clone_min} on {kind:?}, source files do not share what they \
         should with the archive:\n  {}",
        wrong.join("\n  ")
    );
}

/// What must be shared between a restored file and the archive after an import on
/// Btrfs: the whole file, tail block included (clone ALIGN_UP(size), then ftruncate, which
/// keeps the block shared there).
/// (XFS: see the import check in `roundtrip`.)
fn import_share_lower(rel: &str, size: u64) -> u64 {
    if rel == SPARSE_FILE { sparse_full_blocks() } else { align_up(size) }
}

fn shared_bytes_of(kind: FsKind, path: &Path) -> u64 {
    match kind {
        FsKind::Btrfs => btrfs_shared_bytes(path),
        FsKind::Xfs => xfs_shared_blocks(path).0,
        FsKind::Plain => unreachable!("no sharing probe on Plain"),
    }
}

fn f64_field(v: &serde_json::Value, key: &str) -> f64 {
    v.get(key)
        .and_then(|x| x.as_f64())
        .unwrap_or_else(|| panic!("JSON field {key:?} missing or not a number in {v}"))
}

/// Counters common to export and import `--json` output.
fn check_counters(what: &str, v: &serde_json::Value, stats: &TreeStats) {
    assert_eq!(json_u64(v, "entries"), stats.entries, "{what}: entries in {v}");
    assert_eq!(json_u64(v, "files"), stats.files, "{what}: files (regular-file inodes) in {v}");
    assert_eq!(
        json_u64(v, "bytes"),
        stats.bytes,
        "{what}: bytes (sum of regular file sizes, hardlinked inodes once) in {v}"
    );
    let moved = json_u64(v, "bytes_cloned") + json_u64(v, "bytes_copied");
    let lower = data_lower_bound(stats);
    let upper = stats.bytes + stats.files * ALIGN;
    assert!(
        (lower..=upper).contains(&moved),
        "{what}: bytes_cloned + bytes_copied = {moved} does not account for the data: \
         expected within [{lower}, {upper}] (data without holes .. size + rounding): {v}"
    );
    let secs = f64_field(v, "seconds");
    assert!((0.0..600.0).contains(&secs), "{what}: seconds = {secs}");
}

/// Independent check of an archive of `src` with Python's tarfile: member names, order
/// and types; every regular member of >= 4096 bytes starts at an offset that is a
/// multiple of 4096; each regular member's data at that offset equals the source file.
fn check_archive_against(src: &Path, archive: &Path) {
    let members = python_data_offsets(archive);
    let got: Vec<(String, char)> = members.iter().map(|m| (m.0.clone(), m.3)).collect();
    let want = expected_members(src);
    if got != want {
        let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        panic!(
            "archive members differ from `tar -C SRC -cf OUT .` order with sorted names: \
             first difference at index {first}: got {:?}, want {:?} ({} vs {} members)",
            got.get(first),
            want.get(first),
            got.len(),
            want.len()
        );
    }

    let arch = fs::File::open(archive).unwrap();
    let mut misaligned = Vec::new();
    let mut buf_a = vec![0u8; 1 << 20];
    for (name, offset, size, ty) in &members {
        if *ty != '0' {
            continue;
        }
        let path = src.join(name.strip_prefix("./").unwrap());
        let src_size = fs::metadata(&path).unwrap().len();
        assert_eq!(*size, src_size, "member {name}: size in archive vs source");
        if *size >= ALIGN && offset % ALIGN != 0 {
            misaligned.push(format!("{name} (size {size}) at offset {offset}"));
        }
        // The data at offset_data must be the file's content.
        let f = fs::File::open(&path).unwrap();
        let mut buf_s = vec![0u8; 1 << 20];
        let mut pos = 0u64;
        while pos < *size {
            let n = ((*size - pos) as usize).min(buf_a.len());
            arch.read_exact_at(&mut buf_a[..n], offset + pos).unwrap();
            f.read_exact_at(&mut buf_s[..n], pos).unwrap();
            if buf_a[..n] != buf_s[..n] {
                let i = (0..n).find(|&i| buf_a[i] != buf_s[i]).unwrap();
                panic!(
                    "member {name}: archive byte at {} (data offset {offset} + {}) differs \
                     from the source file",
                    offset + pos + i as u64,
                    pos + i as u64
                );
            }
            pos += n as u64;
        }
    }
    assert!(
        misaligned.is_empty(),
        "regular members >= {ALIGN} bytes whose data is not {ALIGN}-aligned:\n  {}",
        misaligned.join("\n  ")
    );

    // GNU tar reads it silently (padding records are ignored without a warning).
    let out = run("tar", &[&"-tvf", &archive]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "GNU tar -tvf {} is not clean:\n{}",
        archive.display(),
        describe(&out)
    );
}

/// The archive keeps the sparse file's holes: its allocated size is far below its length.
fn check_archive_sparse(archive: &Path) {
    let len = fs::metadata(archive).unwrap().len();
    let alloc = allocated_bytes(archive);
    assert!(len >= SPARSE_SIZE, "archive length {len} < the sparse file's size");
    assert!(
        alloc < 16 << 20 && alloc < len / 4,
        "archive {} is not sparse: {alloc} bytes allocated for a length of {len} \
         (the 64 MiB sparse member has ~{} bytes of data)",
        archive.display(),
        sparse_data()
    );
}

/// The restored sparse file keeps its holes (leading, inner and trailing).
fn check_restored_sparse(src: &Path, dst: &Path) {
    let (s, d) = (src.join(SPARSE_FILE), dst.join(SPARSE_FILE));
    let (sa, da) = (allocated_bytes(&s), allocated_bytes(&d));
    assert!(
        da <= sa + (1 << 20) && da < SPARSE_SIZE / 4,
        "restored {} is not sparse: {da} bytes allocated (source: {sa})",
        d.display()
    );
    let ranges = data_ranges(&d);
    let last_island_end = SPARSE_ISLANDS.iter().map(|&(o, l)| o + l).max().unwrap();
    assert!(
        ranges.iter().all(|&(b, e)| b >= 512 << 10 && e <= last_island_end + (1 << 20)),
        "restored {} lost its leading or trailing hole: data ranges {ranges:?}",
        d.display()
    );
}

fn roundtrip(kind: FsKind) {
    if !require_root("roundtrip of a rich tree") {
        return;
    }
    let Some(s) = scratch(kind) else { return };
    let src = s.path("src");
    let out = s.path("out.tar");
    let dst = s.path("dst");
    make_rich_tree(&src);
    let stats = tree_stats(&src);
    let big = big_files(&src);
    let sharing = kind != FsKind::Plain;
    if sharing {
        sync_fs(&src);
        if kind == FsKind::Btrfs {
            assert_eq!(btrfs_shared_bytes(&src), 0, "fresh tree already shares extents");
        }
    }

    // ---- export
    let e = ckpt_json(&[&"export", &"--json", &src, &out]);
    check_counters("export", &e, &stats);
    assert_eq!(json_u64(&e, "align"), ALIGN, "export align in {e}");
    assert_eq!(
        json_u64(&e, "archive_bytes"),
        fs::metadata(&out).unwrap().len(),
        "export archive_bytes vs the archive's length: {e}"
    );
    let export_lower: u64 = big.iter().map(|(r, sz)| export_share_lower(r, *sz, CLONE_MIN)).sum();
    if sharing {
        assert!(
            json_u64(&e, "bytes_cloned") >= export_lower,
            "export on {kind:?}: bytes_cloned must cover at least the aligned data of every \
             file >= {CLONE_MIN} bytes ({export_lower}): {e}"
        );
    } else if !s.reflink_capable() {
        assert_eq!(json_u64(&e, "bytes_cloned"), 0, "export on {kind:?}: {e}");
    }

    check_archive_against(&src, &out);
    check_archive_sparse(&out);

    // ---- physical sharing between the source and the archive
    if sharing {
        check_export_sharing(kind, &src, &big, CLONE_MIN);
        let arch_shared = shared_bytes_of(kind, &out);
        assert!(
            arch_shared >= export_lower,
            "archive on {kind:?} shares {arch_shared} bytes, want >= {export_lower}"
        );
    }

    // ---- determinism: a second export is byte-identical, also when it clones every file
    // with a whole block (--clone-min 0), which then shares all of them
    let out2 = s.path("out2.tar");
    ckpt_ok(&[&"export", &"--clone-min", &"0", &src, &out2]);
    assert_same_bytes(&out, &out2);
    if sharing {
        check_export_sharing(kind, &src, &big, 0);
    }
    fs::remove_file(&out2).unwrap();

    // ---- import
    let i = ckpt_json(&[&"import", &"--json", &out, &dst]);
    check_counters("import", &i, &stats);
    if sharing {
        let import_lower: u64 =
            big.iter().map(|(r, sz)| if r == SPARSE_FILE { sparse_full_blocks() } else { *sz }).sum();
        assert!(
            json_u64(&i, "bytes_cloned") >= import_lower,
            "import on {kind:?}: bytes_cloned must cover every file >= {ALIGN} bytes \
             ({import_lower}): {i}"
        );
    } else if !s.reflink_capable() {
        assert_eq!(json_u64(&i, "bytes_cloned"), 0, "import on {kind:?}: {i}");
    }

    assert_trees_equal(&src, &dst);
    check_restored_sparse(&src, &dst);

    // ---- physical sharing between the restored files and the archive: whole files
    if sharing {
        let mut short = Vec::new();
        for (rel, size) in &big {
            let want = import_share_lower(rel, *size);
            let p = dst.join(rel);
            match kind {
                FsKind::Btrfs => {
                    let du = btrfs_du(&p);
                    if du.set_shared < want || du.exclusive != 0 {
                        short.push(format!(
                            "{rel} (size {size}): {du:?}, want set_shared >= {want} and exclusive 0"
                        ));
                    }
                }
                FsKind::Xfs => {
                    // XFS un-shares the last block when ftruncate() zeroes the bytes
                    // past the new EOF (measured on 6.18 with xfs_io reflink + truncate,
                    // even when those bytes are already zero), so import clones whole
                    // blocks and copies a partial last block there. Every other block
                    // must be shared.
                    let want = if rel == SPARSE_FILE { want } else { align_down(*size) };
                    let (shared, total) = xfs_shared_blocks(&p);
                    let partial_tail = if size % ALIGN == 0 { 0 } else { ALIGN };
                    if shared < want || total - shared > partial_tail {
                        short.push(format!(
                            "{rel} (size {size}): {shared} of {total} bytes shared, want \
                             >= {want} and at most {partial_tail} unshared"
                        ));
                    }
                }
                FsKind::Plain => unreachable!(),
            }
        }
        assert!(
            short.is_empty(),
            "after import on {kind:?}, restored files do not share their data with the \
             archive:\n  {}",
            short.join("\n  ")
        );
    }
}

#[test]
fn roundtrip_btrfs() {
    roundtrip(FsKind::Btrfs);
}

#[test]
fn roundtrip_xfs() {
    roundtrip(FsKind::Xfs);
}

#[test]
fn roundtrip_plain() {
    roundtrip(FsKind::Plain);
}

/// `--no-clone` on Btrfs: nothing shared, counters say so, and the archive is the same
/// bytes as a cloning export (the layout does not depend on how data was moved).
#[test]
fn no_clone_btrfs_shares_nothing() {
    if !require_root("--no-clone on btrfs") {
        return;
    }
    let Some(s) = scratch(FsKind::Btrfs) else {
        return;
    };
    let src = s.path("src");
    let out = s.path("out.tar");
    let dst = s.path("dst");
    make_rich_tree(&src);
    let stats = tree_stats(&src);
    assert_eq!(btrfs_shared_bytes(&src), 0, "fresh tree already shares extents");

    let e = ckpt_json(&[&"export", &"--no-clone", &"--json", &src, &out]);
    check_counters("export --no-clone", &e, &stats);
    assert_eq!(json_u64(&e, "bytes_cloned"), 0, "export --no-clone: {e}");
    assert_eq!(btrfs_shared_bytes(&src), 0, "export --no-clone: the source shares extents afterwards");
    assert_eq!(btrfs_shared_bytes(&out), 0, "export --no-clone: the archive shares extents");
    check_archive_against(&src, &out);
    check_archive_sparse(&out);

    let i = ckpt_json(&[&"import", &"--no-clone", &"--json", &out, &dst]);
    check_counters("import --no-clone", &i, &stats);
    assert_eq!(json_u64(&i, "bytes_cloned"), 0, "import --no-clone: {i}");
    assert_trees_equal(&src, &dst);
    check_restored_sparse(&src, &dst);
    assert_eq!(btrfs_shared_bytes(&dst), 0, "import --no-clone: restored files share extents");
    assert_eq!(btrfs_shared_bytes(&out), 0, "archive shares after import --no-clone");

    // Same archive bytes with cloning: layout is independent of the data path.
    let out2 = s.path("out-clone.tar");
    ckpt_ok(&[&"export", &src, &out2]);
    assert_same_bytes(&out, &out2);
}

/// `--clone-min` above 64 KiB, where files are no longer read into memory whole: a 1 MiB
/// file below it is copied, not cloned (copy_file_range would clone it within one
/// filesystem), its holes kept; a file at or above it is cloned; the bytes are the same.
fn clone_min_copies_large_files_below_it(kind: FsKind) {
    let Some(s) = scratch(kind) else { return };
    let src = s.path("src");
    fs::create_dir(&src).unwrap();
    let below = src.join("below.bin");
    write_big(&below, 1 << 20);
    let sparse = src.join("sparse-below.img");
    let file = fs::File::create(&sparse).unwrap();
    file.write_all_at(&pseudo_random_bytes(7, 8192), 512 << 10).unwrap();
    file.set_len(1536 << 10).unwrap();
    let above = src.join("above.bin");
    write_big(&above, 3 << 20);
    sync_fs(&src);

    let out = s.path("out.tar");
    ckpt_ok(&[&"export", &"--clone-min", &"2M", &src, &out]);
    sync_fs(&out);
    assert_eq!(shared_bytes_of(kind, &below), 0, "{kind:?}: a file below --clone-min shares extents");
    assert_eq!(shared_bytes_of(kind, &sparse), 0, "{kind:?}: a sparse file below --clone-min shares extents");
    assert!(shared_bytes_of(kind, &above) >= 3 << 20, "{kind:?}: a file above --clone-min is not shared");
    check_archive_against(&src, &out);
    // 4 MiB of data and 8 KiB of the sparse file; its 1.5 MiB written out would pass 5.5 MiB.
    let alloc = allocated_bytes(&out);
    assert!(
        alloc < (4 << 20) + (512 << 10),
        "{kind:?}: the copied sparse file lost its holes: {alloc} bytes allocated"
    );

    let default = s.path("default.tar");
    ckpt_ok(&[&"export", &src, &default]);
    assert_same_bytes(&out, &default);
}

#[test]
fn clone_min_copies_large_files_below_it_btrfs() {
    if require_root("--clone-min on btrfs") {
        clone_min_copies_large_files_below_it(FsKind::Btrfs);
    }
}

#[test]
fn clone_min_copies_large_files_below_it_xfs() {
    if require_root("--clone-min on xfs") {
        clone_min_copies_large_files_below_it(FsKind::Xfs);
    }
}

/// A nonexistent SRC: exit 1, a message naming the path, no OUT, nothing left in OUT's
/// dir, and a pre-existing OUT stays as it was. Also an OUT in a missing directory.
#[test]
fn export_missing_src_fails_cleanly() {
    let Some(s) = scratch(FsKind::Plain) else {
        return;
    };
    let missing = s.path("no-such-source-dir");
    let outdir = s.path("outdir");
    fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.tar");

    let o = ckpt_code(1, &[&"export", &missing, &out]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no-such-source-dir"),
        "the error message does not name the missing source path:\n{}",
        describe(&o)
    );
    assert!(dir_names(&outdir).is_empty(), "stray files: {:?}", dir_names(&outdir));

    fs::write(&out, b"previous archive, must survive\n").unwrap();
    ckpt_code(1, &[&"export", &missing, &out]);
    assert_eq!(fs::read(&out).unwrap(), b"previous archive, must survive\n");
    assert_eq!(dir_names(&outdir), vec![std::ffi::OsString::from("out.tar")]);

    // OUT's directory does not exist.
    let src = s.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let o = ckpt_code(1, &[&"export", &src, &s.path("missing-dir/out.tar")]);
    assert!(!o.stderr.is_empty(), "no error message:\n{}", describe(&o));
    assert!(!s.path("missing-dir").exists());

    // Import of a missing archive.
    let o = ckpt_code(1, &[&"import", &s.path("no-such.tar"), &s.path("dest")]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no-such.tar"),
        "import error does not name the archive:\n{}",
        describe(&o)
    );
}

/// Writes `len` bytes of non-repeating data to `path` in 8 MiB chunks.
fn write_big(path: &Path, len: u64) {
    use std::io::Write;
    let mut f = fs::File::create(path).unwrap();
    let chunk = 8u64 << 20;
    let mut done = 0;
    let mut seed = 1000;
    while done < len {
        let n = chunk.min(len - done);
        f.write_all(&pseudo_random_bytes(seed, n as usize)).unwrap();
        done += n;
        seed += 1;
    }
    f.sync_all().unwrap();
}

/// On a tiny filesystem, `--no-clone` of a file bigger than the free space fails with
/// ENOSPC: exit 1, the previous OUT is unchanged, no temp file is left behind. A cloning
/// export of the same tree then succeeds (cloning needs no data space) and shares.
fn enospc(kind: FsKind, image_bytes: u64) {
    let Some(s) = scratch_sized(kind, image_bytes) else {
        return;
    };
    let src = s.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("small"), b"small file\n").unwrap();
    let big_len = (s.free_bytes() * 6 / 10) / (1 << 20) * (1 << 20);
    write_big(&src.join("big.bin"), big_len);
    let outdir = s.path("outdir");
    fs::create_dir(&outdir).unwrap();
    let out = outdir.join("ckpt.tar");
    let previous = b"previous archive, must survive a failed export\n";
    fs::write(&out, previous).unwrap();
    sync_fs(&s.root);
    let free_before = s.free_bytes();
    assert!(free_before < big_len, "setup: free space {free_before} is not below the file size {big_len}");

    let o = ckpt_code(1, &[&"export", &"--no-clone", &src, &out]);
    assert!(!o.stderr.is_empty(), "no error message:\n{}", describe(&o));
    assert_eq!(fs::read(&out).unwrap(), previous, "{kind:?}: a failed export changed the existing OUT");
    assert_eq!(
        dir_names(&outdir),
        vec![std::ffi::OsString::from("ckpt.tar")],
        "{kind:?}: a failed export left stray files in OUT's directory"
    );
    assert_eq!(
        dir_names(&s.root),
        ["outdir", "src"].map(std::ffi::OsString::from).to_vec(),
        "{kind:?}: stray files at the filesystem root"
    );

    // Cloning needs no data space: the same export succeeds and replaces OUT.
    ckpt_ok(&[&"export", &src, &out]);
    check_archive_against(&src, &out);
    let shared = shared_bytes_of(kind, &src.join("big.bin"));
    assert!(shared >= big_len, "{kind:?}: big.bin shares {shared} bytes with the archive, want {big_len}");
    assert_eq!(dir_names(&outdir), vec![std::ffi::OsString::from("ckpt.tar")]);
}

#[test]
fn export_enospc_no_clone_xfs() {
    if require_root("ENOSPC on a tiny xfs") {
        enospc(FsKind::Xfs, 300 << 20);
    }
}

#[test]
fn export_enospc_no_clone_btrfs() {
    if require_root("ENOSPC on a tiny btrfs") {
        enospc(FsKind::Btrfs, 128 << 20);
    }
}

/// Usage errors exit 2 with a message; --help exits 0.
#[test]
fn usage_errors_exit_2() {
    // Paths that do not exist: a usage error must be reported before touching them.
    let cases: &[&[&str]] = &[
        &[],
        &["no-such-subcommand"],
        &["export"],
        &["export", "/nonexistent-ckpt-src"],
        &["import", "/nonexistent-ckpt.tar"],
        &["export", "--no-such-flag", "/nonexistent-ckpt-src", "/nonexistent-ckpt.tar"],
        &["export", "--align", "not-a-number", "/nonexistent-ckpt-src", "/nonexistent-ckpt.tar"],
        &["export", "/nonexistent-ckpt-src", "/nonexistent-ckpt.tar", "extra-operand"],
    ];
    for args in cases {
        let argv: Vec<Arg> = args.iter().map(|a| a as Arg).collect();
        let o = ckpt_code(2, &argv);
        assert!(!o.stderr.is_empty(), "ckpt {args:?}: no usage message");
    }
    let help = ckpt_ok(&[&"--help"]);
    assert!(
        help.contains("export") && help.contains("import"),
        "--help does not mention the subcommands:\n{help}"
    );
}

/// A socket is skipped with a warning naming it; exit code 3; the rest is archived and
/// restored faithfully.
#[test]
fn socket_skipped_with_warning_exit_3() {
    let Some(s) = scratch(FsKind::Plain) else {
        return;
    };
    let src = s.path("src");
    let sockdir = src.join("sock");
    fs::create_dir_all(&sockdir).unwrap();
    fs::write(src.join("a.bin"), pseudo_random_bytes(5, 5000)).unwrap();
    fs::write(sockdir.join("keep"), b"kept\n").unwrap();
    let sock: PathBuf = sockdir.join("the.socket");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(fs::symlink_metadata(&sock).is_ok());
    set_mtime(&sockdir, 1_650_000_000, 424_242_424);
    set_mtime(&src, 1_650_000_100, 5);
    let stats = tree_stats(&src);
    assert_eq!(stats.sockets, 1);
    let out = s.path("out.tar");

    let o = ckpt_code(3, &[&"export", &"--json", &src, &out]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the.socket"), "the warning does not name the skipped socket:\n{}", describe(&o));
    let v = parse_json(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(json_u64(&v, "entries"), stats.entries, "entries: {v}");
    check_archive_against(&src, &out); // expected_members leaves sockets out

    let dst = s.path("dst");
    ckpt_ok(&[&"import", &out, &dst]);
    // Compare without the socket: remove it and put the directory's mtime back.
    fs::remove_file(&sock).unwrap();
    set_mtime(&sockdir, 1_650_000_000, 424_242_424);
    assert_trees_equal(&src, &dst);
}
