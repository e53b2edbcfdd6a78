//! An overlay layer's upper (diff) dir as archive members: whiteouts and opaque directories
//! become podman's `deleted.files` or OCI `.wh.` entries.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::container::overlay::{self, OPAQUE_MARKER, WHITEOUT_PREFIX, WhiteoutStyle};
use crate::error::{Context, Error, Result};
use crate::export::member::{Body, Member};
use crate::export::walk::{Naming, Skipped, Walk};
use crate::tar::meta::Kind;

fn is_overlay_xattr(name: &[u8]) -> bool {
    overlay::private_xattr_key(name).is_some()
}

fn overlay_xattr<'m>(member: &'m Member, key: &[u8]) -> Option<&'m [u8]> {
    member
        .xattrs
        .iter()
        .find(|(name, _)| overlay::private_xattr_key(name) == Some(key))
        .map(|(_, value)| value.as_slice())
}

/// An upper dir's changes, ready for archiving, one member at a time. Whiteouts (char 0:0, or
/// a zero-size file marked `overlay.whiteout`) and opaque directories become deletions in the
/// chosen style; overlay's own xattrs, which describe this host's lower inodes, are dropped.
pub(crate) struct Layer {
    upper: PathBuf,
    lowers: Vec<PathBuf>,
    style: WhiteoutStyle,
    walk: Walk,
    /// Names of the whiteouts seen: kernel whiteouts share one inode, so a hard link to a
    /// whiteout is a whiteout.
    whiteouts: BTreeSet<Vec<u8>>,
    /// Deleted paths (`/etc/old.conf`), for podman's `deleted.files`.
    deleted: BTreeSet<String>,
    /// Whether to list the deletions (a pass whose deletions are already known does not).
    list_deleted: bool,
    /// An OCI opaque marker, returned right after its directory.
    queued: Option<Member>,
    /// The deletions a first pass listed, checked against this pass's at its end.
    expected: Option<Vec<String>>,
}

impl Layer {
    pub(crate) fn new(
        upper: &Path,
        lowers: &[PathBuf],
        style: WhiteoutStyle,
        skipped: Skipped,
    ) -> Result<Layer> {
        Ok(Layer {
            upper: upper.to_path_buf(),
            lowers: lowers.to_vec(),
            style,
            // The root entry carries the container root's own metadata, which the layer changes too.
            walk: Walk::new(upper, Naming::BareWithRoot, skipped)?,
            whiteouts: BTreeSet::new(),
            deleted: BTreeSet::new(),
            list_deleted: true,
            queued: None,
            expected: None,
        })
    }

    /// Yields the members only, without listing deletions: for a second pass over a layer
    /// whose deletions the first one listed (which spares reading the lower dirs again).
    pub(crate) fn members_only(mut self) -> Layer {
        self.list_deleted = false;
        self
    }

    /// Yields the members, and at their end an error (kind `SourceChanged`) if the deletions
    /// differ from `deleted`: for a second pass over a layer that may have changed since the
    /// first one listed them.
    pub(crate) fn expecting_deleted(mut self, deleted: Vec<String>) -> Layer {
        self.expected = Some(deleted);
        self
    }

    /// The deleted paths, sorted; complete once the layer has been read to its end.
    pub(crate) fn deleted(self) -> Vec<String> {
        self.deleted.into_iter().collect()
    }

    /// What `member` of the upper dir becomes in the archive (None: only a deletion).
    fn change(&mut self, mut member: Member) -> Result<Option<Member>> {
        let path =
            || self.upper.join(OsStr::from_bytes(member.name.strip_suffix(b"/").unwrap_or(&member.name)));
        for key in [&b"metacopy"[..], b"redirect"] {
            if overlay_xattr(&member, key).is_some() {
                return Err(Error::unsuitable(
                    path(),
                    format!(
                        "written by an overlay mounted with {}: its data or name lives in the lower layers; \
                         remount without it or archive the merged view",
                        if key == b"metacopy" { "metacopy=on" } else { "redirect_dir=on" }
                    ),
                ));
            }
        }
        let is_whiteout = match &member.kind {
            Kind::CharDevice => member.meta.dev_major == 0 && member.meta.dev_minor == 0,
            Kind::Regular => member.data_size() == 0 && overlay_xattr(&member, b"whiteout").is_some(),
            Kind::HardLink(target) => self.whiteouts.contains(target),
            _ => false,
        };
        let is_opaque = member.kind == Kind::Directory && overlay_xattr(&member, b"opaque") == Some(b"y");
        member.xattrs.retain(|(name, _)| !is_overlay_xattr(name));
        if is_whiteout {
            self.whiteouts.insert(member.name.clone());
            return Ok(match self.style {
                WhiteoutStyle::Podman => {
                    if self.list_deleted {
                        self.deleted.insert(absolute(&member.name));
                    }
                    None
                }
                WhiteoutStyle::Oci => Some(oci_marker(&member, &whiteout_name(&member.name))),
            });
        }
        if is_opaque {
            match self.style {
                WhiteoutStyle::Oci => {
                    let marker = [member.name.as_slice(), OPAQUE_MARKER].concat();
                    self.queued = Some(oci_marker(&member, &marker));
                }
                WhiteoutStyle::Podman => {
                    let dir = member.name.strip_suffix(b"/").unwrap_or(&member.name);
                    if self.lowers.is_empty() {
                        return Err(Error::unsuitable(
                            path(),
                            "opaque directory: listing what it hides needs the lower dirs (--lower), \
                             or use --whiteouts oci",
                        ));
                    }
                    if self.list_deleted {
                        self.deleted.extend(hidden_by_opaque(&self.upper, &self.lowers, dir)?);
                    }
                }
            }
        }
        Ok(Some(member))
    }
}

impl Iterator for Layer {
    type Item = Result<Member>;

    fn next(&mut self) -> Option<Result<Member>> {
        if let Some(marker) = self.queued.take() {
            return Some(Ok(marker));
        }
        loop {
            let member = match self.walk.next() {
                Some(Ok(member)) => member,
                Some(Err(e)) => return Some(Err(e)),
                None => {
                    let expected = self.expected.take()?;
                    let found: Vec<&String> = self.deleted.iter().collect();
                    return (found != expected.iter().collect::<Vec<_>>()).then(|| {
                        Err(Error::changed(&self.upper, "its deletions differ from the first pass over it"))
                    });
                }
            };
            match self.change(member) {
                Ok(None) => continue,
                other => return other.transpose(),
            }
        }
    }
}

fn absolute(name: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(name.strip_suffix(b"/").unwrap_or(name)))
}

fn whiteout_name(name: &[u8]) -> Vec<u8> {
    let (dir, base) = match name.iter().rposition(|&b| b == b'/') {
        Some(slash) => name.split_at(slash + 1),
        None => (&[][..], name),
    };
    [dir, WHITEOUT_PREFIX, base].concat()
}

/// An empty regular file standing for a deletion, with the owner and time of what it marks.
fn oci_marker(like: &Member, name: &[u8]) -> Member {
    Member {
        name: name.to_vec(),
        meta: crate::tar::meta::Meta { mode: 0o600, dev_major: 0, dev_minor: 0, ..like.meta },
        kind: Kind::Regular,
        body: Body::Bytes(Vec::new()),
        xattrs: Vec::new(),
    }
}

/// The lower layers' entries directly inside `dir` that the upper does not have itself.
fn hidden_by_opaque(upper: &Path, lowers: &[PathBuf], dir: &[u8]) -> Result<Vec<String>> {
    let mut hidden = Vec::new();
    for lower in lowers {
        let lower_dir = lower.join(OsStr::from_bytes(dir));
        let entries = match std::fs::read_dir(&lower_dir) {
            Ok(entries) => entries,
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) =>
            {
                continue;
            }
            Err(e) => return Err(Error::io("read directory", lower_dir, e)),
        };
        for entry in entries {
            let entry = entry.at("read directory", &lower_dir)?;
            let rel = [dir, b"/", entry.file_name().as_bytes()].concat();
            if std::fs::symlink_metadata(upper.join(OsStr::from_bytes(&rel))).is_err() {
                hidden.push(absolute(&rel));
            }
        }
    }
    Ok(hidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_names() {
        assert_eq!(whiteout_name(b"etc/old.conf"), b"etc/.wh.old.conf");
        assert_eq!(whiteout_name(b"top"), b".wh.top");
    }
}
