//! The layout of a containers/storage overlay store (podman's `graphroot`): each container's
//! record in `overlay-containers/containers.json`, its userdata dir
//! `overlay-containers/ID/userdata`, its layer's upper dir `overlay/LAYER/diff`, and the
//! images in `overlay-images/images.json`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Context, Error, Result};

/// The largest `containers.json` or `images.json` read (a record is a few hundred bytes).
const MAX_RECORDS: u64 = 64 << 20;

/// A container as its store records it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct StoredContainer {
    pub id: String,
    #[serde(default)]
    pub names: Vec<String>,
    /// The ID of the image its rootfs is made of.
    #[serde(default)]
    pub image: String,
    /// The ID of its own (read-write) layer.
    pub layer: String,
}

impl StoredContainer {
    /// Its userdata dir in the store whose containers directory is `containers`.
    pub(crate) fn userdata(&self, containers: &Path) -> Result<PathBuf> {
        Ok(containers.join(checked_id(&self.id)?).join("userdata"))
    }

    /// Its layer's upper dir in the store whose layers directory is `layers`.
    pub(crate) fn upper(&self, layers: &Path) -> Result<PathBuf> {
        Ok(layers.join(checked_id(&self.layer)?).join("diff"))
    }
}

/// The containers recorded in the store's containers directory `containers`
/// (`GRAPHROOT/overlay-containers`).
pub(crate) fn stored_containers(containers: &Path) -> Result<Vec<StoredContainer>> {
    read_records(&containers.join("containers.json"), "containers")
}

/// The IDs of the images recorded in the store's images directory `images`
/// (`GRAPHROOT/overlay-images`).
pub(crate) fn stored_images(images: &Path) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct StoredImage {
        id: String,
    }
    let records: Vec<StoredImage> = read_records(&images.join("images.json"), "images")?;
    Ok(records.into_iter().map(|image| image.id).collect())
}

/// The records of one of the store's JSON lists (`what`: containers, images).
fn read_records<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<Vec<T>> {
    let file = std::fs::File::open(path).at("open", path)?;
    let len = file.metadata().at("stat", path)?.len();
    if len > MAX_RECORDS {
        return Err(Error::unsuitable(path, format!("{len} bytes: too large for a list of {what}")));
    }
    serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| Error::unsuitable(path, format!("not containers/storage's list of {what}: {e}")))
}

/// An ID used as a path component: containers/storage's are 64 hex digits.
fn checked_id(id: &str) -> Result<&str> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id)
    } else {
        Err(Error::unsuitable(id, "not a containers/storage ID (64 hex digits)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_record_gives_its_userdata_and_upper_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let (id, layer) = ("a".repeat(64), "b".repeat(64));
        let json = format!(
            r#"[{{"id":"{id}","names":["c1"],"image":"{}","layer":"{layer}","metadata":"{{}}","created":"2026-12-02T05:00:00Z"}}]"#,
            "c".repeat(64)
        );
        std::fs::write(dir.path().join("containers.json"), json).unwrap();
        let found = stored_containers(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].names, ["c1"]);
        assert_eq!(
            found[0].userdata(Path::new("/s/oc")).unwrap(),
            Path::new(&format!("/s/oc/{id}/userdata"))
        );
        assert_eq!(
            found[0].upper(Path::new("/s/overlay")).unwrap(),
            Path::new(&format!("/s/overlay/{layer}/diff"))
        );
    }

    #[test]
    fn the_store_lists_its_images_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let json = format!(
            r#"[{{"id":"{}","names":["localhost/bb:latest"]}},{{"id":"{}"}}]"#,
            "d".repeat(64),
            "e".repeat(64)
        );
        std::fs::write(dir.path().join("images.json"), json).unwrap();
        assert_eq!(stored_images(dir.path()).unwrap(), ["d".repeat(64), "e".repeat(64)]);
    }

    #[test]
    fn a_record_whose_layer_is_not_an_id_names_no_directory() {
        let record =
            StoredContainer { id: "a".repeat(64), names: vec![], image: String::new(), layer: "../x".into() };
        assert!(record.upper(Path::new("/s/overlay")).is_err());
    }
}
