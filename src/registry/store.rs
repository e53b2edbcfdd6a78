//! The local content-addressed store of layers: `STORE/blobs/sha256/HEX`, each downloaded
//! into `STORE/partial/HEX` (mode 0600, locked while a pull writes it) and renamed into place
//! once its size and digest are checked, so a blob in the store is always complete and right.
//! A killed pull leaves its partial blob, which the next pull resumes from where it ends.
//! `STORE/origins/HEX` lists the `HOST/REPO`s a blob was pulled from or pushed to (newest
//! last), so that a push to another repository of the registry can mount it from there;
//! `STORE/tmp/` holds the work of running pushes and pulls, removed by the next one once its
//! process is gone.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::error::{Context, Error, Result};
use crate::registry::digest::{Digest, Hasher, copy_hashing, copy_into};
use crate::sys::{mount, temp};

/// Opens a blob's data from a byte offset (a Range request, a seek): the stream, and the
/// offset it really starts at (0 when the source ignored the offset and sends everything).
pub(crate) type Fetch<'a> = dyn FnMut(u64) -> Result<(Box<dyn Read + 'a>, u64)> + 'a;

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
    /// The store at `root` (created 0700: layers hold process memory), or the default one for
    /// data that will be cloned to or from `near` (see `default_root`).
    pub(crate) fn open(root: Option<&Path>, near: &Path) -> Result<Store> {
        let root = match root {
            Some(root) => root.to_path_buf(),
            None => default_root(near)?,
        };
        for dir in [root.join("blobs/sha256"), root.join("partial"), root.join("origins"), root.join("tmp")] {
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

    /// A new name in `tmp/`, marked as this process's so that a later run removes it once
    /// the process is gone.
    fn temp_path(&self, stem: &[u8]) -> PathBuf {
        self.root.join("tmp").join(String::from_utf8_lossy(&temp::name_for(stem)).as_ref())
    }

    /// A new scratch directory for one push or pull.
    pub(crate) fn scratch(&self) -> Result<Scratch> {
        let dir = self.temp_path(b"work");
        fs::DirBuilder::new().mode(0o700).create(&dir).at("mkdir", &dir)?;
        Ok(Scratch(dir))
    }

    /// Downloads a blob of `size` bytes into the store with `fetch`, resuming its partial
    /// download if a killed pull left one, checking size and digest over the whole blob; `fail`
    /// words the error. The blob appears only when it is right. Returns the bytes received.
    pub(crate) fn receive(
        &self,
        digest: &Digest,
        size: u64,
        fetch: &mut Fetch<'_>,
        fail: &dyn Fn(String) -> Error,
    ) -> Result<u64> {
        let (file, path, shared) = self.partial(digest)?;
        let mut filled = fill(&file, &path, size, fetch, fail, false);
        // Data kept from an earlier pull is what a mismatch most likely comes from.
        if let Ok(first) = &filled
            && &first.digest != digest
            && first.resumed_from > 0
        {
            let received = first.received;
            filled = fill(&file, &path, size, fetch, fail, true)
                .map(|again| Filled { received: again.received + received, ..again });
        }
        let mut wrong = false;
        let result = filled.and_then(|filled| {
            if &filled.digest != digest {
                wrong = true;
                return Err(fail(format!("digest mismatch: received data hashes to {}", filled.digest)));
            }
            file.sync_all().at("fsync", &path)?;
            let blob = self.blob(digest);
            fs::rename(&path, &blob).at("rename", &blob)?;
            Ok(filled.received)
        });
        // A download cut short stays for the next pull to resume; wrong data never does.
        let keep = shared && !wrong && file.metadata().is_ok_and(|m| m.len() > 0);
        if result.is_err() && !keep {
            let _ = fs::remove_file(&path);
        }
        result
    }

    /// The blob's partial download, opened and locked, and whether it is the shared one that a
    /// later pull resumes; a private temporary file when another pull is writing that one.
    fn partial(&self, digest: &Digest) -> Result<(File, PathBuf, bool)> {
        let path = self.root.join("partial").join(digest.hex());
        let open = |path: &Path, new: bool| {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(!new)
                .create_new(new)
                .mode(0o600)
                .open(path)
                .at("create", path)
        };
        let file = open(&path, false)?;
        let locked = rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok();
        // A pull that finished renamed the file we opened into the store: not ours to append to.
        let still_partial = fs::metadata(&path)
            .is_ok_and(|m| file.metadata().is_ok_and(|f| (f.dev(), f.ino()) == (m.dev(), m.ino())));
        if locked && still_partial {
            return Ok((file, path, true));
        }
        let temp_path = self.temp_path(digest.hex().as_bytes());
        Ok((open(&temp_path, true)?, temp_path, false))
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

    /// The `HOST/REPO`s blob `digest` was pulled from or pushed to, newest last.
    pub(crate) fn origins(&self, digest: &Digest) -> Vec<String> {
        let path = self.root.join("origins").join(digest.hex());
        let mut data = Vec::new();
        match File::open(&path).and_then(|f| f.take(MAX_ORIGINS_FILE).read_to_end(&mut data)) {
            Ok(_) => String::from_utf8_lossy(&data).lines().map(str::to_string).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                log::warn!("read {}: {e}", path.display());
                Vec::new()
            }
        }
    }

    /// Records that blob `digest` is in `origin` (`HOST/REPO`). A hint for later pushes: a
    /// failure to record it is logged, never an error.
    pub(crate) fn add_origin(&self, digest: &Digest, origin: &str) {
        let mut origins = self.origins(digest);
        if origins.last().is_some_and(|o| o == origin) {
            return;
        }
        origins.retain(|o| o != origin);
        origins.push(origin.to_string());
        let keep = origins.len().saturating_sub(MAX_ORIGINS);
        let mut text = origins[keep..].join("\n");
        text.push('\n');
        let path = self.root.join("origins").join(digest.hex());
        let temp = self.temp_path(digest.hex().as_bytes());
        let written = fs::write(&temp, text).and_then(|()| fs::rename(&temp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            log::warn!("record where {digest} is: {}: {e}", path.display());
        }
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

/// Repositories remembered per blob: enough to find one to mount from.
const MAX_ORIGINS: usize = 16;
/// An origins file is read up to this (16 names of at most 255 bytes and a host).
const MAX_ORIGINS_FILE: u64 = 16 << 10;

/// What [`fill`] received.
struct Filled {
    digest: Digest,
    received: u64,
    resumed_from: u64,
}

/// Completes `file` (at `path`) as the blob's `size` bytes: keeps what it holds (unless
/// `from_zero`) and asks `fetch` for the rest; the digest of the whole.
fn fill(
    file: &File,
    path: &Path,
    size: u64,
    fetch: &mut Fetch<'_>,
    fail: &dyn Fn(String) -> Error,
    from_zero: bool,
) -> Result<Filled> {
    let mut have = if from_zero { 0 } else { file.metadata().at("fstat", path)?.len() };
    if have > size {
        have = 0;
    }
    let mut hasher = Hasher::new();
    let mut kept = file;
    kept.seek(SeekFrom::Start(0)).at("seek", path)?;
    let mut sink = std::io::sink();
    if copy_into(&mut kept.take(have), &mut sink, have, &mut hasher).at("read", path)? != have {
        return Err(Error::io("read", path, crate::sys::mover::shrunk()));
    }
    let resumed_from = have;
    if have == size {
        return Ok(Filled { digest: hasher.finish(), received: 0, resumed_from });
    }
    let (mut stream, start) = fetch(have)?;
    if start != have {
        if start != 0 {
            return Err(fail(format!("asked for the data from byte {have}, got it from byte {start}")));
        }
        have = 0;
        hasher = Hasher::new();
    }
    file.set_len(have).at("truncate", path)?;
    let mut out = file;
    out.seek(SeekFrom::Start(have)).at("seek", path)?;
    let received = copy_into(&mut stream, &mut out, size - have, &mut hasher)
        .map_err(|e| fail(format!("read failed: {e}")))?;
    // Too much data is kept too: the next pull sees a file longer than the blob and starts over.
    if have + received != size {
        return Err(fail(format!("{} bytes received, the manifest says {size}", have + received)));
    }
    Ok(Filled { digest: hasher.finish(), received, resumed_from })
}

/// The default store for layers cloned to or from `near`: the user's cache
/// (`$XDG_CACHE_HOME/ckpt`, else `~/.cache/ckpt`) when it is on `near`'s mount, else
/// `.ckpt-store-UID` at the top of that mount, as the freedesktop trash keeps a `.Trash-UID`
/// per mount so that its moves are renames. A clone needs both files on one mount; where the
/// mount's top is not this user's to write, the cache it is, and layers are copied.
fn default_root(near: &Path) -> Result<PathBuf> {
    let cache = user_cache()?;
    let mount = mount::of(near)?;
    if mount::of(&cache)?.id == mount.id {
        return Ok(cache);
    }
    let uid = rustix::process::geteuid().as_raw();
    let local = mount.top.join(format!(".ckpt-store-{uid}"));
    match claim(&local, uid) {
        Ok(()) => Ok(local),
        Err(reason) => {
            log::warn!(
                "layer store {}: {reason}; using {}, on another mount, so layers are copied, not cloned",
                local.display(),
                cache.display()
            );
            Ok(cache)
        }
    }
}

fn user_cache() -> Result<PathBuf> {
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

/// Makes the directory `dir` (0700) unless it exists. One that exists must be a directory,
/// not a link, that only `uid` can enter: a store another user can reach would let them read
/// its layers (process memory) or plant blobs a pull trusts by name.
fn claim(dir: &Path, uid: u32) -> std::result::Result<(), String> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("mkdir: {e}")),
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("stat: {e}"))?;
    if !meta.file_type().is_dir() {
        return Err("exists and is not a directory".into());
    }
    if meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "owned by uid {} with mode {:o}, not private to uid {uid}",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::io::Cursor;

    use super::*;

    fn blob_data() -> Vec<u8> {
        (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    fn fail(reason: String) -> Error {
        Error::Registry { reference: "test".into(), op: "pull blob".into(), reason }
    }

    /// A store holding `partial` as the partial download of `data`'s blob.
    fn store_with_partial(partial: &[u8], data: &[u8]) -> (tempfile::TempDir, Store, Digest) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Some(dir.path()), dir.path()).unwrap();
        let digest = Digest::of(data);
        fs::write(dir.path().join("partial").join(digest.hex()), partial).unwrap();
        (dir, store, digest)
    }

    /// Receives `data`'s blob from a source that honours offsets (or sends everything when
    /// `ignore_range`); the offsets asked for and the bytes received.
    fn receive(store: &Store, digest: &Digest, data: &[u8], ignore_range: bool) -> (Vec<u64>, Result<u64>) {
        let asked = RefCell::new(Vec::new());
        let mut fetch = |offset: u64| {
            asked.borrow_mut().push(offset);
            let start = if ignore_range { 0 } else { offset };
            Ok((Box::new(Cursor::new(data[start as usize..].to_vec())) as Box<dyn Read>, start))
        };
        let got = store.receive(digest, data.len() as u64, &mut fetch, &fail);
        (asked.into_inner(), got)
    }

    #[test]
    fn a_partial_blob_resumes_from_where_it_ends() {
        let data = blob_data();
        let (_dir, store, digest) = store_with_partial(&data[..100_000], &data);
        let (asked, got) = receive(&store, &digest, &data, false);
        assert_eq!((asked, got.unwrap()), (vec![100_000], 200_000));
        assert_eq!(fs::read(store.blob(&digest)).unwrap(), data);
        assert!(!store.root.join("partial").join(digest.hex()).exists());
    }

    #[test]
    fn a_source_that_ignores_the_range_restarts_the_blob_from_byte_0() {
        let data = blob_data();
        let (_dir, store, digest) = store_with_partial(&data[..100_000], &data);
        let (asked, got) = receive(&store, &digest, &data, true);
        assert_eq!((asked, got.unwrap()), (vec![100_000], data.len() as u64));
        assert_eq!(fs::read(store.blob(&digest)).unwrap(), data);
    }

    #[test]
    fn a_partial_blob_with_wrong_data_is_downloaded_again_from_byte_0() {
        let data = blob_data();
        let (_dir, store, digest) = store_with_partial(&[0xee; 100_000], &data);
        let (asked, got) = receive(&store, &digest, &data, false);
        assert_eq!((asked, got.unwrap()), (vec![100_000, 0], 200_000 + data.len() as u64));
        assert_eq!(fs::read(store.blob(&digest)).unwrap(), data);
    }

    #[test]
    fn a_download_cut_short_keeps_its_partial_blob_and_wrong_data_does_not() {
        let data = blob_data();
        let (_dir, store, digest) = store_with_partial(b"", &data);
        let mut cut = |_| Ok((Box::new(Cursor::new(data[..5000].to_vec())) as Box<dyn Read>, 0));
        let e = store.receive(&digest, data.len() as u64, &mut cut, &fail).unwrap_err();
        assert!(e.to_string().contains("5000 bytes received"), "{e}");
        let partial = store.root.join("partial").join(digest.hex());
        assert_eq!(fs::metadata(&partial).unwrap().len(), 5000);
        assert!(!store.has(&digest, data.len() as u64));
        let mut wrong = |_| Ok((Box::new(Cursor::new(vec![1u8; data.len()])) as Box<dyn Read>, 0));
        let e = store.receive(&digest, data.len() as u64, &mut wrong, &fail).unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        assert!(!partial.exists() && !store.has(&digest, data.len() as u64));
    }
}
