//! The digest manifest: a last member `ckpt.sha256` in `sha256sum` format, so that after any
//! tar extracts the archive, `sha256sum -c ckpt.sha256` checks the data with standard tools.

use std::io;
use std::os::fd::BorrowedFd;

use sha2::{Digest, Sha256};

use crate::tar::sparse::SparseMap;

/// The manifest's member name, at the top of the archive.
pub(crate) const NAME: &[u8] = b"ckpt.sha256";

/// `sha256sum` escapes names holding a backslash or newline, and marks such lines with a
/// leading backslash.
fn escaped_name(name: &[u8]) -> (bool, Vec<u8>) {
    let needs = name.iter().any(|&b| b == b'\\' || b == b'\n');
    if !needs {
        return (false, name.to_vec());
    }
    let mut out = Vec::with_capacity(name.len() + 4);
    for &b in name {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b => out.push(b),
        }
    }
    (true, out)
}

/// The length of [`line`] for `name`, known before the hash is.
pub(crate) fn line_len(name: &[u8]) -> u64 {
    let specials = name.iter().filter(|&&b| b == b'\\' || b == b'\n').count();
    let marker = usize::from(specials > 0);
    (marker + 64 + 2 + name.len() + specials + 1) as u64
}

pub(crate) fn line(name: &[u8], hash: &[u8; 32]) -> Vec<u8> {
    let (escaped, name) = escaped_name(name);
    let mut line = Vec::with_capacity(name.len() + 68);
    if escaped {
        line.push(b'\\');
    }
    line.extend_from_slice(hex(hash).as_bytes());
    line.extend_from_slice(b"  ");
    line.extend_from_slice(&name);
    line.push(b'\n');
    line
}

/// A digest in lowercase hex, as `sha256sum` prints it.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A manifest line: the member name and its digest.
type ManifestLine = (Vec<u8>, [u8; 32]);

/// Parses `sha256sum` output: `HASH  NAME` (or `HASH *NAME`), a leading `\` marking a name
/// with `\\` and `\n` escapes.
pub(crate) fn parse(text: &[u8]) -> std::result::Result<Vec<ManifestLine>, String> {
    let mut out = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}", i + 1);
        let (escaped, line) = match line.strip_prefix(b"\\") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        if line.len() < 66 || !matches!(&line[64..66], b"  " | b" *") {
            return Err(bad("not `SHA256  NAME`"));
        }
        let mut hash = [0u8; 32];
        for (j, pair) in line[..64].chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| bad("bad hex digest"))?;
            hash[j] = u8::from_str_radix(hex, 16).map_err(|_| bad("bad hex digest"))?;
        }
        let raw = &line[66..];
        let name = if escaped {
            let mut name = Vec::with_capacity(raw.len());
            let mut bytes = raw.iter();
            while let Some(&b) = bytes.next() {
                if b != b'\\' {
                    name.push(b);
                    continue;
                }
                match bytes.next() {
                    Some(b'\\') => name.push(b'\\'),
                    Some(b'n') => name.push(b'\n'),
                    Some(b'r') => name.push(b'\r'),
                    _ => return Err(bad("bad escape in the name")),
                }
            }
            name
        } else {
            raw.to_vec()
        };
        out.push((name, hash));
    }
    Ok(out)
}

/// Hashes a member's content as an extracted file holds it, which `sha256sum -c` checks: a
/// plain member's data as it is; a sparse member's stored bytes at their fragments' offsets,
/// with zeros in the holes between them and after the last.
pub(crate) struct ContentHasher {
    sha: Sha256,
    sparse: Option<Expanding>,
}

/// Where a sparse member's stored bytes have got to in the file they stand for.
struct Expanding {
    map: SparseMap,
    /// The fragment the next stored byte belongs to, and how much of it is hashed.
    fragment: usize,
    done: u64,
    /// The end of what is hashed, in the file.
    end: u64,
}

impl ContentHasher {
    pub(crate) fn new(sparse: Option<&SparseMap>) -> ContentHasher {
        let sparse = sparse.map(|map| Expanding { map: map.clone(), fragment: 0, done: 0, end: 0 });
        ContentHasher { sha: Sha256::new(), sparse }
    }

    /// Hashes the next stored bytes.
    pub(crate) fn update(&mut self, mut stored: &[u8]) {
        let Some(s) = &mut self.sparse else {
            self.sha.update(stored);
            return;
        };
        // The reader checked that the fragments add up to the stored bytes.
        while let Some(&(at, len)) = s.map.fragments.get(s.fragment) {
            if s.done == 0 {
                hash_zeros(&mut self.sha, at.saturating_sub(s.end));
                s.end = s.end.max(at);
            }
            let n = stored.len().min((len - s.done) as usize);
            self.sha.update(&stored[..n]);
            stored = &stored[n..];
            s.done += n as u64;
            s.end += n as u64;
            if s.done < len {
                return;
            }
            (s.fragment, s.done) = (s.fragment + 1, 0);
            if stored.is_empty() {
                return;
            }
        }
    }

    pub(crate) fn finalize(mut self) -> [u8; 32] {
        if let Some(s) = &self.sparse {
            let end = s.map.fragments.iter().skip(s.fragment).fold(s.end, |end, &(at, _)| end.max(at));
            hash_zeros(&mut self.sha, s.map.real_size.max(end) - s.end);
        }
        self.sha.finalize().into()
    }
}

/// Feeds `n` zero bytes to `sha`: a hole's content.
pub(crate) fn hash_zeros(sha: &mut Sha256, mut n: u64) {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while n > 0 {
        let chunk = n.min(ZEROS.len() as u64) as usize;
        sha.update(&ZEROS[..chunk]);
        n -= chunk as u64;
    }
}

/// Hashes `len` bytes of `fd` from `offset`, telling `hashed` how many bytes each read added.
pub(crate) fn hash_range(
    fd: BorrowedFd<'_>,
    offset: u64,
    len: u64,
    sparse: Option<&SparseMap>,
    buf: &mut Vec<u8>,
    hashed: &mut dyn FnMut(u64),
) -> io::Result<[u8; 32]> {
    if buf.is_empty() {
        buf.resize(1 << 20, 0);
    }
    let mut hasher = ContentHasher::new(sparse);
    let mut done = 0;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        match rustix::io::pread(fd, &mut buf[..want], offset + done) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                hasher.update(&buf[..n]);
                done += n as u64;
                hashed(n as u64);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256sum_format() {
        let hash = [0xab; 32];
        let plain = line(b"./a b", &hash);
        assert_eq!(plain, format!("{}  ./a b\n", "ab".repeat(32)).into_bytes());
        let odd = line(b"./x\\y\nz", &hash);
        assert_eq!(odd, format!("\\{}  ./x\\\\y\\nz\n", "ab".repeat(32)).into_bytes());
        for name in [&b"./a b"[..], b"./x\\y\nz", b"\\", b"\n\n", b""] {
            assert_eq!(line_len(name), line(name, &hash).len() as u64, "{name:?}");
        }
    }

    #[test]
    fn a_sparse_member_hashes_as_its_expanded_file() {
        let map = SparseMap { fragments: vec![(3, 2), (8, 1), (10, 0)], real_size: 12 };
        let expanded = b"\0\0\0ab\0\0\0c\0\0\0";
        let want: [u8; 32] = Sha256::digest(expanded).into();
        for split in 0..=3 {
            let mut hasher = ContentHasher::new(Some(&map));
            hasher.update(&b"abc"[..split]);
            hasher.update(&b"abc"[split..]);
            assert_eq!(hasher.finalize(), want, "split at {split}");
        }
        let holes = SparseMap { fragments: vec![(5, 0)], real_size: 5 };
        let mut hasher = ContentHasher::new(Some(&holes));
        hasher.update(b"");
        assert_eq!(hasher.finalize(), <[u8; 32]>::from(Sha256::digest([0u8; 5])));
    }

    #[test]
    fn manifests() {
        let h = "ab".repeat(32);
        let text = format!("{h}  ./a b\n\\{h}  ./x\\\\y\\nz\n{h} *bin\n");
        let parsed = parse(text.as_bytes()).unwrap();
        let names: Vec<&[u8]> = parsed.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(names, [&b"./a b"[..], b"./x\\y\nz", b"bin"]);
        assert!(parsed.iter().all(|(_, d)| *d == [0xab; 32]));
        assert!(parse(b"xyz  a\n").is_err());
        assert!(parse(format!("{}  a\n", "zz".repeat(32)).as_bytes()).is_err());
    }
}
