//! Registry repositories and image references, as far as the engine needs them.
//!
//! Images are [`ImageReference`]s from `lifeboat-reference`, the project's one
//! parser (re-exported here); the engine adds only [`RepositoryRef`], a
//! repository without tag or digest (where a copy goes), and the tag naming
//! scheme for digest-only copies.

use std::fmt;

pub use lifeboat_reference::{
    DOCKER_HUB, DOCKER_HUB_API_HOST, ImageReference, ReferenceError, api_host,
};

use crate::Digest;
use crate::error::TransferError;

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

    /// The repository an image lives in.
    pub fn of(image: &ImageReference) -> RepositoryRef {
        RepositoryRef::new(image.registry.clone(), image.repository.clone())
    }

    /// Parses `host[:port]/path` or a Docker Hub short name (`nginx`,
    /// `team/app`) with the shared parser. Tags and digests are not
    /// accepted here.
    pub fn parse(s: &str) -> Result<RepositoryRef, TransferError> {
        let (registry, repository) =
            lifeboat_reference::parse_repository_name(s).map_err(invalid_reference)?;
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

/// The engine's error for a reference the shared parser rejected.
pub fn invalid_reference(error: ReferenceError) -> TransferError {
    TransferError::InvalidReference(error.to_string())
}

/// Parses an image reference with the shared parser, as an engine error:
/// for the engine's own command-line tool and tests.
pub fn parse_image(s: &str) -> Result<ImageReference, TransferError> {
    ImageReference::parse(s).map_err(invalid_reference)
}

/// Whether `tag` is a valid OCI tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    lifeboat_reference::check_tag(tag).is_ok()
}

/// The tag a digest-only copy gets in the target, so that garbage collection
/// and lifecycle rules that sweep untagged manifests leave it alone.
///
/// `lifeboat-sha256-<64 hex>`: deterministic (the same image always gets the
/// same tag, so repeated backups are idempotent), collision-free (the full
/// digest is in it), 80 characters (under the 128 limit), and distinct from
/// the OCI referrers fallback scheme `sha256-<hex>`, which it must not shadow.
pub fn deterministic_tag(digest: &Digest) -> String {
    format!("lifeboat-{}-{}", digest.algorithm(), digest.encoded())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap()
    }

    #[test]
    fn repositories_parse_with_the_shared_rules() {
        assert_eq!(
            RepositoryRef::parse("nginx").unwrap(),
            RepositoryRef::new("docker.io", "library/nginx")
        );
        assert_eq!(
            RepositoryRef::parse("index.docker.io/team/app").unwrap(),
            RepositoryRef::new("docker.io", "team/app")
        );
        let r = RepositoryRef::parse("[::1]:5000/a/b").unwrap();
        assert_eq!(r, RepositoryRef::new("[::1]:5000", "a/b"));
        assert_eq!(r.api_host(), "[::1]:5000");
        assert_eq!(
            RepositoryRef::parse("nginx").unwrap().api_host(),
            "registry-1.docker.io"
        );
        assert_eq!(api_host("index.docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("quay.io"), "quay.io");
        for bad in [
            "ghcr.io/Upper/case",
            "host:5000/",
            "host:5000/a//b",
            "a:1",
            "a@sha256:00",
        ] {
            assert!(
                matches!(
                    RepositoryRef::parse(bad),
                    Err(TransferError::InvalidReference(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn images_parse_with_the_shared_parser() {
        let d = digest();
        let r = parse_image(&format!("127.0.0.1:5000/a/b:v1@{d}")).unwrap();
        assert_eq!(
            RepositoryRef::of(&r),
            RepositoryRef::new("127.0.0.1:5000", "a/b")
        );
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest.as_ref(), Some(&d));
        assert_eq!(
            parse_image("localhost:5000/a").unwrap().to_string(),
            "localhost:5000/a:latest"
        );
        assert!(parse_image("host:5000/a:bad tag").is_err());
        assert!(parse_image("host:5000/a@sha256:short").is_err());
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
