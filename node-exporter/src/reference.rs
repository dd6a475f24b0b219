//! What to export (a reference or a bare digest, as the kubelet reports
//! them) and where to push it. References themselves are the shared
//! `registry_transfer::ImageRef`.

use std::fmt;

use registry_transfer::{Digest, ImageRef, RepositoryRef, TransferError};

use crate::error::Error;

/// What the user (or the pod's `imageID`) asked to export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// A bare digest: an index, a manifest, or an image config (the CRI
    /// "image ID").
    Digest(Digest),
    Reference(ImageRef),
}

impl Query {
    pub fn parse(input: &str) -> Result<Query, Error> {
        // The kubelet reports dockershim-era IDs with a scheme prefix.
        let input = input
            .trim()
            .trim_start_matches("docker-pullable://")
            .trim_start_matches("docker://");
        if input.starts_with("sha256:") || input.starts_with("sha512:") {
            return Digest::parse(input)
                .map(Query::Digest)
                .ok_or_else(|| invalid(input, "malformed digest"));
        }
        parse_reference(input).map(Query::Reference)
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Query::Digest(digest) => digest.fmt(f),
            Query::Reference(reference) => reference.fmt(f),
        }
    }
}

/// Parses and normalises like the kubelet does (`nginx` becomes
/// `docker.io/library/nginx:latest`), with the shared registry library's
/// parser, so node-exporter names images exactly as the operator does.
pub fn parse_reference(input: &str) -> Result<ImageRef, Error> {
    ImageRef::parse(input).map_err(|error| match error {
        TransferError::InvalidReference(reason) => invalid(input, &reason),
        other => invalid(input, &other.to_string()),
    })
}

fn invalid(reference: &str, reason: &str) -> Error {
    Error::InvalidReference {
        reference: reference.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Where to push an image that came out of containerd.
///
/// `explicit` is the `=DEST` part of an `--image SRC=DEST` argument; without
/// it the image goes to `target_registry` (host plus optional path prefix),
/// and without that back to where it came from: the point of node-exporter
/// is restoring a registry that lost the image.
pub fn map_target(
    source: &ImageRef,
    explicit: Option<&str>,
    target_registry: Option<&str>,
) -> Result<ImageRef, Error> {
    let mut target = match (explicit, target_registry) {
        (Some(dest), _) => {
            let mut dest = parse_reference(dest)?;
            if dest.digest.is_some() {
                return Err(invalid(&dest.to_string(), "a target cannot name a digest"));
            }
            // "latest" was only filled in by normalisation: the source's tag
            // is what the user meant.
            if !has_explicit_tag(explicit.unwrap_or_default()) {
                dest.tag = source.tag.clone();
            }
            dest
        }
        (None, Some(registry)) => {
            let registry = registry.trim_end_matches('/');
            let (host, prefix) = match registry.split_once('/') {
                Some((host, prefix)) => (host, Some(prefix)),
                None => (registry, None),
            };
            ImageRef {
                repository: RepositoryRef::new(
                    host,
                    match prefix {
                        Some(prefix) => format!("{prefix}/{}", source.repository.repository),
                        None => source.repository.repository.clone(),
                    },
                ),
                tag: source.tag.clone(),
                digest: None,
            }
        }
        (None, None) => ImageRef {
            digest: None,
            ..source.clone()
        },
    };
    target.digest = None;
    Ok(target)
}

fn has_explicit_tag(reference: &str) -> bool {
    let name = reference.split('@').next().unwrap_or_default();
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    name[last_slash..].contains(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest::parse(&format!("sha256:{}", "b".repeat(64))).unwrap()
    }

    #[test]
    fn normalises_docker_hub_short_names() {
        let r = parse_reference("nginx").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/nginx:latest");
        let r = parse_reference("bitnami/redis:7").unwrap();
        assert_eq!(r.to_string(), "docker.io/bitnami/redis:7");
    }

    #[test]
    fn registry_port_is_not_a_tag() {
        let r = parse_reference("127.0.0.1:5000/team/app").unwrap();
        assert_eq!(r.repository.registry, "127.0.0.1:5000");
        assert_eq!(r.repository.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let r = parse_reference(&format!("localhost/app:v1@{}", digest())).unwrap();
        assert_eq!(r.repository.registry, "localhost");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest, Some(digest()));
    }

    #[test]
    fn digest_reference_gets_no_default_tag() {
        let r = parse_reference(&format!("quay.io/a/b@{}", digest())).unwrap();
        assert_eq!(r.tag, None);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "a b",
            "Upper/case",
            "x//y",
            "a@sha256:zz",
            "reg.io/app:",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queries_strip_kubelet_prefixes() {
        let q = Query::parse(&format!("docker-pullable://nginx@{}", digest())).unwrap();
        assert!(matches!(q, Query::Reference(r) if r.digest == Some(digest())));
        let q = Query::parse(&digest().to_string()).unwrap();
        assert_eq!(q, Query::Digest(digest()));
        assert!(Query::parse("sha256:short").is_err());
    }

    #[test]
    fn target_defaults_to_the_source_registry() {
        let src = parse_reference(&format!("reg.io/a/b:1@{}", digest())).unwrap();
        let t = map_target(&src, None, None).unwrap();
        assert_eq!(t.to_string(), "reg.io/a/b:1");
    }

    #[test]
    fn target_registry_keeps_path_and_adds_prefix() {
        let src = parse_reference("reg.io/a/b:1").unwrap();
        let t = map_target(&src, None, Some("backup:5000/mirror/")).unwrap();
        assert_eq!(t.to_string(), "backup:5000/mirror/a/b:1");
        let t = map_target(&src, None, Some("backup:5000")).unwrap();
        assert_eq!(t.to_string(), "backup:5000/a/b:1");
    }

    #[test]
    fn explicit_target_inherits_tag_unless_given() {
        let src = parse_reference("reg.io/a/b:1").unwrap();
        let t = map_target(&src, Some("other:5000/x"), Some("ignored")).unwrap();
        assert_eq!(t.to_string(), "other:5000/x:1");
        let t = map_target(&src, Some("other:5000/x:2"), None).unwrap();
        assert_eq!(t.to_string(), "other:5000/x:2");
        let by_digest = parse_reference(&format!("reg.io/a/b@{}", digest())).unwrap();
        let t = map_target(&by_digest, Some("other:5000/x"), None).unwrap();
        assert_eq!(t.to_string(), "other:5000/x");
        assert!(map_target(&src, Some(&format!("o/x@{}", digest())), None).is_err());
    }
}
