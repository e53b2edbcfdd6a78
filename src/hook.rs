//! `ckpt hook`: an OCI runtime hook. The runtime passes the container's state JSON on
//! standard input; annotations on the container say what to do: the table is is [`ANNOTATIONS`].
//!
//! `{id}` in a path is replaced by the container's id.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::container::overlay;
use crate::container::podman::{self, Rootfs};
use crate::error::{Error, Result};
use crate::export::{ExportStats, Exporter};
use crate::import::Importer;
use crate::import::stats::ImportStats;
use crate::progress::Progress;
use crate::tar::compress::Compression;

pub(crate) const EXPORT: &str = "io.ckpt.export";
pub(crate) const IMPORT: &str = "io.ckpt.import";
pub(crate) const BUNDLE: &str = "io.ckpt.bundle";
pub(crate) const ROOTFS: &str = "io.ckpt.rootfs";
pub(crate) const ROOTFS_DIFF: &str = "io.ckpt.rootfs-diff";
pub(crate) const LOWER: &str = "io.ckpt.lower";
pub(crate) const COMPRESS: &str = "io.ckpt.compress";
pub(crate) const DIGEST: &str = "io.ckpt.digest";
pub(crate) const OVERWRITE: &str = "io.ckpt.overwrite";
pub(crate) const IGNORE_VOLUMES: &str = "io.ckpt.ignore-volumes";

/// Every annotation the hook reads: its name, its value, and what it does. `ckpt hook
/// --help` prints this; the README's table says the same at length.
pub const ANNOTATIONS: [(&str, &str, &str); 10] = [
    (EXPORT, "ARCHIVE", "once the container has stopped (poststop), archive its checkpoint bundle"),
    (
        IMPORT,
        "ARCHIVE",
        "while it is created (prestart, createRuntime), restore the archive into its bundle and layer",
    ),
    (BUNDLE, "DIR", "the checkpoint bundle, instead of the state's bundle"),
    (ROOTFS, "PATH", "the container's overlay mount, when not root.path of the bundle's config.json"),
    (ROOTFS_DIFF, "DIR", "the layer's diff (upper) dir; wins over io.ckpt.rootfs"),
    (LOWER, "DIR:DIR", "the lower dirs of io.ckpt.rootfs-diff, topmost first (export)"),
    (COMPRESS, "gzip|zstd", "compress the archive (export)"),
    (DIGEST, "sha256", "add the ckpt.sha256 digest manifest (export)"),
    (OVERWRITE, "true", "replace existing entries (import)"),
    (IGNORE_VOLUMES, "true", "leave the named volumes' contents out (export)"),
];

/// The largest state document read from standard input.
pub(crate) const MAX_STATE: u64 = 16 << 20;

/// The OCI runtime state a hook receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookState {
    /// The container's ID.
    pub id: String,
    /// `creating`, `created`, `running` or `stopped`: which hook stage this is.
    pub status: String,
    /// The container's bundle directory.
    pub bundle: PathBuf,
    /// The container's annotations, in the state's order.
    pub annotations: Vec<(String, String)>,
}

impl HookState {
    /// Parses the state JSON (`{"ociVersion", "id", "status", "pid", "bundle",
    /// "annotations"}`).
    pub fn parse(json: &[u8]) -> Result<HookState> {
        let bad = |why: String| Error::usage("hook state on stdin", why);
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| bad(format!("not JSON: {e}")))?;
        let text = |key: &str| -> Result<String> {
            match value.get(key) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(bad(format!("\"{key}\" is not a string"))),
                None => Err(bad(format!("no \"{key}\""))),
            }
        };
        let mut annotations = Vec::new();
        match value.get("annotations") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Object(map)) => {
                for (key, v) in map {
                    let v = v.as_str().ok_or_else(|| bad(format!("annotation {key:?} is not a string")))?;
                    annotations.push((key.clone(), v.to_string()));
                }
            }
            Some(_) => return Err(bad("\"annotations\" is not an object".into())),
        }
        Ok(HookState {
            id: text("id")?,
            status: text("status")?,
            bundle: PathBuf::from(text("bundle")?),
            annotations,
        })
    }

    /// Reads and parses the state from `input` (the runtime's pipe to the hook's stdin).
    pub fn read(input: impl Read) -> Result<HookState> {
        let mut json = Vec::new();
        input
            .take(MAX_STATE + 1)
            .read_to_end(&mut json)
            .map_err(|e| Error::io("read", "<hook state on stdin>", e))?;
        if json.len() as u64 > MAX_STATE {
            return Err(Error::usage("hook state on stdin", format!("more than {MAX_STATE} bytes")));
        }
        HookState::parse(&json)
    }

    /// The value of annotation `key`, if the container has it.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// An annotation naming a path: absolute, with `{id}` replaced.
    fn path(&self, key: &str) -> Result<Option<PathBuf>> {
        let Some(value) = self.annotation(key) else { return Ok(None) };
        let path = PathBuf::from(value.replace("{id}", &self.id));
        if !path.is_absolute() {
            return Err(Error::usage(format!("{key}={}", path.display()), "must be an absolute path"));
        }
        Ok(Some(path))
    }
}

/// What the hook did.
#[derive(Debug, Clone)]
pub enum HookOutcome {
    /// Nothing was asked of this stage (the reason says why).
    Nothing(String),
    /// The checkpoint bundle was archived.
    Exported {
        /// The archive written.
        archive: PathBuf,
        /// What the export did.
        stats: ExportStats,
    },
    /// An archive was restored into the container.
    Imported {
        /// The archive read.
        archive: PathBuf,
        /// The bundle it was restored into.
        dest: PathBuf,
        /// What the import did.
        stats: ImportStats,
    },
}

/// Runs the hook for `state`. Progress receivers are optional.
pub fn run_hook(state: &HookState, progress: Option<std::sync::Arc<dyn Progress>>) -> Result<HookOutcome> {
    let export = state.path(EXPORT)?;
    let import = state.path(IMPORT)?;
    if export.is_none() && import.is_none() {
        return Ok(HookOutcome::Nothing(format!("no {EXPORT} or {IMPORT} annotation")));
    }
    let bundle = state.path(BUNDLE)?.unwrap_or_else(|| state.bundle.clone());
    match state.status.as_str() {
        "stopped" => match export {
            Some(archive) => export_checkpoint(state, &bundle, &archive, progress),
            None => Ok(HookOutcome::Nothing(format!("{IMPORT} acts while the container is created"))),
        },
        "creating" | "created" => match import {
            Some(archive) => import_checkpoint(state, &bundle, &archive),
            None => Ok(HookOutcome::Nothing(format!("{EXPORT} acts once the container has stopped"))),
        },
        other => Ok(HookOutcome::Nothing(format!("nothing to do while the container is {other:?}"))),
    }
}

/// The container's rootfs changes: the annotations, else the bundle's `config.json` root
/// when it is an overlay mount.
fn rootfs(state: &HookState, export: bool) -> Result<Option<Rootfs>> {
    if let Some(upper) = state.path(ROOTFS_DIFF)? {
        let lowers = match (export, state.annotation(LOWER)) {
            (true, Some(list)) => list.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect(),
            _ => Vec::new(),
        };
        return Ok(Some(Rootfs::Diff { upper, lowers }));
    }
    if let Some(mount) = state.path(ROOTFS)? {
        return Ok(Some(Rootfs::Mount(mount)));
    }
    let Some(root) = config_root(&state.bundle)? else { return Ok(None) };
    // Not mounted (podman unmounts the storage before poststop): no rootfs changes.
    Ok(match overlay::find_overlay(&root) {
        Ok(Some(_)) => Some(Rootfs::Mount(root)),
        Ok(None) | Err(_) => {
            log::info!("{}: not an overlay mount: the rootfs changes are left out", root.display());
            None
        }
    })
}

/// `<bundle>/config.json`, the container's OCI runtime spec, if the file exists.
fn read_config(bundle: &Path) -> Result<Option<serde_json::Value>> {
    let config = bundle.join("config.json");
    let data = match std::fs::read(&config) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", &config, e)),
    };
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| Error::unsuitable(&config, format!("not an OCI runtime spec: {e}")))
}

/// `root.path` of `<bundle>/config.json`, relative to the bundle, if the file exists.
fn config_root(bundle: &Path) -> Result<Option<PathBuf>> {
    let Some(value) = read_config(bundle)? else { return Ok(None) };
    let root = value.pointer("/root/path").and_then(|v| v.as_str()).unwrap_or("rootfs");
    Ok(Some(bundle.join(root)))
}

/// The named volumes the container mounts, as the bind mounts of `<bundle>/config.json`
/// whose source is a podman local volume's directory (`…/volumes/NAME/_data`): name and
/// directory. The state names no volumes, so podman's layout is what tells them apart from
/// other bind mounts.
fn config_volumes(bundle: &Path) -> Result<Vec<(String, PathBuf)>> {
    let Some(value) = read_config(bundle)? else { return Ok(Vec::new()) };
    let mounts = value.get("mounts").and_then(|m| m.as_array()).map_or(&[][..], Vec::as_slice);
    Ok(mounts
        .iter()
        .filter_map(|m| m.get("source").and_then(|s| s.as_str()))
        .filter_map(|source| {
            let dir = Path::new(source);
            let name = dir.parent().filter(|_| dir.file_name() == Some("_data".as_ref()))?;
            let volumes = name.parent()?;
            let name = name.file_name()?.to_str()?;
            let is_volume = volumes.file_name() == Some("volumes".as_ref())
                && podman::check_volume_name(name).is_ok()
                && dir.is_dir();
            is_volume.then(|| (name.to_string(), dir.to_path_buf()))
        })
        .collect())
}

fn export_checkpoint(
    state: &HookState,
    bundle: &Path,
    archive: &Path,
    progress: Option<std::sync::Arc<dyn Progress>>,
) -> Result<HookOutcome> {
    if !bundle.join("checkpoint/inventory.img").is_file() {
        return Ok(HookOutcome::Nothing(format!(
            "{}: no checkpoint (checkpoint/inventory.img): the container stopped without one",
            bundle.display()
        )));
    }
    let mut exporter = Exporter::new().bundle_layout(true);
    if let Some(rootfs) = rootfs(state, true)? {
        exporter = exporter.rootfs(rootfs);
    }
    match state.annotation(IGNORE_VOLUMES) {
        None | Some("" | "false") => {
            for (name, dir) in config_volumes(&state.bundle)? {
                exporter = exporter.volume(name, dir);
            }
        }
        Some("true") => {}
        Some(other) => {
            return Err(Error::usage(format!("{IGNORE_VOLUMES}={other}"), "expected true or false"));
        }
    }
    exporter = exporter.compress(match state.annotation(COMPRESS) {
        None | Some("" | "none") => None,
        Some("gzip") => Some(Compression::Gzip),
        Some("zstd") => Some(Compression::Zstd),
        Some(other) => {
            return Err(Error::usage(format!("{COMPRESS}={other}"), "expected gzip, zstd or none"));
        }
    });
    match state.annotation(DIGEST) {
        None | Some("" | "none") => {}
        Some("sha256") => exporter = exporter.digest(true),
        Some(other) => return Err(Error::usage(format!("{DIGEST}={other}"), "expected sha256")),
    }
    if let Some(progress) = progress {
        exporter = exporter.progress(progress);
    }
    if let Some(parent) = archive.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("mkdir", parent, e))?;
    }
    let stats = exporter.export(bundle, archive)?;
    Ok(HookOutcome::Exported { archive: archive.to_path_buf(), stats })
}

fn import_checkpoint(state: &HookState, bundle: &Path, archive: &Path) -> Result<HookOutcome> {
    let overwrite = match state.annotation(OVERWRITE) {
        None | Some("" | "false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Error::usage(format!("{OVERWRITE}={other}"), "expected true or false"));
        }
    };
    // The new container's own userdata files (config.json, ctr.log, ...) are the runtime's.
    let mut importer = Importer::new().overwrite(overwrite).only(podman::RESTORED_MEMBERS);
    if let Some(rootfs) = rootfs(state, false)? {
        importer = importer.rootfs(rootfs);
    }
    let stats = importer.import(archive, bundle)?;
    if !stats.conflicts.is_empty() || !stats.refused.is_empty() || !stats.failed.is_empty() {
        let first = stats
            .conflicts
            .first()
            .map(|p| format!("{} exists", p.display()))
            .or_else(|| stats.refused.first().cloned())
            .or_else(|| stats.failed.first().cloned())
            .unwrap_or_default();
        return Err(Error::refused(
            bundle,
            format!(
                "import incomplete: {} existing entries left untouched, {} members refused, {} failed \
                 (first: {first}); set {OVERWRITE}=true to replace existing entries",
                stats.conflicts.len(),
                stats.refused.len(),
                stats.failed.len()
            ),
        ));
    }
    Ok(HookOutcome::Imported { archive: archive.to_path_buf(), dest: bundle.to_path_buf(), stats })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_state() {
        let state = HookState::parse(
            br#"{"ociVersion":"1.0.2","id":"abc","status":"stopped","pid":0,"bundle":"/b",
                 "annotations":{"io.ckpt.export":"/out/{id}.tar","x":"y"}}"#,
        )
        .unwrap();
        assert_eq!(state.id, "abc");
        assert_eq!(state.bundle, Path::new("/b"));
        assert_eq!(state.path(EXPORT).unwrap(), Some(PathBuf::from("/out/abc.tar")));
        assert_eq!(state.annotation("x"), Some("y"));
        assert!(HookState::parse(br#"{"id":"a","status":"stopped"}"#).is_err());
        assert!(HookState::parse(b"nope").is_err());
        let none = HookState::parse(br#"{"id":"a","status":"stopped","bundle":"/b"}"#).unwrap();
        assert!(matches!(run_hook(&none, None).unwrap(), HookOutcome::Nothing(_)));
    }

    #[test]
    fn relative_paths_refused() {
        let state = HookState::parse(
            br#"{"id":"a","status":"stopped","bundle":"/b","annotations":{"io.ckpt.export":"out.tar"}}"#,
        )
        .unwrap();
        assert!(run_hook(&state, None).is_err());
    }

    #[test]
    fn config_volumes_are_the_bind_mounts_of_podman_local_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["volumes/vol1/_data", "volumes/.hidden/_data", "other/vol2/_data", "volumes/gone"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let source = |rel: &str| root.join(rel).to_str().unwrap().to_string();
        let mounts: Vec<serde_json::Value> = [
            "volumes/vol1/_data",
            "volumes/.hidden/_data",
            "other/vol2/_data",
            "volumes/gone/_data",
            "volumes/vol1",
        ]
        .iter()
        .map(|rel| serde_json::json!({"destination": "/d", "type": "bind", "source": source(rel)}))
        .chain([serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"})])
        .collect();
        let config = serde_json::json!({"root": {"path": "rootfs"}, "mounts": mounts});
        std::fs::write(root.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
        let found = config_volumes(root).unwrap();
        assert_eq!(found, [("vol1".to_string(), root.join("volumes/vol1/_data"))]);
        assert!(config_volumes(&root.join("other")).unwrap().is_empty(), "no config.json: no volumes");
    }

    #[test]
    fn every_annotation_is_in_the_readme_table() {
        let readme = include_str!("../README.md");
        for (name, value, _) in ANNOTATIONS {
            let row = format!("| `{name}={}` |", value.replace('|', "\\|"));
            assert!(readme.contains(&row), "README.md has no row {row}");
        }
    }
}
