//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/HEX`), written
//! so that a reader never sees a partial blob or an index naming a missing one: every file
//! through `sys::outfile` (unnamed until complete and synced, mode 0600: layers hold process
//! memory), `index.json` replaced last.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use crate::registry::client::MAX_MANIFEST;
use crate::registry::digest::Digest;
use crate::sys::outfile::Destination;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub(crate) const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

pub(crate) struct Layout {
    dir: PathBuf,
    reference: String,
}

impl Layout {
    pub(crate) fn new(dir: &Path, reference: &str) -> Layout {
        Layout { dir: dir.to_path_buf(), reference: reference.to_string() }
    }

    fn error(&self, op: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Registry { reference: self.reference.clone(), op: op.into(), reason: reason.into() }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    pub(crate) fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Creates the layout's directories and `oci-layout` if missing.
    pub(crate) fn create(&self) -> Result<()> {
        let blobs = self.dir.join("blobs/sha256");
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&blobs).at("mkdir", &blobs)?;
        let marker = self.dir.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(())
    }

    /// Copies the file `from` in as blob `digest` (a clone where the filesystem shares data).
    pub(crate) fn put_blob(&self, digest: &Digest, from: &Path) -> Result<()> {
        let path = self.blob_path(digest);
        let mut source = File::open(from).at("open", from)?;
        write_private(&path, |mut file| {
            std::io::copy(&mut source, &mut file).map(drop).map_err(|e| Error::Copy {
                from: from.into(),
                to: path.clone(),
                source: e,
            })
        })
    }

    pub(crate) fn put_bytes(&self, digest: &Digest, data: &[u8]) -> Result<()> {
        write_atomic(&self.blob_path(digest), data)
    }

    /// Points `tag` at the manifest `digest` of `size` bytes, replacing the tag's old entry.
    pub(crate) fn tag(&self, tag: &str, digest: &Digest, size: u64) -> Result<()> {
        let index_path = self.dir.join("index.json");
        let mut index = match fs::read(&index_path) {
            Ok(data) => serde_json::from_slice::<serde_json::Value>(&data)
                .map_err(|e| self.error("read index.json", format!("not JSON: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []})
            }
            Err(e) => return Err(Error::io("read", index_path, e)),
        };
        let manifests = index
            .get_mut("manifests")
            .and_then(|m| m.as_array_mut())
            .ok_or_else(|| self.error("read index.json", "no manifests list"))?;
        manifests.retain(|m| {
            m.pointer(&format!("/annotations/{}", REF_NAME.replace('/', "~1"))).and_then(|v| v.as_str())
                != Some(tag)
        });
        manifests.push(serde_json::json!({
            "mediaType": MANIFEST_TYPE,
            "digest": digest.as_str(),
            "size": size,
            "annotations": { REF_NAME: tag },
        }));
        let data = serde_json::to_vec(&index).expect("JSON values serialize");
        write_atomic(&index_path, &data)
    }

    /// The manifest tagged `tag`, its digest checked.
    pub(crate) fn manifest(&self, tag: &str) -> Result<(Vec<u8>, Digest)> {
        let op = "read index.json";
        let index_path = self.dir.join("index.json");
        let index = read_bounded(&index_path, MAX_MANIFEST).map_err(|e| self.error(op, e))?;
        let index: oci_spec::image::ImageIndex =
            serde_json::from_slice(&index).map_err(|e| self.error(op, format!("not an OCI index: {e}")))?;
        let entry = index
            .manifests()
            .iter()
            .find(|m| m.annotations().as_ref().and_then(|a| a.get(REF_NAME)).map(String::as_str) == Some(tag))
            .ok_or_else(|| self.error(op, format!("no manifest tagged {tag:?}")))?;
        let digest = Digest::parse(entry.digest().as_ref()).map_err(|e| self.error(op, e))?;
        let data = self.small_blob(&digest, "read manifest")?;
        Ok((data, digest))
    }

    /// A blob read whole (a manifest or config), bounded, its digest checked.
    pub(crate) fn small_blob(&self, digest: &Digest, op: &str) -> Result<Vec<u8>> {
        let data = read_bounded(&self.blob_path(digest), MAX_MANIFEST).map_err(|e| self.error(op, e))?;
        let got = Digest::of(&data);
        if &got != digest {
            return Err(self.error(op, format!("blob {digest}: digest mismatch: its data hashes to {got}")));
        }
        Ok(data)
    }

    pub(crate) fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path)
            .map_err(|e| self.error(format!("pull blob {digest}"), format!("{}: {e}", path.display())))
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_private(path, |mut file| file.write_all(data).at("write", path))
}

/// Writes `path` with `fill` through an unnamed file that takes the name only once it is
/// complete and synced; a layout's files are regular files, never devices written into.
fn write_private(path: &Path, fill: impl FnOnce(&File) -> Result<()>) -> Result<()> {
    match Destination::open(path)? {
        Destination::Replace(out) => {
            fill(out.file())?;
            out.commit()
        }
        Destination::Stream(_) => {
            Err(Error::unsuitable(path, "not a regular file: refusing to write into it"))
        }
    }
}

fn read_bounded(path: &Path, limit: u64) -> std::result::Result<Vec<u8>, String> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut data))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if data.len() as u64 > limit {
        return Err(format!("{}: larger than {limit} bytes: refused", path.display()));
    }
    Ok(data)
}
