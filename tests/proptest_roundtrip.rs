//! Property: for any small tree (nested directories; files whose sizes sit around the block
//! and alignment boundaries; names with spaces, UTF-8 and up to 250 bytes; symlinks;
//! hardlinks; modes; mtimes with nanoseconds, before 1970 too; user.* xattrs), `ckpt export`
//! then `ckpt import` into a plain directory gives back the same tree
//! (util::assert_trees_equal: types, modes, owners, mtimes, contents, link targets, xattrs
//! and hardlink groups).

use crate::util;
use std::fs;
use std::path::{Path, PathBuf};

use crate::util::{FsKind, assert_trees_equal, ckpt_ok, pseudo_random_bytes, scratch, set_mtime, set_xattr};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

/// A file or directory name: plain, with spaces, UTF-8, or long (up to 250 bytes).
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9_.-]{1,12}",
        1 => "[a-z]{1,5} [a-z ]{0,6}[a-z]",
        1 => "[a-zäöüßéñ€😀ファイル]{1,10}",
        1 => (100usize..=250).prop_map(|n| "n".repeat(n)),
        1 => (40usize..=60).prop_map(|n| "é".repeat(n)),
    ]
    .prop_filter("not . or ..", |n| n != "." && n != "..")
}

/// File sizes around 512 and 4096, and a few others.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(511),
        Just(512),
        Just(513),
        Just(4095),
        Just(4096),
        Just(4097),
        Just(8192 + 1),
        Just(65536 + 7),
        0usize..20_000,
    ]
}

/// Seconds (before 1970 too) and nanoseconds.
fn mtime() -> impl Strategy<Value = (i64, i64)> {
    (-1_000_000_000i64..4_000_000_000, 0i64..1_000_000_000)
}

fn xattrs() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec(("user\\.[a-z0-9.]{1,12}", prop::collection::vec(any::<u8>(), 0..100)), 0..3)
}

#[derive(Debug, Clone)]
struct FileSpec {
    dir: usize,
    name: String,
    size: usize,
    seed: u64,
    mode: u32,
    mtime: (i64, i64),
    xattrs: Vec<(String, Vec<u8>)>,
}

type Xattrs = Vec<(String, Vec<u8>)>;

#[derive(Debug, Clone)]
struct DirSpec {
    parent: usize,
    name: String,
    mode: u32,
    mtime: (i64, i64),
    xattrs: Xattrs,
}

#[derive(Debug, Clone)]
struct Tree {
    /// Directories; index 0 is the root (not listed), and each parent index refers to an
    /// earlier directory.
    dirs: Vec<DirSpec>,
    files: Vec<FileSpec>,
    /// (directory, name, target, mtime).
    symlinks: Vec<(usize, String, String, (i64, i64))>,
    /// (directory, name, index of the file it is another name of).
    hardlinks: Vec<(usize, String, usize)>,
    root: (u32, (i64, i64)),
}

fn tree() -> impl Strategy<Value = Tree> {
    let dirs =
        prop::collection::vec((any::<prop::sample::Index>(), name(), 0u32..0o1000, mtime(), xattrs()), 0..6);
    let files = prop::collection::vec(
        (any::<prop::sample::Index>(), name(), size(), any::<u64>(), 0u32..0o10000, mtime(), xattrs()),
        0..10,
    );
    let symlinks = prop::collection::vec(
        (
            any::<prop::sample::Index>(),
            name(),
            prop_oneof!["[a-z./]{1,30}", "/[a-z/]{1,40}", (100usize..300).prop_map(|n| "t/".repeat(n / 2))],
            mtime(),
        ),
        0..4,
    );
    let hardlinks =
        prop::collection::vec((any::<prop::sample::Index>(), name(), any::<prop::sample::Index>()), 0..4);
    (dirs, files, symlinks, hardlinks, 0u32..0o1000, mtime()).prop_map(
        |(dirs, files, symlinks, hardlinks, root_mode, root_mtime)| {
            let mut tree = Tree {
                dirs: Vec::new(),
                files: Vec::new(),
                symlinks: Vec::new(),
                hardlinks: Vec::new(),
                root: (root_mode, root_mtime),
            };
            for (i, (parent, name, mode, mtime, xattrs)) in dirs.into_iter().enumerate() {
                // Index 0 is the root: directory i+1 hangs below one of 0..=i.
                tree.dirs.push(DirSpec { parent: parent.index(i + 1), name, mode, mtime, xattrs });
            }
            let ndirs = tree.dirs.len() + 1;
            for (dir, name, size, seed, mode, mtime, xattrs) in files {
                tree.files.push(FileSpec { dir: dir.index(ndirs), name, size, seed, mode, mtime, xattrs });
            }
            for (dir, name, target, mtime) in symlinks {
                tree.symlinks.push((dir.index(ndirs), name, target, mtime));
            }
            if !tree.files.is_empty() {
                let nfiles = tree.files.len();
                for (dir, name, file) in hardlinks {
                    tree.hardlinks.push((dir.index(ndirs), name, file.index(nfiles)));
                }
            }
            tree
        },
    )
}

/// Creates `tree` at `root`; names that collide with an earlier entry are skipped.
fn build(tree: &Tree, root: &Path) {
    let taken = |p: &Path| fs::symlink_metadata(p).is_ok();
    // Directory paths by index; None when skipped (then its contents go to the root).
    let mut dirs: Vec<PathBuf> = vec![root.to_path_buf()];
    for spec in &tree.dirs {
        let path = dirs[spec.parent].join(&spec.name);
        if taken(&path) || path.as_os_str().len() > 3000 {
            dirs.push(dirs[spec.parent].clone());
        } else {
            fs::create_dir(&path).unwrap();
            dirs.push(path);
        }
    }
    let mut files: Vec<Option<PathBuf>> = Vec::new();
    for f in &tree.files {
        let path = dirs[f.dir].join(&f.name);
        if taken(&path) {
            files.push(None);
            continue;
        }
        fs::write(&path, pseudo_random_bytes(f.seed, f.size)).unwrap();
        for (k, v) in &f.xattrs {
            set_xattr(&path, k, v);
        }
        files.push(Some(path));
    }
    for (dir, name, file) in &tree.hardlinks {
        let path = dirs[*dir].join(name);
        if let Some(target) = &files[*file]
            && !taken(&path)
        {
            fs::hard_link(target, &path).unwrap();
        }
    }
    for (dir, name, target, mtime) in &tree.symlinks {
        let path = dirs[*dir].join(name);
        if !taken(&path) {
            std::os::unix::fs::symlink(target, &path).unwrap();
            set_mtime(&path, mtime.0, mtime.1);
        }
    }
    // Modes and times of files (hardlinked ones get the last spec's), then directories
    // deepest first, then the root. Without root, owner access is kept so that the tree can
    // be read and restored.
    let (file_bits, dir_bits) = if rustix::process::geteuid().is_root() { (0, 0) } else { (0o600, 0o700) };
    for (f, path) in tree.files.iter().zip(&files) {
        if let Some(path) = path {
            fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(f.mode | file_bits))
                .unwrap();
            set_mtime(path, f.mtime.0, f.mtime.1);
        }
    }
    for (i, DirSpec { mode, mtime, xattrs, .. }) in tree.dirs.iter().enumerate().rev() {
        let path = &dirs[i + 1];
        if path == root || dirs[..=i].contains(path) {
            continue; // skipped: its slot points at an earlier directory
        }
        for (k, v) in xattrs {
            set_xattr(path, k, v);
        }
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode | dir_bits)).unwrap();
        set_mtime(path, mtime.0, mtime.1);
    }
    fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(tree.root.0 | dir_bits)).unwrap();
    set_mtime(root, tree.root.1.0, tree.root.1.1);
}

fn roundtrip(tree: &Tree, align: Option<&str>) {
    let Some(scratch) = scratch(FsKind::Plain) else { return };
    let src = scratch.path("src");
    fs::create_dir(&src).unwrap();
    build(tree, &src);
    let archive = scratch.path("archive.tar");
    let dest = scratch.path("dest");
    match align {
        Some(align) => ckpt_ok(&[&"export", &"--align", &align, &src, &archive]),
        None => ckpt_ok(&[&"export", &src, &archive]),
    };
    ckpt_ok(&[&"import", &archive, &dest]);
    assert_trees_equal(&src, &dest);
    if std::env::var_os("CKPT_PROPTEST_VERBOSE").is_some() {
        eprintln!("{:?} align {align:?}", util::tree_stats(&src));
    }
    // From a stream as well (the other reader path).
    let piped = scratch.path("piped");
    let status = std::process::Command::new(util::ckpt_bin())
        .args(["import", "-"])
        .arg(&piped)
        .stdin(fs::File::open(&archive).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "import - failed: {status}");
    assert_trees_equal(&src, &piped);
}

fn config() -> Config {
    Config {
        cases: 32,
        max_shrink_iters: 200,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn export_then_import_is_the_identity(tree in tree(), align in prop::option::of(prop_oneof![Just("512"), Just("65536")])) {
        roundtrip(&tree, align);
    }
}
