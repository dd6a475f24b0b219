//! Which images a policy protects: pods (with the digests they really run),
//! the pod templates of workloads, namespaces and selectors in, one
//! inventory out. Pure: the reconciler hands in snapshots of its caches.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{Selector, SelectorExt};
use lifeboat_api::backup_policy::{WorkloadKind, WorkloadSelector};
use lifeboat_api::patterns::ImageMatcher;
use lifeboat_api::{Digest, ImageReference};

/// The cluster as the caches see it right now.
#[derive(Default, Clone)]
pub struct ClusterSnapshot {
    pub namespaces: Vec<Arc<Namespace>>,
    pub pods: Vec<Arc<Pod>>,
    pub deployments: Vec<Arc<Deployment>>,
    pub stateful_sets: Vec<Arc<StatefulSet>>,
    pub daemon_sets: Vec<Arc<DaemonSet>>,
    pub replica_sets: Vec<Arc<ReplicaSet>>,
    pub jobs: Vec<Arc<Job>>,
    pub cron_jobs: Vec<Arc<CronJob>>,
}

/// A workload an image is used by: the top-level owner of a pod, or the
/// pod itself when nothing owns it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadId {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

/// A pull secret of a workload: (namespace, name).
pub type SecretId = (String, String);

/// One protected image: where it is used and where it runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageUse {
    /// The image as the workload names it, with the digest it runs when
    /// known (from the pod status, or pinned in the spec).
    pub reference: ImageReference,
    pub workloads: BTreeSet<WorkloadId>,
    /// Nodes whose pods run exactly this digest.
    pub nodes: BTreeSet<String>,
    /// Pods that fail to pull it (ErrImagePull / ImagePullBackOff): (namespace, name).
    pub pull_failures: BTreeSet<(String, String)>,
    pub pull_secrets: BTreeSet<SecretId>,
}

impl ImageUse {
    /// The key an image is known by in the inventory and in memory:
    /// `name@digest`, or `name:tag` while no digest is known.
    pub fn key(&self) -> String {
        image_key(&self.reference)
    }
}

pub fn image_key(reference: &ImageReference) -> String {
    match (&reference.digest, &reference.tag) {
        (Some(digest), _) => format!("{}@{}", reference.name(), digest.as_str()),
        (None, Some(tag)) => format!("{}:{tag}", reference.name()),
        (None, None) => format!("{}:latest", reference.name()),
    }
}

/// Everything a policy selects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inventory {
    pub images: BTreeMap<String, ImageUse>,
    pub workloads: BTreeSet<WorkloadId>,
    /// Image strings that did not parse, with the workload using them.
    pub unparsable: Vec<(String, WorkloadId)>,
}

/// Where a policy may look.
#[derive(Clone, Debug)]
pub struct Scope {
    /// `Some(ns)`: a tenant policy, limited to its own namespace.
    pub only_namespace: Option<String>,
    pub selector: WorkloadSelector,
}

impl Scope {
    /// The scope of a policy in `policy_namespace` when the operator runs
    /// in `operator_namespace`.
    pub fn for_policy(
        policy_namespace: &str,
        operator_namespace: &str,
        selector: WorkloadSelector,
    ) -> Scope {
        Scope {
            only_namespace: (policy_namespace != operator_namespace)
                .then(|| policy_namespace.to_owned()),
            selector,
        }
    }

    /// Whether a tenant's selector asks for more than its own namespace
    /// (reported in the ScopeRestricted condition).
    pub fn selector_reaches_beyond(&self) -> bool {
        let Some(own) = &self.only_namespace else {
            return false;
        };
        self.selector
            .included_namespaces
            .as_ref()
            .is_some_and(|list| list.iter().any(|n| n == "*" || n != own))
            || self.selector.namespace_selector.is_some()
    }
}

/// The label-selector parts of a scope, compiled once.
struct Filters<'a> {
    scope: &'a Scope,
    namespace_selector: Option<Selector>,
    workload_selector: Option<Selector>,
    kinds: BTreeSet<WorkloadKind>,
    images: &'a ImageMatcher,
    namespace_labels: HashMap<String, BTreeMap<String, String>>,
}

/// A label selector that does not compile (an operator the apiserver
/// admitted but kube cannot evaluate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError(pub String);

impl<'a> Filters<'a> {
    fn new(
        scope: &'a Scope,
        images: &'a ImageMatcher,
        snapshot: &ClusterSnapshot,
    ) -> Result<Self, SelectorError> {
        let compile =
            |s: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
             what: &str| {
                s.clone()
                    .map(Selector::try_from)
                    .transpose()
                    .map_err(|e| SelectorError(format!("{what}: {e}")))
            };
        Ok(Filters {
            scope,
            namespace_selector: compile(
                &scope.selector.namespace_selector,
                "spec.selector.namespaceSelector",
            )?,
            workload_selector: compile(
                &scope.selector.workload_selector,
                "spec.selector.workloadSelector",
            )?,
            kinds: scope
                .selector
                .effective_workload_kinds()
                .into_iter()
                .collect(),
            images,
            namespace_labels: snapshot
                .namespaces
                .iter()
                .filter_map(|ns| {
                    Some((
                        ns.metadata.name.clone()?,
                        ns.metadata.labels.clone().unwrap_or_default(),
                    ))
                })
                .collect(),
        })
    }

    fn namespace_selected(&self, namespace: &str) -> bool {
        if let Some(own) = &self.scope.only_namespace {
            // A tenant policy: its own namespace, whatever the selector says.
            return namespace == own;
        }
        let selector = &self.scope.selector;
        let included = match &selector.included_namespaces {
            Some(list) if !list.is_empty() => list.iter().any(|n| n == "*" || n == namespace),
            _ => true,
        };
        let excluded = selector
            .excluded_namespaces
            .as_ref()
            .is_some_and(|list| list.iter().any(|n| n == namespace));
        let labelled = match &self.namespace_selector {
            None => true,
            Some(sel) => self
                .namespace_labels
                .get(namespace)
                .is_some_and(|labels| sel.matches(labels)),
        };
        included && !excluded && labelled
    }

    fn workload_selected(
        &self,
        kind: WorkloadKind,
        labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        if !self.kinds.contains(&kind) {
            return false;
        }
        match &self.workload_selector {
            None => true,
            Some(sel) => sel.matches(labels.unwrap_or(&BTreeMap::new())),
        }
    }
}

/// The digest in a container status's `imageID`
/// (`registry/repo@sha256:...`, possibly `docker-pullable://`-prefixed). A
/// bare `sha256:...` is the image's config ID, not a manifest digest.
pub fn digest_from_image_id(image_id: &str) -> Option<Digest> {
    let (_, digest) = image_id.rsplit_once('@')?;
    Digest::parse(digest).ok()
}

/// Whether a container waiting reason means the image cannot be pulled.
pub fn is_pull_failure(reason: &str) -> bool {
    matches!(reason, "ErrImagePull" | "ImagePullBackOff")
}

/// One container's image in a pod: spec image, running digest, waiting reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    pub image: String,
    pub digest: Option<Digest>,
    pub waiting_reason: Option<String>,
}

/// Images of every container of a pod: regular, init and ephemeral.
pub fn pod_container_images(pod: &Pod) -> Vec<ContainerImage> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let status = pod.status.as_ref();
    let mut statuses: HashMap<&str, (&str, Option<&str>)> = HashMap::new();
    if let Some(status) = status {
        for list in [
            &status.container_statuses,
            &status.init_container_statuses,
            &status.ephemeral_container_statuses,
        ]
        .into_iter()
        .flatten()
        {
            for s in list {
                let waiting = s
                    .state
                    .as_ref()
                    .and_then(|st| st.waiting.as_ref())
                    .and_then(|w| w.reason.as_deref());
                statuses.insert(s.name.as_str(), (s.image_id.as_str(), waiting));
            }
        }
    }
    let mut names_and_images: Vec<(&str, &str)> = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        names_and_images.push((&c.name, c.image.as_deref().unwrap_or_default()));
    }
    for c in &spec.containers {
        names_and_images.push((&c.name, c.image.as_deref().unwrap_or_default()));
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        names_and_images.push((&c.name, c.image.as_deref().unwrap_or_default()));
    }
    names_and_images
        .into_iter()
        .filter(|(_, image)| !image.is_empty())
        .map(|(name, image)| {
            let (image_id, waiting) = statuses.get(name).copied().unwrap_or(("", None));
            ContainerImage {
                image: image.to_owned(),
                digest: digest_from_image_id(image_id),
                waiting_reason: waiting.map(str::to_owned),
            }
        })
        .collect()
}

fn template_images(spec: Option<&PodSpec>) -> Vec<String> {
    let Some(spec) = spec else {
        return Vec::new();
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter_map(|c| c.image.clone())
        .chain(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .filter_map(|c| c.image.clone()),
        )
        .filter(|i| !i.is_empty())
        .collect()
}

fn pull_secrets(namespace: &str, spec: Option<&PodSpec>) -> BTreeSet<SecretId> {
    spec.and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten()
        .filter(|r| !r.name.is_empty())
        .map(|r| (namespace.to_owned(), r.name.clone()))
        .collect()
}

fn controller_owner(meta: &ObjectMeta) -> Option<(&str, &str)> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.as_str(), o.name.as_str()))
}

/// The top-level workloads, with their labels and pod templates.
struct WorkloadIndex {
    labels: HashMap<WorkloadId, BTreeMap<String, String>>,
    /// ReplicaSet (ns, name) -> owning Deployment name.
    replica_set_owner: HashMap<(String, String), String>,
    /// Job (ns, name) -> owning CronJob name.
    job_owner: HashMap<(String, String), String>,
    /// Top-level workloads and their templates' images and pull secrets.
    templates: Vec<(WorkloadId, Vec<String>, BTreeSet<SecretId>)>,
}

fn workload_id(kind: WorkloadKind, meta: &ObjectMeta) -> Option<WorkloadId> {
    Some(WorkloadId {
        kind,
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
    })
}

impl WorkloadIndex {
    fn add(
        &mut self,
        kind: WorkloadKind,
        meta: &ObjectMeta,
        spec: Option<&PodSpec>,
        top_level: bool,
    ) {
        let Some(id) = workload_id(kind, meta) else {
            return;
        };
        self.labels
            .insert(id.clone(), meta.labels.clone().unwrap_or_default());
        if top_level {
            let secrets = pull_secrets(&id.namespace, spec);
            self.templates.push((id, template_images(spec), secrets));
        }
    }

    fn new(snapshot: &ClusterSnapshot) -> WorkloadIndex {
        let mut index = WorkloadIndex {
            labels: HashMap::new(),
            replica_set_owner: HashMap::new(),
            job_owner: HashMap::new(),
            templates: Vec::new(),
        };
        for d in &snapshot.deployments {
            let spec = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
            index.add(WorkloadKind::Deployment, &d.metadata, spec, true);
        }
        for s in &snapshot.stateful_sets {
            let spec = s.spec.as_ref().and_then(|s| s.template.spec.as_ref());
            index.add(WorkloadKind::StatefulSet, &s.metadata, spec, true);
        }
        for d in &snapshot.daemon_sets {
            let spec = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
            index.add(WorkloadKind::DaemonSet, &d.metadata, spec, true);
        }
        for c in &snapshot.cron_jobs {
            let spec = c
                .spec
                .as_ref()
                .and_then(|s| s.job_template.spec.as_ref())
                .and_then(|s| s.template.spec.as_ref());
            index.add(WorkloadKind::CronJob, &c.metadata, spec, true);
        }
        for r in &snapshot.replica_sets {
            let owner = controller_owner(&r.metadata).filter(|(kind, _)| *kind == "Deployment");
            let spec = r
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.spec.as_ref());
            index.add(WorkloadKind::ReplicaSet, &r.metadata, spec, owner.is_none());
            if let (Some((_, deployment)), Some(ns), Some(name)) =
                (owner, &r.metadata.namespace, &r.metadata.name)
            {
                index
                    .replica_set_owner
                    .insert((ns.clone(), name.clone()), deployment.to_owned());
            }
        }
        for j in &snapshot.jobs {
            let owner = controller_owner(&j.metadata).filter(|(kind, _)| *kind == "CronJob");
            let spec = j.spec.as_ref().and_then(|s| s.template.spec.as_ref());
            index.add(WorkloadKind::Job, &j.metadata, spec, owner.is_none());
            if let (Some((_, cron_job)), Some(ns), Some(name)) =
                (owner, &j.metadata.namespace, &j.metadata.name)
            {
                index
                    .job_owner
                    .insert((ns.clone(), name.clone()), cron_job.to_owned());
            }
        }
        index
    }

    /// The top-level workload a pod belongs to.
    fn owner_of(&self, pod: &Pod) -> Option<WorkloadId> {
        let namespace = pod.metadata.namespace.clone()?;
        let pod_name = pod.metadata.name.clone()?;
        let (kind, name) = match controller_owner(&pod.metadata) {
            Some(("ReplicaSet", rs)) => {
                match self
                    .replica_set_owner
                    .get(&(namespace.clone(), rs.to_owned()))
                {
                    Some(deployment) => (WorkloadKind::Deployment, deployment.clone()),
                    None => (WorkloadKind::ReplicaSet, rs.to_owned()),
                }
            }
            Some(("Job", job)) => match self.job_owner.get(&(namespace.clone(), job.to_owned())) {
                Some(cron_job) => (WorkloadKind::CronJob, cron_job.clone()),
                None => (WorkloadKind::Job, job.to_owned()),
            },
            Some(("StatefulSet", name)) => (WorkloadKind::StatefulSet, name.to_owned()),
            Some(("DaemonSet", name)) => (WorkloadKind::DaemonSet, name.to_owned()),
            // Standalone pods, and pods of controllers Lifeboat does not know.
            _ => (WorkloadKind::Pod, pod_name),
        };
        Some(WorkloadId {
            kind,
            namespace,
            name,
        })
    }
}

/// The normalised reference of an image string, with a known digest.
fn reference_with_digest(image: &str, digest: Option<&Digest>) -> Option<ImageReference> {
    let reference = ImageReference::parse(image).ok()?;
    Some(match (&reference.digest, digest) {
        // A digest pinned in the spec is what runs.
        (Some(_), _) | (None, None) => reference,
        (None, Some(digest)) => reference.with_digest(digest.clone()),
    })
}

/// Builds a policy's inventory from the cluster snapshot.
pub fn discover(
    snapshot: &ClusterSnapshot,
    scope: &Scope,
    images: &ImageMatcher,
) -> Result<Inventory, SelectorError> {
    let filters = Filters::new(scope, images, snapshot)?;
    let index = WorkloadIndex::new(snapshot);
    let mut inventory = Inventory::default();

    // First the pods that report a digest, then the rest: a pod still
    // pulling (or failing to pull) an image another pod of the same workload
    // runs adds no tag-only entry, its pull failure counts for the digest.
    struct Observed {
        workload: WorkloadId,
        container: ContainerImage,
        reference: ImageReference,
        node: Option<String>,
        secrets: BTreeSet<SecretId>,
        pod: (String, String),
    }
    let mut observed: Vec<Observed> = Vec::new();
    for pod in &snapshot.pods {
        let Some(workload) = index.owner_of(pod) else {
            continue;
        };
        if !filters.namespace_selected(&workload.namespace) {
            continue;
        }
        let labels = index.labels.get(&workload).or(pod.metadata.labels.as_ref());
        if !filters.workload_selected(workload.kind, labels) {
            continue;
        }
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let secrets = pull_secrets(&workload.namespace, pod.spec.as_ref());
        let pod_id = (
            workload.namespace.clone(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        for container in pod_container_images(pod) {
            let Some(reference) =
                reference_with_digest(&container.image, container.digest.as_ref())
            else {
                inventory
                    .unparsable
                    .push((container.image.clone(), workload.clone()));
                continue;
            };
            if !filters.images.matches(&reference) {
                continue;
            }
            observed.push(Observed {
                workload: workload.clone(),
                container,
                reference,
                node: node.clone(),
                secrets: secrets.clone(),
                pod: pod_id.clone(),
            });
        }
    }
    observed.sort_by_key(|o| o.reference.digest.is_none());
    // (workload, image string) -> digest keys a pod runs it at; a
    // template's tag is only used while no pod accounts for it.
    let mut running: BTreeMap<(WorkloadId, String), BTreeSet<String>> = BTreeMap::new();
    for o in observed {
        let failing = o
            .container
            .waiting_reason
            .as_deref()
            .is_some_and(is_pull_failure);
        let pair = (o.workload.clone(), o.container.image.clone());
        if o.reference.digest.is_none()
            && let Some(keys) = running.get(&pair)
        {
            if failing {
                for key in keys {
                    if let Some(entry) = inventory.images.get_mut(key) {
                        entry.pull_failures.insert(o.pod.clone());
                    }
                }
            }
            continue;
        }
        let entry = add_use(&mut inventory, o.reference, &o.workload, &o.secrets);
        if entry.reference.digest.is_some() {
            let key = entry.key();
            if let Some(node) = &o.node
                && !failing
            {
                entry.nodes.insert(node.clone());
            }
            if failing {
                entry.pull_failures.insert(o.pod.clone());
            }
            running.entry(pair).or_default().insert(key);
        } else if failing {
            entry.pull_failures.insert(o.pod.clone());
        }
    }

    for (workload, template, secrets) in &index.templates {
        if !filters.namespace_selected(&workload.namespace)
            || !filters.workload_selected(workload.kind, index.labels.get(workload))
        {
            continue;
        }
        for image in template {
            if running.contains_key(&(workload.clone(), image.clone())) {
                inventory.workloads.insert(workload.clone());
                continue;
            }
            let Some(reference) = reference_with_digest(image, None) else {
                inventory.unparsable.push((image.clone(), workload.clone()));
                continue;
            };
            if !filters.images.matches(&reference) {
                continue;
            }
            add_use(&mut inventory, reference, workload, secrets);
        }
    }
    inventory.unparsable.sort();
    inventory.unparsable.dedup();
    Ok(inventory)
}

fn add_use<'i>(
    inventory: &'i mut Inventory,
    reference: ImageReference,
    workload: &WorkloadId,
    secrets: &BTreeSet<SecretId>,
) -> &'i mut ImageUse {
    inventory.workloads.insert(workload.clone());
    let key = image_key(&reference);
    let entry = inventory.images.entry(key).or_insert_with(|| ImageUse {
        reference: reference.clone(),
        workloads: BTreeSet::new(),
        nodes: BTreeSet::new(),
        pull_failures: BTreeSet::new(),
        pull_secrets: BTreeSet::new(),
    });
    // Several tags can name one digest: keep the smallest, so the result
    // does not depend on the order the caches list pods in.
    if let Some(tag) = reference.tag
        && entry.reference.tag.as_ref().is_none_or(|t| &tag < t)
    {
        entry.reference.tag = Some(tag);
    }
    entry.workloads.insert(workload.clone());
    entry.pull_secrets.extend(secrets.iter().cloned());
    entry
}
