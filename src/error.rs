//! Errors that name what failed: the operation (usually the syscall) and the path or member,
//! with a [`ErrorKind`] a caller can act on (retry, fix the input, fix the call).

use std::io;
use std::path::{Path, PathBuf};

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call on a path failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The operation, usually the system call (`open`, `linkat`, ...).
        op: &'static str,
        /// The path it was made on.
        path: PathBuf,
        /// The error the system returned.
        #[source]
        source: io::Error,
    },
    /// Moving file data from one file into another failed.
    #[error("copy data from {} to {}: {source}", from.display(), to.display())]
    Copy {
        /// The file the data was read from.
        from: PathBuf,
        /// The file it was written to.
        to: PathBuf,
        /// The error the system returned.
        #[source]
        source: io::Error,
    },
    /// The archive is not a well-formed tar at this member.
    #[error("{archive}: {}{reason}", member_at(.member, *.offset), archive = archive.display())]
    Malformed {
        /// The archive.
        archive: PathBuf,
        /// The member's name (lossy UTF-8), empty when no member is concerned.
        member: String,
        /// Where the member's header (or the damage) is.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The archive's content is damaged or is not what its names say: a compressed stream
    /// that does not decode, a `deleted.files` that is not a list of paths.
    #[error("{}: {reason}", archive.display())]
    Damaged {
        /// The archive.
        archive: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A member that would reach outside the destination, or replace existing data.
    #[error("{}: {reason}", path.display())]
    Refused {
        /// The path that was left alone, or the member's path beneath the destination.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A source that changed while it was archived: the archive would not be a snapshot of
    /// it. Archiving it again once it is quiet (a stopped container) succeeds.
    #[error("{}: changed while being archived: {reason}", path.display())]
    Changed {
        /// The file or directory that changed.
        path: PathBuf,
        /// What changed.
        reason: String,
    },
    /// A path the caller named is not what the operation needs: not a directory, not a
    /// checkpoint bundle, an archive without the container's configuration.
    #[error("{}: {reason}", path.display())]
    Unsuitable {
        /// The path.
        path: PathBuf,
        /// What it lacks.
        reason: String,
    },
    /// A bad option, annotation or other argument.
    #[error("{what}: {reason}")]
    Usage {
        /// The option or argument (`--align 3`, `io.ckpt.compress=lz4`, `hook state`).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A container runtime's command failed, or the container is not one ckpt can handle
    /// faithfully.
    #[error("{command}: {reason}")]
    Runtime {
        /// The command line run, or the container concerned.
        command: String,
        /// The runtime's message, or why ckpt refuses.
        reason: String,
    },
    /// The caller cancelled the operation (see [`Importer::cancel_on`](crate::Importer::cancel_on)).
    #[error("{}: {op} cancelled", path.display())]
    Cancelled {
        /// What was being read or written.
        path: PathBuf,
        /// The operation (`import`).
        op: &'static str,
    },
    /// A registry or OCI image layout refused or failed an operation, or served content that
    /// is not what it claims (a digest mismatch, an oversized or malformed manifest).
    #[error("{reference}: {op}: {reason}")]
    Registry {
        /// The image reference (`HOST/REPO:TAG`, `oci:DIR:TAG`).
        reference: String,
        /// The operation (`pull manifest`, `push blob sha256:...`).
        op: String,
        /// What went wrong: the registry's answer, or what is wrong with its content.
        reason: String,
    },
}

/// What a caller can do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A system call failed: see [`Error::raw_os_error`] (ENOSPC, EACCES, ...).
    Io,
    /// The source changed while it was archived: retry once it is quiet.
    SourceChanged,
    /// The archive is malformed, truncated or damaged.
    BadArchive,
    /// A member was refused to protect the destination.
    Refused,
    /// A named path is not what the operation needs.
    Unsuitable,
    /// A bad option or argument: the call must change.
    Usage,
    /// The container runtime failed or cannot do this faithfully.
    Runtime,
    /// A registry (or image layout) failed, refused, or served bad content.
    Registry,
    /// The caller cancelled the operation.
    Cancelled,
}

/// `member "NAME" at offset N: `, or `at offset N: ` where no member is concerned (an empty or
/// truncated archive).
fn member_at(member: &str, offset: u64) -> String {
    if member.is_empty() {
        format!("at offset {offset}: ")
    } else {
        format!("member {member:?} at offset {offset}: ")
    }
}

/// A result whose error is ckpt's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `op` on `path` failed with `source`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: impl Into<io::Error>) -> Self {
        Error::Io { op, path: path.into(), source: source.into() }
    }

    pub(crate) fn refused(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Refused { path: path.into(), reason: reason.into() }
    }

    pub(crate) fn changed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Changed { path: path.into(), reason: reason.into() }
    }

    pub(crate) fn unsuitable(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Unsuitable { path: path.into(), reason: reason.into() }
    }

    pub(crate) fn damaged(archive: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Damaged { archive: archive.into(), reason: reason.into() }
    }

    pub(crate) fn usage(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Usage { what: what.into(), reason: reason.into() }
    }

    /// What a caller can do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } | Error::Copy { .. } => ErrorKind::Io,
            Error::Malformed { .. } | Error::Damaged { .. } => ErrorKind::BadArchive,
            Error::Refused { .. } => ErrorKind::Refused,
            Error::Changed { .. } => ErrorKind::SourceChanged,
            Error::Unsuitable { .. } => ErrorKind::Unsuitable,
            Error::Usage { .. } => ErrorKind::Usage,
            Error::Runtime { .. } => ErrorKind::Runtime,
            Error::Registry { .. } => ErrorKind::Registry,
            Error::Cancelled { .. } => ErrorKind::Cancelled,
        }
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
pub(crate) trait Context<T> {
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
