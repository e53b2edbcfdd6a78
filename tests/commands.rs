//! The commands for people and tools around export/import: `ckpt list` (fields and offsets
//! checked against Python's tarfile and against the source files' bytes), `ckpt verify`
//! (sound archives pass; a flipped data byte, a flipped header byte, truncation and manifest
//! mismatches fail naming the member), the progress bar on a terminal (under `script`),
//! `export --digest sha256`, `ckpt completions` and `ckpt man`.

use crate::util::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A small tree: files on both sides of the 4096 boundary, an empty file, a directory, a
/// symlink, a hardlink and a fifo, with distinct mtimes.
fn make_tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    let files: &[(&str, usize)] = &[
        ("empty", 0),
        ("one", 1),
        ("small-4095", 4095),
        ("exact-4096", 4096),
        ("sub/mid-10000", 10_000),
        ("sub/deeper/big-1M", (1 << 20) + 77),
        ("name with space", 5000),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        fs::write(dir.join(name), pseudo_random_bytes(i as u64 + 1, *len)).unwrap();
    }
    fs::set_permissions(dir.join("one"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("sub/mid-10000", dir.join("link")).unwrap();
    fs::hard_link(dir.join("exact-4096"), dir.join("sub/hard")).unwrap();
    mkfifo(&dir.join("fifo"), 0o640);
    for (i, rel) in ["empty", "one", "small-4095", "exact-4096", "sub/mid-10000", "sub/deeper/big-1M", "link"]
        .iter()
        .enumerate()
    {
        set_mtime(&dir.join(rel), 1_600_000_000 + i as i64 * 1000, 123_456_789);
    }
}

/// Runs ckpt with `stdin` from a file.
fn ckpt_stdin(args: &[&str], stdin: &Path) -> Output {
    Command::new(ckpt_bin())
        .args(args)
        .stdin(fs::File::open(stdin).unwrap())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ckpt {args:?}: {e}"))
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

fn str_field<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no string {key:?} in {v}"))
}

fn u64_field(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no number {key:?} in {v}"))
}

/// Flips one byte of `file` at `offset`.
fn flip(file: &Path, offset: u64) {
    let f = fs::OpenOptions::new().read(true).write(true).open(file).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).unwrap();
}

/// A copy of the sample checkpoint bundle, with a large sparse CRIU pages image.
fn make_bundle(dir: &Path) {
    let islands = vec![
        (1 << 20, pseudo_random_bytes(9, 64 << 10)),
        (9 << 20, pseudo_random_bytes(10, 5000)),
        // Data at the very end too (CRIU writes pages-N.img front to back, so its end is data).
        ((16 << 20) - 4096, pseudo_random_bytes(11, 4096)),
    ];
    Bundle::sample().sparse("checkpoint/pages-2.img", 16 << 20, islands).write(dir);
}

// ---------------------------------------------------------------------------
// list
// ---------------------------------------------------------------------------

/// Every member's fields in `ckpt list --json` agree with Python's tarfile (name, type, size,
/// data offset) and with the source (mode, owner, mtime, link target); `aligned` is exactly
/// `data_offset % align == 0` for regular files with data; the text listing shows the same.
#[test]
fn list_fields_and_offsets_match_python() {
    let s = scratch(FsKind::Plain).unwrap();
    let src = s.path("src");
    make_tree(&src);
    let archive = s.path("a.tar");
    ckpt_ok(&[&"export", &"--align", &"4096", &src, &archive]);

    let listed = json_lines(&ckpt_ok(&[&"list", &"--json", &archive]));
    let python = python_data_offsets(&archive);
    assert_eq!(listed.len(), python.len(), "member count differs from tarfile's");
    for (v, (name, offset, size, ty)) in listed.iter().zip(&python) {
        let ours = str_field(v, "name");
        let trimmed = ours.strip_suffix('/').filter(|t| !t.is_empty()).unwrap_or(ours);
        let trimmed = if trimmed == "./" { "." } else { trimmed };
        assert_eq!(trimmed, name, "name of {v}");
        assert_eq!(u64_field(v, "data_offset"), *offset, "data offset of {name}");
        assert_eq!(u64_field(v, "size"), *size, "size of {name}");
        assert_eq!(str_field(v, "typeflag"), ty.to_string(), "typeflag of {name}");
        let kind = str_field(v, "type");
        let expected_kind = match ty {
            '0' => "file",
            '1' => "hardlink",
            '2' => "symlink",
            '5' => "dir",
            '6' => "fifo",
            other => panic!("unexpected type {other} for {name}"),
        };
        assert_eq!(kind, expected_kind, "type of {name}");
        assert!(u64_field(v, "header_offset") < *offset, "header of {name} after its data");
        let aligned = &v["aligned"];
        if kind == "file" && *size > 0 {
            assert_eq!(aligned.as_bool(), Some(offset.is_multiple_of(4096)), "aligned of {name}");
            if *size >= 4096 {
                assert_eq!(aligned.as_bool(), Some(true), "{name}: ckpt aligns files of 4096 bytes or more");
            }
        } else {
            assert!(aligned.is_null(), "aligned of {name} should be null: {v}");
        }
        // Metadata against the source.
        let rel = name.strip_prefix("./").unwrap_or("");
        let md = fs::symlink_metadata(src.join(rel)).unwrap();
        assert_eq!(str_field(v, "mode"), format!("{:04o}", md.mode() & 0o7777), "mode of {name}");
        assert_eq!(u64_field(v, "uid"), u64::from(md.uid()), "uid of {name}");
        assert_eq!(u64_field(v, "gid"), u64::from(md.gid()), "gid of {name}");
        assert_eq!(v["mtime"].as_i64(), Some(md.mtime()), "mtime of {name}");
        assert_eq!(u64_field(v, "mtime_nsec"), md.mtime_nsec() as u64, "mtime_nsec of {name}");
        if kind == "symlink" {
            assert_eq!(str_field(v, "link"), "sub/mid-10000");
        }
        if kind == "hardlink" {
            assert!(str_field(v, "link").ends_with("exact-4096"), "hardlink target: {v}");
        }
    }

    // The text listing: one line per member, with the same offsets and marks.
    let text = ckpt_ok(&[&"list", &archive]);
    assert_eq!(text.lines().count(), python.len(), "text listing:\n{text}");
    let big = python.iter().find(|m| m.0 == "./sub/deeper/big-1M").unwrap();
    let line = text.lines().find(|l| l.ends_with(" ./sub/deeper/big-1M")).expect("big file listed");
    assert!(line.starts_with("-rw"), "{line}");
    assert!(line.contains(&format!("@{} ", big.1)), "offset missing: {line}");
    assert!(line.contains(" aligned "), "{line}");
    assert!(line.contains(&(big.2).to_string()), "size missing: {line}");
    assert!(line.contains("2020-09-13 "), "mtime (UTC) missing: {line}");
    let one = text.lines().find(|l| l.ends_with(" ./one")).unwrap();
    assert!(one.starts_with("-rwsr-xr-x"), "setuid mode: {one}");
    let link = text.lines().find(|l| l.contains(" ./link -> sub/mid-10000")).expect("symlink line");
    assert!(link.starts_with('l'), "{link}");
    assert!(text.lines().any(|l| l.starts_with('h') && l.contains(" link to ")), "hardlink line:\n{text}");
    assert!(text.lines().any(|l| l.starts_with('p') && l.ends_with(" ./fifo")), "fifo line:\n{text}");
    assert!(text.contains(" ./name with space"), "{text}");

    // --align: the mark follows the option.
    let wide = json_lines(&ckpt_ok(&[&"list", &"--json", &"--align", &"65536", &archive]));
    for v in &wide {
        if str_field(v, "type") == "file" && u64_field(v, "size") > 0 {
            assert_eq!(
                v["aligned"].as_bool(),
                Some(u64_field(v, "data_offset").is_multiple_of(65536)),
                "{v}"
            );
        }
    }
    ckpt_code(2, &[&"list", &"--align", &"1000", &archive]);
}

/// A gzip or zstd compressed archive and standard input list exactly like the file: the
/// offsets are positions in the uncompressed stream. `| head` is not an error.
#[test]
fn list_compressed_and_stdin() {
    let s = scratch(FsKind::Plain).unwrap();
    let src = s.path("src");
    make_tree(&src);
    let archive = s.path("a.tar");
    ckpt_ok(&[&"export", &src, &archive]);
    let plain = ckpt_ok(&[&"list", &"--json", &archive]);

    let gz = s.path("a.tar.gz");
    let out = Command::new("gzip").arg("-c").arg(&archive).output().unwrap();
    assert!(out.status.success());
    fs::write(&gz, &out.stdout).unwrap();
    assert_eq!(ckpt_ok(&[&"list", &"--json", &gz]), plain, "gzip listing differs");

    let zst = s.path("a.tar.zst");
    ckpt_ok(&[&"export", &"--compress", &"zstd", &src, &zst]);
    let zlist = json_lines(&ckpt_ok(&[&"list", &"--json", &zst]));
    assert_eq!(zlist.len(), plain.lines().count(), "zstd export listing");

    let o = ckpt_stdin(&["list", "--json", "-"], &archive);
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), plain, "stdin listing differs");
    let o = ckpt_stdin(&["list", "--json", "-"], &gz);
    assert_eq!(String::from_utf8_lossy(&o.stdout), plain, "gzip on stdin listing differs");

    // A closed pipe ends the listing quietly.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' list '{}' | head -n 1 >/dev/null; echo \"${{PIPESTATUS:-0}}\"",
            ckpt_bin(),
            archive.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", describe(&o));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"), "{}", describe(&o));

    // Not an archive.
    let junk = s.path("junk");
    fs::write(&junk, vec![b'x'; 2048]).unwrap();
    let o = ckpt_code(1, &[&"list", &junk]);
    assert!(stderr_of(&o).contains("checksum"), "{}", describe(&o));
}

/// `--nested` lists the members of rootfs-diff.tar as `rootfs-diff.tar/NAME`, at offsets in
/// the outer file where their bytes really are (checked against the layer's files), aligned.
#[test]
fn list_nested_rootfs_diff() {
    let s = scratch(FsKind::Plain).unwrap();
    let bundle = s.path("bundle");
    make_bundle(&bundle);
    let upper = s.path("upper");
    make_tree(&upper);
    let archive = s.path("c.tar");
    ckpt_ok(&[&"export", &"--rootfs-diff", &upper, &bundle, &archive]);

    let flat = json_lines(&ckpt_ok(&[&"list", &"--json", &archive]));
    assert!(flat.iter().all(|v| v.get("nested_in").is_none()), "nested members without --nested");
    let outer = flat.iter().find(|v| str_field(v, "name") == "rootfs-diff.tar").expect("rootfs-diff.tar");
    let (outer_start, outer_size) = (u64_field(outer, "data_offset"), u64_field(outer, "size"));

    let all = json_lines(&ckpt_ok(&[&"list", &"--json", &"--nested", &archive]));
    let nested: Vec<_> = all.iter().filter(|v| v.get("nested_in").is_some()).collect();
    assert_eq!(all.len(), flat.len() + nested.len());
    let upper_members = expected_members(&upper).len();
    // The layer's root may or may not be a member of its own.
    assert!(
        nested.len() == upper_members || nested.len() + 1 == upper_members,
        "{} nested members for {upper_members} entries in the layer",
        nested.len()
    );
    let file = fs::File::open(&archive).unwrap();
    let mut files = 0;
    for v in &nested {
        assert_eq!(str_field(v, "nested_in"), "rootfs-diff.tar");
        let name = str_field(v, "name").strip_prefix("rootfs-diff.tar/").expect("prefixed name");
        let offset = u64_field(v, "data_offset");
        assert!(offset >= outer_start && offset <= outer_start + outer_size, "{v} outside rootfs-diff.tar");
        if str_field(v, "type") != "file" {
            continue;
        }
        files += 1;
        let rel = name.trim_start_matches("./");
        let expected = fs::read(upper.join(rel)).unwrap();
        let mut got = vec![0u8; expected.len()];
        file.read_exact_at(&mut got, offset).unwrap();
        assert!(got == expected, "{name}: the bytes at offset {offset} are not the file's");
        if expected.len() >= 4096 {
            assert_eq!(v["aligned"].as_bool(), Some(true), "{v}");
        }
    }
    assert!(files >= 6, "only {files} nested files");

    // The same listing from a stream.
    let zst = s.path("c.tar.zst");
    sh("zstd", &[&"-q", &"-f", &archive, &"-o", &zst]);
    assert_eq!(json_lines(&ckpt_ok(&[&"list", &"--json", &"--nested", &zst])), all);
    let text = ckpt_ok(&[&"list", &"--nested", &archive]);
    assert!(text.lines().any(|l| l.contains(" rootfs-diff.tar/") && l.contains("big-1M")), "{text}");
}

// ---------------------------------------------------------------------------
// verify
// ---------------------------------------------------------------------------

fn verify_json(archive: &Path, code: i32) -> (serde_json::Value, String) {
    let o = ckpt_code(code, &[&"verify", &"--json", &archive]);
    (parse_json(&String::from_utf8_lossy(&o.stdout)), stderr_of(&o))
}

/// A ckpt archive with a digest manifest verifies (file, gzip, stdin); the counts add up.
#[test]
fn verify_sound_archive_with_digests() {
    let s = scratch(FsKind::Plain).unwrap();
    let src = s.path("src");
    make_tree(&src);
    let archive = s.path("a.tar");
    ckpt_ok(&[&"export", &"--digest", &"sha256", &src, &archive]);
    let listed = json_lines(&ckpt_ok(&[&"list", &"--json", &archive]));
    let last = listed.last().unwrap();
    assert_eq!(str_field(last, "name"), "./ckpt.sha256", "the manifest is the last member");
    let regular = listed.iter().filter(|v| str_field(v, "type") == "file").count() as u64 - 1;

    let (v, _) = verify_json(&archive, 0);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(str_field(&v, "manifest"), "./ckpt.sha256");
    assert_eq!(u64_field(&v, "digests_checked"), regular, "{v}");
    assert_eq!(u64_field(&v, "members"), listed.len() as u64);
    assert_eq!(u64_field(&v, "large_files"), u64_field(&v, "aligned_files"), "{v}");
    assert_eq!(u64_field(&v, "archive_bytes"), fs::metadata(&archive).unwrap().len());

    let text = ckpt_ok(&[&"verify", &archive]);
    assert!(text.contains("OK"), "{text}");
    assert!(text.contains(&format!("{regular} digests match")), "{text}");
    let q = ckpt_ok(&[&"-q", &"verify", &archive]);
    assert!(q.is_empty(), "-q prints nothing on success: {q}");

    let gz = s.path("a.tar.gz");
    fs::write(&gz, Command::new("gzip").arg("-c").arg(&archive).output().unwrap().stdout).unwrap();
    let (v, _) = verify_json(&gz, 0);
    assert_eq!(u64_field(&v, "digests_checked"), regular, "{v}");
    let o = ckpt_stdin(&["verify", "-"], &archive);
    assert!(o.status.success(), "{}", describe(&o));

    // Without a manifest: structure only, still OK.
    let bare = s.path("bare.tar");
    ckpt_ok(&[&"export", &src, &bare]);
    let (v, _) = verify_json(&bare, 0);
    assert!(v["manifest"].is_null());
    assert_eq!(u64_field(&v, "digests_checked"), 0);
    assert!(ckpt_ok(&[&"verify", &bare]).contains("no ckpt.sha256 manifest"));
}

/// One flipped byte in a member's data: verify exits 1 naming that member, from the file and
/// from a compressed stream.
#[test]
fn verify_flipped_data_byte_names_member() {
    let s = scratch(FsKind::Plain).unwrap();
    let src = s.path("src");
    make_tree(&src);
    let archive = s.path("a.tar");
    ckpt_ok(&[&"export", &"--digest", &"sha256", &src, &archive]);
    let python = python_data_offsets(&archive);
    let (_, offset, size, _) = python.iter().find(|m| m.0 == "./sub/mid-10000").unwrap().clone();
    assert_eq!(size, 10_000);
    flip(&archive, offset + 1234);

    let (v, err) = verify_json(&archive, 1);
    assert_eq!(v["ok"], false);
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v}");
    assert_eq!(str_field(&problems[0], "member"), "./sub/mid-10000");
    assert_eq!(u64_field(&problems[0], "offset"), offset);
    assert!(err.contains("./sub/mid-10000") && err.contains("sha256 mismatch"), "{err}");
    let o = ckpt_code(1, &[&"verify", &archive]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAILED"), "{}", describe(&o));

    let gz = s.path("a.tar.gz");
    fs::write(&gz, Command::new("gzip").arg("-c").arg(&archive).output().unwrap().stdout).unwrap();
    let o = ckpt_code(1, &[&"verify", &gz]);
    assert!(stderr_of(&o).contains("./sub/mid-10000"), "{}", describe(&o));
}

/// One flipped byte in a member's ustar header: verify exits 1 naming the member and the
/// header's offset.
#[test]
fn verify_flipped_header_byte_names_member_and_offset() {
    let s = scratch(FsKind::Plain).unwrap();
    let src = s.path("src");
    make_tree(&src);
    let archive = s.path("a.tar");
    ckpt_ok(&[&"export", &"--digest", &"sha256", &src, &archive]);
    let python = python_data_offsets(&archive);
    let (_, offset, _, _) = python.iter().find(|m| m.0 == "./sub/deeper/big-1M").unwrap().clone();
    let header = offset - 512;
    flip(&archive, header + 101); // the mode field

    let o = ckpt_code(1, &[&"verify", &archive]);
    let err = stderr_of(&o);
    assert!(err.contains("big-1M"), "the member is not named: {err}");
    assert!(err.contains(&format!("offset {header}")), "the offset is not named: {err}");
    assert!(err.contains("checksum"), "{err}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("data not checked"), "{}", describe(&o));
    // And from a stream.
    let o = ckpt_stdin(&["verify", "-"], &archive);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(stderr_of(&o).contains(&format!("offset {header}")), "{}", describe(&o));
}

/// Truncated archives fail: without both end-of-archive blocks, or in a member's data.
#[test]
fn verify_truncated_archives() {
    let s = scratch(FsKind::Plain).unwrap();
    let src = s.path("src");
    make_tree(&src);
    let archive = s.path("a.tar");
    ckpt_ok(&[&"export", &src, &archive]);
    let data = fs::read(&archive).unwrap();
    let len = data.len();
    assert!(data[len - 1024..].iter().all(|&b| b == 0));
    let cases: &[(usize, &str)] =
        &[(len - 512, "only one of the two end-of-archive blocks"), (len - 1024, "no end-of-archive blocks")];
    for (cut, expect) in cases {
        let t = s.path("t.tar");
        fs::write(&t, &data[..*cut]).unwrap();
        let o = ckpt_code(1, &[&"verify", &t]);
        assert!(stderr_of(&o).contains(expect), "cut at {cut}: {}", describe(&o));
        let o = ckpt_stdin(&["verify", "-"], &t);
        assert!(stderr_of(&o).contains(expect), "stdin, cut at {cut}: {}", describe(&o));
    }
    // Cut in the middle of the big file's data.
    let python = python_data_offsets(&archive);
    let big = python.iter().find(|m| m.0 == "./sub/deeper/big-1M").unwrap();
    let t = s.path("t.tar");
    fs::write(&t, &data[..(big.1 + 4096) as usize]).unwrap();
    let o = ckpt_code(1, &[&"verify", &t]);
    assert!(stderr_of(&o).contains("big-1M"), "{}", describe(&o));
    let o = ckpt_stdin(&["verify", "-"], &t);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(stderr_of(&o).contains("big-1M"), "{}", describe(&o));
}

/// The manifest format is plain `sha256sum` output: a GNU tar archive with one appended
/// verifies; members missing from it, lines for absent members and wrong digests fail.
#[test]
fn verify_gnu_tar_archive_with_sha256sum_manifest() {
    let s = scratch(FsKind::Plain).unwrap();
    let src = s.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    for (i, name) in ["a", "b b", "d/c", "d/e"].iter().enumerate() {
        fs::write(src.join(name), pseudo_random_bytes(40 + i as u64, 3000 * (i + 1))).unwrap();
    }
    let build = |manifest: &str, name: &str| -> PathBuf {
        let mdir = s.path(format!("m-{name}"));
        fs::create_dir_all(&mdir).unwrap();
        fs::write(mdir.join("ckpt.sha256"), manifest).unwrap();
        let archive = s.path(format!("{name}.tar"));
        sh("tar", &[&"--format=gnu", &"-cf", &archive, &"-C", &src, &"."]);
        sh("tar", &[&"-rf", &archive, &"-C", &mdir, &"./ckpt.sha256"]);
        archive
    };
    let sums = Command::new("sh")
        .arg("-c")
        .arg("find . -type f | LC_ALL=C sort | xargs -d '\\n' sha256sum")
        .current_dir(&src)
        .output()
        .unwrap();
    assert!(sums.status.success());
    let manifest = String::from_utf8(sums.stdout).unwrap();
    assert_eq!(manifest.lines().count(), 4, "{manifest}");

    let good = build(&manifest, "good");
    let (v, _) = verify_json(&good, 0);
    assert_eq!(u64_field(&v, "digests_checked"), 4, "{v}");
    assert_eq!(str_field(&v, "manifest"), "./ckpt.sha256");

    // A line dropped: that member is not covered.
    let dropped: String =
        manifest.lines().filter(|l| !l.ends_with("./d/c")).map(|l| format!("{l}\n")).collect();
    let (_, err) = verify_json(&build(&dropped, "dropped"), 1);
    assert!(err.contains("./d/c") && err.contains("not listed"), "{err}");
    // A line for a member the archive lacks.
    let extra = format!("{manifest}{}  ./gone\n", "0".repeat(64));
    let (_, err) = verify_json(&build(&extra, "extra"), 1);
    assert!(err.contains("./gone") && err.contains("not a regular member"), "{err}");
    // A wrong digest.
    let wrong = manifest.replacen(&manifest[..1], if &manifest[..1] == "0" { "1" } else { "0" }, 1);
    let (v, err) = verify_json(&build(&wrong, "wrong"), 1);
    assert_eq!(v["problems"].as_array().unwrap().len(), 1, "{v}");
    assert!(err.contains("sha256 mismatch"), "{err}");
    // Not a manifest at all.
    let (_, err) = verify_json(&build("hello\n", "garbage"), 1);
    assert!(err.contains("not a sha256sum manifest"), "{err}");
}

/// A checkpoint archive with rootfs changes: the nested rootfs-diff.tar is walked too, and a
/// flipped byte inside it fails the digest of rootfs-diff.tar.
#[test]
fn verify_nested_rootfs_diff() {
    let s = scratch(FsKind::Plain).unwrap();
    let bundle = s.path("bundle");
    make_bundle(&bundle);
    let upper = s.path("upper");
    make_tree(&upper);
    let archive = s.path("c.tar");
    ckpt_ok(&[&"export", &"--digest", &"sha256", &"--rootfs-diff", &upper, &bundle, &archive]);
    let (v, _) = verify_json(&archive, 0);
    assert!(u64_field(&v, "nested_members") >= 10, "{v}");
    assert_eq!(str_field(&v, "manifest"), "ckpt.sha256");

    let all = json_lines(&ckpt_ok(&[&"list", &"--json", &"--nested", &archive]));
    // A damaged header inside rootfs-diff.tar is named with the nested member's path.
    let header_damaged = s.path("h.tar");
    fs::copy(&archive, &header_damaged).unwrap();
    let big = all.iter().find(|v| str_field(v, "name").ends_with("/sub/deeper/big-1M")).unwrap();
    let header = u64_field(big, "data_offset") - 512;
    flip(&header_damaged, header + 101);
    let (v, err) = verify_json(&header_damaged, 1);
    assert_eq!(v["complete"], true, "the outer archive is still complete: {v}");
    assert!(err.contains("rootfs-diff.tar/") && err.contains("big-1M"), "{err}");
    assert!(err.contains(&format!("offset {header}")) && err.contains("checksum"), "{err}");

    let inner = all.iter().find(|v| str_field(v, "name").ends_with("/sub/mid-10000")).unwrap();
    flip(&archive, u64_field(inner, "data_offset") + 7);
    let (_, err) = verify_json(&archive, 1);
    assert!(err.contains("\"rootfs-diff.tar\"") && err.contains("sha256 mismatch"), "{err}");
}

// ---------------------------------------------------------------------------
// progress, completions, man
// ---------------------------------------------------------------------------

/// On a terminal (under `script`), verify draws a progress bar on stderr; without one, or
/// with -q, stderr stays clean.
#[test]
fn verify_progress_bar_only_on_a_tty() {
    if !have("script") {
        return;
    }
    let s = scratch(FsKind::Plain).unwrap();
    let src = s.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big"), pseudo_random_bytes(77, 48 << 20)).unwrap();
    let archive = s.path("big.tar");
    ckpt_ok(&[&"export", &"--digest", &"sha256", &src, &archive]);

    let tty = |extra: &str| -> String {
        let command = format!("{} {extra} verify {}", ckpt_bin(), archive.display());
        let o = Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", describe(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let shown = tty("");
    assert!(shown.contains("OK"), "{shown}");
    assert!(shown.contains("B/48.0"), "no progress line:\n{shown:?}");
    assert!(shown.contains("verify"), "{shown:?}");
    let quiet = tty("-q");
    assert!(!quiet.contains("MiB"), "-q drew a progress bar: {quiet:?}");

    let o = ckpt_code(0, &[&"verify", &archive]);
    let err = stderr_of(&o);
    assert!(err.is_empty(), "progress output without a terminal: {err:?}");
}

/// `ckpt completions bash` prints a completion script bash accepts; other shells work too.
#[test]
fn completions() {
    let bash = ckpt_ok(&[&"completions", &"bash"]);
    assert!(bash.contains("_ckpt") && bash.contains("complete -F"), "{bash}");
    for sub in ["export", "import", "list", "verify", "hook"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    let mut child = Command::new("bash").arg("-n").stdin(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(bash.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "bash -n rejects the completion script");
    for shell in ["zsh", "fish"] {
        assert!(!ckpt_ok(&[&"completions", &shell]).is_empty(), "{shell}");
    }
    ckpt_code(2, &[&"completions", &"no-such-shell"]);
}

/// `ckpt man` prints a roff page (per command too), which man(1) renders.
#[test]
fn man_page() {
    let page = ckpt_ok(&[&"man"]);
    assert!(page.contains(".TH ckpt 1"), "{page}");
    for sub in ["export", "import", "list", "verify", "hook", "completions"] {
        assert!(page.contains(sub), "the page does not mention {sub}");
    }
    let verify = ckpt_ok(&[&"man", &"verify"]);
    assert!(verify.contains(".TH ckpt-verify"), "{verify}");
    assert!(verify.contains("\\-\\-align") || verify.contains("--align"), "{verify}");
    ckpt_code(2, &[&"man", &"no-such-command"]);

    if !have("man") {
        eprintln!("man(1) is not installed: rendering not checked");
        return;
    }
    let s = scratch(FsKind::Plain).unwrap();
    let file = s.path("ckpt.1");
    fs::write(&file, &page).unwrap();
    let o = Command::new("man")
        .arg("-l")
        .arg(&file)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", describe(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("NAME") && text.contains("ckpt"), "{text}");
}

/// New commands keep the exit-status convention: usage errors exit 2.
#[test]
fn usage_errors_exit_2() {
    for args in [
        &["list"][..],
        &["verify"],
        &["list", "--no-such-flag", "x"],
        &["verify", "--align", "3", "x"],
        &["export", "--clone-min", "16Q", "src", "out.tar"],
        &["export", "--clone-min", "99999999999G", "src", "out.tar"],
    ] {
        let argv: Vec<Arg> = args.iter().map(|a| a as Arg).collect();
        ckpt_code(2, &argv);
    }
    // A missing archive is a failure (1), not a usage error.
    let o = ckpt_code(1, &[&"verify", &"/nonexistent-ckpt.tar"]);
    assert!(stderr_of(&o).contains("/nonexistent-ckpt.tar"), "{}", describe(&o));
    ckpt_code(1, &[&"list", &"/nonexistent-ckpt.tar"]);
}
