//! Which images a policy protects: pods (with the digests they really run),
//! the pod templates of workloads, namespaces and selectors in, one
//! inventory out. Pure: the reconciler hands in snapshots of its caches.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{Selector, SelectorExt};
use lifeboat_api::backup_policy::{WorkloadKind, WorkloadSelector};
use lifeboat_api::patterns::ImageMatcher;
use lifeboat_api::{Digest, ImageReference};

pub use super::pod_cache::{CachedPod, ContainerImage};

/// The cluster as the caches see it right now.
#[derive(Default, Clone)]
pub struct ClusterSnapshot {
    pub namespaces: Vec<Arc<Namespace>>,
    pub pods: Vec<Arc<CachedPod>>,
    pub deployments: Vec<Arc<Deployment>>,
    pub stateful_sets: Vec<Arc<StatefulSet>>,
    pub daemon_sets: Vec<Arc<DaemonSet>>,
    pub replica_sets: Vec<Arc<ReplicaSet>>,
    pub jobs: Vec<Arc<Job>>,
    pub cron_jobs: Vec<Arc<CronJob>>,
}

impl ClusterSnapshot {
    /// Adds pods not created yet (held by an admission review), unless the
    /// caches already hold one of the same name.
    pub fn add_pending_pods(&mut self, pending: Vec<Arc<CachedPod>>) {
        for pod in pending {
            let known = self
                .pods
                .iter()
                .any(|cached| cached.namespace == pod.namespace && cached.name == pod.name);
            if !known {
                self.pods.push(pod);
            }
        }
    }
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
    /// Nodes whose pods run exactly this digest (or last ran it, for a
    /// workload whose pods now fail to pull it: see [`DigestHints`]).
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
    /// The digests (and nodes) each workload's image was known to run at
    /// in this discovery: the hints for the next one.
    pub digests_seen: DigestsByWorkload,
}

/// digest -> nodes known to have run it.
pub type DigestNodes = BTreeMap<String, BTreeSet<String>>;

/// (workload, image as the workload writes it) -> digests it ran at.
pub type DigestsByWorkload = BTreeMap<(WorkloadId, String), DigestNodes>;

/// What earlier discoveries knew about digests, for pods that cannot say
/// now. A pod restarted after its image was lost fails to pull the tag
/// (`ErrImagePull` / `ImagePullBackOff`) and reports no `imageID`: without
/// a hint the digest would be forgotten and the loss no longer reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DigestHints {
    /// From the previous discoveries of the same policy (in memory).
    pub by_workload: DigestsByWorkload,
    /// `name:tag` -> digests, from the images the policy's status reports
    /// missing (survives an operator restart).
    pub by_reference: BTreeMap<String, DigestNodes>,
}

impl DigestHints {
    /// Adds the images a status reports missing, by the tag they were
    /// referenced with.
    pub fn add_missing(&mut self, reference: &str, digest: Option<&str>, nodes: &[String]) {
        let Ok(parsed) = ImageReference::parse(reference) else {
            return;
        };
        let Some(digest) = digest
            .map(str::to_owned)
            .or_else(|| parsed.digest.as_ref().map(|d| d.as_str().to_owned()))
        else {
            return;
        };
        if parsed.tag.is_none() || Digest::parse(&digest).is_err() {
            return;
        }
        let key = tag_key(&parsed);
        self.by_reference
            .entry(key)
            .or_default()
            .entry(digest)
            .or_default()
            .extend(nodes.iter().cloned());
    }

    fn lookup(
        &self,
        workload: &WorkloadId,
        image: &str,
        reference: &ImageReference,
    ) -> Option<&DigestNodes> {
        self.by_workload
            .get(&(workload.clone(), image.to_owned()))
            .filter(|d| !d.is_empty())
            .or_else(|| {
                self.by_reference
                    .get(&tag_key(reference))
                    .filter(|d| !d.is_empty())
            })
    }
}

/// `name:tag` of a reference, whatever digest it has.
fn tag_key(reference: &ImageReference) -> String {
    format!(
        "{}:{}",
        reference.name(),
        reference.tag.as_deref().unwrap_or("latest")
    )
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
        // Only a namespace selector reads them.
        let with_labels = scope.selector.namespace_selector.is_some();
        let namespace_labels = snapshot
            .namespaces
            .iter()
            .filter(|_| with_labels)
            .filter_map(|ns| {
                Some((
                    ns.metadata.name.clone()?,
                    ns.metadata.labels.clone().unwrap_or_default(),
                ))
            })
            .collect();
        Filters::with_namespace_labels(scope, images, namespace_labels)
    }

    fn with_namespace_labels(
        scope: &'a Scope,
        images: &'a ImageMatcher,
        namespace_labels: HashMap<String, BTreeMap<String, String>>,
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
            namespace_labels,
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

/// A policy's selection rules, compiled once, for questions about single
/// objects (the admission webhook's): the same rules discovery applies.
pub struct Selection<'a> {
    filters: Filters<'a>,
}

impl<'a> Selection<'a> {
    /// `namespace_labels`: the labels of the namespaces to be asked about.
    pub fn new(
        scope: &'a Scope,
        images: &'a ImageMatcher,
        namespace_labels: HashMap<String, BTreeMap<String, String>>,
    ) -> Result<Self, SelectorError> {
        Ok(Selection {
            filters: Filters::with_namespace_labels(scope, images, namespace_labels)?,
        })
    }

    /// Whether the policy looks at workloads in `namespace` at all.
    pub fn namespace(&self, namespace: &str) -> bool {
        self.filters.namespace_selected(namespace)
    }

    /// Whether the policy protects `image` of a workload of `kind` with
    /// `labels` (for a pod owned by a workload: the owner's kind and labels).
    pub fn selects(
        &self,
        namespace: &str,
        kind: WorkloadKind,
        labels: Option<&BTreeMap<String, String>>,
        image: &ImageReference,
    ) -> bool {
        self.filters.namespace_selected(namespace)
            && self.filters.workload_selected(kind, labels)
            && self.filters.images.matches(image)
    }
}

/// Whether a container waiting reason means the image cannot be pulled.
pub fn is_pull_failure(reason: &str) -> bool {
    matches!(reason, "ErrImagePull" | "ImagePullBackOff")
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
    fn owner_of(&self, pod: &CachedPod) -> WorkloadId {
        let namespace = pod.namespace.to_string();
        let controller = pod.controller.as_ref().map(|(k, n)| (&**k, &**n));
        let (kind, name) = match controller {
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
            _ => (WorkloadKind::Pod, pod.name.to_string()),
        };
        WorkloadId {
            kind,
            namespace,
            name,
        }
    }
}

/// A container's image string and the digest its pod runs it at.
type ImageAndDigest = (Arc<str>, Option<Arc<str>>);

/// The cluster indexed for discovery: built once per change of the caches
/// (`Caches::view`) and shared by every policy's reconcile, so that the
/// owner chains of pods are walked and their images parsed once per change,
/// not once per policy; a tenant policy reads only its namespace's pods.
pub struct ClusterView {
    snapshot: ClusterSnapshot,
    index: WorkloadIndex,
    /// Pods by namespace (by name within one), each with its top-level workload.
    pods_by_namespace: BTreeMap<Arc<str>, Vec<(Arc<CachedPod>, WorkloadId)>>,
    /// Each distinct (image, digest) the pods run, parsed once; `None`: unparsable.
    references: HashMap<ImageAndDigest, Option<ImageReference>>,
    /// Every manifest digest any pod in the cluster runs or pins, whatever
    /// policy selects it (retention never deletes these).
    running_digests: BTreeSet<String>,
}

impl ClusterView {
    pub fn new(snapshot: ClusterSnapshot) -> ClusterView {
        let index = WorkloadIndex::new(&snapshot);
        let mut pods_by_namespace: BTreeMap<Arc<str>, Vec<(Arc<CachedPod>, WorkloadId)>> =
            BTreeMap::new();
        let mut references = HashMap::new();
        let mut running_digests = BTreeSet::new();
        for pod in &snapshot.pods {
            for c in &pod.containers {
                let reference = references
                    .entry((Arc::clone(&c.image), c.digest.clone()))
                    .or_insert_with(|| reference_with_digest(&c.image, c.digest().as_ref()));
                let digest = match (&c.digest, reference) {
                    (Some(running), _) => Some(running.to_string()),
                    // No status digest: the reference's is pinned in the spec.
                    (None, Some(reference)) => {
                        reference.digest.as_ref().map(|d| d.as_str().to_owned())
                    }
                    (None, None) => None,
                };
                running_digests.extend(digest);
            }
            let workload = index.owner_of(pod);
            pods_by_namespace
                .entry(Arc::clone(&pod.namespace))
                .or_default()
                .push((Arc::clone(pod), workload));
        }
        for pods in pods_by_namespace.values_mut() {
            pods.sort_by(|(a, _), (b, _)| a.name.cmp(&b.name));
        }
        ClusterView {
            snapshot,
            index,
            pods_by_namespace,
            references,
            running_digests,
        }
    }

    pub fn running_digests(&self) -> &BTreeSet<String> {
        &self.running_digests
    }

    /// The pods of the namespaces a policy looks at.
    fn pods_in<'v>(
        &'v self,
        filters: &'v Filters<'_>,
    ) -> impl Iterator<Item = &'v (Arc<CachedPod>, WorkloadId)> {
        let namespaces: Box<dyn Iterator<Item = (&Arc<str>, &Vec<_>)>> =
            match &filters.scope.only_namespace {
                Some(own) => Box::new(
                    self.pods_by_namespace
                        .get_key_value(own.as_str())
                        .into_iter(),
                ),
                None => Box::new(self.pods_by_namespace.iter()),
            };
        namespaces
            .filter(|(namespace, _)| filters.namespace_selected(namespace))
            .flat_map(|(_, pods)| pods.iter())
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

/// Builds a policy's inventory from the cluster snapshot, in three passes
/// over one inventory: the pods' containers, what they run (by digest
/// first), then the templates no pod accounts for.
pub fn discover(
    view: &ClusterView,
    scope: &Scope,
    images: &ImageMatcher,
    hints: &DigestHints,
) -> Result<Inventory, SelectorError> {
    let filters = Filters::new(scope, images, &view.snapshot)?;
    let mut inventory = Inventory::default();
    let observed = observe(view, &filters, &mut inventory);
    let running = record_running(observed, hints, &mut inventory);
    add_templates(&view.index, &filters, &running, &mut inventory);
    inventory.unparsable.sort();
    inventory.unparsable.dedup();
    Ok(inventory)
}

/// One selected container of one pod.
struct Observed {
    workload: WorkloadId,
    container: ContainerImage,
    reference: ImageReference,
    node: Option<String>,
    secrets: BTreeSet<SecretId>,
    pod: (String, String),
}

/// (workload, image string) -> digest keys a pod runs it at; a template's
/// tag is only used while no pod accounts for it.
type Running = BTreeMap<(WorkloadId, String), BTreeSet<String>>;

/// The containers of the selected pods, those that report a digest first:
/// a pod still pulling (or failing to pull) an image another pod of the
/// same workload runs adds no tag-only entry, its pull failure counts for
/// the digest. Unparsable images go into the inventory.
fn observe(view: &ClusterView, filters: &Filters<'_>, inventory: &mut Inventory) -> Vec<Observed> {
    let mut observed: Vec<Observed> = Vec::new();
    for (pod, workload) in view.pods_in(filters) {
        let own_labels;
        let labels = match view.index.labels.get(workload) {
            Some(labels) => Some(labels),
            // Only a selector reads them: built for the pods it is asked about.
            None if filters.workload_selector.is_some() => {
                own_labels = pod.label_map();
                Some(&own_labels)
            }
            None => None,
        };
        if !filters.workload_selected(workload.kind, labels) {
            continue;
        }
        let node = pod.node.as_deref().map(str::to_owned);
        let secrets: BTreeSet<SecretId> = pod
            .pull_secrets
            .iter()
            .map(|name| (workload.namespace.clone(), name.to_string()))
            .collect();
        let pod_id = (workload.namespace.clone(), pod.name.to_string());
        for container in &pod.containers {
            let key = (Arc::clone(&container.image), container.digest.clone());
            let Some(Some(reference)) = view.references.get(&key) else {
                inventory
                    .unparsable
                    .push((container.image.to_string(), workload.clone()));
                continue;
            };
            if !filters.images.matches(reference) {
                continue;
            }
            observed.push(Observed {
                workload: workload.clone(),
                container: container.clone(),
                reference: reference.clone(),
                node: node.clone(),
                secrets: secrets.clone(),
                pod: pod_id.clone(),
            });
        }
    }
    observed.sort_by_key(|o| o.reference.digest.is_none());
    observed
}

/// Adds what the observed containers run to the inventory (a tag-only
/// container by the digest its workload runs or last ran, when known).
fn record_running(
    observed: Vec<Observed>,
    hints: &DigestHints,
    inventory: &mut Inventory,
) -> Running {
    let mut running = Running::new();
    for o in observed {
        let failing = o
            .container
            .waiting_reason
            .as_deref()
            .is_some_and(is_pull_failure);
        let pair = (o.workload.clone(), o.container.image.to_string());
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
        // No pod of the workload says which digest it runs (they were
        // restarted and cannot pull the tag, or are still pulling): the
        // digest it was last known to run, if any.
        if o.reference.digest.is_none()
            && let Some(known) = hints.lookup(&o.workload, &o.container.image, &o.reference)
        {
            for (digest, nodes) in known {
                let Ok(digest) = Digest::parse(digest) else {
                    continue;
                };
                let reference = o.reference.with_digest(digest.clone());
                let entry = add_use(inventory, reference, &o.workload, &o.secrets);
                entry.nodes.extend(nodes.iter().cloned());
                if failing {
                    entry.pull_failures.insert(o.pod.clone());
                }
                let key = entry.key();
                running.entry(pair.clone()).or_default().insert(key);
                inventory
                    .digests_seen
                    .entry(pair.clone())
                    .or_default()
                    .entry(digest.as_str().to_owned())
                    .or_default()
                    .extend(nodes.iter().cloned());
            }
            continue;
        }
        let entry = add_use(inventory, o.reference, &o.workload, &o.secrets);
        if let Some(digest) = entry.reference.digest.clone() {
            let key = entry.key();
            if let Some(node) = &o.node
                && !failing
            {
                entry.nodes.insert(node.clone());
            }
            if failing {
                entry.pull_failures.insert(o.pod.clone());
            }
            let nodes = inventory
                .digests_seen
                .entry(pair.clone())
                .or_default()
                .entry(digest.as_str().to_owned())
                .or_default();
            if let Some(node) = &o.node
                && !failing
            {
                nodes.insert(node.clone());
            }
            running.entry(pair).or_default().insert(key);
        } else if failing {
            entry.pull_failures.insert(o.pod.clone());
        }
    }

    running
}

/// The templates' images no pod accounts for, by tag.
fn add_templates(
    index: &WorkloadIndex,
    filters: &Filters<'_>,
    running: &Running,
    inventory: &mut Inventory,
) {
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
            add_use(inventory, reference, workload, secrets);
        }
    }
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::api::batch::v1::{CronJobSpec, JobSpec, JobTemplateSpec};
    use k8s_openapi::api::core::v1::{
        ContainerStateWaiting, ContainerStatus, LocalObjectReference, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
    use lifeboat_api::backup_policy::ImagePatterns;

    use k8s_openapi::api::core::v1::Pod;

    use super::*;
    use crate::controllers::backup_policy::interner::Interner;
    use crate::controllers::backup_policy::pod_cache::digest_from_image_id;

    /// Discovery from a snapshot, through the view the caches would build.
    fn discover(
        snapshot: &ClusterSnapshot,
        scope: &Scope,
        images: &ImageMatcher,
        hints: &DigestHints,
    ) -> Result<Inventory, SelectorError> {
        super::discover(&ClusterView::new(snapshot.clone()), scope, images, hints)
    }

    fn running_digests(snapshot: &ClusterSnapshot) -> BTreeSet<String> {
        ClusterView::new(snapshot.clone()).running_digests().clone()
    }

    /// A pod as the pod cache holds it.
    fn cached(pod: Pod) -> Arc<CachedPod> {
        Arc::new(CachedPod::new(&pod, &Interner::default()).expect("a named pod"))
    }

    const WEB_DIGEST: &str =
        "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const INIT_DIGEST: &str =
        "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn meta(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..ObjectMeta::default()
        }
    }

    fn owned(mut meta: ObjectMeta, kind: &str, owner: &str) -> ObjectMeta {
        meta.owner_references = Some(vec![OwnerReference {
            kind: kind.into(),
            name: owner.into(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        meta
    }

    fn container(name: &str, image: &str) -> Container {
        Container {
            name: name.into(),
            image: Some(image.into()),
            ..Container::default()
        }
    }

    fn status(name: &str, image_id: &str, waiting: Option<&str>) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            image_id: image_id.into(),
            state: waiting.map(|reason| k8s_openapi::api::core::v1::ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: None,
                }),
                ..Default::default()
            }),
            ..ContainerStatus::default()
        }
    }

    use k8s_openapi::api::core::v1::Container;

    fn web_pod(namespace: &str, node: &str) -> Pod {
        Pod {
            metadata: owned(meta(namespace, "web-abc-1"), "ReplicaSet", "web-abc"),
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                init_containers: Some(vec![container("init", "registry.local/init:1")]),
                containers: vec![container("web", "registry.local/web:1.0")],
                image_pull_secrets: Some(vec![LocalObjectReference {
                    name: "pull".into(),
                }]),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                init_container_statuses: Some(vec![status(
                    "init",
                    &format!("registry.local/init@{INIT_DIGEST}"),
                    None,
                )]),
                container_statuses: Some(vec![status(
                    "web",
                    &format!("registry.local/web@{WEB_DIGEST}"),
                    None,
                )]),
                ..PodStatus::default()
            }),
        }
    }

    fn template(images: &[&str]) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                containers: images
                    .iter()
                    .enumerate()
                    .map(|(i, image)| container(&format!("c{i}"), image))
                    .collect(),
                ..PodSpec::default()
            }),
        }
    }
    use k8s_openapi::api::core::v1::PodTemplateSpec;

    fn deployment(
        namespace: &str,
        name: &str,
        images: &[&str],
        labels: &[(&str, &str)],
    ) -> Deployment {
        let mut m = meta(namespace, name);
        m.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        Deployment {
            metadata: m,
            spec: Some(DeploymentSpec {
                template: template(images),
                ..DeploymentSpec::default()
            }),
            status: None,
        }
    }

    fn replica_set(namespace: &str, name: &str, deployment: &str) -> ReplicaSet {
        ReplicaSet {
            metadata: owned(meta(namespace, name), "Deployment", deployment),
            ..ReplicaSet::default()
        }
    }

    fn snapshot() -> ClusterSnapshot {
        ClusterSnapshot {
            namespaces: vec![Arc::new(Namespace {
                metadata: ObjectMeta {
                    name: Some("shop".into()),
                    labels: Some([("team".to_string(), "shop".to_string())].into()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            })],
            pods: vec![cached(web_pod("shop", "node-1"))],
            deployments: vec![Arc::new(deployment(
                "shop",
                "web",
                &["registry.local/web:1.0"],
                &[("app", "web")],
            ))],
            replica_sets: vec![Arc::new(replica_set("shop", "web-abc", "web"))],
            cron_jobs: vec![Arc::new(CronJob {
                metadata: meta("shop", "nightly"),
                spec: Some(CronJobSpec {
                    schedule: "0 3 * * *".into(),
                    job_template: JobTemplateSpec {
                        metadata: None,
                        spec: Some(JobSpec {
                            template: template(&["registry.local/cron:7"]),
                            ..JobSpec::default()
                        }),
                    },
                    ..CronJobSpec::default()
                }),
                status: None,
            })],
            ..ClusterSnapshot::default()
        }
    }

    fn admin_scope(selector: WorkloadSelector) -> Scope {
        Scope::for_policy("lifeboat-system", "lifeboat-system", selector)
    }

    fn keys(inventory: &Inventory) -> Vec<String> {
        inventory.images.keys().cloned().collect()
    }

    #[test]
    fn running_pods_give_exact_digests_templates_give_tags() {
        let inventory = discover(
            &snapshot(),
            &admin_scope(WorkloadSelector::default()),
            &ImageMatcher::default(),
            &DigestHints::default(),
        )
        .unwrap();
        assert_eq!(
            keys(&inventory),
            vec![
                "registry.local/cron:7".to_owned(),
                format!("registry.local/init@{INIT_DIGEST}"),
                format!("registry.local/web@{WEB_DIGEST}"),
            ]
        );
        let web = &inventory.images[&format!("registry.local/web@{WEB_DIGEST}")];
        // The pod belongs to the Deployment (through its ReplicaSet).
        assert_eq!(
            web.workloads.iter().collect::<Vec<_>>(),
            vec![&WorkloadId {
                kind: WorkloadKind::Deployment,
                namespace: "shop".into(),
                name: "web".into()
            }]
        );
        assert_eq!(web.nodes.iter().collect::<Vec<_>>(), vec!["node-1"]);
        assert_eq!(web.reference.tag.as_deref(), Some("1.0"));
        assert!(
            web.pull_secrets
                .contains(&("shop".to_owned(), "pull".to_owned()))
        );
        assert_eq!(inventory.workloads.len(), 2);
    }

    #[test]
    fn kinds_labels_and_image_patterns_select() {
        let only_cron = WorkloadSelector {
            workload_kinds: Some(vec![WorkloadKind::CronJob]),
            ..WorkloadSelector::default()
        };
        let inventory = discover(
            &snapshot(),
            &admin_scope(only_cron),
            &ImageMatcher::default(),
            &DigestHints::default(),
        )
        .unwrap();
        assert_eq!(keys(&inventory), vec!["registry.local/cron:7".to_owned()]);

        let labelled = WorkloadSelector {
            workload_selector: Some(LabelSelector {
                match_labels: Some([("app".to_string(), "web".to_string())].into()),
                ..LabelSelector::default()
            }),
            ..WorkloadSelector::default()
        };
        let inventory = discover(
            &snapshot(),
            &admin_scope(labelled),
            &ImageMatcher::default(),
            &DigestHints::default(),
        )
        .unwrap();
        assert_eq!(inventory.images.len(), 2, "{:?}", keys(&inventory));

        let matcher = ImageMatcher::compile(Some(&ImagePatterns {
            include: None,
            exclude: Some(vec!["registry.local/init*".into()]),
        }))
        .unwrap();
        let inventory = discover(
            &snapshot(),
            &admin_scope(WorkloadSelector::default()),
            &matcher,
            &DigestHints::default(),
        )
        .unwrap();
        assert!(!keys(&inventory).iter().any(|k| k.contains("init")));
    }

    #[test]
    fn namespaces_included_excluded_and_by_label() {
        let excluded = WorkloadSelector {
            excluded_namespaces: Some(vec!["shop".into()]),
            ..WorkloadSelector::default()
        };
        assert!(
            discover(
                &snapshot(),
                &admin_scope(excluded),
                &ImageMatcher::default(),
                &DigestHints::default()
            )
            .unwrap()
            .images
            .is_empty()
        );
        let other_team = WorkloadSelector {
            namespace_selector: Some(LabelSelector {
                match_labels: Some([("team".to_string(), "payments".to_string())].into()),
                ..LabelSelector::default()
            }),
            ..WorkloadSelector::default()
        };
        assert!(
            discover(
                &snapshot(),
                &admin_scope(other_team),
                &ImageMatcher::default(),
                &DigestHints::default()
            )
            .unwrap()
            .images
            .is_empty()
        );
        let included = WorkloadSelector {
            included_namespaces: Some(vec!["*".into()]),
            ..WorkloadSelector::default()
        };
        assert_eq!(
            discover(
                &snapshot(),
                &admin_scope(included),
                &ImageMatcher::default(),
                &DigestHints::default()
            )
            .unwrap()
            .images
            .len(),
            3
        );
    }

    #[test]
    fn a_tenant_policy_sees_only_its_own_namespace_whatever_it_selects() {
        let greedy = WorkloadSelector {
            included_namespaces: Some(vec!["shop".into(), "*".into()]),
            ..WorkloadSelector::default()
        };
        let tenant = Scope::for_policy("payments", "lifeboat-system", greedy);
        assert!(tenant.selector_reaches_beyond());
        let inventory = discover(
            &snapshot(),
            &tenant,
            &ImageMatcher::default(),
            &DigestHints::default(),
        )
        .unwrap();
        assert!(inventory.images.is_empty(), "{:?}", keys(&inventory));

        let own = Scope::for_policy("shop", "lifeboat-system", WorkloadSelector::default());
        assert!(!own.selector_reaches_beyond());
        assert_eq!(
            discover(
                &snapshot(),
                &own,
                &ImageMatcher::default(),
                &DigestHints::default()
            )
            .unwrap()
            .images
            .len(),
            3
        );
    }

    #[test]
    fn a_pod_failing_to_pull_marks_the_digest_its_workload_runs() {
        let mut snap = snapshot();
        let mut failing = web_pod("shop", "node-2");
        failing.metadata.name = Some("web-abc-2".into());
        if let Some(status) = &mut failing.status {
            status.container_statuses = Some(vec![status_waiting("web", "ImagePullBackOff")]);
            status.init_container_statuses = None;
        }
        snap.pods.push(cached(failing));
        let inventory = discover(
            &snap,
            &admin_scope(WorkloadSelector::default()),
            &ImageMatcher::default(),
            &DigestHints::default(),
        )
        .unwrap();
        // No tag-only entry for the failing pod; its failure counts for the digest.
        assert!(!inventory.images.contains_key("registry.local/web:1.0"));
        let web = &inventory.images[&format!("registry.local/web@{WEB_DIGEST}")];
        assert!(
            web.pull_failures
                .contains(&("shop".to_owned(), "web-abc-2".to_owned()))
        );
        // The failing node does not hold it.
        assert_eq!(web.nodes.iter().collect::<Vec<_>>(), vec!["node-1"]);
    }

    /// The web pod restarted into ImagePullBackOff: its status names no digest.
    fn restarted_snapshot() -> ClusterSnapshot {
        let mut snap = snapshot();
        let mut failing = web_pod("shop", "node-2");
        failing.metadata.name = Some("web-abc-9".into());
        if let Some(status) = &mut failing.status {
            status.container_statuses = Some(vec![status_waiting("web", "ImagePullBackOff")]);
        }
        snap.pods = vec![cached(failing)];
        snap
    }

    fn web_workload() -> WorkloadId {
        WorkloadId {
            kind: WorkloadKind::Deployment,
            namespace: "shop".into(),
            name: "web".into(),
        }
    }

    #[test]
    fn a_restarted_pod_that_cannot_pull_keeps_the_digest_it_ran() {
        let scope = admin_scope(WorkloadSelector::default());
        // First discovery: the pod runs the digest on node-1.
        let before = discover(
            &snapshot(),
            &scope,
            &ImageMatcher::default(),
            &DigestHints::default(),
        )
        .unwrap();
        let pair = (web_workload(), "registry.local/web:1.0".to_owned());
        assert_eq!(
            before.digests_seen.get(&pair),
            Some(&[(WEB_DIGEST.to_owned(), ["node-1".to_owned()].into())].into())
        );

        // Without hints the restarted pod yields only the tag: the loss
        // would be forgotten.
        let forgetful = discover(
            &restarted_snapshot(),
            &scope,
            &ImageMatcher::default(),
            &DigestHints::default(),
        )
        .unwrap();
        assert!(forgetful.images.contains_key("registry.local/web:1.0"));

        // With what the first discovery saw, the digest stays, with the
        // node that ran it and the failing pod.
        let hints = DigestHints {
            by_workload: before.digests_seen.clone(),
            ..DigestHints::default()
        };
        let after = discover(
            &restarted_snapshot(),
            &scope,
            &ImageMatcher::default(),
            &hints,
        )
        .unwrap();
        assert!(!after.images.contains_key("registry.local/web:1.0"));
        let web = &after.images[&format!("registry.local/web@{WEB_DIGEST}")];
        assert_eq!(web.reference.tag.as_deref(), Some("1.0"));
        assert_eq!(web.nodes.iter().collect::<Vec<_>>(), vec!["node-1"]);
        assert!(
            web.pull_failures
                .contains(&("shop".to_owned(), "web-abc-9".to_owned()))
        );
        // ... and it is remembered for the discovery after that.
        assert_eq!(
            after.digests_seen.get(&pair),
            before.digests_seen.get(&pair)
        );
    }

    #[test]
    fn the_status_missing_images_are_hints_after_an_operator_restart() {
        let mut hints = DigestHints::default();
        hints.add_missing(
            &format!("registry.local/web:1.0@{WEB_DIGEST}"),
            Some(WEB_DIGEST),
            &["node-1".to_owned()],
        );
        // Unusable entries are ignored.
        hints.add_missing("registry.local/other@sha256:nothex", None, &[]);
        hints.add_missing(
            &format!("registry.local/digest-only@{WEB_DIGEST}"),
            None,
            &[],
        );
        assert_eq!(hints.by_reference.len(), 1);
        let inventory = discover(
            &restarted_snapshot(),
            &admin_scope(WorkloadSelector::default()),
            &ImageMatcher::default(),
            &hints,
        )
        .unwrap();
        let web = &inventory.images[&format!("registry.local/web@{WEB_DIGEST}")];
        assert_eq!(web.nodes.iter().collect::<Vec<_>>(), vec!["node-1"]);
        assert_eq!(web.pull_failures.len(), 1);
        assert!(!inventory.images.contains_key("registry.local/web:1.0"));
    }

    #[test]
    fn a_pod_reporting_a_new_digest_wins_over_hints() {
        let other = "sha256:9999999999999999999999999999999999999999999999999999999999999999";
        let hints = DigestHints {
            by_workload: [(
                (web_workload(), "registry.local/web:1.0".to_owned()),
                [(other.to_owned(), BTreeSet::new())].into(),
            )]
            .into(),
            ..DigestHints::default()
        };
        let inventory = discover(
            &snapshot(),
            &admin_scope(WorkloadSelector::default()),
            &ImageMatcher::default(),
            &hints,
        )
        .unwrap();
        assert!(
            inventory
                .images
                .contains_key(&format!("registry.local/web@{WEB_DIGEST}"))
        );
        assert!(
            !inventory
                .images
                .contains_key(&format!("registry.local/web@{other}"))
        );
    }

    #[test]
    fn running_digests_cover_every_pod_in_the_cluster() {
        let mut snap = snapshot();
        let mut stray = web_pod("elsewhere", "node-2");
        stray.metadata.name = Some("stray".into());
        if let Some(spec) = &mut stray.spec {
            spec.containers = vec![container(
                "pinned",
                &format!(
                    "registry.local/pinned@{}",
                    "sha256:".to_owned() + &"4".repeat(64)
                ),
            )];
        }
        if let Some(status) = &mut stray.status {
            status.container_statuses = None;
        }
        snap.pods.push(cached(stray));
        let digests = running_digests(&snap);
        assert!(digests.contains(WEB_DIGEST));
        assert!(digests.contains(INIT_DIGEST));
        assert!(digests.contains(&format!("sha256:{}", "4".repeat(64))));
    }

    fn status_waiting(name: &str, reason: &str) -> ContainerStatus {
        status(name, "", Some(reason))
    }

    #[test]
    fn image_ids_and_pull_failures() {
        assert_eq!(
            digest_from_image_id(&format!("docker.io/library/nginx@{WEB_DIGEST}"))
                .map(|d| d.as_str().to_owned()),
            Some(WEB_DIGEST.to_owned())
        );
        assert_eq!(
            digest_from_image_id(&format!("docker-pullable://nginx@{WEB_DIGEST}"))
                .map(|d| d.as_str().to_owned()),
            Some(WEB_DIGEST.to_owned())
        );
        // A bare config ID is not a manifest digest.
        assert_eq!(digest_from_image_id(WEB_DIGEST), None);
        assert_eq!(digest_from_image_id(""), None);
        assert!(is_pull_failure("ErrImagePull"));
        assert!(is_pull_failure("ImagePullBackOff"));
        assert!(!is_pull_failure("ContainerCreating"));
    }

    #[test]
    fn the_lean_pod_discovers_what_the_full_pod_would() {
        // Everything else in a pod (annotations, env, ...) is left out.
        let mut pod = web_pod("shop", "node-1");
        pod.metadata.annotations = Some([("big".to_string(), "x".repeat(10_000))].into());
        if let Some(spec) = &mut pod.spec {
            spec.containers[0].env = Some(vec![Default::default(); 50]);
        }
        let lean = discover(
            &ClusterSnapshot {
                pods: vec![cached(pod)],
                ..snapshot()
            },
            &admin_scope(WorkloadSelector::default()),
            &ImageMatcher::default(),
            &DigestHints::default(),
        )
        .unwrap();
        let web = &lean.images[&format!("registry.local/web@{WEB_DIGEST}")];
        assert_eq!(web.nodes.iter().collect::<Vec<_>>(), vec!["node-1"]);
        assert_eq!(
            web.pull_secrets,
            [("shop".to_owned(), "pull".to_owned())].into()
        );
        assert!(
            lean.images
                .contains_key(&format!("registry.local/init@{INIT_DIGEST}"))
        );
    }

    #[test]
    fn a_tenant_policy_reads_only_its_namespace_and_standalone_pods_by_their_labels() {
        let mut snap = snapshot();
        let mut standalone = web_pod("other", "node-2");
        standalone.metadata.owner_references = None;
        standalone.metadata.name = Some("debug".into());
        standalone.metadata.labels = Some([("app".to_string(), "debug".to_string())].into());
        snap.pods.push(cached(standalone));
        let view = ClusterView::new(snap);
        let tenant = Scope::for_policy("shop", "lifeboat-system", WorkloadSelector::default());
        let shop = super::discover(
            &view,
            &tenant,
            &ImageMatcher::default(),
            &DigestHints::default(),
        )
        .unwrap();
        assert!(shop.workloads.iter().all(|w| w.namespace == "shop"));
        let by_label = |app: &str| WorkloadSelector {
            workload_selector: Some(LabelSelector {
                match_labels: Some([("app".to_string(), app.to_string())].into()),
                ..LabelSelector::default()
            }),
            ..WorkloadSelector::default()
        };
        let debug = super::discover(
            &view,
            &admin_scope(by_label("debug")),
            &ImageMatcher::default(),
            &DigestHints::default(),
        )
        .unwrap();
        assert_eq!(
            debug
                .workloads
                .iter()
                .map(|w| (w.kind, w.name.as_str()))
                .collect::<Vec<_>>(),
            vec![(WorkloadKind::Pod, "debug")]
        );
    }
}
