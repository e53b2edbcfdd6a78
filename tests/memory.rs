//! Memory does not grow with the number of files: an export holds a window of members, not the
//! tree, and a nested rootfs-diff.tar is sized by a first pass rather than held. Peak RSS is
//! measured with /usr/bin/time, as scripts/bench.sh does.

use std::fs;
use std::path::Path;

use crate::util::*;

/// `count` small files in directories of 100, with names long enough to matter.
fn many_files(dir: &Path, count: usize) {
    for i in 0..count {
        let sub = dir.join(format!("directory-with-a-longish-name-{:05}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&sub).unwrap();
        }
        let name = format!("file-with-a-name-like-a-real-one-{i:06}.conf");
        fs::write(sub.join(name), format!("{i}\n")).unwrap();
    }
}

/// Forty times the files costs no more than 4 MiB more (holding every member took ~500 bytes
/// each: 20 MiB for 40,000 files).
fn assert_flat(what: &str, few: u64, many: u64) {
    eprintln!("{what}: peak RSS {few} KiB for 1,000 files, {many} KiB for 40,000");
    assert!(many < few + 4096, "{what}: peak RSS grew from {few} KiB to {many} KiB with the file count");
}

#[test]
fn export_memory_does_not_grow_with_file_count() {
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let mut rss = Vec::new();
    for count in [1_000, 40_000] {
        let src = tmp.path().join(format!("src-{count}"));
        many_files(&src, count);
        let archive = tmp.path().join(format!("{count}.tar"));
        let Some(kib) = peak_rss_kib(&[&"export", &src, &archive]) else { return };
        rss.push(kib);
        let listed = sh("tar", &[&"-tf", &archive]).lines().count();
        assert_eq!(listed, 1 + count + count / 100, "members of {}", archive.display());
    }
    assert_flat("export", rss[0], rss[1]);
}

#[test]
fn rootfs_diff_export_memory_does_not_grow_with_file_count() {
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let bundle = tmp.path().join("bundle");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sample-bundle");
    sh("cp", &[&"-a", &sample, &bundle]);
    let mut rss = Vec::new();
    for count in [1_000, 40_000] {
        let upper = tmp.path().join(format!("upper-{count}"));
        many_files(&upper, count);
        let archive = tmp.path().join(format!("{count}.tar"));
        let Some(kib) = peak_rss_kib(&[&"export", &bundle, &archive, &"--rootfs-diff", &upper]) else {
            return;
        };
        rss.push(kib);
        let inner = sh("sh", &[&"-c", &"tar -xOf \"$0\" rootfs-diff.tar | tar -tf - | wc -l", &archive]);
        assert_eq!(inner.trim().parse::<usize>().unwrap(), 1 + count + count / 100);
    }
    assert_flat("export --rootfs-diff", rss[0], rss[1]);
}
