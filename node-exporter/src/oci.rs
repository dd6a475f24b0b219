//! The few OCI / Docker image documents node-exporter has to read, and the
//! pure computations on them (chain IDs, platform choice, media types).

use registry_transfer::{Descriptor, Digest};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::error::Error;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Manifests are small; anything bigger is not a manifest and must not be
/// read into memory.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentKind {
    Index,
    Manifest,
}

/// Index or manifest, from a media type.
pub fn document_kind(media_type: &str) -> Option<DocumentKind> {
    match media_type {
        OCI_INDEX | DOCKER_MANIFEST_LIST => Some(DocumentKind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Some(DocumentKind::Manifest),
        _ => None,
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on, in OCI (Go) spelling.
    pub fn current() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            architecture: architecture.to_owned(),
            os: std::env::consts::OS.to_owned(),
            variant: None,
        }
    }

    pub fn label(&self) -> String {
        match &self.variant {
            Some(variant) => format!("{}/{}/{variant}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawDescriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

impl RawDescriptor {
    pub fn to_descriptor(&self, parent: &Digest) -> Result<Descriptor, Error> {
        let digest = Digest::parse(&self.digest).map_err(|_| Error::InvalidManifest {
            digest: parent.to_string(),
            reason: format!("bad child digest {:?}", self.digest),
        })?;
        Ok(Descriptor {
            media_type: self.media_type.clone(),
            digest,
            size: self.size,
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<RawDescriptor>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: RawDescriptor,
    pub layers: Vec<RawDescriptor>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ImageConfig {
    pub rootfs: RootFs,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RootFs {
    pub diff_ids: Vec<String>,
}

pub fn parse<T: serde::de::DeserializeOwned>(digest: &Digest, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::InvalidManifest {
        digest: digest.to_string(),
        reason: e.to_string(),
    })
}

/// The media type a stored document declares, or what its shape says when
/// the (optional) `mediaType` field is absent.
pub fn sniff_media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(media_type) = value.get("mediaType").and_then(|m| m.as_str()) {
        return Some(media_type.to_owned());
    }
    if value.get("manifests").is_some() {
        Some(OCI_INDEX.to_owned())
    } else if value.get("config").is_some() && value.get("layers").is_some() {
        Some(OCI_MANIFEST.to_owned())
    } else {
        None
    }
}

/// containerd names unpacked snapshots by chain ID: the first layer's diff
/// ID, then `sha256(previous + " " + diff_id)` for each further layer.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(previous) => {
                let hash = Sha256::digest(format!("{previous} {diff_id}").as_bytes());
                format!("sha256:{}", hex::encode(hash))
            }
        };
        chain.push(next);
    }
    chain
}

/// The media type to ask containerd's differ for (it only speaks OCI media
/// types), and the one to write into the rebuilt manifest (the original's,
/// so a Docker manifest stays a consistent Docker manifest).
pub fn rebuild_media_types(original: &str) -> Option<(&'static str, &str)> {
    let differ = match original {
        OCI_LAYER => OCI_LAYER,
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => OCI_LAYER_GZIP,
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD => OCI_LAYER_ZSTD,
        _ => return None,
    };
    Some((differ, original))
}

/// Which of an index's children to push when only some are on the node: the
/// node's own platform if present, otherwise the first present one.
pub fn pick_platform_child<'a>(
    present: &'a [(RawDescriptor, bool)],
    node: &Platform,
) -> Option<&'a RawDescriptor> {
    let on_node = |(_, present): &&(RawDescriptor, bool)| *present;
    present
        .iter()
        .filter(on_node)
        .find(|(child, _)| {
            child
                .platform
                .as_ref()
                .is_some_and(|p| p.os == node.os && p.architecture == node.architecture)
        })
        .or_else(|| present.iter().find(on_node))
        .map(|(child, _)| child)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        let expected = Sha256::digest(format!("{a} {b}").as_bytes());
        assert_eq!(chain[1], format!("sha256:{}", hex::encode(expected)));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn sniffs_documents_without_media_type() {
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(OCI_INDEX)
        );
        assert_eq!(
            sniff_media_type(br#"{"config":{},"layers":[]}"#).as_deref(),
            Some(OCI_MANIFEST)
        );
        assert_eq!(
            sniff_media_type(br#"{"mediaType":"x","config":{},"layers":[]}"#).as_deref(),
            Some("x")
        );
        assert_eq!(sniff_media_type(b"not json"), None);
    }

    #[test]
    fn docker_layers_are_rebuilt_as_gzip_and_keep_their_type() {
        assert_eq!(
            rebuild_media_types(DOCKER_LAYER_GZIP),
            Some((OCI_LAYER_GZIP, DOCKER_LAYER_GZIP))
        );
        assert_eq!(rebuild_media_types(OCI_LAYER), Some((OCI_LAYER, OCI_LAYER)));
        assert_eq!(rebuild_media_types("application/x-unknown"), None);
    }

    fn child(arch: &str) -> RawDescriptor {
        RawDescriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", "c".repeat(64)),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            }),
        }
    }

    #[test]
    fn picks_the_node_platform_then_any_present_child() {
        let node = Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: None,
        };
        let both = vec![(child("amd64"), true), (child("arm64"), true)];
        let picked = pick_platform_child(&both, &node).map(|c| c.platform.clone());
        assert_eq!(
            picked.flatten().map(|p| p.architecture),
            Some("arm64".into())
        );
        let only_amd = vec![(child("amd64"), true), (child("arm64"), false)];
        let picked = pick_platform_child(&only_amd, &node).map(|c| c.platform.clone());
        assert_eq!(
            picked.flatten().map(|p| p.architecture),
            Some("amd64".into())
        );
        let none = vec![(child("amd64"), false)];
        assert!(pick_platform_child(&none, &node).is_none());
    }
}
