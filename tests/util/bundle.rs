//! Checkpoint bundles as podman leaves them before export (libpod's dumps, CRIU's images in
//! `checkpoint/`, a sparse pages image): written into a directory to export, or as an
//! archive in memory to import.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{Tar, sh, write_with_parents};

enum Entry {
    File {
        rel: String,
        data: Vec<u8>,
    },
    /// A file of `size` bytes that holds `islands` (offset, data) and holes elsewhere.
    Sparse {
        rel: String,
        size: u64,
        islands: Vec<(u64, Vec<u8>)>,
    },
}

/// A bundle's regular files, by path relative to the bundle, in the order they are made.
#[derive(Default)]
pub struct Bundle {
    /// Whether the bundle starts as a copy of `fixtures/sample-bundle` (real CRIU images).
    sample: bool,
    entries: Vec<Entry>,
}

impl Bundle {
    /// A bundle with nothing in it.
    pub fn new() -> Bundle {
        Bundle::default()
    }

    /// A bundle that starts as a copy of `fixtures/sample-bundle`.
    pub fn sample() -> Bundle {
        Bundle { sample: true, ..Bundle::default() }
    }

    pub fn file(mut self, rel: &str, data: impl Into<Vec<u8>>) -> Bundle {
        self.entries.push(Entry::File { rel: rel.to_string(), data: data.into() });
        self
    }

    /// A sparse file such as CRIU's `pages-N.img`: `size` bytes, `islands` of data at their
    /// offsets, holes elsewhere.
    pub fn sparse(mut self, rel: &str, size: u64, islands: Vec<(u64, Vec<u8>)>) -> Bundle {
        self.entries.push(Entry::Sparse { rel: rel.to_string(), size, islands });
        self
    }

    /// Makes the bundle as the directory `dir`, which must not exist yet when the bundle
    /// starts from the sample (`cp -a` would copy it into `dir` otherwise).
    pub fn write(&self, dir: &Path) {
        if self.sample {
            assert!(!dir.exists(), "{} exists: the sample bundle would be copied into it", dir.display());
            let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sample-bundle");
            sh("cp", &[&"-a", &sample, &dir]);
        }
        for entry in &self.entries {
            match entry {
                Entry::File { rel, data } => write_with_parents(&dir.join(rel), data),
                Entry::Sparse { rel, size, islands } => {
                    let path = dir.join(rel);
                    write_with_parents(&path, b"");
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                    // Size first, then the islands inside EOF: no speculative preallocation
                    // between them.
                    f.set_len(*size).unwrap_or_else(|e| panic!("truncate {}: {e}", path.display()));
                    for (offset, data) in islands {
                        f.write_all_at(data, *offset)
                            .unwrap_or_else(|e| panic!("write {} at {offset}: {e}", path.display()));
                    }
                    f.sync_all().unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
                }
            }
        }
    }

    /// The bundle as a plain archive (ustar headers, root-owned) in the order the files were
    /// given, each directory just before the first file in it. Only for bundles of plain
    /// files: the sample and sparse files are for [`Bundle::write`].
    pub fn archive(&self) -> Vec<u8> {
        assert!(!self.sample, "an archive of the sample bundle: export it with ckpt");
        let mut t = Tar::new();
        let mut dirs: Vec<&str> = Vec::new();
        for entry in &self.entries {
            let Entry::File { rel, data } = entry else { panic!("a sparse file in an in-memory archive") };
            let parents = rel.match_indices('/').map(|(i, _)| &rel[..i]);
            for parent in parents {
                if !dirs.contains(&parent) {
                    dirs.push(parent);
                    t.dir(parent);
                }
            }
            t.file(rel, data);
        }
        t.end().bytes()
    }
}
