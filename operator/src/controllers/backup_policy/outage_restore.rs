//! `restore.automatic` during an outage: an image whose source registry
//! does not answer is not lost, but a pod scheduled onto a node without it
//! cannot start. For each such image that some selected pod fails to pull,
//! the policy creates an ImageRestore into "the nodes whose pods fail to
//! pull it" (owned by the policy; from the backup, else from a node that
//! holds it), which also deletes the stuck pods once the image is there
//! unless the policy says `restore.deleteStuckPods: false`. Pure.

use std::collections::BTreeSet;

use kube::ResourceExt;
use lifeboat_api::restore::{
    BackupSource, NodeDestination, RestoreDestination, RestoreSource, RestoreSourceType,
};
use lifeboat_api::{ImageBackupPolicy, ImageBackupPolicyStatus, ImageRestore, ImageRestoreSpec};

use super::discovery::{ImageUse, Inventory};
use super::restore_link::owned_by_policy;
use crate::controllers::object_names::outage_restore_name;

/// The images to import and what tells this outage's failures apart: each
/// unreachable image (pinned) some selected pod fails to pull, with the
/// failing pods (a pod failing later, on another node, gets a restore of
/// its own).
pub fn failing_unreachable(
    status: &ImageBackupPolicyStatus,
    inventory: &Inventory,
) -> (Vec<String>, BTreeSet<String>) {
    let mut images = Vec::new();
    let mut keys = BTreeSet::new();
    for unreachable in &status.unreachable_images {
        let Some(digest) = &unreachable.digest else {
            continue;
        };
        let named = lifeboat_api::ImageReference::parse(&unreachable.reference).ok();
        // A pod of a workload that never ran the image knows only its tag.
        let same_tag = |use_: &ImageUse| {
            use_.reference.digest.is_none()
                && named.as_ref().is_some_and(|n| {
                    n.name() == use_.reference.name()
                        && n.tag.is_some()
                        && n.tag == use_.reference.tag
                })
        };
        let failing: BTreeSet<String> = inventory
            .images
            .values()
            .filter(|use_| {
                use_.reference.digest.as_ref().map(|d| d.as_str()) == Some(digest.as_str())
                    || same_tag(use_)
            })
            .flat_map(|use_| use_.pull_failures.iter())
            .map(|(namespace, name)| format!("{namespace}/{name}"))
            .collect();
        if failing.is_empty() {
            continue;
        }
        let image = if unreachable.reference.contains('@') {
            unreachable.reference.clone()
        } else {
            format!("{}@{digest}", unreachable.reference)
        };
        keys.insert(digest.clone());
        keys.extend(failing);
        if !images.contains(&image) {
            images.push(image);
        }
    }
    images.truncate(lifeboat_api::restore::MAX_SPEC_IMAGES);
    (images, keys)
}

/// The ImageRestore a policy creates for the pods failing to pull its
/// unreachable images, or `None` (not automatic, a dry run, nothing fails).
pub fn outage_restore(
    policy: &ImageBackupPolicy,
    status: &ImageBackupPolicyStatus,
    inventory: &Inventory,
) -> Option<ImageRestore> {
    let restore = policy.spec.restore.as_ref()?;
    if !restore.is_automatic() || policy.spec.dry_run {
        return None;
    }
    let (images, keys) = failing_unreachable(status, inventory);
    if images.is_empty() {
        return None;
    }
    let policy_name = policy.name_any();
    let spec = ImageRestoreSpec {
        images: Some(images),
        policy_ref: None,
        source: Some(RestoreSource {
            type_: RestoreSourceType::Auto,
            order: Some(restore.effective_source_order()),
            backup: Some(BackupSource {
                policy_name: Some(policy_name.clone()),
                target_names: None,
            }),
            node_cache: restore.node_cache.clone(),
        }),
        destination: Some(RestoreDestination {
            nodes: Some(NodeDestination {
                failing_pods: Some(true),
                delete_stuck_pods: restore.delete_stuck_pods,
                ..NodeDestination::default()
            }),
            ..RestoreDestination::default()
        }),
        active_deadline_seconds: None,
    };
    owned_by_policy(policy, outage_restore_name(&policy_name, &keys), spec)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use lifeboat_api::ImageReference;
    use lifeboat_api::backup_policy::{RestorePolicy, UnreachableImage};

    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn policy(automatic: bool, delete: Option<bool>) -> ImageBackupPolicy {
        let mut policy: ImageBackupPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "lifeboat.dev/v1alpha1", "kind": "ImageBackupPolicy",
            "metadata": {"name": "web", "namespace": "shop", "uid": "uid-1"},
            "spec": {"targets": [{"name": "backup", "registry": "backup.example"}]}
        }))
        .unwrap();
        policy.spec.restore = Some(RestorePolicy {
            automatic: Some(automatic),
            delete_stuck_pods: delete,
            ..RestorePolicy::default()
        });
        policy
    }

    fn unreachable(c: char) -> UnreachableImage {
        UnreachableImage {
            reference: "src.io/shop/app:1".into(),
            digest: Some(digest(c)),
            since: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            reason: "RegistryUnavailable".into(),
            message: "connection refused".into(),
            workloads: 1,
            backup_targets: vec![],
            nodes: vec![],
            referrers: None,
        }
    }

    fn inventory(c: char, failing: &[&str]) -> Inventory {
        let reference = ImageReference::parse(&format!("src.io/shop/app:1@{}", digest(c))).unwrap();
        let use_ = ImageUse {
            reference,
            workloads: BTreeSet::new(),
            nodes: BTreeSet::new(),
            pull_failures: failing
                .iter()
                .map(|p| ("shop".to_owned(), (*p).to_owned()))
                .collect(),
            pull_secrets: BTreeSet::new(),
        };
        Inventory {
            images: BTreeMap::from([(format!("k-{c}"), use_)]),
            ..Inventory::default()
        }
    }

    fn status(c: char) -> ImageBackupPolicyStatus {
        ImageBackupPolicyStatus {
            unreachable_images: vec![unreachable(c)],
            ..ImageBackupPolicyStatus::default()
        }
    }

    #[test]
    fn a_pod_failing_to_pull_an_unreachable_image_gets_it_imported_into_its_node() {
        let restore = outage_restore(
            &policy(true, None),
            &status('a'),
            &inventory('a', &["web-1"]),
        )
        .unwrap();
        assert_eq!(
            restore.spec.images.clone().unwrap(),
            [format!("src.io/shop/app:1@{}", digest('a'))]
        );
        let nodes = restore
            .spec
            .destination
            .as_ref()
            .unwrap()
            .nodes
            .clone()
            .unwrap();
        assert!(nodes.wants_failing_pods() && nodes.deletes_stuck_pods());
        assert_eq!(
            restore.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );
        assert!(restore.name_any().starts_with("web-import-"));
        lifeboat_api::validation::validate_restore_spec(&restore.spec).unwrap();
        // The same failing pod: the same restore; another pod failing: another.
        let again = outage_restore(
            &policy(true, None),
            &status('a'),
            &inventory('a', &["web-1"]),
        );
        assert_eq!(again.unwrap().name_any(), restore.name_any());
        let other = outage_restore(
            &policy(true, None),
            &status('a'),
            &inventory('a', &["web-2"]),
        );
        assert_ne!(other.unwrap().name_any(), restore.name_any());
        // The opt-out is carried.
        let kept = outage_restore(
            &policy(true, Some(false)),
            &status('a'),
            &inventory('a', &["web-1"]),
        )
        .unwrap();
        assert!(
            !kept
                .spec
                .destination
                .unwrap()
                .nodes
                .unwrap()
                .deletes_stuck_pods()
        );
    }

    #[test]
    fn nothing_when_no_pod_fails_or_the_policy_does_not_restore() {
        assert!(outage_restore(&policy(true, None), &status('a'), &inventory('a', &[])).is_none());
        assert!(
            outage_restore(
                &policy(true, None),
                &status('a'),
                &inventory('b', &["web-1"])
            )
            .is_none(),
            "another digest fails"
        );
        // A new workload's pod knows only the tag: it counts.
        let mut by_tag = inventory('a', &["new-1"]);
        for use_ in by_tag.images.values_mut() {
            use_.reference = ImageReference::parse("src.io/shop/app:1").unwrap();
        }
        assert!(outage_restore(&policy(true, None), &status('a'), &by_tag).is_some());
        for use_ in by_tag.images.values_mut() {
            use_.reference = ImageReference::parse("src.io/shop/app:2").unwrap();
        }
        assert!(outage_restore(&policy(true, None), &status('a'), &by_tag).is_none());
        assert!(
            outage_restore(
                &policy(false, None),
                &status('a'),
                &inventory('a', &["web-1"])
            )
            .is_none()
        );
        let mut dry = policy(true, None);
        dry.spec.dry_run = true;
        assert!(outage_restore(&dry, &status('a'), &inventory('a', &["web-1"])).is_none());
    }
}
