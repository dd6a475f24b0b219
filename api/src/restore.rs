//! `ImageRestore`: bring lost images back, from a backup registry or from the
//! containerd content store of nodes that still hold them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::backup_policy::{
    CaBundle, LocalObjectRef, RULE_INSECURE_OR_CA_BUNDLE, RULE_TARGET_REGISTRY_SHAPE,
    RULE_TEMPLATE_DISTINCT, RULE_TEMPLATE_VARIABLES,
};
use crate::schema::CelRule;

// --- CEL rules ---------------------------------------------------------------------

pub const RULE_SPEC_IMMUTABLE: CelRule = CelRule {
    rule: "self == oldSelf",
    message: "spec is immutable; create a new ImageRestore instead",
    field_path: None,
};
pub const RULE_IMAGES_XOR_POLICY: CelRule = CelRule {
    rule: "has(self.images) != has(self.policyRef)",
    message: "set exactly one of images (restore these images) or policyRef (restore every image that policy reports missing)",
    field_path: None,
};
pub const RULE_BACKUP_ONLY_WITH_BACKUP_TYPE: CelRule = CelRule {
    rule: "!has(self.backup) || self.type != 'NodeCache'",
    message: "source.backup can only be set when source.type is Auto or BackupRegistry",
    field_path: Some(".backup"),
};
pub const RULE_NODE_CACHE_ONLY_WITH_NODE_TYPE: CelRule = CelRule {
    rule: "!has(self.nodeCache) || self.type != 'BackupRegistry'",
    message: "source.nodeCache can only be set when source.type is Auto or NodeCache",
    field_path: Some(".nodeCache"),
};
pub const RULE_ORDER_ONLY_WITH_AUTO: CelRule = CelRule {
    rule: "!has(self.order) || self.type == 'Auto'",
    message: "source.order can only be set when source.type is Auto",
    field_path: Some(".order"),
};
pub const RULE_TEMPLATE_NEEDS_REGISTRY: CelRule = CelRule {
    rule: "!has(self.repositoryTemplate) || has(self.registry)",
    message: "destination.repositoryTemplate needs destination.registry: without a registry, images go back to their original repositories",
    field_path: Some(".repositoryTemplate"),
};

pub const RULE_NODES_ONE_OF: CelRule = CelRule {
    rule: "(has(self.names) ? 1 : 0) + (has(self.selector) ? 1 : 0) + (has(self.failingPods) && self.failingPods ? 1 : 0) == 1",
    message: "set exactly one of names, selector or failingPods: true",
    field_path: None,
};
pub const RULE_NODES_EXCLUDE_REGISTRY: CelRule = CelRule {
    rule: "!has(self.nodes) || !(has(self.registry) || has(self.secretRef) || has(self.caBundle) || has(self.insecure))",
    message: "destination.nodes writes images into nodes' containerd; registry, secretRef, caBundle and insecure are for a registry destination",
    field_path: Some(".nodes"),
};

/// The restore's CEL rules, for tests and documentation (the shared
/// registry, template and TLS rules are listed with the policy's).
pub const CEL_RULES: &[CelRule] = &[
    RULE_SPEC_IMMUTABLE,
    RULE_IMAGES_XOR_POLICY,
    RULE_BACKUP_ONLY_WITH_BACKUP_TYPE,
    RULE_NODE_CACHE_ONLY_WITH_NODE_TYPE,
    RULE_ORDER_ONLY_WITH_AUTO,
    RULE_TEMPLATE_NEEDS_REGISTRY,
    RULE_NODES_ONE_OF,
    RULE_NODES_EXCLUDE_REGISTRY,
];

/// Most nodes one ImageRestore can name in `destination.nodes.names`.
pub const MAX_DESTINATION_NODES: usize = 64;
/// Most (node, image) entries one ImageRestore tracks in `status.nodes`.
pub const MAX_STATUS_NODE_IMPORTS: usize = 256;

/// Most images one ImageRestore can name in `spec.images`.
pub const MAX_SPEC_IMAGES: usize = 100;
/// Most images one ImageRestore tracks in status (a policy restore takes at
/// most this many of the missing images; a later restore takes the rest).
pub const MAX_STATUS_IMAGES: usize = 256;

// --- spec --------------------------------------------------------------------------

/// Restore lost container images. The spec cannot change after creation.
// Each printcolumn(...) repeats the same keys, which clippy takes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "lifeboat.dev",
    version = "v1alpha1",
    kind = "ImageRestore",
    plural = "imagerestores",
    singular = "imagerestore",
    namespaced,
    status = "ImageRestoreStatus",
    shortname = "imgrestore",
    shortname = "ir",
    category = "lifeboat",
    derive = "PartialEq",
    derive = "Default",
    doc = "ImageRestore brings lost container images back into a registry, copied from a backup registry or exported from the containerd content store of nodes that still hold them. Its spec cannot change after creation.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Restored",
        type_ = "integer",
        json_path = ".status.progress.restored"
    ),
    printcolumn(
        name = "Total",
        type_ = "integer",
        json_path = ".status.progress.total"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.progress.failed",
        priority = 1
    ),
    printcolumn(
        name = "Source",
        type_ = "string",
        json_path = ".spec.source.type",
        priority = 1
    ),
    printcolumn(
        name = "Policy",
        type_ = "string",
        json_path = ".spec.policyRef.name",
        priority = 1
    ),
    printcolumn(
        name = "Completed",
        type_ = "date",
        json_path = ".status.completionTime",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = crate::schema::validations(&[RULE_SPEC_IMMUTABLE, RULE_IMAGES_XOR_POLICY])))]
pub struct ImageRestoreSpec {
    /// Images to restore, as references; pin digests (`repo@sha256:…` or
    /// `repo:tag@sha256:…`) so exactly the lost content comes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100), inner(length(min = 1, max = 600)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub images: Option<Vec<String>>,

    /// Restore every image this ImageBackupPolicy (same namespace) reports
    /// missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<LocalObjectRef>,

    /// Where restored content comes from; `type: Auto` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RestoreSource>,

    /// Where restored images go; their original repositories when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<RestoreDestination>,

    /// Give up (Stalled, DeadlineExceeded) after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604_800))]
    pub active_deadline_seconds: Option<i64>,
}

impl ImageRestoreSpec {
    /// The source with the default (`Auto`, no constraints) applied.
    pub fn effective_source(&self) -> RestoreSource {
        self.source.clone().unwrap_or_default()
    }
}

/// Which kind of source to restore from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RestoreSourceType {
    /// The backup registry if it holds the exact digest, else node caches.
    #[default]
    Auto,
    /// Only backup registries.
    BackupRegistry,
    /// Only nodes' containerd content stores.
    NodeCache,
}

/// A concrete kind of source.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum RestoreSourceKind {
    BackupRegistry,
    NodeCache,
}

impl RestoreSourceType {
    /// The kinds to try, in order, given an optional preference for `Auto`.
    pub fn kinds(self, order: Option<&[RestoreSourceKind]>) -> Vec<RestoreSourceKind> {
        match self {
            RestoreSourceType::BackupRegistry => vec![RestoreSourceKind::BackupRegistry],
            RestoreSourceType::NodeCache => vec![RestoreSourceKind::NodeCache],
            RestoreSourceType::Auto => match order {
                Some(order) if !order.is_empty() => order.to_vec(),
                _ => vec![
                    RestoreSourceKind::BackupRegistry,
                    RestoreSourceKind::NodeCache,
                ],
            },
        }
    }
}

/// A discriminated source: `type` decides which of the other fields apply.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = crate::schema::validations(&[RULE_BACKUP_ONLY_WITH_BACKUP_TYPE, RULE_NODE_CACHE_ONLY_WITH_NODE_TYPE, RULE_ORDER_ONLY_WITH_AUTO])))]
pub struct RestoreSource {
    #[serde(rename = "type")]
    pub type_: RestoreSourceType,

    /// For `Auto`: which kind to try first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub order: Option<Vec<RestoreSourceKind>>,

    /// Which backups to look in (`Auto` or `BackupRegistry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSource>,

    /// Which nodes may be used (`Auto` or `NodeCache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_cache: Option<NodeCacheSource>,
}

impl RestoreSource {
    /// The kinds to try, in order.
    pub fn kinds(&self) -> Vec<RestoreSourceKind> {
        self.type_.kinds(self.order.as_deref())
    }
}

/// Backups to restore from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSource {
    /// The ImageBackupPolicy (same namespace) whose targets to look in;
    /// `spec.policyRef`'s, or every policy in the namespace, when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub policy_name: Option<String>,

    /// Only these targets of that policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4), inner(length(min = 1, max = 63)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub target_names: Option<Vec<String>>,
}

/// Constraints on the nodes whose content stores are exported.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCacheSource {
    /// Only nodes with these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::node_selector")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Tolerations for the export Jobs, so tainted nodes can be used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::tolerations")]
    pub tolerations: Option<Vec<Toleration>>,
}

/// Where restored images are pushed, or, with `nodes`, which nodes'
/// containerd they are written into.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = crate::schema::validations(&[RULE_INSECURE_OR_CA_BUNDLE, RULE_TEMPLATE_NEEDS_REGISTRY, RULE_NODES_EXCLUDE_REGISTRY])))]
pub struct RestoreDestination {
    /// Write the images into these nodes' containerd (under the references
    /// pods use, digest-exact) instead of into a registry, so pods start
    /// there without any registry. Each image comes from a backup target
    /// that holds its digest when one answers, else straight from a node
    /// that holds it. Excludes every registry field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeDestination>,

    /// Push to this registry (host, optional port and path) instead of
    /// each image's original registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    #[schemars(extend("x-kubernetes-validations" = crate::schema::validations(&[RULE_TARGET_REGISTRY_SHAPE])))]
    pub registry: Option<String>,

    /// How source repositories map under `registry` (same variables as a
    /// backup target's); `{repository}` when unset, keeping the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    #[schemars(extend("x-kubernetes-validations" = crate::schema::validations(&[RULE_TEMPLATE_VARIABLES, RULE_TEMPLATE_DISTINCT])))]
    pub repository_template: Option<String>,

    /// Push credentials: a `kubernetes.io/dockerconfigjson` Secret (its
    /// `.dockerconfigjson` key) in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectRef>,

    /// CA certificates to trust for the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundle>,

    /// Speak plain HTTP to the destination (no TLS at all). Honoured only
    /// for registries the cluster admin lists in the operator's settings
    /// (`LIFEBOAT_PLAIN_HTTP_REGISTRIES`) when the restore is outside the
    /// operator's namespace. For test registries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
}

/// Which nodes a restore writes images into: exactly one of the fields.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = crate::schema::validations(&[RULE_NODES_ONE_OF])))]
pub struct NodeDestination {
    /// These nodes, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub names: Option<Vec<String>>,

    /// The Ready nodes with these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<NodeLabelSelector>,

    /// The nodes whose pods in this namespace fail to pull the image
    /// (`ErrImagePull`, `ImagePullBackOff`), as found when the restore
    /// starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_pods: Option<bool>,

    /// Once the image is on a node, delete this namespace's pods there that
    /// are stuck pulling it and never started, when a controller owns them
    /// (a ReplicaSet, a StatefulSet, a Job...): the replacement starts at
    /// once instead of after the kubelet's pull back-off (up to 5 minutes).
    /// An Event on the owner says so. A bare pod is never deleted: it
    /// starts at the kubelet's next retry. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_stuck_pods: Option<bool>,
}

/// Nodes by label.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeLabelSelector {
    /// Labels a node must all have.
    #[schemars(schema_with = "crate::schema::node_selector")]
    pub labels: BTreeMap<String, String>,
}

impl NodeDestination {
    pub fn wants_failing_pods(&self) -> bool {
        self.failing_pods.unwrap_or(false)
    }

    pub fn deletes_stuck_pods(&self) -> bool {
        self.delete_stuck_pods.unwrap_or(true)
    }
}

/// The template a destination override uses when none is given: keep the
/// repository path.
pub const DEFAULT_DESTINATION_TEMPLATE: &str = "{repository}";

impl RestoreDestination {
    pub fn is_insecure(&self) -> bool {
        self.insecure.unwrap_or(false)
    }

    pub fn effective_repository_template(&self) -> &str {
        self.repository_template
            .as_deref()
            .unwrap_or(DEFAULT_DESTINATION_TEMPLATE)
    }
}

// --- status ------------------------------------------------------------------------

/// What the restore has done so far.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// `default: {}` makes the API server fill in an empty status, and with it
// `observedGeneration: -1`, on objects nobody has reconciled yet, so kstatus
// and `kubectl wait` never mistake a fresh object for a current one.
#[schemars(extend("default" = {}))]
pub struct ImageRestoreStatus {
    /// The `.metadata.generation` this status is about; -1 until the
    /// operator has looked at the object.
    #[serde(default = "unobserved")]
    pub observed_generation: i64,

    /// `Ready` (Unknown while running, True `Succeeded`, False `Failed`),
    /// `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,

    /// When the operator started working on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When it reached a terminal outcome, successful or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// Counts over `images`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<RestoreProgress>,

    /// One entry per image, keyed by reference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["reference"]))]
    pub images: Vec<RestoredImage>,

    /// With `destination.nodes`: one entry per (node, image) imported into
    /// a node's containerd. An image is `Restored` once every one of its
    /// nodes holds it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node", "reference"]))]
    pub nodes: Vec<NodeImport>,
}

/// One image written (or to be written) into one node's containerd.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeImport {
    /// The node written into.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,

    /// The image, as in `status.images`.
    #[schemars(length(min = 1, max = 600))]
    pub reference: String,

    /// The manifest (or index) digest containerd on the node now records
    /// for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 160))]
    pub imported_digest: Option<String>,

    /// The backup target or the node the bytes came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ImageSourceRef>,

    /// Bytes written into the node's content store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub bytes: Option<i64>,

    /// The import Job on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub job_name: Option<String>,

    /// Node to node: the serve Job on the node that holds the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub serve_job_name: Option<String>,

    /// `Restored` once imported (or found already there).
    pub state: ImageRestoreState,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub reason: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

fn unobserved() -> i64 {
    -1
}

impl Default for ImageRestoreStatus {
    fn default() -> Self {
        ImageRestoreStatus {
            observed_generation: unobserved(),
            conditions: Vec::new(),
            start_time: None,
            completion_time: None,
            progress: None,
            images: Vec::new(),
            nodes: Vec::new(),
        }
    }
}

/// Restore counts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreProgress {
    pub total: i32,
    pub restored: i32,
    pub failed: i32,
    /// Bytes pushed to destinations.
    pub bytes: i64,
}

/// Where one image's content came from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSourceRef {
    pub kind: RestoreSourceKind,
    /// The backup target's name or the node's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The state of one image in a restore.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ImageRestoreState {
    /// Not started.
    #[default]
    Pending,
    /// Being copied or exported.
    InProgress,
    /// Pushed and verified pullable at the destination.
    Restored,
    /// Given up on; see `reason` and `message`.
    Failed,
}

impl ImageRestoreState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ImageRestoreState::Restored | ImageRestoreState::Failed
        )
    }
}

/// Why a restored image came back without referrers
/// (`RestoredImage::referrers_reason`).
pub mod referrers_reasons {
    /// Restored from a node, and no backup policy with targets to ask.
    pub const NO_BACKUP_TARGET: &str = "NoBackupTarget";
    /// Restored from a node; no backup target holds the restored digest.
    pub const NOT_IN_BACKUP: &str = "NotInBackup";
    /// The backup holds the image but no referrers of it.
    pub const NONE_IN_BACKUP: &str = "NoneInBackup";
    /// No backup target could be asked.
    pub const BACKUP_UNREACHABLE: &str = "BackupUnreachable";
    /// A backup target holds the image, but copying its referrers failed.
    pub const REFERRERS_COPY_FAILED: &str = "ReferrersCopyFailed";
}

/// One image of a restore.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoredImage {
    /// The image as requested (from `spec.images` or the policy's missing
    /// list).
    #[schemars(length(min = 1, max = 600))]
    pub reference: String,

    /// The digest asked for, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 160))]
    pub requested_digest: Option<String>,

    /// The digest now served at the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 160))]
    pub restored_digest: Option<String>,

    /// Where it was pushed, with digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 600))]
    pub restored_reference: Option<String>,

    /// Whether the restored digest equals the requested one (a node export
    /// of one platform of a multi-platform image cannot preserve the index
    /// digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_preserved: Option<bool>,

    /// The backup target or node the content came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ImageSourceRef>,

    /// Signatures, SBOMs and attestations restored with the image (OCI
    /// referrers and cosign tags found with it in the backup). An image
    /// restored from a node cache (which holds none) gets them from a
    /// backup target that holds its digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub referrers: Option<i32>,

    /// Why no referrers came back with a restored image (see
    /// `referrers_reasons`): `NoBackupTarget`, `NotInBackup`,
    /// `NoneInBackup`, `BackupUnreachable`, `ReferrersCopyFailed`. The
    /// image's `message` says more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub referrers_reason: Option<String>,

    /// The export Job, for node restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub job_name: Option<String>,

    pub state: ImageRestoreState,

    /// CamelCase reason for a failure (`ImageNotFound`, `NodeExportFailed`,
    /// `PushFailed`, `VerificationFailed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub reason: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

impl ImageRestore {
    /// The status, or a fresh one (observedGeneration -1).
    pub fn status_or_default(&self) -> ImageRestoreStatus {
        self.status.clone().unwrap_or_default()
    }
}

impl ImageRestoreStatus {
    /// Recomputes `progress` from `images`, keeping the byte count.
    pub fn recount(&mut self) {
        let count = |state| {
            let n = self.images.iter().filter(|i| i.state == state).count();
            i32::try_from(n).unwrap_or(i32::MAX)
        };
        let bytes = self.progress.as_ref().map_or(0, |p| p.bytes);
        self.progress = Some(RestoreProgress {
            total: i32::try_from(self.images.len()).unwrap_or(i32::MAX),
            restored: count(ImageRestoreState::Restored),
            failed: count(ImageRestoreState::Failed),
            bytes,
        });
    }

    /// Whether every image reached a terminal state.
    pub fn all_images_terminal(&self) -> bool {
        !self.images.is_empty() && self.images.iter().all(|i| i.state.is_terminal())
    }
}
