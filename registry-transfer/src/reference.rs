//! Registry repositories and image references, as far as the engine needs them.
//!
//! This is deliberately small: `lifeboat_api::reference::ImageReference` is the
//! project-wide type; the engine keeps its own minimal one so that it does not
//! depend on the API crate. Converting between the two is a field copy.

use std::fmt;

use crate::Digest;
use crate::error::TransferError;

/// The canonical name of Docker Hub in references and credentials.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// One repository in one registry, e.g. `registry.example:5000` + `team/app`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryRef {
    /// Registry host with optional port, as written in references
    /// (`docker.io` for Docker Hub).
    pub registry: String,
    /// Repository path inside the registry (`library/nginx` for `nginx`).
    pub repository: String,
}

impl RepositoryRef {
    pub fn new(registry: impl Into<String>, repository: impl Into<String>) -> RepositoryRef {
        RepositoryRef {
            registry: registry.into(),
            repository: repository.into(),
        }
    }

    /// Parses `host[:port]/path` or a Docker Hub short name (`nginx`,
    /// `team/app`). Tags and digests are not accepted here.
    pub fn parse(s: &str) -> Result<RepositoryRef, TransferError> {
        let (registry, repository) = split_registry(s);
        validate_repository(&repository)
            .map_err(|why| TransferError::InvalidReference(format!("{s}: {why}")))?;
        Ok(RepositoryRef {
            registry,
            repository,
        })
    }

    /// The host the registry API is reached at (Docker Hub's differs from
    /// its reference name).
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }
}

impl fmt::Display for RepositoryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

/// The API host for a registry name as written in references (any of
/// Docker Hub's aliases gives its API host).
pub fn api_host(registry: &str) -> &str {
    match registry {
        DOCKER_HUB | "index.docker.io" | DOCKER_HUB_API_HOST => DOCKER_HUB_API_HOST,
        other => other,
    }
}

/// An image in a repository: by tag, by digest, or by both (then the digest
/// wins, and the tag is kept for naming).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub repository: RepositoryRef,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses `[host/]path[:tag][@sha256:hex]`; a reference without tag or
    /// digest means `:latest`, as everywhere else.
    pub fn parse(s: &str) -> Result<ImageRef, TransferError> {
        let invalid = |why: &str| TransferError::InvalidReference(format!("{s}: {why}"));
        let (name, digest) = match s.split_once('@') {
            Some((name, digest)) => (
                name,
                Some(Digest::parse(digest).ok_or_else(|| invalid("invalid digest"))?),
            ),
            None => (s, None),
        };
        // A colon after the last slash is a tag separator; before it, a port.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (
                &name[..last_slash + i],
                Some(name[last_slash + i + 1..].to_owned()),
            ),
            None => (name, None),
        };
        if let Some(tag) = &tag
            && !is_valid_tag(tag)
        {
            return Err(invalid("invalid tag"));
        }
        let repository = RepositoryRef::parse(path)?;
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            _ => tag,
        };
        Ok(ImageRef {
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn split_registry(s: &str) -> (String, String) {
    match s.split_once('/') {
        // The first component is a host if it looks like one: Docker's rule.
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            let registry = match first {
                "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
                other => other.to_owned(),
            };
            let repository = if registry == DOCKER_HUB && !rest.contains('/') {
                format!("library/{rest}")
            } else {
                rest.to_owned()
            };
            (registry, repository)
        }
        Some(_) => (DOCKER_HUB.to_owned(), s.to_owned()),
        None => (DOCKER_HUB.to_owned(), format!("library/{s}")),
    }
}

fn validate_repository(path: &str) -> Result<(), &'static str> {
    if path.is_empty() || path.len() > 255 {
        return Err("repository name must be 1 to 255 characters");
    }
    for component in path.split('/') {
        let bytes = component.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if bytes.is_empty() || !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
            return Err("each path component must start and end with [a-z0-9]");
        }
        if !bytes
            .iter()
            .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err("path components may only contain [a-z0-9._-]");
        }
    }
    Ok(())
}

/// Whether `tag` is a valid OCI tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The tag a digest-only copy gets in the target, so that garbage collection
/// and lifecycle rules that sweep untagged manifests leave it alone.
///
/// `lifeboat-sha256-<64 hex>`: deterministic (the same image always gets the
/// same tag, so repeated backups are idempotent), collision-free (the full
/// digest is in it), 80 characters (under the 128 limit), and distinct from
/// the OCI referrers fallback scheme `sha256-<hex>`, which it must not shadow.
pub fn deterministic_tag(digest: &Digest) -> String {
    format!("lifeboat-{}-{}", digest.algorithm(), digest.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap()
    }

    #[test]
    fn parses_docker_hub_short_names() {
        let r = ImageRef::parse("nginx").unwrap();
        assert_eq!(
            r.repository,
            RepositoryRef::new("docker.io", "library/nginx")
        );
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.repository.api_host(), "registry-1.docker.io");
        assert_eq!(api_host("index.docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("quay.io"), "quay.io");
        let r = ImageRef::parse("index.docker.io/team/app:1.2").unwrap();
        assert_eq!(r.repository, RepositoryRef::new("docker.io", "team/app"));
        assert_eq!(r.tag.as_deref(), Some("1.2"));
    }

    #[test]
    fn parses_ports_tags_and_digests() {
        let d = digest();
        let r = ImageRef::parse(&format!("127.0.0.1:5000/a/b:v1@{d}")).unwrap();
        assert_eq!(r.repository, RepositoryRef::new("127.0.0.1:5000", "a/b"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest.as_ref(), Some(&d));
        let r = ImageRef::parse(&format!("localhost:5000/a@{d}")).unwrap();
        assert_eq!(r.tag, None);
        let r = ImageRef::parse("localhost:5000/a").unwrap();
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.to_string(), "localhost:5000/a:latest");
    }

    #[test]
    fn rejects_invalid_references() {
        assert!(ImageRef::parse("Upper/case").is_err());
        assert!(ImageRef::parse("host:5000/a:bad tag").is_err());
        assert!(ImageRef::parse("host:5000/a@sha256:short").is_err());
        assert!(ImageRef::parse("host:5000/").is_err());
        assert!(ImageRef::parse("host:5000/a//b").is_err());
    }

    #[test]
    fn deterministic_tag_is_stable_valid_and_not_a_referrers_tag() {
        let tag = deterministic_tag(&digest());
        assert_eq!(tag, format!("lifeboat-sha256-{}", "ab".repeat(32)));
        assert!(is_valid_tag(&tag));
        assert!(!tag.starts_with("sha256-"));
        assert_eq!(tag, deterministic_tag(&digest()));
    }
}
