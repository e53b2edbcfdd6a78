//! How `ckpt list` shows a member to a person: an `ls -l`-like line. Apart from the listing
//! itself because its formats (mode letters, UTC dates, escaped names) are a job of their own,
//! tested on their own, and nothing else in the listing depends on them.

use super::list::ListEntry;

impl ListEntry {
    /// `ls -l`-like: type and mode, owner, size, mtime (UTC), data offset, alignment, name.
    ///
    /// ```text
    /// -rw-r--r-- 0/0             5000 2023-11-14 22:13:20 @4096 aligned ./bin/tool
    /// ```
    pub fn text_line(&self) -> String {
        let size = match (self.dev_major, self.dev_minor) {
            (Some(major), Some(minor)) => format!("{major},{minor}"),
            _ => self.file_size.to_string(),
        };
        let aligned = match self.aligned {
            Some(true) => "aligned",
            Some(false) => "unaligned",
            None => "-",
        };
        let mut line = format!(
            "{} {:>11} {:>12} {} @{:<11} {:<9} {}",
            mode_string(self.kind, self.mode),
            format!("{}/{}", self.uid, self.gid),
            size,
            utc_time(self.mtime),
            self.data_offset,
            aligned,
            escape(&self.name)
        );
        match (self.kind, &self.link) {
            ("symlink", Some(target)) => line += &format!(" -> {}", escape(target)),
            ("hardlink", Some(target)) => line += &format!(" link to {}", escape(target)),
            _ => {}
        }
        line
    }
}

/// `-rwsr-xr-x`, with the type letter of `tar tv` (`h` for hardlinks).
fn mode_string(kind: &str, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        "dir" => 'd',
        "symlink" => 'l',
        "hardlink" => 'h',
        "char" => 'c',
        "block" => 'b',
        "fifo" => 'p',
        "file" => '-',
        _ => '?',
    });
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, (bit, set, unset)) in special.into_iter().enumerate() {
        let shift = 6 - 3 * i;
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & bit != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
fn utc_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

/// A name for a line of text: UTF-8 kept, `\` doubled, control characters and invalid bytes
/// as `\n`, `\t` or `\xNN`.
fn escape(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(mode_string("file", 0o644), "-rw-r--r--");
        assert_eq!(mode_string("file", 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string("dir", 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string("dir", 0o2740), "drwxr-S---");
        assert_eq!(mode_string("hardlink", 0), "h---------");
    }

    #[test]
    fn times() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00");
        assert_eq!(utc_time(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(utc_time(-1), "1969-12-31 23:59:59");
        assert_eq!(utc_time(4_102_444_800), "2100-01-01 00:00:00");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn escapes() {
        assert_eq!(escape(b"./a b"), "./a b");
        assert_eq!(escape("ünï".as_bytes()), "ünï");
        assert_eq!(escape(b"a\nb\\c\x01\xff"), "a\\nb\\\\c\\x01\\xff");
    }
}
