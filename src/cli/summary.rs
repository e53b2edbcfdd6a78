//! The `--json` summaries commands print on standard output: the library's stats as they
//! serialize, and for `ckpt podman` the container and podman's share of the time.

/// `--json` of an export or import.
pub(crate) fn summary(stats: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(stats).expect("stats serialize")
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
