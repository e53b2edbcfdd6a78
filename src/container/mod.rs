//! Container facts: overlayfs layers and the checkpoint layout podman and CRI-O use.

pub mod overlay;
pub mod podman;
