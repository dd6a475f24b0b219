//! Watch-backed caches of the objects discovery reads, trimmed to the
//! fields it needs so that thousands of pods stay small in memory, and a
//! coalesced "something changed" trigger for the controller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{SinkExt as _, StreamExt as _};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    Container, EphemeralContainer, Namespace, Pod, PodSpec, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::warn;

use super::discovery::{ClusterSnapshot, ClusterView};
use super::interner::Interner;
use super::pod_cache::{PodStore, PodStoreWriter};

/// Keeps what discovery and events need: identity, labels, owners.
pub fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
    meta.finalizers = None;
    meta.generate_name = None;
    meta.creation_timestamp = None;
    meta.deletion_grace_period_seconds = None;
}

/// Keeps container names and images, pull secrets and the node.
pub fn trim_pod_spec(spec: &mut PodSpec) {
    let keep = |c: &Container| Container {
        name: c.name.clone(),
        image: c.image.clone(),
        ..Container::default()
    };
    *spec = PodSpec {
        containers: spec.containers.iter().map(keep).collect(),
        init_containers: spec
            .init_containers
            .as_ref()
            .map(|list| list.iter().map(keep).collect()),
        ephemeral_containers: spec.ephemeral_containers.as_ref().map(|list| {
            list.iter()
                .map(|c| EphemeralContainer {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    ..EphemeralContainer::default()
                })
                .collect()
        }),
        image_pull_secrets: spec.image_pull_secrets.take(),
        node_name: spec.node_name.take(),
        service_account_name: spec.service_account_name.take(),
        ..PodSpec::default()
    };
}

fn trim_template(template: &mut PodTemplateSpec) {
    if let Some(meta) = &mut template.metadata {
        trim_meta(meta);
        meta.labels = None;
    }
    if let Some(spec) = &mut template.spec {
        trim_pod_spec(spec);
    }
}

/// A view, and the count of changes it was built at.
type BuiltView = (u64, Arc<ClusterView>);

/// The caches discovery reads.
#[derive(Clone)]
pub struct Caches {
    pub namespaces: Store<Namespace>,
    pub pods: PodStore,
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub daemon_sets: Store<DaemonSet>,
    pub replica_sets: Store<ReplicaSet>,
    pub jobs: Store<Job>,
    pub cron_jobs: Store<CronJob>,
    /// Bumped by every event of every cache: a view built at the same
    /// count is still current.
    changes: Arc<AtomicU64>,
    /// The last view built.
    view: Arc<Mutex<Option<BuiltView>>>,
}

impl Caches {
    /// Caches no watch fills, for tests that drive a reconcile by hand.
    #[cfg(test)]
    pub(crate) fn empty() -> Caches {
        Caches {
            namespaces: reflector::store().0,
            pods: PodStore::new(Arc::default()).0,
            deployments: reflector::store().0,
            stateful_sets: reflector::store().0,
            daemon_sets: reflector::store().0,
            replica_sets: reflector::store().0,
            jobs: reflector::store().0,
            cron_jobs: reflector::store().0,
            changes: Arc::default(),
            view: Arc::default(),
        }
    }

    /// The cluster as discovery reads it, indexed once and shared by every
    /// reconcile until a cache changes: reconciling all policies after a
    /// change (or a restart) walks the pods and resolves their owners once,
    /// not once per policy.
    pub fn view(&self) -> Arc<ClusterView> {
        let mut last = self.view.lock().unwrap_or_else(|p| p.into_inner());
        // Read before the snapshot: a change during the build makes the
        // next call build again.
        let count = self.changes.load(Ordering::Acquire);
        if let Some((built_at, view)) = last.as_ref()
            && *built_at == count
        {
            return Arc::clone(view);
        }
        let view = Arc::new(ClusterView::new(self.snapshot()));
        *last = Some((count, Arc::clone(&view)));
        view
    }

    pub fn snapshot(&self) -> ClusterSnapshot {
        ClusterSnapshot {
            namespaces: self.namespaces.state(),
            pods: self.pods.state(),
            deployments: self.deployments.state(),
            stateful_sets: self.stateful_sets.state(),
            daemon_sets: self.daemon_sets.state(),
            replica_sets: self.replica_sets.state(),
            jobs: self.jobs.state(),
            cron_jobs: self.cron_jobs.state(),
        }
    }

    /// Waits for every cache's first full list.
    pub async fn wait_until_ready(&self) {
        let ready = [
            self.namespaces.wait_until_ready().await.is_ok(),
            self.pods.wait_until_ready().await,
            self.deployments.wait_until_ready().await.is_ok(),
            self.stateful_sets.wait_until_ready().await.is_ok(),
            self.daemon_sets.wait_until_ready().await.is_ok(),
            self.replica_sets.wait_until_ready().await.is_ok(),
            self.jobs.wait_until_ready().await.is_ok(),
            self.cron_jobs.wait_until_ready().await.is_ok(),
        ];
        if ready.contains(&false) {
            warn!("a cache stopped before its first list");
        }
    }
}

/// Pokes the trigger and counts a change.
#[derive(Clone)]
struct Changed {
    notify: Arc<Notify>,
    count: Arc<AtomicU64>,
}

impl Changed {
    fn poke(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_one();
    }
}

/// Starts one watch-backed cache; every change pokes `changed`.
fn spawn_cache<K>(
    client: &Client,
    changed: Changed,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim);
    tokio::spawn(async move {
        reflector::reflector(writer, stream)
            .for_each(|event| {
                match event {
                    Ok(_) => changed.poke(),
                    Err(e) => {
                        warn!(kind = K::kind(&()).as_ref(), error = %e, "watch failed; retrying")
                    }
                }
                futures::future::ready(())
            })
            .await;
    });
    store
}

/// Starts the pod cache (see `pod_cache`).
fn spawn_pods(client: &Client, changed: Changed, mut writer: PodStoreWriter) {
    let api: Api<Pod> = Api::all(client.clone());
    let stream = watcher(api, watcher::Config::default().any_semantic()).default_backoff();
    tokio::spawn(async move {
        stream
            .for_each(|event| {
                match event {
                    Ok(event) => {
                        writer.apply(&event);
                        changed.poke();
                    }
                    Err(e) => warn!(kind = "Pod", error = %e, "watch failed; retrying"),
                }
                futures::future::ready(())
            })
            .await;
    });
}

/// A ReplicaSet owned by a Deployment (or a Job by a CronJob) is only a
/// link in an owner chain: discovery and the webhook read the top-level
/// owner's labels and template, so its own are dropped. Clusters keep up to
/// ten old ReplicaSets per Deployment.
fn owned_by(meta: &ObjectMeta, kind: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.kind == kind)
}

/// Starts every cache. Returns the caches and a stream that yields at most
/// once per `interval` after anything changed.
pub fn start(client: &Client, interval: Duration) -> (Caches, mpsc::Receiver<()>) {
    let notify = Arc::new(Notify::new());
    let count = Arc::new(AtomicU64::new(0));
    let changed = Changed {
        notify: Arc::clone(&notify),
        count: Arc::clone(&count),
    };
    let (pods, pod_writer) = PodStore::new(Arc::new(Interner::default()));
    spawn_pods(client, changed.clone(), pod_writer);
    let caches = Caches {
        namespaces: spawn_cache(client, changed.clone(), |ns: &mut Namespace| {
            trim_meta(&mut ns.metadata);
            ns.spec = None;
            ns.status = None;
        }),
        pods,
        deployments: spawn_cache(client, changed.clone(), |d: &mut Deployment| {
            trim_meta(&mut d.metadata);
            d.status = None;
            if let Some(spec) = &mut d.spec {
                trim_template(&mut spec.template);
            }
        }),
        stateful_sets: spawn_cache(client, changed.clone(), |s: &mut StatefulSet| {
            trim_meta(&mut s.metadata);
            s.status = None;
            if let Some(spec) = &mut s.spec {
                trim_template(&mut spec.template);
                spec.volume_claim_templates = None;
            }
        }),
        daemon_sets: spawn_cache(client, changed.clone(), |d: &mut DaemonSet| {
            trim_meta(&mut d.metadata);
            d.status = None;
            if let Some(spec) = &mut d.spec {
                trim_template(&mut spec.template);
            }
        }),
        replica_sets: spawn_cache(client, changed.clone(), |r: &mut ReplicaSet| {
            trim_meta(&mut r.metadata);
            r.status = None;
            if owned_by(&r.metadata, "Deployment") {
                r.metadata.labels = None;
                if let Some(spec) = &mut r.spec {
                    spec.template = None;
                }
            } else if let Some(template) = r.spec.as_mut().and_then(|s| s.template.as_mut()) {
                trim_template(template);
            }
        }),
        jobs: spawn_cache(client, changed.clone(), |j: &mut Job| {
            trim_meta(&mut j.metadata);
            j.status = None;
            if owned_by(&j.metadata, "CronJob") {
                j.metadata.labels = None;
                if let Some(spec) = &mut j.spec {
                    spec.template = PodTemplateSpec::default();
                }
            } else if let Some(spec) = &mut j.spec {
                trim_template(&mut spec.template);
            }
        }),
        cron_jobs: spawn_cache(client, changed.clone(), |c: &mut CronJob| {
            trim_meta(&mut c.metadata);
            c.status = None;
            if let Some(template) = c
                .spec
                .as_mut()
                .and_then(|s| s.job_template.spec.as_mut())
                .map(|s| &mut s.template)
            {
                trim_template(template);
            }
        }),
        changes: count,
        view: Arc::default(),
    };
    let (mut tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            notify.notified().await;
            // A full channel means a trigger is already pending: enough.
            if let Err(e) = tx.try_send(())
                && e.is_disconnected()
            {
                break;
            }
            tokio::time::sleep(interval).await;
        }
        let _ = tx.close().await;
    });
    (caches, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_view_serves_every_reconcile_until_a_cache_changes() {
        let caches = Caches::empty();
        let first = caches.view();
        assert!(Arc::ptr_eq(&first, &caches.view()));
        let changed = Changed {
            notify: Arc::new(Notify::new()),
            count: Arc::clone(&caches.changes),
        };
        changed.poke();
        let second = caches.view();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&second, &caches.view()));
    }

    #[test]
    fn links_of_owner_chains_keep_only_their_owner() {
        let mut meta = ObjectMeta {
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    kind: "Deployment".into(),
                    name: "web".into(),
                    controller: Some(true),
                    ..Default::default()
                },
            ]),
            ..ObjectMeta::default()
        };
        assert!(owned_by(&meta, "Deployment"));
        assert!(!owned_by(&meta, "CronJob"));
        if let Some(owners) = &mut meta.owner_references {
            owners[0].controller = None;
        }
        assert!(!owned_by(&meta, "Deployment"));
    }
}
