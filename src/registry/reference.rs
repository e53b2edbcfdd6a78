//! Image references: `HOST[:PORT]/REPO[:TAG|@DIGEST]` for a registry and `oci:DIR[:TAG]` for
//! an OCI image layout directory, as skopeo spells them.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::registry::digest::Digest;

/// Where an image is, and which one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// An image in a registry.
    Registry {
        /// `HOST` or `HOST:PORT`.
        host: String,
        /// The repository path (`team/app`).
        repo: String,
        /// A tag or a manifest digest.
        version: Version,
    },
    /// An image in an OCI image layout directory, named by its `org.opencontainers.image.ref.name`.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// The tag (`latest` when the reference has none).
        tag: String,
    },
}

/// A registry image's tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// A tag (`latest` when the reference has none).
    Tag(String),
    /// A manifest digest (`sha256:...`).
    Digest(String),
}

const DEFAULT_TAG: &str = "latest";

impl Reference {
    /// Parses `text`; an error of kind `Usage` names it and what is wrong.
    pub fn parse(text: &str) -> Result<Reference> {
        let bad = |reason: &str| Error::usage(format!("image reference {text:?}"), reason);
        if let Some(rest) = text.strip_prefix("oci:") {
            // A tag never holds '/', so a ':' after the last '/' separates it.
            let (dir, tag) = match rest.rfind(':') {
                Some(at) if !rest[at..].contains('/') => (&rest[..at], &rest[at + 1..]),
                _ => (rest, DEFAULT_TAG),
            };
            if dir.is_empty() {
                return Err(bad("no directory after oci:"));
            }
            check_tag(tag).map_err(bad)?;
            return Ok(Reference::Layout { dir: PathBuf::from(dir), tag: tag.to_string() });
        }
        let text_no_scheme = text.strip_prefix("docker://").unwrap_or(text);
        let (host, path) = text_no_scheme
            .split_once('/')
            .ok_or_else(|| bad("expected HOST[:PORT]/REPO[:TAG|@DIGEST] or oci:DIR[:TAG]"))?;
        check_host(host).map_err(bad)?;
        let (repo, version) = if let Some((repo, digest)) = path.split_once('@') {
            Digest::parse(digest).map_err(|e| bad(&e))?;
            (repo, Version::Digest(digest.to_string()))
        } else {
            match path.rfind(':') {
                Some(at) if !path[at..].contains('/') => {
                    let tag = &path[at + 1..];
                    check_tag(tag).map_err(bad)?;
                    (&path[..at], Version::Tag(tag.to_string()))
                }
                _ => (path, Version::Tag(DEFAULT_TAG.to_string())),
            }
        };
        check_repo(repo).map_err(bad)?;
        Ok(Reference::Registry { host: host.to_string(), repo: repo.to_string(), version })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Registry { host, repo, version: Version::Tag(tag) } => {
                write!(f, "{host}/{repo}:{tag}")
            }
            Reference::Registry { host, repo, version: Version::Digest(d) } => write!(f, "{host}/{repo}@{d}"),
            Reference::Layout { dir, tag } => write!(f, "oci:{}:{tag}", dir.display()),
        }
    }
}

/// The distribution spec's tag grammar: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn check_tag(tag: &str) -> std::result::Result<(), &'static str> {
    let mut bytes = tag.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !first_ok || tag.len() > 128 || !bytes.all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err("a tag is 1-128 of [A-Za-z0-9._-], not starting with '.' or '-'");
    }
    Ok(())
}

/// Path components of lowercase alphanumerics joined by `.`, `_`, `__`, `-`s, as the
/// distribution spec allows: also what keeps a repository name from smuggling URL syntax.
pub(crate) fn check_repo(repo: &str) -> std::result::Result<(), &'static str> {
    const BAD: &str = "a repository is '/'-separated components of [a-z0-9] joined by '.', '_', '__' or '-'";
    if repo.is_empty() || repo.len() > 255 {
        return Err(BAD);
    }
    for component in repo.split('/') {
        let bytes = component.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if bytes.is_empty() || !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
            return Err(BAD);
        }
        if !bytes.iter().all(|b| alnum(b) || b"._-".contains(b)) {
            return Err(BAD);
        }
        let separators_ok =
            component.split(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()).all(|sep| {
                sep.is_empty() || sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')
            });
        if !separators_ok {
            return Err(BAD);
        }
    }
    Ok(())
}

/// A DNS name or IPv4 address with an optional port; no user info, path or query.
fn check_host(host: &str) -> std::result::Result<(), &'static str> {
    const BAD: &str = "the registry host must be HOST or HOST:PORT (letters, digits, '.', '-')";
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
        return Err(BAD);
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(BAD);
    }
    // `repo:tag` alone (no host) would otherwise read as a host "repo" and a path.
    if port.is_none() && !name.contains('.') && name != "localhost" {
        return Err("the first component must name the registry (a host with a '.', a port, or localhost)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(text: &str) -> (String, String, Version) {
        match Reference::parse(text).unwrap() {
            Reference::Registry { host, repo, version } => (host, repo, version),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn a_host_with_a_port_a_nested_repo_and_a_tag_parse() {
        let (host, repo, version) = registry("127.0.0.1:5000/team/app:v1.2");
        assert_eq!((host.as_str(), repo.as_str()), ("127.0.0.1:5000", "team/app"));
        assert_eq!(version, Version::Tag("v1.2".into()));
    }

    #[test]
    fn a_reference_without_a_tag_means_latest() {
        assert_eq!(registry("quay.io/app").2, Version::Tag("latest".into()));
    }

    #[test]
    fn a_digest_reference_parses() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(registry(&format!("localhost/app@{digest}")).2, Version::Digest(digest));
    }

    #[test]
    fn an_oci_layout_with_and_without_a_tag_parses() {
        assert_eq!(
            Reference::parse("oci:/tmp/x:cp1").unwrap(),
            Reference::Layout { dir: "/tmp/x".into(), tag: "cp1".into() }
        );
        assert_eq!(
            Reference::parse("oci:rel/dir").unwrap(),
            Reference::Layout { dir: "rel/dir".into(), tag: "latest".into() }
        );
    }

    #[test]
    fn bad_references_are_usage_errors_naming_the_reference() {
        for text in [
            "app:latest",
            "quay.io/App",
            "quay.io/app:-x",
            "quay.io/app@sha256:xyz",
            "user@quay.io/app",
            "quay.io:99999/app",
            "quay.io/a//b",
            "oci:",
            "oci:dir:bad tag",
        ] {
            let e = Reference::parse(text).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Usage, "{text}");
            assert!(e.to_string().contains(&format!("{text:?}")), "{text}: {e}");
        }
    }
}
