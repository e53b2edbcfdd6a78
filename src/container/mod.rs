//! Container facts: overlayfs layers, the checkpoint layout podman and CRI-O use, and the
//! layout of podman's containers/storage store.

pub(crate) mod overlay;
pub(crate) mod podman;
pub(crate) mod store;
