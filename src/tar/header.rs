//! One header block (ustar, GNU or v7), read field by field by its byte range, every number
//! range-checked (octal and GNU base-256). Separate from the reader so that the block's
//! layout lives in one place and the reader only sees checked values.
//!
//! Fields are decoded when asked for, not all at once: which fields matter depends on the
//! header's type (a pax header's mode is never looked at), and the order the reader asks in
//! decides which error a header with several faults reports.

use std::ops::Range;

/// A header's size in bytes, as an array length.
pub(crate) const HEADER_LEN: usize = crate::tar::BLOCK as usize;

const NAME: Range<usize> = 0..100;
const MODE: Range<usize> = 100..108;
const UID: Range<usize> = 108..116;
const GID: Range<usize> = 116..124;
const SIZE: Range<usize> = 124..136;
const MTIME: Range<usize> = 136..148;
const CHECKSUM: Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const LINKNAME: Range<usize> = 157..257;
const MAGIC: Range<usize> = 257..263;
const VERSION: Range<usize> = 263..265;
const DEVMAJOR: Range<usize> = 329..337;
const DEVMINOR: Range<usize> = 337..345;
/// ustar only: the part of a long name before its last `/`.
const PREFIX: Range<usize> = 345..500;
/// Old GNU sparse headers only: four map entries, a flag saying more follow, the file size.
const GNU_SPARSE: Range<usize> = 386..482;
const GNU_IS_EXTENDED: usize = 482;
const GNU_REAL_SIZE: Range<usize> = 483..495;

/// Largest device major and minor Linux encodes.
const MAX_DEV_MAJOR: u64 = 0xfff;
const MAX_DEV_MINOR: u64 = 0xfffff;

/// A field the reader cannot use.
pub(crate) enum BadField {
    /// Not a number; the argument names the field.
    Number(&'static str),
    /// A number beyond what Linux can give a file, described.
    Range(String),
}

pub(crate) struct Header {
    block: [u8; HEADER_LEN],
}

impl Header {
    pub(crate) fn new(block: [u8; HEADER_LEN]) -> Header {
        Header { block }
    }

    /// An end-of-archive block.
    pub(crate) fn is_zero(&self) -> bool {
        self.block.iter().all(|&b| b == 0)
    }

    /// Whether the checksum field matches the block, summed as unsigned or (as some old
    /// writers did) signed bytes.
    pub(crate) fn checksum_matches(&self) -> bool {
        // The sum counts the checksum field as eight spaces.
        let field = &self.block[CHECKSUM];
        let spaces = 8 * u64::from(b' ');
        let Some(sum) = parse_octal(field) else { return false };
        let total = |block: &[u8]| block.iter().map(|&b| u64::from(b)).sum::<u64>();
        if sum == total(&self.block[..]) - total(field) + spaces {
            return true;
        }
        // Some old writers summed the bytes as signed.
        let signed = |block: &[u8]| block.iter().map(|&b| i64::from(b as i8)).sum::<i64>();
        sum as i64 == signed(&self.block[..]) - signed(field) + spaces as i64
    }

    pub(crate) fn typeflag(&self) -> u8 {
        self.block[TYPEFLAG]
    }

    /// A POSIX ustar header (not GNU's `ustar  ` nor v7's blank magic): only it has a prefix.
    pub(crate) fn is_ustar(&self) -> bool {
        &self.block[MAGIC] == b"ustar\0" && &self.block[VERSION] == b"00"
    }

    /// The name field alone: what errors name before the member's full name is known.
    pub(crate) fn raw_name(&self) -> Vec<u8> {
        cstr(&self.block[NAME]).to_vec()
    }

    /// The member's name as the header holds it (ustar prefix included).
    pub(crate) fn name(&self) -> Vec<u8> {
        if !self.is_ustar() {
            return self.raw_name();
        }
        let mut name = cstr(&self.block[PREFIX]).to_vec();
        if !name.is_empty() {
            name.push(b'/');
        }
        name.extend_from_slice(cstr(&self.block[NAME]));
        name
    }

    pub(crate) fn link(&self) -> Vec<u8> {
        cstr(&self.block[LINKNAME]).to_vec()
    }

    pub(crate) fn size(&self) -> Result<u64, BadField> {
        self.number(SIZE, "size")
    }

    /// The permission bits. Type bits (S_IFMT) are allowed in the field; anything above them
    /// is not a mode.
    pub(crate) fn mode(&self) -> Result<u32, BadField> {
        let mode = self.number(MODE, "mode")?;
        if mode > 0o177777 {
            return Err(BadField::Range(format!("mode {mode:o} is out of range")));
        }
        Ok((mode & 0o7777) as u32)
    }

    /// Unchecked against chown's range: a pax record may replace it.
    pub(crate) fn uid(&self) -> Result<u64, BadField> {
        self.number(UID, "uid")
    }

    pub(crate) fn gid(&self) -> Result<u64, BadField> {
        self.number(GID, "gid")
    }

    pub(crate) fn mtime(&self) -> Result<i64, BadField> {
        parse_mtime(&self.block[MTIME]).ok_or(BadField::Number("mtime"))
    }

    /// Major and minor, limited to what Linux encodes (12 and 20 bits): mknod would drop the
    /// rest.
    pub(crate) fn device(&self) -> Result<(u32, u32), BadField> {
        let major = self.number(DEVMAJOR, "devmajor")?;
        let minor = self.number(DEVMINOR, "devminor")?;
        if major > MAX_DEV_MAJOR || minor > MAX_DEV_MINOR {
            return Err(BadField::Range(format!("device number {major},{minor} is out of range")));
        }
        Ok((major as u32, minor as u32))
    }

    /// An old GNU sparse header's map: its entries (decoded like those of the extension
    /// blocks that follow), whether such blocks follow, and the file's size.
    pub(crate) fn gnu_sparse(&self) -> (&[u8], bool, Option<u64>) {
        let real_size = parse_number(&self.block[GNU_REAL_SIZE]);
        (&self.block[GNU_SPARSE], self.block[GNU_IS_EXTENDED] != 0, real_size)
    }

    fn number(&self, field: Range<usize>, what: &'static str) -> Result<u64, BadField> {
        parse_number(&self.block[field]).ok_or(BadField::Number(what))
    }
}

/// Whether a uid or gid can be given to chown: -1 (4294967295) means "leave it unchanged".
pub(crate) fn id_in_range(id: u64) -> bool {
    id < u64::from(u32::MAX)
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let field = cstr(field);
    let digits: &[u8] = field.trim_ascii();
    if digits.is_empty() {
        return Some(0);
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if (b'0'..=b'7').contains(&d) { n.checked_mul(8)?.checked_add(u64::from(d - b'0')) } else { None }
    })
}

/// An unsigned numeric field: octal, or GNU base-256 (high bit set).
pub(crate) fn parse_number(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 == 0 {
        return parse_octal(field);
    }
    if field[0] == 0xff {
        return None; // negative
    }
    let mut n = u64::from(field[0] & 0x7f);
    for &b in &field[1..] {
        n = n.checked_mul(256)?.checked_add(u64::from(b))?;
    }
    Some(n)
}

/// The mtime field, which base-256 allows to be negative.
fn parse_mtime(field: &[u8]) -> Option<i64> {
    if field[0] == 0xff {
        let mut n: i64 = -1;
        for &b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(i64::from(b))?;
        }
        // Two's complement: the leading 0xff bytes carry the sign.
        return if n < 0 { Some(n) } else { None };
    }
    parse_number(field).and_then(|n| i64::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block with a name byte over 0x7f, its checksum written as `sum` computes it.
    fn block_summed(sum: impl Fn(u8) -> i64) -> [u8; HEADER_LEN] {
        let mut block = [0u8; HEADER_LEN];
        block[..4].copy_from_slice(b"f\xe9\xff\x80");
        block[CHECKSUM].fill(b' ');
        let total: i64 = block.iter().map(|&b| sum(b)).sum();
        block[CHECKSUM][..7].copy_from_slice(format!("{total:06o}\0").as_bytes());
        block
    }

    #[test]
    fn a_checksum_summed_as_unsigned_or_as_signed_bytes_matches_and_another_does_not() {
        assert!(Header::new(block_summed(i64::from)).checksum_matches());
        assert!(Header::new(block_summed(|b| i64::from(b as i8))).checksum_matches());
        assert!(!Header::new(block_summed(|b| i64::from(b) + 1)).checksum_matches());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"  644 \0"), Some(0o644));
        assert_eq!(parse_number(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(parse_number(b"0009\0"), None);
        assert_eq!(parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00]), Some(256));
        assert_eq!(parse_number(&[0xff; 12]), None);
        assert_eq!(parse_mtime(&[0xff; 12]), Some(-1));
        assert_eq!(
            parse_number(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }
}
