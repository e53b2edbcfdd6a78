//! The tar format: reading and validating archives (ustar, pax, GNU, v7), pax records, the
//! compressed wrappings, and the `ckpt.sha256` manifest format. Nothing here knows about
//! files on disk or containers.

pub mod compress;
pub mod manifest;
pub mod pax;
pub mod reader;
