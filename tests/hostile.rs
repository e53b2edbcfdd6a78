//! Import hardening: hostile and malformed archives.
//!
//! Every archive here is written byte by byte by the small tar writer below (ustar headers
//! with correct checksums, pax records, GNU 'L'/'K' long names), so nothing depends on a tar
//! library's idea of what is allowed. Each case is imported with `ckpt import` (from the
//! archive file, and from standard input so the streaming reader is exercised too) into a
//! DEST that has a canary directory and a canary file beside it; afterwards the canaries must
//! be untouched (content, mtime, link count, no new entries) and nothing may have appeared
//! beside DEST. Every run has a 20 s timeout and a 512 MiB address-space limit.
//!
//! Hostile members must make ckpt exit non-zero and name the member; malformed archives must
//! give an error naming the member and the archive offset, and leave no partial file under
//! its final name. Inputs the fuzzer found (tests/fixtures-hostile/) are replayed as well.

use crate::util;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::util::{
    BLOCK, Bundle, FsKind, Scratch, Tar, base256, ckpt_bin, header, pax_record, scratch, set_checksum,
};

// ---------------------------------------------------------------------------
// Running ckpt under limits
// ---------------------------------------------------------------------------

const TIMEOUT: Duration = Duration::from_secs(20);
/// Address-space limit for every ckpt run.
const MEMORY_LIMIT: u64 = 512 << 20;

#[derive(Debug)]
struct Run {
    /// None when killed by a signal (the timeout's SIGKILL included).
    code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn show(&self) -> String {
        format!(
            "exit code {:?}, signal {:?}, timed out {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.signal, self.timed_out, self.stdout, self.stderr
        )
    }

    /// Asserts a clean finish (no signal, no panic, no timeout) with one of `codes`.
    fn assert_code(&self, codes: &[i32], what: &str) {
        assert!(!self.timed_out, "{what}: ckpt did not finish within {TIMEOUT:?}\n{}", self.show());
        assert!(self.code.is_some(), "{what}: ckpt was killed by a signal\n{}", self.show());
        assert!(!self.stderr.contains("panicked"), "{what}: ckpt panicked\n{}", self.show());
        let code = self.code.unwrap();
        assert!(
            codes.contains(&code),
            "{what}: exit code {code}, expected one of {codes:?}\n{}",
            self.show()
        );
    }
}

/// Runs ckpt with `args` (stdin from `input`, or /dev/null) under a timeout and, through
/// prlimit(1), which execs it, an address-space limit.
fn run_limited(args: &[&std::ffi::OsStr], input: Option<Vec<u8>>) -> Run {
    use std::os::unix::process::ExitStatusExt;
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--as={MEMORY_LIMIT}")).arg(ckpt_bin()).args(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("spawn prlimit ckpt");
    let writer = input.map(|data| {
        let mut stdin = child.stdin.take().unwrap();
        // ckpt may stop reading early (an error): a broken pipe is expected then.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        })
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for ckpt") {
            break status;
        }
        if started.elapsed() > TIMEOUT && !timed_out {
            timed_out = true;
            child.kill().expect("kill ckpt");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(w) = writer {
        w.join().unwrap();
    }
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    Run { code: status.code(), signal: status.signal(), timed_out, stdout, stderr }
}

// ---------------------------------------------------------------------------
// The arena: DEST with canaries beside it
// ---------------------------------------------------------------------------

/// How the archive reaches ckpt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `ckpt import ARCHIVE DEST`: headers read in place, data cloned or copied by offset.
    File,
    /// `ckpt import - DEST`: the streaming reader.
    Stdin,
}

const CANARY_FILE: &[u8] = b"canary file: must never change\n";

/// What the canaries looked like: per path, type, mode, size, nlink, mtime and content.
type Snapshot = BTreeMap<PathBuf, (u32, u64, u64, i64, i64, Vec<u8>)>;

struct Arena {
    _scratch: Option<Scratch>,
    /// Holds archive.tar, dest/, canary/ (a directory), canary-file, and nothing else.
    work: PathBuf,
    archive: PathBuf,
    dest: PathBuf,
    canary_dir: PathBuf,
    canary_file: PathBuf,
    /// Names in `work` besides those above that the test created on purpose; their state is
    /// checked like the canaries'.
    extra: Vec<String>,
    /// Names in `work` that may change (e.g. a rootfs the import modifies).
    allowed: Vec<String>,
    before: Snapshot,
}

/// `nlink`: record the link count (not for entries a test expects to lose a name).
fn snapshot_path(path: &Path, nlink: bool, out: &mut Snapshot) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let content = if m.is_file() {
        fs::read(path).unwrap()
    } else if m.file_type().is_symlink() {
        fs::read_link(path).unwrap().into_os_string().into_encoded_bytes()
    } else {
        Vec::new()
    };
    let links = if nlink { m.nlink() } else { 0 };
    out.insert(path.to_path_buf(), (m.mode(), m.size(), links, m.mtime(), m.mtime_nsec(), content));
    if m.is_dir() {
        for e in fs::read_dir(path).unwrap() {
            snapshot_path(&e.unwrap().path(), nlink, out);
        }
    }
}

impl Arena {
    fn new(kind: FsKind) -> Option<Arena> {
        let scratch = scratch(kind)?;
        let mut arena = Arena::in_dir(scratch.path("work"));
        arena._scratch = Some(scratch);
        Some(arena)
    }

    /// An arena in `work` (created; its parent must exist).
    fn in_dir(work: PathBuf) -> Arena {
        let canary_dir = work.join("canary");
        fs::create_dir_all(canary_dir.join("sub")).unwrap();
        fs::write(canary_dir.join("f"), b"canary dir file\n").unwrap();
        fs::write(canary_dir.join("sub/g"), b"deeper canary\n").unwrap();
        let canary_file = work.join("canary-file");
        fs::write(&canary_file, CANARY_FILE).unwrap();
        for p in [canary_dir.join("sub/g"), canary_dir.join("sub"), canary_dir.join("f"), canary_dir.clone()]
        {
            util::set_mtime(&p, 1_000_000_000, 111);
        }
        util::set_mtime(&canary_file, 1_000_000_000, 222);
        let dest = work.join("dest");
        fs::create_dir(&dest).unwrap();
        Arena {
            _scratch: None,
            archive: work.join("archive.tar"),
            work,
            dest,
            canary_dir,
            canary_file,
            extra: Vec::new(),
            allowed: Vec::new(),
            before: Snapshot::new(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::new();
        snapshot_path(&self.canary_dir, true, &mut s);
        snapshot_path(&self.canary_file, true, &mut s);
        for name in &self.extra {
            snapshot_path(&self.work.join(name), false, &mut s);
        }
        s
    }

    /// Call after the test has set up DEST and anything beside it.
    fn seal(&mut self) {
        self.before = self.snapshot();
    }

    fn import(&mut self, archive: &[u8], via: Via, flags: &[&str]) -> Run {
        if self.before.is_empty() {
            self.seal();
        }
        dump_for_fuzzing(archive);
        let mut args: Vec<&std::ffi::OsStr> = vec!["import".as_ref()];
        args.extend(flags.iter().map(|f| std::ffi::OsStr::new(*f)));
        let run = match via {
            Via::File => {
                fs::write(&self.archive, archive).unwrap();
                args.push(self.archive.as_os_str());
                args.push(self.dest.as_os_str());
                run_limited(&args, None)
            }
            Via::Stdin => {
                args.push("-".as_ref());
                args.push(self.dest.as_os_str());
                run_limited(&args, Some(archive.to_vec()))
            }
        };
        self.check_canaries(&run);
        run
    }

    fn check_canaries(&self, run: &Run) {
        let after = self.snapshot();
        if after != self.before {
            let mut diffs = Vec::new();
            for (p, v) in &self.before {
                match after.get(p) {
                    None => diffs.push(format!("{} vanished", p.display())),
                    Some(w) if w != v => diffs.push(format!("{} changed: {v:?} -> {w:?}", p.display())),
                    _ => {}
                }
            }
            for p in after.keys().filter(|p| !self.before.contains_key(*p)) {
                diffs.push(format!("{} appeared", p.display()));
            }
            panic!("canaries beside DEST were touched:\n  {}\n{}", diffs.join("\n  "), run.show());
        }
        let mut names: Vec<String> = fs::read_dir(&self.work)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for name in &names {
            let expected = ["archive.tar", "canary", "canary-file", "dest"].contains(&name.as_str())
                || self.extra.contains(name)
                || self.allowed.contains(name);
            assert!(expected, "{name:?} appeared beside DEST\n{}", run.show());
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dest.join(rel)
    }
}

/// With `CKPT_HOSTILE_DUMP=DIR`, every archive up to 64 KiB a test imports is also written to
/// DIR (named by a hash of its bytes): seeds for the fuzzer (fuzz/seeds).
fn dump_for_fuzzing(archive: &[u8]) {
    use std::hash::{Hash, Hasher};
    let Some(dir) = std::env::var_os("CKPT_HOSTILE_DUMP") else { return };
    if archive.len() <= 64 << 10 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        archive.hash(&mut h);
        fs::write(Path::new(&dir).join(format!("hostile-{:016x}.tar", h.finish())), archive).unwrap();
    }
}

/// Runs `case` once per way of reading the archive, each in a fresh arena.
fn both_ways(case: impl Fn(Arena, Via)) {
    for via in [Via::File, Via::Stdin] {
        let Some(arena) = Arena::new(FsKind::Plain) else { return };
        case(arena, via);
    }
}

fn lstat(path: &Path) -> Option<fs::Metadata> {
    fs::symlink_metadata(path).ok()
}

fn assert_absent(path: &Path, run: &Run) {
    assert!(lstat(path).is_none(), "{} exists but must not\n{}", path.display(), run.show());
}

fn assert_file(path: &Path, content: &[u8], run: &Run) {
    let m = lstat(path).unwrap_or_else(|| panic!("{} missing\n{}", path.display(), run.show()));
    assert!(m.is_file(), "{} is not a regular file ({:?})\n{}", path.display(), m.file_type(), run.show());
    assert_eq!(fs::read(path).unwrap(), content, "content of {}\n{}", path.display(), run.show());
}

fn assert_symlink(path: &Path, target: &str, run: &Run) {
    let m = lstat(path).unwrap_or_else(|| panic!("{} missing\n{}", path.display(), run.show()));
    assert!(m.file_type().is_symlink(), "{} is not a symlink\n{}", path.display(), run.show());
    assert_eq!(fs::read_link(path).unwrap(), Path::new(target), "{}\n{}", path.display(), run.show());
}

/// Asserts stderr names `member` (as ckpt prints names: possibly with DEST in front).
fn assert_names(run: &Run, member: &str) {
    assert!(run.stderr.contains(member), "stderr does not name {member:?}\n{}", run.show());
}

/// A refused or conflicting import: exit 1, the member named.
fn assert_failed_naming(run: &Run, member: &str, what: &str) {
    run.assert_code(&[1], what);
    assert_names(run, member);
}

// ---------------------------------------------------------------------------
// Path traversal
// ---------------------------------------------------------------------------

/// A member named `name` (with `..` in it) between two harmless ones.
fn check_dotdot_refused(name: &str) {
    both_ways(|mut arena, via| {
        let archive = Tar::new().file("before", b"1").file(name, b"evil\n").file("after", b"2").end().bytes();
        let run = arena.import(&archive, via, &[]);
        assert_failed_naming(&run, name, &format!("{name} via {via:?}"));
        assert!(run.stderr.contains("refused"), "{name}: not reported as refused\n{}", run.show());
        // The other members are restored; nothing named x anywhere.
        assert_file(&arena.path("before"), b"1", &run);
        assert_file(&arena.path("after"), b"2", &run);
        assert_absent(&arena.work.join("x"), &run);
        assert_absent(&arena.path("x"), &run);
        assert_absent(&arena.path("a/x"), &run);
    });
}

/// One test per spelling of a name that climbs out of DEST.
macro_rules! dotdot {
    ($($test:ident: $name:literal;)*) => {
        $(#[test]
        fn $test() {
            check_dotdot_refused($name);
        })*
    };
}

dotdot! {
    a_member_named_dotdot_slash_x_is_refused: "../x";
    a_member_climbing_past_its_own_directory_is_refused: "a/../../x";
    a_member_named_dot_slash_dotdot_slash_x_is_refused: "./../x";
    a_member_named_a_slash_dotdot_is_refused: "a/..";
    a_member_named_dotdot_is_refused: "..";
    a_member_into_the_canary_directory_is_refused: "../canary/f";
    a_member_onto_the_canary_file_is_refused: "../canary-file";
    a_member_climbing_three_levels_from_two_is_refused: "a/b/../../../x";
}

/// Two tests of one check: without and with `--overwrite`.
macro_rules! without_and_with_overwrite {
    ($check:ident: $without:ident, $with:ident) => {
        #[test]
        fn $without() {
            $check(false);
        }

        #[test]
        fn $with() {
            $check(true);
        }
    };
}

#[test]
fn dotdot_in_pax_path_and_gnu_long_name_is_refused() {
    both_ways(|mut arena, via| {
        let archive = Tar::new()
            .pax(&[(b"path", b"../pax-escape")])
            .file("harmless-pax", b"evil\n")
            .gnu_long(b'L', b"../gnu-escape")
            .file("harmless-gnu", b"evil\n")
            .pax(&[(b"path", b"l2"), (b"linkpath", b"../canary/f")])
            .hardlink("l2", "harmless")
            .gnu_long(b'K', b"../canary-file")
            .hardlink("l3", "harmless")
            .end()
            .bytes();
        let run = arena.import(&archive, via, &[]);
        run.assert_code(&[1], "pax/GNU traversal");
        for name in ["../pax-escape", "../gnu-escape", "l2", "l3"] {
            assert_names(&run, name);
        }
        for name in ["pax-escape", "gnu-escape"] {
            assert_absent(&arena.work.join(name), &run);
        }
        for name in ["harmless-pax", "harmless-gnu", "l2", "l3"] {
            assert_absent(&arena.path(name), &run);
        }
    });
}

#[test]
fn absolute_names_are_restored_beneath_dest_with_one_warning() {
    both_ways(|mut arena, via| {
        // The canary's own absolute path too: it must land beneath DEST, not on the canary.
        let canary_abs = arena.canary_file.to_str().unwrap().to_string();
        let archive = Tar::new()
            .file("/etc/x", b"x\n")
            .file("//etc/y", b"y\n")
            .pax(&[(b"path", canary_abs.as_bytes())])
            .file("ignored", b"not the canary\n")
            .end()
            .bytes();
        let run = arena.import(&archive, via, &[]);
        run.assert_code(&[0], "absolute names");
        assert_file(&arena.path("etc/x"), b"x\n", &run);
        assert_file(&arena.path("etc/y"), b"y\n", &run);
        assert_file(&arena.dest.join(canary_abs.trim_start_matches('/')), b"not the canary\n", &run);
        let warnings = run.stderr.lines().filter(|l| l.contains("leading '/'")).count();
        assert_eq!(warnings, 1, "expected exactly one warning about leading '/'\n{}", run.show());
    });
}

// ---------------------------------------------------------------------------
// Symlinks
// ---------------------------------------------------------------------------

#[test]
fn members_below_a_symlink_leading_outside_are_refused() {
    both_ways(|mut arena, via| {
        let canary_abs = arena.canary_dir.to_str().unwrap().to_string();
        let archive = Tar::new()
            .symlink("abs", &canary_abs)
            .file("abs/x", b"evil\n")
            .symlink("rel", "../canary")
            .file("rel/x", b"evil\n")
            .file("rel/f", b"evil\n")
            .dir("d")
            .symlink("d/up", "../../canary")
            .file("d/up/x", b"evil\n")
            // A chain: a -> b -> outside.
            .symlink("a", "b")
            .symlink("b", "../canary")
            .file("a/x", b"evil\n")
            // A loop.
            .symlink("loop", "loop")
            .file("loop/x", b"evil\n")
            // A directory member below the symlink.
            .dir("rel/newdir")
            .end()
            .bytes();
        let run = arena.import(&archive, via, &[]);
        run.assert_code(&[1], "below outside symlinks");
        for member in ["abs/x", "rel/x", "rel/f", "d/up/x", "a/x", "loop/x", "rel/newdir"] {
            assert_names(&run, member);
        }
        assert_symlink(&arena.path("abs"), &canary_abs, &run);
        assert_symlink(&arena.path("rel"), "../canary", &run);
        assert_symlink(&arena.path("a"), "b", &run);
    });
}

#[test]
fn a_symlink_inside_dest_may_be_followed() {
    // RESOLVE_BENEATH allows symlinks that stay beneath DEST (as tar does).
    let Some(mut arena) = Arena::new(FsKind::Plain) else { return };
    let archive = Tar::new().dir("real").symlink("l", "real").file("l/x", b"inside\n").end().bytes();
    let run = arena.import(&archive, Via::File, &[]);
    run.assert_code(&[0], "symlink inside");
    assert_file(&arena.path("real/x"), b"inside\n", &run);
}

/// A symlink `s` to the canary file (absolute or relative target), then a file `s`: a
/// conflict that leaves the symlink, or with `--overwrite` a replaced symlink, never a write
/// through it.
fn check_file_over_symlink(abs: bool, overwrite: bool) {
    both_ways(|mut arena, via| {
        let target =
            if abs { arena.canary_file.to_str().unwrap().to_string() } else { "../canary-file".into() };
        let archive = Tar::new().symlink("s", &target).file("s", b"evil\n").end().bytes();
        if overwrite {
            let run = arena.import(&archive, via, &["--overwrite"]);
            run.assert_code(&[0], "--overwrite: file over symlink");
            assert_file(&arena.path("s"), b"evil\n", &run);
        } else {
            let run = arena.import(&archive, via, &[]);
            assert_failed_naming(&run, "s", "file over the archive's own symlink");
            assert!(run.stderr.contains("already exists"), "not reported as a conflict\n{}", run.show());
            assert_symlink(&arena.path("s"), &target, &run);
        }
    });
}

#[test]
fn a_file_member_over_a_relative_symlink_of_the_same_name_is_a_conflict() {
    check_file_over_symlink(false, false);
}

#[test]
fn a_file_member_over_an_absolute_symlink_of_the_same_name_is_a_conflict() {
    check_file_over_symlink(true, false);
}

#[test]
fn with_overwrite_a_file_member_replaces_a_relative_symlink_of_the_same_name() {
    check_file_over_symlink(false, true);
}

#[test]
fn with_overwrite_a_file_member_replaces_an_absolute_symlink_of_the_same_name() {
    check_file_over_symlink(true, true);
}

fn check_dir_replaced_by_symlink(overwrite: bool) {
    both_ways(|mut arena, via| {
        let flags: &[&str] = if overwrite { &["--overwrite"] } else { &[] };
        let archive = Tar::new()
            .dir("d")
            .file("d/a", b"a\n")
            .symlink("d", "../canary")
            .file("d/x", b"evil\n")
            .file("d/f", b"evil\n")
            .end()
            .bytes();
        let run = arena.import(&archive, via, flags);
        run.assert_code(&[1], &format!("dir replaced by symlink (overwrite {overwrite})"));
        assert_names(&run, "d");
        let d = lstat(&arena.path("d")).unwrap();
        assert!(d.is_dir(), "d is no longer a directory\n{}", run.show());
        assert_file(&arena.path("d/a"), b"a\n", &run);
        // An empty directory replaced by a symlink, then a member below it.
        let Some(mut arena) = Arena::new(FsKind::Plain) else { return };
        let archive = Tar::new()
            .dir("e")
            .file("other", b"o\n")
            .symlink("e", "../canary")
            .file("e/x", b"evil\n")
            .end()
            .bytes();
        let run = arena.import(&archive, via, flags);
        // Without --overwrite: a conflict, and e/x lands in the real directory. With it the
        // empty directory gives way to the symlink, and e/x is refused.
        run.assert_code(&[1], &format!("empty dir replaced by symlink (overwrite {overwrite})"));
        if overwrite {
            assert_symlink(&arena.path("e"), "../canary", &run);
            assert_names(&run, "e/x");
            assert!(run.stderr.contains("refused"), "e/x not refused\n{}", run.show());
        } else {
            assert!(run.stderr.contains("e: already exists"), "no conflict on e\n{}", run.show());
            assert_file(&arena.path("e/x"), b"evil\n", &run);
        }
    });
}

without_and_with_overwrite!(
    check_dir_replaced_by_symlink:
    a_directory_replaced_by_a_symlink_mid_archive_is_not_followed,
    with_overwrite_a_directory_replaced_by_a_symlink_mid_archive_is_not_followed
);

// ---------------------------------------------------------------------------
// Hard links
// ---------------------------------------------------------------------------

#[test]
fn hardlinks_to_outside_targets_are_refused() {
    both_ways(|mut arena, via| {
        let canary_f = arena.canary_dir.join("f");
        // h2's target is absolute: taken beneath DEST, where it does not exist, so it is
        // refused too.
        let archive = Tar::new()
            .hardlink("h1", "../canary/f")
            .symlink("l", "../canary")
            .hardlink("h3", "l/f")
            .hardlink("h4", "./../canary-file")
            .hardlink("h2", canary_f.to_str().unwrap())
            .end()
            .bytes();
        let run = arena.import(&archive, via, &[]);
        run.assert_code(&[1], "hardlinks outside");
        for member in ["h1", "h3", "h4", "h2"] {
            assert_names(&run, member);
            assert_absent(&arena.path(member), &run);
        }
        // The canaries' link counts are checked by the arena (nlink is in the snapshot).
    });
}

#[test]
fn a_hardlink_to_a_missing_target_is_refused_and_the_rest_restored() {
    both_ways(|mut arena, via| {
        let archive = Tar::new()
            .file("before", b"1")
            .hardlink("dangling", "not-in-archive")
            .file("after", b"2")
            .hardlink("good", "after")
            .end()
            .bytes();
        let run = arena.import(&archive, via, &[]);
        assert_failed_naming(&run, "dangling", "hardlink to a missing target");
        assert!(run.stderr.contains("not-in-archive"), "the missing target is not named\n{}", run.show());
        assert_absent(&arena.path("dangling"), &run);
        assert_file(&arena.path("before"), b"1", &run);
        assert_file(&arena.path("after"), b"2", &run);
        assert_file(&arena.path("good"), b"2", &run);
        assert_eq!(
            fs::metadata(arena.path("good")).unwrap().ino(),
            fs::metadata(arena.path("after")).unwrap().ino()
        );
    });
}

fn check_hardlink_to_outside_symlink(overwrite: bool) {
    both_ways(|mut arena, via| {
        let flags: &[&str] = if overwrite { &["--overwrite"] } else { &[] };
        let archive = Tar::new()
            .symlink("s", "../canary-file")
            .hardlink("h", "s")
            .file("h", b"evil\n")
            .file("s", b"evil too\n")
            .file("h/x", b"evil\n")
            .end()
            .bytes();
        let run = arena.import(&archive, via, flags);
        if overwrite {
            // h and s are replaced (the link itself, never its target); h/x then lies below a
            // regular file.
            run.assert_code(&[1], "hardlink to symlink, --overwrite");
            assert_file(&arena.path("h"), b"evil\n", &run);
            assert_file(&arena.path("s"), b"evil too\n", &run);
            assert_names(&run, "h/x");
        } else {
            assert_failed_naming(&run, "h", "hardlink to symlink");
            assert_names(&run, "h/x");
            assert_symlink(&arena.path("s"), "../canary-file", &run);
            assert_symlink(&arena.path("h"), "../canary-file", &run);
        }
    });
}

without_and_with_overwrite!(
    check_hardlink_to_outside_symlink:
    a_hardlink_to_an_outside_symlink_is_never_written_through,
    with_overwrite_a_hardlink_to_an_outside_symlink_is_replaced_never_written_through
);

// ---------------------------------------------------------------------------
// Device nodes and fifos
// ---------------------------------------------------------------------------

fn check_file_over_device_or_fifo(overwrite: bool) {
    // Device nodes need root (under CI its absence is a failure); the fifo half runs anyway.
    let root = util::require_root("device node members");
    both_ways(|mut arena, via| {
        let flags: &[&str] = if overwrite { &["--overwrite"] } else { &[] };
        let mut tar = Tar::new();
        // A fifo: writing into it would block forever (the timeout would catch it).
        tar.node("p", b'6', 0, 0).file("p", b"evil\n");
        if root {
            // /dev/null's numbers; a write through it would vanish silently.
            tar.node("n", b'3', 1, 3).file("n", b"evil\n");
        }
        let archive = tar.end().bytes();
        let run = arena.import(&archive, via, flags);
        if overwrite {
            run.assert_code(&[0], "--overwrite over device/fifo");
            assert_file(&arena.path("p"), b"evil\n", &run);
            if root {
                assert_file(&arena.path("n"), b"evil\n", &run);
            }
        } else {
            assert_failed_naming(&run, "p", "file over fifo");
            assert!(lstat(&arena.path("p")).unwrap().file_type().is_fifo());
            if root {
                assert_names(&run, "n");
                assert!(lstat(&arena.path("n")).unwrap().file_type().is_char_device());
            }
        }
    });
}

without_and_with_overwrite!(
    check_file_over_device_or_fifo:
    a_file_member_over_a_device_or_fifo_is_a_conflict_never_a_write_through,
    with_overwrite_a_file_member_replaces_a_device_or_fifo_never_writes_through
);

// ---------------------------------------------------------------------------
// No clobbering of existing entries
// ---------------------------------------------------------------------------

#[test]
fn existing_files_are_not_replaced_without_overwrite() {
    both_ways(|mut arena, via| {
        fs::write(arena.path("existing"), b"old\n").unwrap();
        std::os::unix::fs::symlink("../canary-file", arena.path("sl")).unwrap();
        fs::create_dir(arena.path("dir")).unwrap();
        fs::write(arena.path("dir/inside"), b"inside\n").unwrap();
        fs::write(arena.path("plain"), b"plain\n").unwrap();
        let archive = Tar::new()
            .file("existing", b"new\n")
            .file("sl", b"new\n")
            .file("dir", b"new\n")
            .symlink("plain", "../canary-file")
            .dir("existing")
            .file("fresh", b"fresh\n")
            .end()
            .bytes();
        let run = arena.import(&archive, via, &[]);
        run.assert_code(&[1], "existing entries");
        for name in ["existing", "sl", "dir", "plain"] {
            assert!(
                run.stderr.lines().any(|l| l.contains(&format!("{name}: already exists"))),
                "conflict on {name} not named\n{}",
                run.show()
            );
        }
        assert_file(&arena.path("existing"), b"old\n", &run);
        assert_symlink(&arena.path("sl"), "../canary-file", &run);
        assert_file(&arena.path("dir/inside"), b"inside\n", &run);
        assert_file(&arena.path("plain"), b"plain\n", &run);
        assert_file(&arena.path("fresh"), b"fresh\n", &run);
    });
}

#[test]
fn overwrite_replaces_by_unlink_and_create_never_by_writing_into() {
    both_ways(|mut arena, via| {
        fs::write(arena.path("existing"), b"old\n").unwrap();
        // A second name of the old file, outside DEST: must keep the OLD content.
        fs::hard_link(arena.path("existing"), arena.work.join("old-link")).unwrap();
        arena.extra.push("old-link".into());
        std::os::unix::fs::symlink("../canary-file", arena.path("sl")).unwrap();
        fs::write(arena.path("plain"), b"plain\n").unwrap();
        arena.seal();
        let archive = Tar::new()
            .file("existing", b"new content\n")
            .file("sl", b"new\n")
            .symlink("plain", "somewhere")
            .end()
            .bytes();
        let before = lstat(&arena.work.join("old-link")).unwrap();
        let run = arena.import(&archive, via, &["--overwrite"]);
        run.assert_code(&[0], "--overwrite");
        assert_file(&arena.path("existing"), b"new content\n", &run);
        assert_ne!(lstat(&arena.path("existing")).unwrap().ino(), before.ino(), "same inode: written into");
        assert_file(&arena.path("sl"), b"new\n", &run);
        assert_symlink(&arena.path("plain"), "somewhere", &run);
        // old-link is in the arena's snapshot (content "old", mode, mtime; not its link count,
        // which drops from 2 to 1), so the arena has checked that it is untouched.
        assert_file(&arena.work.join("old-link"), b"old\n", &run);
        assert_eq!(lstat(&arena.work.join("old-link")).unwrap().nlink(), 1, "old-link's link count");
    });
}

fn check_existing_symlinks_not_followed(overwrite: bool) {
    let flags: &[&str] = if overwrite { &["--overwrite"] } else { &[] };
    both_ways(|mut arena, via| {
        // Symlinks that were in DEST before the import, leading outside.
        std::os::unix::fs::symlink("../canary", arena.path("rel")).unwrap();
        std::os::unix::fs::symlink(&arena.canary_dir, arena.path("abs")).unwrap();
        let archive = Tar::new()
            .file("rel/f", b"evil\n")
            .file("abs/f", b"evil\n")
            .dir("rel/sub")
            .hardlink("h", "rel/f")
            .file("ok", b"ok\n")
            .end()
            .bytes();
        let run = arena.import(&archive, via, flags);
        run.assert_code(&[1], &format!("pre-existing symlinks {flags:?}"));
        for member in ["rel/f", "abs/f", "rel/sub", "h"] {
            assert_names(&run, member);
        }
        assert_file(&arena.path("ok"), b"ok\n", &run);
        assert_absent(&arena.path("h"), &run);
    });
}

without_and_with_overwrite!(
    check_existing_symlinks_not_followed:
    existing_symlinks_in_dest_are_not_followed_out,
    with_overwrite_existing_symlinks_in_dest_are_not_followed_out
);

// ---------------------------------------------------------------------------
// Container layers: whiteouts and deleted.files delete, so they must stay beneath the layer
// ---------------------------------------------------------------------------

/// A checkpoint archive whose `rootfs-diff.tar` holds `inner`, with `deleted` as
/// deleted.files.
fn bundle(inner: &[u8], deleted: &str) -> Vec<u8> {
    Bundle::new()
        .file("config.dump", "{}")
        .file("spec.dump", "{}")
        .file("checkpoint/inventory.img", [0; 40])
        .file("rootfs-diff.tar", inner)
        .file("deleted.files", deleted)
        .archive()
}

/// Whiteouts and deleted.files that name paths outside the layer, imported with `mode`:
/// `--rootfs` (a plain directory: deletions delete) or `--rootfs-diff` (an overlay upper
/// dir: deletions become whiteout devices).
fn check_layer_deletions_stay_inside(mode: &str) {
    both_ways(|mut arena, via| {
        let rootfs = arena.work.join("rootfs");
        fs::create_dir_all(rootfs.join("dir")).unwrap();
        fs::write(rootfs.join("keep"), b"keep\n").unwrap();
        fs::write(rootfs.join("gone"), b"gone\n").unwrap();
        fs::write(rootfs.join("dir/inner"), b"inner\n").unwrap();
        arena.allowed.push("rootfs".into());
        let inner = Tar::new()
            .file(".wh...", b"")
            .file(".wh..", b"")
            .file("dir/.wh...", b"")
            .file("./.wh...", b"")
            .symlink("l", "../canary")
            .file("l/.wh.f", b"")
            .file("l/.wh..wh..opq", b"")
            .file("l/sub/.wh.g", b"")
            .file(".wh.gone", b"")
            .file(".wh.absent", b"")
            .end()
            .bytes();
        let deleted =
            r#"["/../canary-file", "/../canary", "../canary/f", "/l/f", "/l/sub", "/dir/../../canary"]"#;
        let archive = bundle(&inner, deleted);
        let flags = [mode, rootfs.to_str().unwrap()];
        let run = arena.import(&archive, via, &flags);
        let what = format!("{mode} via {via:?}");
        run.assert_code(&[1], &what);
        for member in [".wh...", ".wh..", "dir/.wh...", "l/.wh.f", "l/.wh..wh..opq", "l/sub/.wh.g"] {
            assert_names(&run, member);
        }
        for path in ["/../canary-file", "/../canary", "/l/f", "/l/sub", "/dir/../../canary"] {
            assert_names(&run, path);
        }
        // The layer itself: what it legitimately deletes is gone, the rest is there.
        assert_file(&rootfs.join("keep"), b"keep\n", &run);
        assert_file(&rootfs.join("dir/inner"), b"inner\n", &run);
        match mode {
            "--rootfs" => assert_absent(&rootfs.join("gone"), &run),
            _ => {
                // An existing upper file is not replaced by a whiteout without --overwrite.
                assert_file(&rootfs.join("gone"), b"gone\n", &run);
                let m = lstat(&rootfs.join("absent")).unwrap();
                assert!(m.file_type().is_char_device() && m.rdev() == 0, "{what}: no whiteout for absent");
            }
        }
    });
}

#[test]
fn whiteouts_and_deletions_in_a_rootfs_never_reach_outside_the_layer() {
    check_layer_deletions_stay_inside("--rootfs");
}

#[test]
fn whiteouts_and_deletions_in_a_rootfs_diff_never_reach_outside_the_layer() {
    // An overlay upper dir records deletions as whiteout devices, which needs root.
    if util::require_root("whiteout devices") {
        check_layer_deletions_stay_inside("--rootfs-diff");
    }
}

// ---------------------------------------------------------------------------
// Malformed archives
// ---------------------------------------------------------------------------

/// A malformed case: the archive, the member the error must name, and the complete files
/// that may be in DEST afterwards (nothing else may be a regular file there).
struct Malformed {
    what: &'static str,
    archive: Vec<u8>,
    /// Text the error must contain (the member's name, as ckpt knows it at that point).
    names: String,
    /// Exit codes allowed (1 unless the archive is only odd, not broken).
    codes: &'static [i32],
    /// Regular files DEST may hold afterwards, with their complete content.
    complete: Vec<(&'static str, Vec<u8>)>,
    /// Whether the error must give the archive offset.
    offset: bool,
}

fn good_prefix() -> Tar {
    let mut t = Tar::new();
    t.file("good", b"complete\n");
    t
}

fn good() -> Vec<(&'static str, Vec<u8>)> {
    vec![("good", b"complete\n".to_vec())]
}

fn malformed_cases() -> Vec<Malformed> {
    let mut cases = Vec::new();
    let big: Vec<u8> = (0..20000u32).map(|i| (i * 7 % 251) as u8).collect();

    // Bad checksum.
    let mut t = good_prefix();
    let mut h = header(b"badsum", b'0', 5, b"");
    h[148] = b'7';
    t.block(h).data(b"evil\n").end();
    cases.push(Malformed {
        what: "bad checksum",
        archive: t.bytes(),
        names: "\"badsum\" at offset 1024".into(),
        codes: &[1],
        complete: good(),
        offset: true,
    });

    // Truncated member data (and no end blocks).
    let mut t = good_prefix();
    t.block(header(b"trunc", b'0', big.len() as u64, b"")).raw(&big[..7000]);
    cases.push(Malformed {
        what: "truncated data",
        archive: t.bytes(),
        names: "trunc".into(),
        codes: &[1],
        complete: good(),
        offset: true,
    });

    // Truncated header.
    let mut t = good_prefix();
    let h = header(b"cut-header", b'0', 5, b"");
    t.raw(&h[..300]);
    cases.push(Malformed {
        what: "truncated header",
        archive: t.bytes(),
        names: "cut-header".into(),
        codes: &[1],
        complete: good(),
        offset: true,
    });

    // A size far beyond the end of the archive (8 GiB, the largest 11-digit octal).
    let mut t = good_prefix();
    t.block(header(b"huge", b'0', 0o77777777777, b"")).data(&big).end();
    cases.push(Malformed {
        what: "size beyond the archive",
        archive: t.bytes(),
        names: "huge".into(),
        codes: &[1],
        complete: good(),
        offset: true,
    });

    // A giant pax record length.
    let mut t = good_prefix();
    t.pax_raw(b"99999999999 path=giant\n").file("after-pax", b"evil\n").end();
    cases.push(Malformed {
        what: "giant pax record length",
        archive: t.bytes(),
        names: "PaxHeaders/evil\" at offset 1024".into(),
        codes: &[1],
        complete: good(),
        offset: true,
    });

    // A pax header announcing 1 TB.
    let mut t = good_prefix();
    let mut h = header(b"PaxHeaders/tera", b'x', 0, b"");
    base256(&mut h[124..136], 1 << 40);
    set_checksum(&mut h);
    t.block(h).data(&pax_record(b"path", b"x")).end();
    cases.push(Malformed {
        what: "pax header of 1 TB",
        archive: t.bytes(),
        names: "PaxHeaders/tera\" at offset 1024".into(),
        codes: &[1],
        complete: good(),
        offset: true,
    });

    // A GNU long name of 1 GiB, and one just over the cap with all its bytes present.
    let mut t = good_prefix();
    t.block(header(b"././@LongLink", b'L', 1 << 30, b"")).data(b"name").end();
    cases.push(Malformed {
        what: "GNU long name of 1 GiB",
        archive: t.bytes(),
        names: "././@LongLink\" at offset 1024".into(),
        codes: &[1],
        complete: good(),
        offset: true,
    });
    let mut t = good_prefix();
    t.gnu_long(b'L', &vec![b'n'; 1 << 20]).file("short", b"evil\n").end();
    cases.push(Malformed {
        what: "GNU long name of 1 MiB",
        archive: t.bytes(),
        names: "././@LongLink\" at offset 1024".into(),
        codes: &[1],
        complete: good(),
        offset: true,
    });

    // NUL bytes in a pax path and linkpath.
    let mut t = good_prefix();
    t.pax(&[(b"path", b"nul\0name")]).file("nul-short", b"evil\n").end();
    cases.push(Malformed {
        what: "NUL in pax path",
        archive: t.bytes(),
        names: "NUL".into(),
        codes: &[1],
        complete: good(),
        offset: true,
    });
    let mut t = good_prefix();
    t.pax(&[(b"linkpath", b"tar\0get")]).symlink("nul-link", "x").end();
    cases.push(Malformed {
        what: "NUL in pax linkpath",
        archive: t.bytes(),
        names: "nul-link".into(),
        codes: &[1],
        complete: good(),
        offset: true,
    });

    // Bad octal digits in size, mode and mtime.
    for (what, range, value) in [
        ("bad octal size", 124..136, &b"0000000009\0\0"[..]),
        ("bad octal mode", 100..108, &b"00006x4\0"[..]),
        ("bad octal mtime", 136..148, &b"1234567z901\0"[..]),
    ] {
        let mut t = good_prefix();
        let mut h = header(b"badnum", b'0', 5, b"");
        h[range].copy_from_slice(value);
        set_checksum(&mut h);
        t.block(h).data(b"evil\n").end();
        cases.push(Malformed {
            what,
            archive: t.bytes(),
            names: "\"badnum\" at offset 1024".into(),
            codes: &[1],
            complete: good(),
            offset: true,
        });
    }

    // Absurd base-256 sizes: u64::MAX, 2^62, and a negative number.
    for (what, value, negative) in [
        ("base-256 size u64::MAX", u64::MAX, false),
        ("base-256 size 2^62", 1 << 62, false),
        ("negative", 0, true),
    ] {
        let mut t = good_prefix();
        let mut h = header(b"b256", b'0', 0, b"");
        base256(&mut h[124..136], value);
        if negative {
            h[124..136].fill(0xff);
        }
        set_checksum(&mut h);
        t.block(h).data(b"evil\n").end();
        cases.push(Malformed {
            what,
            archive: t.bytes(),
            names: "b256".into(),
            codes: &[1],
            complete: good(),
            offset: true,
        });
    }

    // An absurd pax size record.
    for (what, value) in [
        ("pax size u64::MAX", &b"18446744073709551615"[..]),
        ("pax size 2^64", b"18446744073709551616"),
        ("pax size -5", b"-5"),
        ("pax size 12x", b"12x"),
    ] {
        let mut t = good_prefix();
        t.pax(&[(b"size", value)]).file("paxsize", b"evil\n").end();
        cases.push(Malformed {
            what,
            archive: t.bytes(),
            names: "paxsize".into(),
            codes: &[1],
            complete: good(),
            offset: true,
        });
    }

    // An extended header with no member after it.
    let mut t = good_prefix();
    t.pax(&[(b"path", b"orphan")]);
    cases.push(Malformed {
        what: "pax header at the end",
        archive: t.bytes(),
        names: "offset".into(),
        codes: &[1],
        complete: good(),
        offset: true,
    });

    // Garbage where a header should be.
    let mut t = good_prefix();
    t.raw(&[0x5a; BLOCK]).end();
    cases.push(Malformed {
        what: "garbage header",
        archive: t.bytes(),
        names: "at offset 1024".into(),
        codes: &[1],
        complete: good(),
        offset: true,
    });

    // Sparse members whose map does not fit their data.
    type Records<'a> = Vec<(&'a [u8], &'a [u8])>;
    let sparse_bad: [(&str, Records, &[u8]); 4] = [
        (
            "pax sparse 1.0 without a size",
            vec![(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0")],
            b"1\n0\n5\n",
        ),
        (
            "pax sparse map longer than the data",
            vec![(b"GNU.sparse.realsize", b"10"), (b"GNU.sparse.map", b"0,5,5,6")],
            b"evil\n",
        ),
        (
            "pax sparse lengths summing past 2^64",
            vec![
                (b"GNU.sparse.realsize", b"18446744073709551615"),
                (b"GNU.sparse.map", b"0,9223372036854775808,0,9223372036854775808,0,5"),
            ],
            b"evil\n",
        ),
        (
            "pax sparse real size past 2^63",
            vec![
                (b"GNU.sparse.realsize", b"18446744073709551615"),
                (b"GNU.sparse.map", b"18446744073709551000,5"),
            ],
            b"evil\n",
        ),
    ];
    for (what, records, data) in sparse_bad {
        let mut t = good_prefix();
        t.pax(&records).file("sparse", data).end();
        cases.push(Malformed {
            what,
            archive: t.bytes(),
            names: "\"sparse\" at offset".into(),
            codes: &[1],
            complete: good(),
            offset: true,
        });
    }
    // A pax sparse 1.0 map with a number longer than any u64.
    let mut t = good_prefix();
    let mut map = b"1\n".to_vec();
    map.extend_from_slice(&[b'9'; 5000]);
    t.pax(&[(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.realsize", b"10")])
        .file("sparse", &map)
        .end();
    cases.push(Malformed {
        what: "pax sparse 1.0 map with an endless number",
        archive: t.bytes(),
        names: "\"sparse\" at offset".into(),
        codes: &[1],
        complete: good(),
        offset: true,
    });

    // Compressed archives cut short in the middle of a member's data, and a corrupt gzip header.
    let noise = util::pseudo_random_bytes(7, 400_000);
    let mut t = good_prefix();
    t.file("big", &noise).end();
    let plain = t.bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    for (what, compressed) in [("truncated gzip", gz), ("truncated zstd", zst)] {
        cases.push(Malformed {
            what,
            archive: compressed[..compressed.len() / 2].to_vec(),
            names: "\"big\"".into(),
            codes: &[1],
            complete: good(),
            offset: true,
        });
    }
    let mut bad_gzip = vec![0x1f, 0x8b];
    bad_gzip.extend_from_slice(&[0x55; 100]);
    cases.push(Malformed {
        what: "corrupt gzip header",
        archive: bad_gzip,
        names: "at offset 0".into(),
        codes: &[1],
        complete: Vec::new(),
        offset: true,
    });

    // A million xattr records: more than Linux can hold on one file.
    let mut data = Vec::new();
    let mut i = 0u32;
    while data.len() < (15 << 20) {
        data.extend_from_slice(&pax_record(format!("SCHILY.xattr.user.k{i}").as_bytes(), b"v"));
        i += 1;
    }
    let mut t = good_prefix();
    t.pax_raw(&data).file("xattr-bomb", b"evil\n").end();
    cases.push(Malformed {
        what: "a million xattrs",
        archive: t.bytes(),
        names: "\"xattr-bomb\" at offset".into(),
        codes: &[1],
        complete: good(),
        offset: true,
    });

    // No end-of-archive blocks at all: cut short at a member boundary (verify says so too).
    cases.push(Malformed {
        what: "no end blocks",
        archive: good_prefix().bytes(),
        names: "no end-of-archive blocks after member \"good\"".into(),
        codes: &[1],
        complete: good(),
        offset: true,
    });

    // Extended headers that each fit the cap but together do not (local and global ones).
    for (what, typeflag) in [
        ("local extended headers adding up past the cap", b'x'),
        ("global extended headers adding up past the cap", b'g'),
    ] {
        let mut t = good_prefix();
        for part in 0..3 {
            let mut data = Vec::new();
            let mut i = 0u32;
            while data.len() < (7 << 20) {
                data.extend_from_slice(&pax_record(format!("GNU.sparse.p{part}k{i}").as_bytes(), b"v"));
                i += 1;
            }
            t.block(header(b"PaxHeaders/evil", typeflag, data.len() as u64, b"")).data(&data);
        }
        t.file("after-many", b"evil\n").end();
        cases.push(Malformed {
            what,
            archive: t.bytes(),
            names: "PaxHeaders/evil".into(),
            codes: &[1],
            complete: good(),
            offset: true,
        });
    }
    cases
}

/// Odd but acceptable archives (every tar reads them the same way).
fn odd_cases() -> Vec<Malformed> {
    let mut cases = Vec::new();
    // A lone zero block at the end (GNU tar warns "A lone zero block", exits 0).
    let mut t = good_prefix();
    t.raw(&[0; BLOCK]);
    cases.push(Malformed {
        what: "lone zero block at the end",
        archive: t.bytes(),
        names: String::new(),
        codes: &[0],
        complete: good(),
        offset: false,
    });
    // A lone zero block, then a member: GNU tar stops at the zero block (with a warning).
    let mut t = good_prefix();
    t.raw(&[0; BLOCK]).file("hidden", b"after a lone zero block\n").end();
    cases.push(Malformed {
        what: "lone zero block before a member",
        archive: t.bytes(),
        names: "zero block".into(),
        codes: &[0],
        complete: good(),
        offset: false,
    });
    // Garbage after the end-of-archive blocks is ignored (as by GNU tar and bsdtar).
    let mut t = good_prefix();
    t.end().raw(&[0xa5; 3000]);
    cases.push(Malformed {
        what: "garbage after the end",
        archive: t.bytes(),
        names: String::new(),
        codes: &[0],
        complete: good(),
        offset: false,
    });
    // Valid base-256 numbers: size, uid and a large mtime.
    let mut t = good_prefix();
    let mut h = header(b"b256-ok", b'0', 0, b"");
    base256(&mut h[124..136], 6);
    base256(&mut h[108..116], 0o7777777 + 5);
    base256(&mut h[136..148], 0o77777777777 + 100);
    set_checksum(&mut h);
    t.block(h).data(b"valid\n").end();
    let mut complete = good();
    complete.push(("b256-ok", b"valid\n".to_vec()));
    cases.push(Malformed {
        what: "valid base-256 numbers",
        archive: t.bytes(),
        names: String::new(),
        codes: &[0],
        complete,
        offset: false,
    });
    // Many pax records with distinct keys (a quadratic merge would take hours) and an
    // oversized xattr list.
    let mut data = Vec::new();
    let mut i = 0u32;
    while data.len() < (15 << 20) {
        data.extend_from_slice(&pax_record(format!("x.k{i}").as_bytes(), b"v"));
        i += 1;
    }
    let mut t = good_prefix();
    t.pax_raw(&data).file("many-records", b"ok\n").end();
    let mut complete = good();
    complete.push(("many-records", b"ok\n".to_vec()));
    cases.push(Malformed {
        what: "a million unknown pax records",
        archive: t.bytes(),
        names: String::new(),
        codes: &[0],
        complete,
        offset: false,
    });
    cases
}

/// Asserts that every regular file in DEST is one of `complete`, with its full content.
fn assert_only_complete_files(dest: &Path, complete: &[(&str, Vec<u8>)], what: &str, run: &Run) {
    for entry in walkdir::WalkDir::new(dest).min_depth(1) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(dest).unwrap().to_str().unwrap().to_string();
        let m = fs::symlink_metadata(entry.path()).unwrap();
        if m.is_dir() {
            continue;
        }
        let Some((_, content)) = complete.iter().find(|(n, _)| *n == rel) else {
            panic!("{what}: unexpected {rel:?} ({:?}) in DEST\n{}", m.file_type(), run.show());
        };
        assert!(m.is_file(), "{what}: {rel} is not a regular file");
        assert_eq!(&fs::read(entry.path()).unwrap(), content, "{what}: {rel} is incomplete\n{}", run.show());
    }
}

/// The malformed or odd case described as `what`; all are built once per test process.
fn case(what: &str) -> &'static Malformed {
    static CASES: OnceLock<Vec<Malformed>> = OnceLock::new();
    let cases = CASES.get_or_init(|| malformed_cases().into_iter().chain(odd_cases()).collect());
    cases.iter().find(|c| c.what == what).unwrap_or_else(|| panic!("no case {what:?}"))
}

/// Imports the case `what` from the file and from standard input, and lists and verifies it.
fn check_malformed(kind: FsKind, what: &str) {
    let case = case(what);
    let Some(scratch) = scratch(kind) else { return };
    for via in [Via::File, Via::Stdin] {
        let mut arena = Arena::in_dir(scratch.path(format!("case-{via:?}")));
        let what = format!("{} via {via:?} on {kind:?}", case.what);
        let run = arena.import(&case.archive, via, &[]);
        // Shown with --nocapture: what ckpt said about each case.
        eprintln!("{what}: {:?} {}", run.code, run.stderr.trim_end());
        run.assert_code(case.codes, &what);
        if case.codes != [0] {
            assert!(run.stderr.contains("ckpt:"), "{what}: no error message\n{}", run.show());
            assert!(
                run.stderr.contains(&case.names),
                "{what}: the error does not name {:?}\n{}",
                case.names,
                run.show()
            );
            if case.offset {
                assert!(run.stderr.contains("offset"), "{what}: no archive offset\n{}", run.show());
            }
        } else if !case.names.is_empty() && via == Via::File {
            // Warnings that need a look past the end (a lone zero block) are given for files
            // only: a stream's next block is not the reader's to consume.
            assert!(
                run.stderr.contains(&case.names),
                "{what}: no warning about {:?}\n{}",
                case.names,
                run.show()
            );
        }
        assert_only_complete_files(&arena.dest, &case.complete, &what, &run);
        if via == Via::File {
            // The same reader behind `list` (headers only) and `verify` (data too).
            for command in ["list", "verify"] {
                let run = run_limited(&[command.as_ref(), arena.archive.as_os_str()], None);
                let broken = case.codes != [0];
                let codes: &[i32] = if broken {
                    &[1]
                } else if command == "list" {
                    &[0]
                } else {
                    &[0, 1]
                };
                run.assert_code(codes, &format!("ckpt {command}: {what}"));
                if broken {
                    assert!(
                        run.stderr.contains(&case.names),
                        "ckpt {command}: {what}: not named\n{}",
                        run.show()
                    );
                }
            }
        }
    }
}

/// One test per malformed case, on a plain directory and on Btrfs, where files take the clone
/// path (whole blocks of the archive shared, then truncated).
macro_rules! malformed {
    ($($test:ident: $what:literal;)*) => {
        $(mod $test {
            use super::*;

            #[test]
            fn on_a_plain_dir() {
                check_malformed(FsKind::Plain, $what);
            }

            #[test]
            fn on_btrfs() {
                check_malformed(FsKind::Btrfs, $what);
            }
        })*

        const MALFORMED_TESTED: &[&str] = &[$($what),*];
    };
}

malformed! {
    a_header_with_a_bad_checksum_is_refused: "bad checksum";
    truncated_member_data_is_refused: "truncated data";
    a_truncated_header_is_refused: "truncated header";
    a_size_beyond_the_archive_is_refused: "size beyond the archive";
    a_giant_pax_record_length_is_refused: "giant pax record length";
    a_pax_header_of_1_tb_is_refused: "pax header of 1 TB";
    a_gnu_long_name_of_1_gib_is_refused: "GNU long name of 1 GiB";
    a_gnu_long_name_of_1_mib_is_refused: "GNU long name of 1 MiB";
    a_nul_in_a_pax_path_is_refused: "NUL in pax path";
    a_nul_in_a_pax_linkpath_is_refused: "NUL in pax linkpath";
    a_bad_octal_digit_in_the_size_is_refused: "bad octal size";
    a_bad_octal_digit_in_the_mode_is_refused: "bad octal mode";
    a_bad_octal_digit_in_the_mtime_is_refused: "bad octal mtime";
    a_base256_size_of_u64_max_is_refused: "base-256 size u64::MAX";
    a_base256_size_of_2_to_the_62_is_refused: "base-256 size 2^62";
    a_negative_base256_size_is_refused: "negative";
    a_pax_size_of_u64_max_is_refused: "pax size u64::MAX";
    a_pax_size_of_2_to_the_64_is_refused: "pax size 2^64";
    a_pax_size_record_with_a_sign_is_refused: "pax size -5";
    a_pax_size_record_with_trailing_garbage_is_refused: "pax size 12x";
    a_pax_header_with_no_member_after_it_is_refused: "pax header at the end";
    garbage_where_a_header_should_be_is_refused: "garbage header";
    a_pax_sparse_1_0_member_without_a_size_is_refused: "pax sparse 1.0 without a size";
    a_pax_sparse_map_longer_than_the_data_is_refused: "pax sparse map longer than the data";
    pax_sparse_lengths_summing_past_2_to_the_64_are_refused: "pax sparse lengths summing past 2^64";
    a_pax_sparse_real_size_past_2_to_the_63_is_refused: "pax sparse real size past 2^63";
    a_pax_sparse_1_0_map_with_an_endless_number_is_refused: "pax sparse 1.0 map with an endless number";
    a_gzip_stream_cut_in_a_members_data_is_refused: "truncated gzip";
    a_zstd_stream_cut_in_a_members_data_is_refused: "truncated zstd";
    a_corrupt_gzip_header_is_refused: "corrupt gzip header";
    a_million_xattrs_on_one_member_are_refused: "a million xattrs";
    an_archive_without_end_blocks_is_refused: "no end blocks";
    local_extended_headers_adding_up_past_the_cap_are_refused: "local extended headers adding up past the cap";
    global_extended_headers_adding_up_past_the_cap_are_refused: "global extended headers adding up past the cap";
}

/// One test per odd but acceptable case (every tar reads them the same way).
macro_rules! odd {
    ($($test:ident: $what:literal;)*) => {
        $(#[test]
        fn $test() {
            check_malformed(FsKind::Plain, $what);
        })*

        const ODD_TESTED: &[&str] = &[$($what),*];
    };
}

odd! {
    a_lone_zero_block_at_the_end_is_accepted: "lone zero block at the end";
    a_lone_zero_block_before_a_member_ends_the_archive_with_a_warning: "lone zero block before a member";
    garbage_after_the_end_blocks_is_ignored: "garbage after the end";
    valid_base256_numbers_are_read: "valid base-256 numbers";
    a_million_unknown_pax_records_are_read_in_linear_time: "a million unknown pax records";
}

#[test]
fn every_malformed_and_odd_case_has_its_own_test() {
    let named = |list: &[&str]| list.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    let whats = |cases: Vec<Malformed>| cases.into_iter().map(|c| c.what.to_string()).collect::<Vec<_>>();
    assert_eq!(named(MALFORMED_TESTED), whats(malformed_cases()));
    assert_eq!(named(ODD_TESTED), whats(odd_cases()));
}

/// A pax sparse 1.0 member of 600 MiB whose map never ends a line, in a (sparse) archive file:
/// reading the map must not buffer the member.
#[test]
fn a_sparse_map_cannot_exhaust_memory() {
    let Some(mut arena) = Arena::new(FsKind::Plain) else { return };
    let mut t = good_prefix();
    t.pax(&[(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.realsize", b"10")]);
    let size = 600u64 << 20;
    t.block(header(b"endless-map", b'0', size, b""));
    t.raw(b"1\n");
    let head = t.bytes();
    arena.seal();
    {
        let f = fs::File::create(&arena.archive).unwrap();
        f.write_all_at(&head, 0).unwrap();
        // The rest of the member is a hole: zeros, never a newline.
        f.set_len(head.len() as u64 - 2 + size.div_ceil(512) * 512 + 1024).unwrap();
    }
    let args: Vec<&std::ffi::OsStr> =
        vec!["import".as_ref(), arena.archive.as_os_str(), arena.dest.as_os_str()];
    let run = run_limited(&args, None);
    arena.check_canaries(&run);
    run.assert_code(&[1], "endless sparse map");
    assert_names(&run, "\"endless-map\" at offset");
    // Bounded memory: buffering the member would need 600 MiB, past the 512 MiB limit.
    assert_only_complete_files(&arena.dest, &good(), "endless sparse map", &run);
}

// ---------------------------------------------------------------------------
// Fuzzer findings and other regression inputs
// ---------------------------------------------------------------------------

/// Every input in tests/fixtures-hostile/ (crashes and hangs the fuzzer found, and other
/// hostile inputs) must be handled without a panic, a hang or an escape.
#[test]
fn regression_inputs_are_handled() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures-hostile");
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    let mut inputs: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no regression inputs in {}", dir.display());
    for input in inputs {
        let data = fs::read(&input).unwrap();
        for via in [Via::File, Via::Stdin] {
            for layer in [false, true] {
                let Some(mut arena) = Arena::new(FsKind::Plain) else { return };
                let rootfs = arena.work.join("rootfs");
                fs::create_dir(&rootfs).unwrap();
                fs::write(rootfs.join("keep"), b"keep\n").unwrap();
                arena.allowed.push("rootfs".into());
                let flags = if layer { vec!["--rootfs", rootfs.to_str().unwrap()] } else { vec![] };
                let run = arena.import(&data, via, &flags);
                run.assert_code(&[0, 1, 3], &format!("{} via {via:?} {flags:?}", input.display()));
            }
        }
    }
}
