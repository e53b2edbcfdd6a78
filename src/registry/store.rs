//! The local content-addressed store of layers: `STORE/blobs/sha256/HEX`, each written under
//! a temporary name in `STORE/tmp/` and renamed into place once its digest is checked, so a
//! blob in the store is always complete and right, and a killed pull leaves only temporary
//! files that the next pull into the same store removes.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use crate::registry::digest::{Digest, copy_hashing};
use crate::sys::temp;

pub(crate) struct Store {
    root: PathBuf,
}

/// A directory under the store's `tmp/`, removed with everything in it when dropped.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            log::warn!("remove {}: {e}", self.0.display());
        }
    }
}

impl Store {
    /// The store at `root` (created 0700: layers hold process memory), or the default one,
    /// `$XDG_CACHE_HOME/ckpt` (else `~/.cache/ckpt`).
    pub(crate) fn open(root: Option<&Path>) -> Result<Store> {
        let root = match root {
            Some(root) => root.to_path_buf(),
            None => default_root()?,
        };
        for dir in [root.join("blobs/sha256"), root.join("tmp")] {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).at("mkdir", &dir)?;
        }
        let store = Store { root };
        store.remove_stale();
        Ok(store)
    }

    pub(crate) fn blob(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether the store holds this blob, of this size.
    pub(crate) fn has(&self, digest: &Digest, size: u64) -> bool {
        fs::metadata(self.blob(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// A new scratch directory for one push or pull.
    pub(crate) fn scratch(&self) -> Result<Scratch> {
        let dir = self.root.join("tmp").join(String::from_utf8_lossy(&temp::name_for(b"work")).as_ref());
        fs::DirBuilder::new().mode(0o700).create(&dir).at("mkdir", &dir)?;
        Ok(Scratch(dir))
    }

    /// Reads a blob of `size` bytes from `from` into the store, checking its digest and size
    /// as it streams; `fail` words the error. The blob appears only when it is right.
    pub(crate) fn receive(
        &self,
        digest: &Digest,
        size: u64,
        from: &mut dyn Read,
        fail: &dyn Fn(String) -> Error,
    ) -> Result<()> {
        let final_path = self.blob(digest);
        let temp_path = self
            .root
            .join("tmp")
            .join(String::from_utf8_lossy(&temp::name_for(digest.hex().as_bytes())).as_ref());
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp_path)
            .at("create", &temp_path)?;
        let result = copy_hashing(from, &mut file, size)
            .map_err(|e| fail(format!("read failed: {e}")))
            .and_then(|(got, len)| {
                if len != size {
                    Err(fail(format!("{len} bytes received, the manifest says {size}")))
                } else if &got != digest {
                    Err(fail(format!("digest mismatch: received data hashes to {got}")))
                } else {
                    Ok(())
                }
            })
            .and_then(|()| file.sync_all().at("fsync", &temp_path))
            .and_then(|()| fs::rename(&temp_path, &final_path).at("rename", &final_path));
        if result.is_err() {
            let _ = fs::remove_file(&temp_path);
        }
        result
    }

    /// Moves `file` (written under the store's `tmp/`) into the store as a blob; returns its
    /// digest and size.
    pub(crate) fn insert(&self, file: &Path) -> Result<(Digest, u64)> {
        let mut source = File::open(file).at("open", file)?;
        let (digest, size) =
            copy_hashing(&mut source, &mut std::io::sink(), u64::MAX - 1).at("read", file)?;
        let final_path = self.blob(&digest);
        if self.has(&digest, size) {
            fs::remove_file(file).at("unlink", file)?;
        } else {
            fs::rename(file, &final_path).at("rename", &final_path)?;
        }
        Ok((digest, size))
    }

    /// Removes what killed pushes and pulls left in `tmp/`: names whose process is gone.
    fn remove_stale(&self) {
        let tmp = self.root.join("tmp");
        let Ok(entries) = fs::read_dir(&tmp) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = temp::pid_of(name.as_encoded_bytes()) else { continue };
            if !temp::writer_gone(pid) {
                continue;
            }
            let path = entry.path();
            let removed = match entry.metadata() {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
                Ok(m) if m.nlink() > 0 => fs::remove_file(&path),
                _ => continue,
            };
            if let Err(e) = removed {
                log::warn!("remove stale {}: {e}", path.display());
            }
        }
    }
}

fn default_root() -> Result<PathBuf> {
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(cache).join("ckpt"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache/ckpt")),
        None => {
            Err(Error::usage("--store", "neither XDG_CACHE_HOME nor HOME is set: name a store directory"))
        }
    }
}
