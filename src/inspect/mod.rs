//! Looking into archives without restoring them: `list` (every member with its data offset
//! and alignment, headers only; `present` is how a member looks as a line of text) and
//! `verify` (structure, end-of-archive blocks, alignment, and the `ckpt.sha256` digest
//! manifest when the archive carries one), and `member` (one member's data by name).

mod list;
pub(crate) mod member;
mod present;
mod verify;

pub use list::{ListEntry, ListOptions, list};
pub use member::read_member;
pub use verify::{Problem, VerifyProgress, VerifyReport, verify, verify_headers};
