//! POSIX pax extended-header records: encoding, the alignment padding record, and a parser
//! that splits records by their length prefix (values may contain newlines, e.g. binary
//! `SCHILY.xattr.security.capability`).

use std::fmt;

/// The POSIX keyword every reader we care about ignores silently (FACTS: vendor keywords make
/// GNU tar warn once per member).
const PADDING_KEYWORD: &[u8] = b"comment";

/// The shortest padding record: `12 comment=\n`.
pub(crate) const MIN_PADDING: usize = 12;

/// Appends one `LEN KEY=VALUE\n` record to `out`.
pub(crate) fn push_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let len = record_len(key.len() + value.len());
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Length of a record whose key and value together are `payload` bytes long. The length
/// prefix counts its own digits, so grow the digit count until it is self-consistent.
pub(crate) fn record_len(payload: usize) -> usize {
    // " " + "=" + "\n" around key and value.
    let body = payload + 3;
    let mut digits = 1;
    loop {
        let total = body + digits;
        if total.to_string().len() == digits {
            return total;
        }
        digits += 1;
    }
}

/// Appends a `comment` record of exactly `total` bytes (`total >= MIN_PADDING`).
///
/// For a fixed total the number of prefix digits is fixed too, so the value length follows
/// directly: total = digits + len(" comment=") + value + len("\n").
pub(crate) fn push_padding(out: &mut Vec<u8>, total: usize) {
    assert!(total >= MIN_PADDING, "padding record of {total} bytes");
    let digits = total.to_string().len();
    let value = total - digits - 1 - PADDING_KEYWORD.len() - 2;
    let start = out.len();
    out.extend_from_slice(total.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(PADDING_KEYWORD);
    out.push(b'=');
    out.resize(out.len() + value, b' ');
    out.push(b'\n');
    debug_assert_eq!(out.len() - start, total);
}

/// A malformed record, described for an error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRecord(pub String);

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Iterates over the `(key, value)` pairs of a pax extended header's data.
pub(crate) fn records(data: &[u8]) -> Records<'_> {
    Records { rest: data }
}

pub(crate) struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), BadRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        // Some writers pad the data with NULs after the last record.
        if self.rest.is_empty() || self.rest[0] == 0 {
            return None;
        }
        let result = self.parse_one();
        if result.is_err() {
            self.rest = &[];
        }
        Some(result)
    }
}

impl<'a> Records<'a> {
    fn parse_one(&mut self) -> Result<(&'a [u8], &'a [u8]), BadRecord> {
        let space = self
            .rest
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or_else(|| BadRecord("pax record without a length".into()))?;
        let digits = &self.rest[..space];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(BadRecord(format!(
                "pax record length {:?} is not a decimal number",
                String::from_utf8_lossy(digits)
            )));
        }
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BadRecord("pax record length overflows".into()))?;
        if len <= space + 1 || len > self.rest.len() {
            return Err(BadRecord(format!(
                "pax record length {len} does not fit the {} bytes left",
                self.rest.len()
            )));
        }
        let record = &self.rest[space + 1..len];
        self.rest = &self.rest[len..];
        let Some((&b'\n', record)) = record.split_last() else {
            return Err(BadRecord("pax record does not end with a newline".into()));
        };
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| BadRecord("pax record without '='".into()))?;
        Ok((&record[..eq], &record[eq + 1..]))
    }
}

/// A decimal number as pax records and GNU sparse maps write it: digits only, no sign.
pub(crate) fn parse_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Seconds and nanoseconds as a pax time: a decimal number, negative before the epoch.
pub(crate) fn format_time(sec: i64, nsec: u32) -> String {
    if sec < 0 && nsec > 0 {
        // sec + nsec/1e9 is negative; write its magnitude.
        format!("-{}.{:09}", -(sec + 1), 1_000_000_000 - nsec)
    } else if nsec == 0 {
        sec.to_string()
    } else {
        format!("{sec}.{nsec:09}")
    }
}

/// A pax time: `[-]SECONDS[.FRACTION]`.
pub(crate) fn parse_time(value: &[u8]) -> Option<(i64, u32)> {
    let (negative, value) = match value.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (secs, frac) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &[][..]),
    };
    let secs = i64::try_from(parse_decimal(secs)?).ok()?;
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut nsec = 0u32;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    if negative && nsec > 0 {
        Some((-secs - 1, 1_000_000_000 - nsec))
    } else if negative {
        Some((-secs, 0))
    } else {
        Some((secs, nsec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lengths_count_their_own_digits() {
        let mut out = Vec::new();
        push_record(&mut out, b"path", b"a");
        assert_eq!(out, b"9 path=a\n");
        for payload in 0..2000 {
            let n = record_len(payload);
            assert_eq!(n, payload + 3 + n.to_string().len());
        }
        // 95 + 3 + 2 = 100 needs three digits: 101.
        assert_eq!(record_len(95), 101);
    }

    #[test]
    fn padding_has_the_exact_requested_length() {
        for total in MIN_PADDING..5000 {
            let mut out = Vec::new();
            push_padding(&mut out, total);
            assert_eq!(out.len(), total);
            let parsed: Vec<_> = records(&out).collect::<Result<_, _>>().unwrap();
            assert_eq!(parsed.len(), 1);
            assert_eq!(parsed[0].0, b"comment");
        }
    }

    #[test]
    fn binary_values_with_newlines_round_trip() {
        let mut out = Vec::new();
        let value = [0x01, 0x0a, 0x00, 0x0a, 0xff];
        push_record(&mut out, b"SCHILY.xattr.security.capability", &value);
        push_record(&mut out, b"mtime", b"1.5");
        out.resize(512, 0);
        let parsed: Vec<_> = records(&out).collect::<Result<_, _>>().unwrap();
        assert_eq!(parsed[0].1, &value);
        assert_eq!(parsed[1], (&b"mtime"[..], &b"1.5"[..]));
    }

    #[test]
    fn malformed_records_are_errors() {
        for bad in [&b"x"[..], b"99 path=a\n", b"5 a=b\n", b"9 path-a\n", b"-3 a\n"] {
            assert!(records(bad).any(|r| r.is_err()), "{bad:?}");
        }
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_time(b"7"), Some((7, 0)));
        assert_eq!(parse_time(b"1.0000000019"), Some((1, 1)));
        assert_eq!(parse_time(b"x"), None);
        assert_eq!(parse_time(b"1.x"), None);
        let (s, n) = (-3i64, 250_000_000u32);
        assert_eq!(parse_time(format_time(s, n).as_bytes()), Some((s, n)));
    }
}
