//! `ImageBackupPolicy`: which images to protect, where to copy them, when,
//! how long to keep them, and what to do when they go missing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::restore::{NodeCacheSource, RestoreSourceKind};
use crate::schema::CelRule;

/// The kinds of workloads whose images a policy can select.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum WorkloadKind {
    Pod,
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    Job,
    CronJob,
}

impl WorkloadKind {
    /// What an absent `workloadKinds` means.
    pub const ALL: [WorkloadKind; 7] = [
        WorkloadKind::Pod,
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::ReplicaSet,
        WorkloadKind::Job,
        WorkloadKind::CronJob,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "Pod",
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
        }
    }
}

// --- CEL rules, with the messages users see -----------------------------------

pub const RULE_DISJOINT_NAMESPACES: CelRule = CelRule {
    rule: "!has(self.includedNamespaces) || !has(self.excludedNamespaces) || !self.includedNamespaces.exists(n, n in self.excludedNamespaces)",
    message: "a namespace cannot be both included and excluded: includedNamespaces and excludedNamespaces must not overlap",
    field_path: Some(".excludedNamespaces"),
};
pub const RULE_SCHEDULE_NO_TZ: CelRule = CelRule {
    rule: "!self.contains('TZ=')",
    message: "schedule must not set a time zone with TZ= or CRON_TZ=; remove it and set spec.timeZone instead",
    field_path: None,
};
pub const RULE_SCHEDULE_SHAPE: CelRule = CelRule {
    rule: r"self.contains('TZ=') || self.matches('^\\s*(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\\S+(\\s+\\S+){4})\\s*$')",
    message: "schedule must have 5 fields (minute hour day-of-month month day-of-week) or be one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly",
    field_path: None,
};
pub const RULE_TIME_ZONE_SHAPE: CelRule = CelRule {
    rule: "self.matches('^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$')",
    message: "timeZone must be an IANA time zone name such as UTC, Europe/Berlin or America/New_York",
    field_path: None,
};
pub const RULE_TARGET_REGISTRY_SHAPE: CelRule = CelRule {
    rule: r"self.matches('^(localhost|\\[[0-9A-Fa-f:]+\\]|[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*)(:[0-9]{1,5})?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$')",
    message: "registry must be a host with an optional port and path, such as backup.example.com:5000/lifeboat, without a scheme such as https://",
    field_path: None,
};
pub const RULE_TEMPLATE_VARIABLES: CelRule = CelRule {
    rule: r"self.matches('^([a-z0-9._/-]|\\{(registry|repository|name|policyNamespace|policyName)\\})+$')",
    message: "repositoryTemplate may contain only lowercase letters, digits, '.', '_', '-', '/' and the variables {registry}, {repository}, {name}, {policyNamespace}, {policyName}",
    field_path: None,
};
pub const RULE_TEMPLATE_DISTINCT: CelRule = CelRule {
    rule: "self.contains('{repository}') || self.contains('{name}')",
    message: "repositoryTemplate must contain {repository} or {name}, otherwise different images would overwrite each other",
    field_path: None,
};
pub const RULE_CA_BUNDLE_ONE_SOURCE: CelRule = CelRule {
    rule: "has(self.configMapKeyRef) != has(self.secretKeyRef)",
    message: "caBundle must set exactly one of configMapKeyRef or secretKeyRef",
    field_path: None,
};
pub const RULE_INSECURE_OR_CA_BUNDLE: CelRule = CelRule {
    rule: "!(has(self.insecure) && self.insecure && has(self.caBundle))",
    message: "insecure and caBundle are mutually exclusive: a CA bundle is only used when TLS certificates are verified",
    field_path: None,
};
pub const RULE_RETENTION_NOT_EMPTY: CelRule = CelRule {
    rule: "has(self.keepLast) || has(self.maxAgeDays)",
    message: "retention must set keepLast, maxAgeDays or both; leave retention out to keep every backup",
    field_path: None,
};

pub const RULE_REFERRERS_TYPES: CelRule = CelRule {
    rule: "(has(self.copy) && self.copy == 'ArtifactTypes') == has(self.artifactTypes)",
    message: "artifactTypes must be set exactly when copy is ArtifactTypes",
    field_path: Some(".artifactTypes"),
};

/// The policy's CEL rules, for tests and documentation.
pub const CEL_RULES: &[CelRule] = &[
    RULE_REFERRERS_TYPES,
    RULE_DISJOINT_NAMESPACES,
    RULE_SCHEDULE_NO_TZ,
    RULE_SCHEDULE_SHAPE,
    RULE_TIME_ZONE_SHAPE,
    RULE_TARGET_REGISTRY_SHAPE,
    RULE_TEMPLATE_VARIABLES,
    RULE_TEMPLATE_DISTINCT,
    RULE_CA_BUNDLE_ONE_SOURCE,
    RULE_INSECURE_OR_CA_BUNDLE,
    RULE_RETENTION_NOT_EMPTY,
];

// --- spec ------------------------------------------------------------------------

/// Back up the container images a set of workloads runs into backup
/// registries, watch that they stay available, and restore them when they
/// disappear.
// Each printcolumn(...) repeats the same keys, which clippy takes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "lifeboat.dev",
    version = "v1alpha1",
    kind = "ImageBackupPolicy",
    plural = "imagebackuppolicies",
    singular = "imagebackuppolicy",
    namespaced,
    status = "ImageBackupPolicyStatus",
    shortname = "ibp",
    category = "lifeboat",
    derive = "PartialEq",
    derive = "Default",
    doc = "ImageBackupPolicy backs up the container images that selected workloads run into backup registries, watches that they stay available in their source registries, and can restore them when they go missing.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Protected",
        type_ = "integer",
        json_path = ".status.summary.protected",
        description = "Images backed up to every target"
    ),
    printcolumn(
        name = "Missing",
        type_ = "integer",
        json_path = ".status.summary.missing",
        description = "Images gone from their source registry"
    ),
    printcolumn(
        name = "Unreachable",
        type_ = "integer",
        json_path = ".status.summary.unreachable",
        description = "Images whose source registry cannot be reached",
        priority = 1
    ),
    printcolumn(
        name = "Last Backup",
        type_ = "date",
        json_path = ".status.lastSuccessfulTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Schedule",
        type_ = "string",
        json_path = ".spec.schedule",
        priority = 1
    ),
    printcolumn(
        name = "Next",
        type_ = "date",
        json_path = ".status.nextScheduleTime",
        priority = 1
    ),
    printcolumn(
        name = "Suspend",
        type_ = "boolean",
        json_path = ".spec.suspend",
        priority = 1
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.summary.pending",
        priority = 1
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.summary.failed",
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
pub struct ImageBackupPolicySpec {
    /// Which workloads, and which of their images, to protect. Without a
    /// selector, every workload in the policy's own namespace is selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,

    /// Credentials for pulling from the source registries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_credentials: Option<SourceCredentials>,

    /// Backup registries; every selected image is copied to each of them.
    #[schemars(length(min = 1, max = 4))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub targets: Vec<BackupTarget>,

    /// When to run a full backup pass, in Kubernetes CronJob syntax (5
    /// fields or a @descriptor), read in `timeZone`. Without a schedule the
    /// policy only backs up continuously and on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    #[schemars(extend("x-kubernetes-validations" = crate::schema::validations(&[RULE_SCHEDULE_NO_TZ, RULE_SCHEDULE_SHAPE])))]
    pub schedule: Option<String>,

    /// IANA time zone the schedule is read in; UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = crate::schema::validations(&[RULE_TIME_ZONE_SHAPE])))]
    pub time_zone: Option<String>,

    /// A scheduled run that could not start within this many seconds of its
    /// time is skipped. Without it, a late run always starts (only the most
    /// recent missed time runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31_536_000))]
    pub starting_deadline_seconds: Option<i64>,

    /// Stop scheduled and continuous runs; times that pass while suspended
    /// are skipped, not replayed. Watching for missing images continues.
    #[serde(default = "default_false")]
    pub suspend: bool,

    /// Back up a newly seen image as soon as it is discovered, not only on
    /// the schedule.
    #[serde(default = "default_true")]
    pub continuous: bool,

    /// What to delete from the targets. Without retention nothing is
    /// deleted. Images any selected workload still uses are never deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,

    /// What to do when a protected image goes missing from its source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestorePolicy>,

    /// Discover and check everything and report what would be copied,
    /// restored or deleted, without writing to any registry.
    #[serde(default = "default_false")]
    pub dry_run: bool,

    /// Which signatures, SBOMs and attestations (OCI referrers and cosign's
    /// `sha256-<hex>.sig/.att/.sbom` tags) are copied with each image.
    /// Unset: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrers: Option<Referrers>,

    /// What the optional admission webhook (Helm value `admission.enabled`)
    /// does for pods and workloads this policy selects. Without the
    /// webhook installed it has no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<Admission>,
}

/// What the admission webhook does for the images a policy selects.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
pub enum AdmissionMode {
    /// Admit, with warnings (shown by `kubectl apply`) for an image no
    /// policy protects, one gone from or unreachable in its source (naming
    /// where a restore could come from), or one not yet backed up.
    #[default]
    Warn,
    /// As `Warn`, and a new pod waits (a few seconds, within the webhook's
    /// timeout) for its images' backup copies to be verified; admitted
    /// with a warning when the wait runs out. Never blocks a pod.
    Ensure,
    /// As `Ensure`, and denies a pod or workload whose image exists
    /// nowhere: not in its source registry, not in a backup, on no node.
    Enforce,
}

impl AdmissionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionMode::Warn => "Warn",
            AdmissionMode::Ensure => "Ensure",
            AdmissionMode::Enforce => "Enforce",
        }
    }
}

/// The admission webhook's settings for one policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Admission {
    /// `Warn` (when unset), `Ensure` or `Enforce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AdmissionMode>,
}

/// What a policy copies of the artifacts that refer to its images.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ReferrersCopy {
    /// Every referrer, recursively (a signature on an SBOM too).
    #[default]
    All,
    /// The images alone.
    None,
    /// Only referrers whose artifact type is in `artifactTypes`.
    ArtifactTypes,
}

/// Which referrers (signatures, SBOMs, attestations) travel with the images.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = crate::schema::validations(&[RULE_REFERRERS_TYPES])))]
pub struct Referrers {
    /// `All` (when unset), `None`, or `ArtifactTypes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<ReferrersCopy>,

    /// With `copy: ArtifactTypes`: the artifact types to copy, e.g.
    /// `application/spdx+json`, or cosign's
    /// `application/vnd.dev.cosign.simplesigning.v1+json` (signatures) and
    /// `application/vnd.dsse.envelope.v1+json` (attestations). See
    /// docs/transfer.md for how a referrer's type is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 255)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub artifact_types: Option<Vec<String>>,
}

fn default_true() -> bool {
    true
}

fn default_false() -> bool {
    false
}

/// Which workloads and images a policy protects.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = crate::schema::validations(&[RULE_DISJOINT_NAMESPACES])))]
pub struct WorkloadSelector {
    /// Namespaces to select workloads in; `*` means all. Without this and
    /// without `namespaceSelector`, only the policy's own namespace. A
    /// policy outside the operator's namespace only ever sees its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 63),
            pattern(r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")
        )
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub included_namespaces: Option<Vec<String>>,

    /// Namespaces never to select, even when included otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub excluded_namespaces: Option<Vec<String>>,

    /// Select namespaces by their labels (ANDed with `includedNamespaces`
    /// when both are set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::label_selector")]
    pub namespace_selector: Option<LabelSelector>,

    /// Select workloads by their labels; for Pods owned by a workload, the
    /// owner's labels count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::label_selector")]
    pub workload_selector: Option<LabelSelector>,

    /// Workload kinds to look at; all of them when unset. Init and
    /// ephemeral containers are always included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 7))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub workload_kinds: Option<Vec<WorkloadKind>>,

    /// Image filters applied after workload selection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImagePatterns>,
}

impl WorkloadSelector {
    /// The kinds to watch, with the default applied.
    pub fn effective_workload_kinds(&self) -> Vec<WorkloadKind> {
        match &self.workload_kinds {
            Some(kinds) if !kinds.is_empty() => kinds.clone(),
            _ => WorkloadKind::ALL.to_vec(),
        }
    }
}

/// Glob patterns over image names.
///
/// A pattern matches an image if it matches its full name
/// (`docker.io/library/nginx`), full name and tag
/// (`docker.io/library/nginx:1.27`), or the short forms (`nginx`,
/// `nginx:1.27`). `*` and `?` stay within one `/`-separated part; `**`
/// crosses them; `[abc]` and `{a,b}` work as in shells.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImagePatterns {
    /// Only images matching one of these (all images when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 255)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub include: Option<Vec<String>>,

    /// Never images matching one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 255)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub exclude: Option<Vec<String>>,
}

/// Credentials for reading from source registries.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceCredentials {
    /// Also use the `imagePullSecrets` of the selected workloads and of
    /// their service accounts. Off unless set to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_workload_pull_secrets: Option<bool>,

    /// `kubernetes.io/dockerconfigjson` Secrets in the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub secret_refs: Option<Vec<LocalObjectRef>>,
}

impl SourceCredentials {
    pub fn uses_workload_pull_secrets(&self) -> bool {
        self.use_workload_pull_secrets.unwrap_or(false)
    }
}

/// A reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub struct LocalObjectRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

impl LocalObjectRef {
    pub fn new(name: impl Into<String>) -> Self {
        LocalObjectRef { name: name.into() }
    }
}

/// A key in a ConfigMap or Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct KeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// PEM CA certificates to trust for a registry, from exactly one place.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = crate::schema::validations(&[RULE_CA_BUNDLE_ONE_SOURCE])))]
pub struct CaBundle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
}

/// A backup registry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = crate::schema::validations(&[RULE_INSECURE_OR_CA_BUNDLE])))]
pub struct BackupTarget {
    /// Names the target in status and in restores (a DNS label).
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,

    /// Registry host, optional port and optional path prefix, e.g.
    /// `backup.example.com:5000/lifeboat`.
    #[schemars(length(min = 1, max = 255))]
    #[schemars(extend("x-kubernetes-validations" = crate::schema::validations(&[RULE_TARGET_REGISTRY_SHAPE])))]
    pub registry: String,

    /// Where a source repository goes under `registry`; see docs/api.md.
    /// Default `{registry}/{repository}`: `docker.io/library/nginx` becomes
    /// `<registry>/docker.io/library/nginx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    #[schemars(extend("x-kubernetes-validations" = crate::schema::validations(&[RULE_TEMPLATE_VARIABLES, RULE_TEMPLATE_DISTINCT])))]
    pub repository_template: Option<String>,

    /// A `kubernetes.io/dockerconfigjson` Secret (its `.dockerconfigjson`
    /// key) in the policy's namespace with push access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectRef>,

    /// CA certificates to trust for this registry, in addition to the
    /// system ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundle>,

    /// Speak plain HTTP to this registry (no TLS at all). Honoured only for
    /// registries the cluster admin lists in the operator's settings
    /// (`LIFEBOAT_PLAIN_HTTP_REGISTRIES`) when the policy is outside the
    /// operator's namespace. For test registries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,

    /// Platforms to copy from multi-platform images (`linux/amd64`,
    /// `linux/arm64/v8`); all of them when unset, which keeps the index
    /// digest identical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 16),
        inner(
            length(min = 1, max = 64),
            pattern(r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$")
        )
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub platforms: Option<Vec<String>>,
}

impl BackupTarget {
    pub fn is_insecure(&self) -> bool {
        self.insecure.unwrap_or(false)
    }

    /// The template with the default applied.
    pub fn effective_repository_template(&self) -> &str {
        self.repository_template
            .as_deref()
            .unwrap_or(crate::template::DEFAULT_REPOSITORY_TEMPLATE)
    }
}

/// How long backups are kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = crate::schema::validations(&[RULE_RETENTION_NOT_EMPTY])))]
pub struct Retention {
    /// Keep the newest this many of Lifeboat's digests per target
    /// repository (newest by the image's creation time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000))]
    pub keep_last: Option<i32>,

    /// Delete digests of images created longer ago than this many days
    /// (the `created` time in the image config; images without one are
    /// never deleted for age).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 36_500))]
    pub max_age_days: Option<i32>,
}

/// What happens when protected images go missing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestorePolicy {
    /// Create an ImageRestore (owned by the policy) when images go missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic: Option<bool>,

    /// Sources to try, in order; `[BackupRegistry, NodeCache]` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub source_order: Option<Vec<RestoreSourceKind>>,

    /// Constraints for node exports of automatic restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_cache: Option<NodeCacheSource>,

    /// Credentials (in the policy's namespace) to push restored images
    /// back to their original registries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectRef>,

    /// When an automatic restore writes an image into a node (its source
    /// unreachable), delete the owned pods there stuck pulling it so they
    /// are recreated at once (`destination.nodes.deleteStuckPods` of the
    /// restores it creates). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_stuck_pods: Option<bool>,
}

impl RestorePolicy {
    pub fn is_automatic(&self) -> bool {
        self.automatic.unwrap_or(false)
    }

    /// The order with the default applied.
    pub fn effective_source_order(&self) -> Vec<RestoreSourceKind> {
        match &self.source_order {
            Some(order) if !order.is_empty() => order.clone(),
            _ => vec![
                RestoreSourceKind::BackupRegistry,
                RestoreSourceKind::NodeCache,
            ],
        }
    }
}

impl ImageBackupPolicySpec {
    /// Whether images should be restored automatically.
    pub fn restores_automatically(&self) -> bool {
        self.restore
            .as_ref()
            .is_some_and(RestorePolicy::is_automatic)
    }

    /// The admission webhook's mode, `Warn` when unset.
    pub fn admission_mode(&self) -> AdmissionMode {
        self.admission
            .as_ref()
            .and_then(|a| a.mode)
            .unwrap_or_default()
    }

    /// The selector with defaults (own namespace, all kinds) applied.
    pub fn effective_selector(&self) -> WorkloadSelector {
        self.selector.clone().unwrap_or_default()
    }
}

// --- status ----------------------------------------------------------------------

/// Most entries `status.missingImages` holds; `missingImagesTotal` counts all.
pub const MAX_MISSING_IMAGES: usize = 50;
/// Most runs `status.history` holds (newest first).
pub const MAX_HISTORY: usize = 10;
/// Most entries each dry-run plan list holds.
pub const MAX_PLAN_ENTRIES: usize = 50;
/// Most restore locations listed per missing image.
pub const MAX_RESTORE_LOCATIONS: usize = 16;

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// `default: {}` makes the API server fill in an empty status, and with it
// `observedGeneration: -1`, on objects nobody has reconciled yet, so kstatus
// and `kubectl wait` never mistake a fresh object for a current one.
#[schemars(extend("default" = {}))]
pub struct ImageBackupPolicyStatus {
    /// The `.metadata.generation` this status is about; -1 until the
    /// operator has looked at the object.
    #[serde(default = "unobserved")]
    pub observed_generation: i64,

    /// `Ready`, `Reconciling`, `Stalled`, `LastBackupSucceeded`,
    /// `ImagesAvailable`, `ScopeRestricted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,

    /// The most recent scheduled time that was handled: a run was started
    /// for it, or it was skipped (suspended, or past the starting deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,

    /// When the most recent fully successful run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,

    /// When the next scheduled run is due (absent while suspended or
    /// without a schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,

    /// The value of the `lifeboat.dev/requestedAt` annotation that the most
    /// recent on-demand run answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub last_handled_reconcile_at: Option<String>,

    /// Counts over the policy's current inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<PolicySummary>,

    /// Protected images gone from their source registry (at most 50; see
    /// `missingImagesTotal`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub missing_images: Vec<MissingImage>,

    /// How many images are missing in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_images_total: Option<i32>,

    /// Protected images whose source registry cannot be reached or fails
    /// (an outage, not a loss: the registry did not say the image is gone).
    /// At most 50; see `unreachableImagesTotal`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub unreachable_images: Vec<UnreachableImage>,

    /// How many images have an unreachable source in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_images_total: Option<i32>,

    /// The automatic ImageRestore created for missing images, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic_restore: Option<RestoreLink>,

    /// The most recent runs, newest first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub history: Vec<RunRecord>,

    /// For `dryRun` policies: what a real run would do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<DryRunPlan>,
}

fn unobserved() -> i64 {
    -1
}

impl Default for ImageBackupPolicyStatus {
    fn default() -> Self {
        ImageBackupPolicyStatus {
            observed_generation: unobserved(),
            conditions: Vec::new(),
            last_schedule_time: None,
            last_successful_time: None,
            next_schedule_time: None,
            last_handled_reconcile_at: None,
            summary: None,
            missing_images: Vec::new(),
            missing_images_total: None,
            unreachable_images: Vec::new(),
            unreachable_images_total: None,
            automatic_restore: None,
            history: Vec::new(),
            plan: None,
        }
    }
}

/// Image counts. An image is one digest, whichever tags point at it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySummary {
    /// Workloads selected.
    pub workloads: i32,
    /// Distinct images the selected workloads use.
    pub selected: i32,
    /// Images verified present in every target.
    pub protected: i32,
    /// Images not yet copied everywhere.
    pub pending: i32,
    /// Images whose last copy failed.
    pub failed: i32,
    /// Images gone from their source registry.
    pub missing: i32,
    /// Images whose source registry cannot be reached or fails (absent
    /// in statuses written before operators reported outages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<i32>,
    /// Bytes copied to targets since the policy was created.
    pub bytes_copied: i64,
    /// Referrers (signatures, SBOMs, attestations) held in the targets with
    /// the protected images, as of each image's last verified copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrers: Option<i32>,
}

/// A protected image that its source registry no longer serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MissingImage {
    /// The image as workloads reference it.
    #[schemars(length(min = 1, max = 600))]
    pub reference: String,

    /// The digest that went missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 160))]
    pub digest: Option<String>,

    /// When it was first found missing.
    pub since: Time,

    /// How many selected workloads use it.
    pub workloads: i32,

    /// Targets that hold a backup of this digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4), inner(length(max = 63)))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub backup_targets: Vec<String>,

    /// Nodes believed to hold it in their containerd content store (at
    /// most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub nodes: Vec<String>,

    /// Signatures, SBOMs and attestations the backup holds with it (the
    /// most any of `backupTargets` holds): what a restore from the backup
    /// brings back with the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub referrers: Option<i32>,
}

/// A protected image whose source registry does not answer, or answers
/// with an error, when asked whether it still holds the image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnreachableImage {
    /// The image as workloads reference it.
    #[schemars(length(min = 1, max = 600))]
    pub reference: String,

    /// The digest workloads run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 160))]
    pub digest: Option<String>,

    /// When its source was first found unreachable in this outage.
    pub since: Time,

    /// Why, as a reason (`RegistryUnavailable`, `Tls`, `RateLimited`, ...).
    #[schemars(length(min = 1, max = 64))]
    pub reason: String,

    /// What the registry (or the network) said, shortened.
    #[schemars(length(max = 512))]
    pub message: String,

    /// How many selected workloads use it.
    pub workloads: i32,

    /// Targets that hold a backup of this digest: where pods can get it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4), inner(length(max = 63)))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub backup_targets: Vec<String>,

    /// Nodes believed to hold it in their containerd content store (at
    /// most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub nodes: Vec<String>,

    /// Signatures, SBOMs and attestations the backup holds with it (the
    /// most any of `backupTargets` holds): what pods verifying signatures
    /// find there with the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub referrers: Option<i32>,
}

/// A pointer from a policy to the ImageRestore it created.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreLink {
    /// The ImageRestore's name, in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its `progress`, copied when the policy is reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::restore::RestoreProgress>,
    /// Its `Ready` condition status (`Unknown` while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub ready: Option<String>,
}

/// What started a run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RunTrigger {
    /// The cron schedule.
    Schedule,
    /// The `lifeboat.dev/requestedAt` annotation.
    OnDemand,
    /// New images seen with `continuous: true`.
    Continuous,
}

/// How a run ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RunResult {
    Running,
    Succeeded,
    PartiallyFailed,
    Failed,
}

/// One backup run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub trigger: RunTrigger,
    pub result: RunResult,
    /// When the run started.
    pub start_time: Time,
    /// When the run finished (absent while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The schedule time this run was for (scheduled runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<Time>,
    /// Images copied to at least one target.
    pub copied: i32,
    /// Images already present everywhere (verified, not copied again).
    pub up_to_date: i32,
    /// Images that failed.
    pub failed: i32,
    /// Digests deleted by retention.
    pub deleted: i32,
    pub bytes_copied: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// What a `dryRun` policy would do (each list bounded; totals count all).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRunPlan {
    /// `source -> target` copies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(max = 1300)))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub would_copy: Vec<String>,
    pub would_copy_total: i32,
    /// Target references retention would delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(max = 600)))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub would_delete: Vec<String>,
    pub would_delete_total: i32,
    /// Missing images an automatic restore would bring back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(max = 600)))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub would_restore: Vec<String>,
    pub would_restore_total: i32,
}

impl ImageBackupPolicy {
    /// The status, or a fresh one (observedGeneration -1).
    pub fn status_or_default(&self) -> ImageBackupPolicyStatus {
        self.status.clone().unwrap_or_default()
    }
}

/// Annotation whose new value asks for an immediate run; the value is echoed
/// in `status.lastHandledReconcileAt` once handled.
pub const REQUESTED_AT_ANNOTATION: &str = "lifeboat.dev/requestedAt";
