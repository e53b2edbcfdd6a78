//! Temporary names: `.NAME.ckpt-PID-N.tmp`, hidden beside the name they will become, the
//! same for export's output files and import's members, so that a later run (or
//! `find -name '.*.ckpt-*.tmp'`) can tell what a killed ckpt left behind and whose it was.

use std::sync::atomic::{AtomicU64, Ordering};

use rustix::io::Errno;
use rustix::process::Pid;

/// A new temporary name for `name` (of which the first 200 bytes are kept, so the result
/// stays within NAME_MAX).
pub(crate) fn name_for(name: &[u8]) -> Vec<u8> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut temp = b".".to_vec();
    temp.extend_from_slice(&name[..name.len().min(200)]);
    temp.extend_from_slice(
        format!(".ckpt-{}-{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)).as_bytes(),
    );
    temp
}

/// The process ID in a name made by [`name_for`].
pub(crate) fn pid_of(name: &[u8]) -> Option<Pid> {
    let rest = name.strip_prefix(b".")?.strip_suffix(b".tmp")?;
    let at = rest.windows(6).rposition(|w| w == b".ckpt-")?;
    let (pid, counter) = std::str::from_utf8(&rest[at + 6..]).ok()?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if at == 0 || !digits(pid) || !digits(counter) {
        return None;
    }
    Pid::from_raw(pid.parse().ok()?)
}

/// Whether the process that made a temporary name is gone. Only "no such process" says so:
/// EPERM is someone else's live process, and this process's own names are never stale.
pub(crate) fn writer_gone(pid: Pid) -> bool {
    pid != rustix::process::getpid() && rustix::process::test_kill_process(pid) == Err(Errno::SRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_carry_their_process_id() {
        let pid = |name: &[u8]| pid_of(name).map(|p| p.as_raw_nonzero().get() as u32);
        assert_eq!(pid(&name_for(b"config.dump")), Some(std::process::id()));
        assert_eq!(pid(&name_for(b"out.ckpt-1-2.tmp.tar")), Some(std::process::id()));
        assert_eq!(pid(b".a.ckpt-12-3.tmp"), Some(12));
        for other in [
            &b"a.ckpt-12-3.tmp"[..],
            b".a.ckpt-12-3",
            b".a.ckpt-x-3.tmp",
            b".ckpt-12-3.tmp",
            b".a.ckpt-12.tmp",
            b".a.tar.ckpt-12-x.tmp",
            b".a.tar.ckpt--3.tmp",
            b".a.tar.ckpt-0-3.tmp",
        ] {
            assert_eq!(pid(other), None, "{}", String::from_utf8_lossy(other));
        }
    }
}
