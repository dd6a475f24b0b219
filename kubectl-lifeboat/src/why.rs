//! `kubectl lifeboat why IMAGE`: an image's state, explained from the
//! policies' status (missing and unreachable lists, counts, targets) and
//! from the pods that run it (which nodes hold it).

use std::collections::BTreeSet;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use lifeboat_api::ImageBackupPolicy;

use crate::cli::WhyArgs;
use crate::client::Connection;
use crate::output;

/// Whether `query` names the image `reference` (with digest `digest`): the
/// same reference, its repository (up to `:tag` or `@digest`), or its digest.
pub fn names_image(query: &str, reference: &str, digest: Option<&str>) -> bool {
    if query == reference || digest.is_some_and(|d| d == query || query.ends_with(&format!("@{d}")))
    {
        return true;
    }
    reference
        .strip_prefix(query)
        .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('@'))
}

/// Where a pod runs the image: pod, node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub pod: String,
    pub node: Option<String>,
    pub image: String,
    pub digest: Option<String>,
}

/// The pods (of those given) whose containers run the image. The pod's
/// spec names the image as the workload asked for it; the container
/// status's `image` is whichever name the node first pulled that digest
/// under, so both are matched, and the digest comes from `imageID`.
pub fn running_in(query: &str, pods: &[Pod]) -> Vec<Running> {
    let mut found = Vec::new();
    for pod in pods {
        let spec = pod.spec.as_ref();
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        for container in statuses {
            let digest = container
                .image_id
                .rsplit_once('@')
                .map(|(_, d)| d.to_owned());
            let asked = spec
                .and_then(|s| s.containers.iter().find(|c| c.name == container.name))
                .and_then(|c| c.image.clone())
                .unwrap_or_else(|| container.image.clone());
            let matches = names_image(query, &asked, digest.as_deref())
                || names_image(query, &container.image, digest.as_deref());
            if matches {
                found.push(Running {
                    pod: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
                    node: spec.and_then(|s| s.node_name.clone()),
                    image: asked,
                    digest,
                });
            }
        }
    }
    found
}

/// The explanation, one paragraph per policy that knows the image, then
/// the pods; `what a restore would do` for each loss.
pub fn explain(
    query: &str,
    policies: &[ImageBackupPolicy],
    running: &[Running],
    now: DateTime<Utc>,
) -> String {
    let mut out = String::new();
    let digests: BTreeSet<&str> = running.iter().filter_map(|r| r.digest.as_deref()).collect();
    let named = |reference: &str, digest: Option<&str>| {
        names_image(query, reference, digest) || digest.is_some_and(|d| digests.contains(d))
    };
    for policy in policies {
        let status = policy.status_or_default();
        let id = format!(
            "imagebackuppolicy {}/{}",
            policy.namespace().unwrap_or_default(),
            policy.name_any()
        );
        let targets: Vec<&str> = policy
            .spec
            .targets
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        let mut known = false;
        for missing in status
            .missing_images
            .iter()
            .filter(|m| named(&m.reference, m.digest.as_deref()))
        {
            known = true;
            out.push_str(&format!(
                "{id}: {} ({}) is MISSING from its source registry since {}, used by {} workload(s).\n",
                missing.reference,
                missing.digest.as_deref().unwrap_or("digest unknown"),
                output::relative(Some(&missing.since), now),
                missing.workloads
            ));
            out.push_str(&format!(
                "  backups: {}{}\n  nodes holding it: {}\n",
                list(&missing.backup_targets),
                with_referrers(missing.referrers),
                list(&missing.nodes)
            ));
            out.push_str(&format!(
                "  a restore would: {}\n",
                restore_plan(
                    &missing.backup_targets,
                    &missing.nodes,
                    policy.name_any().as_str()
                )
            ));
        }
        for unreachable in status
            .unreachable_images
            .iter()
            .filter(|u| named(&u.reference, u.digest.as_deref()))
        {
            known = true;
            out.push_str(&format!(
                "{id}: the source of {} is UNREACHABLE since {}: {}: {}\n",
                unreachable.reference,
                output::relative(Some(&unreachable.since), now),
                unreachable.reason,
                unreachable.message
            ));
            out.push_str(&format!(
                "  backups (where pods can pull it meanwhile): {}{}\n  nodes holding it: {}\n",
                list(&unreachable.backup_targets),
                with_referrers(unreachable.referrers),
                list(&unreachable.nodes)
            ));
        }
        let same_namespace = running
            .iter()
            .any(|r| r.pod.split('/').next() == policy.namespace().as_deref());
        if !known && same_namespace {
            let summary = status.summary.clone().unwrap_or_default();
            let last = output::relative(status.last_successful_time.as_ref(), now);
            out.push_str(&format!(
                "{id}: no loss reported; backed up to target(s) {} ({}/{} selected images protected, last success {last}).\n",
                list_str(&targets),
                summary.protected,
                summary.selected
            ));
        }
    }
    for r in running {
        out.push_str(&format!(
            "running in pod {} on node {} ({}{})\n",
            r.pod,
            r.node.as_deref().unwrap_or("-"),
            r.image,
            r.digest
                .as_deref()
                .map(|d| format!("@{d}"))
                .unwrap_or_default()
        ));
    }
    if out.is_empty() {
        out = format!("No policy reports {query}, and no pod runs it here.\n");
    }
    out
}

/// What the backup holds with the image besides it, when the status says.
fn with_referrers(referrers: Option<i32>) -> String {
    match referrers {
        Some(n) => format!(" (with {n} signature(s), SBOM(s) or attestation(s))"),
        None => String::new(),
    }
}

fn restore_plan(targets: &[String], nodes: &[String], policy: &str) -> String {
    let source = match (targets.is_empty(), nodes.is_empty()) {
        (false, _) => format!(
            "copy it back from backup target {} into its original repository",
            targets.join(", ")
        ),
        (true, false) => format!(
            "export it from node {} into its original repository",
            nodes.join(", ")
        ),
        (true, true) => return "fail: no backup and no node holds it".to_owned(),
    };
    format!("{source} (kubectl lifeboat restore --policy {policy} --missing)")
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

fn list_str(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

pub async fn run(connection: &Connection, args: &WhyArgs) -> anyhow::Result<ExitCode> {
    let policies: Vec<ImageBackupPolicy> = connection.list(args.all_namespaces).await?;
    let pods: Vec<Pod> = connection.list(args.all_namespaces).await?;
    print!(
        "{}",
        explain(
            &args.image,
            &policies,
            &running_in(&args.image, &pods),
            Utc::now()
        )
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_api::backup_policy::{ImageBackupPolicyStatus, MissingImage, PolicySummary};

    #[test]
    fn names_match_reference_repository_or_digest() {
        let reference = "reg:5000/shop/web:1.0";
        assert!(names_image("reg:5000/shop/web:1.0", reference, None));
        assert!(names_image("reg:5000/shop/web", reference, None));
        assert!(!names_image("reg:5000/shop/we", reference, None));
        assert!(!names_image("reg:5000/shop/web:1.1", reference, None));
        assert!(names_image("sha256:ab", reference, Some("sha256:ab")));
        assert!(names_image(
            "other/web@sha256:ab",
            reference,
            Some("sha256:ab")
        ));
    }

    #[test]
    fn pods_match_by_the_image_their_spec_names_not_only_the_nodes_name() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "app-1", "namespace": "shop"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "main", "image": "reg/e2e/copy:1"}]},
            "status": {"containerStatuses": [{
                "name": "main", "image": "reg/demo/worker:0.9", "imageID": "reg/demo/worker@sha256:aa",
                "ready": true, "restartCount": 0
            }]}
        }))
        .unwrap_or_default();
        let pods = [pod];
        let by_spec = running_in("reg/e2e/copy", &pods);
        assert_eq!(
            by_spec,
            [Running {
                pod: "shop/app-1".into(),
                node: Some("node-1".into()),
                image: "reg/e2e/copy:1".into(),
                digest: Some("sha256:aa".into()),
            }]
        );
        assert_eq!(running_in("reg/demo/worker", &pods).len(), 1);
        assert_eq!(running_in("sha256:aa", &pods).len(), 1);
        assert!(running_in("reg/e2e/other", &pods).is_empty());
    }

    fn policy(missing: Vec<MissingImage>) -> ImageBackupPolicy {
        let spec: lifeboat_api::ImageBackupPolicySpec = serde_json::from_value(
            serde_json::json!({"targets": [{"name": "offsite", "registry": "backup.example"}]}),
        )
        .unwrap_or_default();
        let mut policy = ImageBackupPolicy::new("prod", spec);
        policy.metadata.namespace = Some("shop".into());
        policy.status = Some(ImageBackupPolicyStatus {
            summary: Some(PolicySummary {
                selected: 2,
                protected: 2,
                ..Default::default()
            }),
            missing_images: missing,
            ..Default::default()
        });
        policy
    }

    #[test]
    fn a_missing_image_names_its_backups_nodes_and_the_restore() {
        let now = Utc::now();
        let missing = MissingImage {
            reference: "reg/shop/web:1".into(),
            digest: Some("sha256:aa".into()),
            since: lifeboat_api::time::to_k8s_time(now - chrono::TimeDelta::minutes(10)),
            workloads: 2,
            backup_targets: vec!["offsite".into()],
            nodes: vec!["node-1".into()],
            referrers: Some(2),
        };
        let text = explain("reg/shop/web", &[policy(vec![missing.clone()])], &[], now);
        assert!(
            text.contains("MISSING from its source registry since 10m ago"),
            "{text}"
        );
        assert!(
            text.contains("backups: offsite (with 2 signature(s), SBOM(s) or attestation(s))"),
            "{text}"
        );
        let unknown = MissingImage {
            referrers: None,
            ..missing
        };
        let text = explain("reg/shop/web", &[policy(vec![unknown])], &[], now);
        assert!(text.contains("backups: offsite\n"), "{text}");
        assert!(text.contains("nodes holding it: node-1"), "{text}");
        assert!(
            text.contains("copy it back from backup target offsite"),
            "{text}"
        );
    }

    #[test]
    fn a_running_image_without_loss_names_the_targets_and_nodes() {
        let running = vec![Running {
            pod: "shop/web-1".into(),
            node: Some("node-2".into()),
            image: "reg/shop/web:1".into(),
            digest: Some("sha256:aa".into()),
        }];
        let text = explain("reg/shop/web:1", &[policy(vec![])], &running, Utc::now());
        assert!(
            text.contains("no loss reported; backed up to target(s) offsite (2/2"),
            "{text}"
        );
        assert!(
            text.contains("running in pod shop/web-1 on node node-2"),
            "{text}"
        );
        assert_eq!(
            explain("x", &[policy(vec![])], &[], Utc::now()),
            "No policy reports x, and no pod runs it here.\n"
        );
    }
}
