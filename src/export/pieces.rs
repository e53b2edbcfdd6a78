//! The planned archive as a stream of pieces in offset order: walk -> plan -> place, one member
//! at a time, so an export holds a window of members rather than the whole tree.

use crate::error::{Error, Result};
use crate::export::holes;
use crate::export::member::Members;
use crate::export::member::{Body, Member};
use crate::export::plan::{Planner, encode_headers};
use crate::export::source::SourceFile;
use crate::tar::manifest;
use crate::tar::meta::{Kind, Meta};
use crate::tar::sparse::SparseMap;

/// A part of the archive and where it goes. Offsets only grow.
pub(crate) enum Piece {
    /// A member's header blocks; `digest` is set for a member the digest manifest lists.
    Header {
        offset: u64,
        bytes: Vec<u8>,
        digest: Option<Covered>,
    },
    File {
        offset: u64,
        source: SourceFile,
    },
    /// A sparse member's data: its map, then the data ranges of `source` it lists.
    Sparse {
        offset: u64,
        source: SourceFile,
        map: SparseMap,
    },
    Bytes {
        offset: u64,
        bytes: Vec<u8>,
    },
    /// The digest manifest's data: written last, once what it lists can be hashed.
    Manifest {
        offset: u64,
        len: u64,
    },
    /// The two zero blocks that end an archive, nested or not.
    End {
        offset: u64,
    },
}

/// A top-level member whose data the digest manifest lists.
pub(crate) struct Covered {
    pub name: Vec<u8>,
    pub data_offset: u64,
    pub size: u64,
}

/// What an export has planned so far.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    /// Members, nested ones included.
    pub entries: u64,
    /// Regular files with data from the source.
    pub files: u64,
    pub bytes: u64,
}

/// One archive being planned: the top level, or one nested in it.
struct Level<'a> {
    members: Members<'a>,
    planner: Planner,
    /// Where this archive starts in the outermost one.
    base: u64,
    /// A nested archive's length as its header announced it, and where its members come from.
    announced: Option<(u64, std::path::PathBuf)>,
}

/// The digest manifest as planned so far.
struct ManifestPlan {
    name: Vec<u8>,
    len: u64,
    mtime: i64,
}

pub(crate) struct Pieces<'a> {
    /// The archives being planned, outermost first.
    levels: Vec<Level<'a>>,
    align: u64,
    /// The data of the member whose header was just returned.
    body: Option<Piece>,
    manifest: Option<ManifestPlan>,
    counts: Counts,
    /// The whole archive's length, known once its end has been returned.
    len: Option<u64>,
    /// Whether files with holes become sparse members.
    holes: bool,
}

impl<'a> Pieces<'a> {
    /// Plans `members` with data aligned to `align`; with `manifest_name`, a digest manifest of
    /// that name follows them.
    pub(crate) fn new(members: Members<'a>, align: u64, manifest_name: Option<Vec<u8>>) -> Pieces<'a> {
        Pieces {
            levels: vec![Level { members, planner: Planner::new(align), base: 0, announced: None }],
            align,
            body: None,
            manifest: manifest_name.map(|name| ManifestPlan { name, len: 0, mtime: 0 }),
            counts: Counts::default(),
            len: None,
            holes: false,
        }
    }

    /// Stores top-level files whose holes are worth it as pax sparse members (see
    /// [`holes::MIN_SAVING`]), for an output that cannot keep holes by offset. A nested archive's
    /// members stay plain: its length was planned before.
    pub(crate) fn sparse_files(mut self) -> Self {
        self.holes = true;
        self
    }

    pub(crate) fn counts(&self) -> Counts {
        self.counts
    }

    /// The archive's total length, once every piece has been taken.
    pub(crate) fn len(&self) -> Option<u64> {
        self.len
    }

    fn header(&mut self, mut member: Member) -> Result<Piece> {
        let top = self.levels.len() == 1;
        if top && self.holes {
            member.body = holes::plan(member.body)?;
        }
        self.counts.entries += 1;
        if let Body::File(source) | Body::Sparse(source, _) = &member.body {
            self.counts.files += 1;
            self.counts.bytes += source.size;
        }
        let covered = top && member.in_manifest();
        if let Some(manifest) = self.manifest.as_mut().filter(|_| top) {
            if covered {
                manifest.len += manifest::line_len(&member.name);
            }
            manifest.mtime = manifest.mtime.max(member.meta.mtime);
        }
        let level = self.levels.last_mut().expect("a level is being planned");
        let base = level.base;
        let placed = level.planner.place(member);
        if let Some((announced, path)) = &level.announced
            && level.planner.len() > *announced
        {
            return Err(changed(path));
        }
        let bytes = encode_headers(&placed);
        let (header_offset, data_offset) = (base + placed.header_offset, base + placed.data_offset);
        let size = placed.member.data_size();
        let digest = (covered && self.manifest.is_some()).then(|| Covered {
            name: placed.member.name.clone(),
            data_offset,
            size,
        });
        self.body = match placed.member.body {
            Body::None => None,
            Body::File(source) => Some(Piece::File { offset: data_offset, source }),
            Body::Sparse(source, map) => Some(Piece::Sparse { offset: data_offset, source, map }),
            Body::Bytes(bytes) => Some(Piece::Bytes { offset: data_offset, bytes }),
            Body::Manifest(len) => Some(Piece::Manifest { offset: data_offset, len }),
            Body::Archive(nested) => {
                let members = (nested.members)()?;
                self.levels.push(Level {
                    members,
                    planner: Planner::new(self.align),
                    base: data_offset,
                    announced: Some((nested.len, nested.path)),
                });
                None
            }
        };
        Ok(Piece::Header { offset: header_offset, bytes, digest })
    }

    /// The end of the archive being planned, or the digest manifest when it is due first.
    fn end_of_level(&mut self) -> Result<Piece> {
        if self.levels.len() == 1
            && let Some(manifest) = self.manifest.take()
        {
            return self.header(Member {
                name: manifest.name,
                meta: Meta { mode: 0o644, mtime: manifest.mtime, ..Meta::default() },
                kind: Kind::Regular,
                body: Body::Manifest(manifest.len),
                xattrs: Vec::new(),
            });
        }
        let level = self.levels.pop().expect("a level is being planned");
        if let Some((announced, path)) = &level.announced
            && level.planner.len() != *announced
        {
            return Err(changed(path));
        }
        if self.levels.is_empty() {
            self.len = Some(level.planner.len());
        }
        Ok(Piece::End { offset: level.base + level.planner.end() })
    }
}

fn changed(path: &std::path::Path) -> Error {
    Error::changed(path, "its listing differs from the first pass over it")
}

impl Iterator for Pieces<'_> {
    type Item = Result<Piece>;

    fn next(&mut self) -> Option<Result<Piece>> {
        if let Some(body) = self.body.take() {
            return Some(Ok(body));
        }
        let level = self.levels.last_mut()?;
        let result = match level.members.next() {
            Some(Ok(member)) => self.header(member),
            Some(Err(e)) => Err(e),
            None => self.end_of_level(),
        };
        if result.is_err() {
            // Nothing after an error would be consistent with what came before.
            self.levels.clear();
            self.body = None;
        }
        Some(result)
    }
}

/// The length of the archive `members` make, aligned to `align`, and the bytes of file data
/// in it.
pub(crate) fn archive_len(members: impl Iterator<Item = Result<Member>>, align: u64) -> Result<(u64, u64)> {
    let mut planner = Planner::new(align);
    let mut bytes = 0;
    for member in members {
        let member = member?;
        if let Body::File(source) = &member.body {
            bytes += source.size;
        }
        planner.place(member);
    }
    Ok((planner.len(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::member::Nested;

    fn bytes_member(name: &str, len: usize) -> Member {
        Member {
            name: name.as_bytes().to_vec(),
            meta: Meta { mode: 0o644, ..Meta::default() },
            kind: Kind::Regular,
            body: Body::Bytes(vec![b'x'; len]),
            xattrs: Vec::new(),
        }
    }

    /// A top level holding one nested archive whose second pass yields `second`.
    fn with_nested(first: Vec<usize>, second: Vec<usize>) -> Pieces<'static> {
        let to_members = |sizes: Vec<usize>| {
            sizes.into_iter().enumerate().map(|(i, n)| Ok(bytes_member(&format!("f{i}"), n)))
        };
        let (len, _) = archive_len(to_members(first), 4096).unwrap();
        let nested = Nested {
            len,
            path: "upper".into(),
            members: Box::new(move || Ok(Box::new(to_members(second)) as Members)),
        };
        let outer = Member { body: Body::Archive(nested), ..bytes_member("inner.tar", 0) };
        Pieces::new(Box::new(std::iter::once(Ok(outer))), 4096, None)
    }

    #[test]
    fn nested_archive_ends_where_its_header_said() {
        let pieces: Vec<Piece> = with_nested(vec![10, 5000], vec![10, 5000]).collect::<Result<_>>().unwrap();
        let ends: Vec<u64> = pieces
            .iter()
            .filter_map(|p| if let Piece::End { offset } = p { Some(*offset) } else { None })
            .collect();
        let Piece::Header { bytes, .. } = &pieces[0] else { panic!("header first") };
        let header = tar::Header::from_byte_slice(&bytes[bytes.len() - 512..]);
        let data_offset = bytes.len() as u64;
        assert_eq!(ends[0], data_offset + header.size().unwrap() - 1024);
        assert_eq!(ends.len(), 2);
    }

    #[test]
    fn nested_archive_that_changed_between_passes_is_an_error() {
        for second in [vec![10, 5000, 1], vec![10], vec![10, 70_000]] {
            let result: Result<Vec<Piece>> = with_nested(vec![10, 5000], second).collect();
            let error = result.err().expect("a changed layer is refused").to_string();
            assert!(error.contains("upper") && error.contains("changed while being archived"), "{error}");
        }
    }
}
