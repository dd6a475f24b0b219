//! What a reconcile publishes for the admission webhook: each selected
//! image's standing (verified targets, source state, nodes) and the
//! namespaces that use it, taken from the same inventory and evaluation the
//! status is written from.

use std::collections::BTreeSet;

use crate::admission::Published;
use crate::admission::decide::ImageFacts;

use super::discovery::Inventory;
use super::status::ImageState;

/// The policy's facts; `states` come from `decide::image_states`, which
/// walks `inventory.images` in the same order.
pub(crate) fn published(
    inventory: &Inventory,
    states: &[ImageState],
    target_names: &[String],
    transfer: registry_transfer::Transfer,
) -> Published {
    let images = inventory
        .images
        .values()
        .zip(states)
        .map(|(image, state)| ImageFacts {
            reference: image.reference.clone(),
            verified_targets: state.verified_targets.clone(),
            missing: state.missing_since.is_some(),
            outage: state.outage.as_ref().map(|o| o.reason.clone()),
            nodes: state.nodes.clone(),
            namespaces: image
                .workloads
                .iter()
                .map(|w| w.namespace.clone())
                .collect::<BTreeSet<_>>(),
        })
        .collect();
    Published {
        target_names: target_names.to_vec(),
        images,
        transfer: Some(transfer),
    }
}
