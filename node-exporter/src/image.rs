//! Finding an image in containerd and working out what of it the node holds.
//!
//! The async functions only gather facts from containerd; what to do with
//! them is decided by [`decide`], which is pure.

use containerd_client::services::v1::Image;
use registry_transfer::{Descriptor, Digest};
use serde::Serialize;

use crate::containerd::Containerd;
use crate::error::Error;
use crate::oci::{self, DocumentKind, ImageIndex, ImageManifest, Platform, RawDescriptor};
use registry_transfer::ImageReference;

use lifeboat_node_protocol::{Exportable, ImageSource as Query};

use crate::reference::parse_reference;

/// An image located in containerd.
#[derive(Clone, Debug)]
pub struct Located {
    /// The best name containerd has for it (a tagged name if there is one),
    /// used to name the push target when the query was a bare digest.
    pub name: Option<ImageReference>,
    /// What the query designates: an index or a manifest.
    pub descriptor: Descriptor,
}

/// What the node holds of one image manifest.
#[derive(Clone, Debug)]
pub struct ManifestState {
    pub descriptor: Descriptor,
    pub platform: Option<Platform>,
    /// `None` when the manifest blob itself is not on the node.
    pub content: Option<ManifestContent>,
}

#[derive(Clone, Debug)]
pub struct ManifestContent {
    pub manifest: ImageManifest,
    pub config_present: bool,
    /// One flag per layer, in manifest order.
    pub layers_present: Vec<bool>,
}

impl ManifestState {
    pub fn is_complete(&self) -> bool {
        self.content
            .as_ref()
            .is_some_and(|c| c.config_present && c.layers_present.iter().all(|p| *p))
    }
}

/// What the node holds of the image a query designates.
#[derive(Clone, Debug)]
pub enum ImageState {
    Manifest(Box<ManifestState>),
    Index {
        descriptor: Descriptor,
        children: Vec<ManifestState>,
    },
}

impl ImageState {
    /// The state of one of the image's manifests, by digest.
    pub fn manifest(&self, digest: &Digest) -> Option<&ManifestState> {
        match self {
            ImageState::Manifest(m) => Some(m.as_ref()).filter(|m| m.descriptor.digest == *digest),
            ImageState::Index { children, .. } => {
                children.iter().find(|m| m.descriptor.digest == *digest)
            }
        }
    }
}

/// How to export an image, decided from its [`ImageState`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Every blob is on the node: push `root` (index or manifest) unchanged.
    Exact { root: Descriptor },
    /// Push one platform's manifest unchanged. When `index` is set, the query
    /// named an index the node does not hold whole.
    PlatformOnly {
        index: Descriptor,
        manifest: Descriptor,
        platform: Option<String>,
    },
    /// Some compressed layers are gone: rebuild them from the unpacked
    /// snapshots, which yields a new manifest.
    Rebuild {
        index: Option<Descriptor>,
        manifest: Descriptor,
        platform: Option<String>,
        missing_layers: Vec<usize>,
    },
}

/// Finds the image a query designates.
pub async fn locate(containerd: &Containerd, query: &Query) -> Result<Located, Error> {
    let images = containerd.list_images().await?;
    match query {
        Query::Reference(reference) => match &reference.digest {
            None => {
                let wanted = reference.to_string();
                let image = images
                    .iter()
                    .find(|image| image.name == wanted)
                    .ok_or_else(|| Error::ImageNotFound(wanted.clone()))?;
                Ok(Located {
                    name: Some(reference.clone()),
                    descriptor: image_target(image)?,
                })
            }
            Some(digest) => {
                let mut located =
                    locate_digest(containerd, &images, digest, Some(reference)).await?;
                // The reference the user gave names the repository better
                // than whatever other name containerd holds the digest under.
                located.name = Some(reference.clone());
                Ok(located)
            }
        },
        Query::Digest(digest) => locate_digest(containerd, &images, digest, None).await,
    }
}

/// A digest may be an image's target (index or manifest), one platform's
/// manifest inside an index, or an image config (what CRI calls the image
/// ID). Look in that order.
async fn locate_digest(
    containerd: &Containerd,
    images: &[Image],
    digest: &Digest,
    reference: Option<&ImageReference>,
) -> Result<Located, Error> {
    let target_matches: Vec<&Image> = images
        .iter()
        .filter(|image| {
            image
                .target
                .as_ref()
                .is_some_and(|t| t.digest == digest.as_str())
        })
        .collect();
    if let Some(image) = target_matches.first() {
        return Ok(Located {
            name: best_name(&target_matches, reference),
            descriptor: image_target(image)?,
        });
    }
    for image in images {
        let target = image_target(image)?;
        let Some(kind) = oci::document_kind(&target.media_type) else {
            continue;
        };
        if !containerd.has(target.digest.as_str()).await? {
            continue;
        }
        let bytes = containerd
            .read_small(target.digest.as_str(), oci::MAX_MANIFEST_BYTES)
            .await?;
        let manifests: Vec<Descriptor> = match kind {
            DocumentKind::Index => {
                let index: ImageIndex = oci::parse(&target.digest, &bytes)?;
                let mut children = Vec::new();
                for child in &index.manifests {
                    let child = child.to_descriptor(&target.digest)?;
                    if child.digest == *digest {
                        return Ok(Located {
                            name: best_name(&[image], reference),
                            descriptor: child,
                        });
                    }
                    children.push(child);
                }
                children
            }
            DocumentKind::Manifest => vec![target.clone()],
        };
        for manifest in manifests {
            if !containerd.has(manifest.digest.as_str()).await? {
                continue;
            }
            let bytes = containerd
                .read_small(manifest.digest.as_str(), oci::MAX_MANIFEST_BYTES)
                .await?;
            let parsed: ImageManifest = oci::parse(&manifest.digest, &bytes)?;
            if parsed.config.digest == digest.as_str() {
                return Ok(Located {
                    name: best_name(&[image], reference),
                    descriptor: manifest,
                });
            }
        }
    }
    Err(Error::ImageNotFound(digest.to_string()))
}

fn image_target(image: &Image) -> Result<Descriptor, Error> {
    let target = image
        .target
        .as_ref()
        .ok_or_else(|| Error::InvalidManifest {
            digest: image.name.clone(),
            reason: "image record has no target".to_owned(),
        })?;
    let digest = Digest::parse(&target.digest).map_err(|_| Error::InvalidManifest {
        digest: image.name.clone(),
        reason: format!("bad target digest {:?}", target.digest),
    })?;
    Ok(Descriptor {
        media_type: target.media_type.clone(),
        digest,
        size: u64::try_from(target.size).unwrap_or(0),
    })
}

/// Prefers a tagged name, then a `name@digest` name; CRI's bare `sha256:`
/// image-ID records name no repository at all.
fn best_name(images: &[&Image], reference: Option<&ImageReference>) -> Option<ImageReference> {
    if let Some(reference) = reference {
        return Some(reference.clone());
    }
    let parsed: Vec<ImageReference> = images
        .iter()
        .filter(|image| !image.name.starts_with("sha256:"))
        .filter_map(|image| parse_reference(&image.name).ok())
        .collect();
    parsed
        .iter()
        .find(|r| r.tag.is_some())
        .or_else(|| parsed.first())
        .cloned()
}

/// Reads the manifest or index a descriptor names and checks which of its
/// blobs the content store holds. Never fails on a missing blob: absence is
/// what this function reports.
pub async fn inspect(
    containerd: &Containerd,
    descriptor: &Descriptor,
) -> Result<ImageState, Error> {
    let kind = match oci::document_kind(&descriptor.media_type) {
        Some(kind) => kind,
        None => sniff_kind(containerd, descriptor).await?,
    };
    match kind {
        DocumentKind::Manifest => Ok(ImageState::Manifest(Box::new(
            inspect_manifest(containerd, descriptor.clone(), None).await?,
        ))),
        DocumentKind::Index => {
            if !containerd.has(descriptor.digest.as_str()).await? {
                return Err(Error::ImageNotFound(descriptor.digest.to_string()));
            }
            let bytes = containerd
                .read_small(descriptor.digest.as_str(), oci::MAX_MANIFEST_BYTES)
                .await?;
            let index: ImageIndex = oci::parse(&descriptor.digest, &bytes)?;
            let mut children = Vec::with_capacity(index.manifests.len());
            for child in &index.manifests {
                children.push(inspect_child(containerd, &descriptor.digest, child).await?);
            }
            Ok(ImageState::Index {
                descriptor: descriptor.clone(),
                children,
            })
        }
    }
}

async fn sniff_kind(
    containerd: &Containerd,
    descriptor: &Descriptor,
) -> Result<DocumentKind, Error> {
    let bytes = containerd
        .read_small(descriptor.digest.as_str(), oci::MAX_MANIFEST_BYTES)
        .await?;
    oci::sniff_media_type(&bytes)
        .as_deref()
        .and_then(oci::document_kind)
        .ok_or_else(|| Error::InvalidManifest {
            digest: descriptor.digest.to_string(),
            reason: format!("not an image manifest or index ({})", descriptor.media_type),
        })
}

async fn inspect_child(
    containerd: &Containerd,
    index: &Digest,
    child: &RawDescriptor,
) -> Result<ManifestState, Error> {
    let descriptor = child.to_descriptor(index)?;
    if oci::document_kind(&descriptor.media_type) != Some(DocumentKind::Manifest) {
        // Nested indexes are vanishingly rare in pulled images; treat them
        // as absent so the index is not reported complete.
        return Ok(ManifestState {
            descriptor,
            platform: child.platform.clone(),
            content: None,
        });
    }
    inspect_manifest(containerd, descriptor, child.platform.clone()).await
}

async fn inspect_manifest(
    containerd: &Containerd,
    descriptor: Descriptor,
    platform: Option<Platform>,
) -> Result<ManifestState, Error> {
    if !containerd.has(descriptor.digest.as_str()).await? {
        return Ok(ManifestState {
            descriptor,
            platform,
            content: None,
        });
    }
    let bytes = containerd
        .read_small(descriptor.digest.as_str(), oci::MAX_MANIFEST_BYTES)
        .await?;
    let manifest: ImageManifest = oci::parse(&descriptor.digest, &bytes)?;
    let config_present = containerd.has(&manifest.config.digest).await?;
    let mut layers_present = Vec::with_capacity(manifest.layers.len());
    for layer in &manifest.layers {
        layers_present.push(containerd.has(&layer.digest).await?);
    }
    Ok(ManifestState {
        descriptor,
        platform,
        content: Some(ManifestContent {
            manifest,
            config_present,
            layers_present,
        }),
    })
}

/// Decides how to export what the node holds.
pub fn decide(state: &ImageState, node: &Platform) -> Result<Plan, Error> {
    match state {
        ImageState::Manifest(manifest) => decide_manifest(manifest, None),
        ImageState::Index {
            descriptor,
            children,
        } => {
            if !children.is_empty() && children.iter().all(ManifestState::is_complete) {
                return Ok(Plan::Exact {
                    root: descriptor.clone(),
                });
            }
            let candidates: Vec<(RawDescriptor, bool)> = children
                .iter()
                .map(|child| {
                    let raw = RawDescriptor {
                        media_type: child.descriptor.media_type.clone(),
                        digest: child.descriptor.digest.to_string(),
                        size: child.descriptor.size,
                        platform: child.platform.clone(),
                    };
                    (raw, child.content.is_some())
                })
                .collect();
            // Prefer a complete child; only fall back to rebuilding one when
            // no platform is complete.
            let complete: Vec<(RawDescriptor, bool)> = candidates
                .iter()
                .zip(children)
                .map(|((raw, _), child)| (raw.clone(), child.is_complete()))
                .collect();
            let chosen = oci::pick_platform_child(&complete, node)
                .or_else(|| oci::pick_platform_child(&candidates, node))
                .ok_or_else(|| Error::ImageNotFound(descriptor.digest.to_string()))?;
            let child = children
                .iter()
                .find(|c| c.descriptor.digest.as_str() == chosen.digest)
                .ok_or_else(|| Error::ImageNotFound(descriptor.digest.to_string()))?;
            decide_manifest(child, Some(descriptor))
        }
    }
}

fn decide_manifest(manifest: &ManifestState, index: Option<&Descriptor>) -> Result<Plan, Error> {
    let platform = manifest.platform.as_ref().map(Platform::label);
    let content = manifest
        .content
        .as_ref()
        .ok_or_else(|| Error::ImageNotFound(manifest.descriptor.digest.to_string()))?;
    if !content.config_present {
        // Nothing rebuilds a config: without it there is no image here.
        return Err(Error::ContentMissing {
            digest: content.manifest.config.digest.clone(),
        });
    }
    let missing_layers: Vec<usize> = content
        .layers_present
        .iter()
        .enumerate()
        .filter(|(_, present)| !**present)
        .map(|(i, _)| i)
        .collect();
    Ok(match (missing_layers.is_empty(), index) {
        (true, None) => Plan::Exact {
            root: manifest.descriptor.clone(),
        },
        (true, Some(index)) => Plan::PlatformOnly {
            index: index.clone(),
            manifest: manifest.descriptor.clone(),
            platform,
        },
        (false, index) => Plan::Rebuild {
            index: index.cloned(),
            manifest: manifest.descriptor.clone(),
            platform,
            missing_layers,
        },
    })
}

/// One image as the `inventory` command lists it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryEntry {
    pub names: Vec<String>,
    pub digest: registry_transfer::Digest,
    pub media_type: String,
    /// `exact`, `platform` (one platform of an index, digest-exact),
    /// `rebuild` (layers must be rebuilt) or `none`.
    pub exportable: Exportable,
    pub manifests: Vec<InventoryManifest>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryManifest {
    pub digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    pub layers: usize,
    pub layers_present: usize,
}

/// The inventory line for one image, from its state.
pub fn inventory_entry(names: Vec<String>, state: &ImageState, node: &Platform) -> InventoryEntry {
    let (descriptor, manifests): (&Descriptor, Vec<&ManifestState>) = match state {
        ImageState::Manifest(m) => (&m.descriptor, vec![m.as_ref()]),
        ImageState::Index {
            descriptor,
            children,
        } => (descriptor, children.iter().collect()),
    };
    let exportable = match decide(state, node) {
        Ok(Plan::Exact { .. }) => Exportable::Exact,
        Ok(Plan::PlatformOnly { .. }) => Exportable::Platform,
        Ok(Plan::Rebuild { .. }) => Exportable::Rebuild,
        Err(_) => Exportable::None,
    };
    InventoryEntry {
        names,
        digest: descriptor.digest.clone(),
        media_type: descriptor.media_type.clone(),
        exportable,
        manifests: manifests
            .into_iter()
            .map(|m| InventoryManifest {
                digest: m.descriptor.digest.to_string(),
                platform: m.platform.as_ref().map(Platform::label),
                present: m.content.is_some(),
                config: m.content.as_ref().map(|c| c.manifest.config.digest.clone()),
                layers: m.content.as_ref().map_or(0, |c| c.layers_present.len()),
                layers_present: m
                    .content
                    .as_ref()
                    .map_or(0, |c| c.layers_present.iter().filter(|p| **p).count()),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn raw(c: char, media_type: &str) -> RawDescriptor {
        RawDescriptor {
            media_type: media_type.into(),
            digest: digest(c).to_string(),
            size: 10,
            platform: None,
        }
    }

    fn manifest(c: char, arch: &str, present: Option<(bool, Vec<bool>)>) -> ManifestState {
        ManifestState {
            descriptor: Descriptor {
                media_type: oci::OCI_MANIFEST.into(),
                digest: digest(c),
                size: 100,
            },
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            }),
            content: present.map(|(config_present, layers_present)| ManifestContent {
                manifest: ImageManifest {
                    media_type: None,
                    config: raw('f', "application/vnd.oci.image.config.v1+json"),
                    layers: layers_present
                        .iter()
                        .map(|_| raw('1', oci::OCI_LAYER_GZIP))
                        .collect(),
                },
                config_present,
                layers_present,
            }),
        }
    }

    fn index(children: Vec<ManifestState>) -> ImageState {
        ImageState::Index {
            descriptor: Descriptor {
                media_type: oci::OCI_INDEX.into(),
                digest: digest('e'),
                size: 200,
            },
            children,
        }
    }

    fn amd64() -> Platform {
        Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        }
    }

    #[test]
    fn complete_manifest_is_exact() {
        let state = ImageState::Manifest(Box::new(manifest(
            'a',
            "amd64",
            Some((true, vec![true, true])),
        )));
        assert_eq!(
            decide(&state, &amd64()).unwrap(),
            Plan::Exact {
                root: Descriptor {
                    media_type: oci::OCI_MANIFEST.into(),
                    digest: digest('a'),
                    size: 100
                }
            }
        );
    }

    #[test]
    fn complete_index_is_pushed_whole() {
        let state = index(vec![
            manifest('a', "amd64", Some((true, vec![true]))),
            manifest('b', "arm64", Some((true, vec![true]))),
        ]);
        assert!(
            matches!(decide(&state, &amd64()).unwrap(), Plan::Exact { root } if root.digest == digest('e'))
        );
    }

    #[test]
    fn partial_index_pushes_the_node_platform() {
        let state = index(vec![
            manifest('b', "arm64", None),
            manifest('a', "amd64", Some((true, vec![true]))),
        ]);
        let plan = decide(&state, &amd64()).unwrap();
        assert!(
            matches!(&plan, Plan::PlatformOnly { index, manifest, platform }
                if index.digest == digest('e') && manifest.digest == digest('a')
                    && platform.as_deref() == Some("linux/amd64")),
            "{plan:?}"
        );
    }

    #[test]
    fn complete_platform_beats_rebuilding_the_node_platform() {
        let state = index(vec![
            manifest('a', "amd64", Some((true, vec![false]))),
            manifest('b', "arm64", Some((true, vec![true]))),
        ]);
        let plan = decide(&state, &amd64()).unwrap();
        assert!(
            matches!(plan, Plan::PlatformOnly { manifest, .. } if manifest.digest == digest('b'))
        );
    }

    #[test]
    fn missing_layers_mean_rebuild() {
        let state = index(vec![manifest(
            'a',
            "amd64",
            Some((true, vec![true, false, false])),
        )]);
        let plan = decide(&state, &amd64()).unwrap();
        assert!(
            matches!(&plan, Plan::Rebuild { index: Some(_), missing_layers, .. } if *missing_layers == vec![1, 2]),
            "{plan:?}"
        );
    }

    #[test]
    fn missing_config_or_manifest_is_not_exportable() {
        let state =
            ImageState::Manifest(Box::new(manifest('a', "amd64", Some((false, vec![true])))));
        assert!(matches!(
            decide(&state, &amd64()),
            Err(Error::ContentMissing { .. })
        ));
        let state = index(vec![manifest('a', "amd64", None)]);
        assert!(matches!(
            decide(&state, &amd64()),
            Err(Error::ImageNotFound(_))
        ));
        let state = index(vec![]);
        assert!(matches!(
            decide(&state, &amd64()),
            Err(Error::ImageNotFound(_))
        ));
    }

    #[test]
    fn inventory_reports_presence_counts() {
        let state = index(vec![
            manifest('a', "amd64", Some((true, vec![true, false]))),
            manifest('b', "arm64", None),
        ]);
        let entry = inventory_entry(vec!["x".into()], &state, &amd64());
        assert_eq!(entry.exportable, Exportable::Rebuild);
        assert_eq!(entry.manifests[0].layers, 2);
        assert_eq!(entry.manifests[0].layers_present, 1);
        assert!(!entry.manifests[1].present);
    }
}
