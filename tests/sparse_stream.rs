//! Holes in streams: an export to a pipe or a compressor stores files with holes as PAX 1.0
//! sparse members, byte for byte as `tar --sparse --format=posix` does, which GNU tar,
//! bsdtar, Python's tarfile, Go's archive/tar and ckpt read to the same content, GNU tar and
//! ckpt keeping the holes; the stream is smaller than the tree, and its digests verify.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::*;

const MIB: u64 = 1 << 20;

/// The files of the test tree that have holes worth a sparse member, relative to its root.
const SPARSE: [&str; 4] = ["holes/start.img", "holes/middle.img", "holes/end.img", "holes/empty.img"];

/// Files stored plain: no holes, or holes that save too little.
const PLAIN: [&str; 2] = ["dense.img", "holes/small-hole.img"];

/// Writes `size` bytes at `path`: data at `islands` (offset, length), holes elsewhere.
fn sparse_file(path: &Path, size: u64, islands: &[(u64, u64)]) {
    let file = fs::File::create(path).unwrap();
    file.set_len(size).unwrap();
    for &(at, len) in islands {
        file.write_all_at(&pseudo_random_bytes(at + len, len as usize), at).unwrap();
    }
}

/// A tree with holes at the start, in the middle and at the end of files, a file of holes,
/// a file without holes and one whose holes are too small to matter.
fn holey_tree(root: &Path) -> PathBuf {
    let src = root.join("src");
    fs::create_dir_all(src.join("holes")).unwrap();
    sparse_file(&src.join(SPARSE[0]), 8 * MIB, &[(6 * MIB, 256 << 10)]);
    sparse_file(&src.join(SPARSE[1]), 8 * MIB, &[(0, 256 << 10), (8 * MIB - (256 << 10), 256 << 10)]);
    sparse_file(&src.join(SPARSE[2]), 8 * MIB, &[(0, 256 << 10)]);
    sparse_file(&src.join(SPARSE[3]), 8 * MIB, &[]);
    fs::write(src.join(PLAIN[0]), pseudo_random_bytes(3, MIB as usize)).unwrap();
    sparse_file(&src.join(PLAIN[1]), 256 << 10, &[(0, 96 << 10), (128 << 10, 128 << 10)]);
    src
}

fn apparent_size(src: &Path) -> u64 {
    SPARSE.iter().chain(&PLAIN).map(|rel| fs::metadata(src.join(rel)).unwrap().len()).sum()
}

/// Runs `ckpt export [extra] SRC -` with standard output a pipe, and saves what it writes at
/// `archive`; returns its length.
fn export_to_pipe(src: &Path, archive: &Path, extra: &[&str]) -> u64 {
    let mut child = Command::new(ckpt_bin())
        .arg("export")
        .args(extra)
        .arg(src)
        .arg("-")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = fs::File::create(archive).unwrap();
    let copied = std::io::copy(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "ckpt export {} -: {status}\n{stderr}", src.display());
    copied
}

/// The tree, and its piped export with a digest manifest.
fn exported() -> (Scratch, PathBuf, PathBuf) {
    let s = scratch(FsKind::Plain).expect("a plain scratch directory is always available");
    let src = holey_tree(&s.root);
    let archive = s.root.join("stream.tar");
    export_to_pipe(&src, &archive, &["--digest", "sha256"]);
    (s, src, archive)
}

/// `dest` holds the source's files with the same content.
fn assert_same_content(src: &Path, dest: &Path, who: &str) {
    for rel in SPARSE.iter().chain(&PLAIN) {
        let (a, b) = (src.join(rel), dest.join(rel));
        assert!(b.is_file(), "{who}: {} missing", b.display());
        assert_same_bytes(&a, &b);
    }
}

/// `dest`'s sparse files have no more allocated than the source's, plus a block of slack.
fn assert_holes_kept(src: &Path, dest: &Path, who: &str) {
    for rel in SPARSE {
        let (had, has) = (allocated_bytes(&src.join(rel)), allocated_bytes(&dest.join(rel)));
        assert!(has <= had + 64 * 1024, "{who}: {rel} has {has} bytes allocated, the source {had}");
    }
}

#[test]
fn a_piped_export_writes_files_with_holes_as_gnu_tar_sparse_posix_does() {
    if !have("tar") {
        return;
    }
    let (s, src, archive) = exported();
    let gnu = s.root.join("gnu.tar");
    sh("tar", &[&"--sparse", &"--format=posix", &"-C", &src, &"-cf", &gnu, &"."]);
    let ours = raw_members(&fs::read(&archive).unwrap());
    let theirs = raw_members(&fs::read(&gnu).unwrap());
    let find = |members: &[RawMember], name: &str| -> RawMember {
        let found = members.iter().find(|m| m.name() == name.as_bytes());
        found.unwrap_or_else(|| panic!("no member {name}")).clone()
    };
    for rel in SPARSE {
        let name = format!("./{rel}");
        let (o, t) = (find(&ours, &name), find(&theirs, &name));
        assert_eq!(o.sparse_records().len(), 4, "{name}: GNU.sparse records {:?}", o.pax);
        assert_eq!(o.sparse_records(), t.sparse_records(), "{name}: GNU.sparse records");
        let (dir, base) = rel.rsplit_once('/').unwrap();
        assert_eq!(o.ustar_name, format!("./{dir}/GNUSparseFile.0/{base}").as_bytes());
        assert!(t.ustar_name.starts_with(format!("./{dir}/GNUSparseFile.").as_bytes()));
        assert!(o.data == t.data, "{name}: map and fragments differ from GNU tar's");
    }
    for rel in PLAIN {
        let member = find(&ours, &format!("./{rel}"));
        assert!(member.sparse_records().is_empty(), "{rel} should be a plain member");
        assert_eq!(member.data, fs::read(src.join(rel)).unwrap(), "{rel}: data");
    }
}

#[test]
fn a_piped_sparse_export_extracts_with_gnu_tar_and_ckpt_keeping_holes() {
    if !have("tar") {
        return;
    }
    let (s, src, archive) = exported();
    let by_tar = s.root.join("by-tar");
    fs::create_dir(&by_tar).unwrap();
    let out = run("tar", &[&"-C", &by_tar, &"-xf", &archive]);
    assert!(out.status.success() && out.stderr.is_empty(), "tar -xf: {}", describe(&out));
    assert_same_content(&src, &by_tar, "GNU tar");
    assert_holes_kept(&src, &by_tar, "GNU tar");
    let checked =
        Command::new("sha256sum").args(["--strict", "-c", "ckpt.sha256"]).current_dir(&by_tar).output();
    let checked = checked.unwrap();
    assert!(checked.status.success(), "sha256sum -c after GNU tar: {}", describe(&checked));

    let by_ckpt = s.root.join("by-ckpt");
    ckpt_ok(&[&"import", &archive, &by_ckpt]);
    assert_same_content(&src, &by_ckpt, "ckpt import");
    assert_holes_kept(&src, &by_ckpt, "ckpt import");
}

#[test]
fn a_piped_sparse_export_extracts_with_bsdtar_and_python_to_the_same_content() {
    if !have("bsdtar") || !have("python3") {
        return;
    }
    let (s, src, archive) = exported();
    let by_bsdtar = s.root.join("by-bsdtar");
    fs::create_dir(&by_bsdtar).unwrap();
    let out = run("bsdtar", &[&"-C", &by_bsdtar, &"-xf", &archive]);
    assert!(out.status.success() && out.stderr.is_empty(), "bsdtar -xf: {}", describe(&out));
    assert_same_content(&src, &by_bsdtar, "bsdtar");

    let by_python = s.root.join("by-python");
    let mut extract = readtar_py(&[OsStr::new("extract"), archive.as_os_str(), by_python.as_os_str()]);
    let out = extract.output().unwrap();
    assert!(out.status.success(), "readtar.py extract: {}", describe(&out));
    assert_same_content(&src, &by_python, "Python tarfile");
}

#[test]
fn a_piped_sparse_export_reads_in_go_as_the_source_tree() {
    if !have("python3") {
        return;
    }
    let Some(go) = crate::interop::go_reader() else { return };
    let (_s, src, archive) = exported();
    // name, size and sha256 of each member's content, as Go reads it and as the tree has it.
    let columns = |listing: String| -> Vec<String> {
        let lines = listing.lines().filter(|l| !l.starts_with("./ckpt.sha256\t"));
        lines
            .map(|l| {
                l.split('\t')
                    .enumerate()
                    .filter(|(i, _)| [0, 5, 11].contains(i))
                    .map(|(_, f)| f)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    let out = Command::new(go).arg(&archive).output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "readtar (Go): {}", describe(&out));
    let scanned = readtar_py(&[OsStr::new("scan"), src.as_os_str()]).output().unwrap();
    assert!(scanned.status.success(), "readtar.py scan: {}", describe(&scanned));
    let (go_lines, src_lines) = (
        columns(String::from_utf8(out.stdout).unwrap()),
        columns(String::from_utf8(scanned.stdout).unwrap()),
    );
    assert_eq!(go_lines, src_lines);
}

#[test]
fn a_piped_sparse_export_is_smaller_than_the_tree_and_verifies() {
    let s = scratch(FsKind::Plain).expect("a plain scratch directory is always available");
    let src = holey_tree(&s.root);
    let archive = s.root.join("stream.tar");
    let streamed = export_to_pipe(&src, &archive, &["--digest", "sha256"]);
    let data: u64 = SPARSE
        .iter()
        .chain(&PLAIN)
        .map(|rel| data_ranges(&src.join(rel)).iter().map(|(a, b)| b - a).sum::<u64>())
        .sum();
    assert!(
        streamed < apparent_size(&src) / 4,
        "{streamed} bytes streamed for {} bytes of files",
        apparent_size(&src)
    );
    assert!(streamed < data + MIB / 4, "{streamed} bytes streamed for {data} bytes of data");
    let report = ckpt_json(&[&"verify", &"--json", &archive]);
    assert_eq!(json_u64(&report, "digests_checked"), (SPARSE.len() + PLAIN.len()) as u64, "{report}");
    assert!(report["problems"].as_array().is_some_and(|p| p.is_empty()), "{report}");
    let stdin = fs::File::open(&archive).unwrap();
    let piped = Command::new(ckpt_bin()).args(["verify", "-"]).stdin(stdin).output().unwrap();
    assert!(piped.status.success(), "ckpt verify -: {}", describe(&piped));
}

#[test]
fn ckpt_list_shows_a_sparse_members_file_size_as_gnu_tar_does_and_its_stored_size_apart() {
    let (_s, src, archive) = exported();
    let mut listed = std::collections::HashMap::new();
    for line in ckpt_ok(&[&"list", &"--json", &archive]).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let name = v["name"].as_str().unwrap().trim_start_matches("./").to_string();
        listed.insert(name, (v["size"].as_u64().unwrap(), v["file_size"].as_u64().unwrap()));
    }
    for rel in SPARSE {
        let real = fs::metadata(src.join(rel)).unwrap().len();
        let (stored, file_size) = listed[rel];
        assert_eq!(file_size, real, "{rel}: file_size");
        assert!(stored < real / 4, "{rel}: {stored} bytes stored of {real}");
    }
    for rel in PLAIN {
        let (stored, file_size) = listed[rel];
        assert_eq!((stored, file_size), (fs::metadata(src.join(rel)).unwrap().len(), stored), "{rel}");
    }
    // The text listing's size column is the one GNU tar's verbose listing shows.
    let text = ckpt_ok(&[&"list", &archive]);
    let line = text.lines().find(|l| l.ends_with(SPARSE[0])).unwrap();
    let size: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    if have("tar") {
        let gnu = sh("tar", &[&"-tvf", &archive]);
        let gnu_line = gnu.lines().find(|l| l.ends_with(SPARSE[0])).unwrap();
        let gnu_size: u64 = gnu_line.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert_eq!(size, gnu_size, "ckpt: {line}\nGNU tar: {gnu_line}");
    }
    assert_eq!(size, 8 * MIB, "{line}");
}

/// A compressed export of the tree into `out`, imported again: same content, holes kept,
/// and the tar inside is smaller than the tree.
fn compressed_round_trip(compression: &str) {
    let s = scratch(FsKind::Plain).expect("a plain scratch directory is always available");
    let src = holey_tree(&s.root);
    let archive = s.root.join(format!("a.tar.{compression}"));
    let stats = ckpt_json(&[
        &"export",
        &"--json",
        &"--digest",
        &"sha256",
        &"--compress",
        &compression,
        &src,
        &archive,
    ]);
    let tar_bytes = json_u64(&stats, "tar_bytes");
    assert!(
        tar_bytes < apparent_size(&src) / 4,
        "{compression}: a tar of {tar_bytes} bytes: holes stored as zeros"
    );
    let report = ckpt_json(&[&"verify", &"--json", &archive]);
    assert_eq!(json_u64(&report, "digests_checked"), (SPARSE.len() + PLAIN.len()) as u64, "{report}");
    let dest = s.root.join("dest");
    ckpt_ok(&[&"import", &archive, &dest]);
    assert_same_content(&src, &dest, compression);
    assert_holes_kept(&src, &dest, compression);

    let piped = s.root.join(format!("piped.tar.{compression}"));
    export_to_pipe(&src, &piped, &["--compress", compression]);
    let dest = s.root.join("dest-piped");
    ckpt_ok(&[&"import", &piped, &dest]);
    assert_same_content(&src, &dest, compression);
    assert_holes_kept(&src, &dest, compression);
}

#[test]
fn a_zstd_export_stores_holes_as_sparse_members_and_import_keeps_them() {
    compressed_round_trip("zstd");
}

#[test]
fn a_gzip_export_stores_holes_as_sparse_members_and_import_keeps_them() {
    compressed_round_trip("gzip");
}

#[test]
fn a_zstd_bundle_export_stores_the_pages_image_sparse_and_the_nested_rootfs_diff_plain() {
    if !have("zstd") {
        return;
    }
    let s = scratch(FsKind::Plain).expect("a plain scratch directory is always available");
    let (bundle, upper) = (s.root.join("bundle"), s.root.join("upper"));
    let pages = "checkpoint/pages-9.img";
    Bundle::sample().sparse(pages, 8 * MIB, vec![(4 * MIB, pseudo_random_bytes(9, 1 << 16))]).write(&bundle);
    fs::create_dir_all(upper.join("var")).unwrap();
    sparse_file(&upper.join("var/holes.img"), 8 * MIB, &[(0, 1 << 16)]);
    let archive = s.root.join("a.tar.zst");
    ckpt_ok(&[&"export", &"--compress", &"zstd", &"--rootfs-diff", &upper, &bundle, &archive]);

    let tar = s.root.join("a.tar");
    sh("sh", &[&"-c", &format!("zstd -dc '{}' > '{}'", archive.display(), tar.display())]);
    let outer = raw_members(&fs::read(&tar).unwrap());
    let member = |members: &[RawMember], name: &str| -> RawMember {
        let found = members.iter().find(|m| m.name() == name.as_bytes());
        found.unwrap_or_else(|| panic!("no member {name}")).clone()
    };
    assert_eq!(member(&outer, pages).sparse_records().len(), 4, "{pages} is not a sparse member");
    let inner = raw_members(&member(&outer, "rootfs-diff.tar").data);
    assert!(
        member(&inner, "var/holes.img").sparse_records().is_empty(),
        "a sparse member inside rootfs-diff.tar"
    );

    let (bundle2, upper2) = (s.root.join("bundle2"), s.root.join("upper2"));
    ckpt_ok(&[&"import", &"--rootfs-diff", &upper2, &archive, &bundle2]);
    assert_same_bytes(&bundle.join(pages), &bundle2.join(pages));
    assert_same_bytes(&upper.join("var/holes.img"), &upper2.join("var/holes.img"));
    assert!(allocated_bytes(&bundle2.join(pages)) <= allocated_bytes(&bundle.join(pages)) + 64 * 1024);
}
