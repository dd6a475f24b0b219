//! The pods discovery reads, each reduced on arrival to what decisions use
//! (a few hundred bytes instead of the kilobytes of a `Pod`, trimmed or
//! not): its name, labels, controller, node, pull secrets and each
//! container's image, digest and waiting reason, with every repeated string
//! shared through the [`Interner`]. A cluster holds far more pods than any
//! other object, so this is the one cache with its own representation.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use kube::runtime::watcher;
use lifeboat_api::Digest;
use tokio::sync::watch;

use super::interner::Interner;

/// One container's image in a pod: the spec's image, the digest the pod
/// status says it runs, and why it waits (if it does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    pub image: Arc<str>,
    /// A valid manifest digest (checked on arrival).
    pub digest: Option<Arc<str>>,
    pub waiting_reason: Option<Arc<str>>,
}

impl ContainerImage {
    pub fn digest(&self) -> Option<Digest> {
        self.digest.as_deref().and_then(|d| Digest::parse(d).ok())
    }
}

/// A pod as discovery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPod {
    pub namespace: Arc<str>,
    pub name: Box<str>,
    pub labels: Box<[(Arc<str>, Arc<str>)]>,
    /// The controller owner's (kind, name).
    pub controller: Option<(Arc<str>, Arc<str>)>,
    pub node: Option<Arc<str>>,
    pub pull_secrets: Box<[Arc<str>]>,
    /// Init containers, then containers, then ephemeral ones; without those
    /// that name no image.
    pub containers: Box<[ContainerImage]>,
}

impl CachedPod {
    /// The pod reduced to what discovery reads; `None` without a name or
    /// namespace (the API server never sends one).
    pub fn new(pod: &Pod, interner: &Interner) -> Option<CachedPod> {
        let meta = &pod.metadata;
        let labels = meta
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (interner.intern(k), interner.intern(v)))
            .collect();
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| (interner.intern(&o.kind), interner.intern(&o.name)));
        let spec = pod.spec.as_ref();
        Some(CachedPod {
            namespace: interner.intern(meta.namespace.as_deref()?),
            name: meta.name.as_deref()?.into(),
            labels,
            controller,
            node: spec
                .and_then(|s| s.node_name.as_deref())
                .map(|n| interner.intern(n)),
            pull_secrets: spec
                .and_then(|s| s.image_pull_secrets.as_ref())
                .into_iter()
                .flatten()
                .filter(|r| !r.name.is_empty())
                .map(|r| interner.intern(&r.name))
                .collect(),
            containers: spec
                .map(|s| container_images(s, pod.status.as_ref(), interner))
                .unwrap_or_default(),
        })
    }

    /// The labels as a selector reads them.
    pub fn label_map(&self) -> BTreeMap<String, String> {
        self.labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// The digest in a container status's `imageID`
/// (`registry/repo@sha256:...`, possibly `docker-pullable://`-prefixed). A
/// bare `sha256:...` is the image's config ID, not a manifest digest.
pub fn digest_from_image_id(image_id: &str) -> Option<Digest> {
    let (_, digest) = image_id.rsplit_once('@')?;
    Digest::parse(digest).ok()
}

/// Images of every container of a pod: init, regular and ephemeral.
fn container_images(
    spec: &PodSpec,
    status: Option<&PodStatus>,
    interner: &Interner,
) -> Box<[ContainerImage]> {
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
    let names_and_images = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| (c.name.as_str(), c.image.as_deref()))
        .chain(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| (c.name.as_str(), c.image.as_deref())),
        );
    names_and_images
        .filter_map(|(name, image)| Some((name, image.filter(|i| !i.is_empty())?)))
        .map(|(name, image)| {
            let (image_id, waiting) = statuses.get(name).copied().unwrap_or(("", None));
            ContainerImage {
                image: interner.intern(image),
                digest: digest_from_image_id(image_id).map(|d| interner.intern(d.as_str())),
                waiting_reason: waiting.map(|w| interner.intern(w)),
            }
        })
        .collect()
}

type PodKey = (Arc<str>, Box<str>);
type PodMap = HashMap<PodKey, Arc<CachedPod>>;

/// The cached pods, readable from anywhere; filled by a [`PodStoreWriter`].
#[derive(Clone)]
pub struct PodStore {
    pods: Arc<RwLock<PodMap>>,
    ready: watch::Receiver<bool>,
}

impl PodStore {
    /// An empty store and its writer.
    pub fn new(interner: Arc<Interner>) -> (PodStore, PodStoreWriter) {
        let pods = Arc::new(RwLock::new(PodMap::new()));
        let (ready_tx, ready) = watch::channel(false);
        (
            PodStore {
                pods: Arc::clone(&pods),
                ready,
            },
            PodStoreWriter {
                pods,
                relisting: None,
                ready: ready_tx,
                interner,
            },
        )
    }

    /// Every cached pod, in no particular order.
    pub fn state(&self) -> Vec<Arc<CachedPod>> {
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        pods.values().cloned().collect()
    }

    /// Waits for the first full list; false when the writer went away first.
    pub async fn wait_until_ready(&self) -> bool {
        let mut ready = self.ready.clone();
        ready.wait_for(|r| *r).await.is_ok()
    }
}

/// Applies watch events to a [`PodStore`]: a relist is buffered and swapped
/// in whole when it ends, as kube's reflector does.
pub struct PodStoreWriter {
    pods: Arc<RwLock<PodMap>>,
    relisting: Option<PodMap>,
    ready: watch::Sender<bool>,
    interner: Arc<Interner>,
}

impl PodStoreWriter {
    pub fn apply(&mut self, event: &watcher::Event<Pod>) {
        match event {
            watcher::Event::Apply(pod) => {
                if let Some(cached) = CachedPod::new(pod, &self.interner) {
                    let key = (Arc::clone(&cached.namespace), cached.name.clone());
                    self.write().insert(key, Arc::new(cached));
                }
            }
            watcher::Event::Delete(pod) => {
                if let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name)
                {
                    let key: PodKey = (Arc::from(namespace.as_str()), name.as_str().into());
                    self.write().remove(&key);
                }
            }
            watcher::Event::Init => self.relisting = Some(PodMap::new()),
            watcher::Event::InitApply(pod) => {
                if let (Some(buffer), Some(cached)) =
                    (self.relisting.as_mut(), CachedPod::new(pod, &self.interner))
                {
                    let key = (Arc::clone(&cached.namespace), cached.name.clone());
                    buffer.insert(key, Arc::new(cached));
                }
            }
            watcher::Event::InitDone => {
                if let Some(buffer) = self.relisting.take() {
                    *self.write() = buffer;
                }
                self.ready.send_replace(true);
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, PodMap> {
        self.pods.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateWaiting, ContainerStatus, EnvVar,
        LocalObjectReference,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn pod(name: &str, image: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("shop".into()),
                name: Some(name.into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                annotations: Some([("big".to_string(), "x".repeat(10_000))].into()),
                owner_references: Some(vec![
                    OwnerReference {
                        kind: "Other".into(),
                        name: "not-the-controller".into(),
                        ..OwnerReference::default()
                    },
                    OwnerReference {
                        kind: "ReplicaSet".into(),
                        name: "web-abc".into(),
                        controller: Some(true),
                        ..OwnerReference::default()
                    },
                ]),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                image_pull_secrets: Some(vec![LocalObjectReference {
                    name: "pull".into(),
                }]),
                init_containers: Some(vec![Container {
                    name: "init".into(),
                    image: Some("registry.local/init:1".into()),
                    ..Container::default()
                }]),
                containers: vec![
                    Container {
                        name: "web".into(),
                        image: Some(image.into()),
                        env: Some(vec![EnvVar::default(); 50]),
                        ..Container::default()
                    },
                    Container {
                        name: "no-image".into(),
                        ..Container::default()
                    },
                ],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "web".into(),
                    image_id: format!("docker-pullable://{image}@{DIGEST}"),
                    ..ContainerStatus::default()
                }]),
                init_container_statuses: Some(vec![ContainerStatus {
                    name: "init".into(),
                    image_id: DIGEST.into(), // a config ID: no manifest digest
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("ImagePullBackOff".into()),
                            message: Some("long message".into()),
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn a_pod_keeps_what_discovery_reads_in_order() {
        let interner = Interner::default();
        let cached = CachedPod::new(&pod("web-abc-1", "registry.local/web:1.0"), &interner)
            .expect("named pod");
        assert_eq!(&*cached.namespace, "shop");
        assert_eq!(&*cached.name, "web-abc-1");
        assert_eq!(cached.label_map(), [("app".into(), "web".into())].into());
        assert_eq!(
            cached.controller,
            Some((Arc::from("ReplicaSet"), Arc::from("web-abc")))
        );
        assert_eq!(cached.node.as_deref(), Some("node-1"));
        assert_eq!(&*cached.pull_secrets, &[Arc::from("pull")]);
        let images: Vec<_> = cached
            .containers
            .iter()
            .map(|c| {
                (
                    c.image.to_string(),
                    c.digest().map(|d| d.as_str().to_owned()),
                    c.waiting_reason.as_deref().map(str::to_owned),
                )
            })
            .collect();
        assert_eq!(
            images,
            vec![
                (
                    "registry.local/init:1".into(),
                    None,
                    Some("ImagePullBackOff".into())
                ),
                ("registry.local/web:1.0".into(), Some(DIGEST.into()), None),
            ]
        );
    }

    #[test]
    fn pods_of_one_image_share_its_strings() {
        let interner = Interner::default();
        let a = CachedPod::new(&pod("a", "registry.local/web:1.0"), &interner).expect("a");
        let b = CachedPod::new(&pod("b", "registry.local/web:1.0"), &interner).expect("b");
        assert!(Arc::ptr_eq(&a.containers[1].image, &b.containers[1].image));
        assert!(Arc::ptr_eq(
            a.containers[1].digest.as_ref().expect("digest"),
            b.containers[1].digest.as_ref().expect("digest")
        ));
        assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
    }

    #[tokio::test]
    async fn the_store_follows_events_and_swaps_relists_in_whole() {
        let (store, mut writer) = PodStore::new(Arc::default());
        let names = |store: &PodStore| {
            let mut names: Vec<String> = store.state().iter().map(|p| p.name.to_string()).collect();
            names.sort();
            names
        };
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(pod("a", "x:1")));
        writer.apply(&watcher::Event::InitApply(pod("b", "x:1")));
        // Not swapped in before the relist ends.
        assert!(names(&store).is_empty());
        writer.apply(&watcher::Event::InitDone);
        assert!(store.wait_until_ready().await);
        assert_eq!(names(&store), ["a", "b"]);
        writer.apply(&watcher::Event::Delete(pod("a", "x:1")));
        writer.apply(&watcher::Event::Apply(pod("c", "x:2")));
        assert_eq!(names(&store), ["b", "c"]);
        // A relist replaces everything: pods deleted meanwhile are gone.
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(pod("c", "x:3")));
        writer.apply(&watcher::Event::InitDone);
        assert_eq!(names(&store), ["c"]);
        assert_eq!(&*store.state()[0].containers[1].image, "x:3");
    }
}
