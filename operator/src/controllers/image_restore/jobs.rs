//! The Kubernetes objects a restore runs on nodes, built from data (pure),
//! and the results they report, parsed from termination messages.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EnvVar, HostPathVolumeSource, KeyToPath, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSecurityContext, PodSpec,
    PodTemplateSpec, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use lifeboat_node_protocol::report::InventoryReport;
use lifeboat_node_protocol::{
    ExportArguments, ExportImage, Exportable, ImageSource, InventoryArguments, exit,
};

pub(crate) const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub(crate) const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub(crate) const LABEL_RESTORE_UID: &str = "lifeboat.dev/restore-uid";
pub(crate) const LABEL_RESTORE_NAMESPACE: &str = "lifeboat.dev/restore-namespace";
pub(crate) const LABEL_NODE: &str = "lifeboat.dev/node";
pub(crate) const ANNOTATION_RESTORE: &str = "lifeboat.dev/restore";
pub(crate) const MANAGED_BY: &str = "lifeboat-operator";

/// Where the containerd socket is mounted inside export pods.
pub(crate) const SOCKET_MOUNT: &str = "/run/containerd/containerd.sock";
pub(crate) use lifeboat_node_protocol::CONTENT_STORE_MOUNT;
use lifeboat_node_protocol::ENV_CONTENT_STORE as CONTENT_STORE_ENV;
/// Where the registry credentials are mounted.
pub(crate) const DOCKER_CONFIG_DIR: &str = "/var/run/lifeboat/registry";
pub(crate) const DOCKER_CONFIG_FILE: &str = "config.json";

/// How export and inventory Jobs are run (from the operator's
/// configuration), the same for every restore.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct JobSettings {
    pub namespace: String,
    pub image: String,
    pub pull_policy: String,
    /// The socket's path on the node; `{node}` stands for the node's name.
    pub socket_template: String,
    /// containerd's content store directory on the node (`{node}` as
    /// above), mounted read-only when set: node-exporter reads blobs from
    /// its files instead of through containerd (docs/node-exporter.md).
    pub content_store_template: Option<String>,
    pub tolerations: Vec<Toleration>,
    pub host_network: bool,
    pub image_pull_secrets: Vec<String>,
    pub plain_http_registries: Vec<String>,
}

impl JobSettings {
    pub fn socket_path(&self, node: &str) -> String {
        on_node(&self.socket_template, node)
    }

    /// The content store's path on `node`, when one is mounted.
    pub fn content_store_path(&self, node: &str) -> Option<String> {
        self.content_store_template
            .as_deref()
            .map(|template| on_node(template, node))
    }
}

/// A path template with `{node}` standing for the node's name.
fn on_node(template: &str, node: &str) -> String {
    template.replace("{node}", node)
}

/// One export Job: which restore, which node, what to push where.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ExportJob {
    pub name: String,
    pub node: String,
    pub restore_namespace: String,
    pub restore_name: String,
    pub restore_uid: String,
    /// What to push where (node-exporter's `--image SRC[=DEST]`).
    pub images: Vec<ExportImage>,
    /// Secret (in the operator's namespace) with `.dockerconfigjson`.
    pub credentials_secret: Option<String>,
    /// Extra tolerations from the restore's spec (and the cordon taint when
    /// the node is a last resort).
    pub tolerations: Vec<Toleration>,
    /// Registries to speak plain HTTP to, besides the configured ones.
    pub plain_http: Vec<String>,
    pub active_deadline_seconds: i64,
    /// Set when the restore lives in the operator's namespace.
    pub owner: Option<OwnerReference>,
}

/// Retries of a pod that failed for a reason worth retrying.
pub(crate) const EXPORT_BACKOFF_LIMIT: i32 = 3;
pub(crate) const TTL_SECONDS_AFTER_FINISHED: i32 = 3600;
pub(crate) const INVENTORY_DEADLINE_SECONDS: i64 = 120;
pub(crate) const INVENTORY_TTL_SECONDS: i32 = 300;

pub(super) fn labels(component: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = [
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_COMPONENT.to_owned(), component.to_owned()),
    ]
    .into();
    for (k, v) in extra {
        labels.insert((*k).to_owned(), label_value(v));
    }
    labels
}

/// A label value: at most 63 characters of `[a-zA-Z0-9._-]`, alphanumeric
/// at both ends.
fn label_value(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// node-exporter's exit codes as a pod failure policy: bad arguments, an
/// image not on the node, and no containerd fail the Job at once (a retry on
/// the same node cannot help); a pod disrupted (evicted, preempted, node
/// drained) is retried without counting; other failures (a push that failed
/// after the engine's retries, a containerd error) count against
/// `backoffLimit`.
pub(crate) fn pod_failure_policy() -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "FailJob".to_owned(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some("node-exporter".to_owned()),
                    operator: "In".to_owned(),
                    values: exit::FINAL_ON_THIS_NODE.to_vec(),
                }),
                on_pod_conditions: None,
            },
            PodFailurePolicyRule {
                action: "Ignore".to_owned(),
                on_exit_codes: None,
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".to_owned(),
                    status: "True".to_owned(),
                }]),
            },
        ],
    }
}

fn pinned_to(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".to_owned(),
                        operator: "In".to_owned(),
                        values: Some(vec![node.to_owned()]),
                    }]),
                    match_expressions: None,
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    }
}

fn hardened() -> SecurityContext {
    SecurityContext {
        // The containerd socket is root's.
        run_as_user: Some(0),
        run_as_non_root: Some(false),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// Requests and limits of node-exporter, sized from docs/benchmarks.md
/// (node-exporter): 33 MiB peak RSS with the default 3 streams whatever the
/// image size (about 7 MiB per stream), one core at most busy hashing and
/// compressing. The memory limit leaves room for rebuilt layers' buffers.
fn exporter_resources() -> ResourceRequirements {
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    ResourceRequirements {
        requests: Some(quantities("100m", "64Mi")),
        limits: Some(quantities("1", "256Mi")),
        ..ResourceRequirements::default()
    }
}

/// The pod both kinds of Job run: node-exporter pinned to the node, the
/// containerd socket as a hostPath of type Socket, no token, nothing else.
/// A Secret (in the operator's namespace) mounted read-only into a
/// node-exporter pod: the keys `items` names (key → file), or all of them.
pub(super) struct SecretMount<'a> {
    pub volume: &'static str,
    pub secret: &'a str,
    pub dir: &'static str,
    pub items: Vec<(&'static str, &'static str)>,
}

/// The push credentials an export Job mounts.
fn docker_config_mount(secret: &str) -> SecretMount<'_> {
    SecretMount {
        volume: "registry-credentials",
        secret,
        dir: DOCKER_CONFIG_DIR,
        items: vec![(".dockerconfigjson", DOCKER_CONFIG_FILE)],
    }
}

/// What a node-exporter pod mounts: the node's containerd socket, its
/// content store read-only (when configured; named to node-exporter by
/// `env`) and `secrets`.
fn node_mounts(
    settings: &JobSettings,
    node: &str,
    secrets: &[SecretMount<'_>],
) -> (Vec<VolumeMount>, Vec<Volume>, Vec<EnvVar>) {
    let mut mounts = vec![VolumeMount {
        name: "containerd".to_owned(),
        mount_path: SOCKET_MOUNT.to_owned(),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "containerd".to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: settings.socket_path(node),
            type_: Some("Socket".to_owned()),
        }),
        ..Volume::default()
    }];
    let mut env = Vec::new();
    if let Some(path) = settings.content_store_path(node) {
        mounts.push(VolumeMount {
            name: "containerd-content".to_owned(),
            mount_path: CONTENT_STORE_MOUNT.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "containerd-content".to_owned(),
            host_path: Some(HostPathVolumeSource {
                path,
                type_: Some("Directory".to_owned()),
            }),
            ..Volume::default()
        });
        env.push(EnvVar {
            name: CONTENT_STORE_ENV.to_owned(),
            value: Some(CONTENT_STORE_MOUNT.to_owned()),
            ..EnvVar::default()
        });
    }
    for mount in secrets {
        mounts.push(VolumeMount {
            name: mount.volume.to_owned(),
            mount_path: mount.dir.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        let items: Vec<KeyToPath> = mount
            .items
            .iter()
            .map(|(key, path)| KeyToPath {
                key: (*key).to_owned(),
                path: (*path).to_owned(),
                mode: Some(0o400),
            })
            .collect();
        volumes.push(Volume {
            name: mount.volume.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(mount.secret.to_owned()),
                items: (!items.is_empty()).then_some(items),
                default_mode: Some(0o400),
                optional: Some(false),
            }),
            ..Volume::default()
        });
    }
    (mounts, volumes, env)
}

pub(super) fn pod(
    settings: &JobSettings,
    node: &str,
    args: Vec<String>,
    secrets: &[SecretMount<'_>],
    extra_tolerations: &[Toleration],
) -> PodSpec {
    let (mounts, volumes, env) = node_mounts(settings, node, secrets);
    let mut tolerations = settings.tolerations.clone();
    for t in extra_tolerations {
        if !tolerations.contains(t) {
            tolerations.push(t.clone());
        }
    }
    PodSpec {
        restart_policy: Some("Never".to_owned()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        // The runtime's default syscall filter: what Pod Security
        // `restricted` asks for, and all node-exporter needs.
        security_context: Some(PodSecurityContext {
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        host_network: settings.host_network.then_some(true),
        affinity: Some(pinned_to(node)),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        termination_grace_period_seconds: Some(10),
        image_pull_secrets: (!settings.image_pull_secrets.is_empty()).then(|| {
            settings
                .image_pull_secrets
                .iter()
                .map(|name| k8s_openapi::api::core::v1::LocalObjectReference { name: name.clone() })
                .collect()
        }),
        containers: vec![Container {
            name: "node-exporter".to_owned(),
            image: Some(settings.image.clone()),
            image_pull_policy: Some(settings.pull_policy.clone()),
            args: Some(args),
            env: (!env.is_empty()).then_some(env),
            security_context: Some(hardened()),
            resources: Some(exporter_resources()),
            volume_mounts: Some(mounts),
            termination_message_policy: Some("File".to_owned()),
            ..Container::default()
        }],
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

pub(super) fn plain_http_registries(settings: &JobSettings, extra: &[String]) -> Vec<String> {
    let mut registries: Vec<String> = settings
        .plain_http_registries
        .iter()
        .chain(extra)
        .cloned()
        .collect();
    registries.sort();
    registries.dedup();
    registries
}

/// node-exporter's command line for an export, built with the protocol
/// crate node-exporter parses it with.
pub(crate) fn export_arguments(settings: &JobSettings, job: &ExportJob) -> ExportArguments {
    ExportArguments {
        images: job.images.clone(),
        plain_http: plain_http_registries(settings, &job.plain_http),
        socket: Some(SOCKET_MOUNT.to_owned()),
        docker_config: job
            .credentials_secret
            .as_ref()
            .map(|_| format!("{DOCKER_CONFIG_DIR}/{DOCKER_CONFIG_FILE}")),
    }
}

/// The export Job for one node of one restore.
pub(crate) fn export_job(settings: &JobSettings, job: &ExportJob) -> Job {
    let meta = NodeJobMeta {
        name: job.name.clone(),
        node: job.node.clone(),
        restore_namespace: job.restore_namespace.clone(),
        restore_name: job.restore_name.clone(),
        restore_uid: job.restore_uid.clone(),
        tolerations: job.tolerations.clone(),
        active_deadline_seconds: job.active_deadline_seconds,
        owner: job.owner.clone(),
    };
    node_job(
        settings,
        &meta,
        "export",
        export_arguments(settings, job).to_args(),
        job.credentials_secret.as_deref().map(docker_config_mount),
        EXPORT_BACKOFF_LIMIT,
    )
}

/// What every Job a restore runs on one node carries (export, import,
/// serve).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NodeJobMeta {
    pub name: String,
    pub node: String,
    pub restore_namespace: String,
    pub restore_name: String,
    pub restore_uid: String,
    pub tolerations: Vec<Toleration>,
    pub active_deadline_seconds: i64,
    /// Set when the restore lives in the operator's namespace.
    pub owner: Option<OwnerReference>,
}

/// A Job of one restore on one node: labelled and annotated with its
/// restore, owned by it when it lives in the operator's namespace, pinned
/// to the node, bounded in retries, time and lifetime.
pub(super) fn node_job(
    settings: &JobSettings,
    meta: &NodeJobMeta,
    component: &str,
    args: Vec<String>,
    secret: Option<SecretMount<'_>>,
    backoff_limit: i32,
) -> Job {
    let labels = labels(
        component,
        &[
            (LABEL_RESTORE_UID, &meta.restore_uid),
            (LABEL_RESTORE_NAMESPACE, &meta.restore_namespace),
            (LABEL_NODE, &meta.node),
        ],
    );
    let annotations: BTreeMap<String, String> = [(
        ANNOTATION_RESTORE.to_owned(),
        format!("{}/{}", meta.restore_namespace, meta.restore_name),
    )]
    .into();
    let secrets: Vec<SecretMount<'_>> = secret.into_iter().collect();
    Job {
        metadata: ObjectMeta {
            name: Some(meta.name.clone()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(annotations.clone()),
            owner_references: meta.owner.clone().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(backoff_limit),
            active_deadline_seconds: Some(meta.active_deadline_seconds),
            ttl_seconds_after_finished: Some(TTL_SECONDS_AFTER_FINISHED),
            pod_failure_policy: Some(pod_failure_policy()),
            template: PodTemplateSpec {
                // The pod names its restore too: its exit wakes the restore
                // before the Job is marked Complete.
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod(settings, &meta.node, args, &secrets, &meta.tolerations)),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// A short read-only Job asking one node's containerd which of `images` it
/// holds (`node-exporter inventory`).
pub(crate) fn inventory_job(
    settings: &JobSettings,
    name: &str,
    node: &str,
    images: &[ImageSource],
    extra_tolerations: &[Toleration],
) -> Job {
    let args = InventoryArguments {
        images: images.to_vec(),
        socket: Some(SOCKET_MOUNT.to_owned()),
    }
    .to_args();
    let labels = labels("inventory", &[(LABEL_NODE, node)]);
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(INVENTORY_DEADLINE_SECONDS),
            ttl_seconds_after_finished: Some(INVENTORY_TTL_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod(settings, node, args, &[], extra_tolerations)),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// The Secret export Jobs mount: the restore's push credentials, copied
/// into the operator's namespace (pods can only mount Secrets of their own
/// namespace).
pub(crate) fn credentials_secret(
    namespace: &str,
    name: &str,
    restore_uid: &str,
    restore_namespace: &str,
    docker_config_json: Vec<u8>,
    owner: Option<OwnerReference>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels(
                "restore-credentials",
                &[
                    (LABEL_RESTORE_UID, restore_uid),
                    (LABEL_RESTORE_NAMESPACE, restore_namespace),
                ],
            )),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".to_owned()),
        data: Some(
            [(
                ".dockerconfigjson".to_owned(),
                ByteString(docker_config_json),
            )]
            .into(),
        ),
        ..Secret::default()
    }
}

// --- results ---------------------------------------------------------------------------

/// What an inventory says about each image asked: by the name it was asked
/// as. An image neither listed nor missing (cut from the message) is left
/// out, so it is asked again.
pub(crate) fn inventory_holdings(
    report: &InventoryReport,
    asked: &[String],
) -> BTreeMap<String, Exportable> {
    let mut holdings = BTreeMap::new();
    for image in asked {
        let digest = image.rsplit_once('@').map(|(_, d)| d);
        let entry = report.images.iter().find(|e| {
            e.name.as_deref() == Some(image.as_str()) || Some(e.digest.as_str()) == digest
        });
        if let Some(entry) = entry {
            holdings.insert(image.clone(), entry.exportable);
        } else if report.missing.iter().any(|m| m == image) {
            holdings.insert(image.clone(), Exportable::None);
        }
    }
    holdings
}

#[cfg(test)]
mod tests {
    use lifeboat_node_protocol::{ExportReport, ReportError};

    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn settings() -> JobSettings {
        JobSettings {
            namespace: "lifeboat-system".into(),
            image: "lifeboat.local/node-exporter:dev".into(),
            pull_policy: "Never".into(),
            socket_template: "/var/lib/lifeboat-cluster/nodes/{node}/containerd.sock".into(),
            content_store_template: Some("/nodes/{node}/content".into()),
            tolerations: vec![Toleration {
                operator: Some("Exists".into()),
                ..Toleration::default()
            }],
            host_network: true,
            image_pull_secrets: vec![],
            plain_http_registries: vec!["127.0.0.1:5001".into()],
        }
    }

    fn export() -> ExportJob {
        ExportJob {
            name: "lifeboat-restore-x-0123456789ab".into(),
            node: "node-1".into(),
            restore_namespace: "shop".into(),
            restore_name: "x".into(),
            restore_uid: "uid-1".into(),
            images: vec![ExportImage::parse(&format!("127.0.0.1:5001/a@{}", digest('1'))).unwrap()],
            credentials_secret: Some("creds".into()),
            tolerations: vec![],
            plain_http: vec![],
            active_deadline_seconds: 600,
            owner: None,
        }
    }

    #[test]
    fn export_jobs_are_pinned_hardened_and_bounded() {
        let job = export_job(&settings(), &export());
        let value = serde_json::to_value(&job).unwrap();
        let spec = &value["spec"];
        assert_eq!(spec["backoffLimit"], EXPORT_BACKOFF_LIMIT);
        assert_eq!(spec["activeDeadlineSeconds"], 600);
        assert_eq!(spec["ttlSecondsAfterFinished"], TTL_SECONDS_AFTER_FINISHED);
        let rules = &spec["podFailurePolicy"]["rules"];
        assert_eq!(rules[0]["action"], "FailJob");
        assert_eq!(
            rules[0]["onExitCodes"]["values"],
            serde_json::json!([2, 3, 5])
        );
        assert_eq!(rules[1]["action"], "Ignore");
        // Its pod names the restore too (its exit wakes the restore).
        assert_eq!(
            spec["template"]["metadata"]["annotations"][ANNOTATION_RESTORE],
            value["metadata"]["annotations"][ANNOTATION_RESTORE]
        );
        assert!(
            value["metadata"]["annotations"][ANNOTATION_RESTORE]
                .as_str()
                .is_some_and(|r| r.contains('/'))
        );
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["hostNetwork"], true);
        assert!(pod.get("nodeName").is_none());
        let term = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchFields"][0];
        assert_eq!(term["key"], "metadata.name");
        assert_eq!(term["values"], serde_json::json!(["node-1"]));
        let volume = &pod["volumes"][0]["hostPath"];
        assert_eq!(
            volume["path"],
            "/var/lib/lifeboat-cluster/nodes/node-1/containerd.sock"
        );
        assert_eq!(volume["type"], "Socket");
        // containerd's content store of that node, read-only, named to
        // node-exporter by its environment.
        let content = &pod["volumes"][1]["hostPath"];
        assert_eq!(content["path"], "/nodes/node-1/content");
        assert_eq!(content["type"], "Directory");
        assert_eq!(pod["volumes"][2]["secret"]["secretName"], "creds");
        let container = &pod["containers"][0];
        let content_mount = &container["volumeMounts"][1];
        assert_eq!(content_mount["name"], pod["volumes"][1]["name"]);
        assert_eq!(content_mount["mountPath"], CONTENT_STORE_MOUNT);
        assert_eq!(content_mount["readOnly"], true);
        assert_eq!(
            container["env"],
            serde_json::json!([{"name": "NODE_EXPORTER_CONTENT_STORE", "value": CONTENT_STORE_MOUNT}])
        );
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(security["privileged"], false);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let resources = &container["resources"];
        assert_eq!(resources["requests"]["memory"], "64Mi");
        assert_eq!(resources["limits"]["memory"], "256Mi");
        assert_eq!(resources["limits"]["cpu"], "1");
        let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
        assert_eq!(
            args,
            [
                "export",
                "--image",
                &format!("127.0.0.1:5001/a@{}", digest('1')),
                "--plain-http",
                "127.0.0.1:5001",
                "--socket",
                SOCKET_MOUNT,
                "--docker-config",
                "/var/run/lifeboat/registry/config.json"
            ]
        );
        // Only Lifeboat's own labels; an owner only when given.
        let labels = job.metadata.labels.unwrap();
        assert!(
            labels
                .keys()
                .all(|k| k.starts_with("app.kubernetes.io/") || k.starts_with("lifeboat.dev/"))
        );
        assert_eq!(labels[LABEL_RESTORE_UID], "uid-1");
        assert!(job.metadata.owner_references.is_none());
    }

    #[test]
    fn inventory_jobs_do_not_retry_and_mount_no_credentials() {
        let asked = ImageSource::parse(&format!("r.io/a@{}", digest('1'))).unwrap();
        let job = inventory_job(&settings(), "inv", "node-2", &[asked], &[]);
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        let pod = spec.template.spec.unwrap();
        // Hardened like the export Job: same pod builder.
        assert_eq!(pod.automount_service_account_token, Some(false));
        let seccomp = pod
            .security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref());
        assert_eq!(seccomp.map(|p| p.type_.as_str()), Some("RuntimeDefault"));
        assert!(
            pod.containers[0]
                .resources
                .as_ref()
                .is_some_and(|r| r.limits.is_some())
        );
        // The socket and the read-only content store: no credentials.
        let volumes = pod.volumes.unwrap();
        assert_eq!(volumes.len(), 2);
        assert!(volumes.iter().all(|v| v.secret.is_none()));
        assert_eq!(
            pod.containers[0].args.clone().unwrap()[..3],
            [
                "inventory".to_owned(),
                "--image".to_owned(),
                format!("r.io/a@{}", digest('1'))
            ]
        );
    }

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("-a/b:c-"), "a-b-c");
        assert!(label_value(&"x".repeat(100)).len() <= 63);
    }

    #[test]
    fn export_reports_are_read_with_the_protocol_and_versions_checked() {
        let message = format!(
            r#"{{"v":1,"results":[{{"image":"r.io/a@{a}","status":"Preserved","target":"r.io/a:t","digest":"{a}","bytes":10}},
            {{"image":"r.io/b@{b}","status":"Failed","target":"r.io/b","reason":"ImageNotOnNode","message":"not here"}}]}}"#,
            a = digest('1'),
            b = digest('2')
        );
        let report = ExportReport::read(&message).unwrap();
        let asked = ImageSource::parse(&format!("r.io/a@{}", digest('1'))).unwrap();
        let result = report.result_for(&asked).unwrap();
        assert!(result.status.is_pushed());
        assert_eq!(
            result.digest.as_ref().map(|d| d.to_string()),
            Some(digest('1'))
        );
        assert_eq!(report.results[1].reason.as_deref(), Some("ImageNotOnNode"));
        let newer = message.replacen(r#""v":1"#, r#""v":2"#, 1);
        assert!(matches!(
            ExportReport::read(&newer),
            Err(ReportError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn inventories_say_what_each_asked_image_is() {
        let [a, b, c, d] = ['1', '2', '3', '4'].map(|x| format!("r.io/{x}@{}", digest(x)));
        let report = InventoryReport::read(&format!(
            r#"{{"v":1,"images":[{{"digest":"{d1}","exportable":"exact","name":"{a}"}},
                {{"digest":"{d9}","exportable":"platform","name":"{c}"}}],"missing":["{b}"]}}"#,
            d1 = digest('1'),
            d9 = digest('9'),
        ))
        .unwrap();
        let asked = vec![a.clone(), b.clone(), c.clone(), d.clone()];
        let holdings = inventory_holdings(&report, &asked);
        assert_eq!(holdings[&a], Exportable::Exact);
        assert_eq!(holdings[&b], Exportable::None);
        assert_eq!(holdings[&c], Exportable::Platform);
        assert!(!holdings.contains_key(&d));
    }
}
