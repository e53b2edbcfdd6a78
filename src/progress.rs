//! Progress reporting, for callers that show a bar or log throughput.

use std::fmt;
use std::sync::Arc;

/// Receives progress of an export or import. Called from the thread doing the work.
pub trait Progress: Send + Sync {
    /// The work begins; `total` bytes of file data will be moved.
    fn start(&self, total: u64) {
        let _ = total;
    }
    /// `bytes` more bytes of file data were moved.
    fn advance(&self, bytes: u64);
    /// The work is over (successfully or not).
    fn finish(&self) {}
}

/// A shared progress receiver, as the builders hold it.
#[derive(Clone)]
pub(crate) struct ProgressHandle(pub Arc<dyn Progress>);

impl fmt::Debug for ProgressHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProgressHandle")
    }
}
