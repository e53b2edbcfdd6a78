//! A real podman with a private storage root on a scratch filesystem.

use std::ffi::OsStr;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::{
    Arg, Scratch, ckpt_bin, describe, expect_code, mounts_below, require_root, sh, show_args, skip_unless,
};

/// The image every [`Podman`] has: /bin/busybox (static) with one RELATIVE symlink per
/// applet (`busybox --install -s` makes absolute links that break inside the container),
/// /tmp, and /d/x (a file of the image, for tests that replace /d).
pub const BUSYBOX_IMAGE: &str = "localhost/bb";

/// A shell loop that writes a growing counter to /tmp/count every 0.1 s: a restored process
/// that continues keeps increasing it.
pub const COUNTER_LOOP: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done";

/// podman with its own configuration and storage under `dir` (on a scratch filesystem):
/// containers.conf and storage.conf that work on this kind of VM (runc, cgroupfs, file
/// events and file locks, no network, ulimits podman may set), passed to podman and to
/// `ckpt podman` by CONTAINERS_CONF and CONTAINERS_STORAGE_CONF.
///
/// Dropping it (also when the test panics) removes every container, volume and image of this
/// storage root and unmounts whatever is still mounted below `dir`, so the scratch
/// filesystem can be unmounted. Declare it after the [`Scratch`] it lives on, so that it
/// is dropped first.
pub struct Podman {
    pub dir: PathBuf,
    containers_conf: PathBuf,
    storage_conf: PathBuf,
}

/// Why podman, runc or CRIU cannot checkpoint here, or None when they can (checked once).
fn podman_unusable() -> Option<String> {
    static REASON: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    REASON
        .get_or_init(|| {
            for (cmd, args) in
                [("podman", &["--version"][..]), ("runc", &["--version"][..]), ("criu", &["check"][..])]
            {
                match Command::new(cmd).args(args).stdin(Stdio::null()).output() {
                    Err(e) => return Some(format!("cannot run {cmd}: {e}")),
                    Ok(o) if !o.status.success() => {
                        return Some(format!("`{cmd} {}` failed: {}", args.join(" "), describe(&o)));
                    }
                    Ok(_) => {}
                }
            }
            None
        })
        .clone()
}

impl Podman {
    /// A podman whose storage lives in `s.path("podman")`, with [`BUSYBOX_IMAGE`] imported.
    /// None (skip) when not root or when podman/runc/CRIU are missing or CRIU does not work
    /// on this kernel; under CI that panics instead.
    pub fn new(s: &Scratch) -> Option<Podman> {
        if !require_root("real podman containers") {
            return None;
        }
        let unusable = podman_unusable();
        if !skip_unless(unusable.is_none(), unusable.unwrap_or_default()) {
            return None;
        }
        let dir = s.path("podman");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let containers_conf = dir.join("containers.conf");
        let storage_conf = dir.join("storage.conf");
        // File locks under the private tmp_dir: the default shm lock segment is shared with
        // every other podman on the machine.
        let conf = format!(
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n\
             lock_type = \"file\"\ntmp_dir = \"{run}/libpod\"\n\n[containers]\n\
             default_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\nnetns = \"none\"\n\
             log_driver = \"k8s-file\"\n",
            run = dir.join("run").display()
        );
        fs::write(&containers_conf, conf).unwrap();
        let storage = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            dir.join("storage").display(),
            dir.join("run").display()
        );
        fs::write(&storage_conf, storage).unwrap();
        let pm = Podman { dir, containers_conf, storage_conf };
        pm.import_busybox_image();
        Some(pm)
    }

    fn import_busybox_image(&self) {
        let rootfs = self.dir.join("image-rootfs");
        let bin = rootfs.join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(rootfs.join("tmp")).unwrap();
        fs::create_dir_all(rootfs.join("d")).unwrap();
        fs::write(rootfs.join("d/x"), b"x of the image\n").unwrap();
        fs::copy("/bin/busybox", bin.join("busybox")).expect("copy /bin/busybox (package busybox-static)");
        for applet in sh("/bin/busybox", &[&"--list"]).split_whitespace() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
            }
        }
        let script = format!("tar -C '{}' -c . | podman import -q - {BUSYBOX_IMAGE}", rootfs.display());
        let out = self.command("sh").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "importing the busybox image: {}", describe(&out));
        fs::remove_dir_all(&rootfs).unwrap();
    }

    /// `program` with this podman's configuration in its environment.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("CONTAINERS_CONF", &self.containers_conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .stdin(Stdio::null());
        c
    }

    /// Runs `podman ARGS...` and returns its output, whatever the status.
    pub fn run(&self, args: &[Arg]) -> Output {
        self.command("podman")
            .args(args.iter().map(|a| a.as_ref()))
            .output()
            .unwrap_or_else(|e| panic!("cannot run podman {}: {e}", show_args(args)))
    }

    /// Runs `podman ARGS...`, asserts exit 0, returns stdout trimmed.
    pub fn ok(&self, args: &[Arg]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "`podman {}` failed:\n{}", show_args(args), describe(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs `ckpt ARGS...` with this podman's configuration; returns the output.
    pub fn ckpt(&self, args: &[Arg]) -> Output {
        self.command(ckpt_bin())
            .args(args.iter().map(|a| a.as_ref()))
            .output()
            .unwrap_or_else(|e| panic!("cannot run ckpt {}: {e}", show_args(args)))
    }

    /// Runs `ckpt ARGS...` with this podman's configuration, asserts the exit code.
    pub fn ckpt_code(&self, code: i32, args: &[Arg]) -> Output {
        expect_code(self.ckpt(args), code, args)
    }

    /// Runs `ckpt ARGS...` with this podman's configuration, asserts exit 0, returns stdout
    /// trimmed.
    pub fn ckpt_ok(&self, args: &[Arg]) -> String {
        String::from_utf8_lossy(&self.ckpt_code(0, args).stdout).trim().to_string()
    }

    /// `podman run -d --name NAME IMAGE sh -c COUNTER_LOOP`, with `extra` options before the
    /// image; waits until the counter is written. Returns the container ID.
    pub fn run_counter(&self, name: &str, extra: &[Arg]) -> String {
        let mut args: Vec<Arg> = vec![&"run", &"-d", &"--name", &name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&BUSYBOX_IMAGE, &"/bin/sh", &"-c", &COUNTER_LOOP]);
        let id = self.ok(&args);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.run(&[&"exec", &name, &"cat", &"/tmp/count"]).stdout.is_empty() {
            assert!(std::time::Instant::now() < deadline, "container {name} never wrote /tmp/count");
            std::thread::sleep(Duration::from_millis(100));
        }
        id
    }

    /// The counter of a container running [`COUNTER_LOOP`]. The loop's `>` empties the file
    /// before it writes the next value, so an empty read is read again.
    pub fn counter(&self, name: &str) -> u64 {
        let mut v = String::new();
        for _ in 0..20 {
            v = self.ok(&[&"exec", &name, &"cat", &"/tmp/count"]);
            if !v.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        v.parse().unwrap_or_else(|_| panic!("container {name}: /tmp/count holds {v:?}"))
    }

    /// Asserts that container `name`'s counter is at least `at_least` and keeps growing.
    pub fn assert_counter_continues(&self, name: &str, at_least: u64) -> u64 {
        let first = self.counter(name);
        assert!(first >= at_least, "container {name}: counter {first}, but it was {at_least} at checkpoint");
        std::thread::sleep(Duration::from_millis(600));
        let second = self.counter(name);
        assert!(second > first, "container {name}: counter stuck at {first} (then {second}): not running");
        second
    }

    /// `podman inspect --format FORMAT NAME`, trimmed.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&[&"inspect", &"--format", &format, &name])
    }

    /// The overlay upper (diff) dir of container `name`'s rootfs.
    pub fn upper_dir(&self, name: &str) -> PathBuf {
        PathBuf::from(self.inspect(name, "{{.GraphDriver.Data.UpperDir}}"))
    }

    /// ckpt's private directories (`.ckpt-*`) in this storage root's container and layer
    /// directories, where a restore stages what it clones.
    pub fn ckpt_leftovers(&self) -> Vec<PathBuf> {
        let storage = self.dir.join("storage");
        ["overlay-containers", "overlay"]
            .iter()
            .flat_map(|dir| fs::read_dir(storage.join(dir)).into_iter().flatten())
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".ckpt-")))
            .collect()
    }

    /// IDs of all containers of this storage root, sorted.
    pub fn container_ids(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.ok(&[&"ps", &"-a", &"-q", &"--no-trunc"]).lines().map(str::to_string).collect();
        v.sort();
        v
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let removals =
            [&["rm", "-f", "-a", "-t", "0"][..], &["volume", "rm", "-a", "-f"][..], &["rmi", "-a", "-f"][..]];
        for args in removals {
            match self.command("podman").args(args).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!("cleanup: podman {} failed: {}", args.join(" "), describe(&o)),
                Err(e) => eprintln!("cleanup: cannot run podman: {e}"),
            }
        }
        for mp in mounts_below(&self.dir) {
            let ok = Command::new("umount").arg(&mp).stdin(Stdio::null()).status().is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&mp).status();
            }
        }
    }
}
