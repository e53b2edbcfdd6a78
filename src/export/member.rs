//! What goes into an archive: one member's name, metadata and where its data comes from.

use std::path::PathBuf;

use crate::error::Result;
use crate::export::source::SourceFile;
use crate::tar::meta::{Kind, Meta};
use crate::tar::sparse::SparseMap;

/// A tar archive nested inside this one, laid out so that its members' data is aligned in the
/// outer file too. Its length was found by a first pass over its members, because the outer
/// header that announces it comes first; the second pass that writes it must agree.
pub(crate) struct Nested {
    pub len: u64,
    /// Where the members come from, for errors (the layer's upper dir).
    pub path: PathBuf,
    /// Starts the second pass over the members.
    pub members: Box<dyn FnOnce() -> Result<Members<'static>>>,
}

impl std::fmt::Debug for Nested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nested").field("len", &self.len).field("path", &self.path).finish_non_exhaustive()
    }
}

/// Archive members one at a time, in archive order.
pub(crate) type Members<'a> = Box<dyn Iterator<Item = Result<Member>> + 'a>;

#[derive(Debug)]
pub(crate) enum Body {
    None,
    File(SourceFile),
    /// A file stored as a pax sparse 1.0 member (in streams): its map, then its data ranges.
    Sparse(SourceFile, SparseMap),
    /// Small generated content (a JSON list, a manifest).
    Bytes(Vec<u8>),
    Archive(Nested),
    /// The digest manifest of this many bytes, written once the data before it is placed.
    Manifest(u64),
}

#[derive(Debug)]
pub(crate) struct Member {
    /// The tar name: `./a/b`, directories with a trailing slash.
    pub name: Vec<u8>,
    pub meta: Meta,
    pub kind: Kind,
    pub body: Body,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Member {
    /// Whether the digest manifest lists this member when it is at the top level: every
    /// regular member, as verify checks (the manifest itself is not planned as a member).
    pub(crate) fn in_manifest(&self) -> bool {
        self.kind == Kind::Regular
            && matches!(self.body, Body::File(_) | Body::Sparse(..) | Body::Bytes(_) | Body::Archive(_))
    }

    /// The size the tar header announces.
    pub(crate) fn data_size(&self) -> u64 {
        match &self.body {
            Body::None => 0,
            Body::File(f) => f.size,
            Body::Sparse(_, map) => map.pax1_text().len() as u64 + map.data_len(),
            Body::Bytes(b) => b.len() as u64,
            Body::Archive(nested) => nested.len,
            Body::Manifest(len) => *len,
        }
    }
}
