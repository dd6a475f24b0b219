//! Where to push an image that came out of containerd. What to export
//! (`ImageSource`) and the `=DEST` half of `--image` (`Destination`) are the
//! shared protocol's; references are the project-wide `ImageReference`.

use lifeboat_node_protocol::Destination;
use registry_transfer::ImageReference;

use crate::error::Error;

/// Parses and normalises like the kubelet does (`nginx` becomes
/// `docker.io/library/nginx:latest`), with the project's one parser, so
/// node-exporter names images exactly as the operator does.
pub fn parse_reference(input: &str) -> Result<ImageReference, Error> {
    ImageReference::parse(input).map_err(|error| Error::InvalidReference {
        reference: input.to_owned(),
        reason: error.to_string(),
    })
}

/// The image a destination names: its repository, and its tag if it gave
/// one (no tag means the engine's deterministic tag).
pub fn destination_image(destination: &Destination) -> ImageReference {
    ImageReference {
        registry: destination.registry.clone(),
        repository: destination.repository.clone(),
        tag: destination.tag.clone(),
        digest: None,
    }
}

/// Where to push an image that came out of containerd.
///
/// `explicit` is the `=DEST` part of an `--image SRC=DEST` argument; without
/// it the image goes to `target_registry` (host plus optional path prefix),
/// and without that back to where it came from: the point of node-exporter
/// is restoring a registry that lost the image. A destination without a
/// tag keeps the source's.
pub fn map_target(
    source: &ImageReference,
    explicit: Option<&Destination>,
    target_registry: Option<&str>,
) -> Result<ImageReference, Error> {
    let target = match (explicit, target_registry) {
        (Some(destination), _) => ImageReference {
            tag: destination.tag.clone().or_else(|| source.tag.clone()),
            ..destination_image(destination)
        },
        (None, Some(registry)) => {
            let registry = registry.trim_end_matches('/');
            let (host, prefix) = match registry.split_once('/') {
                Some((host, prefix)) => (host, Some(prefix)),
                None => (registry, None),
            };
            ImageReference {
                registry: host.to_owned(),
                repository: match prefix {
                    Some(prefix) => format!("{prefix}/{}", source.repository),
                    None => source.repository.clone(),
                },
                tag: source.tag.clone(),
                digest: None,
            }
        }
        (None, None) => ImageReference {
            digest: None,
            ..source.clone()
        },
    };
    Ok(target)
}

#[cfg(test)]
mod tests {
    use registry_transfer::Digest;

    use super::*;

    fn digest() -> Digest {
        Digest::parse(&format!("sha256:{}", "b".repeat(64))).unwrap()
    }

    fn destination(text: &str) -> Destination {
        Destination::parse(text).unwrap()
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
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let r = parse_reference(&format!("localhost/app:v1@{}", digest())).unwrap();
        assert_eq!(r.registry, "localhost");
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
            "ghcr.io/Upper/case",
            "x//y",
            "a@sha256:zz",
            "reg.io/app:",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
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
        let t = map_target(&src, Some(&destination("other:5000/x")), Some("ignored")).unwrap();
        assert_eq!(t.to_string(), "other:5000/x:1");
        let t = map_target(&src, Some(&destination("other:5000/x:2")), None).unwrap();
        assert_eq!(t.to_string(), "other:5000/x:2");
        let by_digest = parse_reference(&format!("reg.io/a/b@{}", digest())).unwrap();
        let t = map_target(&by_digest, Some(&destination("other:5000/x")), None).unwrap();
        assert_eq!(t.to_string(), "other:5000/x");
        assert!(Destination::parse(&format!("o/x@{}", digest())).is_err());
    }
}
