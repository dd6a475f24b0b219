//! Just enough manifest parsing to walk an image: what blobs and child
//! manifests it references. The bytes themselves are never re-serialised,
//! except to build a platform-filtered index.

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::error::TransferError;
use crate::{Descriptor, Digest};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_ARTIFACT: &str = "application/vnd.oci.artifact.manifest.v1+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header for manifest requests: every kind we can carry.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.artifact.manifest.v1+json";

/// An OS/architecture(/variant) as in an index's `platform` field.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch` or `os/arch/variant`.
    pub fn parse(s: &str) -> Result<Platform, TransferError> {
        let parts: Vec<&str> = s.split('/').collect();
        let invalid = || TransferError::InvalidConfiguration(format!("invalid platform {s:?}"));
        if parts.iter().any(|p| p.is_empty()) {
            return Err(invalid());
        }
        match parts.as_slice() {
            [os, arch] => Ok(Platform {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: None,
            }),
            [os, arch, variant] => Ok(Platform {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: Some((*variant).into()),
            }),
            _ => Err(invalid()),
        }
    }

    /// Whether a manifest for `candidate` satisfies this requested platform:
    /// a request without variant accepts every variant.
    pub fn matches(&self, candidate: &Platform) -> bool {
        self.os == candidate.os
            && self.architecture == candidate.architecture
            && (self.variant.is_none() || self.variant == candidate.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// A child of an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildManifest {
    pub descriptor: Descriptor,
    pub platform: Option<Platform>,
    /// For a buildx attestation manifest (annotation
    /// `vnd.docker.reference.type: attestation-manifest`): the digest of
    /// the platform manifest it describes (`vnd.docker.reference.digest`).
    pub attests: Option<Digest>,
}

/// buildx marks the attestation manifests it puts into an index with
/// these annotations (platform `unknown/unknown`).
pub const BUILDX_REFERENCE_TYPE: &str = "vnd.docker.reference.type";
pub const BUILDX_REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";
pub const BUILDX_ATTESTATION: &str = "attestation-manifest";

/// What a manifest references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestContent {
    Index { children: Vec<ChildManifest> },
    Image { blobs: Vec<Descriptor> },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    blobs: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<RawPlatform>,
    #[serde(default)]
    annotations: Option<std::collections::HashMap<String, String>>,
}

#[derive(Deserialize)]
struct RawPlatform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

fn invalid(digest: &Digest, detail: impl Into<String>) -> TransferError {
    TransferError::InvalidManifest {
        digest: digest.to_string(),
        detail: detail.into(),
    }
}

impl RawDescriptor {
    fn into_descriptor(self, owner: &Digest) -> Result<Descriptor, TransferError> {
        let digest = Digest::parse(&self.digest)
            .map_err(|e| invalid(owner, format!("bad digest {:?}: {e}", self.digest)))?;
        Ok(Descriptor {
            media_type: self.media_type,
            digest,
            size: self.size,
        })
    }
}

/// The media type a manifest is pushed with: its own `mediaType` field if it
/// has one, otherwise what the source said.
pub fn effective_media_type(bytes: &[u8], reported: &str) -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct OnlyMediaType {
        #[serde(default)]
        media_type: Option<String>,
    }
    serde_json::from_slice::<OnlyMediaType>(bytes)
        .ok()
        .and_then(|m| m.media_type)
        .unwrap_or_else(|| reported.to_owned())
}

/// Parses what a manifest references. Any media type is accepted as long as
/// the document has the shape of an index or an image/artifact manifest;
/// Docker schema 1 is refused (it cannot be copied digest-exactly between
/// registries, which re-sign it).
pub fn parse(
    bytes: &[u8],
    media_type: &str,
    digest: &Digest,
) -> Result<ManifestContent, TransferError> {
    if media_type == DOCKER_SCHEMA1 || media_type == DOCKER_SCHEMA1_SIGNED {
        return Err(TransferError::UnsupportedMediaType {
            media_type: media_type.to_owned(),
        });
    }
    let raw: RawManifest = serde_json::from_slice(bytes)
        .map_err(|e| invalid(digest, format!("not a manifest: {e}")))?;
    if raw.schema_version == Some(1) {
        return Err(TransferError::UnsupportedMediaType {
            media_type: raw.media_type.unwrap_or_else(|| DOCKER_SCHEMA1.to_owned()),
        });
    }
    if let Some(manifests) = raw.manifests {
        let children = manifests
            .into_iter()
            .map(|raw| {
                let platform = raw.platform.as_ref().map(|p| Platform {
                    os: p.os.clone(),
                    architecture: p.architecture.clone(),
                    variant: p.variant.clone(),
                });
                let attests = raw
                    .annotations
                    .as_ref()
                    .filter(|a| {
                        a.get(BUILDX_REFERENCE_TYPE).map(String::as_str) == Some(BUILDX_ATTESTATION)
                    })
                    .and_then(|a| a.get(BUILDX_REFERENCE_DIGEST))
                    .and_then(|d| Digest::parse(d).ok());
                Ok(ChildManifest {
                    descriptor: raw.into_descriptor(digest)?,
                    platform,
                    attests,
                })
            })
            .collect::<Result<_, TransferError>>()?;
        return Ok(ManifestContent::Index { children });
    }
    if raw.config.is_none() && raw.layers.is_none() && raw.blobs.is_none() {
        return Err(TransferError::UnsupportedMediaType {
            media_type: media_type.to_owned(),
        });
    }
    let blobs = raw
        .config
        .into_iter()
        .chain(raw.layers.unwrap_or_default())
        .chain(raw.blobs.unwrap_or_default())
        .map(|d| d.into_descriptor(digest))
        .collect::<Result<_, _>>()?;
    Ok(ManifestContent::Image { blobs })
}

/// Keeps only the children of an index matching one of `platforms`, and
/// the buildx attestation manifests of those (and only those) children.
/// Returns `None` when every child is kept (the index is copied as is),
/// otherwise the new index bytes and the kept children. Other children
/// without a matching platform are dropped with the filtered ones.
pub fn filter_index(
    bytes: &[u8],
    digest: &Digest,
    children: &[ChildManifest],
    platforms: &[Platform],
) -> Result<Option<(Bytes, Vec<ChildManifest>)>, TransferError> {
    let platform_match: Vec<bool> = children
        .iter()
        .map(|child| {
            child.attests.is_none()
                && child
                    .platform
                    .as_ref()
                    .is_some_and(|p| platforms.iter().any(|wanted| wanted.matches(p)))
        })
        .collect();
    let kept_platforms: Vec<&Digest> = children
        .iter()
        .zip(&platform_match)
        .filter(|(_, k)| **k)
        .map(|(c, _)| &c.descriptor.digest)
        .collect();
    let keep: Vec<bool> = children
        .iter()
        .zip(&platform_match)
        .map(|(child, matched)| {
            *matched
                || child
                    .attests
                    .as_ref()
                    .is_some_and(|described| kept_platforms.contains(&described))
        })
        .collect();
    if keep.iter().all(|k| *k) {
        return Ok(None);
    }
    if !platform_match.iter().any(|k| *k) {
        return Err(TransferError::NoMatchingPlatform {
            digest: digest.clone(),
        });
    }
    let mut document: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(digest, e.to_string()))?;
    let manifests = document
        .get_mut("manifests")
        .and_then(|m| m.as_array_mut())
        .ok_or_else(|| invalid(digest, "index without manifests"))?;
    if manifests.len() != keep.len() {
        return Err(invalid(digest, "index changed while filtering"));
    }
    let mut flags = keep.iter();
    manifests.retain(|_| flags.next().copied().unwrap_or(false));
    let new_bytes = serde_json::to_vec(&document).map_err(|e| invalid(digest, e.to_string()))?;
    let kept = children
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(c, _)| c.clone())
        .collect();
    Ok(Some((Bytes::from(new_bytes), kept)))
}

/// The sha256 digest of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    Digest::sha256(&Sha256::digest(bytes).into())
}

/// Checks that `bytes` hash to `expected` (sha256 or sha512).
pub fn verify(bytes: &[u8], expected: &Digest) -> Result<(), TransferError> {
    let actual = match expected.algorithm() {
        "sha512" => format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes))),
        _ => sha256_digest(bytes).to_string(),
    };
    if actual == expected.as_str() {
        Ok(())
    } else {
        Err(TransferError::DigestMismatch {
            expected: expected.clone(),
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn index() -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":10,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":11,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":12,"platform":{{"os":"unknown","architecture":"unknown"}}}}
            ],"annotations":{{"a":"b"}}}}"#,
            d('1'),
            d('2'),
            d('3')
        )
        .into_bytes()
    }

    #[test]
    fn parses_images_artifacts_and_indexes() {
        let owner = Digest::parse(&d('f')).unwrap();
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x/config","digest":"{}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{}","size":3}}]}}"#,
            d('a'),
            d('b')
        );
        match parse(image.as_bytes(), OCI_MANIFEST, &owner).unwrap() {
            ManifestContent::Image { blobs } => {
                assert_eq!(blobs.len(), 2);
                assert_eq!(
                    blobs[1].media_type,
                    "application/vnd.oci.image.layer.v1.tar+zstd"
                );
            }
            other => panic!("{other:?}"),
        }
        let artifact = format!(
            r#"{{"blobs":[{{"mediaType":"any/thing","digest":"{}","size":3}}]}}"#,
            d('c')
        );
        assert!(matches!(
            parse(artifact.as_bytes(), OCI_ARTIFACT, &owner).unwrap(),
            ManifestContent::Image { blobs } if blobs.len() == 1
        ));
        match parse(&index(), OCI_INDEX, &owner).unwrap() {
            ManifestContent::Index { children } => assert_eq!(children.len(), 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(
                br#"{"schemaVersion":1,"fsLayers":[]}"#,
                "application/json",
                &owner
            )
            .unwrap_err()
            .reason(),
            "UnsupportedMediaType"
        );
        assert_eq!(
            parse(b"{]", OCI_MANIFEST, &owner).unwrap_err().reason(),
            "InvalidManifest"
        );
    }

    #[test]
    fn filters_index_by_platform_and_changes_digest() {
        let owner = Digest::parse(&d('f')).unwrap();
        let bytes = index();
        let ManifestContent::Index { children } = parse(&bytes, OCI_INDEX, &owner).unwrap() else {
            panic!("not an index")
        };
        let arm = Platform::parse("linux/arm64").unwrap();
        let (new_bytes, kept) = filter_index(&bytes, &owner, &children, &[arm])
            .unwrap()
            .unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].descriptor.digest.as_str(), d('2'));
        let reparsed: serde_json::Value = serde_json::from_slice(&new_bytes).unwrap();
        assert_eq!(reparsed["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(reparsed["annotations"]["a"], "b");
        assert_ne!(sha256_digest(&new_bytes), sha256_digest(&bytes));

        let v7 = Platform::parse("linux/arm64/v7").unwrap();
        assert_eq!(
            filter_index(&bytes, &owner, &children, &[v7])
                .unwrap_err()
                .reason(),
            "NoMatchingPlatform"
        );
        let everything = [
            Platform::parse("linux/amd64").unwrap(),
            Platform::parse("linux/arm64").unwrap(),
            Platform::parse("unknown/unknown").unwrap(),
        ];
        assert!(
            filter_index(&bytes, &owner, &children, &everything)
                .unwrap()
                .is_none()
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//v8").is_err());
    }

    /// A buildx index: two platforms, each with its attestation manifest.
    fn buildx_index() -> Vec<u8> {
        let attestation = |of: char, own: char| {
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,
                "platform":{{"os":"unknown","architecture":"unknown"}},
                "annotations":{{"{BUILDX_REFERENCE_TYPE}":"{BUILDX_ATTESTATION}","{BUILDX_REFERENCE_DIGEST}":"{}"}}}}"#,
                d(own),
                d(of)
            )
        };
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":10,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":11,"platform":{{"os":"linux","architecture":"arm64"}}}},
            {},{}]}}"#,
            d('1'),
            d('2'),
            attestation('1', 'a'),
            attestation('2', 'b'),
        )
        .into_bytes()
    }

    #[test]
    fn a_filtered_buildx_index_keeps_the_attestations_of_the_kept_platforms_only() {
        let owner = Digest::parse(&d('f')).unwrap();
        let bytes = buildx_index();
        let ManifestContent::Index { children } = parse(&bytes, OCI_INDEX, &owner).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(children[2].attests.as_ref().unwrap().as_str(), d('1'));
        assert_eq!(children[0].attests, None);
        let arm = Platform::parse("linux/arm64").unwrap();
        let (new_bytes, kept) = filter_index(&bytes, &owner, &children, &[arm])
            .unwrap()
            .unwrap();
        let kept: Vec<String> = kept
            .iter()
            .map(|c| c.descriptor.digest.to_string())
            .collect();
        assert_eq!(kept, vec![d('2'), d('b')]);
        let reparsed: serde_json::Value = serde_json::from_slice(&new_bytes).unwrap();
        let digests: Vec<&str> = reparsed["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap())
            .collect();
        assert_eq!(digests, vec![d('2'), d('b')]);
        // `unknown/unknown` does not select attestations on its own.
        let unknown = Platform::parse("unknown/unknown").unwrap();
        assert_eq!(
            filter_index(&bytes, &owner, &children, &[unknown])
                .unwrap_err()
                .reason(),
            "NoMatchingPlatform"
        );
        // Both platforms: everything kept, the index is copied unchanged.
        let both = [
            Platform::parse("linux/amd64").unwrap(),
            Platform::parse("linux/arm64").unwrap(),
        ];
        assert!(
            filter_index(&bytes, &owner, &children, &both)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn verifies_digests() {
        let digest = sha256_digest(b"hello");
        assert!(verify(b"hello", &digest).is_ok());
        assert_eq!(
            verify(b"hellp", &digest).unwrap_err().reason(),
            "DigestMismatch"
        );
        assert_eq!(
            effective_media_type(br#"{"mediaType":"a/b"}"#, "c/d"),
            "a/b"
        );
        assert_eq!(effective_media_type(b"{}", "c/d"), "c/d");
    }
}
