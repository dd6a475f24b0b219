//! `restore deployment/NAME` and `restore pod/NAME`: the images a workload
//! runs, pinned to the digests its pods report (`imageID`), so exactly the
//! content that ran comes back.

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::client::Connection;

/// What an argument of `restore` names.
#[derive(Debug, PartialEq, Eq)]
pub enum RestoreTarget<'a> {
    Image(&'a str),
    Deployment(&'a str),
    Pod(&'a str),
}

pub fn target(argument: &str) -> RestoreTarget<'_> {
    match argument.split_once('/') {
        Some(("deployment" | "deploy" | "deployments", name)) if !name.contains('/') => {
            RestoreTarget::Deployment(name)
        }
        Some(("pod" | "pods", name)) if !name.contains('/') => RestoreTarget::Pod(name),
        _ => RestoreTarget::Image(argument),
    }
}

/// `sha256:...` out of an `imageID` (`docker-pullable://repo@sha256:...`,
/// `repo@sha256:...` or a bare digest).
fn digest_of(image_id: &str) -> Option<&str> {
    let digest = image_id.rsplit_once('@').map_or(image_id, |(_, d)| d);
    digest.starts_with("sha256:").then_some(digest)
}

/// Each container's image of a pod, pinned to the digest it runs when the
/// pod reports one; the spec's reference otherwise (a pod that never
/// pulled, e.g. because the image is lost).
pub fn pod_images(pod: &Pod) -> Vec<String> {
    let statuses = pod
        .status
        .as_ref()
        .map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let spec = pod.spec.as_ref();
    let containers = spec
        .into_iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers));
    let mut images = Vec::new();
    for container in containers {
        let Some(image) = container.image.as_deref() else {
            continue;
        };
        let pinned = statuses
            .iter()
            .find(|s| s.name == container.name)
            .and_then(|s| digest_of(&s.image_id))
            .map(|digest| match image.split_once('@') {
                Some(_) => image.to_owned(),
                None => format!("{image}@{digest}"),
            })
            .unwrap_or_else(|| image.to_owned());
        if !images.contains(&pinned) {
            images.push(pinned);
        }
    }
    images
}

/// Merges `more` into `images`: a pinned reference replaces the same
/// reference unpinned.
pub fn merge(images: &mut Vec<String>, more: Vec<String>) {
    for image in more {
        let base = image.split_once('@').map_or(image.as_str(), |(b, _)| b);
        if image.contains('@') {
            images.retain(|i| i != base);
        } else if images
            .iter()
            .any(|i| i.split_once('@').is_some_and(|(b, _)| b == base))
        {
            continue;
        }
        if !images.contains(&image) {
            images.push(image);
        }
    }
}

/// The images the arguments name, workloads expanded.
pub async fn expand(connection: &Connection, arguments: &[String]) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(connection.client.clone(), &connection.namespace);
    let mut images = Vec::new();
    for argument in arguments {
        match target(argument) {
            RestoreTarget::Image(image) => merge(&mut images, vec![image.to_owned()]),
            RestoreTarget::Pod(name) => {
                let pod = pods
                    .get(name)
                    .await
                    .with_context(|| format!("pod {name}"))?;
                merge(&mut images, pod_images(&pod));
            }
            RestoreTarget::Deployment(name) => {
                let deployments: Api<Deployment> =
                    Api::namespaced(connection.client.clone(), &connection.namespace);
                let deployment = deployments
                    .get(name)
                    .await
                    .with_context(|| format!("deployment {name}"))?;
                let selector = deployment
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.match_labels.as_ref())
                    .map(|labels| {
                        labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .with_context(|| format!("deployment {name} has no matchLabels selector"))?;
                let listed = pods.list(&ListParams::default().labels(&selector)).await?;
                let before = images.len();
                for pod in &listed.items {
                    merge(&mut images, pod_images(pod));
                }
                if images.len() == before {
                    // No pods: the template's references, as written.
                    let template = Pod {
                        spec: deployment.spec.and_then(|s| s.template.spec),
                        ..Pod::default()
                    };
                    merge(&mut images, pod_images(&template));
                }
            }
        }
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(images: &[(&str, &str)], ids: &[(&str, &str)]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": images.iter().map(|(n, i)| serde_json::json!({"name": n, "image": i})).collect::<Vec<_>>()},
            "status": {"containerStatuses": ids.iter().map(|(n, id)| serde_json::json!({
                "name": n, "image": "x", "imageID": id, "ready": true, "restartCount": 0})).collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    #[test]
    fn arguments_name_images_deployments_or_pods() {
        assert_eq!(target("deployment/web"), RestoreTarget::Deployment("web"));
        assert_eq!(target("deploy/web"), RestoreTarget::Deployment("web"));
        assert_eq!(target("pod/web-1"), RestoreTarget::Pod("web-1"));
        assert_eq!(target("r.io/pod/x:1"), RestoreTarget::Image("r.io/pod/x:1"));
        assert_eq!(target("pod/a/b"), RestoreTarget::Image("pod/a/b"));
        assert_eq!(target("nginx:1.27"), RestoreTarget::Image("nginx:1.27"));
    }

    #[test]
    fn a_pods_images_are_pinned_to_what_it_runs() {
        let d = format!("sha256:{}", "a".repeat(64));
        let p = pod(
            &[
                ("web", "r.io/web:1"),
                ("side", "r.io/side:2"),
                ("lost", "r.io/lost:3"),
            ],
            &[
                ("web", &format!("docker-pullable://r.io/web@{d}")),
                ("side", &d),
                ("lost", ""),
            ],
        );
        assert_eq!(
            pod_images(&p),
            vec![
                format!("r.io/web:1@{d}"),
                format!("r.io/side:2@{d}"),
                "r.io/lost:3".to_owned()
            ]
        );
    }

    #[test]
    fn pinned_references_win_over_the_same_unpinned() {
        let d = format!("sha256:{}", "b".repeat(64));
        let mut images = vec!["r.io/web:1".to_owned()];
        merge(
            &mut images,
            vec![format!("r.io/web:1@{d}"), "r.io/web:1".to_owned()],
        );
        assert_eq!(images, vec![format!("r.io/web:1@{d}")]);
    }
}
