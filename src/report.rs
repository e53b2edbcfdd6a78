//! How the stats and reports the library returns serialize (`--json`, and for callers that
//! log them): every number as is, and each list of names as its count, since the names were
//! reported one by one as they happened.

/// Serializes a list as its length.
pub(crate) fn count<T, S: serde::Serializer>(list: &[T], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(list.len() as u64)
}
