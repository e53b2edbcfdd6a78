//! The `ckpt` binary's command line, over the library.

pub(crate) mod args;
mod bar;
pub(crate) mod commands;
pub(crate) mod registry;
mod summary;
