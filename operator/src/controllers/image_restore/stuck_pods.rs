//! Which pods a restore into nodes deletes once their image is on their
//! node, pure: a pod the kubelet keeps in its pull back-off (up to five
//! minutes between tries) starts only at the next try; one deleted is
//! recreated by its controller at once and finds the image. Only pods
//! that never started (nothing of them ran: deleting loses no work) and
//! that a controller owns (a bare pod would be gone for good).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use lifeboat_api::ImageReference;

use super::node_destination::{PULL_FAILURES, same_image};

/// A pod to delete, with the controller to tell.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StuckPod {
    pub name: String,
    pub uid: String,
    pub node: String,
    /// The image it waits for, as its spec names it.
    pub image: String,
    pub owner: OwnerReference,
}

/// The pods stuck pulling one of `imported` ((node, image) now on that
/// node) on that node, never started, owned by a controller.
pub(crate) fn stuck_pods(
    pods: &[Pod],
    imported: &BTreeSet<(String, ImageReference)>,
) -> Vec<StuckPod> {
    let mut stuck = Vec::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let Some(owner) = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
        else {
            continue;
        };
        let Some(status) = pod.status.as_ref() else {
            continue;
        };
        let containers = status.container_statuses.as_deref().unwrap_or_default();
        let ever_started = containers.iter().any(|c| {
            c.restart_count > 0
                || c.started == Some(true)
                || c.state
                    .as_ref()
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                || c.last_state
                    .as_ref()
                    .is_some_and(|s| s.terminated.is_some())
        });
        if ever_started {
            continue;
        }
        let waiting_for = containers.iter().find(|c| {
            let pulling = c
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                .is_some_and(|r| PULL_FAILURES.contains(&r));
            pulling
                && ImageReference::parse(&c.image).is_ok_and(|image| {
                    imported
                        .iter()
                        .any(|(n, wanted)| n == &node && same_image(&image, wanted))
                })
        });
        if let Some(container) = waiting_for {
            stuck.push(StuckPod {
                name: pod.metadata.name.clone().unwrap_or_default(),
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                node,
                image: container.image.clone(),
                owner: owner.clone(),
            });
        }
    }
    stuck
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> String {
        format!("sha256:{}", "a".repeat(64))
    }

    fn pod(name: &str, node: &str, owned: bool, container: serde_json::Value) -> Pod {
        let owners = if owned {
            serde_json::json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1",
                "uid": "rs-uid", "controller": true}])
        } else {
            serde_json::json!([])
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": format!("{name}-uid"), "ownerReferences": owners},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "src.io/app:1"}]},
            "status": {"containerStatuses": [container]},
        }))
        .unwrap()
    }

    fn waiting(reason: &str) -> serde_json::Value {
        serde_json::json!({"name": "main", "image": "src.io/app:1", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"waiting": {"reason": reason}}})
    }

    #[test]
    fn only_owned_pods_stuck_on_the_imported_image_on_that_node_that_never_ran() {
        let imported: BTreeSet<(String, ImageReference)> = [(
            "n2".to_owned(),
            ImageReference::parse(&format!("src.io/app:1@{}", digest())).unwrap(),
        )]
        .into();
        let mut restarted = waiting("ImagePullBackOff");
        restarted["restartCount"] = 1.into();
        let pods = [
            pod("stuck", "n2", true, waiting("ImagePullBackOff")),
            pod("erring", "n2", true, waiting("ErrImagePull")),
            pod("bare", "n2", false, waiting("ImagePullBackOff")),
            pod("elsewhere", "n1", true, waiting("ImagePullBackOff")),
            pod("crashing", "n2", true, waiting("CrashLoopBackOff")),
            pod("ran-before", "n2", true, restarted),
        ];
        let stuck = stuck_pods(&pods, &imported);
        let names: Vec<&str> = stuck.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["stuck", "erring"]);
        assert_eq!(stuck[0].owner.kind, "ReplicaSet");
        assert_eq!(stuck[0].uid, "stuck-uid");
        let mut other_image = pod("other", "n2", true, waiting("ImagePullBackOff"));
        if let Some(s) = other_image.status.as_mut() {
            s.container_statuses.as_mut().unwrap()[0].image = "src.io/app:2".into();
        }
        assert!(stuck_pods(&[other_image], &imported).is_empty());
    }
}
