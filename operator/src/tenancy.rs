//! Tenant boundaries, as pure decisions: what a namespace other than the
//! operator's may restore, which tolerations and node selectors it may give
//! export Jobs, and which registries it may reach over plain HTTP. The
//! controllers gather the facts and call these at one place each;
//! docs/security.md states the rules and names the tests that prove them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Toleration;
use lifeboat_api::ImageReference;
use lifeboat_api::conditions::reasons;

/// Condition reason: a restore names an image its namespace never ran and
/// holds no backup of.
pub const IMAGE_OUT_OF_SCOPE: &str = reasons::IMAGE_OUT_OF_SCOPE;
/// Condition reason: a toleration or node selector outside the admin's
/// allowlist.
pub const NODE_ACCESS_NOT_ALLOWED: &str = reasons::NODE_ACCESS_NOT_ALLOWED;
/// Condition reason: `insecure: true` for a registry the admin did not list.
pub const PLAIN_HTTP_NOT_ALLOWED: &str = reasons::PLAIN_HTTP_NOT_ALLOWED;

/// Labels that mark a control-plane node.
const CONTROL_PLANE_LABELS: &[&str] = &[
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
];

/// What a tenant namespace is known to have run or backed up, by the facts
/// the restore controller gathers (never by what the restore claims).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct NamespaceImages {
    /// Digests (`sha256:…`) the namespace's pods run (their `imageID`s) or
    /// ran (its policies' `missingImages`).
    pub digests: BTreeSet<String>,
    /// The same images by name and tag (`registry/repository:tag`), for a
    /// restore that names no digest.
    pub references: BTreeSet<String>,
    /// Digests a same-namespace policy's backup target holds.
    pub backed_up: BTreeSet<String>,
}

impl NamespaceImages {
    /// Records an image the namespace runs or ran: its reference as written
    /// (tag kept) and, when known, its digest.
    pub fn record(&mut self, reference: &str, digest: Option<&str>) {
        if let Ok(parsed) = ImageReference::parse(reference) {
            if let Some(tagged) = tagged_name(&parsed) {
                self.references.insert(tagged);
            }
            if let Some(d) = &parsed.digest {
                self.digests.insert(d.as_str().to_owned());
            }
        }
        if let Some(digest) = digest.filter(|d| d.contains(':')) {
            self.digests.insert(digest.to_owned());
        }
    }

    /// Records a pod's `imageID` (`[docker-pullable://]repo@sha256:…`).
    pub fn record_image_id(&mut self, image_id: &str) {
        if let Some((_, digest)) = image_id.rsplit_once('@') {
            self.digests.insert(digest.to_owned());
        }
    }
}

/// `registry/repository:tag` of a reference with a tag.
fn tagged_name(reference: &ImageReference) -> Option<String> {
    reference
        .tag
        .as_ref()
        .map(|tag| format!("{}:{tag}", reference.name()))
}

/// Why something a tenant asked for is refused: a condition reason and a
/// message that names what was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// The restore scope rule. Outside the operator's namespace a restore may
/// name only images its own namespace runs or ran, or that its own
/// policies' backup targets hold: by digest when the reference has one
/// (whatever repository name it is written under), else by name and tag.
/// The first image outside that scope refuses the whole restore.
pub(crate) fn restore_scope(
    operator_namespace: bool,
    requested: &[ImageReference],
    known: &NamespaceImages,
) -> Result<(), Refusal> {
    if operator_namespace {
        return Ok(());
    }
    for image in requested {
        let allowed = match &image.digest {
            Some(digest) => {
                known.digests.contains(digest.as_str()) || known.backed_up.contains(digest.as_str())
            }
            None => tagged_name(image).is_some_and(|t| known.references.contains(&t)),
        };
        if !allowed {
            let how = if image.digest.is_some() {
                "no pod of this namespace runs or ran that digest (as its pods and its policies' missingImages record) and no backup target of its policies holds it"
            } else {
                "no pod of this namespace runs or ran that image; name it by digest if a backup target of this namespace's policies holds it"
            };
            return Err(Refusal {
                reason: IMAGE_OUT_OF_SCOPE,
                message: format!("{image} is outside this namespace's restore scope: {how}"),
            });
        }
    }
    Ok(())
}

/// Digests among `requested` that the namespace's recorded images do not
/// cover: only these need a backup target asked.
pub(crate) fn unrecorded_digests<'a>(
    requested: &'a [ImageReference],
    known: &NamespaceImages,
) -> Vec<&'a ImageReference> {
    requested
        .iter()
        .filter(|r| {
            r.digest
                .as_ref()
                .is_some_and(|d| !known.digests.contains(d.as_str()))
        })
        .collect()
}

/// What the admin lets tenants choose for export Jobs (the operator's
/// settings; the operator's namespace is not bound by it).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NodeAccessAllowlist {
    /// Tolerations a tenant may give; each tenant toleration must be
    /// covered by one of these.
    pub tolerations: Vec<Toleration>,
    /// Node label keys a tenant's node selector may use.
    pub node_selector_keys: Vec<String>,
}

/// Whether `allowed` covers `wanted`: a toleration that tolerates no more
/// than the allowed one does.
fn covers(allowed: &Toleration, wanted: &Toleration) -> bool {
    let exists = |t: &Toleration| t.operator.as_deref() == Some("Exists");
    let key_ok = match (&allowed.key, &wanted.key) {
        // An allowed `Exists` without a key tolerates everything.
        (None, _) => exists(allowed),
        (Some(a), Some(w)) => a == w,
        (Some(_), None) => false,
    };
    let value_ok = exists(allowed) || (!exists(wanted) && allowed.value == wanted.value);
    let effect_ok = match (&allowed.effect, &wanted.effect) {
        (None, _) => true,
        (Some(a), Some(w)) => a == w,
        (Some(_), None) => false,
    };
    key_ok && value_ok && effect_ok
}

fn describe(t: &Toleration) -> String {
    format!(
        "{{key: {}, operator: {}, value: {}, effect: {}}}",
        t.key.as_deref().unwrap_or("<any>"),
        t.operator.as_deref().unwrap_or("Equal"),
        t.value.as_deref().unwrap_or(""),
        t.effect.as_deref().unwrap_or("<any>")
    )
}

/// Tenant tolerations and node selectors must stay within the allowlist.
pub(crate) fn node_access(
    operator_namespace: bool,
    node_selector: &BTreeMap<String, String>,
    tolerations: &[Toleration],
    allowlist: &NodeAccessAllowlist,
) -> Result<(), Refusal> {
    if operator_namespace {
        return Ok(());
    }
    for toleration in tolerations {
        if !allowlist.tolerations.iter().any(|a| covers(a, toleration)) {
            return Err(Refusal {
                reason: NODE_ACCESS_NOT_ALLOWED,
                message: format!(
                    "toleration {} is not in the operator's allowlist (LIFEBOAT_TENANT_TOLERATIONS, chart value tenancy.tolerations); ask the cluster admin",
                    describe(toleration)
                ),
            });
        }
    }
    for key in node_selector.keys() {
        if !allowlist.node_selector_keys.contains(key) {
            return Err(Refusal {
                reason: NODE_ACCESS_NOT_ALLOWED,
                message: format!(
                    "node selector key {key:?} is not in the operator's allowlist (LIFEBOAT_TENANT_NODE_SELECTOR_KEYS, chart value tenancy.nodeSelectorKeys: {:?})",
                    allowlist.node_selector_keys
                ),
            });
        }
    }
    Ok(())
}

/// The node selector a restore into nodes amounts to, for `node_access`:
/// names are `kubernetes.io/hostname` (allowed by default: naming nodes
/// widens nothing), a selector its own labels; the nodes of the
/// namespace's own failing pods need none (its pods run there already).
pub(crate) fn destination_selector(
    nodes: &lifeboat_api::restore::NodeDestination,
) -> BTreeMap<String, String> {
    if let Some(names) = &nodes.names {
        return names
            .first()
            .map(|n| (HOSTNAME_LABEL.to_owned(), n.clone()))
            .into_iter()
            .collect();
    }
    nodes
        .selector
        .as_ref()
        .map(|s| s.labels.clone())
        .unwrap_or_default()
}

/// The label every node carries with its name.
pub(crate) const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Whether a node's labels mark it as a control-plane node.
pub(crate) fn is_control_plane(labels: &BTreeMap<String, String>) -> bool {
    CONTROL_PLANE_LABELS.iter().any(|l| labels.contains_key(*l))
}

/// `insecure: true` (plain HTTP, no TLS at all) counts only for registries
/// the admin listed; a tenant's spec alone never turns TLS off. The
/// operator's namespace is trusted with it.
pub(crate) fn plain_http(
    operator_namespace: bool,
    host: &str,
    admin_listed: &[String],
) -> Result<(), Refusal> {
    if operator_namespace || admin_listed.iter().any(|h| h == host) {
        return Ok(());
    }
    Err(Refusal {
        reason: PLAIN_HTTP_NOT_ALLOWED,
        message: format!(
            "insecure: true (plain HTTP) for {host} needs the cluster admin to list it in LIFEBOAT_PLAIN_HTTP_REGISTRIES (chart value operator.plainHTTPRegistries)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VICTIM: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const OWN: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn r(text: &str) -> ImageReference {
        ImageReference::parse(text).unwrap()
    }

    fn own_namespace() -> NamespaceImages {
        let mut known = NamespaceImages::default();
        known.record("127.0.0.1:5001/team-a/app:1", None);
        known.record_image_id(&format!("127.0.0.1:5001/team-a/app@{OWN}"));
        known
    }

    #[test]
    fn another_namespaces_digest_is_refused_under_any_name() {
        let known = own_namespace();
        for text in [
            format!("127.0.0.1:5001/victim/private-app@{VICTIM}"),
            format!("127.0.0.1:5001/attacker/loot@{VICTIM}"),
            format!("127.0.0.1:5001/team-a/app:1@{VICTIM}"),
        ] {
            let refusal = restore_scope(false, &[r(&text)], &known).unwrap_err();
            assert_eq!(refusal.reason, IMAGE_OUT_OF_SCOPE);
            assert!(refusal.message.contains(VICTIM), "{}", refusal.message);
        }
    }

    #[test]
    fn a_tenant_restore_into_nodes_reaches_only_nodes_the_admin_lets_it_pick() {
        use lifeboat_api::restore::{NodeDestination, NodeLabelSelector};
        let by_default = NodeAccessAllowlist {
            tolerations: vec![],
            node_selector_keys: vec![HOSTNAME_LABEL.to_owned()],
        };
        let named = NodeDestination {
            names: Some(vec!["node-2".into()]),
            ..NodeDestination::default()
        };
        let by_role = NodeDestination {
            selector: Some(NodeLabelSelector {
                labels: [(
                    "node-role.kubernetes.io/control-plane".to_owned(),
                    String::new(),
                )]
                .into(),
            }),
            ..NodeDestination::default()
        };
        let failing = NodeDestination {
            failing_pods: Some(true),
            ..NodeDestination::default()
        };
        let access = |nodes: &NodeDestination, allowlist: &NodeAccessAllowlist| {
            node_access(false, &destination_selector(nodes), &[], allowlist)
        };
        assert_eq!(access(&named, &by_default), Ok(()));
        assert_eq!(access(&failing, &by_default), Ok(()));
        let refused = access(&by_role, &by_default).unwrap_err();
        assert_eq!(refused.reason, NODE_ACCESS_NOT_ALLOWED);
        let nothing = NodeAccessAllowlist::default();
        assert!(
            access(&named, &nothing).is_err(),
            "names need the hostname key"
        );
        assert_eq!(access(&failing, &nothing), Ok(()), "its own pods' nodes");
        assert_eq!(
            node_access(true, &destination_selector(&by_role), &[], &nothing),
            Ok(()),
            "the operator's namespace is not bound"
        );
    }

    #[test]
    fn own_digests_backups_and_tags_are_in_scope() {
        let mut known = own_namespace();
        let renamed = r(&format!("127.0.0.1:5001/elsewhere/app@{OWN}"));
        assert_eq!(restore_scope(false, &[renamed], &known), Ok(()));
        assert_eq!(
            restore_scope(false, &[r("127.0.0.1:5001/team-a/app:1")], &known),
            Ok(())
        );
        let other_tag = restore_scope(false, &[r("127.0.0.1:5001/team-a/app:2")], &known);
        assert_eq!(other_tag.unwrap_err().reason, IMAGE_OUT_OF_SCOPE);
        let backed = r(&format!("127.0.0.1:5001/team-a/old@{VICTIM}"));
        assert!(restore_scope(false, std::slice::from_ref(&backed), &known).is_err());
        known.backed_up.insert(VICTIM.to_owned());
        assert_eq!(restore_scope(false, &[backed], &known), Ok(()));
    }

    #[test]
    fn missing_images_record_their_digest() {
        let mut known = NamespaceImages::default();
        known.record("127.0.0.1:5001/team-a/gone:3", Some(VICTIM));
        assert!(known.digests.contains(VICTIM));
        assert!(known.references.contains("127.0.0.1:5001/team-a/gone:3"));
        assert!(unrecorded_digests(&[r(&format!("x.io/a@{VICTIM}"))], &known).is_empty());
        assert_eq!(
            unrecorded_digests(&[r(&format!("x.io/a@{OWN}")), r("x.io/a:1")], &known).len(),
            1
        );
    }

    #[test]
    fn the_operator_namespace_keeps_full_scope() {
        let wide = Toleration {
            operator: Some("Exists".into()),
            ..Toleration::default()
        };
        let request = [r(&format!("127.0.0.1:5001/victim/private-app@{VICTIM}"))];
        assert_eq!(
            restore_scope(true, &request, &NamespaceImages::default()),
            Ok(())
        );
        let selector = BTreeMap::from([(
            "node-role.kubernetes.io/control-plane".into(),
            String::new(),
        )]);
        let none = NodeAccessAllowlist::default();
        assert_eq!(
            node_access(true, &selector, std::slice::from_ref(&wide), &none),
            Ok(())
        );
        assert!(node_access(false, &BTreeMap::new(), &[wide], &none).is_err());
        assert_eq!(plain_http(true, "registry.example:80", &[]), Ok(()));
    }

    fn toleration(
        key: Option<&str>,
        operator: &str,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> Toleration {
        Toleration {
            key: key.map(str::to_owned),
            operator: Some(operator.to_owned()),
            value: value.map(str::to_owned),
            effect: effect.map(str::to_owned),
            ..Toleration::default()
        }
    }

    #[test]
    fn tolerations_must_be_covered_by_the_allowlist() {
        let allowlist = NodeAccessAllowlist {
            tolerations: vec![
                toleration(Some("dedicated"), "Exists", None, None),
                toleration(Some("gpu"), "Equal", Some("true"), Some("NoSchedule")),
            ],
            node_selector_keys: vec!["kubernetes.io/hostname".into()],
        };
        let ok = [
            toleration(Some("dedicated"), "Equal", Some("batch"), Some("NoExecute")),
            toleration(Some("dedicated"), "Exists", None, None),
            toleration(Some("gpu"), "Equal", Some("true"), Some("NoSchedule")),
        ];
        for t in &ok {
            assert_eq!(
                node_access(false, &BTreeMap::new(), std::slice::from_ref(t), &allowlist),
                Ok(()),
                "{t:?}"
            );
        }
        let refused = [
            // The case: tolerates every taint, control plane included.
            toleration(None, "Exists", None, None),
            toleration(
                Some("node-role.kubernetes.io/control-plane"),
                "Exists",
                None,
                None,
            ),
            toleration(Some("gpu"), "Exists", None, Some("NoSchedule")),
            toleration(Some("gpu"), "Equal", Some("false"), Some("NoSchedule")),
            toleration(Some("gpu"), "Equal", Some("true"), None),
        ];
        for t in &refused {
            let refusal = node_access(false, &BTreeMap::new(), std::slice::from_ref(t), &allowlist)
                .unwrap_err();
            assert_eq!(refusal.reason, NODE_ACCESS_NOT_ALLOWED, "{t:?}");
            assert!(refusal.message.contains("allowlist"), "{}", refusal.message);
        }
        let by_host = BTreeMap::from([("kubernetes.io/hostname".to_owned(), "n1".to_owned())]);
        assert_eq!(node_access(false, &by_host, &[], &allowlist), Ok(()));
        let by_role = BTreeMap::from([(
            "node-role.kubernetes.io/control-plane".to_owned(),
            String::new(),
        )]);
        let refusal = node_access(false, &by_role, &[], &allowlist).unwrap_err();
        assert!(
            refusal
                .message
                .contains("node-role.kubernetes.io/control-plane")
        );
    }

    #[test]
    fn control_plane_nodes_are_recognised_by_their_role_labels() {
        assert!(is_control_plane(&BTreeMap::from([(
            "node-role.kubernetes.io/control-plane".to_owned(),
            String::new()
        )])));
        assert!(is_control_plane(&BTreeMap::from([(
            "node-role.kubernetes.io/master".to_owned(),
            String::new()
        )])));
        assert!(!is_control_plane(&BTreeMap::from([(
            "node-role.kubernetes.io/worker".to_owned(),
            String::new()
        )])));
    }

    #[test]
    fn plain_http_only_for_listed_hosts() {
        let listed = vec!["127.0.0.1:5001".to_owned()];
        assert_eq!(plain_http(false, "127.0.0.1:5001", &listed), Ok(()));
        let refusal = plain_http(false, "evil.example:80", &listed).unwrap_err();
        assert_eq!(refusal.reason, PLAIN_HTTP_NOT_ALLOWED);
        assert!(refusal.message.contains("evil.example:80"));
    }
}
