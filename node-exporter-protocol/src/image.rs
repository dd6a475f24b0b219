//! The images on node-exporter's command line: what to export (a
//! reference or a bare digest, as the kubelet reports them) and where to.

use std::fmt;
use std::str::FromStr;

use lifeboat_reference::{
    Digest, ImageReference, ReferenceError, check_tag, parse_repository_name,
};
use serde::{Deserialize, Serialize};

/// Why an `--image` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageArgumentError {
    #[error("bad --image {0:?}: SRC and DEST must not be empty")]
    Empty(String),
    #[error("{input:?}: {error}")]
    Reference {
        input: String,
        error: ReferenceError,
    },
    #[error("{0:?}: a target cannot name a digest")]
    DestinationDigest(String),
    #[error("{0:?}: an import must name the digest to import (in NAME or in FROM)")]
    ImportDigestMissing(String),
    #[error("{0:?}: NAME and FROM name different digests")]
    ImportDigestConflict(String),
}

/// What to export: an image reference, or a bare digest (an index, a
/// manifest or an image config: the CRI "image ID").
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImageSource {
    Digest(Digest),
    Reference(ImageReference),
}

impl ImageSource {
    /// Parses a reference or a bare digest, as a pod's `image` or
    /// `imageID` gives them (dockershim-era scheme prefixes are dropped).
    pub fn parse(input: &str) -> Result<ImageSource, ImageArgumentError> {
        let text = input
            .trim()
            .trim_start_matches("docker-pullable://")
            .trim_start_matches("docker://");
        let invalid = |error| ImageArgumentError::Reference {
            input: input.to_owned(),
            error,
        };
        if text.starts_with("sha256:") || text.starts_with("sha512:") {
            return Digest::parse(text)
                .map(ImageSource::Digest)
                .map_err(invalid);
        }
        ImageReference::parse(text)
            .map(ImageSource::Reference)
            .map_err(invalid)
    }

    /// The digest the source pins, if any.
    pub fn digest(&self) -> Option<&Digest> {
        match self {
            ImageSource::Digest(digest) => Some(digest),
            ImageSource::Reference(reference) => reference.digest.as_ref(),
        }
    }
}

impl From<ImageReference> for ImageSource {
    fn from(reference: ImageReference) -> ImageSource {
        ImageSource::Reference(reference)
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Digest(digest) => digest.fmt(f),
            ImageSource::Reference(reference) => reference.fmt(f),
        }
    }
}

impl FromStr for ImageSource {
    type Err = ImageArgumentError;
    fn from_str(s: &str) -> Result<ImageSource, ImageArgumentError> {
        ImageSource::parse(s)
    }
}

/// In the report, a source travels as its text and is parsed again.
impl Serialize for ImageSource {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageSource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ImageSource, D::Error> {
        let text = String::deserialize(deserializer)?;
        ImageSource::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Where to push: a repository and, optionally, a tag. Without a tag the
/// source's tag is kept (and a digest-only source gets the engine's
/// deterministic tag). A destination never names a digest: what is pushed
/// decides it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    /// Registry host with optional port, normalised as in references.
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
}

impl Destination {
    /// Parses `[host/]path[:tag]` with the shared reference rules.
    pub fn parse(input: &str) -> Result<Destination, ImageArgumentError> {
        if input.contains('@') {
            return Err(ImageArgumentError::DestinationDigest(input.to_owned()));
        }
        let invalid = |error| ImageArgumentError::Reference {
            input: input.to_owned(),
            error,
        };
        // As in references: a ':' after the last '/' starts the tag.
        let last_component = input.rfind('/').map_or(0, |slash| slash + 1);
        let (name, tag) = match input[last_component..].find(':') {
            Some(offset) => {
                let colon = last_component + offset;
                (&input[..colon], Some(&input[colon + 1..]))
            }
            None => (input, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(invalid)?;
        }
        let (registry, repository) = parse_repository_name(name).map_err(invalid)?;
        Ok(Destination {
            registry,
            repository,
            tag: tag.map(str::to_owned),
        })
    }

    /// Where `reference` itself lives, with its tag.
    pub fn of(reference: &ImageReference) -> Destination {
        Destination {
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            tag: reference.tag.clone(),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        Ok(())
    }
}

/// One `--image SRC[=DEST]` of an export.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExportImage {
    pub source: ImageSource,
    /// Without it the image goes to `--target-registry`, and without that
    /// back where it came from.
    pub destination: Option<Destination>,
}

impl ExportImage {
    /// Exports `source` to `destination`, naming the destination only when
    /// it differs from the source's own repository and tag (restoring in
    /// place needs no `=DEST`).
    pub fn to(source: ImageReference, destination: &ImageReference) -> ExportImage {
        let destination = Destination::of(destination);
        let in_place = Destination::of(&source) == destination;
        ExportImage {
            source: ImageSource::Reference(source),
            destination: (!in_place).then_some(destination),
        }
    }

    /// Parses `SRC` or `SRC=DEST` (a reference never contains `=`).
    pub fn parse(input: &str) -> Result<ExportImage, ImageArgumentError> {
        let (source, destination) = match input.split_once('=') {
            Some((source, destination)) => (source, Some(destination)),
            None => (input, None),
        };
        if source.is_empty() || destination.is_some_and(str::is_empty) {
            return Err(ImageArgumentError::Empty(input.to_owned()));
        }
        Ok(ExportImage {
            source: ImageSource::parse(source)?,
            destination: destination.map(Destination::parse).transpose()?,
        })
    }
}

impl fmt::Display for ExportImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.destination {
            Some(destination) => write!(f, "{}={destination}", self.source),
            None => self.source.fmt(f),
        }
    }
}

impl FromStr for ExportImage {
    type Err = ImageArgumentError;
    fn from_str(s: &str) -> Result<ExportImage, ImageArgumentError> {
        ExportImage::parse(s)
    }
}

/// One `--image NAME[=FROM]` of an import: `NAME` is the reference pods
/// use, recorded in containerd as given and in its digest form; `FROM` is
/// the registry image to pull (absent when the bytes come from a peer
/// node). The digest is pinned by `NAME` or `FROM` (both: the same).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImportImage {
    pub name: ImageReference,
    pub from: Option<ImageReference>,
}

impl ImportImage {
    /// Parses `NAME` or `NAME=FROM` and checks a digest is pinned.
    pub fn parse(input: &str) -> Result<ImportImage, ImageArgumentError> {
        let (name, from) = match input.split_once('=') {
            Some((name, from)) => (name, Some(from)),
            None => (input, None),
        };
        if name.is_empty() || from.is_some_and(str::is_empty) {
            return Err(ImageArgumentError::Empty(input.to_owned()));
        }
        let reference = |text: &str| {
            ImageReference::parse(text).map_err(|error| ImageArgumentError::Reference {
                input: text.to_owned(),
                error,
            })
        };
        let image = ImportImage {
            name: reference(name)?,
            from: from.map(reference).transpose()?,
        };
        let pinned = [
            image.name.digest.as_ref(),
            image.from.as_ref().and_then(|f| f.digest.as_ref()),
        ];
        match pinned {
            [None, None] => Err(ImageArgumentError::ImportDigestMissing(input.to_owned())),
            [Some(a), Some(b)] if a != b => {
                Err(ImageArgumentError::ImportDigestConflict(input.to_owned()))
            }
            _ => Ok(image),
        }
    }

    /// The digest to import: what the node must hold afterwards.
    pub fn digest(&self) -> Option<&Digest> {
        self.name
            .digest
            .as_ref()
            .or_else(|| self.from.as_ref().and_then(|f| f.digest.as_ref()))
    }
}

impl fmt::Display for ImportImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.from {
            Some(from) => write!(f, "{}={from}", self.name),
            None => self.name.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_images_pin_one_digest() {
        let d = digest();
        let image = ImportImage::parse(&format!("r.io/a:1=b.io/m/a@{d}")).unwrap();
        assert_eq!(image.name.to_string(), "r.io/a:1");
        assert_eq!(image.digest(), Some(&d));
        assert_eq!(ImportImage::parse(&image.to_string()).unwrap(), image);
        let alone = ImportImage::parse(&format!("r.io/a:1@{d}")).unwrap();
        assert_eq!((alone.from.as_ref(), alone.digest()), (None, Some(&d)));
        assert!(matches!(
            ImportImage::parse("r.io/a:1=b.io/a:1"),
            Err(ImageArgumentError::ImportDigestMissing(_))
        ));
        let other = format!("sha256:{}", "c".repeat(64));
        assert!(matches!(
            ImportImage::parse(&format!("r.io/a@{d}=b.io/a@{other}")),
            Err(ImageArgumentError::ImportDigestConflict(_))
        ));
        for bad in ["", "=x", &format!("r.io/a@{d}=")] {
            assert!(ImportImage::parse(bad).is_err(), "{bad}");
        }
    }

    fn digest() -> Digest {
        Digest::parse(&format!("sha256:{}", "b".repeat(64))).unwrap()
    }

    #[test]
    fn sources_strip_kubelet_prefixes() {
        let source = ImageSource::parse(&format!("docker-pullable://nginx@{}", digest())).unwrap();
        assert!(
            matches!(&source, ImageSource::Reference(r) if r.digest == Some(digest())
                && r.to_string() == format!("docker.io/library/nginx@{}", digest()))
        );
        assert_eq!(
            ImageSource::parse(&digest().to_string()).unwrap(),
            ImageSource::Digest(digest())
        );
        assert!(ImageSource::parse("sha256:short").is_err());
        assert!(ImageSource::parse("ghcr.io/Upper/case").is_err());
    }

    #[test]
    fn destinations_keep_whether_a_tag_was_given() {
        let d = Destination::parse("backup:5000/mirror/app").unwrap();
        assert_eq!(d.tag, None);
        assert_eq!(d.to_string(), "backup:5000/mirror/app");
        let d = Destination::parse("nginx:1.27").unwrap();
        assert_eq!(d.to_string(), "docker.io/library/nginx:1.27");
        let d = Destination::parse("[::1]:5000/app:v2").unwrap();
        assert_eq!(
            (d.registry.as_str(), d.tag.as_deref()),
            ("[::1]:5000", Some("v2"))
        );
        assert!(matches!(
            Destination::parse(&format!("o/x@{}", digest())),
            Err(ImageArgumentError::DestinationDigest(_))
        ));
        for bad in ["x//y", "reg.io/app:", "reg.io/app:-x", "ghcr.io/A/b"] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn export_images_name_a_destination_only_when_it_differs() {
        let source = |s: &str| ImageReference::parse(s).unwrap();
        let pinned = source(&format!("r.io/a@{}", digest()));
        assert_eq!(
            ExportImage::to(pinned.clone(), &source("r.io/a:latest")).to_string(),
            format!("r.io/a@{}=r.io/a:latest", digest())
        );
        let tagged = source(&format!("r.io/a:1.0@{}", digest()));
        let in_place = ExportImage::to(tagged.clone(), &source("r.io/a:1.0"));
        assert_eq!(in_place.destination, None);
        assert_eq!(in_place.to_string(), format!("r.io/a:1.0@{}", digest()));
        let elsewhere = ExportImage::to(tagged, &source("m.io/x/a:1.0"));
        assert_eq!(
            elsewhere.to_string(),
            format!("r.io/a:1.0@{}=m.io/x/a:1.0", digest())
        );
        assert_eq!(
            ExportImage::parse(&elsewhere.to_string()).unwrap(),
            elsewhere
        );
        let by_digest = ExportImage::to(pinned, &source(&format!("r.io/a@{}", digest())));
        assert_eq!(by_digest.destination, None);
    }

    #[test]
    fn export_images_reject_empty_halves() {
        for bad in ["", "=x", "a=", "a=b=c"] {
            assert!(ExportImage::parse(bad).is_err(), "{bad}");
        }
    }
}
