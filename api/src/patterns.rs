//! `spec.selector.images.include` / `exclude`: glob patterns over image
//! names, compiled once and matched against normalised references.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::backup_policy::ImagePatterns;
use crate::error::{Error, Result};
use crate::reference::ImageReference;

/// Compiled include and exclude patterns.
#[derive(Debug, Clone)]
pub struct ImageMatcher {
    /// `None` means "include everything".
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl Default for ImageMatcher {
    fn default() -> Self {
        ImageMatcher {
            include: None,
            exclude: GlobSet::empty(),
        }
    }
}

fn compile_one(pattern: &str) -> Result<Glob> {
    if pattern.is_empty() {
        return Err(Error::InvalidImagePattern {
            pattern: String::new(),
            problem: "it is empty".to_owned(),
        });
    }
    GlobBuilder::new(pattern)
        // `*` stays within one path component; `**` crosses them.
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| Error::InvalidImagePattern {
            pattern: pattern.to_owned(),
            problem: e.kind().to_string(),
        })
}

fn compile_set(patterns: &[String], field: &str) -> Result<GlobSet> {
    let mut builder = GlobSetBuilder::new();
    for (index, pattern) in patterns.iter().enumerate() {
        builder.add(compile_one(pattern).map_err(|e| e.at(format!("{field}[{index}]")))?);
    }
    builder.build().map_err(|e| Error::InvalidImagePattern {
        pattern: patterns.join(", "),
        problem: e.to_string(),
    })
}

impl ImageMatcher {
    /// Compiles a policy's patterns; errors name the offending entry.
    pub fn compile(patterns: Option<&ImagePatterns>) -> Result<ImageMatcher> {
        let Some(patterns) = patterns else {
            return Ok(ImageMatcher::default());
        };
        let include = match &patterns.include {
            Some(list) if !list.is_empty() => Some(compile_set(list, "include")?),
            _ => None,
        };
        let exclude = match &patterns.exclude {
            Some(list) => compile_set(list, "exclude")?,
            None => GlobSet::empty(),
        };
        Ok(ImageMatcher { include, exclude })
    }

    /// Whether the image is selected: included (or no include list) and not
    /// excluded. Patterns are tried against the full name, full name with
    /// tag, and the short (familiar) forms of both.
    pub fn matches(&self, image: &ImageReference) -> bool {
        let candidates = candidates(image);
        let included = self
            .include
            .as_ref()
            .is_none_or(|set| candidates.iter().any(|c| set.is_match(c)));
        included && !candidates.iter().any(|c| self.exclude.is_match(c))
    }
}

fn candidates(image: &ImageReference) -> Vec<String> {
    let name = image.name();
    let familiar_name = ImageReference {
        tag: None,
        digest: None,
        ..image.clone()
    }
    .familiar();
    let mut out = vec![name.clone(), familiar_name.clone()];
    if let Some(tag) = &image.tag {
        out.push(format!("{name}:{tag}"));
        out.push(format!("{familiar_name}:{tag}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(include: &[&str], exclude: &[&str]) -> ImageMatcher {
        let to_vec =
            |l: &[&str]| (!l.is_empty()).then(|| l.iter().map(|s| s.to_string()).collect());
        ImageMatcher::compile(Some(&ImagePatterns {
            include: to_vec(include),
            exclude: to_vec(exclude),
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn is_selected(m: &ImageMatcher, image: &str) -> bool {
        m.matches(&ImageReference::parse(image).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn no_patterns_select_everything() {
        let m = ImageMatcher::compile(None).unwrap_or_else(|e| panic!("{e}"));
        assert!(is_selected(&m, "nginx"));
        let m = matcher(&[], &[]);
        assert!(is_selected(&m, "ghcr.io/a/b:1"));
    }

    #[test]
    fn include_and_exclude() {
        let m = matcher(
            &["registry.example.com/**", "nginx"],
            &["**/*-debug", "*:*-rc*"],
        );
        assert!(is_selected(&m, "registry.example.com/team/app:v1"));
        assert!(is_selected(&m, "nginx:1.27"));
        assert!(is_selected(&m, "docker.io/library/nginx"));
        assert!(!is_selected(&m, "redis"));
        assert!(!is_selected(&m, "registry.example.com/team/app-debug:v1"));
        assert!(
            !is_selected(&m, "nginx:1.28-rc1"),
            "short form with tag is excluded"
        );
    }

    #[test]
    fn star_stays_in_one_component() {
        let m = matcher(&["docker.io/library/*"], &[]);
        assert!(is_selected(&m, "nginx:1.27"));
        assert!(!is_selected(&m, "bitnami/redis"));
        let m = matcher(&["ghcr.io/org/*"], &[]);
        assert!(is_selected(&m, "ghcr.io/org/app"));
        assert!(!is_selected(&m, "ghcr.io/org/team/app"));
        let m = matcher(&["ghcr.io/org/**"], &[]);
        assert!(is_selected(&m, "ghcr.io/org/team/app"));
    }

    #[test]
    fn bad_patterns_name_the_entry() {
        let e = ImageMatcher::compile(Some(&ImagePatterns {
            include: Some(vec!["ok/*".into(), "bad[".into()]),
            exclude: None,
        }))
        .err();
        let text = e.as_ref().map(ToString::to_string).unwrap_or_default();
        assert!(
            text.starts_with("include[1]: image pattern \"bad[\""),
            "{text}"
        );
        assert_eq!(e.map(|e| e.reason()), Some("InvalidImagePattern"));

        let e = ImageMatcher::compile(Some(&ImagePatterns {
            include: None,
            exclude: Some(vec!["{a,b".into()]),
        }))
        .err();
        assert!(e.is_some_and(|e| e.to_string().contains("exclude[0]")));
    }
}
