//! Sparse members: where the stored fragments of a sparse file go. GNU tar has written
//! several formats (old GNU 'S' headers with extension blocks, pax 0.1 map records, pax 1.0
//! maps at the start of the data); each is parsed here into one `SparseMap`, apart from the
//! reader because it is the one place a header's claims decide how much more is read.
//! A map never holds more than `MAX_FRAGMENTS` fragments, whatever the archive says.

use std::io;

use crate::tar::BLOCK;
use crate::tar::header::{HEADER_LEN, Header, parse_number};
use crate::tar::input::Input;
use crate::tar::pax;

/// The layout of a sparse member: its data in the archive is `fragments`' bytes, one after
/// the other; each goes at its offset in a file of `real_size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SparseMap {
    pub(crate) fragments: Vec<(u64, u64)>,
    pub(crate) real_size: u64,
}

/// Most fragments a sparse map may list (memory stays bounded on hostile input).
pub(crate) const MAX_FRAGMENTS: usize = 1 << 20;

/// The pax records that describe a sparse member.
#[derive(Default, Clone)]
pub(crate) struct SparseRecords {
    pub(crate) major: Option<u64>,
    pub(crate) name: Option<Vec<u8>>,
    pub(crate) real_size: Option<u64>,
    pub(crate) map: Option<Vec<(u64, u64)>>,
}

impl SparseRecords {
    /// These records, with `base`'s where these have none.
    pub(crate) fn over(self, base: &SparseRecords) -> SparseRecords {
        SparseRecords {
            major: self.major.or(base.major),
            name: self.name.or_else(|| base.name.clone()),
            real_size: self.real_size.or(base.real_size),
            map: self.map.or_else(|| base.map.clone()),
        }
    }
}

/// Why a member's sparse map cannot be used.
pub(crate) enum SparseError {
    /// The map is wrong; the argument says how.
    Bad(&'static str),
    /// Reading the map's extension blocks or data failed.
    Read(io::Error),
}

/// The sparse map of the member whose header is `header`, from that header or its pax
/// `records`, or None for a plain member. A pax 1.0 map is read off the start of the data
/// from `input`: `size`, the member's data size, shrinks by the map's length.
pub(crate) fn read_map(
    header: &Header,
    records: SparseRecords,
    input: &mut Input,
    size: &mut u64,
) -> Result<Option<SparseMap>, SparseError> {
    let map = if header.typeflag() == b'S' {
        old_gnu_map(header, input)?
    } else if let Some(fragments) = records.map {
        let real_size = records.real_size.ok_or(SparseError::Bad("sparse map without size"))?;
        SparseMap { fragments, real_size }
    } else if records.major == Some(1) {
        let real_size = records.real_size.ok_or(SparseError::Bad("sparse member without size"))?;
        let (fragments, map_len) = pax1_map(input, *size)?;
        *size -= map_len;
        SparseMap { fragments, real_size }
    } else if records.major.is_some() {
        return Err(SparseError::Bad("unknown pax sparse format version"));
    } else {
        return Ok(None);
    };
    if !map.matches(*size) {
        return Err(SparseError::Bad("sparse map does not match the member's data"));
    }
    Ok(Some(map))
}

impl SparseMap {
    /// The map as pax sparse 1.0 stores it at the start of the member's data, as GNU tar
    /// writes it: the fragment count, then each fragment's offset and length, one decimal
    /// number per line, padded with NULs to a whole block.
    pub(crate) fn pax1_text(&self) -> Vec<u8> {
        let mut text = format!("{}\n", self.fragments.len());
        for (at, len) in &self.fragments {
            text.push_str(&format!("{at}\n{len}\n"));
        }
        let mut text = text.into_bytes();
        text.resize(text.len().next_multiple_of(BLOCK as usize), 0);
        text
    }

    /// Bytes of file data the fragments hold.
    pub(crate) fn data_len(&self) -> u64 {
        self.fragments.iter().map(|f| f.1).sum()
    }

    /// Whether the fragments add up to `stored` bytes and all lie within the file.
    fn matches(&self, stored: u64) -> bool {
        // Checked: a wrapped sum could match the member's size.
        let sum = self.fragments.iter().try_fold(0u64, |sum, f| sum.checked_add(f.1));
        let fits = i64::try_from(self.real_size).is_ok()
            && self
                .fragments
                .iter()
                .all(|&(at, len)| at.checked_add(len).is_some_and(|end| end <= self.real_size));
        sum == Some(stored) && fits
    }
}

/// `GNU.sparse.map` (pax 0.1): `offset,size,offset,size,...`.
pub(crate) fn parse_map_list(value: &[u8]) -> Option<Vec<(u64, u64)>> {
    if value.is_empty() {
        return Some(Vec::new());
    }
    let numbers: Vec<u64> = value.split(|&b| b == b',').map(pax::parse_decimal).collect::<Option<_>>()?;
    if !numbers.len().is_multiple_of(2) || numbers.len() / 2 > MAX_FRAGMENTS {
        return None;
    }
    Some(numbers.chunks(2).map(|p| (p[0], p[1])).collect())
}

/// Old GNU sparse ('S'): four map entries in the header, more in extension blocks.
fn old_gnu_map(header: &Header, input: &mut Input) -> Result<SparseMap, SparseError> {
    const BAD: SparseError = SparseError::Bad("bad GNU sparse header");
    let (entries, mut extended, real_size) = header.gnu_sparse();
    let real_size = real_size.ok_or(BAD)?;
    let mut fragments = Vec::new();
    push_entries(entries, &mut fragments).ok_or(BAD)?;
    while extended {
        if fragments.len() > MAX_FRAGMENTS {
            return Err(SparseError::Bad("sparse map too long"));
        }
        // 21 entries, then the flag saying whether another block follows.
        let mut ext = [0u8; HEADER_LEN];
        input.read_exact(&mut ext).map_err(SparseError::Read)?;
        push_entries(&ext[..504], &mut fragments).ok_or(BAD)?;
        extended = ext[504] != 0;
    }
    Ok(SparseMap { fragments, real_size })
}

/// Appends the map entries of an old GNU header or extension block: 12-byte offset and
/// length numbers, unused entries zero.
fn push_entries(entries: &[u8], fragments: &mut Vec<(u64, u64)>) -> Option<()> {
    for entry in entries.chunks(24).filter(|entry| entry[0] != 0) {
        fragments.push((parse_number(&entry[..12])?, parse_number(&entry[12..])?));
    }
    Some(())
}

/// Pax sparse 1.0: the map is decimal text at the start of the data, padded to a block.
/// Returns the fragments and the map's length in the archive.
fn pax1_map(input: &mut Input, size: u64) -> Result<(Vec<(u64, u64)>, u64), SparseError> {
    const BAD: SparseError = SparseError::Bad("bad pax sparse map");
    let mut map_len = 0u64;
    let mut numbers = Numbers::default();
    while !numbers.complete() {
        if map_len + BLOCK > size {
            return Err(BAD);
        }
        let mut block = [0u8; HEADER_LEN];
        input.read_exact(&mut block).map_err(SparseError::Read)?;
        map_len += BLOCK;
        numbers.take(&block).ok_or(BAD)?;
    }
    let fragments = numbers.list[1..].chunks(2).map(|pair| (pair[0], pair[1])).collect();
    Ok((fragments, map_len))
}

/// The numbers of a pax 1.0 map as its blocks are read: a count of fragments, then an
/// offset and a length for each, one per line.
#[derive(Default)]
struct Numbers {
    list: Vec<u64>,
    /// Only the current line is kept: the map's text may be as long as the member.
    line: Vec<u8>,
    /// How many numbers the map holds, once its count is read.
    wanted: Option<usize>,
}

impl Numbers {
    fn complete(&self) -> bool {
        self.wanted.is_some_and(|n| self.list.len() >= n)
    }

    /// Takes in one block of the map's text; None when it is not a map.
    fn take(&mut self, block: &[u8]) -> Option<()> {
        for &byte in block {
            if byte != b'\n' {
                // A decimal u64 has at most 20 digits.
                if self.line.len() == 20 {
                    return None;
                }
                self.line.push(byte);
                continue;
            }
            let n = pax::parse_decimal(&self.line)?;
            self.line.clear();
            if self.wanted.is_none() {
                let count = usize::try_from(n).ok().filter(|&c| c <= MAX_FRAGMENTS)?;
                self.wanted = Some(1 + 2 * count);
            }
            self.list.push(n);
            if self.complete() {
                break;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax1_text_reads_back_as_written() {
        let map = SparseMap { fragments: vec![(0, 4096), (1 << 20, 512), (3 << 20, 0)], real_size: 3 << 20 };
        let text = map.pax1_text();
        assert_eq!(&text[..32], b"3\n0\n4096\n1048576\n512\n3145728\n0\n\0");
        assert_eq!(text.len(), 512);
        let mut stream = &text[..];
        let mut input = Input::stream(Box::new(&mut stream), 0);
        let (fragments, len) = pax1_map(&mut input, 512 + map.data_len()).ok().unwrap();
        assert_eq!((fragments, len), (map.fragments, 512));
    }
}
