//! Deciding where each image of a restore comes from. Pure: facts in
//! (nodes, what their content stores hold, which backups hold what), a plan
//! out. The reconciler gathers the facts and carries the plan out.

use lifeboat_node_protocol::reasons as node_reasons;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};
use lifeboat_api::ImageReference;
use lifeboat_api::restore::ImageRestoreSpec;
use lifeboat_api::template::{TargetRegistry, TemplateContext, target_reference};
use lifeboat_api::validation::{ValidRestore, validate_restore_spec};

/// The taint a cordoned node carries.
pub(crate) const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// What the reconciler needs to know about a node.
#[derive(Clone, Debug, PartialEq, Default)]
pub(crate) struct NodeFacts {
    pub(crate) name: String,
    pub(crate) ready: bool,
    pub(crate) unschedulable: bool,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) taints: Vec<Taint>,
    /// Its `InternalIP` address (where a host-network pod on it listens).
    pub(crate) internal_ip: Option<String>,
}

impl NodeFacts {
    pub(crate) fn from_node(node: &Node) -> NodeFacts {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let spec = node.spec.as_ref();
        NodeFacts {
            name: node.metadata.name.clone().unwrap_or_default(),
            ready,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            internal_ip: node
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                .map(|a| a.address.clone()),
        }
    }
}

/// Whether and how a node may be used for exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NodeUse {
    /// Ready, schedulable, matching the selector, its taints tolerated.
    Preferred,
    /// Cordoned: only if no preferred node holds the image.
    LastResort,
    /// Not usable, and why.
    Excluded(String),
}

/// Whether `toleration` tolerates `taint` (the scheduler's rule).
pub(crate) fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_matches = toleration
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    if !effect_matches {
        return false;
    }
    match toleration.operator.as_deref() {
        Some("Exists") => toleration
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key),
        // Equal is the default.
        _ => {
            toleration.key.as_deref() == Some(taint.key.as_str())
                && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// Classifies a node for a restore's node selector and tolerations.
/// A NotReady node is excluded: no Job can run there.
pub(crate) fn classify_node(
    node: &NodeFacts,
    selector: &BTreeMap<String, String>,
    tolerations: &[Toleration],
) -> NodeUse {
    if !node.ready {
        return NodeUse::Excluded("NotReady".to_owned());
    }
    if let Some((key, value)) = selector
        .iter()
        .find(|(k, v)| node.labels.get(*k) != Some(*v))
    {
        return NodeUse::Excluded(format!("does not match the node selector {key}={value}"));
    }
    let untolerated = node.taints.iter().find(|taint| {
        taint.key != UNSCHEDULABLE_TAINT
            && (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
            && !tolerations.iter().any(|t| tolerates(t, taint))
    });
    if let Some(taint) = untolerated {
        return NodeUse::Excluded(format!(
            "taint {}:{} is not tolerated",
            taint.key, taint.effect
        ));
    }
    if node.unschedulable {
        return NodeUse::LastResort;
    }
    NodeUse::Preferred
}

/// How an image can be exported from a node: node-exporter's
/// `exportable`, from the shared protocol (ordered best first).
pub(crate) use lifeboat_node_protocol::Exportable;

/// What each node holds, keyed by the image argument asked about.
pub(crate) type Holdings = BTreeMap<String, BTreeMap<String, Exportable>>;

/// Whether an export failure means the node does not (completely) hold the
/// image, so another holder is worth trying (node-exporter's reasons).
pub(crate) fn node_lost_image(reason: Option<&str>) -> bool {
    // Not `RebuildDenied`: the node holds the image, the restore forbade
    // rebuilding it; another node would be asked the same.
    matches!(
        reason,
        Some(
            node_reasons::IMAGE_NOT_ON_NODE
                | node_reasons::CONTENT_MISSING
                | node_reasons::LAYER_UNRECOVERABLE
        )
    )
}

/// The argument node-exporter is given for an image: the pinned form when
/// a digest is known (exactly the lost content), else the reference.
pub(crate) fn image_argument(reference: &ImageReference) -> String {
    reference
        .pinned()
        .unwrap_or_else(|| reference.clone())
        .to_string()
}

/// Where a restored image goes: back to its own repository, or under the
/// destination override (the template rendered with the restore's
/// namespace and name).
pub(crate) fn destination_for(
    image: &ImageReference,
    override_: Option<(&TargetRegistry, &str)>,
    context: TemplateContext<'_>,
) -> Result<ImageReference, lifeboat_api::Error> {
    match override_ {
        None => Ok(image.clone()),
        Some((registry, template)) => target_reference(registry, template, image, context),
    }
}

/// One backup target of a policy, as a restore sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BackupCandidate {
    pub(crate) policy: String,
    pub(crate) target: String,
    pub(crate) registry: TargetRegistry,
    pub(crate) template: String,
}

/// The references in backup targets to look for an image, in order. Only
/// digest-pinned images can be found in a backup (by exact digest).
pub(crate) fn backup_references(
    image: &ImageReference,
    candidates: &[BackupCandidate],
    namespace: &str,
) -> Vec<(String, ImageReference)> {
    if image.digest.is_none() {
        return Vec::new();
    }
    candidates
        .iter()
        .filter_map(|c| {
            let context = TemplateContext {
                policy_namespace: namespace,
                policy_name: &c.policy,
            };
            target_reference(&c.registry, &c.template, image, context)
                .ok()
                .map(|r| (c.target.clone(), r))
        })
        .collect()
}

/// Why a restore does not run (now): the condition reason and message,
/// and whether it is for good (a spec that cannot work) or worth another
/// look later (something outside the restore may still change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    pub(crate) terminal: bool,
}

impl Refusal {
    pub(crate) fn retry(reason: &'static str, message: String) -> Refusal {
        Refusal {
            reason,
            message,
            terminal: false,
        }
    }
}

/// Admission, the first decision of every reconcile, made before any node,
/// Job or registry is asked: the spec must be valid. Checks of who may
/// restore what (scope, tolerations) belong here too.
pub(crate) fn admit(spec: &ImageRestoreSpec) -> Result<ValidRestore, Refusal> {
    validate_restore_spec(spec).map_err(|e| Refusal {
        reason: e.reason(),
        message: e.to_string(),
        terminal: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            ready: true,
            ..NodeFacts::default()
        }
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Taint::default()
        }
    }

    #[test]
    fn nodes_are_classified_by_readiness_selector_taints_and_cordon() {
        let none = BTreeMap::new();
        assert_eq!(classify_node(&node("a"), &none, &[]), NodeUse::Preferred);
        let not_ready = NodeFacts {
            ready: false,
            ..node("a")
        };
        assert!(matches!(
            classify_node(&not_ready, &none, &[]),
            NodeUse::Excluded(_)
        ));
        let cordoned = NodeFacts {
            unschedulable: true,
            taints: vec![taint(UNSCHEDULABLE_TAINT, "NoSchedule")],
            ..node("a")
        };
        assert_eq!(classify_node(&cordoned, &none, &[]), NodeUse::LastResort);

        let selector: BTreeMap<String, String> = [("zone".to_owned(), "a".to_owned())].into();
        let labelled = NodeFacts {
            labels: selector.clone(),
            ..node("a")
        };
        assert_eq!(classify_node(&labelled, &selector, &[]), NodeUse::Preferred);
        let NodeUse::Excluded(why) = classify_node(&node("b"), &selector, &[]) else {
            panic!("a node without the label must be excluded");
        };
        assert!(why.contains("zone=a"), "{why}");

        let tainted = NodeFacts {
            taints: vec![taint("gpu", "NoSchedule")],
            ..node("a")
        };
        assert!(matches!(
            classify_node(&tainted, &none, &[]),
            NodeUse::Excluded(_)
        ));
        let exists = Toleration {
            key: Some("gpu".into()),
            operator: Some("Exists".into()),
            ..Toleration::default()
        };
        assert_eq!(
            classify_node(&tainted, &none, &[exists]),
            NodeUse::Preferred
        );
        let wrong_value = Toleration {
            key: Some("gpu".into()),
            value: Some("x".into()),
            ..Toleration::default()
        };
        assert!(matches!(
            classify_node(&tainted, &none, &[wrong_value]),
            NodeUse::Excluded(_)
        ));
        // PreferNoSchedule does not keep a Job off the node.
        let soft = NodeFacts {
            taints: vec![taint("gpu", "PreferNoSchedule")],
            ..node("a")
        };
        assert_eq!(classify_node(&soft, &none, &[]), NodeUse::Preferred);
    }

    #[test]
    fn only_missing_content_sends_an_image_to_another_node() {
        assert!(node_lost_image(Some("ImageNotOnNode")));
        assert!(node_lost_image(Some("LayerUnrecoverable")));
        assert!(!node_lost_image(Some("PushFailed")));
        assert!(!node_lost_image(None));
    }

    #[test]
    fn destinations_and_backup_references() {
        let image = ImageReference::parse(&format!(
            "127.0.0.1:5001/team/app:1.0@sha256:{}",
            "a".repeat(64)
        ))
        .unwrap();
        let context = TemplateContext {
            policy_namespace: "ns",
            policy_name: "r",
        };
        assert_eq!(destination_for(&image, None, context).unwrap(), image);
        let registry = TargetRegistry::parse("mirror.example/restored").unwrap();
        let moved = destination_for(&image, Some((&registry, "{repository}")), context).unwrap();
        assert_eq!(moved.registry, "mirror.example");
        assert_eq!(moved.repository, "restored/team/app");
        assert_eq!(moved.digest, image.digest);

        let candidates = vec![BackupCandidate {
            policy: "p".into(),
            target: "backup".into(),
            registry: TargetRegistry::parse("127.0.0.1:5002/e2e/{x}".replace("/{x}", "").as_str())
                .unwrap(),
            template: "{policyNamespace}/{registry}/{repository}".into(),
        }];
        let refs = backup_references(&image, &candidates, "shop");
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].0, "backup");
        assert_eq!(refs[0].1.repository, "e2e/shop/127.0.0.1-5001/team/app");
        // Without a digest nothing can be found by exact digest.
        let by_tag = ImageReference::parse("127.0.0.1:5001/team/app:1.0").unwrap();
        assert!(backup_references(&by_tag, &candidates, "shop").is_empty());
        assert_eq!(
            image_argument(&image),
            format!("127.0.0.1:5001/team/app@sha256:{}", "a".repeat(64))
        );
        assert_eq!(image_argument(&by_tag), "127.0.0.1:5001/team/app:1.0");
    }

    #[test]
    fn admission_refuses_an_invalid_spec_for_good() {
        let spec: ImageRestoreSpec = serde_json::from_value(
            serde_json::json!({"images": ["registry.example/app@sha256:12"]}),
        )
        .unwrap();
        let refusal = admit(&spec).unwrap_err();
        assert!(refusal.terminal, "an immutable spec cannot get better");
        assert_eq!(refusal.reason, "InvalidImageReference");
        assert!(refusal.message.contains("sha256:12"), "{}", refusal.message);
        let spec: ImageRestoreSpec =
            serde_json::from_value(serde_json::json!({"images": ["registry.example/app:1"]}))
                .unwrap();
        let valid = admit(&spec).expect("a valid spec is admitted");
        assert_eq!(valid.images.len(), 1);
        assert!(!Refusal::retry("PolicyNotFound", "later".into()).terminal);
    }
}
