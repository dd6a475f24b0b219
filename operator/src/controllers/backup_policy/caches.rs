//! Watch-backed caches of the objects discovery reads, trimmed to the
//! fields it needs so that thousands of pods stay small in memory, and a
//! coalesced "something changed" trigger for the controller.

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::{SinkExt as _, StreamExt as _};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateWaiting, ContainerStatus, EphemeralContainer,
    Namespace, Pod, PodSpec, PodStatus, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::warn;

use super::discovery::ClusterSnapshot;

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

fn trim_statuses(list: &mut Option<Vec<ContainerStatus>>) {
    if let Some(list) = list {
        for s in list.iter_mut() {
            let waiting = s
                .state
                .as_ref()
                .and_then(|st| st.waiting.as_ref())
                .map(|w| ContainerStateWaiting {
                    reason: w.reason.clone(),
                    message: None,
                });
            *s = ContainerStatus {
                name: std::mem::take(&mut s.name),
                image: std::mem::take(&mut s.image),
                image_id: std::mem::take(&mut s.image_id),
                state: waiting.map(|w| ContainerState {
                    waiting: Some(w),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            };
        }
    }
}

pub fn trim_pod(pod: &mut Pod) {
    trim_meta(&mut pod.metadata);
    if let Some(spec) = &mut pod.spec {
        trim_pod_spec(spec);
    }
    if let Some(status) = &mut pod.status {
        let mut kept = PodStatus {
            container_statuses: status.container_statuses.take(),
            init_container_statuses: status.init_container_statuses.take(),
            ephemeral_container_statuses: status.ephemeral_container_statuses.take(),
            ..PodStatus::default()
        };
        trim_statuses(&mut kept.container_statuses);
        trim_statuses(&mut kept.init_container_statuses);
        trim_statuses(&mut kept.ephemeral_container_statuses);
        *status = kept;
    }
}

/// The caches discovery reads.
#[derive(Clone)]
pub struct Caches {
    pub namespaces: Store<Namespace>,
    pub pods: Store<Pod>,
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub daemon_sets: Store<DaemonSet>,
    pub replica_sets: Store<ReplicaSet>,
    pub jobs: Store<Job>,
    pub cron_jobs: Store<CronJob>,
}

impl Caches {
    /// Caches no watch fills, for tests that drive a reconcile by hand.
    #[cfg(test)]
    pub(crate) fn empty() -> Caches {
        Caches {
            namespaces: reflector::store().0,
            pods: reflector::store().0,
            deployments: reflector::store().0,
            stateful_sets: reflector::store().0,
            daemon_sets: reflector::store().0,
            replica_sets: reflector::store().0,
            jobs: reflector::store().0,
            cron_jobs: reflector::store().0,
        }
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
        let results = [
            self.namespaces.wait_until_ready().await,
            self.pods.wait_until_ready().await,
            self.deployments.wait_until_ready().await,
            self.stateful_sets.wait_until_ready().await,
            self.daemon_sets.wait_until_ready().await,
            self.replica_sets.wait_until_ready().await,
            self.jobs.wait_until_ready().await,
            self.cron_jobs.wait_until_ready().await,
        ];
        if results.iter().any(Result::is_err) {
            warn!("a cache stopped before its first list");
        }
    }
}

/// Starts one watch-backed cache; every change pokes `changed`.
fn spawn_cache<K>(
    client: &Client,
    changed: Arc<Notify>,
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
                    Ok(_) => changed.notify_one(),
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

/// Starts every cache. Returns the caches and a stream that yields at most
/// once per `interval` after anything changed.
pub fn start(client: &Client, interval: Duration) -> (Caches, mpsc::Receiver<()>) {
    let changed = Arc::new(Notify::new());
    let caches = Caches {
        namespaces: spawn_cache(client, changed.clone(), |ns: &mut Namespace| {
            trim_meta(&mut ns.metadata);
            ns.spec = None;
            ns.status = None;
        }),
        pods: spawn_cache(client, changed.clone(), trim_pod),
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
            if let Some(template) = r.spec.as_mut().and_then(|s| s.template.as_mut()) {
                trim_template(template);
            }
        }),
        jobs: spawn_cache(client, changed.clone(), |j: &mut Job| {
            trim_meta(&mut j.metadata);
            j.status = None;
            if let Some(spec) = &mut j.spec {
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
    };
    let (mut tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            changed.notified().await;
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
