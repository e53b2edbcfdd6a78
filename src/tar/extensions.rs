//! What extension headers say about the member that follows them: pax records (local and
//! global), and GNU long names and link targets. Separate from the reader because each
//! record is interpreted (and range-checked) once, as it is read, and the limits that keep a
//! hostile archive's cost bounded all apply here. `pax` holds the record format itself.

use std::collections::HashMap;

use crate::tar::header::id_in_range;
use crate::tar::pax;
use crate::tar::sparse::{self, SparseRecords};

/// Largest pax extended header accepted (xattr values are at most 64 KiB each on Linux).
const MAX_PAX_LEN: u64 = 16 << 20;
/// Most bytes of extended attribute names one file can have on Linux (names NUL-terminated).
const XATTR_LIST_MAX: usize = 64 << 10;
/// Largest GNU long name or long link target accepted.
const MAX_LONG_NAME: u64 = 64 << 10;
/// Most bytes of extended attributes global headers may give every member: each member
/// gets a copy, so this bounds the work per member.
const MAX_GLOBAL_XATTRS: usize = 64 << 10;

/// What the extension headers read so far say about the next member.
#[derive(Default)]
pub(crate) struct Pending {
    pub(crate) fields: PaxFields,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    /// Where the member's first header starts.
    pub(crate) start: Option<u64>,
    /// Bytes of the extended headers (local and global) read for this member.
    pax_len: u64,
}

impl Pending {
    /// Counts a pax header of `size` bytes, or says why it is refused: many in a row must not
    /// add up to more than one may hold.
    pub(crate) fn admit_pax(&mut self, size: u64) -> Result<(), String> {
        if size > MAX_PAX_LEN {
            return Err(format!("pax header of {size} bytes"));
        }
        self.pax_len += size;
        if self.pax_len > MAX_PAX_LEN {
            return Err(format!("extended headers of more than {MAX_PAX_LEN} bytes"));
        }
        Ok(())
    }

    /// Takes a GNU long name ('L') or long link target ('K'), NUL-terminated or not.
    pub(crate) fn set_long(&mut self, typeflag: u8, mut data: Vec<u8>) {
        if let Some(nul) = data.iter().position(|&b| b == 0) {
            data.truncate(nul);
        }
        if typeflag == b'L' {
            self.long_name = Some(data);
        } else {
            self.long_link = Some(data);
        }
    }

    /// What these headers and `globals` say together, these first.
    pub(crate) fn resolve(self, globals: &PaxFields) -> Extended {
        let local = self.fields;
        let sparse = local.sparse.over(&globals.sparse);
        let path = local.path.or_else(|| globals.path.clone());
        // bsdtar writes every xattr twice: URL-encoded names in SCHILY records, exact names and
        // base64 values in its own, which are the ones to trust.
        let libarchive = local.libarchive_xattrs.over(&globals.libarchive_xattrs);
        let schily = local.xattrs.over(&globals.xattrs);
        Extended {
            name: sparse.name.clone().or(path).or(self.long_name),
            link: local.linkpath.or_else(|| globals.linkpath.clone()).or(self.long_link),
            size: local.size.or(globals.size),
            uid: local.uid.or(globals.uid),
            gid: local.gid.or(globals.gid),
            mtime: local.mtime.or(globals.mtime),
            sparse,
            xattrs: if libarchive.list.is_empty() { schily } else { libarchive },
            bad: globals.bad.clone().or(local.bad),
        }
    }
}

/// Refuses a GNU long name or link target of `size` bytes beyond the cap.
pub(crate) fn admit_long_name(size: u64) -> Result<(), String> {
    if size > MAX_LONG_NAME {
        return Err(format!("GNU long name of {size} bytes"));
    }
    Ok(())
}

/// What a member's extension headers say, each field None where they say nothing.
pub(crate) struct Extended {
    pub(crate) name: Option<Vec<u8>>,
    pub(crate) link: Option<Vec<u8>>,
    pub(crate) size: Option<u64>,
    pub(crate) uid: Option<u64>,
    pub(crate) gid: Option<u64>,
    pub(crate) mtime: Option<(i64, u32)>,
    pub(crate) sparse: SparseRecords,
    pub(crate) xattrs: Xattrs,
    /// The first record that is wrong, reported under the member's name.
    pub(crate) bad: Option<String>,
}

/// Extended attributes by name, in the order first seen; a later value replaces an earlier
/// one in constant time (a header may hold a million records).
#[derive(Default, Clone)]
pub(crate) struct Xattrs {
    list: Vec<(Vec<u8>, Vec<u8>)>,
    index: HashMap<Vec<u8>, usize>,
    /// Bytes of the names as Linux counts them (each NUL-terminated).
    names_len: usize,
    /// Bytes of names and values.
    bytes: usize,
}

impl Xattrs {
    /// Adds or replaces `name`; false (and nothing stored) when the names would exceed what
    /// Linux can hold on one file.
    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) -> bool {
        if let Some(&i) = self.index.get(&name) {
            self.bytes = self.bytes - self.list[i].1.len() + value.len();
            self.list[i].1 = value;
            return true;
        }
        if self.names_len + name.len() + 1 > XATTR_LIST_MAX {
            return false;
        }
        self.names_len += name.len() + 1;
        self.bytes += name.len() + value.len();
        self.index.insert(name.clone(), self.list.len());
        self.list.push((name, value));
        true
    }

    /// These attributes, with `base`'s that these do not replace.
    fn over(self, base: &Xattrs) -> Xattrs {
        if base.list.is_empty() {
            return self;
        }
        // The common case of global xattrs only: a copy of the list, no index.
        let mut merged = Xattrs { list: base.list.clone(), index: HashMap::new(), ..*base };
        if self.list.is_empty() {
            return merged;
        }
        merged.index = base.index.clone();
        for (name, value) in self.list {
            if !merged.insert(name, value) {
                // Reported by `into_sorted`, which sees the total.
                merged.names_len = XATTR_LIST_MAX + 1;
                break;
            }
        }
        merged
    }

    /// The attributes sorted by name, or None when there are more than Linux can hold.
    pub(crate) fn into_sorted(self) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        if self.names_len > XATTR_LIST_MAX {
            return None;
        }
        let mut list = self.list;
        list.sort();
        Some(list)
    }
}

/// What the pax records of one member's extended headers (or of all global headers so far)
/// say, each record interpreted once, as it is read.
#[derive(Default, Clone)]
pub(crate) struct PaxFields {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    sparse: SparseRecords,
    xattrs: Xattrs,
    libarchive_xattrs: Xattrs,
    /// The first record that is wrong; reported once the member's name is known.
    bad: Option<String>,
}

impl PaxFields {
    /// Takes in the records of one pax header (`global` for a 'g' header). A malformed record
    /// is an error at once; a record with a wrong value is kept in `bad`.
    pub(crate) fn read_records(&mut self, data: &[u8], global: bool) -> Result<(), pax::BadRecord> {
        let parsed = pax::records(data).try_for_each(|record| {
            let (key, value) = record?;
            self.set(key, value);
            Ok(())
        });
        if global {
            self.limit_global_xattrs();
        }
        parsed
    }

    /// Takes in one record; later records for the same key replace earlier ones. Keys ckpt
    /// does not use (`comment`, `atime`, `uname`, `hdrcharset`, ...) are dropped.
    fn set(&mut self, key: &[u8], value: &[u8]) {
        match key {
            b"path" => self.path = Some(value.to_vec()),
            b"linkpath" => self.linkpath = Some(value.to_vec()),
            b"size" => self.size = self.decimal(value, "size", |n| i64::try_from(n).is_ok()),
            b"uid" => self.uid = self.decimal(value, "uid", id_in_range),
            b"gid" => self.gid = self.decimal(value, "gid", id_in_range),
            b"mtime" => match pax::parse_time(value) {
                Some(time) => self.mtime = Some(time),
                None => self.fail(format!("bad pax mtime record {}", shown(value))),
            },
            _ if key.starts_with(b"GNU.sparse.") => self.set_sparse(key, value),
            _ => self.set_xattr(key, value),
        }
    }

    fn set_sparse(&mut self, key: &[u8], value: &[u8]) {
        match key {
            b"GNU.sparse.major" => self.sparse.major = self.decimal(value, "GNU.sparse.major", |_| true),
            b"GNU.sparse.name" => self.sparse.name = Some(value.to_vec()),
            b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                self.sparse.real_size = self.decimal(value, "sparse size", |n| i64::try_from(n).is_ok())
            }
            b"GNU.sparse.map" => match sparse::parse_map_list(value) {
                Some(map) => self.sparse.map = Some(map),
                None => self.fail("bad pax sparse map record".into()),
            },
            b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                self.fail("pax sparse format 0.0 is not supported".into())
            }
            _ => {}
        }
    }

    fn set_xattr(&mut self, key: &[u8], value: &[u8]) {
        let stored = if let Some(xattr) = key.strip_prefix(b"SCHILY.xattr.") {
            self.xattrs.insert(unescape_xattr_name(xattr), value.to_vec())
        } else if let Some(xattr) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
            let Some((xattr, value)) = percent_decode(xattr).zip(decode_base64(value)) else {
                return self.fail("bad pax LIBARCHIVE.xattr record".into());
            };
            self.libarchive_xattrs.insert(xattr, value)
        } else {
            true
        };
        if !stored {
            self.fail("more extended attributes than Linux can hold".into());
        }
    }

    fn fail(&mut self, reason: String) {
        self.bad.get_or_insert(reason);
    }

    /// A decimal record value that `fits`; anything else is an error, never a wrap.
    fn decimal(&mut self, value: &[u8], what: &str, fits: impl Fn(u64) -> bool) -> Option<u64> {
        match pax::parse_decimal(value) {
            Some(n) if fits(n) => Some(n),
            Some(n) => {
                self.fail(format!("pax {what} {n} is out of range"));
                None
            }
            None => {
                self.fail(format!("bad pax {what} record {}", shown(value)));
                None
            }
        }
    }

    /// Global headers apply to every member that follows: too many extended attributes there
    /// would be copied to each one.
    fn limit_global_xattrs(&mut self) {
        if self.xattrs.bytes + self.libarchive_xattrs.bytes > MAX_GLOBAL_XATTRS {
            self.xattrs = Xattrs::default();
            self.libarchive_xattrs = Xattrs::default();
            self.fail(format!(
                "global pax headers with more than {MAX_GLOBAL_XATTRS} bytes of extended attributes"
            ));
        }
    }
}

/// A record value for an error message: quoted, at most 40 bytes of it.
fn shown(value: &[u8]) -> String {
    let cut = &value[..value.len().min(40)];
    let more = if cut.len() < value.len() { "..." } else { "" };
    format!("{:?}{more}", String::from_utf8_lossy(cut))
}

/// GNU tar escapes `=` and `%` in xattr names inside pax keywords.
fn unescape_xattr_name(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        let rest = &name[i..];
        if rest.len() >= 3 && rest[0] == b'%' && rest[1..3].eq_ignore_ascii_case(b"3D") {
            out.push(b'=');
            i += 3;
        } else if rest.len() >= 3 && rest[0] == b'%' && &rest[1..3] == b"25" {
            out.push(b'%');
            i += 3;
        } else {
            out.push(name[i]);
            i += 1;
        }
    }
    out
}

/// Decodes `%XX` escapes (libarchive URL-encodes xattr names).
fn percent_decode(name: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        if name[i] == b'%' {
            let hex = std::str::from_utf8(name.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(name[i]);
            i += 1;
        }
    }
    Some(out)
}

fn decode_base64(value: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    // Padding is optional: libarchive leaves it out.
    let unpadded = value.trim_ascii_end();
    let unpadded = &unpadded[..unpadded.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1)];
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(unpadded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_records_replace_earlier_ones_in_linear_time() {
        let mut fields = PaxFields::default();
        fields.set(b"path", b"a");
        fields.set(b"SCHILY.xattr.user.x", b"1");
        fields.set(b"path", b"long-name");
        fields.set(b"SCHILY.xattr.user.x", b"22");
        fields.set(b"comment", b"ignored");
        assert_eq!(fields.path.as_deref(), Some(&b"long-name"[..]));
        assert_eq!(fields.xattrs.list, vec![(b"user.x".to_vec(), b"22".to_vec())]);
        assert_eq!((fields.xattrs.names_len, fields.xattrs.bytes), (7, 8));
        // A million replacements of one name (a scan per record took minutes).
        for i in 0..1_000_000 {
            fields.set(b"SCHILY.xattr.user.x", i.to_string().as_bytes());
        }
        assert_eq!(fields.xattrs.list.len(), 1);
        assert!(fields.bad.is_none());
    }

    #[test]
    fn out_of_range_numbers_are_errors_not_wraps() {
        for (key, value) in [
            (&b"uid"[..], &b"4294967296"[..]),
            (b"uid", b"4294967295"),
            (b"gid", b"18446744073709551616"),
            (b"size", b"9223372036854775808"),
            (b"mtime", b"9223372036854775808"),
            (b"uid", b"-1"),
            (b"GNU.sparse.realsize", b"18446744073709551615"),
        ] {
            let mut fields = PaxFields::default();
            fields.set(key, value);
            assert!(fields.bad.is_some(), "{key:?}={value:?}");
            assert!(fields.uid.is_none() && fields.gid.is_none() && fields.size.is_none());
        }
        let mut fields = PaxFields::default();
        fields.set(b"uid", b"4294967294");
        assert_eq!(fields.uid, Some(4_294_967_294));
    }
}
