//! `sha256:HEX` digests: checked before one names a file or a URL, computed while data
//! streams.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use crate::tar::manifest::hex;

/// A checked `sha256:` digest (64 lowercase hex digits), safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Digest(String);

impl Digest {
    pub(crate) fn parse(text: &str) -> std::result::Result<Digest, String> {
        match text.strip_prefix("sha256:") {
            Some(h)
                if h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Ok(Digest(text.to_string()))
            }
            _ => Err(format!("not a sha256 digest: {text:?}")),
        }
    }

    pub(crate) fn of(data: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex(&Sha256::digest(data))))
    }

    pub(crate) fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SHA-256 being computed over data that may arrive in several parts (a resumed download).
pub(crate) struct Hasher(Sha256);

impl Hasher {
    pub(crate) fn new() -> Hasher {
        Hasher(Sha256::new())
    }

    pub(crate) fn finish(self) -> Digest {
        Digest(format!("sha256:{}", hex(&self.0.finalize())))
    }
}

/// Copies `from` into `to`, at most `limit + 1` bytes (one more than allowed shows that
/// there was too much), and returns the digest and length of what was copied.
pub(crate) fn copy_hashing(from: &mut dyn Read, to: &mut dyn Write, limit: u64) -> io::Result<(Digest, u64)> {
    let mut hasher = Hasher::new();
    let total = copy_into(from, to, limit, &mut hasher)?;
    Ok((hasher.finish(), total))
}

/// As [`copy_hashing`], adding what it copies to `hasher`; returns the length copied.
pub(crate) fn copy_into(
    from: &mut dyn Read,
    to: &mut dyn Write,
    limit: u64,
    hasher: &mut Hasher,
) -> io::Result<u64> {
    let mut from = from.take(limit.saturating_add(1));
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.0.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok(total)
}
