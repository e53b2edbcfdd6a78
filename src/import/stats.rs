//! What an import did: the counts and the lists of members not restored. Separate from the
//! extractor because it is the library's answer (and `--json`'s), which the bundle's and the
//! layer's extractions each fill and the import adds up.

use serde::Serialize;
use std::path::PathBuf;

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportStats {
    /// Members restored, nested ones included.
    pub entries: u64,
    /// Regular files restored.
    pub files: u64,
    /// Sum of their sizes.
    pub bytes: u64,
    /// File bytes shared with the archive (cloned).
    pub bytes_cloned: u64,
    /// File bytes copied.
    pub bytes_copied: u64,
    /// Wall-clock time of the import.
    pub seconds: f64,
    /// Members that could not be restored here (unknown types, devices without privilege).
    /// Serializes as its count.
    #[serde(serialize_with = "crate::report::count")]
    pub skipped: Vec<String>,
    /// Existing paths left untouched because a member wanted to replace them. Serializes as
    /// its count.
    #[serde(serialize_with = "crate::report::count")]
    pub conflicts: Vec<PathBuf>,
    /// Members refused: they would reach outside the destination, or they are hard links
    /// to a name the destination does not have. Serializes as its count.
    #[serde(serialize_with = "crate::report::count")]
    pub refused: Vec<String>,
    /// Members (or directories' metadata) that failed to restore, each reported on stderr
    /// with its path and operation; the rest of the archive was restored. Serializes as its
    /// count.
    #[serde(serialize_with = "crate::report::count")]
    pub failed: Vec<String>,
}

impl ImportStats {
    /// Adds the counts of a second extraction (a nested layer) to these.
    pub fn absorb(&mut self, other: ImportStats) {
        self.entries += other.entries;
        self.files += other.files;
        self.bytes += other.bytes;
        self.bytes_cloned += other.bytes_cloned;
        self.bytes_copied += other.bytes_copied;
        self.skipped.extend(other.skipped);
        self.conflicts.extend(other.conflicts);
        self.refused.extend(other.refused);
        self.failed.extend(other.failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_the_lists_as_counts() {
        let stats = ImportStats {
            entries: 3,
            skipped: vec!["a".into()],
            conflicts: vec!["b".into(), "c".into()],
            ..ImportStats::default()
        };
        let value = serde_json::to_value(&stats).unwrap();
        let expected = serde_json::json!({
            "entries": 3, "files": 0, "bytes": 0, "bytes_cloned": 0, "bytes_copied": 0,
            "seconds": 0.0, "skipped": 1, "conflicts": 2, "refused": 0, "failed": 0,
        });
        assert_eq!(value, expected);
    }
}
