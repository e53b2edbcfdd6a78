//! One member's data by name, for runtimes that need a checkpoint's `config.dump` or
//! `spec.dump` and nothing else: out of a seekable zstd archive only the frames that hold the
//! member are read and decoded; a plain file is read by offset; other archives are read as a
//! stream, to their end: a later member of the same name replaces an earlier one, as it does
//! in an extraction.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::container::podman::bundle_name;
use crate::error::{Context, Error, Result};
use crate::tar::archive::{self, Opened};
use crate::tar::compress;
use crate::tar::meta::Kind;
use crate::tar::reader::{Entry, Reader};

/// The data of the regular file `name` at the top level of `archive` (`./` prefixes are
/// ignored on both sides), at most `max` bytes: a larger member is an error, so a hostile
/// archive cannot make the caller allocate more. Of a name the archive holds twice, the last
/// member counts, as in an extraction. A missing member is an error of kind `Unsuitable`.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let src = dir.path().join("src");
/// std::fs::create_dir(&src)?;
/// std::fs::write(src.join("config.dump"), b"{}")?;
/// let archive = dir.path().join("c.tar.zst");
/// ckpt::Exporter::new().compress(Some(ckpt::Compression::Zstd)).export(&src, &archive)?;
/// assert_eq!(ckpt::read_member(&archive, "config.dump", 1 << 20)?, b"{}");
/// # Ok(())
/// # }
/// ```
pub fn read_member(archive: &Path, name: impl AsRef<[u8]>, max: u64) -> Result<Vec<u8>> {
    let name = name.as_ref();
    read_members(archive, &[name], max)?.pop().flatten().ok_or_else(|| {
        Error::unsuitable(archive, format!("has no member {:?}", String::from_utf8_lossy(name)))
    })
}

/// The data of each of `names` (as [`read_member`]), `None` for those the archive lacks. Of a
/// name the archive holds twice, the last counts, as in an extraction. A file is read by its
/// headers (seekable ones by their index), and only the data that counts; a stream is read to
/// its end, keeping the last of each name read so far.
pub(crate) fn read_members(archive: &Path, names: &[&[u8]], max: u64) -> Result<Vec<Option<Vec<u8>>>> {
    let mut opened = archive::open(archive)?;
    let seekable = match &opened {
        Opened::Stream(stream) => stream.seekable().cloned(),
        Opened::File(..) => None,
    };
    if let Some(seekable) = seekable {
        let at = last_of_each(Reader::from_index(seekable.regions(), archive), names, max, archive)?;
        return read_each(at, |offset, len| {
            seekable.read_range(offset, len).map_err(|e| compress::stream_error(archive, e))
        });
    }
    if let Opened::File(file, len) = &opened {
        let at = last_of_each(Reader::from_file(file, 0, *len, archive), names, max, archive)?;
        return read_each(at, |offset, len| {
            let mut data = vec![0; len as usize];
            file.read_exact_at(&mut data, offset).at("read", archive).map(|()| data)
        });
    }
    let mut found = vec![None; names.len()];
    let mut reader = Reader::open(&mut opened, archive);
    while let Some(entry) = reader.next_entry()? {
        if let Some(i) = wanted(names, &entry, max, archive)? {
            found[i] = Some(reader.read_data_to_end(entry.size)?);
        }
    }
    Ok(found)
}

/// Where the data of the last member of each of `names` is: (offset, length).
fn last_of_each(
    mut reader: Reader<'_>,
    names: &[&[u8]],
    max: u64,
    archive: &Path,
) -> Result<Vec<Option<(u64, u64)>>> {
    let mut at = vec![None; names.len()];
    while let Some(entry) = reader.next_entry()? {
        if let Some(i) = wanted(names, &entry, max, archive)? {
            at[i] = Some((entry.data_offset, entry.size));
        }
    }
    Ok(at)
}

/// The data at each of `at`, read with `read(offset, len)`.
fn read_each(
    at: Vec<Option<(u64, u64)>>,
    read: impl Fn(u64, u64) -> Result<Vec<u8>>,
) -> Result<Vec<Option<Vec<u8>>>> {
    at.into_iter().map(|at| at.map(|(offset, len)| read(offset, len)).transpose()).collect()
}

/// Which of `names` `entry` is, if any; an error when it cannot be returned.
fn wanted(names: &[&[u8]], entry: &Entry, max: u64, archive: &Path) -> Result<Option<usize>> {
    let Some(i) = names.iter().position(|n| bundle_name(n) == bundle_name(&entry.name)) else {
        return Ok(None);
    };
    if entry.kind != Some(Kind::Regular) || entry.sparse.is_some() {
        let reason = format!("member {:?} is not a plain regular file", entry.name_lossy());
        return Err(Error::unsuitable(archive, reason));
    }
    if entry.size > max {
        let reason = format!("{} of {} bytes (more than the {max} expected)", entry.name_lossy(), entry.size);
        return Err(Error::damaged(archive, reason));
    }
    Ok(Some(i))
}
