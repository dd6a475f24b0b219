//! Where an image goes in a backup target (or a restore destination).
//!
//! A target's `registry` is `host[:port][/prefix]`; its `repositoryTemplate`
//! says which repository path a source image gets under that prefix. The
//! template is literal text (lowercase letters, digits, `.`, `_`, `-`, `/`)
//! with these variables:
//!
//! | variable            | for `registry.example.com:5000/team/app` | for `nginx` |
//! |---------------------|------------------------------------------|-------------|
//! | `{registry}`        | `registry.example.com-5000`              | `docker.io` |
//! | `{repository}`      | `team/app`                               | `library/nginx` |
//! | `{name}`            | `app`                                    | `nginx` |
//! | `{policyNamespace}` | the policy's namespace                   | |
//! | `{policyName}`      | the policy's name                        | |
//!
//! The default is `{registry}/{repository}`. Tags and digests are kept.

use crate::error::{Error, Result};
use crate::reference::{
    DOCKER_HUB, ImageReference, NAME_MAX_LENGTH, ReferenceError, check_registry, check_repository,
};

/// What `repositoryTemplate` means when unset on a backup target.
pub const DEFAULT_REPOSITORY_TEMPLATE: &str = "{registry}/{repository}";

/// The variables a template may use.
pub const TEMPLATE_VARIABLES: [&str; 5] = [
    "registry",
    "repository",
    "name",
    "policyNamespace",
    "policyName",
];

/// A target registry: host with optional port, and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRegistry {
    pub host: String,
    pub prefix: Option<String>,
}

impl TargetRegistry {
    /// Parses `host[:port][/prefix]`.
    pub fn parse(input: &str) -> Result<TargetRegistry> {
        if input.contains("://") {
            return Err(Error::from(ReferenceError::InvalidRegistry {
                registry: input.to_owned(),
                problem: "write the host without a scheme such as https://".to_owned(),
            }));
        }
        if !input.is_ascii() {
            return Err(Error::from(ReferenceError::InvalidRegistry {
                registry: input.to_owned(),
                problem: "it contains a non-ASCII character".to_owned(),
            }));
        }
        let (host, prefix) = match input.split_once('/') {
            Some((host, prefix)) => (host, Some(prefix)),
            None => (input, None),
        };
        check_registry(host)?;
        if let Some(prefix) = prefix {
            check_repository(prefix)?;
        }
        let host = if ["docker.io", "index.docker.io", "registry-1.docker.io"]
            .iter()
            .any(|alias| host.eq_ignore_ascii_case(alias))
        {
            DOCKER_HUB.to_owned()
        } else {
            host.to_owned()
        };
        Ok(TargetRegistry {
            host,
            prefix: prefix.map(str::to_owned),
        })
    }
}

/// The policy a mapping is done for.
#[derive(Debug, Clone, Copy)]
pub struct TemplateContext<'a> {
    pub policy_namespace: &'a str,
    pub policy_name: &'a str,
}

/// A parsed template: literal text and variables.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<'a> {
    Literal(&'a str),
    Variable(&'a str),
}

fn parse_template(template: &str) -> Result<Vec<Piece<'_>>> {
    let invalid = |problem: String| Error::InvalidRepositoryTemplate {
        template: template.to_owned(),
        problem,
    };
    if template.is_empty() {
        return Err(invalid("it is empty".to_owned()));
    }
    let mut pieces = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            Some(0) if rest.starts_with('}') => {
                return Err(invalid("'}' without a matching '{'".to_owned()));
            }
            Some(0) => {
                let Some(close) = rest.find('}') else {
                    return Err(invalid("'{' without a matching '}'".to_owned()));
                };
                let variable = &rest[1..close];
                if !TEMPLATE_VARIABLES.contains(&variable) {
                    return Err(invalid(format!(
                        "unknown variable {{{variable}}}; known are {{registry}}, {{repository}}, {{name}}, {{policyNamespace}}, {{policyName}}"
                    )));
                }
                pieces.push(Piece::Variable(variable));
                rest = &rest[close + 1..];
            }
            Some(index) => {
                pieces.push(Piece::Literal(&rest[..index]));
                rest = &rest[index..];
            }
            None => {
                pieces.push(Piece::Literal(rest));
                rest = "";
            }
        }
    }
    for piece in &pieces {
        if let Piece::Literal(text) = piece
            && let Some(bad) = text.chars().find(|c| {
                !(c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, '.' | '_' | '-' | '/'))
            })
        {
            return Err(invalid(format!(
                "{bad:?} is not allowed; literal text may contain lowercase letters, digits, '.', '_', '-' and '/'"
            )));
        }
    }
    if !pieces
        .iter()
        .any(|p| matches!(p, Piece::Variable("repository" | "name")))
    {
        return Err(invalid(
            "it must contain {repository} or {name}, otherwise different images would overwrite each other"
                .to_owned(),
        ));
    }
    Ok(pieces)
}

/// Checks a template without an image at hand (what validation does):
/// syntax, and that a typical image renders to a valid repository.
pub fn check_template(template: &str) -> Result<()> {
    let sample = ImageReference::parse("registry.example.com:5000/team/app:v1")?;
    render_repository(
        template,
        &sample,
        TemplateContext {
            policy_namespace: "namespace",
            policy_name: "policy",
        },
    )
    .map(|_| ())
}

/// `{registry}`: the source registry as a valid path component.
fn registry_component(registry: &str) -> String {
    let mapped: String = registry
        .to_ascii_lowercase()
        .chars()
        .filter(|c| !matches!(c, '[' | ']'))
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// The repository path (without host) a source image gets under a prefix.
pub fn render_repository(
    template: &str,
    source: &ImageReference,
    context: TemplateContext<'_>,
) -> Result<String> {
    let pieces = parse_template(template)?;
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Literal(text) => out.push_str(text),
            Piece::Variable("registry") => out.push_str(&registry_component(&source.registry)),
            Piece::Variable("repository") => out.push_str(&source.repository),
            Piece::Variable("name") => out.push_str(
                source
                    .repository
                    .rsplit('/')
                    .next()
                    .unwrap_or(&source.repository),
            ),
            Piece::Variable("policyNamespace") => out.push_str(context.policy_namespace),
            Piece::Variable("policyName") => out.push_str(context.policy_name),
            Piece::Variable(_) => {}
        }
    }
    check_repository(&out).map_err(|e| Error::InvalidRepositoryTemplate {
        template: template.to_owned(),
        problem: format!("for {source} it gives an invalid repository: {e}"),
    })?;
    Ok(out)
}

/// The reference an image is copied to in a target: the target's host,
/// its prefix joined with the rendered repository, and the source's tag and
/// digest.
pub fn target_reference(
    target: &TargetRegistry,
    template: &str,
    source: &ImageReference,
    context: TemplateContext<'_>,
) -> Result<ImageReference> {
    let rendered = render_repository(template, source, context)?;
    let repository = match &target.prefix {
        Some(prefix) => format!("{prefix}/{rendered}"),
        None => rendered,
    };
    let length = target.host.len() + 1 + repository.len();
    if length > NAME_MAX_LENGTH {
        return Err(Error::from(ReferenceError::NameTooLong {
            name: format!("{}/{repository}", target.host),
            length,
        }));
    }
    Ok(ImageReference {
        registry: target.host.clone(),
        repository,
        tag: source.tag.clone(),
        digest: source.digest.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTEXT: TemplateContext<'static> = TemplateContext {
        policy_namespace: "shop",
        policy_name: "prod-images",
    };

    fn image(s: &str) -> ImageReference {
        ImageReference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn target(s: &str) -> TargetRegistry {
        TargetRegistry::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn map(registry: &str, template: &str, source: &str) -> String {
        target_reference(&target(registry), template, &image(source), CONTEXT)
            .unwrap_or_else(|e| panic!("{template} {source}: {e}"))
            .to_string()
    }

    #[test]
    fn default_template_keeps_registry_and_path() {
        assert_eq!(
            map(
                "backup.example.com:5000/lifeboat",
                DEFAULT_REPOSITORY_TEMPLATE,
                "nginx:1.27"
            ),
            "backup.example.com:5000/lifeboat/docker.io/library/nginx:1.27"
        );
        assert_eq!(
            map(
                "backup.local",
                DEFAULT_REPOSITORY_TEMPLATE,
                "registry.example.com:5000/team/app:v1"
            ),
            "backup.local/registry.example.com-5000/team/app:v1"
        );
        let sha = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            map(
                "backup.local",
                DEFAULT_REPOSITORY_TEMPLATE,
                &format!("ghcr.io/o/a:v1@{sha}")
            ),
            format!("backup.local/ghcr.io/o/a:v1@{sha}")
        );
        assert_eq!(
            map(
                "localhost:5001",
                DEFAULT_REPOSITORY_TEMPLATE,
                "[::1]:5000/app"
            ),
            "localhost:5001/1-5000/app:latest"
        );
    }

    #[test]
    fn other_variables() {
        assert_eq!(
            map(
                "backup.local/tenants",
                "{policyNamespace}/{name}",
                "ghcr.io/org/team/api:2"
            ),
            "backup.local/tenants/shop/api:2"
        );
        assert_eq!(
            map(
                "backup.local",
                "mirror/{policyName}/{repository}",
                "bitnami/redis:7"
            ),
            "backup.local/mirror/prod-images/bitnami/redis:7"
        );
        assert_eq!(
            map("index.docker.io", "{name}", "quay.io/x/y:1"),
            "docker.io/y:1"
        );
    }

    #[test]
    fn bad_templates_are_explained() {
        let cases = [
            ("", "empty"),
            ("{registry}", "must contain {repository} or {name}"),
            ("{repo}", "unknown variable {repo}"),
            ("{repository", "'{' without a matching '}'"),
            ("repository}", "'}' without a matching '{'"),
            ("Mirror/{repository}", "'M' is not allowed"),
            ("mirror//{repository}", "path component 2 is empty"),
            ("/{repository}", "path component 1 is empty"),
            ("{repository}/", "is empty"),
        ];
        for (template, expected) in cases {
            let e = check_template(template).err();
            let text = e.as_ref().map(ToString::to_string).unwrap_or_default();
            assert!(
                text.contains(expected),
                "{template:?}: {text:?} should mention {expected:?}"
            );
            assert_eq!(
                e.map(|e| e.reason()),
                Some("InvalidRepositoryTemplate"),
                "{template}"
            );
        }
        check_template("{registry}/{repository}").unwrap_or_else(|e| panic!("{e}"));
        check_template("a.b_c-d/{name}").unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn target_registries() {
        assert_eq!(
            target("backup.example.com:5000/a/b"),
            TargetRegistry {
                host: "backup.example.com:5000".into(),
                prefix: Some("a/b".into())
            }
        );
        assert_eq!(target("localhost").prefix, None);
        assert_eq!(target("registry-1.docker.io/me").host, "docker.io");
        for bad in [
            "https://backup.example.com",
            "",
            "host:99999",
            "host/UPPER",
            "host/",
            "bad_host",
        ] {
            assert!(TargetRegistry::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn overlong_results_are_rejected() {
        let long_prefix = format!("backup.local/{}", "p".repeat(200));
        let e = target_reference(
            &target(&long_prefix),
            DEFAULT_REPOSITORY_TEMPLATE,
            &image(&format!("ghcr.io/{}", "r".repeat(100))),
            CONTEXT,
        );
        assert!(
            matches!(e, Err(Error::Reference(ReferenceError::NameTooLong { .. }))),
            "{e:?}"
        );
    }
}
