//! Gathering what is known about which node holds which image, for
//! `candidates` to rank: the nodes (paged: a cluster of thousands of nodes
//! is never held whole as API objects) with what their `status.images`
//! list, the restore namespace's pods and policies, node-exporter's fresh
//! answers and the restore's own history. Reads only.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ContainerStatus, Node, Pod};
use kube::Api;
use kube::api::ListParams;
use lifeboat_api::restore::ImageRestoreState;
use lifeboat_api::{ImageBackupPolicy, ImageRestoreStatus};

use super::RestoreController;
use super::candidates::{Evidence, Knowledge};
use super::facts::Facts;
use super::node_source::INVENTORY_TTL;
use super::planning::{Exportable, NodeFacts, NodeUse, classify_node};
use crate::error::OperatorError;
use crate::tenancy;

/// Nodes per list page.
const NODE_PAGE: u32 = 500;

/// The cluster's nodes as a restore sees them.
pub(crate) struct NodeScan {
    pub(crate) nodes: Vec<NodeFacts>,
    /// Whether each may run this restore's Jobs (its node selector and
    /// tolerations, the admin's control-plane rule).
    pub(crate) uses: BTreeMap<String, NodeUse>,
    /// Digest → the nodes whose `status.images` list a name pinned to it.
    pub(crate) listed: BTreeMap<String, BTreeSet<String>>,
}

/// The digest of an image argument or an `imageID` (`…@sha256:…`).
pub(crate) fn digest_of(text: &str) -> Option<&str> {
    let (_, digest) = text.rsplit_once('@')?;
    digest.starts_with("sha256:").then_some(digest)
}

/// Lists the nodes page by page, keeping their facts and which of
/// `digests` their `status.images` name.
pub(crate) async fn scan_nodes(
    controller: &RestoreController,
    facts: &Facts<'_>,
    digests: &BTreeSet<&str>,
) -> Result<NodeScan, OperatorError> {
    let api: Api<Node> = Api::all(controller.context.client.clone());
    let source = facts.restore.spec.effective_source();
    let node_cache = source.node_cache.unwrap_or_default();
    let selector = node_cache.node_selector.unwrap_or_default();
    let mut tolerations = controller.settings.tolerations.clone();
    tolerations.extend(node_cache.tolerations.unwrap_or_default());
    let allow_control_plane = controller.context.config.allow_control_plane_nodes;
    let mut scan = NodeScan {
        nodes: Vec::new(),
        uses: BTreeMap::new(),
        listed: BTreeMap::new(),
    };
    let mut params = ListParams::default().limit(NODE_PAGE);
    loop {
        let page = api.list(&params).await?;
        for node in &page.items {
            let node_facts = NodeFacts::from_node(node);
            let usable = if !allow_control_plane && tenancy::is_control_plane(&node_facts.labels) {
                NodeUse::Excluded("a control-plane node (the admin allows none)".to_owned())
            } else {
                classify_node(&node_facts, &selector, &tolerations)
            };
            let names = node
                .status
                .as_ref()
                .and_then(|s| s.images.as_ref())
                .into_iter()
                .flatten()
                .flat_map(|i| i.names.iter().flatten());
            for name in names {
                if let Some(digest) = digest_of(name).filter(|d| digests.contains(d)) {
                    scan.listed
                        .entry(digest.to_owned())
                        .or_default()
                        .insert(node_facts.name.clone());
                }
            }
            scan.uses.insert(node_facts.name.clone(), usable);
            scan.nodes.push(node_facts);
        }
        match page.metadata.continue_.as_deref() {
            Some(token) if !token.is_empty() => params = params.continue_token(token),
            _ => break,
        }
    }
    Ok(scan)
}

/// Everything known about where `images` (image arguments) are: the
/// nodes' own lists, fresh answers, this restore's history; and, when one
/// of `needing_holders` has no candidate from those, the pods of the
/// restore's namespace that run the digest and the nodes its policies
/// recorded.
pub(crate) async fn knowledge(
    controller: &RestoreController,
    facts: &Facts<'_>,
    status: &ImageRestoreStatus,
    (images, needing_holders): (&[String], &[String]),
    scan: &NodeScan,
) -> Result<Knowledge, OperatorError> {
    let mut knowledge = Knowledge {
        answers: controller.known_holdings(INVENTORY_TTL),
        tried: controller.tried(&facts.uid),
        ..Knowledge::default()
    };
    // A node that said no stays "asked" for this restore after its answer
    // expires: widening never goes round in circles.
    for (node, held) in &knowledge.answers {
        for image in images {
            if held.get(image) == Some(&Exportable::None) {
                controller.record_try(&facts.uid, image, node);
            }
        }
    }
    knowledge.tried = controller.tried(&facts.uid);
    let by_digest: BTreeMap<&str, Vec<&String>> =
        images.iter().fold(BTreeMap::new(), |mut map, image| {
            if let Some(digest) = digest_of(image) {
                map.entry(digest).or_insert_with(Vec::new).push(image);
            }
            map
        });
    for (digest, nodes) in &scan.listed {
        for image in by_digest.get(digest.as_str()).into_iter().flatten() {
            for node in nodes {
                knowledge.point(image, node, Evidence::Listed);
            }
        }
    }
    // History: the nodes this restore imported an image into hold it.
    for entry in status
        .nodes
        .iter()
        .filter(|n| n.state == ImageRestoreState::Restored)
    {
        let digest = status
            .images
            .iter()
            .find(|i| i.reference == entry.reference)
            .and_then(|i| i.requested_digest.as_deref());
        for image in digest.and_then(|d| by_digest.get(d)).into_iter().flatten() {
            knowledge.point(image, &entry.node, Evidence::History);
        }
    }
    let unpointed = needing_holders.iter().any(|image| {
        super::candidates::ranked_candidates(image, &scan.uses, &knowledge).is_empty()
    });
    if unpointed && !by_digest.is_empty() {
        for (digest, node) in running(controller, &facts.namespace).await? {
            for image in by_digest.get(digest.as_str()).into_iter().flatten() {
                knowledge.point(image, &node, Evidence::Running);
            }
        }
    }
    Ok(knowledge)
}

/// (digest, node) of what the namespace's pods run (their containers'
/// `imageID`) and of what its policies recorded nodes holding.
async fn running(
    controller: &RestoreController,
    namespace: &str,
) -> Result<BTreeSet<(String, String)>, OperatorError> {
    let client = controller.context.client.clone();
    let mut found = BTreeSet::new();
    for (node, container) in bound_container_statuses(client.clone(), namespace).await? {
        if let Some(digest) = digest_of(&container.image_id) {
            found.insert((digest.to_owned(), node));
        }
    }
    let policies: Api<ImageBackupPolicy> = Api::namespaced(client, namespace);
    for policy in policies.list(&ListParams::default()).await?.items {
        let Some(status) = policy.status else {
            continue;
        };
        let recorded = status
            .missing_images
            .iter()
            .filter_map(|m| Some((m.digest.clone()?, &m.nodes)))
            .chain(
                status
                    .unreachable_images
                    .iter()
                    .filter_map(|u| Some((u.digest.clone()?, &u.nodes))),
            );
        for (digest, nodes) in recorded {
            for node in nodes {
                found.insert((digest.clone(), node.clone()));
            }
        }
    }
    Ok(found)
}

/// Every container status (init containers' too) of the namespace's pods
/// that are bound to a node, with that node: what the running digests and
/// (`node_import`) the failing pulls are read from.
pub(super) async fn bound_container_statuses(
    client: kube::Client,
    namespace: &str,
) -> Result<Vec<(String, ContainerStatus)>, OperatorError> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let mut found = Vec::new();
    for pod in pods.list(&ListParams::default()).await?.items {
        let (Some(node), Some(status)) = (pod.spec.and_then(|s| s.node_name), pod.status) else {
            continue;
        };
        let containers = status.container_statuses.into_iter().flatten();
        let init = status.init_container_statuses.into_iter().flatten();
        found.extend(containers.chain(init).map(|c| (node.clone(), c)));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_come_from_pinned_names_and_image_ids_only() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            digest_of(&format!("127.0.0.1:5001/app@{digest}")),
            Some(digest.as_str())
        );
        assert_eq!(
            digest_of(&format!("docker-pullable://app@{digest}")),
            Some(digest.as_str())
        );
        assert_eq!(digest_of("127.0.0.1:5001/app:1"), None);
        assert_eq!(digest_of(&digest), None, "an image ID without a name");
    }
}
