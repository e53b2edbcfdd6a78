//! The `ckpt.sha256` manifest check: which member is the manifest, and whether the data of
//! every regular top-level member matches its line. Apart from the walk because it runs on
//! what the walk leaves (names, offsets, digests), the same for a file and for a stream; the
//! format itself is `crate::tar::manifest`'s.

use std::collections::{HashMap, VecDeque};

use super::VerifyReport;
use crate::container::podman::bundle_name;
use crate::tar::manifest;
use crate::tar::reader::{Entry, SparseMap};

/// A manifest larger than this is not one (about 10 million lines).
pub(super) const MAX_MANIFEST: u64 = 1 << 30;

/// A regular top-level member whose digest the manifest should hold.
pub(super) struct Covered {
    pub(super) name: Vec<u8>,
    pub(super) data_offset: u64,
    pub(super) size: u64,
    /// A sparse member's map: its digest is that of the file it stands for.
    pub(super) sparse: Option<SparseMap>,
    /// Computed while streaming; computed from the file afterwards otherwise.
    pub(super) digest: Option<[u8; 32]>,
}

impl Covered {
    pub(super) fn new(entry: &Entry) -> Self {
        Covered {
            name: entry.name.clone(),
            data_offset: entry.data_offset,
            size: entry.size,
            sparse: entry.sparse.clone(),
            digest: None,
        }
    }
}

/// Removes the manifest (the last member, regular, named `ckpt.sha256`) from `covered`, and
/// names it in the report. A `ckpt.sha256` that is not the last member is not the archive's
/// manifest (members after it would be unchecked): a problem, since whoever wrote it meant
/// its digests to be checked.
pub(super) fn find_manifest(
    report: &mut VerifyReport,
    covered: &mut Vec<Covered>,
    last: Option<&[u8]>,
) -> Option<Covered> {
    let Some(manifest) = take_manifest(covered, last) else {
        if let Some(c) = covered.iter().find(|c| bundle_name(&c.name) == manifest::NAME) {
            let reason = "ckpt.sha256 is not the last member: digests not checked";
            report.problem(&c.name, Some(c.data_offset), reason);
        }
        return None;
    };
    report.manifest = Some(String::from_utf8_lossy(&manifest.name).into_owned());
    Some(manifest)
}

fn take_manifest(covered: &mut Vec<Covered>, last: Option<&[u8]>) -> Option<Covered> {
    let last = last?;
    if bundle_name(last) != manifest::NAME {
        return None;
    }
    match covered.last() {
        Some(c) if c.name == last => covered.pop(),
        _ => None,
    }
}

/// A manifest over [`MAX_MANIFEST`] is not read.
pub(super) fn too_large(report: &mut VerifyReport, manifest: &Covered) {
    report.problem(&manifest.name, Some(manifest.data_offset), format!("{} bytes: too large", manifest.size));
}

/// Compares the digests of `covered` with the manifest's `text`: each line matches one
/// member of its name, in order, and every line and every member must be matched.
pub(super) fn compare(report: &mut VerifyReport, manifest: &Covered, text: &[u8], covered: &[Covered]) {
    let lines = match manifest::parse(text) {
        Ok(lines) => lines,
        Err(why) => {
            let reason = format!("not a sha256sum manifest: {why}");
            report.problem(&manifest.name, Some(manifest.data_offset), reason);
            return;
        }
    };
    let mut listed: HashMap<Vec<u8>, VecDeque<[u8; 32]>> = HashMap::new();
    let mut order = Vec::new();
    for (name, hash) in lines {
        if !listed.contains_key(&name) {
            order.push(name.clone());
        }
        listed.entry(name).or_default().push_back(hash);
    }
    for c in covered {
        let digest = c.digest.expect("hashed");
        match listed.get_mut(&c.name).and_then(VecDeque::pop_front) {
            None => report.problem(&c.name, Some(c.data_offset), "not listed in the digest manifest"),
            Some(expected) if expected != digest => {
                let (data, listed) = (manifest::hex(&digest), manifest::hex(&expected));
                let reason = format!("sha256 mismatch: data is {data}, manifest says {listed}");
                report.problem(&c.name, Some(c.data_offset), reason);
            }
            Some(_) => report.digests_checked += 1,
        }
    }
    for name in order {
        if listed.get(&name).is_some_and(|left| !left.is_empty()) {
            let reason = "listed in the digest manifest but not a regular member of the archive";
            report.problem(&name, None, reason);
        }
    }
}
