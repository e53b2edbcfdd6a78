//! Overlayfs facts: finding a mount's upper and lower dirs, and the names overlay gives
//! whiteouts, opaque directories and its private xattrs.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};

/// OCI layer names for deletions.
pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
pub(crate) const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// How a layer's deletions are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutStyle {
    /// A `deleted.files` JSON list beside `rootfs-diff.tar`, as podman writes.
    #[default]
    Podman,
    /// `.wh.NAME` and `.wh..wh..opq` entries inside the layer tar, as OCI images carry.
    Oci,
}

/// The directories behind an overlay mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayMount {
    /// The upper (diff) dir: the container's own changes.
    pub upper: PathBuf,
    /// The lower dirs, topmost first.
    pub lowers: Vec<PathBuf>,
    /// Mounted with `userxattr`: overlay xattrs live in `user.overlay.*`.
    pub userxattr: bool,
}

impl OverlayMount {
    /// The xattr this mount marks opaque directories with.
    pub fn opaque_xattr(&self) -> &'static [u8] {
        if self.userxattr { USER_OPAQUE } else { TRUSTED_OPAQUE }
    }
}

/// The opaque-directory marker of an overlay mounted without `userxattr` (podman's, as root).
pub(crate) const TRUSTED_OPAQUE: &[u8] = b"trusted.overlay.opaque";
const USER_OPAQUE: &[u8] = b"user.overlay.opaque";

/// The overlay-private part of an xattr name (`opaque` for `trusted.overlay.opaque` and
/// `user.overlay.opaque`), or None for an xattr overlay does not own.
pub(crate) fn private_xattr_key(name: &[u8]) -> Option<&[u8]> {
    name.strip_prefix(b"trusted.overlay.").or_else(|| name.strip_prefix(b"user.overlay."))
}

/// Finds the overlay mounted at `path` in /proc/self/mountinfo. Ok(None) if `path` is a
/// mount point of another filesystem type or no mount point at all.
pub fn find_overlay(path: &Path) -> Result<Option<OverlayMount>> {
    let path = std::fs::canonicalize(path).at("resolve", path)?;
    let mountinfo = std::fs::read("/proc/self/mountinfo").at("read", Path::new("/proc/self/mountinfo"))?;
    // Later lines are later mounts: the last one at a mount point is the visible one.
    let mut found = None;
    for line in mountinfo.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == b"-") else { continue };
        if fields.len() < sep + 4 || fields.len() < 5 || unescape(fields[4]) != path.as_os_str().as_bytes() {
            continue;
        }
        found = Some((fields[sep + 1] == b"overlay").then(|| parse_overlay_options(fields[sep + 3])));
    }
    match found {
        Some(Some(mount)) => mount.map(Some),
        _ => Ok(None),
    }
}

fn parse_overlay_options(options: &[u8]) -> Result<OverlayMount> {
    let mut upper = None;
    let mut lowers = Vec::new();
    let mut userxattr = false;
    // Commas inside values are octal-escaped, so split first, then decode each option.
    for option in options.split(|&b| b == b',').map(unescape) {
        let option = option.as_slice();
        if let Some(dirs) = option.strip_prefix(b"lowerdir=") {
            lowers.extend(split_unescaped(dirs, b':').map(|d| PathBuf::from(OsStr::from_bytes(&d))));
        } else if let Some(dir) = option.strip_prefix(b"lowerdir+=") {
            lowers.push(PathBuf::from(OsStr::from_bytes(dir)));
        } else if let Some(dir) = option.strip_prefix(b"upperdir=") {
            upper = Some(PathBuf::from(OsStr::from_bytes(dir)));
        } else if option == b"userxattr" {
            userxattr = true;
        }
    }
    let upper = upper.ok_or_else(|| {
        Error::unsuitable("/proc/self/mountinfo", "overlay mount has no upperdir (read-only overlay)")
    })?;
    Ok(OverlayMount { upper, lowers, userxattr })
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 4 <= field.len() {
            let digits = &field[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                out.push((digits[0] - b'0') * 64 + (digits[1] - b'0') * 8 + (digits[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Splits on `sep` where it is not escaped with a backslash (overlay escapes `:` in lower
/// directory names that way).
fn split_unescaped(s: &[u8], sep: u8) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut parts = Vec::new();
    let mut current = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' if i + 1 < s.len() => {
                current.push(s[i + 1]);
                i += 2;
                continue;
            }
            b if b == sep => parts.push(std::mem::take(&mut current)),
            b => current.push(b),
        }
        i += 1;
    }
    parts.push(current);
    parts.into_iter().filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options() {
        let m = parse_overlay_options(b"rw,lowerdir=/l/a\\:b:/l/c,upperdir=/u\\040x,workdir=/w,userxattr")
            .unwrap();
        assert_eq!(m.lowers, vec![PathBuf::from("/l/a:b"), PathBuf::from("/l/c")]);
        assert_eq!(m.upper, PathBuf::from("/u x"));
        assert!(m.userxattr);
    }
}
