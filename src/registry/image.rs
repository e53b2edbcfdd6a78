//! A checkpoint tree as an OCI image: one layer per large file (so a file that did not
//! change between two checkpoints is the same blob) and one for everything else, each an
//! aligned ckpt tar of fixed bytes for a fixed tree; the config, and the manifest with the
//! checkpoint annotations podman, CRI-O and checkpointctl read.

use std::collections::BTreeMap;
use std::fs::{self, File, FileTimes};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::error::{Context, Error, Result};
use crate::export::Exporter;
use crate::registry::digest::Digest;
use crate::registry::layout::MANIFEST_TYPE;
use crate::registry::store::Store;

/// Files at least this large get a layer of their own.
pub(crate) const OWN_LAYER_MIN: u64 = 1 << 20;
/// Fixed, so that layer bytes do not depend on the archive filesystem's block size.
const LAYER_ALIGN: u64 = 4096;
pub(crate) const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The dumps are a few KiB; larger is not a dump.
const MAX_DUMP: u64 = 8 << 20;

pub(crate) struct Image {
    /// Layers in order, then the config: (digest, size) of blobs in the store.
    pub(crate) layers: Vec<(Digest, u64)>,
    pub(crate) config: Vec<u8>,
    pub(crate) config_digest: Digest,
    pub(crate) manifest: Vec<u8>,
}

impl Image {
    /// The digests of every blob the manifest names: the layers, then the config.
    pub(crate) fn blobs(&self) -> impl Iterator<Item = &Digest> {
        self.layers.iter().map(|(digest, _)| digest).chain([&self.config_digest])
    }
}

/// Cuts `tree` (consumed: its large files are moved out) into layers in `store`, using
/// `work` for the layer trees.
pub(crate) fn build(tree: &Path, work: &Path, store: &Store) -> Result<Image> {
    let annotations = annotations(tree)?;
    let (groups, dir_times) = large_files(tree)?;
    let mut layer_trees = own_layers(tree, work, &groups)?;
    for (dir, atime, mtime) in dir_times.iter().rev() {
        set_times(dir, *atime, *mtime)?;
    }
    // The tree's root is a scratch directory made now (podman's archives have no `./`): its
    // time would make every push's last layer new.
    set_times(tree, SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH)?;
    layer_trees.push(tree.to_path_buf());
    let mut layers = Vec::with_capacity(layer_trees.len());
    for (n, root) in layer_trees.iter().enumerate() {
        let tar = work.join(format!("layer-{n}.tar"));
        Exporter::new().align(LAYER_ALIGN).export(root, &tar)?;
        layers.push(store.insert(&tar)?);
    }
    let diff_ids: Vec<&str> = layers.iter().map(|(d, _)| d.as_str()).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": go_arch(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("JSON values serialize");
    let config_digest = Digest::of(&config);
    let layer_descriptors: Vec<Value> = layers
        .iter()
        .map(|(d, size)| json!({"mediaType": LAYER_TYPE, "digest": d.as_str(), "size": size}))
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest.as_str(), "size": config.len()},
        "layers": layer_descriptors,
        "annotations": annotations,
    }))
    .expect("JSON values serialize");
    Ok(Image { layers, config, config_digest, manifest })
}

/// A directory's path with its access and modification times.
type DirTimes = (PathBuf, SystemTime, SystemTime);

/// The files of `tree` large enough for a layer of their own, grouped by inode (hard links
/// travel together) and sorted; and every directory's times, to be put back after the
/// files move out.
fn large_files(tree: &Path) -> Result<(Vec<Vec<PathBuf>>, Vec<DirTimes>)> {
    let mut inodes: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    let mut dir_times = Vec::new();
    for entry in walkdir::WalkDir::new(tree).sort_by_file_name() {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(tree).to_path_buf();
            Error::io("read directory", path, walk_error(e))
        })?;
        let meta = entry.metadata().map_err(|e| Error::io("lstat", entry.path(), walk_error(e)))?;
        if meta.is_dir() {
            dir_times.push((
                entry.path().to_path_buf(),
                meta.accessed().at("stat", entry.path())?,
                meta.modified().at("stat", entry.path())?,
            ));
        } else if meta.is_file() && meta.len() >= OWN_LAYER_MIN {
            let rel = entry.path().strip_prefix(tree).expect("the walk stays below its root").to_path_buf();
            inodes.entry((meta.dev(), meta.ino())).or_default().push(rel);
        }
    }
    let mut groups: Vec<Vec<PathBuf>> = inodes.into_values().collect();
    groups.sort();
    Ok((groups, dir_times))
}

/// The system's error behind a walk error (its errno kept), or the walk's own (a loop).
fn walk_error(e: walkdir::Error) -> std::io::Error {
    let text = e.to_string();
    e.into_io_error().unwrap_or_else(|| std::io::Error::other(text))
}

/// Moves each group of `groups` out of `tree` into a layer tree of its own under `work`,
/// with the directories on the way to it; the layer trees, in order.
fn own_layers(tree: &Path, work: &Path, groups: &[Vec<PathBuf>]) -> Result<Vec<PathBuf>> {
    let layers_dir = work.join("layers");
    fs::DirBuilder::new().mode(0o700).create(&layers_dir).at("mkdir", &layers_dir)?;
    let mut layer_trees = Vec::new();
    for (n, names) in groups.iter().enumerate() {
        let root = layers_dir.join(n.to_string());
        let mut made = vec![root.clone()];
        copy_dir_meta(tree, &root, &mut made)?;
        for rel in names {
            let mut from_dir = tree.to_path_buf();
            let mut to_dir = root.clone();
            for component in rel.parent().into_iter().flat_map(Path::components) {
                from_dir.push(component);
                to_dir.push(component);
                if !to_dir.exists() {
                    copy_dir_meta(&from_dir, &to_dir, &mut made)?;
                }
            }
            let (from, to) = (tree.join(rel), root.join(rel));
            fs::rename(&from, &to).at("rename", &from)?;
        }
        // A layer's directories are only the way to its file: their own metadata comes from
        // the last layer, and a fixed mtime keeps this layer's bytes the same when only the
        // directories changed.
        for dir in made.iter().rev() {
            set_times(dir, SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH)?;
        }
        layer_trees.push(root);
    }
    Ok(layer_trees)
}

/// Creates `to` with `from`'s mode and owner.
fn copy_dir_meta(from: &Path, to: &Path, made: &mut Vec<PathBuf>) -> Result<()> {
    let meta = fs::symlink_metadata(from).at("lstat", from)?;
    fs::DirBuilder::new().mode(meta.mode() & 0o7777).create(to).at("mkdir", to)?;
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777)).at("chmod", to)?;
    let mine = fs::symlink_metadata(to).at("lstat", to)?;
    if (mine.uid(), mine.gid()) != (meta.uid(), meta.gid()) {
        std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())).at("chown", to)?;
    }
    made.push(to.to_path_buf());
    Ok(())
}

fn set_times(dir: &Path, atime: SystemTime, mtime: SystemTime) -> Result<()> {
    let file = File::open(dir).at("open", dir)?;
    file.set_times(FileTimes::new().set_accessed(atime).set_modified(mtime)).at("utimensat", dir)
}

/// Go's name for this machine's architecture, as image configs spell it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn read_dump(path: &Path) -> Result<Option<Value>> {
    let data = match fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() <= MAX_DUMP => fs::read(path).at("read", path)?,
        Ok(m) if m.is_file() => {
            return Err(Error::unsuitable(path, format!("{} bytes: too large for a dump", m.len())));
        }
        _ => return Ok(None),
    };
    serde_json::from_slice(&data).map(Some).map_err(|e| Error::unsuitable(path, format!("not JSON: {e}")))
}

/// The checkpoint annotations, from `config.dump` (libpod's container config) and
/// `spec.dump` (the OCI runtime spec): podman's `io.podman.annotations.checkpoint.*` (its
/// restore takes an image with `...runtime.name` as a checkpoint), CRI-O's and
/// checkpointctl's `org.criu.checkpoint.*`.
fn annotations(tree: &Path) -> Result<BTreeMap<String, String>> {
    let config = read_dump(&tree.join("config.dump"))?.unwrap_or(Value::Null);
    let spec = read_dump(&tree.join("spec.dump"))?.unwrap_or(Value::Null);
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let spec_annotation = |key: &str| spec.get("annotations").and_then(|a| text(a, key));
    let name = text(&config, "name").or_else(|| spec_annotation("io.kubernetes.container.name"));
    let runtime = text(&config, "runtime").or_else(|| text(&config, "ociRuntime")).unwrap_or_default();
    let engine = match spec_annotation("io.container.manager").as_deref() {
        Some("libpod") => Some("podman".to_string()),
        other => other.map(str::to_string),
    };
    let mut out = BTreeMap::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            out.insert(key.to_string(), value);
        }
    };
    let podman = "io.podman.annotations.checkpoint";
    put(&format!("{podman}.name"), name.clone());
    put(&format!("{podman}.rawImageName"), text(&config, "rawImageName"));
    put(&format!("{podman}.rootfsImageID"), text(&config, "rootfsImageID"));
    put(&format!("{podman}.rootfsImageName"), text(&config, "rootfsImageName"));
    put(&format!("{podman}.runtime.name"), Some(runtime.clone()));
    put(&format!("{podman}.host.arch"), Some(go_arch().to_string()));
    put("io.kubernetes.cri-o.annotations.checkpoint.name", name.clone());
    put("org.criu.checkpoint.container.name", name);
    put("org.criu.checkpoint.engine.name", engine);
    put("org.criu.checkpoint.runtime.name", Some(runtime).filter(|r| !r.is_empty()));
    put("org.criu.checkpoint.rootfsImageName", text(&config, "rootfsImageName"));
    put("org.criu.checkpoint.pod.name", spec_annotation("io.kubernetes.pod.name"));
    put("org.criu.checkpoint.pod.namespace", spec_annotation("io.kubernetes.pod.namespace"));
    Ok(out)
}
