//! Hostile inputs and faults on the export side: what OUT names (devices, fifos, symlinks, a
//! file inside SRC), the archive's mode, temporary files left by a killed export, sources that
//! are swapped or changed while they are archived, trees deeper than PATH_MAX and huge
//! directories, and the sizes `--json` reports.

use crate::util;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::util::{
    Arg, FsKind, Scratch, as_nobody, ckpt, ckpt_bin, ckpt_code, ckpt_ok, dead_pid, describe, dir_names,
    kill_when, parse_json, peak_rss_kib, require_root, scratch, sh, stderr_of, test_base_dir,
};

/// A small source tree: a few files (one big enough to clone), a directory, a symlink.
fn small_tree(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), b"hello\n").unwrap();
    fs::write(src.join("sub/pages.img"), util::pseudo_random_bytes(7, 100_000)).unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
    src
}

/// The archive ckpt writes for `src` into a regular file: what every other output must hold.
fn reference_archive(src: &Path, work: &Path) -> Vec<u8> {
    let out = work.join("reference.tar");
    ckpt_ok(&[&"export", &src, &out]);
    fs::read(&out).unwrap()
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `ckpt ARGS` with this umask (through sh) and extra environment.
fn ckpt_with(umask: &str, env: &[(&str, &str)], args: &[Arg]) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("umask {umask} && exec \"$0\" \"$@\"")).arg(ckpt_bin());
    cmd.args(args.iter().map(|a| a.as_ref())).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// `ckpt ARGS` run as `nobody`. None (after a skip message) when not root.
fn ckpt_as_nobody(args: &[Arg]) -> Option<Output> {
    if !require_root("running ckpt as nobody") {
        return None;
    }
    Some(as_nobody(ckpt_bin()).args(args.iter().map(|a| a.as_ref())).output().unwrap())
}

/// A directory `nobody` may write in, inside a Plain scratch area.
fn nobody_dir(plain: &Scratch) -> PathBuf {
    let mut p = plain.root.clone();
    while p.starts_with(test_base_dir()) && p != test_base_dir() {
        let mode = mode_of(&p) | 0o711;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p.pop();
    }
    let dir = plain.path("nobody");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

// ---------------------------------------------------------------------------
// 1. Archives are private
// ---------------------------------------------------------------------------

macro_rules! mode_under_umask {
    ($($name:ident: $umask:expr, $env:expr;)*) => {$(
        #[test]
        fn $name() {
            let plain = scratch(FsKind::Plain).unwrap();
            let src = small_tree(&plain.root);
            let out = plain.path("out.tar");
            let run = ckpt_with($umask, $env, &[&"export", &src, &out]);
            assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
            assert_eq!(mode_of(&out), 0o600, "mode of {} under umask {}", out.display(), $umask);
            assert_eq!(dir_names(&plain.root).len(), 2, "left: {:?}", dir_names(&plain.root));
        }
    )*};
}

mode_under_umask! {
    archive_is_0600_under_umask_000: "000", &[];
    archive_is_0600_under_umask_077: "077", &[];
    archive_is_0600_under_umask_277: "277", &[];
    archive_under_a_temporary_name_is_0600_under_umask_000: "000", &[("CKPT_NO_TMPFILE", "1")];
    archive_under_a_temporary_name_is_0600_under_umask_277: "277", &[("CKPT_NO_TMPFILE", "1")];
}

#[test]
fn replaced_archive_of_mode_0644_becomes_0600() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let out = plain.path("out.tar");
    fs::write(&out, b"old").unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o644)).unwrap();
    for env in [&[][..], &[("CKPT_NO_TMPFILE", "1")][..]] {
        let run = ckpt_with("022", env, &[&"export", &src, &out]);
        assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
        assert_eq!(mode_of(&out), 0o600);
        fs::set_permissions(&out, fs::Permissions::from_mode(0o644)).unwrap();
    }
}

#[test]
fn compressed_archive_is_0600() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let out = plain.path("out.tar.zst");
    let run = ckpt_with("000", &[], &[&"export", &"--compress", &"zstd", &src, &out]);
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    assert_eq!(mode_of(&out), 0o600);
}

#[test]
fn archive_written_by_nobody_is_0600() {
    let plain = scratch(FsKind::Plain).unwrap();
    let dir = nobody_dir(&plain);
    let src = small_tree(&plain.root);
    sh("chmod", &[&"-R", &"a+rX", &src]);
    let out = dir.join("out.tar");
    let Some(run) = ckpt_as_nobody(&[&"export", &src, &out]) else { return };
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    assert_eq!(mode_of(&out), 0o600);
    assert_eq!(fs::metadata(&out).unwrap().uid(), 65534);
}

// ---------------------------------------------------------------------------
// 2. What OUT names
// ---------------------------------------------------------------------------

#[test]
fn export_to_a_null_device_node_writes_into_it_and_keeps_the_node() {
    if !require_root("mknod") {
        return;
    }
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let null = plain.path("null");
    sh("mknod", &[&null, &"c", &"1", &"3"]);
    let ino = fs::symlink_metadata(&null).unwrap().ino();
    for compress in [&[][..], &["--compress", "gzip"][..]] {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"export"];
        args.extend(compress.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
        args.extend([&src as Arg, &null]);
        ckpt_code(0, &args);
        let meta = fs::symlink_metadata(&null).unwrap();
        assert!(meta.file_type().is_char_device(), "{} is no longer a device", null.display());
        assert_eq!((meta.ino(), meta.rdev()), (ino, rustix::fs::makedev(1, 3)), "the node was replaced");
    }
    assert_eq!(dir_names(&plain.root).len(), 2, "left: {:?}", dir_names(&plain.root));
}

#[test]
fn export_to_dev_null_as_nobody_succeeds_and_keeps_dev_null() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    sh("chmod", &[&"-R", &"a+rX", &plain.root]);
    let _ = nobody_dir(&plain);
    let Some(run) = ckpt_as_nobody(&[&"export", &src, &"/dev/null"]) else { return };
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    let meta = fs::symlink_metadata("/dev/null").unwrap();
    assert!(meta.file_type().is_char_device() && meta.rdev() == rustix::fs::makedev(1, 3));
}

/// Reads everything from the fifo at `path` on a thread.
fn read_fifo(path: &Path) -> std::thread::JoinHandle<Vec<u8>> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let mut data = Vec::new();
        fs::File::open(&path).unwrap().read_to_end(&mut data).unwrap();
        data
    })
}

#[test]
fn export_to_a_fifo_streams_the_archive_to_its_reader() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let expected = reference_archive(&src, &plain.root);
    let fifo = plain.path("fifo");
    sh("mkfifo", &[&fifo]);
    let reader = read_fifo(&fifo);
    ckpt_ok(&[&"export", &src, &fifo]);
    let got = reader.join().unwrap();
    assert!(
        got == expected,
        "the fifo's reader got {} bytes, not the {}-byte archive",
        got.len(),
        expected.len()
    );
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the fifo was replaced");
}

#[test]
fn export_to_a_symlink_to_a_fifo_streams_into_the_fifo() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let expected = reference_archive(&src, &plain.root);
    let fifo = plain.path("fifo");
    sh("mkfifo", &[&fifo]);
    let link = plain.path("link");
    std::os::unix::fs::symlink("fifo", &link).unwrap();
    let reader = read_fifo(&fifo);
    ckpt_ok(&[&"export", &src, &link]);
    assert!(reader.join().unwrap() == expected);
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn export_to_dev_stdout_that_is_a_pipe_streams_into_it() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let expected = reference_archive(&src, &plain.root);
    let out = Command::new(ckpt_bin())
        .args(["export".as_ref(), src.as_os_str(), "/dev/stdout".as_ref()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        out.stdout == expected,
        "stdout got {} bytes, not the {}-byte archive",
        out.stdout.len(),
        expected.len()
    );
}

#[test]
fn export_through_symlinks_replaces_the_final_target_atomically() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let expected = reference_archive(&src, &plain.root);
    fs::create_dir(plain.path("store")).unwrap();
    let target = plain.path("store/real.tar");
    fs::write(&target, b"previous").unwrap();
    let old_ino = fs::metadata(&target).unwrap().ino();
    // link1 -> store/link2 (relative to link1's directory) -> real.tar (relative to store/).
    std::os::unix::fs::symlink("real.tar", plain.path("store/link2")).unwrap();
    std::os::unix::fs::symlink("store/link2", plain.path("link1")).unwrap();
    ckpt_ok(&[&"export", &src, &plain.path("link1")]);
    assert!(fs::symlink_metadata(plain.path("link1")).unwrap().file_type().is_symlink());
    assert!(fs::symlink_metadata(plain.path("store/link2")).unwrap().file_type().is_symlink());
    let meta = fs::symlink_metadata(&target).unwrap();
    assert!(meta.is_file());
    assert_ne!(meta.ino(), old_ino, "written into the old file instead of replacing it");
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert!(fs::read(&target).unwrap() == expected);
    assert_eq!(dir_names(&plain.path("store")).len(), 2, "left: {:?}", dir_names(&plain.path("store")));
}

#[test]
fn export_through_a_dangling_symlink_creates_its_target() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let expected = reference_archive(&src, &plain.root);
    std::os::unix::fs::symlink("new.tar", plain.path("link")).unwrap();
    ckpt_ok(&[&"export", &src, &plain.path("link")]);
    assert!(fs::symlink_metadata(plain.path("link")).unwrap().file_type().is_symlink());
    assert!(fs::read(plain.path("new.tar")).unwrap() == expected);
}

#[test]
fn export_to_a_block_device_is_refused_and_leaves_the_node() {
    if !require_root("mknod") {
        return;
    }
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let node = plain.path("blk");
    // A loop device's numbers: refused before it is opened, so nothing is written to it.
    sh("mknod", &[&node, &"b", &"7", &"200"]);
    let run = ckpt_code(1, &[&"export", &src, &node]);
    let err = stderr_of(&run);
    assert!(err.contains("blk") && err.contains("block device"), "unclear error: {err}");
    assert!(fs::symlink_metadata(&node).unwrap().file_type().is_block_device());
}

#[test]
fn export_to_a_socket_is_refused_and_leaves_it() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let sock = plain.path("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let run = ckpt_code(1, &[&"export", &src, &sock]);
    let err = stderr_of(&run);
    assert!(err.contains("sock") && err.contains("socket"), "unclear error: {err}");
    assert!(fs::symlink_metadata(&sock).unwrap().file_type().is_socket());
}

#[test]
fn export_to_a_directory_is_refused() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let run = ckpt_code(1, &[&"export", &src, &plain.root]);
    assert!(stderr_of(&run).contains("is a directory"), "{}", describe(&run));
}

// ---------------------------------------------------------------------------
// 4. OUT inside SRC
// ---------------------------------------------------------------------------

fn members(archive: &Path) -> Vec<String> {
    sh("tar", &[&"-tf", &archive]).lines().map(str::to_owned).collect()
}

#[test]
fn archive_inside_the_source_is_not_archived_into_itself() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let out = src.join("sub/out.tar");
    for env in [&[][..], &[("CKPT_NO_TMPFILE", "1")][..]] {
        let _ = fs::remove_file(&out);
        // Twice: the second time the previous archive is there too.
        for round in 0..2 {
            let run = ckpt_with("022", env, &[&"export", &src, &out]);
            assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
            // Only an unnamed O_TMPFILE with no previous archive has nothing to leave out.
            if round == 1 || !env.is_empty() {
                assert!(
                    stderr_of(&run).contains("file is the archive; not dumped"),
                    "no warning: {}",
                    describe(&run)
                );
            }
            let names = members(&out);
            assert!(names.iter().all(|n| !n.contains("out.tar")), "archived into itself: {names:?}");
            assert_eq!(names.len(), 5, "{names:?}");
        }
    }
}

#[test]
fn stdout_redirected_into_the_source_is_not_archived_into_itself() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let out = src.join("out.tar");
    let file = fs::File::create(&out).unwrap();
    let run = Command::new(ckpt_bin()).arg("export").arg(&src).arg("-").stdout(file).output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    let names = members(&out);
    assert!(names.iter().all(|n| !n.contains("out.tar")), "archived into itself: {names:?}");
}

// ---------------------------------------------------------------------------
// 5. Temporary names left by killed exports
// ---------------------------------------------------------------------------

fn temp_names(dir: &Path) -> Vec<String> {
    dir_names(dir)
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn stale_temporary_name_of_a_dead_process_is_removed_by_the_next_export() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let outdir = plain.path("out");
    fs::create_dir(&outdir).unwrap();
    let stale = outdir.join(format!(".other.tar.ckpt-{}-0.tmp", dead_pid()));
    fs::write(&stale, b"half an archive").unwrap();
    ckpt_ok(&[&"export", &src, &outdir.join("out.tar")]);
    assert!(!stale.exists(), "{} was left", stale.display());
    assert_eq!(dir_names(&outdir), vec![std::ffi::OsString::from("out.tar")]);
}

#[test]
fn temporary_name_of_a_live_process_is_kept() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let live = plain.path(format!(".out.tar.ckpt-{}-0.tmp", std::process::id()));
    fs::write(&live, b"being written").unwrap();
    ckpt_ok(&[&"export", &src, &plain.path("out.tar")]);
    assert_eq!(fs::read(&live).unwrap(), b"being written");
}

#[test]
fn locked_temporary_name_of_a_pid_unknown_here_is_kept() {
    // A writer in another pid namespace: its pid means nothing here, its lock does.
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let locked = plain.path(format!(".out.tar.ckpt-{}-0.tmp", dead_pid()));
    fs::write(&locked, b"being written").unwrap();
    let mut holder = Command::new("flock").arg("-x").arg(&locked).args(["sleep", "30"]).spawn().unwrap();
    // flock takes the lock before it runs sleep.
    let started = Instant::now();
    while Command::new("flock").arg("-xn").arg(&locked).arg("true").status().unwrap().success() {
        assert!(started.elapsed() < Duration::from_secs(10), "flock never took the lock");
        std::thread::sleep(Duration::from_millis(10));
    }
    let run = ckpt(&[&"export", &src, &plain.path("out.tar")]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    assert_eq!(fs::read(&locked).unwrap(), b"being written");
}

#[test]
fn temporary_file_of_a_killed_export_is_removed_by_the_next_export() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = plain.path("src");
    fs::create_dir(&src).unwrap();
    for i in 0..8 {
        let mut f = fs::File::create(src.join(format!("f{i}"))).unwrap();
        for j in 0..32 {
            f.write_all(&util::pseudo_random_bytes(i * 100 + j, 1 << 20)).unwrap();
        }
    }
    let outdir = plain.path("out");
    fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.tar");
    let mut killed = false;
    for _ in 0..5 {
        let mut child = Command::new(ckpt_bin())
            .args(["export".as_ref(), "--no-clone".as_ref(), src.as_os_str(), out.as_os_str()])
            .env("CKPT_NO_TMPFILE", "1")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let temp_written = || {
            temp_names(&outdir).iter().any(|n| fs::metadata(outdir.join(n)).is_ok_and(|m| m.len() > 8 << 20))
        };
        if kill_when(&mut child, temp_written) {
            killed = true;
            break;
        }
        let _ = fs::remove_file(&out);
    }
    assert!(killed, "every export finished before it could be killed");
    assert_eq!(temp_names(&outdir).len(), 1, "the killed export left no temporary file");
    assert!(!out.exists());
    let run = Command::new(ckpt_bin())
        .args(["-v".as_ref(), "export".as_ref(), src.as_os_str(), out.as_os_str()])
        .env("CKPT_NO_TMPFILE", "1")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    assert!(temp_names(&outdir).is_empty(), "left: {:?}", temp_names(&outdir));
    assert!(stderr_of(&run).contains("killed"), "the removal is not reported: {}", describe(&run));
    assert_eq!(members(&out).len(), 9);
}

// ---------------------------------------------------------------------------
// 3, 7, 9. Sources swapped or changed during the export
// ---------------------------------------------------------------------------

/// Runs `change` in a loop on a thread until the returned guard is dropped.
struct Changer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Changer {
    fn start(change: impl Fn(u64) + Send + 'static) -> Changer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                change(i);
                i += 1;
            }
        });
        Changer { stop, thread: Some(thread) }
    }
}

impl Drop for Changer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs ckpt, killing it (and failing the test) if it takes longer than `limit`.
fn ckpt_within(limit: Duration, args: &[Arg]) -> Output {
    let mut child = Command::new(ckpt_bin())
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "ckpt {:?} hung (killed after {limit:?})",
                args.iter().map(|a| a.as_ref()).collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn source_swapped_for_a_fifo_fails_the_export_without_hanging() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = plain.path("src");
    fs::create_dir(&src).unwrap();
    // The victim is walked first, then the rest of its window, then opened.
    let victim = src.join("a-victim");
    fs::write(&victim, b"data\n").unwrap();
    for i in 0..400 {
        fs::write(src.join(format!("f{i:03}")), b"x").unwrap();
    }
    let spare = plain.path("spare");
    fs::create_dir(&spare).unwrap();
    let (file, fifo) = (spare.join("file"), spare.join("fifo"));
    fs::write(&file, b"data\n").unwrap();
    sh("mkfifo", &[&fifo]);
    let out = plain.path("out.tar");
    let mut fifo_failures = 0;
    {
        let victim = victim.clone();
        let _changer = Changer::start(move |_| {
            // Exchange the victim with the fifo and back: the name always exists.
            let _ = rustix::fs::renameat_with(
                rustix::fs::CWD,
                &victim,
                rustix::fs::CWD,
                &fifo,
                rustix::fs::RenameFlags::EXCHANGE,
            );
            std::thread::sleep(Duration::from_micros(300));
        });
        for _ in 0..60 {
            let run = ckpt_within(Duration::from_secs(30), &[&"export", &src, &out]);
            let err = stderr_of(&run);
            match run.status.code() {
                Some(0) => fs::remove_file(&out).unwrap(),
                Some(1) => {
                    assert!(
                        err.contains("a-victim") && err.contains("changed while being archived"),
                        "unclear error: {err}"
                    );
                    if err.contains("fifo") {
                        fifo_failures += 1;
                    }
                    assert!(!out.exists(), "a failed export left {}", out.display());
                }
                _ => panic!("{}", describe(&run)),
            }
            if fifo_failures >= 3 {
                break;
            }
        }
    }
    eprintln!("{fifo_failures} exports found the victim swapped for a fifo");
    assert!(fifo_failures > 0, "the swap never landed between the walk and the open");
}

#[test]
fn directory_swapped_for_a_symlink_never_pulls_in_files_from_outside() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = plain.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..300 {
        fs::write(src.join(format!("a{i:03}")), b"x").unwrap();
    }
    fs::write(src.join("sub/file"), b"inside\n").unwrap();
    let outside = plain.path("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("file"), b"SECRET-OUTSIDE\n").unwrap();
    fs::write(outside.join("secret-only-outside"), b"SECRET-OUTSIDE\n").unwrap();
    let swap = plain.path("swap");
    std::os::unix::fs::symlink(&outside, &swap).unwrap();
    let out = plain.path("out.tar");
    let sub = src.join("sub");
    let _changer = Changer::start(move |_| {
        let _ = rustix::fs::renameat_with(
            rustix::fs::CWD,
            &sub,
            rustix::fs::CWD,
            &swap,
            rustix::fs::RenameFlags::EXCHANGE,
        );
        std::thread::sleep(Duration::from_micros(200));
    });
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..40 {
        let run = ckpt_within(Duration::from_secs(30), &[&"export", &src, &out]);
        if run.status.code() != Some(0) {
            failed += 1;
            assert!(stderr_of(&run).contains("sub"), "{}", describe(&run));
            continue;
        }
        ok += 1;
        let bytes = fs::read(&out).unwrap();
        assert!(
            !bytes.windows(14).any(|w| w == b"SECRET-OUTSIDE"),
            "a file from outside SRC is in the archive: {:?}",
            members(&out)
        );
        assert!(members(&out).iter().all(|n| !n.contains("secret-only-outside")), "{:?}", members(&out));
    }
    eprintln!("{ok} exports succeeded, {failed} failed on the swap");
}

#[test]
fn source_that_grows_fails_naming_its_old_and_new_size() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = plain.path("src");
    fs::create_dir(&src).unwrap();
    let first = src.join("a-first");
    let mut f = fs::File::create(&first).unwrap();
    for j in 0..48 {
        f.write_all(&util::pseudo_random_bytes(j, 1 << 20)).unwrap();
    }
    let victim = src.join("z-growing");
    fs::write(&victim, vec![1u8; 4 << 20]).unwrap();
    let out = plain.path("out.tar");
    let run = {
        let victim = victim.clone();
        let _changer = Changer::start(move |_| {
            let mut f = fs::OpenOptions::new().append(true).open(&victim).unwrap();
            f.write_all(&[0x5a; 4096]).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        });
        std::thread::sleep(Duration::from_millis(20));
        ckpt(&[&"export", &"--no-clone", &src, &out])
    };
    assert_eq!(run.status.code(), Some(1), "{}", describe(&run));
    let err = stderr_of(&run);
    let re_ok = err.contains("z-growing: changed while being archived: size ") && err.contains(" -> ");
    assert!(re_ok, "the error does not say what changed: {err}");
    assert!(!out.exists());
}

#[test]
fn source_touched_fails_naming_its_old_and_new_mtime() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = plain.path("src");
    fs::create_dir(&src).unwrap();
    let mut f = fs::File::create(src.join("a-first")).unwrap();
    for j in 0..48 {
        f.write_all(&util::pseudo_random_bytes(j, 1 << 20)).unwrap();
    }
    let victim = src.join("z-touched");
    fs::write(&victim, vec![1u8; 4 << 20]).unwrap();
    util::set_mtime(&victim, 1_500_000_000, 0);
    let out = plain.path("out.tar");
    let run = {
        let victim = victim.clone();
        let _changer = Changer::start(move |i| {
            util::set_mtime(&victim, 1_600_000_000 + i as i64, 1);
            std::thread::sleep(Duration::from_millis(1));
        });
        std::thread::sleep(Duration::from_millis(20));
        ckpt(&[&"export", &"--no-clone", &src, &out])
    };
    assert_eq!(run.status.code(), Some(1), "{}", describe(&run));
    let err = stderr_of(&run);
    assert!(err.contains("z-touched: changed while being archived: mtime 1"), "{err}");
    assert!(!err.contains("size "), "the size did not change: {err}");
}

// ---------------------------------------------------------------------------
// 6, 8. Deep trees, huge directories
// ---------------------------------------------------------------------------

/// Removes a tree too deep for full paths (rm uses descriptors), also on panic.
struct RemoveTree(PathBuf);

impl Drop for RemoveTree {
    fn drop(&mut self) {
        let _ = Command::new("rm").arg("-rf").arg(&self.0).status();
    }
}

/// `levels` nested directories `dNNNN` under `root` with a file at the bottom, made through
/// descriptors; returns the bottom file's path.
fn deep_tree(root: &Path, levels: usize, data: &[u8]) -> String {
    use rustix::fs::{Mode, OFlags};
    let mut dir = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    let mut rel = String::from(".");
    for i in 0..levels {
        let name = format!("d{:04}", i % 10_000);
        rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
        dir = rustix::fs::openat(&dir, name.as_str(), OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())
            .unwrap();
        rel.push('/');
        rel.push_str(&name);
    }
    let fd =
        rustix::fs::openat(&dir, "bottom", OFlags::CREATE | OFlags::WRONLY, Mode::from_bits_truncate(0o644))
            .unwrap();
    rustix::io::write(&fd, data).unwrap();
    rel.push_str("/bottom");
    rel
}

#[test]
fn tree_3000_levels_deep_with_paths_beyond_path_max_is_archived() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = plain.path("src");
    fs::create_dir(&src).unwrap();
    let _cleanup = RemoveTree(src.clone());
    let data = util::pseudo_random_bytes(3, 20_000);
    let bottom = deep_tree(&src, 3000, &data);
    assert!(bottom.len() > 15_000, "the path is {} bytes", bottom.len());
    let out = plain.path("deep.tar");
    ckpt_ok(&[&"export", &src, &out]);
    let names = members(&out);
    assert_eq!(names.len(), 1 + 3000 + 1, "members");
    assert_eq!(names.last().unwrap(), &bottom);
    // GNU tar reads the deepest member back by its full name.
    let got = Command::new("tar").arg("-xOf").arg(&out).arg(&bottom).output().unwrap();
    assert!(got.status.success(), "{}", describe(&got));
    assert!(got.stdout == data, "the deepest file's data differs");
}

#[test]
fn tree_3000_levels_deep_streams_to_stdout() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = plain.path("src");
    fs::create_dir(&src).unwrap();
    let _cleanup = RemoveTree(src.clone());
    deep_tree(&src, 3000, b"bottom\n");
    let file_out = plain.path("deep.tar");
    ckpt_ok(&[&"export", &src, &file_out]);
    let run = Command::new(ckpt_bin()).arg("export").arg(&src).arg("-").output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    assert!(run.stdout == fs::read(&file_out).unwrap(), "stream and file differ");
}

#[test]
fn memory_for_one_huge_directory_grows_by_little_more_than_its_names() {
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let name = |i: usize| format!("entry-with-a-name-of-some-length-{i:07}");
    let mut rss = Vec::new();
    for count in [1_000usize, 100_000] {
        let src = tmp.path().join(format!("src-{count}"));
        fs::create_dir(&src).unwrap();
        for i in 0..count {
            // Empty files: only the directory's size matters here.
            fs::File::create(src.join(name(i))).unwrap();
        }
        let out = tmp.path().join(format!("{count}.tar"));
        let Some(kib) = peak_rss_kib(&[&"export", &src, &out]) else { return };
        rss.push(kib);
        assert_eq!(members(&out).len(), count + 1);
    }
    // The README's cost: the name plus 5 bytes per entry, in buffers that grow by doubling.
    let names_kib = (99_000 * (name(0).len() as u64 + 5)) / 1024;
    let grown = rss[1].saturating_sub(rss[0]);
    eprintln!(
        "peak RSS {} KiB -> {} KiB (+{grown} KiB) for 99,000 more entries of {names_kib} KiB of names",
        rss[0], rss[1]
    );
    assert!(grown < 2 * names_kib + 2048, "grew by {grown} KiB, more than twice the names ({names_kib} KiB)");
}

// ---------------------------------------------------------------------------
// 10. Sizes in --json
// ---------------------------------------------------------------------------

fn json_field(v: &serde_json::Value, key: &str) -> u64 {
    util::json_u64(v, key)
}

#[test]
fn json_of_a_zstd_export_reports_the_compressed_bytes_written() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    fs::write(src.join("zeros"), vec![0u8; 1 << 20]).unwrap();
    let out = plain.path("out.tar.zst");
    let v = util::ckpt_json(&[&"export", &"--json", &"--compress", &"zstd", &src, &out]);
    let on_disk = fs::metadata(&out).unwrap().len();
    assert_eq!(json_field(&v, "archive_bytes"), on_disk, "{v}");
    let tar = Command::new("zstd").arg("-dc").arg(&out).output().unwrap();
    assert!(tar.status.success());
    assert_eq!(json_field(&v, "tar_bytes"), tar.stdout.len() as u64, "{v}");
    assert!(on_disk < tar.stdout.len() as u64);
}

#[test]
fn json_of_a_gzip_export_to_stdout_reports_the_bytes_on_stdout() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let run = Command::new(ckpt_bin())
        .args(["export", "--json", "--compress", "gzip"])
        .arg(&src)
        .arg("-")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    let v = parse_json(&String::from_utf8_lossy(&run.stderr));
    assert_eq!(json_field(&v, "archive_bytes"), run.stdout.len() as u64, "{v}");
    assert!(json_field(&v, "tar_bytes") > json_field(&v, "archive_bytes"));
}

#[test]
fn json_of_a_plain_export_reports_equal_archive_and_tar_bytes() {
    let plain = scratch(FsKind::Plain).unwrap();
    let src = small_tree(&plain.root);
    let out = plain.path("out.tar");
    let v = util::ckpt_json(&[&"export", &"--json", &src, &out]);
    let len = fs::metadata(&out).unwrap().len();
    assert_eq!((json_field(&v, "archive_bytes"), json_field(&v, "tar_bytes")), (len, len), "{v}");
}
