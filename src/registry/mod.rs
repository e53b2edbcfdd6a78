//! Checkpoints through OCI registries and image layouts: `push` cuts a checkpoint into
//! layers (see `image`) and uploads what the target lacks; `pull` downloads what the local
//! store lacks, checking every digest as it streams, and writes an aligned ckpt archive (or
//! restores it) only once everything is complete.

mod client;
mod digest;
mod image;
mod layout;
mod reference;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

pub use client::Access;
pub use reference::{Reference, Version};

use crate::container::podman::{BUNDLE_MEMBERS, LEADING};
use crate::error::{Error, Result};
use crate::export::Exporter;
use crate::import::Importer;
use crate::import::stats::ImportStats;
use client::{Client, MAX_MANIFEST};
use digest::Digest;
use layout::{Layout, MANIFEST_TYPE};
use store::Store;

/// What a push moved.
#[derive(Debug, Clone, Serialize)]
pub struct PushStats {
    /// The manifest's digest (`sha256:...`).
    pub digest: String,
    /// Bytes of blobs uploaded (layers and config; the manifest not counted).
    pub bytes_uploaded: u64,
    /// Blobs uploaded.
    pub blobs_uploaded: u64,
    /// Blobs the target already had.
    pub blobs_skipped: u64,
    /// Blobs the registry mounted from another of its repositories instead of an upload.
    pub blobs_mounted: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// What a pull moved.
#[derive(Debug, Clone, Serialize)]
pub struct PullStats {
    /// The manifest's digest.
    pub digest: String,
    /// Bytes of layers downloaded.
    pub bytes_downloaded: u64,
    /// Layers downloaded.
    pub blobs_downloaded: u64,
    /// Layers the local store already had.
    pub blobs_reused: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Pushes and pulls checkpoint images.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    access: Access,
    store: Option<PathBuf>,
}

/// Where blobs go and come from: a registry, or a layout directory.
enum Target {
    Registry(Client, Version),
    Layout(Layout, String),
}

impl Registry {
    /// Anonymous HTTPS access and the default store.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// How registries are reached and authenticated to.
    pub fn access(mut self, access: Access) -> Registry {
        self.access = access;
        self
    }

    /// The content-addressed store of layers. By default it is `$XDG_CACHE_HOME/ckpt` (else
    /// `~/.cache/ckpt`) when that is on the mount of the push's source or the pull's output,
    /// else `.ckpt-store-UID` at the top of that mount, so that layers are cloned, not copied.
    pub fn store(mut self, dir: impl Into<PathBuf>) -> Registry {
        self.store = Some(dir.into());
        self
    }

    /// Where `reference` is; `push` names the repositories blobs may be mounted from.
    fn target(&self, reference: &Reference, push: Option<&[String]>) -> Result<Target> {
        let text = reference.to_string();
        Ok(match reference {
            Reference::Registry { host, repo, version } => {
                Target::Registry(Client::connect(host, repo, &text, &self.access, push)?, version.clone())
            }
            Reference::Layout { dir, tag } => Target::Layout(Layout::new(dir, &text), tag.clone()),
        })
    }

    /// Pushes `src` (a ckpt or podman checkpoint archive, or a checkpoint bundle directory,
    /// archived by `exporter` in podman's layout) as the image `reference`.
    pub fn push(&self, src: &Path, reference: &Reference, exporter: Exporter) -> Result<PushStats> {
        let started = Instant::now();
        let store = Store::open(self.store.as_deref(), src)?;
        let work = store.scratch()?;
        let archive = if std::fs::metadata(src).map_err(|e| Error::io("stat", src, e))?.is_dir() {
            let archive = work.path().join("bundle.tar");
            exporter.bundle_layout(true).export(src, &archive)?;
            archive
        } else {
            src.to_path_buf()
        };
        let tree = work.path().join("tree");
        let imported = Importer::new().import(&archive, &tree)?;
        complete(&imported, &archive)?;
        let image = image::build(&tree, work.path(), &store)?;
        let mounts = mount_sources(&store, &image, reference);
        let repos: BTreeSet<String> = mounts.values().cloned().collect();
        let target = self.target(reference, Some(&repos.into_iter().collect::<Vec<_>>()))?;
        let manifest_digest = Digest::of(&image.manifest);
        let mut stats = PushStats {
            digest: manifest_digest.to_string(),
            bytes_uploaded: 0,
            blobs_uploaded: 0,
            blobs_skipped: 0,
            blobs_mounted: 0,
            seconds: 0.0,
        };
        let config = work.path().join("config.json");
        std::fs::write(&config, &image.config).map_err(|e| Error::io("write", &config, e))?;
        match &target {
            Target::Registry(client, version) => {
                let tag = match version {
                    Version::Tag(tag) => tag,
                    Version::Digest(_) => {
                        return Err(Error::usage(
                            format!("image reference {reference}"),
                            "push needs a tag, not a digest",
                        ));
                    }
                };
                let has = |digest: &Digest, _size| client.has_blob(digest);
                let mut put = |digest: &Digest, path: &Path| {
                    client.push_blob(digest, path, mounts.get(digest).map(String::as_str))
                };
                send_blobs(&image, &store, &config, &mut stats, &has, &mut put)?;
                client.push_manifest(tag, &image.manifest, MANIFEST_TYPE)?;
                record_origins(&store, &image, reference);
            }
            Target::Layout(layout, tag) => {
                layout.create()?;
                let has = |digest: &Digest, size| Ok(layout.has_blob(digest, size));
                let mut put = |digest: &Digest, path: &Path| layout.put_blob(digest, path).map(|()| false);
                send_blobs(&image, &store, &config, &mut stats, &has, &mut put)?;
                layout.put_bytes(&manifest_digest, &image.manifest)?;
                layout.tag(tag, &manifest_digest, image.manifest.len() as u64)?;
            }
        }
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Pulls `reference` and writes it to `out` as an aligned ckpt archive (mode 0600), which
    /// appears only when complete.
    pub fn pull(&self, reference: &Reference, out: &Path) -> Result<PullStats> {
        let (stats, _work, tree) = self.pull_tree(reference, out)?;
        export_tree(&tree, out)?;
        Ok(stats)
    }

    /// Pulls `reference` and restores it into `dest` with `importer`; nothing is written under
    /// `dest` before every layer is downloaded and checked.
    pub fn pull_import(
        &self,
        reference: &Reference,
        dest: &Path,
        importer: Importer,
    ) -> Result<(PullStats, ImportStats)> {
        let (stats, work, tree) = self.pull_tree(reference, dest)?;
        let archive = work.path().join("pulled.tar");
        export_tree(&tree, &archive)?;
        let imported = importer.import(&archive, dest)?;
        Ok((stats, imported))
    }

    /// Downloads the image's missing layers into the store and unions its layers into a tree
    /// in a scratch directory.
    fn pull_tree(&self, reference: &Reference, near: &Path) -> Result<(PullStats, store::Scratch, PathBuf)> {
        let started = Instant::now();
        let store = Store::open(self.store.as_deref(), near)?;
        let target = self.target(reference, None)?;
        let text = reference.to_string();
        let bad = |op: &str, reason: String| Error::Registry {
            reference: text.clone(),
            op: op.to_string(),
            reason,
        };
        let (manifest, digest) = target.manifest(&bad)?;
        let manifest: oci_spec::image::ImageManifest = serde_json::from_slice(&manifest)
            .map_err(|e| bad("pull manifest", format!("not an OCI image manifest: {e}")))?;
        let mut stats = PullStats {
            digest: digest.to_string(),
            bytes_downloaded: 0,
            blobs_downloaded: 0,
            blobs_reused: 0,
            seconds: 0.0,
        };
        let mut layers = Vec::with_capacity(manifest.layers().len());
        for layer in manifest.layers() {
            let digest = Digest::parse(layer.digest().as_ref()).map_err(|e| bad("pull manifest", e))?;
            let size = layer.size();
            if store.has(&digest, size) {
                stats.blobs_reused += 1;
            } else {
                let op = format!("pull blob {digest}");
                let received = target.download(&store, &digest, size, &|reason| bad(&op, reason))?;
                stats.blobs_downloaded += 1;
                stats.bytes_downloaded += received;
            }
            if let Some(here) = origin(reference) {
                store.add_origin(&digest, &here);
            }
            layers.push(digest);
        }
        let work = store.scratch()?;
        let tree = work.path().join("tree");
        // Later layers win, as in any image; directories merge.
        for digest in &layers {
            let blob = store.blob(digest);
            let imported = Importer::new().overwrite(true).import(&blob, &tree)?;
            complete(&imported, &blob)?;
        }
        stats.seconds = started.elapsed().as_secs_f64();
        Ok((stats, work, tree))
    }
}

impl Target {
    /// The image manifest (an index resolved to this platform's entry) and its digest,
    /// checked against the digest the reference names; `bad` words the errors.
    fn manifest(&self, bad: &dyn Fn(&str, String) -> Error) -> Result<(Vec<u8>, Digest)> {
        let (client, version) = match self {
            Target::Registry(client, version) => (client, version),
            Target::Layout(layout, tag) => return layout.manifest(tag),
        };
        let wanted = match version {
            Version::Tag(tag) => tag,
            Version::Digest(d) => d,
        };
        let (mut data, media_type) = client.manifest(wanted)?;
        if is_index(&data, &media_type) {
            let chosen = choose_from_index(&data).map_err(|e| bad("pull manifest", e))?;
            data = client.manifest(chosen.as_str())?.0;
            check_digest(&data, &chosen).map_err(|e| bad("pull manifest", e))?;
        } else if let Version::Digest(d) = version {
            let d = Digest::parse(d).map_err(|e| bad("pull manifest", e))?;
            check_digest(&data, &d).map_err(|e| bad("pull manifest", e))?;
        }
        let digest = Digest::of(&data);
        Ok((data, digest))
    }

    /// Downloads blob `digest` of `size` bytes into `store`, resuming a partial download
    /// (a Range request, a seek); the bytes received.
    fn download(
        &self,
        store: &Store,
        digest: &Digest,
        size: u64,
        fail: &dyn Fn(String) -> Error,
    ) -> Result<u64> {
        match self {
            Target::Registry(client, _) => {
                let mut fetch = |offset| {
                    client.blob(digest, offset).map(|(r, start)| (Box::new(r) as Box<dyn Read>, start))
                };
                store.receive(digest, size, &mut fetch, fail)
            }
            Target::Layout(layout, _) => {
                let mut fetch = |offset| {
                    let mut file = layout.open_blob(digest)?;
                    file.seek(SeekFrom::Start(offset)).map_err(|e| fail(format!("seek: {e}")))?;
                    Ok((Box::new(file) as Box<dyn Read>, offset))
                };
                store.receive(digest, size, &mut fetch, fail)
            }
        }
    }
}

/// An import that left something out is not the checkpoint.
fn complete(stats: &ImportStats, archive: &Path) -> Result<()> {
    let left_out = stats.conflicts.len() + stats.refused.len() + stats.failed.len() + stats.skipped.len();
    if left_out > 0 {
        return Err(Error::damaged(archive, format!("{left_out} members could not be restored")));
    }
    Ok(())
}

/// The tree as an archive: in podman's layout when it is a checkpoint bundle that holds
/// nothing but the members that layout takes (it leaves other names out); otherwise every
/// entry, as `ckpt export` writes a directory.
fn export_tree(tree: &Path, out: &Path) -> Result<()> {
    let bundle = tree.join("checkpoint/inventory.img").is_file() && only_bundle_members(tree)?;
    Exporter::new().bundle_layout(bundle).export(tree, out).map(drop)
}

fn only_bundle_members(tree: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    for entry in std::fs::read_dir(tree).map_err(|e| Error::io("read directory", tree, e))? {
        let name = entry.map_err(|e| Error::io("read directory", tree, e))?.file_name();
        let name = name.as_bytes();
        if !BUNDLE_MEMBERS.contains(&name) && !LEADING.contains(&name) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn is_index(data: &[u8], media_type: &str) -> bool {
    if media_type.contains("index") || media_type.contains("manifest.list") {
        return true;
    }
    serde_json::from_slice::<serde_json::Value>(data).is_ok_and(|v| v.get("manifests").is_some())
}

/// The index's manifest for this machine's platform (or its only one).
fn choose_from_index(data: &[u8]) -> std::result::Result<Digest, String> {
    let index: oci_spec::image::ImageIndex =
        serde_json::from_slice(data).map_err(|e| format!("not an OCI image index: {e}"))?;
    let manifests = index.manifests();
    let arch = oci_spec::image::Arch::default();
    let chosen = manifests
        .iter()
        .find(|m| m.platform().as_ref().is_some_and(|p| p.architecture() == &arch))
        .or_else(|| (manifests.len() == 1).then(|| &manifests[0]))
        .ok_or_else(|| "the index has no manifest for this platform".to_string())?;
    if chosen.size() > MAX_MANIFEST {
        return Err(format!("manifest of {} bytes: refused", chosen.size()));
    }
    Digest::parse(chosen.digest().as_ref())
}

fn check_digest(data: &[u8], expected: &Digest) -> std::result::Result<(), String> {
    let got = Digest::of(data);
    if &got != expected {
        return Err(format!("digest mismatch: expected {expected}, the data hashes to {got}"));
    }
    Ok(())
}

/// `HOST/REPO` of a registry reference: what the store records blobs as being in.
fn origin(reference: &Reference) -> Option<String> {
    match reference {
        Reference::Registry { host, repo, .. } => Some(format!("{host}/{repo}")),
        Reference::Layout { .. } => None,
    }
}

/// Records in the store that every blob of `image` is in the repository `reference` names.
fn record_origins(store: &Store, image: &image::Image, reference: &Reference) {
    if let Some(here) = origin(reference) {
        for digest in image.blobs() {
            store.add_origin(digest, &here);
        }
    }
}

/// For each blob of `image` that the store saw in another repository of the registry
/// `reference` names, the newest such repository: where a push may mount it from.
fn mount_sources(store: &Store, image: &image::Image, reference: &Reference) -> BTreeMap<Digest, String> {
    let Reference::Registry { host, repo, .. } = reference else { return BTreeMap::new() };
    let prefix = format!("{host}/");
    image
        .blobs()
        .filter_map(|digest| {
            let from = store.origins(digest).into_iter().rev().find_map(|o| {
                let other = o.strip_prefix(&prefix)?;
                (other != repo && reference::check_repo(other).is_ok()).then(|| other.to_string())
            })?;
            Some((digest.clone(), from))
        })
        .collect()
}

/// Sends the blobs of `image` the target lacks (`has` says which it has): each layer from
/// the store, then the config from `config`, with `put`, which says whether the registry
/// mounted the blob instead; counted in `stats`.
fn send_blobs(
    image: &image::Image,
    store: &Store,
    config: &Path,
    stats: &mut PushStats,
    has: &dyn Fn(&Digest, u64) -> Result<bool>,
    put: &mut dyn FnMut(&Digest, &Path) -> Result<bool>,
) -> Result<()> {
    let config_blob: (Digest, PathBuf, u64) =
        (image.config_digest.clone(), config.to_path_buf(), image.config.len() as u64);
    let layers = image.layers.iter().map(|(digest, size)| (digest.clone(), store.blob(digest), *size));
    for (digest, path, size) in layers.chain([config_blob]) {
        if has(&digest, size)? {
            stats.blobs_skipped += 1;
        } else if put(&digest, &path)? {
            stats.blobs_mounted += 1;
        } else {
            stats.blobs_uploaded += 1;
            stats.bytes_uploaded += size;
        }
    }
    Ok(())
}
