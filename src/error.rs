//! Errors that name what failed: the operation (usually the syscall) and the path or member.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on a path failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Moving file data from one file into another failed.
    #[error("copy data from {} to {}: {source}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The archive is not a well-formed tar at this member.
    #[error("{archive}: member {member:?} at offset {offset}: {reason}", archive = archive.display())]
    Malformed { archive: PathBuf, member: String, offset: u64, reason: String },
    /// A member that would reach outside the destination, or replace existing data.
    #[error("{}: {reason}", path.display())]
    Refused { path: PathBuf, reason: String },
    /// A container runtime's command failed, or the container is not one ckpt can handle
    /// faithfully.
    #[error("{command}: {reason}")]
    Runtime { command: String, reason: String },
    /// A source that changed while it was archived, or another input the caller must fix.
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: impl Into<io::Error>) -> Self {
        Error::Io { op, path: path.into(), source: source.into() }
    }

    pub fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Invalid { path: path.into(), reason: reason.into() }
    }

    pub fn refused(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Refused { path: path.into(), reason: reason.into() }
    }

    /// The OS error behind this error, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } | Error::Copy { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Attaches the operation and path to a failed system call.
pub trait Context<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T>;

    /// Like [`Context::at`], for a path that is only built if the call failed (one made per
    /// file on a path that usually succeeds).
    fn at_with(self, op: &'static str, path: impl FnOnce() -> PathBuf) -> Result<T>;
}

impl<T, E: Into<io::Error>> Context<T> for std::result::Result<T, E> {
    fn at(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }

    fn at_with(self, op: &'static str, path: impl FnOnce() -> PathBuf) -> Result<T> {
        self.map_err(|e| Error::io(op, path(), e))
    }
}
