//! Rebuilding compressed layers that containerd discarded after unpacking
//! (`discard_unpacked_layers`), from the unpacked snapshots, through
//! containerd's diff service.
//!
//! A rebuilt layer holds the same files but is not byte-identical (tar
//! headers and compression differ), so the image gets a new manifest digest
//! and, when the uncompressed digests differ too, a new config. The result is
//! always reported as rebuilt, with both digests.

use bytes::Bytes;
use registry_transfer::manifest::sha256_digest;
use registry_transfer::{Descriptor, Digest};
use serde_json::Value;

use crate::containerd::{Containerd, UNCOMPRESSED_LABEL};
use crate::error::Error;
use crate::image::ManifestContent;
use crate::oci::{self, ImageConfig};

/// Set on rebuilt OCI manifests so that nobody mistakes them for the
/// original later.
pub const REBUILT_FROM_ANNOTATION: &str = "dev.lifeboat.rebuilt-from";

/// containerd labels an image config with the snapshot chain it was unpacked
/// into, per snapshotter.
const SNAPSHOT_REF_LABEL_PREFIX: &str = "containerd.io/gc.ref.snapshot.";

const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebuiltLayer {
    pub index: usize,
    pub original_digest: String,
    pub rebuilt: Descriptor,
    pub original_diff_id: String,
    pub rebuilt_diff_id: String,
}

/// A rebuilt image: new manifest (and config, if the diff IDs changed); the
/// new layers are in the content store, held by the caller's lease.
#[derive(Clone, Debug)]
pub struct Rebuilt {
    pub manifest: Descriptor,
    pub manifest_bytes: Bytes,
    pub config: Option<(Descriptor, Bytes)>,
    pub layers: Vec<RebuiltLayer>,
}

/// What rebuilding needs to know about an image, checked up front.
struct Preparation {
    config_bytes: Bytes,
    diff_ids: Vec<String>,
    chain: Vec<String>,
    snapshotter: String,
}

/// Reads the config and checks that every missing layer can be rebuilt: a
/// media type the differ can produce, and the snapshots it is diffed from.
async fn prepare(
    containerd: &Containerd,
    manifest: &Descriptor,
    content: &ManifestContent,
    missing: &[usize],
    snapshotter: Option<&str>,
) -> Result<Preparation, Error> {
    let config_digest = &content.manifest.config.digest;
    let config_bytes = containerd
        .read_small(config_digest, oci::MAX_MANIFEST_BYTES)
        .await?;
    let config_parsed_digest =
        Digest::parse(config_digest).map_err(|_| Error::InvalidManifest {
            digest: manifest.digest.to_string(),
            reason: format!("bad config digest {config_digest:?}"),
        })?;
    let config: ImageConfig = oci::parse(&config_parsed_digest, &config_bytes)?;
    let diff_ids = config.rootfs.diff_ids;
    if diff_ids.len() != content.manifest.layers.len() {
        return Err(Error::InvalidManifest {
            digest: manifest.digest.to_string(),
            reason: format!(
                "{} layers but {} diff IDs",
                content.manifest.layers.len(),
                diff_ids.len()
            ),
        });
    }
    let chain = oci::chain_ids(&diff_ids);
    let snapshotter = match snapshotter {
        Some(name) => name.to_owned(),
        None => detect_snapshotter(containerd, config_digest).await?,
    };
    for &index in missing {
        let original =
            content
                .manifest
                .layers
                .get(index)
                .ok_or_else(|| Error::InvalidManifest {
                    digest: manifest.digest.to_string(),
                    reason: format!("no layer {index}"),
                })?;
        let unrecoverable = |reason: String| Error::LayerUnrecoverable {
            digest: original.digest.clone(),
            reason,
        };
        if oci::rebuild_media_types(&original.media_type).is_none() {
            return Err(unrecoverable(format!(
                "unsupported media type {}",
                original.media_type
            )));
        }
        // The layer is the difference between its snapshot and its parent's.
        for key in chain[..=index].iter().rev().take(2) {
            if !containerd.snapshot_exists(&snapshotter, key).await? {
                return Err(unrecoverable(format!(
                    "no unpacked snapshot {key} in snapshotter {snapshotter}"
                )));
            }
        }
    }
    Ok(Preparation {
        config_bytes,
        diff_ids,
        chain,
        snapshotter,
    })
}

/// Whether the missing layers could be rebuilt, without rebuilding them:
/// `Err(LayerUnrecoverable)` when not. For the inventory.
pub async fn check(
    containerd: &Containerd,
    manifest: &Descriptor,
    content: &ManifestContent,
    missing: &[usize],
    snapshotter: Option<&str>,
) -> Result<(), Error> {
    prepare(containerd, manifest, content, missing, snapshotter)
        .await
        .map(|_| ())
}

/// Rebuilds the `missing` layers of a manifest. `containerd` must carry a
/// lease: the differ's output would otherwise be garbage right away.
pub async fn rebuild(
    containerd: &Containerd,
    manifest: &Descriptor,
    content: &ManifestContent,
    missing: &[usize],
    snapshotter: Option<&str>,
    view_prefix: &str,
) -> Result<Rebuilt, Error> {
    let Preparation {
        config_bytes,
        diff_ids,
        chain,
        snapshotter,
    } = prepare(containerd, manifest, content, missing, snapshotter).await?;

    let mut layers = Vec::with_capacity(missing.len());
    for &index in missing {
        let original = &content.manifest.layers[index];
        let unrecoverable = |reason: String| Error::LayerUnrecoverable {
            digest: original.digest.clone(),
            reason,
        };
        let (differ_type, _) = oci::rebuild_media_types(&original.media_type).ok_or_else(|| {
            unrecoverable(format!("unsupported media type {}", original.media_type))
        })?;
        let lower_key = format!("{view_prefix}-{index}-lower");
        let upper_key = format!("{view_prefix}-{index}-upper");
        let produced = diff_between_views(
            containerd,
            &snapshotter,
            index
                .checked_sub(1)
                .map(|i| (lower_key.as_str(), chain[i].as_str())),
            (&upper_key, &chain[index]),
            differ_type,
            &format!("{view_prefix}-{index}"),
        )
        .await?;
        let rebuilt_diff_id = if differ_type == oci::OCI_LAYER {
            produced.digest.to_string()
        } else {
            containerd
                .info(produced.digest.as_str())
                .await?
                .and_then(|info| info.labels.get(UNCOMPRESSED_LABEL).cloned())
                .ok_or_else(|| unrecoverable("the differ did not record the diff ID".to_owned()))?
        };
        tracing::info!(
            layer = index,
            original = %original.digest,
            rebuilt = %produced.digest,
            original_diff_id = %diff_ids[index],
            rebuilt_diff_id = %rebuilt_diff_id,
            "rebuilt discarded layer from its snapshot"
        );
        layers.push(RebuiltLayer {
            index,
            original_digest: original.digest.clone(),
            rebuilt: Descriptor {
                // The bytes are what the differ wrote; the manifest keeps the
                // original's spelling of the same format.
                media_type: original.media_type.clone(),
                ..produced
            },
            original_diff_id: diff_ids[index].clone(),
            rebuilt_diff_id,
        });
    }

    let new_config = rewrite_config(&config_bytes, &layers)?.map(|bytes| {
        let descriptor = Descriptor {
            media_type: content.manifest.config.media_type.clone(),
            digest: sha256_digest(&bytes),
            size: bytes.len() as u64,
        };
        (descriptor, Bytes::from(bytes))
    });
    let manifest_bytes = containerd
        .read_small(manifest.digest.as_str(), oci::MAX_MANIFEST_BYTES)
        .await?;
    let new_manifest = rewrite_manifest(
        &manifest_bytes,
        &manifest.digest,
        new_config.as_ref().map(|(d, _)| d),
        &layers,
    )?;
    Ok(Rebuilt {
        manifest: Descriptor {
            media_type: manifest.media_type.clone(),
            digest: sha256_digest(&new_manifest),
            size: new_manifest.len() as u64,
        },
        manifest_bytes: Bytes::from(new_manifest),
        config: new_config,
        layers,
    })
}

async fn detect_snapshotter(containerd: &Containerd, config_digest: &str) -> Result<String, Error> {
    let labels = containerd
        .info(config_digest)
        .await?
        .map(|info| info.labels)
        .unwrap_or_default();
    Ok(labels
        .keys()
        .find_map(|key| key.strip_prefix(SNAPSHOT_REF_LABEL_PREFIX))
        .unwrap_or(DEFAULT_SNAPSHOTTER)
        .to_owned())
}

/// Opens read-only views of the lower and upper snapshots, asks the differ
/// for the layer between them, and removes the views whatever happened.
async fn diff_between_views(
    containerd: &Containerd,
    snapshotter: &str,
    lower: Option<(&str, &str)>,
    upper: (&str, &str),
    media_type: &str,
    writer_ref: &str,
) -> Result<Descriptor, Error> {
    let mut opened: Vec<&str> = Vec::new();
    let result = async {
        let lower_mounts = match lower {
            Some((key, parent)) => {
                let mounts = containerd.view(snapshotter, key, parent).await?;
                opened.push(key);
                mounts
            }
            // The first layer is diffed against nothing.
            None => Vec::new(),
        };
        let upper_mounts = containerd.view(snapshotter, upper.0, upper.1).await?;
        opened.push(upper.0);
        containerd
            .diff(lower_mounts, upper_mounts, media_type, writer_ref)
            .await
    }
    .await;
    for key in opened {
        if let Err(error) = containerd.remove_snapshot(snapshotter, key).await {
            // The lease expires on its own; a leftover view is not fatal.
            tracing::warn!(%error, key, "could not remove snapshot view");
        }
    }
    result
}

/// The config with rebuilt layers' diff IDs, or `None` when none changed (the
/// original config bytes, and digest, then stay).
pub fn rewrite_config(config: &[u8], layers: &[RebuiltLayer]) -> Result<Option<Vec<u8>>, Error> {
    if layers
        .iter()
        .all(|l| l.original_diff_id == l.rebuilt_diff_id)
    {
        return Ok(None);
    }
    let invalid = |reason: &str| Error::InvalidManifest {
        digest: "config".to_owned(),
        reason: reason.to_owned(),
    };
    let mut value: Value = serde_json::from_slice(config).map_err(|e| invalid(&e.to_string()))?;
    let diff_ids = value
        .pointer_mut("/rootfs/diff_ids")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| invalid("no rootfs.diff_ids"))?;
    for layer in layers {
        let slot = diff_ids
            .get_mut(layer.index)
            .ok_or_else(|| invalid("diff_ids shorter than layers"))?;
        *slot = Value::String(layer.rebuilt_diff_id.clone());
    }
    serde_json::to_vec(&value)
        .map(Some)
        .map_err(|e| invalid(&e.to_string()))
}

/// The manifest pointing at the rebuilt layers (and config). Annotations of
/// rebuilt layers are dropped: they described the original bytes.
pub fn rewrite_manifest(
    manifest: &[u8],
    original_digest: &Digest,
    config: Option<&Descriptor>,
    layers: &[RebuiltLayer],
) -> Result<Vec<u8>, Error> {
    let invalid = |reason: &str| Error::InvalidManifest {
        digest: original_digest.to_string(),
        reason: reason.to_owned(),
    };
    let mut value: Value = serde_json::from_slice(manifest).map_err(|e| invalid(&e.to_string()))?;
    if let Some(config) = config {
        let slot = value
            .get_mut("config")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| invalid("no config"))?;
        slot.insert("digest".into(), config.digest.to_string().into());
        slot.insert("size".into(), config.size.into());
    }
    let manifest_layers = value
        .get_mut("layers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| invalid("no layers"))?;
    for layer in layers {
        let slot = manifest_layers
            .get_mut(layer.index)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| invalid("layer index out of range"))?;
        slot.insert("mediaType".into(), layer.rebuilt.media_type.clone().into());
        slot.insert("digest".into(), layer.rebuilt.digest.to_string().into());
        slot.insert("size".into(), layer.rebuilt.size.into());
        slot.remove("annotations");
        slot.remove("urls");
    }
    // Docker schema 2 manifests have no annotations; OCI ones get a marker
    // naming the original.
    let is_oci = value.get("mediaType").and_then(Value::as_str) != Some(oci::DOCKER_MANIFEST);
    if is_oci && let Some(object) = value.as_object_mut() {
        let annotations = object
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.insert(
                REBUILT_FROM_ANNOTATION.into(),
                original_digest.to_string().into(),
            );
        }
    }
    serde_json::to_vec(&value).map_err(|e| invalid(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn rebuilt_layer(index: usize, same_diff_id: bool) -> RebuiltLayer {
        RebuiltLayer {
            index,
            original_digest: digest('1').to_string(),
            rebuilt: Descriptor {
                media_type: oci::DOCKER_LAYER_GZIP.into(),
                digest: digest('2'),
                size: 42,
            },
            original_diff_id: digest('3').to_string(),
            rebuilt_diff_id: if same_diff_id {
                digest('3')
            } else {
                digest('4')
            }
            .to_string(),
        }
    }

    #[test]
    fn config_is_kept_when_diff_ids_do_not_change() {
        let config = br#"{"rootfs":{"type":"layers","diff_ids":["x"]}}"#;
        assert_eq!(
            rewrite_config(config, &[rebuilt_layer(0, true)]).unwrap(),
            None
        );
    }

    #[test]
    fn config_gets_new_diff_ids_and_keeps_everything_else() {
        let config = br#"{"architecture":"amd64","rootfs":{"type":"layers","diff_ids":["a","b"]},"history":[{"created_by":"x"}]}"#;
        let out = rewrite_config(config, &[rebuilt_layer(1, false)])
            .unwrap()
            .unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["rootfs"]["diff_ids"][0], "a");
        assert_eq!(value["rootfs"]["diff_ids"][1], digest('4').to_string());
        assert_eq!(value["architecture"], "amd64");
        assert_eq!(value["history"][0]["created_by"], "x");
        assert!(rewrite_config(config, &[rebuilt_layer(5, false)]).is_err());
    }

    #[test]
    fn manifest_points_at_rebuilt_layers_and_names_its_origin() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"c","digest":"{}","size":1}},
            "layers":[{{"mediaType":"{}","digest":"{}","size":9,"annotations":{{"k":"v"}}}},
                      {{"mediaType":"{}","digest":"{}","size":8}}]}}"#,
            oci::OCI_MANIFEST,
            digest('c'),
            oci::OCI_LAYER_GZIP,
            digest('1'),
            oci::OCI_LAYER_GZIP,
            digest('5'),
        );
        let config = Descriptor {
            media_type: "c".into(),
            digest: digest('d'),
            size: 77,
        };
        let mut layer = rebuilt_layer(0, false);
        layer.rebuilt.media_type = oci::OCI_LAYER_GZIP.into();
        let out =
            rewrite_manifest(manifest.as_bytes(), &digest('9'), Some(&config), &[layer]).unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["config"]["digest"], digest('d').to_string());
        assert_eq!(value["config"]["size"], 77);
        assert_eq!(value["layers"][0]["digest"], digest('2').to_string());
        assert_eq!(value["layers"][0]["size"], 42);
        assert!(value["layers"][0].get("annotations").is_none());
        assert_eq!(value["layers"][1]["digest"], digest('5').to_string());
        assert_eq!(
            value["annotations"][REBUILT_FROM_ANNOTATION],
            digest('9').to_string()
        );
    }

    #[test]
    fn docker_manifests_get_no_annotations() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"c","digest":"{}","size":1}},
            "layers":[{{"mediaType":"{}","digest":"{}","size":9}}]}}"#,
            oci::DOCKER_MANIFEST,
            digest('c'),
            oci::DOCKER_LAYER_GZIP,
            digest('1'),
        );
        let out = rewrite_manifest(
            manifest.as_bytes(),
            &digest('9'),
            None,
            &[rebuilt_layer(0, true)],
        )
        .unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert!(value.get("annotations").is_none());
        assert_eq!(value["layers"][0]["mediaType"], oci::DOCKER_LAYER_GZIP);
        assert_eq!(value["config"]["digest"], digest('c').to_string());
    }
}
