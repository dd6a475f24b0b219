//! Image references: parsing, normalisation and the canonical forms.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{ReferenceError as Error, Result};

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// Registry names that mean Docker Hub and are normalised to [`DOCKER_HUB`].
const DOCKER_HUB_ALIASES: [&str; 3] = [DOCKER_HUB, "index.docker.io", DOCKER_HUB_API_HOST];
/// Namespace of Docker Hub's official images (`nginx` is `library/nginx`).
const DOCKER_HUB_OFFICIAL_NAMESPACE: &str = "library/";
/// The tag a reference without tag or digest means.
pub const DEFAULT_TAG: &str = "latest";

/// Longest `registry/repository` name, as enforced by Docker and distribution.
pub const NAME_MAX_LENGTH: usize = 255;
/// Longest tag.
pub const TAG_MAX_LENGTH: usize = 128;
/// Longest whole reference: name, tag and a sha512 digest with separators,
/// rounded up. The CRDs bound reference strings to the same number.
pub const REFERENCE_MAX_LENGTH: usize = 600;

/// A fully normalised image reference.
///
/// `Display` gives the canonical full form
/// (`docker.io/library/nginx:latest`, `ghcr.io/org/app@sha256:…`,
/// `localhost:5000/app:v1@sha256:…`), which parses back to an equal value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageReference {
    /// Registry host with optional port, normalised (`docker.io` for Docker
    /// Hub).
    pub registry: String,
    /// Repository path inside the registry (`library/nginx`).
    pub repository: String,
    /// Tag; `latest` when the input had neither tag nor digest.
    pub tag: Option<String>,
    /// Content digest, when the input pinned one.
    pub digest: Option<Digest>,
}

impl ImageReference {
    /// Parses and normalises an image reference as Docker and the kubelet
    /// understand it.
    pub fn parse(input: &str) -> Result<ImageReference> {
        check_characters(input)?;

        // Only ASCII from here on, so every byte index is a char boundary.
        let (name_and_tag, digest) = match input.find('@') {
            Some(at) => {
                let digest_text = &input[at + 1..];
                if digest_text.contains('@') {
                    return Err(malformed(input, "it contains more than one '@'"));
                }
                if digest_text.is_empty() {
                    return Err(malformed(input, "the digest after '@' is missing"));
                }
                (&input[..at], Some(Digest::parse(digest_text)?))
            }
            None => (input, None),
        };

        // A tag is introduced by the first ':' after the last '/', so the
        // port in `localhost:5000/app` is not mistaken for one.
        let last_component_start = name_and_tag.rfind('/').map_or(0, |slash| slash + 1);
        let (name, tag) = match name_and_tag[last_component_start..].find(':') {
            Some(offset) => {
                let colon = last_component_start + offset;
                (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
            }
            None => (name_and_tag, None),
        };
        if name.is_empty() {
            return Err(malformed(input, "the repository name is missing"));
        }
        if let Some(tag) = tag {
            check_tag(tag)?;
        }
        if digest.is_none() && tag.is_none() && is_image_id(input) {
            return Err(malformed(
                input,
                "64 hexadecimal characters look like an image ID, not a repository name",
            ));
        }

        let (registry, repository) = normalise_name(name)?;

        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (None, Some(_)) => None,
        };
        Ok(ImageReference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same image pinned to `digest`, keeping the tag for readability.
    pub fn with_digest(&self, digest: Digest) -> ImageReference {
        ImageReference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The digest-only form (`registry/repository@digest`), if a digest is
    /// known: the form to copy or pull when the exact content matters.
    pub fn pinned(&self) -> Option<ImageReference> {
        self.digest.as_ref().map(|digest| ImageReference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.clone()),
        })
    }

    /// What to ask the registry's manifest endpoint for: the digest when
    /// known, else the tag.
    pub fn manifest_reference(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.as_str(),
            (None, Some(tag)) => tag,
            (None, None) => DEFAULT_TAG,
        }
    }

    /// The host to talk the registry API to (`registry-1.docker.io` for
    /// Docker Hub, the registry itself otherwise).
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// Whether the image lives on Docker Hub.
    pub fn is_docker_hub(&self) -> bool {
        self.registry == DOCKER_HUB
    }

    /// The short form people write (`nginx:1.27`, `bitnami/redis:7`,
    /// `ghcr.io/org/app@sha256:…`). It parses back to the same reference,
    /// except that an implicit `latest` tag is kept.
    pub fn familiar(&self) -> String {
        let mut out = if self.is_docker_hub() {
            match self.repository.strip_prefix(DOCKER_HUB_OFFICIAL_NAMESPACE) {
                Some(short) if !short.contains('/') => short.to_owned(),
                // `docker.io/a.b/c` must keep its registry, or `a.b` would
                // be read as one.
                _ if starts_with_registry(&self.repository) => self.name(),
                _ => self.repository.clone(),
            }
        } else {
            self.name()
        };
        push_tag_and_digest(&mut out, self.tag.as_deref(), self.digest.as_ref());
        out
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name();
        push_tag_and_digest(&mut out, self.tag.as_deref(), self.digest.as_ref());
        f.write_str(&out)
    }
}

impl FromStr for ImageReference {
    type Err = Error;
    fn from_str(s: &str) -> Result<ImageReference> {
        ImageReference::parse(s)
    }
}

/// A reference travels as its canonical text and is parsed again when
/// read, so what arrives is as valid as what was sent.
impl serde::Serialize for ImageReference {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ImageReference {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<ImageReference, D::Error> {
        let text = String::deserialize(deserializer)?;
        ImageReference::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn push_tag_and_digest(out: &mut String, tag: Option<&str>, digest: Option<&Digest>) {
    if let Some(tag) = tag {
        out.push(':');
        out.push_str(tag);
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest.as_str());
    }
}

fn malformed(input: &str, problem: &str) -> Error {
    Error::MalformedReference {
        input: input.to_owned(),
        problem: problem.to_owned(),
    }
}

/// Rejects empty, overlong and non-printable input before anything slices it.
fn check_characters(input: &str) -> Result<()> {
    if input.is_empty() {
        return Err(Error::EmptyReference);
    }
    let length = input.chars().count();
    if length > REFERENCE_MAX_LENGTH {
        return Err(Error::ReferenceTooLong {
            length,
            max: REFERENCE_MAX_LENGTH,
        });
    }
    let problem = input.chars().find_map(|c| {
        if !c.is_ascii() {
            Some("a non-ASCII character")
        } else if c.is_ascii_whitespace() {
            Some("whitespace")
        } else if c.is_ascii_control() {
            Some("a control character")
        } else {
            None
        }
    });
    match problem {
        Some(what) => Err(Error::ReferenceCharacters {
            input: input.to_owned(),
            what,
        }),
        None => Ok(()),
    }
}

fn is_image_id(input: &str) -> bool {
    input.len() == 64
        && input
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Docker's rule for whether a name's first component names a registry.
fn starts_with_registry(name: &str) -> bool {
    match name.split_once('/') {
        Some((first, _)) => {
            first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase())
        }
        None => false,
    }
}

/// Splits a name (no tag, no digest) into its normalised registry and
/// repository, checking both: the half of [`ImageReference::parse`] that a
/// bare repository name (`backup.example/mirror/nginx`, `nginx`) goes
/// through too.
fn normalise_name(name: &str) -> Result<(String, String)> {
    let (registry, repository) = split_registry(name);
    check_registry(registry)?;
    let registry = if DOCKER_HUB_ALIASES
        .iter()
        .any(|alias| registry.eq_ignore_ascii_case(alias))
    {
        DOCKER_HUB.to_owned()
    } else {
        registry.to_owned()
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("{DOCKER_HUB_OFFICIAL_NAMESPACE}{repository}")
    } else {
        repository.to_owned()
    };
    check_repository(&repository)?;
    let name_length = registry.len() + 1 + repository.len();
    if name_length > NAME_MAX_LENGTH {
        return Err(Error::NameTooLong {
            name: format!("{registry}/{repository}"),
            length: name_length,
        });
    }
    Ok((registry, repository))
}

/// Parses a repository name without tag or digest (`host[:port]/path`, or
/// a Docker Hub short name such as `nginx` or `team/app`) into its
/// normalised `(registry, repository)`, with the same rules and messages as
/// [`ImageReference::parse`].
pub fn parse_repository_name(input: &str) -> Result<(String, String)> {
    check_characters(input)?;
    if input.contains('@') {
        return Err(malformed(
            input,
            "a repository name cannot carry a digest ('@')",
        ));
    }
    let last_component_start = input.rfind('/').map_or(0, |slash| slash + 1);
    if input[last_component_start..].contains(':') {
        return Err(malformed(
            input,
            "a repository name cannot carry a tag (':')",
        ));
    }
    normalise_name(input)
}

/// The host to talk the registry API to for a registry as written in
/// references: any of Docker Hub's names gives `registry-1.docker.io`.
pub fn api_host(registry: &str) -> &str {
    if DOCKER_HUB_ALIASES
        .iter()
        .any(|alias| registry.eq_ignore_ascii_case(alias))
    {
        DOCKER_HUB_API_HOST
    } else {
        registry
    }
}

/// Splits off the registry, `docker.io` when the name has none.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest)) if starts_with_registry(name) => (first, rest),
        _ => (DOCKER_HUB, name),
    }
}

/// `host[:port]` where host is a DNS name, `localhost` or `[IPv6]`.
pub fn check_registry(registry: &str) -> Result<()> {
    let invalid = |problem: String| Error::InvalidRegistry {
        registry: registry.to_owned(),
        problem,
    };
    if registry.is_empty() {
        return Err(invalid("it is empty".to_owned()));
    }
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            return Err(invalid(
                "an IPv6 address must be closed with ']'".to_owned(),
            ));
        };
        let (address, after) = (&rest[..close], &rest[close + 1..]);
        if address.is_empty() || !address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(invalid(
                "an IPv6 address in brackets may contain only hexadecimal digits and ':'"
                    .to_owned(),
            ));
        }
        match after.strip_prefix(':') {
            Some(port) => (None, Some(port)),
            None if after.is_empty() => (None, None),
            None => {
                return Err(invalid(
                    "only ':<port>' may follow an IPv6 address".to_owned(),
                ));
            }
        }
    } else {
        match registry.find(':') {
            Some(colon) => (Some(&registry[..colon]), Some(&registry[colon + 1..])),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err(invalid("the host name is empty".to_owned()));
        }
        for label in host.split('.') {
            if label.is_empty() {
                return Err(invalid(
                    "a host name label is empty (\"..\" or a dot at an end)".to_owned(),
                ));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(invalid(format!(
                    "host name label {label:?} may contain only letters, digits and '-'"
                )));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(invalid(format!(
                    "host name label {label:?} must not start or end with '-'"
                )));
            }
        }
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !valid {
            return Err(invalid(format!(
                "port {port:?} must be a number from 1 to 65535"
            )));
        }
    }
    Ok(())
}

/// Path components separated by `/`, each lowercase alphanumerics joined by
/// `.`, `_`, `__` or runs of `-`.
pub fn check_repository(repository: &str) -> Result<()> {
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(Error::UppercaseRepository {
            repository: repository.to_owned(),
        });
    }
    let invalid = |problem: String| Error::InvalidRepository {
        repository: repository.to_owned(),
        problem,
    };
    for (index, component) in repository.split('/').enumerate() {
        if component.is_empty() {
            return Err(invalid(format!(
                "path component {} is empty (\"//\" or a '/' at an end)",
                index + 1
            )));
        }
        check_path_component(component).map_err(invalid)?;
    }
    Ok(())
}

fn check_path_component(component: &str) -> std::result::Result<(), String> {
    if let Some(bad) = component
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "path component {component:?} contains {bad:?}; only lowercase letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    let bytes = component.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().copied().is_some_and(is_alnum) || !bytes.last().copied().is_some_and(is_alnum)
    {
        return Err(format!(
            "path component {component:?} must start and end with a lowercase letter or digit"
        ));
    }
    // Each run of separators between alphanumerics must be ".", "_", "__"
    // or one or more "-".
    let mut run_start = None;
    for (i, &b) in bytes.iter().enumerate() {
        match (is_alnum(b), run_start) {
            (false, None) => run_start = Some(i),
            (true, Some(start)) => {
                let run = &component[start..i];
                let allowed =
                    run == "." || run == "_" || run == "__" || run.bytes().all(|b| b == b'-');
                if !allowed {
                    return Err(format!(
                        "path component {component:?} has the separator {run:?}; use one '.', one or two '_', or dashes"
                    ));
                }
                run_start = None;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<()> {
    let invalid = |problem: String| Error::InvalidTag {
        tag: tag.to_owned(),
        problem,
    };
    if tag.is_empty() {
        return Err(invalid("it is empty (nothing after ':')".to_owned()));
    }
    if tag.len() > TAG_MAX_LENGTH {
        return Err(invalid(format!(
            "it is {} characters long; at most {TAG_MAX_LENGTH} are allowed",
            tag.len()
        )));
    }
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    if !tag.bytes().next().is_some_and(word) {
        return Err(invalid(
            "it must start with a letter, digit or '_'".to_owned(),
        ));
    }
    if let Some(bad) = tag
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(invalid(format!(
            "it contains {bad:?}; only letters, digits, '_', '.' and '-' are allowed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(s: &str) -> ImageReference {
        match ImageReference::parse(s) {
            Ok(r) => r,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn parse_err(s: &str) -> Error {
        match ImageReference::parse(s) {
            Ok(r) => panic!("{s:?} should not parse, got {r}"),
            Err(e) => e,
        }
    }

    #[test]
    fn official_image_is_normalised() {
        let r = parse("nginx");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/nginx");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.digest, None);
        assert_eq!(r.to_string(), "docker.io/library/nginx:latest");
        assert_eq!(r.familiar(), "nginx:latest");
    }

    #[test]
    fn docker_hub_forms_are_equal() {
        let canonical = parse("nginx:1.27");
        for form in [
            "docker.io/nginx:1.27",
            "docker.io/library/nginx:1.27",
            "index.docker.io/library/nginx:1.27",
            "registry-1.docker.io/library/nginx:1.27",
            "index.docker.io/nginx:1.27",
            "library/nginx:1.27",
        ] {
            assert_eq!(parse(form), canonical, "{form}");
        }
        assert_eq!(canonical.api_host(), "registry-1.docker.io");
    }

    #[test]
    fn user_repository_on_docker_hub() {
        let r = parse("bitnami/redis:7.2");
        assert_eq!(r.to_string(), "docker.io/bitnami/redis:7.2");
        assert_eq!(r.familiar(), "bitnami/redis:7.2");
    }

    #[test]
    fn registries_with_ports_and_localhost() {
        let r = parse("localhost:5000/team/app:v1");
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v1"));

        let r = parse("localhost/app");
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.repository, "app");
        assert_eq!(r.to_string(), "localhost/app:latest");

        let r = parse("registry.example.com:8443/a/b/c");
        assert_eq!(r.registry, "registry.example.com:8443");
        assert_eq!(r.repository, "a/b/c");
        assert_eq!(r.api_host(), "registry.example.com:8443");

        let r = parse("127.0.0.1:5000/app");
        assert_eq!(r.registry, "127.0.0.1:5000");

        let r = parse("[::1]:5000/app:v2");
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(r.to_string(), "[::1]:5000/app:v2");

        // A host without dot or port is a Docker Hub namespace.
        let r = parse("myhost/app");
        assert_eq!(r.to_string(), "docker.io/myhost/app:latest");

        // `name:port` without a path is a tag on Docker Hub, as in Docker.
        let r = parse("localhost:5000");
        assert_eq!(r.to_string(), "docker.io/library/localhost:5000");
    }

    #[test]
    fn digests_tags_and_both() {
        let r = parse(&format!("nginx@{SHA}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().map(Digest::as_str), Some(SHA));
        assert_eq!(r.to_string(), format!("docker.io/library/nginx@{SHA}"));
        assert_eq!(r.manifest_reference(), SHA);

        let r = parse(&format!("ghcr.io/org/app:v1.2.3@{SHA}"));
        assert_eq!(r.tag.as_deref(), Some("v1.2.3"));
        assert_eq!(r.digest.as_ref().map(Digest::algorithm), Some("sha256"));
        assert_eq!(r.to_string(), format!("ghcr.io/org/app:v1.2.3@{SHA}"));
        assert_eq!(r.manifest_reference(), SHA);
        let pinned = r.pinned();
        assert_eq!(
            pinned.map(|p| p.to_string()),
            Some(format!("ghcr.io/org/app@{SHA}"))
        );

        let r = parse("localhost:5000/app:v1");
        assert_eq!(r.manifest_reference(), "v1");
        assert_eq!(r.pinned(), None);
        let digest = Digest::parse(SHA).unwrap_or_else(|e| panic!("{e}"));
        let with = r.with_digest(digest);
        assert_eq!(with.to_string(), format!("localhost:5000/app:v1@{SHA}"));

        let sha512 = format!("sha512:{}", "ab".repeat(64));
        let r = parse(&format!("quay.io/x/y@{sha512}"));
        assert_eq!(r.digest.as_ref().map(Digest::algorithm), Some("sha512"));
    }

    #[test]
    fn uppercase_repository_is_rejected_clearly() {
        let e = parse_err("Nginx");
        assert!(matches!(e, Error::UppercaseRepository { .. }), "{e:?}");
        assert!(e.to_string().contains("must be lowercase"), "{e}");
        assert_eq!(e.reason(), "InvalidImageReference");

        let e = parse_err("ghcr.io/Org/app");
        assert!(
            matches!(e, Error::UppercaseRepository { ref repository } if repository == "Org/app")
        );

        // Upper case in the first component makes it a registry, as in Docker.
        let r = parse("Registry/app");
        assert_eq!(r.registry, "Registry");
        // Tags may be upper case.
        assert_eq!(parse("nginx:V1").tag.as_deref(), Some("V1"));
    }

    #[test]
    fn malformed_input_names_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            (" nginx", "whitespace"),
            ("nginx\n", "whitespace"),
            ("ngin\u{7f}x", "control character"),
            ("nginx\u{e9}", "non-ASCII"),
            ("nginx:", "tag \"\" is invalid: it is empty"),
            ("nginx:-x", "must start with a letter"),
            ("nginx:a+b", "contains '+'"),
            ("nginx@", "digest after '@' is missing"),
            (
                "nginx@sha256:abc",
                "has 64 hexadecimal digits, this one has 3",
            ),
            ("nginx@md5:abc", "unsupported algorithm \"md5\""),
            ("nginx@sha256", "must be <algorithm>:<hex>"),
            ("a@b@c", "more than one '@'"),
            (":latest", "repository name is missing"),
            ("ghcr.io/", "path component 1 is empty"),
            ("ghcr.io//app", "path component 1 is empty"),
            ("app/", "path component 2 is empty"),
            (
                "my_app_",
                "must start and end with a lowercase letter or digit",
            ),
            ("a..b", "separator \"..\""),
            ("a___b", "separator \"___\""),
            ("a-_b", "separator \"-_\""),
            ("a#b", "contains '#'"),
            ("exa mple.com/app", "whitespace"),
            ("-bad.example.com/app", "must not start or end with '-'"),
            ("bad..example.com/app", "label is empty"),
            ("host.com:0/app", "port \"0\""),
            ("host.com:99999/app", "port \"99999\""),
            ("host.com:/app", "port \"\""),
            ("[::1/app", "closed with ']'"),
            ("[zz]:5000/app", "hexadecimal digits and ':'"),
            ("[::1]x/app", "only ':<port>' may follow"),
            (
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "look like an image ID",
            ),
        ];
        for (input, expected) in cases {
            let e = parse_err(input);
            assert!(
                e.to_string().contains(expected),
                "{input:?}: {e} should mention {expected:?}"
            );
        }
        let upper_hex = format!("nginx@sha256:{}", "AB".repeat(32));
        assert!(
            parse_err(&upper_hex)
                .to_string()
                .contains("must be lowercase")
        );
    }

    #[test]
    fn separators_follow_the_grammar() {
        for ok in [
            "a.b",
            "a_b",
            "a__b",
            "a-b",
            "a---b",
            "a1.b2_c3__d4-e5",
            "0",
            "a/b.c/d-e",
        ] {
            parse(ok);
        }
    }

    #[test]
    fn length_limits() {
        // 255 for the whole name: docker.io/ is 10 characters.
        let repo_at_limit = format!("x/{}", "a".repeat(NAME_MAX_LENGTH - 12));
        assert_eq!(parse(&repo_at_limit).name().len(), NAME_MAX_LENGTH);
        let too_long = format!("x/{}", "a".repeat(NAME_MAX_LENGTH - 11));
        let e = parse_err(&too_long);
        assert!(
            matches!(e, Error::NameTooLong { length, .. } if length == NAME_MAX_LENGTH + 1),
            "{e:?}"
        );
        assert!(e.to_string().contains("at most 255"));

        let tag_at_limit = format!("nginx:{}", "t".repeat(TAG_MAX_LENGTH));
        assert_eq!(
            parse(&tag_at_limit).tag.map(|t| t.len()),
            Some(TAG_MAX_LENGTH)
        );
        let e = parse_err(&format!("nginx:{}", "t".repeat(TAG_MAX_LENGTH + 1)));
        assert!(e.to_string().contains("at most 128"), "{e}");

        let e = parse_err(&"a".repeat(REFERENCE_MAX_LENGTH + 1));
        assert!(matches!(e, Error::ReferenceTooLong { .. }), "{e:?}");

        // The longest valid reference fits the CRDs' bound.
        let longest = format!(
            "x/{}:{}@sha512:{}",
            "a".repeat(NAME_MAX_LENGTH - 12),
            "t".repeat(TAG_MAX_LENGTH),
            "0".repeat(128)
        );
        assert!(longest.len() <= REFERENCE_MAX_LENGTH);
        assert!(parse(&longest).to_string().len() <= REFERENCE_MAX_LENGTH);
    }

    #[test]
    fn familiar_forms_parse_back() {
        for input in [
            "nginx",
            "nginx:1.27",
            "bitnami/redis",
            "ghcr.io/org/app:v1",
            "localhost:5000/app",
            &format!("quay.io/a/b@{SHA}"),
            &format!("nginx:1@{SHA}"),
            "docker.io/a.b/c",
            "docker.io/localhost/x",
            "docker.io/docker.io/x",
        ] {
            let r = parse(input);
            assert_eq!(parse(&r.familiar()), r, "{input}");
        }
    }

    /// A tiny deterministic generator, so the property below runs the same
    /// inputs in every CI run (the fuzz target explores further).
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// Reference-shaped strings: fragments that are mostly valid, glued
    /// with a mix of separators and a sprinkle of noise.
    fn generate(rng: &mut XorShift) -> String {
        const FRAGMENTS: &[&str] = &[
            "nginx",
            "library",
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "localhost",
            "localhost:5000",
            "ghcr.io",
            "Registry",
            "[::1]:443",
            "a",
            "b0",
            "x.y",
            "a_b",
            "a__b",
            "a-b",
            "a--b",
            "APP",
            "v1.2",
            "latest",
            "_t",
            "127.0.0.1",
            SHA,
            "sha256",
            "sha512:00",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ];
        const GLUE: &[&str] = &[
            "/", "/", "/", ":", "@", ".", "-", "_", "", " ", "\u{e9}", "//",
        ];
        let mut out = String::new();
        for i in 0..1 + rng.below(6) {
            if i > 0 {
                out.push_str(rng.pick(GLUE));
            }
            out.push_str(rng.pick(FRAGMENTS));
        }
        out
    }

    #[test]
    fn display_round_trips_on_generated_inputs() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut parsed = 0;
        for _ in 0..5000 {
            let input = generate(&mut rng);
            if let Ok(reference) = ImageReference::parse(&input) {
                parsed += 1;
                let canonical = reference.to_string();
                match ImageReference::parse(&canonical) {
                    Ok(again) => {
                        assert_eq!(again, reference, "{input:?} -> {canonical:?}");
                        assert_eq!(again.to_string(), canonical);
                    }
                    Err(e) => panic!("{input:?} -> {canonical:?} does not parse back: {e}"),
                }
                let familiar = reference.familiar();
                assert_eq!(
                    ImageReference::parse(&familiar).ok().as_ref(),
                    Some(&reference),
                    "{input:?} -> familiar {familiar:?}"
                );
                assert!(canonical.len() <= REFERENCE_MAX_LENGTH);
            }
        }
        // The generator must exercise the success path a fair amount,
        // otherwise the property says little.
        assert!(
            parsed > 500,
            "only {parsed} of 5000 generated inputs parsed"
        );
        assert!(parsed < 4900, "{parsed} of 5000 parsed: generator too tame");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = XorShift(42);
        for _ in 0..5000 {
            let len = rng.below(80);
            let bytes: Vec<u8> = (0..len).map(|_| (rng.next() & 0xff) as u8).collect();
            let input = String::from_utf8_lossy(&bytes);
            let _ = ImageReference::parse(&input);
            let _ = Digest::parse(&input);
        }
    }
}
