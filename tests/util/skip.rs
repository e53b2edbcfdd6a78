//! The one skip policy: a test whose capability (root, loop devices, a tool) is missing
//! skips with a message, except under CI (the environment variable `CI` is set), where the
//! missing capability is a failure, never a silent skip.

use std::process::{Command, Stdio};

/// True when the environment variable `CI` is set.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// True when `available`; otherwise prints why the test is skipped and returns false, or
/// panics under CI. Every skip goes through here.
pub fn skip_unless(available: bool, why: impl std::fmt::Display) -> bool {
    if !available {
        assert!(!under_ci(), "CI is set, refusing to skip: {why}");
        eprintln!("SKIPPING TEST: {why}");
    }
    available
}

/// True when running as root; otherwise skips (see [`skip_unless`]) because `what` needs it.
pub fn require_root(what: &str) -> bool {
    skip_unless(rustix::process::geteuid().is_root(), format_args!("{what} needs root"))
}

/// True when `tool --version` runs; otherwise skips (see [`skip_unless`]).
pub fn have(tool: &str) -> bool {
    let runs = Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    skip_unless(runs, format_args!("{tool} is not installed"))
}
