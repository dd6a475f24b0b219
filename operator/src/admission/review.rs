//! What an AdmissionReview asks: the kind and namespace of the object, the
//! images of its pod template, its labels and its controlling owner.

use std::collections::BTreeMap;

use kube::core::DynamicObject;
use lifeboat_api::backup_policy::WorkloadKind;
use serde_json::Value;

/// The object under admission, as far as the webhook cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    pub kind: WorkloadKind,
    pub namespace: String,
    /// Every container's image (init and ephemeral containers too), each once.
    pub images: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// The controlling owner: (kind, name).
    pub owner: Option<(String, String)>,
}

fn kind_of(kind: &str) -> Option<WorkloadKind> {
    WorkloadKind::ALL.into_iter().find(|k| k.as_str() == kind)
}

/// Where the pod spec is in an object of `kind`.
fn pod_spec(kind: WorkloadKind, data: &Value) -> Option<&Value> {
    match kind {
        WorkloadKind::Pod => data.get("spec"),
        WorkloadKind::CronJob => data.pointer("/spec/jobTemplate/spec/template/spec"),
        _ => data.pointer("/spec/template/spec"),
    }
}

fn images(spec: &Value) -> Vec<String> {
    let mut images: Vec<String> = Vec::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for container in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(image) = container.get("image").and_then(Value::as_str)
                && !images.iter().any(|i| i == image)
            {
                images.push(image.to_owned());
            }
        }
    }
    images
}

/// The object of a review of `kind` in `namespace`; `None` for a kind the
/// webhook does not look at.
pub fn admitted(kind: &str, namespace: &str, object: &DynamicObject) -> Option<Admitted> {
    let kind = kind_of(kind)?;
    let images = pod_spec(kind, &object.data).map(images).unwrap_or_default();
    let owner = object
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.clone(), o.name.clone()));
    Some(Admitted {
        kind,
        namespace: namespace.to_owned(),
        images,
        labels: object.metadata.labels.clone().unwrap_or_default(),
        owner,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_deployments_template_images_each_once() {
        let deployment = object(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"template": {"spec": {
                "initContainers": [{"name": "init", "image": "reg.local/init:1"}],
                "containers": [
                    {"name": "web", "image": "reg.local/web:1"},
                    {"name": "side", "image": "reg.local/init:1"},
                ],
            }}},
        }));
        let admitted = admitted("Deployment", "shop", &deployment).unwrap();
        assert_eq!(admitted.kind, WorkloadKind::Deployment);
        assert_eq!(admitted.images, ["reg.local/init:1", "reg.local/web:1"]);
        assert_eq!(admitted.labels["app"], "web");
        assert_eq!(admitted.owner, None);
    }

    #[test]
    fn a_pod_with_its_controlling_owner_and_a_cron_jobs_template() {
        let pod = object(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d", "uid": "u", "controller": true},
            ]},
            "spec": {"containers": [{"name": "web", "image": "reg.local/web:1"}]},
        }));
        let admitted_pod = admitted("Pod", "shop", &pod).unwrap();
        assert_eq!(
            admitted_pod.owner,
            Some(("ReplicaSet".to_owned(), "web-5d".to_owned()))
        );
        assert_eq!(admitted_pod.images, ["reg.local/web:1"]);
        let cron = object(serde_json::json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "nightly", "namespace": "shop"},
            "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {"spec": {
                "containers": [{"name": "job", "image": "reg.local/job:2"}],
            }}}}},
        }));
        assert_eq!(
            admitted("CronJob", "shop", &cron).unwrap().images,
            ["reg.local/job:2"]
        );
        assert_eq!(admitted("Service", "shop", &cron), None);
    }
}
