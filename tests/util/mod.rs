//! Helpers shared by every area of the test crate, by concern. Everything is re-exported
//! here: areas `use crate::util::*` or name `util::helper`.
//!
//! All helpers panic with a message naming the path or command on failure.

mod bundle;
mod cli;
mod fs;
mod podman;
mod skip;
mod tar;
mod tree;

pub use self::bundle::*;
pub use self::cli::*;
pub use self::fs::*;
pub use self::podman::*;
pub use self::skip::*;
pub use self::tar::*;
pub use self::tree::*;
