//! Container facts: overlayfs layers and the checkpoint layout podman and CRI-O use.

pub(crate) mod overlay;
pub(crate) mod podman;
