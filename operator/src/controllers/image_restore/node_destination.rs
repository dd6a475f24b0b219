//! Deciding a restore into nodes (`destination.nodes`), pure: which nodes
//! each image goes to, where each (node, image) import takes its bytes
//! from, and what the per-node results mean for each image. The facts
//! (nodes, pods, backups, inventories) are gathered by `node_import`.

use std::collections::{BTreeMap, BTreeSet};

use lifeboat_api::ImageReference;
use lifeboat_api::conditions::reasons;
use lifeboat_api::restore::{
    ImageRestoreState, ImageSourceRef, NodeDestination, NodeImport, RestoreSourceKind,
    RestoredImage,
};

use lifeboat_node_protocol::reasons as node_reasons;

use super::candidates::{Evidence, Knowledge, NextStep, next_step};
use super::planning::{Exportable, NodeFacts, NodeUse};
use super::status::fail;

/// The kubelet's reasons for a container whose image cannot be pulled.
pub(crate) const PULL_FAILURES: &[&str] = &["ErrImagePull", "ImagePullBackOff"];

/// One container of a pod in the restore's namespace, as far as pulls go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ContainerPull {
    /// The node the pod is bound to.
    pub node: String,
    /// The image as the pod spec names it.
    pub image: String,
    /// `state.waiting.reason`, if waiting.
    pub waiting_reason: Option<String>,
}

/// Whether a pod's image is the restore's image: same repository, and the
/// same digest when both pin one, else the same tag.
pub(crate) fn same_image(pod_image: &ImageReference, wanted: &ImageReference) -> bool {
    if pod_image.registry != wanted.registry || pod_image.repository != wanted.repository {
        return false;
    }
    match (&pod_image.digest, &wanted.digest) {
        (Some(a), Some(b)) => a == b,
        _ => pod_image.tag.is_some() && pod_image.tag == wanted.tag,
    }
}

/// The nodes an image is to be imported into, or why there are none.
pub(crate) fn destination_nodes(
    destination: &NodeDestination,
    image: &ImageReference,
    nodes: &[NodeFacts],
    pulls: &[ContainerPull],
) -> Result<BTreeSet<String>, String> {
    let chosen: BTreeSet<String> = if let Some(names) = &destination.names {
        let known: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        if let Some(unknown) = names.iter().find(|n| !known.contains(n.as_str())) {
            return Err(format!("node {unknown} does not exist"));
        }
        names.iter().cloned().collect()
    } else if let Some(selector) = &destination.selector {
        nodes
            .iter()
            .filter(|n| n.ready)
            .filter(|n| {
                selector
                    .labels
                    .iter()
                    .all(|(k, v)| n.labels.get(k) == Some(v))
            })
            .map(|n| n.name.clone())
            .collect()
    } else {
        pulls
            .iter()
            .filter(|p| {
                p.waiting_reason
                    .as_deref()
                    .is_some_and(|r| PULL_FAILURES.contains(&r))
            })
            .filter(|p| ImageReference::parse(&p.image).is_ok_and(|r| same_image(&r, image)))
            .map(|p| p.node.clone())
            .collect()
    };
    if chosen.is_empty() {
        return Err(if destination.wants_failing_pods() {
            format!("no pod in this namespace fails to pull {image}")
        } else {
            "no Ready node matches destination.nodes".to_owned()
        });
    }
    Ok(chosen)
}

/// The entries for `chosen` destinations of an image that `existing` does
/// not track yet (Pending); the existing ones, finished or not, stay.
pub(crate) fn new_entries(
    existing: &[NodeImport],
    reference: &str,
    chosen: &BTreeSet<String>,
) -> Vec<NodeImport> {
    chosen
        .iter()
        .filter(|node| {
            !existing
                .iter()
                .any(|e| e.reference == reference && &e.node == *node)
        })
        .map(|node| NodeImport {
            node: node.clone(),
            reference: reference.to_owned(),
            state: ImageRestoreState::Pending,
            ..NodeImport::default()
        })
        .collect()
}

/// Where one (node, image) import takes its bytes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ImportSource {
    /// A backup target that holds the digest and answered.
    Backup {
        target: String,
        reference: ImageReference,
    },
    /// A node that holds every blob the import needs (node to node).
    Peer { holder: String },
    /// The destination holds it already.
    AlreadyThere,
    /// Nothing points at a holder yet: these nodes are being asked.
    Asking(Vec<String>),
    /// Neither: why.
    NotFound(String),
}

/// The source for an import into `destination`: none when the node holds
/// the image already (a node-exporter answer); the backup when it holds the digest and answers (a registry
/// serves bytes at its own speed and costs no second Job); else the best
/// candidate node (`candidates`: the serve Job on it serves the image or
/// reports that the node does not hold it), never the destination itself
/// and never one that answered it holds only a rebuildable image (a
/// node-to-node import never records a rebuilt image under the original
/// digest); with no candidate, the nodes to ask (`Asking`).
pub(crate) fn choose_import_source(
    destination: &str,
    image: &str,
    backup: Option<&(String, ImageReference)>,
    uses: &BTreeMap<String, NodeUse>,
    knowledge: &Knowledge,
    backup_why: &str,
) -> ImportSource {
    let answered_whole = knowledge
        .answers
        .get(destination)
        .and_then(|held| held.get(image))
        .is_some_and(|e| matches!(e, Exportable::Exact | Exportable::Platform));
    // Only node-exporter's answer: the kubelet's list lags a removal by
    // up to its status period, and "there already" writes nothing.
    if answered_whole {
        return ImportSource::AlreadyThere;
    }
    if let Some((target, reference)) = backup {
        return ImportSource::Backup {
            target: target.clone(),
            reference: reference.clone(),
        };
    }
    let mut knowledge = knowledge.clone();
    knowledge
        .tried
        .entry(image.to_owned())
        .or_default()
        .insert(destination.to_owned());
    loop {
        match next_step(image, uses, &knowledge) {
            NextStep::Try {
                node,
                evidence: Evidence::Rebuild,
            } => knowledge
                .tried
                .entry(image.to_owned())
                .or_default()
                .insert(node),
            NextStep::Try { node, .. } => return ImportSource::Peer { holder: node },
            NextStep::Ask(nodes) => return ImportSource::Asking(nodes),
            NextStep::NotFound(why) => {
                let mut why = format!("{backup_why}; {why}");
                if let Some(note) = rebuild_note(image, &knowledge) {
                    why.push_str(&note);
                }
                return ImportSource::NotFound(why);
            }
        };
    }
}

/// Why an image some nodes do hold is still not found: they hold it only
/// rebuildable (compressed layers discarded after unpacking, so an export
/// would carry another digest) and a node-to-node import never records
/// that under the original digest. The user then knows a restore from
/// those nodes into a registry (a new digest) is what remains.
fn rebuild_note(image: &str, knowledge: &Knowledge) -> Option<String> {
    let rebuildable: Vec<&str> = knowledge
        .answers
        .iter()
        .filter(|(_, held)| held.get(image) == Some(&Exportable::Rebuild))
        .map(|(node, _)| node.as_str())
        .collect();
    (!rebuildable.is_empty()).then(|| {
        format!(
            "; {} hold(s) it with its compressed layers discarded: only a rebuild under \
             another digest is possible from there (a restore into a registry)",
            rebuildable.join(", ")
        )
    })
}

/// Whether a failed import is worth another holder: it came from a peer
/// (node to node), and the failure is the peer's: it did not hold the
/// image whole, could not be reached or stopped serving (`PullFailed`), or
/// served content of another digest (a rebuilt image). An import from a
/// backup, or a failure of the destination's own containerd, would fail
/// the same from any holder.
pub(crate) fn retry_from_another_holder(
    source: Option<&ImageSourceRef>,
    from_peer: bool,
    reason: Option<&str>,
) -> bool {
    let peer = from_peer && source.is_some_and(|s| s.kind == RestoreSourceKind::NodeCache);
    peer && reason.is_some_and(|r| {
        r == node_reasons::PULL_FAILED
            || r == node_reasons::DIGEST_MISMATCH
            || node_reasons::is_not_on_node(r)
    })
}

/// The source recorded in status for a decided import.
pub(crate) fn source_ref(source: &ImportSource, destination: &str) -> Option<ImageSourceRef> {
    match source {
        ImportSource::Backup { target, .. } => Some(ImageSourceRef {
            kind: RestoreSourceKind::BackupRegistry,
            name: target.clone(),
        }),
        ImportSource::Peer { holder } => Some(ImageSourceRef {
            kind: RestoreSourceKind::NodeCache,
            name: holder.clone(),
        }),
        ImportSource::AlreadyThere => Some(ImageSourceRef {
            kind: RestoreSourceKind::NodeCache,
            name: destination.to_owned(),
        }),
        ImportSource::NotFound(_) | ImportSource::Asking(_) => None,
    }
}

/// Rolls the per-node entries up into their images: an image is Restored
/// once every node it goes to holds it (digest-exact: the imported digest
/// is the requested one), Failed once all are terminal and one failed
/// (its reason and message), in progress otherwise. An image that ended
/// by itself (the deadline) fails its open entries too.
pub(crate) fn roll_up(images: &mut [RestoredImage], nodes: &mut [NodeImport]) {
    for image in images.iter_mut() {
        if image.state.is_terminal() {
            for entry in nodes
                .iter_mut()
                .filter(|n| n.reference == image.reference && !n.state.is_terminal())
            {
                entry.state = ImageRestoreState::Failed;
                entry.reason.clone_from(&image.reason);
                entry.message.clone_from(&image.message);
            }
            continue;
        }
        let entries: Vec<&NodeImport> = nodes
            .iter()
            .filter(|n| n.reference == image.reference)
            .collect();
        if entries.is_empty() || !entries.iter().all(|n| n.state.is_terminal()) {
            continue;
        }
        if let Some(failed) = entries
            .iter()
            .find(|n| n.state == ImageRestoreState::Failed)
        {
            let message = format!(
                "import into node {} failed: {}",
                failed.node,
                failed.message.as_deref().unwrap_or("failed")
            );
            let reason = failed
                .reason
                .clone()
                .unwrap_or_else(|| reasons::NODE_IMPORT_FAILED.to_owned());
            fail(image, &reason, message);
            continue;
        }
        let digest = entries.iter().find_map(|n| n.imported_digest.clone());
        image.digest_preserved = match (&digest, &image.requested_digest) {
            (Some(got), Some(wanted)) => Some(got == wanted),
            _ => None,
        };
        image.restored_digest = digest;
        image.source = entries.iter().find_map(|n| n.source.clone());
        image.state = ImageRestoreState::Restored;
        let names: Vec<&str> = entries.iter().map(|n| n.node.as_str()).collect();
        image.message = Some(format!("imported into {}", names.join(", ")));
    }
}

#[cfg(test)]
mod tests {
    use lifeboat_api::restore::NodeLabelSelector;

    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn reference(text: &str) -> ImageReference {
        ImageReference::parse(text).unwrap()
    }

    fn node(name: &str, ready: bool, zone: &str) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            ready,
            labels: [("zone".to_owned(), zone.to_owned())].into(),
            ..NodeFacts::default()
        }
    }

    fn pull(node: &str, image: &str, reason: Option<&str>) -> ContainerPull {
        ContainerPull {
            node: node.into(),
            image: image.into(),
            waiting_reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn pods_match_by_repository_and_digest_or_tag() {
        let wanted = reference(&format!("src.io/shop/app:1@{}", digest('a')));
        assert!(same_image(&reference("src.io/shop/app:1"), &wanted));
        assert!(same_image(
            &reference(&format!("src.io/shop/app@{}", digest('a'))),
            &wanted
        ));
        assert!(!same_image(
            &reference(&format!("src.io/shop/app:1@{}", digest('b'))),
            &wanted
        ));
        assert!(!same_image(&reference("src.io/shop/app:2"), &wanted));
        assert!(!same_image(&reference("other.io/shop/app:1"), &wanted));
        let by_digest_only = reference(&format!("src.io/shop/app@{}", digest('a')));
        assert!(
            !same_image(&reference("src.io/shop/app:1"), &by_digest_only),
            "a tag says nothing of a digest"
        );
    }

    #[test]
    fn failing_pods_name_the_nodes_whose_pulls_fail_for_this_image_only() {
        let image = reference(&format!("src.io/shop/app:1@{}", digest('a')));
        let nodes = [
            node("n1", true, "a"),
            node("n2", true, "b"),
            node("n3", true, "b"),
        ];
        let pulls = [
            pull("n1", "src.io/shop/app:1", None),
            pull("n2", "src.io/shop/app:1", Some("ImagePullBackOff")),
            pull("n3", "src.io/shop/other:1", Some("ErrImagePull")),
            pull("n3", "src.io/shop/app:1", Some("CrashLoopBackOff")),
        ];
        let failing = NodeDestination {
            failing_pods: Some(true),
            ..NodeDestination::default()
        };
        assert_eq!(
            destination_nodes(&failing, &image, &nodes, &pulls).unwrap(),
            BTreeSet::from(["n2".to_owned()])
        );
        assert!(
            destination_nodes(&failing, &image, &nodes, &pulls[..1])
                .unwrap_err()
                .contains("no pod")
        );
        let by_label = NodeDestination {
            selector: Some(NodeLabelSelector {
                labels: [("zone".to_owned(), "b".to_owned())].into(),
            }),
            ..NodeDestination::default()
        };
        let mut with_down = nodes.to_vec();
        with_down[2].ready = false;
        assert_eq!(
            destination_nodes(&by_label, &image, &with_down, &[]).unwrap(),
            BTreeSet::from(["n2".to_owned()]),
            "NotReady nodes are left out"
        );
        let by_name = NodeDestination {
            names: Some(vec!["n1".into(), "gone".into()]),
            ..NodeDestination::default()
        };
        assert!(
            destination_nodes(&by_name, &image, &nodes, &[])
                .unwrap_err()
                .contains("gone")
        );
    }

    fn answered(entries: &[(&str, Exportable)]) -> Knowledge {
        let mut knowledge = Knowledge::default();
        for (node, e) in entries {
            knowledge
                .answers
                .entry((*node).to_owned())
                .or_default()
                .insert("img".to_owned(), *e);
        }
        knowledge
    }

    fn usable(names: &[&str]) -> BTreeMap<String, NodeUse> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), NodeUse::Preferred))
            .collect()
    }

    #[test]
    fn the_backup_comes_first_then_a_whole_holder_never_a_rebuild() {
        let backup = (
            "offsite".to_owned(),
            reference(&format!("b.io/m/app@{}", digest('a'))),
        );
        let nodes = usable(&["n1", "n2", "n3", "n4"]);
        let holders = answered(&[
            ("n1", Exportable::Rebuild),
            ("n2", Exportable::None),
            ("n3", Exportable::Platform),
            ("n4", Exportable::Exact),
        ]);
        let choose =
            |destination: &str, backup: Option<&(String, ImageReference)>, k: &Knowledge| {
                choose_import_source(
                    destination,
                    "img",
                    backup,
                    &nodes,
                    k,
                    "not in backup target offsite",
                )
            };
        assert!(matches!(
            choose("n2", Some(&backup), &holders),
            ImportSource::Backup { target, .. } if target == "offsite"
        ));
        assert_eq!(
            choose("n2", None, &holders),
            ImportSource::Peer {
                holder: "n4".into()
            },
            "every blob before one platform"
        );
        let only_rebuild = answered(&[
            ("n1", Exportable::Rebuild),
            ("n2", Exportable::None),
            ("n3", Exportable::None),
            ("n4", Exportable::None),
        ]);
        let ImportSource::NotFound(why) = choose("n2", None, &only_rebuild) else {
            panic!("a rebuild is no source")
        };
        assert!(why.contains("offsite") && why.contains("n1, n2"), "{why}");
        assert!(
            why.contains("n1 hold(s) it with its compressed layers discarded"),
            "the message names the node that has it only rebuildable: {why}"
        );
        let there = answered(&[("n2", Exportable::Platform)]);
        assert_eq!(
            choose("n2", Some(&backup), &there),
            ImportSource::AlreadyThere
        );
        // Its kubelet's list is no proof (it lags a removal): the image is
        // imported from a holder all the same.
        let mut listed = answered(&[("n4", Exportable::Exact)]);
        listed.point("img", "n2", Evidence::Listed);
        assert_eq!(
            choose("n2", None, &listed),
            ImportSource::Peer {
                holder: "n4".into()
            }
        );
    }

    #[test]
    fn node_to_node_a_listed_holder_is_served_from_directly_and_nothing_known_asks_a_batch() {
        let mut nodes = usable(&[]);
        for i in 0..100 {
            nodes.insert(format!("n{i:03}"), NodeUse::Preferred);
        }
        let mut k = Knowledge::default();
        k.point("img", "n077", Evidence::Listed);
        assert_eq!(
            choose_import_source("n001", "img", None, &nodes, &k, "no backup"),
            ImportSource::Peer {
                holder: "n077".into()
            }
        );
        // It failed to serve (tried): with nothing else known, a batch is asked.
        k.tried
            .entry("img".into())
            .or_default()
            .insert("n077".into());
        let ImportSource::Asking(batch) =
            choose_import_source("n001", "img", None, &nodes, &k, "no backup")
        else {
            panic!("nothing else is known")
        };
        assert_eq!(batch.len(), super::super::candidates::WIDEN_BATCH);
        assert!(!batch.contains(&"n001".to_owned()), "never the destination");
        assert!(!batch.contains(&"n077".to_owned()));
    }

    #[test]
    fn only_a_peer_failing_to_give_the_image_sends_an_import_to_another_holder() {
        let peer = ImageSourceRef {
            kind: RestoreSourceKind::NodeCache,
            name: "n1".into(),
        };
        let backup = ImageSourceRef {
            kind: RestoreSourceKind::BackupRegistry,
            name: "offsite".into(),
        };
        for reason in [
            "PullFailed",
            "DigestMismatch",
            "ImageNotOnNode",
            "ContentMissing",
        ] {
            assert!(
                retry_from_another_holder(Some(&peer), true, Some(reason)),
                "{reason}"
            );
            assert!(
                !retry_from_another_holder(Some(&backup), false, Some(reason)),
                "from a backup: {reason}"
            );
        }
        assert!(!retry_from_another_holder(
            Some(&peer),
            true,
            Some("ContainerdError")
        ));
        assert!(!retry_from_another_holder(Some(&peer), true, None));
        // The destination held it already: no peer, nothing to retry.
        assert!(!retry_from_another_holder(
            Some(&peer),
            false,
            Some("PullFailed")
        ));
    }

    #[test]
    fn destinations_found_later_are_added_and_the_ones_found_before_kept() {
        let existing = [
            entry("n1", ImageRestoreState::Restored, Some(digest('a'))),
            entry("n2", ImageRestoreState::InProgress, None),
        ];
        let chosen = BTreeSet::from(["n2".to_owned(), "n3".to_owned()]);
        let added = new_entries(&existing, "src.io/app:1", &chosen);
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].node, "n3");
        assert_eq!(added[0].state, ImageRestoreState::Pending);
        assert!(new_entries(&existing, "src.io/app:1", &BTreeSet::new()).is_empty());
        // Another image on the same node is another entry.
        assert_eq!(new_entries(&existing, "src.io/other:1", &chosen).len(), 2);
    }

    fn entry(node: &str, state: ImageRestoreState, digest: Option<String>) -> NodeImport {
        NodeImport {
            node: node.into(),
            reference: "src.io/app:1".into(),
            imported_digest: digest,
            state,
            ..NodeImport::default()
        }
    }

    #[test]
    fn an_image_is_restored_when_every_node_holds_it_and_failed_when_one_failed() {
        let image = RestoredImage {
            reference: "src.io/app:1".into(),
            requested_digest: Some(digest('a')),
            state: ImageRestoreState::InProgress,
            ..RestoredImage::default()
        };
        let mut images = [image.clone()];
        let mut nodes = [
            entry("n1", ImageRestoreState::Restored, Some(digest('a'))),
            entry("n2", ImageRestoreState::InProgress, None),
        ];
        roll_up(&mut images, &mut nodes);
        assert_eq!(images[0].state, ImageRestoreState::InProgress);
        nodes[1] = entry("n2", ImageRestoreState::Restored, Some(digest('a')));
        roll_up(&mut images, &mut nodes);
        assert_eq!(images[0].state, ImageRestoreState::Restored);
        assert_eq!(images[0].digest_preserved, Some(true));
        assert_eq!(images[0].restored_digest, Some(digest('a')));

        let mut images = [image.clone()];
        let mut failed = entry("n2", ImageRestoreState::Failed, None);
        failed.message = Some("PullFailed: refused".into());
        let mut nodes = [
            entry("n1", ImageRestoreState::Restored, Some(digest('a'))),
            failed,
        ];
        roll_up(&mut images, &mut nodes);
        assert_eq!(images[0].state, ImageRestoreState::Failed);
        assert_eq!(
            images[0].reason.as_deref(),
            Some(reasons::NODE_IMPORT_FAILED)
        );
        assert!(images[0].message.as_deref().unwrap().contains("n2"));

        // The deadline failed the image: its open entries fail with it.
        let mut images = [image];
        fail(&mut images[0], reasons::DEADLINE_EXCEEDED, "late");
        let mut nodes = [entry("n1", ImageRestoreState::InProgress, None)];
        roll_up(&mut images, &mut nodes);
        assert_eq!(nodes[0].state, ImageRestoreState::Failed);
        assert_eq!(nodes[0].reason.as_deref(), Some(reasons::DEADLINE_EXCEEDED));
    }
}
