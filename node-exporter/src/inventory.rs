//! The read-only `inventory` command: which images, digests and blobs this
//! node holds. The kubelet's `node.status.images` stops at 50 entries and
//! says nothing about discarded layers, so the operator asks the node itself.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cli::Options;
use crate::containerd::Containerd;
use crate::error::Error;
use crate::image::{self, InventoryEntry};
use crate::oci::Platform;
use crate::rebuild;
use lifeboat_node_protocol::report::{InventoryEntry as ReportedEntry, InventoryReport};
use lifeboat_node_protocol::{Exportable, VERSION};

#[derive(Clone, Debug, Serialize)]
pub struct Inventory {
    pub v: u32,
    pub namespace: String,
    pub images: Vec<InventoryEntry>,
    /// Requested images the node does not hold (with `--image` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// Lists the requested images, or every image when none was requested.
pub async fn run(containerd: &Containerd, options: &Options) -> Result<Inventory, Error> {
    let node = Platform::current();
    let mut images = Vec::new();
    let mut missing = Vec::new();
    if options.images.is_empty() {
        // One entry per distinct target; containerd (CRI) keeps several
        // names (tag, repo digest, image ID) for the same image.
        let mut by_digest: BTreeMap<String, (registry_transfer::Descriptor, Vec<String>)> =
            BTreeMap::new();
        for record in containerd.list_images().await? {
            let Some(target) = &record.target else {
                continue;
            };
            let Ok(digest) = registry_transfer::Digest::parse(&target.digest) else {
                continue;
            };
            let entry = by_digest.entry(target.digest.clone()).or_insert_with(|| {
                let descriptor = registry_transfer::Descriptor {
                    media_type: target.media_type.clone(),
                    digest,
                    size: u64::try_from(target.size).unwrap_or(0),
                };
                (descriptor, Vec::new())
            });
            entry.1.push(record.name.clone());
        }
        for (descriptor, names) in by_digest.into_values() {
            match image::inspect(containerd, &descriptor).await {
                Ok(state) => {
                    let entry = image::inventory_entry(names, &state, &node);
                    images.push(confirm_rebuild(containerd, options, &state, &node, entry).await?);
                }
                Err(error) if error.is_not_on_node() || error.reason() == "InvalidManifest" => {
                    tracing::debug!(%error, "skipping image record");
                    missing.extend(names);
                }
                Err(error) => return Err(error),
            }
        }
    } else {
        for arg in &options.images {
            let located = match image::locate(containerd, &arg.source).await {
                Ok(located) => located,
                Err(error) if error.is_not_on_node() => {
                    missing.push(arg.source.to_string());
                    continue;
                }
                Err(error) => return Err(error),
            };
            let state = image::inspect(containerd, &located.descriptor).await?;
            let entry = image::inventory_entry(vec![arg.source.to_string()], &state, &node);
            images.push(confirm_rebuild(containerd, options, &state, &node, entry).await?);
        }
    }
    Ok(Inventory {
        v: VERSION,
        namespace: containerd.namespace().to_owned(),
        images,
        missing,
    })
}

/// An image whose layers would have to be rebuilt is only exportable when
/// the snapshots they are rebuilt from exist: check them, read-only.
async fn confirm_rebuild(
    containerd: &Containerd,
    options: &Options,
    state: &image::ImageState,
    node: &Platform,
    mut entry: InventoryEntry,
) -> Result<InventoryEntry, Error> {
    let Ok(image::Plan::Rebuild {
        manifest,
        missing_layers,
        ..
    }) = image::decide(state, node)
    else {
        return Ok(entry);
    };
    let Some(content) = state
        .manifest(&manifest.digest)
        .and_then(|m| m.content.as_ref())
    else {
        return Ok(entry);
    };
    let checked = rebuild::check(
        containerd,
        &manifest,
        content,
        &missing_layers,
        options.snapshotter.as_deref(),
    )
    .await;
    match checked {
        Ok(()) => Ok(entry),
        Err(error) if error.is_not_on_node() => {
            tracing::info!(image = %entry.digest, %error, "cannot be rebuilt on this node");
            entry.exportable = Exportable::None;
            Ok(entry)
        }
        Err(error) => Err(error),
    }
}

/// The inventory as the protocol's report, cut down to fit a termination
/// message: digests and exportability first, names only if room remains.
pub fn termination_message(inventory: &Inventory, limit: usize) -> String {
    let images = inventory
        .images
        .iter()
        .map(|entry| ReportedEntry {
            digest: entry.digest.clone(),
            exportable: entry.exportable,
            name: entry
                .names
                .iter()
                .find(|n| !n.starts_with("sha256:"))
                .cloned(),
        })
        .collect();
    InventoryReport::new(images, inventory.missing.clone()).termination_message(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_inventory_fits_the_limit() {
        let entry = |i: usize| InventoryEntry {
            names: vec![
                format!("sha256:{i}"),
                format!("registry.example/team/app-{i}:v1"),
            ],
            digest: registry_transfer::Digest::parse(&format!("sha256:{:064x}", i)).unwrap(),
            media_type: crate::oci::OCI_INDEX.into(),
            exportable: Exportable::Exact,
            manifests: vec![],
        };
        let small = Inventory {
            v: 1,
            namespace: "k8s.io".into(),
            images: vec![entry(1)],
            missing: vec![],
        };
        let message = termination_message(&small, 4096);
        let back = InventoryReport::read(&message).unwrap();
        assert_eq!(
            back.images[0].name.as_deref(),
            Some("registry.example/team/app-1:v1")
        );

        let big = Inventory {
            images: (0..200).map(entry).collect(),
            ..small
        };
        let message = termination_message(&big, 4096);
        assert!(message.len() <= 4096);
        let back = InventoryReport::read(&message).unwrap();
        assert_eq!(back.images.len() + back.omitted, 200);
        assert!(back.images.iter().all(|e| e.name.is_none()));
    }
}
