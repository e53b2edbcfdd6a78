//! Seekable zstd (`ckpt export --compress zstd`): other tools read it as one zstd stream,
//! `list` reads only its index, a corrupted frame is named, a cut at any frame boundary is
//! detected, parallel decoding restores the same tree as one thread, and `read_member`
//! returns one member's bytes.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::util::{
    self, Bundle, FsKind, Tar, assert_trees_equal, ckpt, ckpt_ok, describe, have, pseudo_random_bytes,
    scratch, sh, stderr_of,
};

/// A tree whose archive has several frames: two large files (own frames, one over 2 MiB),
/// compressible text, small files, a directory and a symlink.
fn make_tree(src: &Path) {
    fs::create_dir_all(src.join("d/e")).unwrap();
    fs::write(src.join("d/big"), pseudo_random_bytes(1, (5 << 20) + 123)).unwrap();
    let text: String = (0..150_000).map(|i| format!("line {i} of some text\n")).collect();
    fs::write(src.join("text"), text).unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("d/e/small{i}")), format!("small file {i}\n")).unwrap();
    }
    util::symlink("d/big", &src.join("link"));
    fs::write(src.join("z-last"), b"the last member\n").unwrap();
}

/// `ckpt list OPTIONS` of the seekable `archive` (read from its index), asserted equal to
/// the list of the same bytes read as a stream from standard input; the list.
fn list_from_index_as_from_stream(archive: &Path, options: &str) -> String {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"list"];
    let words: Vec<&str> = options.split_whitespace().collect();
    args.extend(words.iter().map(|w| w as &dyn AsRef<std::ffi::OsStr>));
    args.push(&archive);
    let indexed = ckpt_ok(&args);
    let streamed = Command::new("sh")
        .args(["-c", &format!("{} list {options} - < {}", util::ckpt_bin(), archive.display())])
        .output()
        .unwrap();
    assert!(streamed.status.success(), "{}", describe(&streamed));
    assert_eq!(indexed, String::from_utf8(streamed.stdout).unwrap(), "index and stream list differently");
    indexed
}

/// The seek table's entries (compressed size, decompressed size) of a seekable zstd file.
fn seek_table(data: &[u8]) -> Vec<(u64, u64)> {
    let le = |at: usize| u64::from(u32::from_le_bytes(data[at..at + 4].try_into().unwrap()));
    let n = data.len();
    assert_eq!(le(n - 4), 0x8F92_EAB1, "no seekable footer");
    let count = le(n - 9) as usize;
    let start = n - 9 - count * 12;
    assert_eq!(le(start - 8), 0x184D_2A5E, "no seek table frame");
    (0..count).map(|i| (le(start + i * 12), le(start + i * 12 + 4))).collect()
}

/// Where each frame starts in the compressed file, and where the seek table starts.
fn frame_offsets(data: &[u8]) -> Vec<u64> {
    let mut at = 0;
    let mut offsets = vec![0];
    for (compressed, _) in seek_table(data) {
        at += compressed;
        offsets.push(at);
    }
    offsets
}

fn export_zstd(src: &Path, out: &Path, extra: &[&str]) -> Vec<u8> {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"export", &"--compress", &"zstd"];
    args.extend(extra.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
    args.push(&src);
    args.push(&out);
    ckpt_ok(&args);
    fs::read(out).unwrap()
}

/// Bytes this thread has read through system calls so far (`rchar` of /proc/thread-self/io).
fn thread_rchar() -> u64 {
    let io = fs::read_to_string("/proc/thread-self/io").unwrap();
    let line = io.lines().find(|l| l.starts_with("rchar:")).unwrap();
    line[6..].trim().parse().unwrap()
}

#[test]
fn gnu_tar_zstd_dc_and_bsdtar_extract_a_seekable_archive_to_the_same_tree() {
    if !util::require_root("owners") || !have("zstd") || !have("bsdtar") || !have("tar") {
        return;
    }
    let s = scratch(FsKind::Plain).unwrap();
    let src = s.path("src");
    make_tree(&src);
    let archive = s.path("a.tar.zst");
    let data = export_zstd(&src, &archive, &[]);
    let frames = seek_table(&data);
    assert!(frames.iter().filter(|(_, tar)| *tar > 0).count() >= 4, "too few frames: {frames:?}");
    let shell = format!("zstd -dc {} | tar -x -C {}", archive.display(), s.path("piped").display());
    let runs: [(&str, Vec<String>); 3] = [
        ("gnu", vec!["tar".into(), "-I".into(), "zstd".into(), "-xf".into()]),
        ("bsd", vec!["bsdtar".into(), "-xf".into()]),
        ("piped", vec![]),
    ];
    for (name, command) in runs {
        let dest = s.path(name);
        fs::create_dir(&dest).unwrap();
        let out = if command.is_empty() {
            Command::new("sh").args(["-c", &shell]).output().unwrap()
        } else {
            Command::new(&command[0]).args(&command[1..]).arg(&archive).arg("-C").arg(&dest).output().unwrap()
        };
        assert!(out.status.success(), "{name}: {}", describe(&out));
        assert!(out.stderr.is_empty(), "{name} warned: {}", describe(&out));
        // bsdtar leaves the mtime of the directory it extracts into ("./") as it was.
        let root = fs::metadata(&src).unwrap();
        util::set_mtime(&dest, root.mtime(), root.mtime_nsec());
        assert_trees_equal(&src, &dest);
    }
    let t = Command::new("zstd").args(["-t", "-q"]).arg(&archive).output().unwrap();
    assert!(t.status.success(), "zstd -t: {}", describe(&t));
}

#[test]
fn list_of_a_64_mib_seekable_archive_reads_under_1_mib_and_matches_the_streamed_list() {
    let s = scratch(FsKind::Plain).unwrap();
    let src = s.path("src");
    make_tree(&src);
    fs::write(src.join("d/huge"), pseudo_random_bytes(2, 66 << 20)).unwrap();
    let archive = s.path("a.tar.zst");
    let size = export_zstd(&src, &archive, &[]).len() as u64;
    assert!(size >= 64 << 20, "archive of {size} bytes");

    let before = thread_rchar();
    let mut names = Vec::new();
    ckpt::list(&archive, &ckpt::ListOptions::default(), &mut |e| {
        names.push(e.name.clone());
        Ok(())
    })
    .unwrap();
    let read = thread_rchar() - before;
    assert!(read < 1 << 20, "list read {read} bytes of a {size}-byte archive");
    assert!(names.iter().any(|n| n == b"./d/huge"), "{names:?}");

    list_from_index_as_from_stream(&archive, "--json");
    let text = ckpt_ok(&[&"list", &archive]);
    assert_eq!(text.lines().count(), names.len());
    let headers = ckpt_ok(&[&"verify", &"--headers", &archive]);
    assert!(headers.contains("OK"), "{headers}");
}

#[test]
fn a_corrupted_frame_is_named_by_import_and_verify() {
    let s = scratch(FsKind::Plain).unwrap();
    let src = s.path("src");
    make_tree(&src);
    let archive = s.path("a.tar.zst");
    let mut data = export_zstd(&src, &archive, &["--digest", "sha256"]);
    let offsets = frame_offsets(&data);
    let table = seek_table(&data);
    // The first frame of ./d/big's data: the first full-size one.
    let full = table.iter().map(|(_, tar)| *tar).max().unwrap();
    let i = table.iter().position(|(_, tar)| *tar == full).unwrap();
    let at = offsets[i] + table[i].0 / 2;
    data[at as usize] ^= 0x10;
    let bad = s.path("bad.tar.zst");
    fs::write(&bad, &data).unwrap();
    let named = format!(
        "zstd frame {} of {} (at compressed offset {}, holding member \"./d/big\"",
        i + 1,
        table.len(),
        offsets[i]
    );
    let import = ckpt(&[&"import", &bad, &s.path("dest")]);
    assert_eq!(import.status.code(), Some(1), "{}", describe(&import));
    assert!(stderr_of(&import).contains(&named), "import does not say {named}\n{}", describe(&import));
    let verify = ckpt(&[&"verify", &bad]);
    assert_eq!(verify.status.code(), Some(1), "{}", describe(&verify));
    assert!(stderr_of(&verify).contains(&named), "verify does not say {named}\n{}", describe(&verify));
}

#[test]
fn a_seekable_archive_cut_at_any_frame_boundary_fails_import_and_verify() {
    let s = scratch(FsKind::Plain).unwrap();
    let src = s.path("src");
    make_tree(&src);
    let data = export_zstd(&src, &s.path("a.tar.zst"), &[]);
    let offsets = frame_offsets(&data);
    assert!(offsets.len() >= 6, "{offsets:?}");
    for &cut in &offsets[1..] {
        let archive = s.path(format!("cut{cut}.tar.zst"));
        fs::write(&archive, &data[..cut as usize]).unwrap();
        let dest = s.path(format!("dest{cut}"));
        let import = ckpt(&[&"import", &archive, &dest]);
        assert_eq!(import.status.code(), Some(1), "import of a cut at {cut}: {}", describe(&import));
        let verify = ckpt(&[&"verify", &archive]);
        assert_eq!(verify.status.code(), Some(1), "verify of a cut at {cut}: {}", describe(&verify));
        let said = stderr_of(&import) + &stderr_of(&verify);
        assert!(
            said.contains("truncated") || said.contains("archive ends in the middle"),
            "a cut at {cut} not called truncated: {said}"
        );
        fs::remove_file(&archive).unwrap();
    }
}

#[test]
fn import_with_one_job_and_with_four_restores_identical_trees() {
    let s = scratch(FsKind::Plain).unwrap();
    let src = s.path("src");
    make_tree(&src);
    for i in 0..4 {
        fs::write(src.join(format!("d/image{i}")), pseudo_random_bytes(10 + i, (3 << 20) + i as usize))
            .unwrap();
    }
    let archive = s.path("a.tar.zst");
    export_zstd(&src, &archive, &[]);
    let (one, four, env) = (s.path("one"), s.path("four"), s.path("env"));
    ckpt_ok(&[&"import", &"--jobs", &"1", &archive, &one]);
    ckpt_ok(&[&"import", &"--jobs", &"4", &archive, &four]);
    let out = Command::new(util::ckpt_bin())
        .env("CKPT_JOBS", "3")
        .arg("import")
        .arg(&archive)
        .arg(&env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_trees_equal(&one, &four);
    assert_trees_equal(&one, &env);
    assert_trees_equal(&src, &one);
}

#[test]
fn read_member_returns_config_dump_reading_only_its_frames() {
    let s = scratch(FsKind::Plain).unwrap();
    let bundle = s.path("bundle");
    let config = br#"{"id":"abc","name":"web"}"#.to_vec();
    Bundle::sample()
        .file("config.dump", config.clone())
        .file("checkpoint/pages-9.img", pseudo_random_bytes(3, 24 << 20))
        .write(&bundle);
    let archive = s.path("c.tar.zst");
    ckpt_ok(&[&"export", &"--bundle", &"--compress", &"zstd", &bundle, &archive]);
    let before = thread_rchar();
    assert_eq!(ckpt::read_member(&archive, "config.dump", 1 << 20).unwrap(), config);
    let read = thread_rchar() - before;
    assert!(read < 1 << 20, "read_member read {read} bytes");
    let err = ckpt::read_member(&archive, "config.dump", 4).unwrap_err();
    assert!(err.to_string().contains("config.dump of"), "{err}");
    let missing = ckpt::read_member(&archive, "nothing", 1 << 20).unwrap_err();
    assert_eq!(missing.kind(), ckpt::ErrorKind::Unsuitable, "{missing}");
    // A plain archive and a zstd stream that is not seekable give the same bytes.
    let plain = s.path("c.tar");
    ckpt_ok(&[&"export", &"--bundle", &bundle, &plain]);
    assert_eq!(ckpt::read_member(&plain, "./config.dump", 1 << 20).unwrap(), config);
    if have("zstd") {
        sh("zstd", &[&"-q", &plain, &"-o", &s.path("c.tar.zst2")]);
        assert_eq!(ckpt::read_member(&s.path("c.tar.zst2"), "config.dump", 1 << 20).unwrap(), config);
    }
}

#[test]
fn read_member_takes_the_last_of_two_members_of_one_name_in_a_file_and_in_streams() {
    if !(have("zstd") && have("gzip")) {
        return;
    }
    let s = scratch(FsKind::Plain).unwrap();
    let mut tar = Tar::new();
    tar.file("config.dump", br#"{"first":1}"#)
        .file("spec.dump", b"{}")
        .file("./config.dump", br#"{"last":2}"#);
    let plain = s.path("dup.tar");
    fs::write(&plain, tar.end().bytes()).unwrap();
    sh("zstd", &[&"-q", &plain, &"-o", &s.path("dup.tar.zst")]);
    sh("gzip", &[&"-k", &plain]);
    for archive in ["dup.tar", "dup.tar.zst", "dup.tar.gz"] {
        let data = ckpt::read_member(&s.path(archive), "config.dump", 1 << 20).unwrap();
        assert_eq!(data, br#"{"last":2}"#, "{archive}");
    }
}

#[test]
fn nested_list_and_verify_headers_of_a_seekable_checkpoint_match_the_stream() {
    let s = scratch(FsKind::Plain).unwrap();
    let (bundle, upper) = (s.path("bundle"), s.path("upper"));
    Bundle::sample().write(&bundle);
    fs::create_dir_all(upper.join("etc")).unwrap();
    fs::write(upper.join("etc/hosts"), b"127.0.0.1 changed\n").unwrap();
    fs::write(upper.join("big"), pseudo_random_bytes(4, 3 << 20)).unwrap();
    let archive = s.path("c.tar.zst");
    ckpt_ok(&[&"export", &"--bundle", &"--rootfs-diff", &upper, &"--compress", &"zstd", &bundle, &archive]);
    let indexed = list_from_index_as_from_stream(&archive, "--nested --json");
    assert!(indexed.contains("\"rootfs-diff.tar/big\""), "{indexed}");
    let headers = util::ckpt_json(&[&"verify", &"--headers", &"--json", &archive]);
    let full = util::ckpt_json(&[&"verify", &"--json", &archive]);
    for key in ["members", "nested_members", "files", "aligned_files", "complete", "ok"] {
        assert_eq!(headers[key], full[key], "{key}: {headers} vs {full}");
    }
    assert!(util::json_u64(&headers, "nested_members") >= 3, "{headers}");
}

/// A file with holes is a PAX 1.0 sparse member, whose map is at the start of its data: the
/// index holds the map too, so list and verify --headers of the seekable archive see the
/// member as the stream does, and import restores it with its holes.
#[test]
fn a_sparse_member_of_a_seekable_archive_lists_from_the_index_as_from_the_stream() {
    let s = scratch(FsKind::Plain).unwrap();
    let src = s.path("src");
    make_tree(&src);
    let sparse = fs::File::create(src.join("pages.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &pseudo_random_bytes(5, 3 << 20), 8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"tail", (64 << 20) - 4).unwrap();
    drop(sparse);
    let archive = s.path("a.tar.zst");
    export_zstd(&src, &archive, &[]);
    let indexed = list_from_index_as_from_stream(&archive, "--json");
    assert!(indexed.contains("pages.img"), "{indexed}");
    let headers = util::ckpt_json(&[&"verify", &"--headers", &"--json", &archive]);
    assert_eq!(headers["ok"], true, "{headers}");
    let dest = s.path("dest");
    ckpt_ok(&[&"import", &archive, &dest]);
    assert_trees_equal(&src, &dest);
    let allocated = fs::metadata(dest.join("pages.img")).unwrap().blocks() * 512;
    assert!(allocated < 8 << 20, "pages.img restored with {allocated} bytes allocated");
}
