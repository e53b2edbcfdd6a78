//! Running ckpt and other commands: exit codes, output, JSON.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

/// A command-line argument: anything that converts to an `OsStr`
/// (`&"export"`, `&path_buf`, `&some_path`). Lets tests mix strings and paths:
/// `ckpt(&[&"export", &src, &out])`.
pub type Arg<'a> = &'a dyn AsRef<OsStr>;

/// A command's stderr (lossy UTF-8).
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Human-readable exit status, stdout and stderr of a finished command.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn show_args(args: &[Arg]) -> String {
    args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

/// Runs a command (stdin = /dev/null) and returns its output, whatever the status.
pub fn run(cmd: &str, args: &[Arg]) -> Output {
    Command::new(cmd)
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cmd} {}`: {e}", show_args(args)))
}

/// Runs a command, asserts it exits 0, returns its stdout (lossy UTF-8).
pub fn sh(cmd: &str, args: &[Arg]) -> String {
    let out = run(cmd, args);
    assert!(out.status.success(), "`{cmd} {}` failed:\n{}", show_args(args), describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Path of the ckpt binary under test.
pub fn ckpt_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ckpt")
}

/// Runs `ckpt ARGS...` and returns its output, whatever the exit status.
pub fn ckpt(args: &[Arg]) -> Output {
    Command::new(ckpt_bin())
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ckpt {}: {e}", show_args(args)))
}

/// Runs ckpt, asserts the exit code is exactly `code`, returns the output.
pub fn ckpt_code(code: i32, args: &[Arg]) -> Output {
    expect_code(ckpt(args), code, args)
}

/// Asserts that `ckpt ARGS...` exited with `code`; its output.
pub fn expect_code(out: Output, code: i32, args: &[Arg]) -> Output {
    assert_eq!(
        out.status.code(),
        Some(code),
        "`ckpt {}`: expected exit code {code}\n{}",
        show_args(args),
        describe(&out)
    );
    out
}

/// Runs ckpt, asserts exit code 0, returns stdout as a string.
pub fn ckpt_ok(args: &[Arg]) -> String {
    let out = ckpt_code(0, args);
    String::from_utf8(out.stdout).expect("ckpt stdout is not UTF-8")
}

/// Runs ckpt (the caller passes `--json`), asserts exit 0, parses stdout as one JSON
/// object.
pub fn ckpt_json(args: &[Arg]) -> serde_json::Value {
    parse_json(&ckpt_ok(args))
}

/// Parses ckpt's `--json` stdout: exactly one JSON object (surrounding whitespace ok).
pub fn parse_json(stdout: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("ckpt --json output is not one JSON value ({e}):\n{stdout}"));
    assert!(v.is_object(), "ckpt --json output is not an object: {v}");
    v
}

/// `v[key]` as u64; panics naming the key if it is missing or not an unsigned integer.
pub fn json_u64(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key)
        .and_then(|x| x.as_u64())
        .unwrap_or_else(|| panic!("JSON field {key:?} missing or not a u64 in {v}"))
}

/// Peak RSS in KiB of `ckpt ARGS`, which must succeed, per /usr/bin/time (as
/// scripts/bench.sh measures it). None (skipped, see [`super::skip_unless`]) when
/// /usr/bin/time is missing.
pub fn peak_rss_kib(args: &[Arg]) -> Option<u64> {
    const TIME: &str = "/usr/bin/time";
    if !super::skip_unless(
        std::path::Path::new(TIME).exists(),
        format_args!("{TIME} is missing (package time)"),
    ) {
        return None;
    }
    let out = Command::new(TIME)
        .arg("-f")
        .arg("%M")
        .arg(ckpt_bin())
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {TIME}: {e}"));
    assert!(out.status.success(), "ckpt {}: {}", show_args(args), describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    Some(last.trim().parse().unwrap_or_else(|_| panic!("no RSS from {TIME}: {stderr}")))
}

/// `setpriv` running `program` as `nobody` (uid and gid 65534, no supplementary groups).
pub fn as_nobody(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(program).stdin(Stdio::null());
    cmd
}

/// A process ID that no longer exists: a child that has exited and been reaped.
pub fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("run true");
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Kills `child` with SIGKILL once `ready` says so (polled every 2 ms; at most 60 s), then
/// reaps it. Returns false when the child finished before `ready` held.
pub fn kill_when(child: &mut std::process::Child, mut ready: impl FnMut() -> bool) -> bool {
    use std::time::{Duration, Instant};
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            eprintln!("ckpt finished ({status}) before it could be killed");
            return false;
        }
        if ready() {
            child.kill().unwrap();
            let status = child.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(rustix::process::Signal::KILL.as_raw()),
                "ckpt was not killed: {status}"
            );
            return true;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "ckpt made no progress in 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}
