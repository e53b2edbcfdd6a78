//! The `--json` summaries commands print on standard output.

/// `--json` of an export: what was archived and how much of it was shared.
pub(crate) fn export_summary(stats: &ckpt::ExportStats) -> serde_json::Value {
    serde_json::to_value(stats).expect("stats serialize")
}

/// `--json` of an import: what was restored, and what was not.
pub(crate) fn import_summary(stats: &ckpt::ImportStats) -> serde_json::Value {
    serde_json::json!({
        "entries": stats.entries,
        "files": stats.files,
        "bytes": stats.bytes,
        "bytes_cloned": stats.bytes_cloned,
        "bytes_copied": stats.bytes_copied,
        "seconds": stats.seconds,
        "skipped": stats.skipped.len(),
        "conflicts": stats.conflicts.len(),
        "refused": stats.refused.len(),
        "failed": stats.failed.len(),
    })
}

/// A summary of `ckpt podman`: the export's or import's, with the container and the seconds
/// podman took.
pub(crate) fn with_podman(
    mut summary: serde_json::Value,
    container: &str,
    podman_seconds: f64,
) -> serde_json::Value {
    summary["container"] = container.into();
    summary["podman_seconds"] = podman_seconds.into();
    summary
}
