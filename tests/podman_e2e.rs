//! End to end with a real podman (runc, CRIU): containers whose storage root is on a loop
//! Btrfs or XFS are checkpointed and restored by `ckpt podman` and by podman itself, in
//! every combination; each restored process must continue (its counter keeps growing from
//! where it was at checkpoint) and see its rootfs changes. Also: rollback into the same
//! container, secrets kept out of the archive, named volumes carried, data shared with the
//! layer, the OCI hooks at podman's real stages, and refusals that leave nothing behind.
//!
//! Every case runs on Btrfs and on XFS (`CASE::btrfs`, `CASE::xfs`), one at a time: podman
//! and CRIU are slow enough under load that parallel containers make timings noisy.

use crate::util::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `case` with a podman whose storage is on a fresh `kind` filesystem (or skips).
fn with_podman(kind: FsKind, case: fn(&Scratch, &Podman)) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = scratch_sized(kind, 2 << 30) else { return };
    let Some(pm) = Podman::new(&s) else { return };
    case(&s, &pm);
}

/// `fn NAME(s, pm) { ... }` becomes the tests `NAME::btrfs` and `NAME::xfs`.
macro_rules! on_btrfs_and_xfs {
    ($(#[doc = $doc:literal])* fn $name:ident($s:ident, $pm:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            use super::*;

            fn case($s: &Scratch, $pm: &Podman) $body

            #[test]
            fn btrfs() {
                with_podman(FsKind::Btrfs, case);
            }

            #[test]
            fn xfs() {
                with_podman(FsKind::Xfs, case);
            }
        }
    };
}

/// Rootfs changes made inside the container: content, mode (setuid), owner, a symlink, a
/// deleted image file (/bin/vi) and a replaced image directory (/d held x, now only y).
const CHANGES: &str = "mkdir -p /data/sub && head -c 3145728 /dev/urandom > /data/big && \
    echo small > /data/small && chmod 4751 /data/small && chown 1234:5678 /data/small && \
    ln -s ../big /data/sub/link && rm /bin/vi && rm -rf /d && mkdir /d && echo new > /d/y";

/// What the container sees of [`CHANGES`]: every entry's type, mode and owner, regular files'
/// size, mtime and MD5, symlink targets, and whether /bin/vi exists.
const SNAPSHOT: &str = "find /data /d -exec stat -c '%n|%F|%a|%u|%g' {} + | sort; \
    find /data /d -type f -exec stat -c '%n|%s|%Y' {} + | sort; \
    find /data /d -type f -exec md5sum {} + | sort; readlink /data/sub/link; \
    for p in /bin/vi /bin/sh; do if [ -L $p ]; then echo $p present; else echo $p absent; fi; done";

fn snapshot(pm: &Podman, name: &str) -> String {
    pm.ok(&[&"exec", &name, &"/bin/sh", &"-c", &SNAPSHOT])
}

fn exec_sh(pm: &Podman, name: &str, script: &str) -> String {
    pm.ok(&[&"exec", &name, &"/bin/sh", &"-c", &script])
}

/// Member names of `archive`, nested rootfs-diff.tar members as `rootfs-diff.tar/NAME`.
fn members(archive: &Path) -> Vec<String> {
    ckpt_ok(&[&"list", &"--json", &"--nested", &archive])
        .lines()
        .map(|l| parse_json(l)["name"].as_str().expect("member without a name").to_string())
        .collect()
}

fn assert_mode_0600(archive: &Path) {
    let mode = fs::metadata(archive).unwrap_or_else(|e| panic!("stat {}: {e}", archive.display())).mode();
    assert_eq!(mode & 0o7777, 0o600, "{} holds process memory: mode must be 0600", archive.display());
}

/// `ckpt ARGS` with podman run through `script` (a shell script, `podman` on its `PATH`), so
/// that a podman step can be made to fail.
fn ckpt_through(s: &Scratch, pm: &Podman, script: &str, args: &[Arg]) -> (Option<i32>, String) {
    let podman = s.path("podman-wrapper");
    fs::write(&podman, format!("#!/bin/sh\n{script}")).unwrap();
    fs::set_permissions(&podman, fs::Permissions::from_mode(0o755)).unwrap();
    let out = pm
        .command(ckpt_bin())
        .env("CKPT_PODMAN", &podman)
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A podman wrapper whose `container checkpoint` succeeds, then reports a failure (as a
/// cleanup after the export that failed would).
const PODMAN_FAILS_AFTER_CHECKPOINT: &str = "podman \"$@\" || exit\n\
     if [ \"$1 $2\" = 'container checkpoint' ]; then echo 'cleanup failed (test)' >&2; exit 1; fi\n";

/// Waits until container `name`'s counter reaches `value`.
fn wait_for_counter(pm: &Podman, name: &str, value: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = pm.counter(name);
        if v >= value {
            return v;
        }
        assert!(Instant::now() < deadline, "container {name}: counter stuck at {v}, waiting for {value}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An uncompressed copy of podman's archive `src` whose config.dump is changed by `edit`
/// (extracted and repacked with GNU tar, members in podman's order).
fn edited_podman_archive(
    s: &Scratch,
    src: &Path,
    edit: impl Fn(&mut serde_json::Value),
) -> std::path::PathBuf {
    let dir = s.path("edited");
    fs::create_dir_all(&dir).unwrap();
    sh("tar", &[&"-C", &dir, &"-xf", &src]);
    let names: Vec<String> = sh("tar", &[&"-tf", &src])
        .lines()
        .filter(|n| !n.trim_end_matches('/').contains('/'))
        .map(str::to_string)
        .collect();
    let dump = dir.join("config.dump");
    let mut config: serde_json::Value = serde_json::from_slice(&fs::read(&dump).unwrap()).unwrap();
    edit(&mut config);
    fs::write(&dump, serde_json::to_vec(&config).unwrap()).unwrap();
    let out = s.path("edited.tar");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-C", &dir, &"-cf", &out];
    args.extend(names.iter().map(|n| n as &dyn AsRef<std::ffi::OsStr>));
    sh("tar", &args);
    out
}

// ---------------------------------------------------------------------------
// a. ckpt podman checkpoint -> podman container restore --import
// ---------------------------------------------------------------------------

on_btrfs_and_xfs! {
    /// ckpt's uncompressed archive is podman's format: podman imports it, the process
    /// continues and sees its rootfs change; the archive is 0600.
    fn podman_import_of_ckpt_checkpoint_continues_the_process(s, pm) {
        pm.run_counter("c1", &[]);
        exec_sh(pm, "c1", "mkdir /data && echo kept > /data/f");
        let at_checkpoint = pm.counter("c1");
        let archive = s.path("c1.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"c1", &archive]);
        assert_eq!(pm.inspect("c1", "{{.State.Status}}"), "exited", "checkpoint without --leave-running stops c1");

        pm.ok(&[&"container", &"restore", &"--import", &archive, &"--name", &"c2"]);
        pm.assert_counter_continues("c2", at_checkpoint);
        assert_eq!(exec_sh(pm, "c2", "cat /data/f"), "kept");
        assert_mode_0600(&archive);
    }
}

on_btrfs_and_xfs! {
    /// The same with `--compress zstd`: a zstd stream that podman's import detects.
    fn podman_import_of_ckpt_zstd_checkpoint_continues_the_process(s, pm) {
        pm.run_counter("c1", &[]);
        exec_sh(pm, "c1", "mkdir /data && echo kept > /data/f");
        let at_checkpoint = pm.counter("c1");
        let archive = s.path("c1.tar.zst");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"--compress", &"zstd", &"c1", &archive]);
        let magic = fs::read(&archive).unwrap();
        assert_eq!(&magic[..4], [0x28, 0xb5, 0x2f, 0xfd], "not a zstd frame");

        pm.ok(&[&"container", &"restore", &"--import", &archive, &"--name", &"c2"]);
        pm.assert_counter_continues("c2", at_checkpoint);
        assert_eq!(exec_sh(pm, "c2", "cat /data/f"), "kept");
        assert_mode_0600(&archive);
    }
}

on_btrfs_and_xfs! {
    /// ckpt's zstd archive is seekable: `ckpt podman restore` reads config.dump and
    /// spec.dump from their frames only and decodes the rest on worker threads; the new
    /// container continues the process.
    fn ckpt_restore_of_ckpt_zstd_checkpoint_continues_the_process(s, pm) {
        pm.run_counter("c1", &[]);
        exec_sh(pm, "c1", "mkdir /data && echo kept > /data/f");
        let at_checkpoint = pm.counter("c1");
        let archive = s.path("c1.tar.zst");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"--compress", &"zstd", &"c1", &archive]);
        pm.ok(&[&"rm", &"c1"]);

        let id = pm.ckpt_ok(&[&"podman", &"restore", &archive]);
        assert_eq!(pm.inspect("c1", "{{.ID}}"), id, "ckpt podman restore prints the new container's ID");
        pm.assert_counter_continues("c1", at_checkpoint);
        assert_eq!(exec_sh(pm, "c1", "cat /data/f"), "kept");
    }
}

// ---------------------------------------------------------------------------
// b. podman container checkpoint --export -> ckpt podman restore
// ---------------------------------------------------------------------------

/// podman exports c1 (with `compress`), c1 is removed, ckpt restores the archive: the new
/// container (the ID ckpt prints, named c1 from config.dump) continues.
fn ckpt_restore_of_podman_export(s: &Scratch, pm: &Podman, compress: &str) {
    pm.run_counter("c1", &[]);
    exec_sh(pm, "c1", "mkdir /data && echo kept > /data/f && rm /bin/vi");
    let at_checkpoint = pm.counter("c1");
    let archive = s.path("podman-export.tar");
    pm.ok(&[&"container", &"checkpoint", &"--export", &archive, &"--compress", &compress, &"c1"]);
    pm.ok(&[&"rm", &"c1"]);

    let id = pm.ckpt_ok(&[&"podman", &"restore", &archive]);
    assert_eq!(pm.inspect("c1", "{{.ID}}"), id, "ckpt podman restore prints the new container's ID");
    assert_eq!(pm.inspect("c1", "{{.State.Status}}"), "running");
    pm.assert_counter_continues("c1", at_checkpoint);
    assert_eq!(
        exec_sh(pm, "c1", "cat /data/f; [ -L /bin/vi ] && echo vi present || echo vi absent"),
        "kept\nvi absent"
    );
    // podman's archives do not carry the layer's own directory: it stays as podman made it.
    assert_eq!(fs::metadata(pm.upper_dir("c1")).unwrap().mode(), fresh_upper_mode(pm));
    assert_eq!(pm.ckpt_leftovers(), Vec::<std::path::PathBuf>::new());
}

on_btrfs_and_xfs! {
    /// podman's own uncompressed export.
    fn ckpt_restore_of_podman_export_continues_the_process(s, pm) {
        ckpt_restore_of_podman_export(s, pm, "none");
    }
}

on_btrfs_and_xfs! {
    /// podman's default, zstd.
    fn ckpt_restore_of_podman_zstd_export_continues_the_process(s, pm) {
        ckpt_restore_of_podman_export(s, pm, "zstd");
    }
}

// ---------------------------------------------------------------------------
// c. ckpt podman checkpoint -> ckpt podman restore --name
// ---------------------------------------------------------------------------

on_btrfs_and_xfs! {
    /// A new container restored by ckpt continues and sees exactly the rootfs the old one
    /// saw: contents, modes, owners, a symlink, a host-set user xattr, a deleted image file
    /// and a replaced image directory (only its new entries).
    fn ckpt_restore_of_ckpt_checkpoint_keeps_rootfs_changes(s, pm) {
        pm.run_counter("c1", &[]);
        exec_sh(pm, "c1", CHANGES);
        set_xattr(&pm.upper_dir("c1").join("data/big"), "user.ckpt.test", b"xattr value");
        let before = snapshot(pm, "c1");
        assert!(before.contains("/d/y|") && !before.contains("/d/x") && before.contains("/bin/vi absent"), "{before}");
        let at_checkpoint = pm.counter("c1");
        let archive = s.path("c1.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"c1", &archive]);
        let names = members(&archive);
        assert!(names.iter().any(|n| n == "rootfs-diff.tar/data/big"), "{names:?}");
        assert!(names.iter().any(|n| n == "deleted.files"), "{names:?}");

        let id = pm.ckpt_ok(&[&"podman", &"restore", &"--name", &"c2", &archive]);
        assert_eq!(pm.inspect("c2", "{{.ID}}"), id);
        assert_ne!(pm.inspect("c1", "{{.ID}}"), id, "a new container, not c1");
        pm.assert_counter_continues("c2", at_checkpoint);
        assert_eq!(snapshot(pm, "c2"), before, "the restored container sees other files");
        let x = xattrs(&pm.upper_dir("c2").join("data/big"));
        assert_eq!(x.get("user.ckpt.test").map(Vec::as_slice), Some(&b"xattr value"[..]), "{x:?}");
    }
}

/// The mode of the upper dir podman gives a container it creates now.
fn fresh_upper_mode(pm: &Podman) -> u32 {
    pm.ok(&[&"create", &"--name", &"probe", &BUSYBOX_IMAGE, &"true"]);
    let mode = fs::metadata(pm.upper_dir("probe")).unwrap().mode();
    pm.ok(&[&"rm", &"probe"]);
    mode
}

on_btrfs_and_xfs! {
    /// While podman creates the new container, the checkpoint is cloned into a stage in
    /// podman's store, then moved into the container: the process continues, the layer's own
    /// directory is the checkpointed one's (ckpt's archives carry it), and the store keeps
    /// nothing of the stage.
    fn restore_staged_in_the_store_moves_in_and_leaves_no_stage(s, pm) {
        pm.run_counter("c1", &[]);
        exec_sh(pm, "c1", "mkdir /data && echo kept > /data/f && chmod 750 /");
        let at_checkpoint = pm.counter("c1");
        let archive = s.path("c1.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"c1", &archive]);
        let old_upper = fs::metadata(pm.upper_dir("c1")).unwrap();
        assert_eq!(old_upper.mode() & 0o7777, 0o750);

        let out = pm.ckpt_code(0, &[&"podman", &"restore", &"-vv", &"--name", &"c2", &archive]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("container restore --import"), "podman's import made it: {stderr}");
        assert!(stderr.contains("moved into the container"), "{stderr}");
        pm.assert_counter_continues("c2", at_checkpoint);
        assert_eq!(exec_sh(pm, "c2", "cat /data/f"), "kept");
        // Its time is not compared: podman's restore changes what the directory holds.
        let new_upper = fs::metadata(pm.upper_dir("c2")).unwrap();
        assert_eq!(
            (new_upper.mode(), new_upper.uid(), new_upper.gid()),
            (old_upper.mode(), old_upper.uid(), old_upper.gid()),
            "the layer's own directory is not the checkpointed one's"
        );
        assert_eq!(pm.ckpt_leftovers(), Vec::<std::path::PathBuf>::new());
    }
}

on_btrfs_and_xfs! {
    /// A checkpoint made in another podman store on this host (config.dump names it) is
    /// staged there, does not fit the new container's mounts, and is restored in place: the
    /// process continues, and neither store keeps anything of the stage.
    fn restore_into_another_store_is_restored_in_place(s, pm) {
        pm.run_counter("c1", &[]);
        exec_sh(pm, "c1", "mkdir /data && echo kept > /data/f");
        let at_checkpoint = pm.counter("c1");
        let archive = s.path("c1.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"c1", &archive]);
        let Some(s2) = scratch_sized(s.kind, 1 << 30) else { return };
        let Some(pm2) = Podman::new(&s2) else { return };
        // The same image (by ID) in both stores, as a restore needs.
        let image = s.path("image.tar");
        pm.ok(&[&"save", &"-q", &"-o", &image, &BUSYBOX_IMAGE]);
        pm2.ok(&[&"load", &"-q", &"-i", &image]);

        let out = pm2.ckpt_code(0, &[&"podman", &"restore", &"-vv", &archive]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("restoring in place"), "{stderr}");
        pm2.assert_counter_continues("c1", at_checkpoint);
        assert_eq!(exec_sh(&pm2, "c1", "cat /data/f"), "kept");
        assert_eq!(pm.ckpt_leftovers(), Vec::<std::path::PathBuf>::new());
        assert_eq!(pm2.ckpt_leftovers(), Vec::<std::path::PathBuf>::new());
    }
}

/// On XFS a file's partial last block is copied, not shared, into the new container's layer:
/// a restore returns with it written back (allocated on disk, not delayed allocation left
/// for the next sync), and with the file's bytes right.
#[test]
fn restore_on_xfs_returns_with_the_copied_tails_written_back() {
    with_podman(FsKind::Xfs, |s, pm| {
        pm.run_counter("c1", &[]);
        exec_sh(
            pm,
            "c1",
            "mkdir /data && for i in 1 2 3 4 5 6 7 8; do head -c 10000 /dev/urandom > /data/t$i; done",
        );
        let archive = s.path("c1.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"--leave-running", &"c1", &archive]);
        pm.ckpt_ok(&[&"podman", &"restore", &"--name", &"c2", &archive]);
        let (old, new) = (pm.upper_dir("c1"), pm.upper_dir("c2"));
        for i in 1..=8 {
            let tail = new.join(format!("data/t{i}"));
            let extents = sh("filefrag", &[&"-v", &tail]);
            assert!(
                !extents.contains("delalloc") && !extents.contains("unknown_loc"),
                "{} is still waiting for writeback:\n{extents}",
                tail.display()
            );
            assert_same_bytes(&old.join(format!("data/t{i}")), &tail);
        }
        pm.assert_counter_continues("c2", 0);
    });
}

on_btrfs_and_xfs! {
    /// A restore whose container podman cannot create (its name is taken) fails with
    /// podman's reason, keeps the container that has the name, and leaves no new container
    /// and no stage behind.
    fn restore_under_a_taken_name_fails_and_leaves_no_stage(s, pm) {
        pm.run_counter("c1", &[]);
        let archive = s.path("c1.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"--leave-running", &"c1", &archive]);
        let before = pm.container_ids();

        let out = pm.ckpt_code(1, &[&"podman", &"restore", &archive]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("already in use") && stderr.contains("c1"), "{stderr}");
        assert_eq!(pm.container_ids(), before);
        assert_eq!(pm.inspect("c1", "{{.State.Status}}"), "running");
        assert_eq!(pm.ckpt_leftovers(), Vec::<std::path::PathBuf>::new());
    }
}

on_btrfs_and_xfs! {
    /// A restore whose podman fails after ckpt moved the checkpoint into the container podman
    /// made: ckpt fails with podman's message, removes that container, and leaves no stage.
    fn restore_whose_podman_fails_after_moving_in_removes_the_new_container(s, pm) {
        pm.run_counter("c1", &[]);
        let archive = s.path("c1.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"--leave-running", &"c1", &archive]);
        let before = pm.container_ids();
        let (code, stderr) = ckpt_through(
            s,
            pm,
            "podman \"$@\" || exit\n\
             if [ \"$1 $2\" = 'container restore' ]; then echo 'restore failed (test)' >&2; exit 1; fi\n",
            &[&"podman", &"restore", &"-vv", &"--name", &"c2", &archive],
        );
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("restore failed (test)") && stderr.contains("moved into the container"), "{stderr}");
        assert_eq!(pm.container_ids(), before, "the container made for the restore is left");
        assert_eq!(pm.ckpt_leftovers(), Vec::<std::path::PathBuf>::new());
    }
}

// ---------------------------------------------------------------------------
// d. rollback: ckpt podman restore --into
// ---------------------------------------------------------------------------

on_btrfs_and_xfs! {
    /// Checkpoint A (--leave-running), later changes, podman's own checkpoint; restore --into the same
    /// container: its counter continues from A's value, not from the later one, and the
    /// later file changes are gone.
    fn rollback_into_container_returns_to_the_checkpoint(s, pm) {
        let id = pm.run_counter("c1", &[]);
        exec_sh(pm, "c1", "mkdir /data && echo at-a > /data/state");
        let before_a = pm.counter("c1");
        let archive = s.path("a.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"--leave-running", &"c1", &archive]);
        assert_eq!(pm.inspect("c1", "{{.State.Status}}"), "running", "--leave-running");
        let after_a = pm.counter("c1");

        exec_sh(pm, "c1", "echo later > /data/state && echo later > /data/later && rm /bin/vi");
        let later = wait_for_counter(pm, "c1", after_a + 40);
        // podman's own export stops it, and leaves its rootfs-diff.tar of the later state in
        // the userdata dir, where podman's restore would apply it: the rollback must not.
        pm.ok(&[&"container", &"checkpoint", &"--compress", &"none", &"--export", &s.path("later.tar"), &"c1"]);

        pm.ckpt_ok(&[&"podman", &"restore", &"--into", &"c1", &archive]);
        assert_eq!(pm.inspect("c1", "{{.ID}}"), id, "the same container");
        let first = pm.counter("c1");
        assert!(
            first >= before_a && first < later,
            "counter {first} after rollback: expected A's value (>= {before_a}), below the later {later}"
        );
        pm.assert_counter_continues("c1", first);
        assert_eq!(
            exec_sh(pm, "c1", "cat /data/state; ls /data; [ -L /bin/vi ] && echo vi present"),
            "at-a\nstate\nvi present"
        );
    }
}

on_btrfs_and_xfs! {
    /// ckpt archives the checkpoint while podman finishes after its export; when podman then
    /// fails, ckpt fails with podman's message and the archive it would have replaced is left
    /// as it was, with no temporary file beside it.
    fn checkpoint_whose_podman_fails_after_its_export_keeps_the_old_archive(s, pm) {
        pm.run_counter("c1", &[]);
        let dir = s.path("out");
        fs::create_dir(&dir).unwrap();
        let archive = dir.join("c1.tar");
        fs::write(&archive, b"the previous archive").unwrap();
        let (code, stderr) = ckpt_through(
            s,
            pm,
            PODMAN_FAILS_AFTER_CHECKPOINT,
            &[&"podman", &"checkpoint", &"c1", &archive],
        );
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("cleanup failed (test)"), "{stderr}");
        assert_eq!(fs::read(&archive).unwrap(), b"the previous archive");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["c1.tar"]);
    }
}

/// A checkpoint whose archive fails on its own (no space on OUT's filesystem) while podman
/// fails too: ckpt fails with podman's message, says why the archive failed as well, and
/// leaves nothing at OUT.
#[test]
fn checkpoint_whose_archive_and_podman_both_fail_reports_both() {
    with_podman(FsKind::Btrfs, |s, pm| {
        pm.run_counter("c1", &[]);
        exec_sh(pm, "c1", "head -c 20000000 /dev/urandom > /big");
        let small = Mount::tmpfs(&s.path("small"));
        let archive = small.target().join("c1.tar");
        let (code, stderr) =
            ckpt_through(s, pm, PODMAN_FAILS_AFTER_CHECKPOINT, &[&"podman", &"checkpoint", &"c1", &archive]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("cleanup failed (test)"), "podman's error: {stderr}");
        assert!(
            stderr.contains("the archive was not written either")
                && stderr.contains("No space left on device"),
            "the archive's own error: {stderr}"
        );
        let names: Vec<_> = fs::read_dir(small.target()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.is_empty(), "{names:?}");
    });
}

on_btrfs_and_xfs! {
    /// ckpt freezes the container's cgroup before CRIU does; when podman then fails before
    /// CRIU has dumped anything, ckpt fails with podman's message and the container runs on,
    /// thawed.
    fn checkpoint_whose_podman_fails_before_criu_leaves_the_container_running(s, pm) {
        pm.run_counter("c1", &[]);
        let archive = s.path("c1.tar");
        let before = pm.counter("c1");
        let (code, stderr) = ckpt_through(
            s,
            pm,
            "if [ \"$1 $2\" = 'container checkpoint' ]; then sleep 0.3; echo 'no checkpoint (test)' >&2; exit 1; fi\n\
             exec podman \"$@\"\n",
            &[&"podman", &"checkpoint", &"c1", &archive],
        );
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("no checkpoint (test)"), "{stderr}");
        assert!(!archive.exists());
        assert_eq!(pm.inspect("c1", "{{.State.Status}}"), "running");
        pm.assert_counter_continues("c1", before);
    }
}

// ---------------------------------------------------------------------------
// e. secrets stay out
// ---------------------------------------------------------------------------

on_btrfs_and_xfs! {
    /// A container with a podman secret: the archive holds neither the secret's bytes nor
    /// secrets/ nor config.json, and still restores.
    fn checkpoint_of_container_with_secret_leaves_the_secret_out(s, pm) {
        let secret = format!("ckpt-secret-{}", std::process::id()).repeat(3);
        let file = s.path("secret.txt");
        fs::write(&file, &secret).unwrap();
        pm.ok(&[&"secret", &"create", &"s", &file]);
        pm.run_counter("c1", &[&"--secret", &"s"]);
        assert_eq!(exec_sh(pm, "c1", "cat /run/secrets/s"), secret, "the container sees its secret");
        let at_checkpoint = pm.counter("c1");

        let archive = s.path("c1.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"c1", &archive]);
        let bytes = fs::read(&archive).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret's bytes are in {}",
            archive.display()
        );
        // The layer keeps the empty mount point run/secrets/ that runc made: nothing below it.
        let names = members(&archive);
        let leaked: Vec<&String> = names
            .iter()
            .filter(|n| {
                n.starts_with("secrets") || n.as_str() == "config.json" || n.split_once("run/secrets/").is_some_and(|(_, rest)| !rest.is_empty())
            })
            .collect();
        assert!(leaked.is_empty(), "archive members that must not be there: {leaked:?}");
        for wanted in ["config.dump", "spec.dump", "checkpoint/inventory.img"] {
            assert!(names.iter().any(|n| n == wanted), "no {wanted} in {names:?}");
        }

        pm.ckpt_ok(&[&"podman", &"restore", &"--name", &"c2", &archive]);
        pm.assert_counter_continues("c2", at_checkpoint);
    }
}

// ---------------------------------------------------------------------------
// f. physical sharing
// ---------------------------------------------------------------------------

const BIG: u64 = 32 << 20;

/// (shared bytes, bytes) of a file or tree, by `btrfs filesystem du` or by filefrag.
fn sharing(kind: FsKind, path: &Path) -> (u64, u64) {
    match kind {
        FsKind::Btrfs => {
            let du = btrfs_du(path);
            (du.set_shared, du.total)
        }
        _ => xfs_shared_blocks(path),
    }
}

on_btrfs_and_xfs! {
    /// ckpt podman checkpoint clones the layer's big file into the archive, and restore
    /// clones it into the new container's layer.
    fn ckpt_checkpoint_and_restore_share_rootfs_data_with_the_layer(s, pm) {
        pm.run_counter("c1", &[]);
        exec_sh(pm, "c1", &format!("mkdir /data && head -c {BIG} /dev/urandom > /data/big"));
        let at_checkpoint = pm.counter("c1");
        let archive = s.path("c1.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"c1", &archive]);

        let upper_big = pm.upper_dir("c1").join("data/big");
        let (shared, total) = sharing(s.kind, &upper_big);
        assert!(total >= BIG && shared == total, "{}: {shared} of {total} bytes shared", upper_big.display());
        let (shared, _) = sharing(s.kind, &archive);
        assert!(shared >= BIG, "{}: only {shared} bytes shared, the layer's file has {BIG}", archive.display());

        pm.ckpt_ok(&[&"podman", &"restore", &"--name", &"c2", &archive]);
        pm.assert_counter_continues("c2", at_checkpoint);
        let new_big = pm.upper_dir("c2").join("data/big");
        assert_same_bytes(&upper_big, &new_big);
        let (shared, total) = sharing(s.kind, &new_big);
        assert!(total >= BIG && shared == total, "{}: {shared} of {total} bytes shared", new_big.display());
    }
}

// ---------------------------------------------------------------------------
// g. the OCI hooks at podman's own stages
// ---------------------------------------------------------------------------

/// A hooks dir with fixtures/hooks/*.json pointing at the ckpt binary under test.
fn hooks_dir(s: &Scratch) -> std::path::PathBuf {
    let dir = s.path("hooks.d");
    fs::create_dir_all(&dir).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hooks");
    for name in ["ckpt-export.json", "ckpt-import.json"] {
        let mut hook: serde_json::Value =
            serde_json::from_slice(&fs::read(fixtures.join(name)).unwrap()).unwrap();
        hook["hook"]["path"] = serde_json::Value::from(ckpt_bin());
        fs::write(dir.join(name), serde_json::to_vec_pretty(&hook).unwrap()).unwrap();
    }
    dir
}

on_btrfs_and_xfs! {
    /// The export hook runs at poststop of `podman container checkpoint --keep` and writes
    /// an archive ckpt import restores; the import hook makes a NEW `podman run` container
    /// that starts and sees the rootfs changes.
    fn hooks_export_at_checkpoint_and_import_into_new_container(s, pm) {
        let hooks = hooks_dir(s);
        let out_dir = s.path("exported");
        let template = format!("io.ckpt.export={}/{{id}}.tar", out_dir.display());
        let id = pm.ok(&[
            &"--hooks-dir", &hooks, &"run", &"-d", &"--name", &"c1", &"--annotation", &template,
            &BUSYBOX_IMAGE, &"/bin/sh", &"-c", &COUNTER_LOOP,
        ]);
        wait_for_counter(pm, "c1", 1);
        exec_sh(pm, "c1", "mkdir /data && echo hooked > /data/f && chmod 640 /data/f");
        let out = pm.run(&[&"--hooks-dir", &hooks, &"container", &"checkpoint", &"--keep", &"c1"]);
        assert!(out.status.success() && !stderr_of(&out).contains("hook"), "checkpoint with hooks: {}", describe(&out));
        let archive = out_dir.join(format!("{id}.tar"));
        assert!(archive.is_file(), "the export hook wrote no {}", archive.display());

        let bundle = s.path("imported");
        let diff = s.path("imported-diff");
        ckpt_ok(&[&"import", &"--rootfs-diff", &diff, &archive, &bundle]);
        let userdata = Path::new(&pm.inspect("c1", "{{.StaticDir}}")).to_path_buf();
        assert_same_bytes(&userdata.join("checkpoint/inventory.img"), &bundle.join("checkpoint/inventory.img"));
        let spec: serde_json::Value = serde_json::from_slice(&fs::read(bundle.join("spec.dump")).unwrap())
            .expect("spec.dump is JSON");
        assert!(spec["ociVersion"].is_string(), "spec.dump is not an OCI spec: {spec}");
        assert_eq!(fs::read(diff.join("data/f")).unwrap(), b"hooked\n");
        assert_eq!(fs::metadata(diff.join("data/f")).unwrap().permissions().mode() & 0o7777, 0o640);

        let import = format!("io.ckpt.import={}", archive.display());
        pm.ok(&[
            &"--hooks-dir", &hooks, &"run", &"-d", &"--name", &"c2", &"--annotation", &import,
            &BUSYBOX_IMAGE, &"/bin/sh", &"-c", &COUNTER_LOOP,
        ]);
        assert_eq!(pm.inspect("c2", "{{.State.Status}}"), "running", "the imported container must start");
        assert_eq!(exec_sh(pm, "c2", "cat /data/f; stat -c %a /data/f"), "hooked\n640");
        pm.assert_counter_continues("c2", 1);
    }
}

on_btrfs_and_xfs! {
    /// The export hook finds a real container's named volume among its bind mounts and
    /// carries it as volumes/NAME.tar, with the volume's contents.
    fn export_hook_carries_the_named_volume_of_a_podman_container(s, pm) {
        let hooks = hooks_dir(s);
        let out_dir = s.path("exported");
        let template = format!("io.ckpt.export={}/{{id}}.tar", out_dir.display());
        pm.ok(&[&"volume", &"create", &"hvol"]);
        let id = pm.ok(&[
            &"--hooks-dir", &hooks, &"run", &"-d", &"--name", &"c1", &"--annotation", &template,
            &"-v", &"hvol:/vol", &BUSYBOX_IMAGE, &"/bin/sh", &"-c", &COUNTER_LOOP,
        ]);
        wait_for_counter(pm, "c1", 1);
        exec_sh(pm, "c1", "mkdir /vol/sub && echo in-volume > /vol/sub/f");
        pm.ok(&[&"--hooks-dir", &hooks, &"container", &"checkpoint", &"--keep", &"c1"]);
        let archive = out_dir.join(format!("{id}.tar"));
        assert!(members(&archive).iter().any(|n| n == "volumes/hvol.tar"), "{:?}", members(&archive));

        let (dest, restored) = (s.path("imported"), s.path("restored-volume"));
        ckpt_ok(&[&"import", &"--volume", &format!("hvol={}", restored.display()), &archive, &dest]);
        let source = pm.ok(&[&"volume", &"inspect", &"--format", &"{{.Mountpoint}}", &"hvol"]);
        assert_trees_equal(Path::new(source.trim()), &restored);
    }
}

// ---------------------------------------------------------------------------
// h. refusals
// ---------------------------------------------------------------------------

on_btrfs_and_xfs! {
    /// An archive whose container was in a pod cannot be replayed as `podman create`
    /// faithfully: exit 1 naming the pod, and no new container is left behind.
    fn restore_of_pod_container_is_refused_and_leaves_no_container(s, pm) {
        pm.run_counter("c1", &[]);
        let archive = s.path("c1.tar");
        pm.ok(&[&"container", &"checkpoint", &"--export", &archive, &"--compress", &"none", &"c1"]);
        let edited = edited_podman_archive(s, &archive, |config| {
            config["pod"] = serde_json::Value::from("p1");
            let cmd = config["CreateCommand"].as_array_mut().expect("CreateCommand");
            cmd.insert(2, "--pod".into());
            cmd.insert(3, "p1".into());
        });
        let before = pm.container_ids();
        let out = pm.ckpt_code(1, &[&"podman", &"restore", &"--name", &"c2", &edited]);
        let err = stderr_of(&out);
        assert!(err.contains("pod"), "the refusal must name the pod: {err}");
        assert_eq!(pm.container_ids(), before, "a refused restore left a container behind");
    }
}

on_btrfs_and_xfs! {
    /// A config.dump whose volume name would reach outside podman's volumes (`../x`) is
    /// refused as the archive's fault before podman creates anything: exit 1 naming it.
    fn restore_with_a_hostile_volume_name_is_refused_before_creating(s, pm) {
        pm.run_counter("c1", &[]);
        let archive = s.path("c1.tar");
        pm.ok(&[&"container", &"checkpoint", &"--export", &archive, &"--compress", &"none", &"c1"]);
        let edited = edited_podman_archive(s, &archive, |config| {
            config["namedVolumes"] = serde_json::json!([{"volumeName": "../x", "dest": "/vol"}]);
        });
        let before = pm.container_ids();
        let out = pm.ckpt_code(1, &[&"podman", &"restore", &"--name", &"c2", &edited]);
        let err = stderr_of(&out);
        assert!(err.contains("\"../x\" is not a volume name"), "{err}");
        assert!(!err.contains("podman create") && !err.contains("running podman"), "{err}");
        assert_eq!(pm.container_ids(), before, "a refused restore left a container behind");
    }
}

on_btrfs_and_xfs! {
    /// The checkpointed image is not the image the replayed `podman create` made the new
    /// container of: exit 1 naming the image, and no new container is left behind.
    fn restore_onto_a_different_image_is_refused_and_leaves_no_container(s, pm) {
        pm.run_counter("c1", &[]);
        let archive = s.path("c1.tar");
        pm.ok(&[&"container", &"checkpoint", &"--export", &archive, &"--compress", &"none", &"c1"]);
        let other = "0".repeat(64);
        let edited = edited_podman_archive(s, &archive, |config| {
            config["rootfsImageID"] = serde_json::Value::from(other.clone());
        });
        let before = pm.container_ids();
        let out = pm.ckpt_code(1, &[&"podman", &"restore", &"--name", &"c2", &edited]);
        let err = stderr_of(&out);
        assert!(err.contains(&other) && err.contains("image"), "the refusal must name the image: {err}");
        assert_eq!(pm.container_ids(), before, "a refused restore left a container behind");
    }
}

on_btrfs_and_xfs! {
    /// The new container runs under the checkpointed spec with the old container's places
    /// made its own: nothing in its runtime spec names the old container, its /etc/hosts is
    /// its own file, and the old container, still there, keeps running.
    fn restored_container_spec_names_only_its_own_places(s, pm) {
        let old = pm.run_counter("c1", &[]);
        let archive = s.path("c1.tar");
        let before_checkpoint = pm.counter("c1");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"--leave-running", &"c1", &archive]);
        let new = pm.ckpt_ok(&[&"podman", &"restore", &"--name", &"c2", &archive]);
        pm.assert_counter_continues("c2", before_checkpoint);
        let bundle = pm.inspect("c2", "{{.StaticDir}}");
        let spec = fs::read_to_string(Path::new(&bundle).join("config.json")).unwrap();
        assert!(!spec.contains(&old) && spec.contains(&new), "c2's spec names c1 ({old}): {spec}");
        let hosts = pm.inspect("c2", "{{.HostsPath}}");
        assert!(hosts.contains(&new), "c2's /etc/hosts is {hosts}");
        assert_eq!(pm.inspect("c1", "{{.State.Status}}"), "running");
        pm.assert_counter_continues("c1", before_checkpoint);
    }
}

on_btrfs_and_xfs! {
    /// A container on podman's bridge network (a network namespace podman sets up, not the
    /// suite's default of none) is restored into a new container that continues with an
    /// address of its own.
    fn restore_of_a_bridge_networked_container_continues_with_its_own_address(s, pm) {
        pm.run_counter("c1", &[&"--network", &"bridge"]);
        let address = |name: &str| exec_sh(pm, name, "ip -4 -o addr show eth0 | awk '{print $4}'");
        let old_address = address("c1");
        assert!(!old_address.is_empty(), "c1 has no eth0 address");
        let archive = s.path("c1.tar");
        let before_checkpoint = pm.counter("c1");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"--leave-running", &"c1", &archive]);
        pm.ckpt_ok(&[&"podman", &"restore", &"--name", &"c2", &archive]);
        pm.assert_counter_continues("c2", before_checkpoint);
        let new_address = address("c2");
        assert!(!new_address.is_empty() && new_address != old_address, "c1 {old_address}, c2 {new_address}");
    }
}

on_btrfs_and_xfs! {
    /// Rolling back into a running container is refused (exit 1, says it is running), and
    /// the container keeps running untouched.
    fn rollback_into_running_container_is_refused(s, pm) {
        let id = pm.run_counter("c1", &[]);
        let archive = s.path("a.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"--leave-running", &"c1", &archive]);
        exec_sh(pm, "c1", "echo after > /tmp/after");
        let now = pm.counter("c1");
        let out = pm.ckpt_code(1, &[&"podman", &"restore", &"--into", &"c1", &archive]);
        let err = stderr_of(&out);
        let named = err.contains("c1") || err.contains(&id[..12]);
        assert!(err.contains("running") && named, "the refusal must say c1 is running: {err}");
        assert_eq!(pm.inspect("c1", "{{.State.Status}}"), "running");
        pm.assert_counter_continues("c1", now);
        assert_eq!(exec_sh(pm, "c1", "cat /tmp/after"), "after");
    }
}

on_btrfs_and_xfs! {
    /// podman's own `checkpoint --export` leaves rootfs-diff.tar and deleted.files in the
    /// userdata dir; a later ckpt podman checkpoint of the same container still works and
    /// archives the layer as it is now, not podman's stale copy.
    fn ckpt_checkpoint_after_podman_export_of_the_same_container_works(s, pm) {
        pm.run_counter("c1", &[]);
        exec_sh(pm, "c1", "mkdir /data && echo old > /data/f");
        let podman_archive = s.path("podman.tar");
        pm.ok(&[&"container", &"checkpoint", &"--leave-running", &"--export", &podman_archive, &"c1"]);
        exec_sh(pm, "c1", "echo new > /data/f");
        let at_checkpoint = pm.counter("c1");
        let archive = s.path("c1.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"c1", &archive]);

        pm.ckpt_ok(&[&"podman", &"restore", &"--name", &"c2", &archive]);
        pm.assert_counter_continues("c2", at_checkpoint);
        assert_eq!(exec_sh(pm, "c2", "cat /data/f"), "new");
    }
}

// ---------------------------------------------------------------------------
// g. named volumes
// ---------------------------------------------------------------------------

/// What the container sees of its volume at /vol: types, modes, owners, sizes, MD5s and the
/// symlink's target.
const VOLUME_SNAPSHOT: &str = "find /vol -exec stat -c '%n|%F|%a|%u|%g|%s' {} + | sort; \
    find /vol -type f -exec md5sum {} + | sort; readlink /vol/sub/link";

/// A counter container with volume vol1 at /vol holding a file, a directory, an owned file of
/// its own mode and a symlink (and `extra` options); what it sees of them.
fn run_with_volume(pm: &Podman, name: &str, extra: &[Arg]) -> String {
    pm.ok(&[&"volume", &"create", &"vol1"]);
    let mut options: Vec<Arg> = vec![&"-v", &"vol1:/vol"];
    options.extend_from_slice(extra);
    pm.run_counter(name, &options);
    exec_sh(
        pm,
        name,
        "mkdir /vol/sub && head -c 1048576 /dev/urandom > /vol/big && echo small > /vol/sub/f && \
         chmod 640 /vol/sub/f && chown 1234:5678 /vol/sub/f && ln -s ../big /vol/sub/link",
    );
    exec_sh(pm, name, VOLUME_SNAPSHOT)
}

on_btrfs_and_xfs! {
    /// ckpt's archive carries a named volume as volumes/NAME.tar, as podman's export does:
    /// with the container and the volume gone, podman's restore --import recreates the volume
    /// with its contents, and the process continues.
    fn podman_import_of_ckpt_checkpoint_restores_a_named_volume(s, pm) {
        let before = run_with_volume(pm, "c1", &[]);
        let at_checkpoint = pm.counter("c1");
        let archive = s.path("c1.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"c1", &archive]);
        assert!(members(&archive).iter().any(|n| n == "volumes/vol1.tar"), "{:?}", members(&archive));

        pm.ok(&[&"rm", &"-f", &"c1"]);
        pm.ok(&[&"volume", &"rm", &"vol1"]);
        pm.ok(&[&"container", &"restore", &"--import", &archive, &"--name", &"c2"]);
        pm.assert_counter_continues("c2", at_checkpoint);
        assert_eq!(exec_sh(pm, "c2", VOLUME_SNAPSHOT), before);
    }
}

on_btrfs_and_xfs! {
    /// --ignore-volumes leaves the volume's contents out, as podman's own option does.
    fn checkpoint_with_ignore_volumes_leaves_the_volume_out(s, pm) {
        run_with_volume(pm, "c1", &[]);
        let archive = s.path("c1.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"--ignore-volumes", &"c1", &archive]);
        let names = members(&archive);
        assert!(!names.iter().any(|n| n.starts_with("volumes")), "{names:?}");
        assert!(names.iter().any(|n| n == "checkpoint/inventory.img"), "{names:?}");
    }
}

on_btrfs_and_xfs! {
    /// ckpt's restore puts a named and an anonymous volume back (the anonymous one under its
    /// new name) when both are gone, and the process continues.
    fn ckpt_restore_of_ckpt_checkpoint_puts_named_and_anonymous_volumes_back(s, pm) {
        let before = run_with_volume(pm, "c1", &[&"-v", &"/anon"]);
        exec_sh(pm, "c1", "echo anonymous > /anon/a");
        let at_checkpoint = pm.counter("c1");
        let archive = s.path("c1.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"c1", &archive]);

        pm.ok(&[&"rm", &"-f", &"-v", &"c1"]);
        pm.ok(&[&"volume", &"rm", &"vol1"]);
        pm.ckpt_ok(&[&"podman", &"restore", &"--name", &"c2", &archive]);
        pm.assert_counter_continues("c2", at_checkpoint);
        assert_eq!(exec_sh(pm, "c2", VOLUME_SNAPSHOT), before);
        assert_eq!(exec_sh(pm, "c2", "cat /anon/a"), "anonymous");
    }
}

on_btrfs_and_xfs! {
    /// A volume that already holds files is not merged into: the restore is refused and
    /// leaves no container or volume behind, the volume as it was; with --ignore-volumes the
    /// new container uses the volume as it is.
    fn ckpt_restore_into_a_volume_holding_files_is_refused_unless_ignore_volumes(s, pm) {
        run_with_volume(pm, "c1", &[]);
        let at_checkpoint = pm.counter("c1");
        let archive = s.path("c1.tar");
        pm.ckpt_ok(&[&"podman", &"checkpoint", &"--leave-running", &"c1", &archive]);
        exec_sh(pm, "c1", "echo later > /vol/sub/f");
        let (containers, volumes) = (pm.container_ids(), pm.ok(&[&"volume", &"ls", &"--quiet"]));

        let o = pm.ckpt_code(1, &[&"podman", &"restore", &"--name", &"c2", &archive]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("vol1") && err.contains("already holds files"), "{}", describe(&o));
        assert_eq!(pm.container_ids(), containers, "the refused restore left a container");
        assert_eq!(pm.ok(&[&"volume", &"ls", &"--quiet"]), volumes, "the refused restore left a volume");

        pm.ckpt_ok(&[&"podman", &"restore", &"--ignore-volumes", &"--name", &"c2", &archive]);
        pm.assert_counter_continues("c2", at_checkpoint);
        assert_eq!(exec_sh(pm, "c2", "cat /vol/sub/f"), "later");
    }
}
