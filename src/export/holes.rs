//! Holes in streams: a source file's data map (SEEK_DATA/SEEK_HOLE), and whether it pays to
//! store the file as a pax sparse 1.0 member, as `tar --sparse --format=posix` does, where
//! the output cannot keep holes by offset. The map is taken when the member is planned (its
//! length is in the header) and checked again when the data is written.

use std::fs::File;
use std::io;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

use crate::error::{Context, Error, Result};
use crate::export::member::Body;
use crate::export::source::{self, SourceFile};
use crate::tar::sparse::{MAX_FRAGMENTS, SparseMap};

/// A file is stored sparse only when that saves at least this much of the stream (its map
/// and the readers' extra work cost something, so a few holes are not worth it).
pub(crate) const MIN_SAVING: u64 = 64 << 10;

/// A member's body for a stream: a file stored sparse where that saves at least
/// [`MIN_SAVING`] bytes, else as it was.
pub(crate) fn plan(body: Body) -> Result<Body> {
    let Body::File(source) = body else { return Ok(body) };
    Ok(match map_worth_it(&source)? {
        Some(map) => Body::Sparse(source, map),
        None => Body::File(source),
    })
}

fn map_worth_it(source: &SourceFile) -> Result<Option<SparseMap>> {
    if source.size < MIN_SAVING {
        return Ok(None);
    }
    let file = source::open(source)?;
    source::check_unchanged(source, &file)?;
    let Some(map) = data_map(&file, source.size).at("seek data in", &source.path)? else {
        return Ok(None);
    };
    let stored = map.pax1_text().len() as u64 + map.data_len();
    Ok((source.size.saturating_sub(stored) >= MIN_SAVING).then_some(map))
}

/// Fails when the holes of `file` are no longer where `planned` says: the member's header
/// announced the map's length, so a file whose holes moved changed while it was archived.
pub(crate) fn check_unchanged(source: &SourceFile, file: &File, planned: &SparseMap) -> Result<()> {
    let now = data_map(file, source.size).at("seek data in", &source.path)?;
    if now.as_ref() != Some(planned) {
        return Err(Error::changed(&source.path, "its holes moved after its member was planned"));
    }
    Ok(())
}

/// The data ranges of `file` (`size` bytes), then a last empty fragment at the end as GNU tar
/// writes it; None when the filesystem cannot say where holes are, or the map would be longer
/// than readers accept.
fn data_map(file: &File, size: u64) -> io::Result<Option<SparseMap>> {
    let mut fragments = Vec::new();
    let mut pos = 0;
    while pos < size {
        let data = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(data) if data < size => data,
            // No data after pos: the rest is a hole.
            Ok(_) | Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(file, SeekFrom::Hole(data))?.min(size);
        if fragments.len() + 1 == MAX_FRAGMENTS {
            return Ok(None);
        }
        fragments.push((data, hole - data));
        pos = hole;
    }
    fragments.push((size, 0));
    Ok(Some(SparseMap { fragments, real_size: size }))
}

/// The name a sparse member's ustar header carries (GNU tar's `%d/GNUSparseFile.%p/%f`, with
/// 0 for the process id so that archives are reproducible): a reader that does not know the
/// format extracts the stored map and fragments there, not over the real file.
pub(crate) fn stand_in_name(name: &[u8]) -> Vec<u8> {
    let (dir, base) = match name.iter().rposition(|&b| b == b'/') {
        Some(slash) => (&name[..slash], &name[slash + 1..]),
        None => (&b"."[..], name),
    };
    [dir, b"/GNUSparseFile.0/", base].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_in_names_follow_gnu_tar() {
        assert_eq!(stand_in_name(b"./a/b.img"), b"./a/GNUSparseFile.0/b.img");
        assert_eq!(stand_in_name(b"./b.img"), b"./GNUSparseFile.0/b.img");
        assert_eq!(stand_in_name(b"pages-1.img"), b"./GNUSparseFile.0/pages-1.img");
    }

    #[test]
    fn data_written_into_a_planned_hole_is_a_change() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        file.set_len(1 << 20).unwrap();
        file.write_all_at(&[1; 4096], 0).unwrap();
        let source = SourceFile {
            path: path.clone(),
            dir: std::sync::Arc::new(File::open(dir.path()).unwrap().into()),
            size: 1 << 20,
            dev: 0,
            ino: 0,
            mtime: (0, 0),
        };
        let planned = data_map(&file, 1 << 20).unwrap().unwrap();
        assert_eq!(planned.fragments, [(0, 4096), (1 << 20, 0)]);
        check_unchanged(&source, &file, &planned).unwrap();
        file.write_all_at(&[1; 4096], 512 << 10).unwrap();
        let error = check_unchanged(&source, &file, &planned).unwrap_err().to_string();
        assert!(error.contains("holes moved") && error.contains(&*path.to_string_lossy()), "{error}");
    }

    #[test]
    fn a_file_of_holes_maps_to_its_end_only() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        let map = data_map(&file, 1 << 20).unwrap().expect("tmpfs and disk filesystems map holes");
        assert_eq!(map.fragments, [(1 << 20, 0)]);
    }
}
