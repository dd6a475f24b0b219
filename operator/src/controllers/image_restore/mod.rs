//! The ImageRestore controller: turns a restore into registry copies (from
//! a backup target that holds the exact digest) and per-node export Jobs
//! (node-exporter on the node whose containerd holds the image), verifies
//! every restored digest at its destination, and reports per-image progress
//! in the status, in Events and in metrics.
//!
//! Deciding is pure and unit-tested (`planning`: nodes and sources, `jobs`:
//! the Job and Secret objects and the results they report, `status`:
//! conditions); `reconcile` does the IO.

mod backup_source;
pub(crate) mod candidates;
mod facts;
pub(crate) mod jobs;
pub(crate) mod node_destination;
mod node_evidence;
mod node_import;
pub(crate) mod node_jobs;
mod node_secret;
mod node_source;
mod objects;
pub(crate) mod planning;
mod reconcile;
mod scope;
pub(crate) mod status;
mod stuck_pods;
mod verify;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::hash::{Hash as _, Hasher as _};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt};
use lifeboat_api::ImageRestore;

use super::WrittenStatuses;
use crate::context::Context;
use crate::error::OperatorError;
use jobs::JobSettings;
use planning::{Exportable, Holdings};

/// Everything the restore reconciler shares across reconciles.
pub(crate) struct RestoreController {
    pub(crate) context: Arc<Context>,
    pub(crate) recorder: Recorder,
    pub(crate) settings: JobSettings,
    /// What nodes said they hold: (node, image argument) → answer and when.
    /// Only an optimisation (a restarted operator asks again).
    pub(crate) inventory: Mutex<HashMap<(String, String), (Exportable, Instant)>>,
    /// The last status written per restore (by uid): a reconcile started
    /// by a Job event right after a write must not act on the watch
    /// cache's older status (that would repeat Events and metrics).
    pub(crate) written: WrittenStatuses<lifeboat_api::ImageRestoreStatus>,
    /// Nodes each restore (uid) tried for an image (its argument), or
    /// that answered no to it: never asked again by that restore, and the
    /// count bounds the candidates tried before widening.
    pub(crate) tried: Mutex<HashMap<(String, String), BTreeSet<String>>>,
    /// The controller's cache of restores, to forget deleted ones.
    pub(crate) restores: std::sync::OnceLock<kube::runtime::reflector::Store<ImageRestore>>,
}

impl RestoreController {
    pub(crate) fn new(context: Arc<Context>) -> RestoreController {
        let config = &context.config;
        let settings = JobSettings {
            namespace: config.namespace.clone(),
            image: config.node_exporter_image.clone(),
            pull_policy: config.node_exporter_pull_policy.clone(),
            socket_template: config.containerd_socket.clone(),
            content_store_template: config.containerd_content_store.clone(),
            tolerations: config.node_exporter_tolerations.clone(),
            host_network: config.node_exporter_host_network,
            image_pull_secrets: config.image_pull_secrets.clone(),
            plain_http_registries: config.plain_http_registries.clone(),
        };
        RestoreController {
            recorder: Recorder::new(context.client.clone(), context.reporter.clone()),
            settings,
            context,
            inventory: Mutex::new(HashMap::new()),
            written: WrittenStatuses::default(),
            tried: Mutex::new(HashMap::new()),
            restores: std::sync::OnceLock::new(),
        }
    }

    /// A controller around `client` with the default configuration.
    #[cfg(test)]
    pub(crate) fn for_tests(client: kube::Client) -> RestoreController {
        let config = crate::config::OperatorConfig::from_lookup(|_| None)
            .unwrap_or_else(|e| panic!("default configuration: {e}"));
        let metrics = crate::telemetry::Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}"));
        RestoreController::new(Arc::new(Context::new(client, config, metrics)))
    }

    /// The fresh answers nodes gave.
    pub(crate) fn known_holdings(&self, ttl: Duration) -> Holdings {
        let mut cache = self.inventory.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, (_, at)| node_source::fresh(*at, ttl));
        node_source::holdings_from(&cache, ttl)
    }

    /// The newest status of a restore: the one last written, else the
    /// watch cache's.
    pub(crate) fn latest_status(&self, restore: &ImageRestore) -> lifeboat_api::ImageRestoreStatus {
        let uid = restore.uid().unwrap_or_default();
        self.written.newest(&uid, restore.status.as_ref())
    }

    /// Forgets a deleted restore.
    pub(crate) fn forget(&self, uid: &str) {
        self.written.forget(uid);
        self.tried
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(u, _), _| u != uid);
    }

    /// Drops what was remembered about restores that no longer exist.
    pub(crate) fn forget_deleted_restores(&self) {
        let Some(store) = self.restores.get() else {
            return;
        };
        let live: std::collections::HashSet<String> =
            store.state().iter().filter_map(|r| r.uid()).collect();
        self.written.retain_live(&live);
        self.tried
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(uid, _), _| live.contains(uid));
    }

    /// Records that a restore tried `node` for `image` (or that the node
    /// said no).
    pub(crate) fn record_try(&self, uid: &str, image: &str, node: &str) {
        let mut tried = self.tried.lock().unwrap_or_else(|p| p.into_inner());
        tried
            .entry((uid.to_owned(), image.to_owned()))
            .or_default()
            .insert(node.to_owned());
    }

    /// The nodes a restore tried, per image.
    pub(crate) fn tried(&self, uid: &str) -> BTreeMap<String, BTreeSet<String>> {
        let tried = self.tried.lock().unwrap_or_else(|p| p.into_inner());
        tried
            .iter()
            .filter(|((u, _), _)| u == uid)
            .map(|((_, image), nodes)| (image.clone(), nodes.clone()))
            .collect()
    }

    /// Records a node's answers.
    pub(crate) fn remember(
        &self,
        node: &str,
        holdings: std::collections::BTreeMap<String, Exportable>,
    ) {
        let now = Instant::now();
        let mut cache = self.inventory.lock().unwrap_or_else(|p| p.into_inner());
        for (image, exportable) in holdings {
            cache.insert((node.to_owned(), image), (exportable, now));
        }
    }
}

/// The restore a Job or its pod belongs to (its annotation: the restore an
/// export Job works for, or the one whose inventory it is).
fn restore_of<K: ResourceExt>(object: K) -> Option<ObjectRef<ImageRestore>> {
    let text = object.annotations().get(jobs::ANNOTATION_RESTORE)?;
    let (namespace, name) = text.split_once('/')?;
    Some(ObjectRef::new(name).within(namespace))
}

/// What of a restore is worth a reconcile: a new object (uid), a new
/// spec (generation), its deletion starting. Not its status: the operator
/// is its only writer, and each write used to come back as one more
/// reconcile that had nothing to do. Nor its finalizers: the operator adds
/// its own in the reconcile that goes on to do the work (a tenant's restore
/// from a backup took 2 reconciles instead of 1), and one removed by
/// someone else is added again by the next reconcile.
fn restore_changed(restore: &ImageRestore) -> Option<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    restore.metadata.uid.hash(&mut hasher);
    restore.metadata.generation.hash(&mut hasher);
    restore
        .metadata
        .deletion_timestamp
        .is_some()
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// The Job events a restore waits for: a Job finished (its result is to
/// be read) or an export Job deleted (by someone else: it is created
/// again). A Job created or making progress changes nothing a reconcile
/// decides from; the inventory Jobs the operator deletes itself neither.
fn job_worth_a_look(event: watcher::Event<Job>) -> Option<Job> {
    match event {
        watcher::Event::Apply(job) | watcher::Event::InitApply(job)
            if facts::job_finished(&job).is_some() =>
        {
            Some(job)
        }
        watcher::Event::Delete(job)
            if matches!(
                job.labels().get(jobs::LABEL_COMPONENT).map(String::as_str),
                Some("export" | node_jobs::IMPORT_COMPONENT)
            ) =>
        {
            Some(job)
        }
        _ => None,
    }
}

/// The pod events a restore waits for: a Job's pod that exited 0 with its
/// report, about a second before its Job is marked Complete (the reconcile
/// then reads the result from the pod, `facts::job_state`).
fn pod_worth_a_look(event: watcher::Event<Pod>) -> Option<Pod> {
    match event {
        watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)
            if pod_exited_with_success(&pod) =>
        {
            Some(pod)
        }
        _ => None,
    }
}

fn pod_exited_with_success(pod: &Pod) -> bool {
    facts::node_exporter_exit(pod).is_some_and(|t| t.exit_code == lifeboat_node_protocol::exit::OK)
}

/// Runs the controller until its watch of restores ends.
pub(crate) async fn run(context: Arc<Context>) {
    let client = context.client.clone();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &context.config.namespace);
    let context_namespace = context.config.namespace.clone();
    let controller = Arc::new(RestoreController::new(context));
    // Decoded per object: one undecodable restore is reported on itself
    // instead of stalling the watch of all of them. The cache sees every
    // change (a reconcile reads the newest restore); only changes worth a
    // reconcile trigger one.
    let (store, restores) = super::lenient_watch::watch::<ImageRestore>(
        controller.context.clone(),
        "ImageRestore",
        watcher::Config::default().any_semantic(),
    );
    let restore_changes = restores.predicate_filter(restore_changed, Default::default());
    let _ = controller.restores.set(store.clone());
    // Serve Jobs too: one that ends without serving (its node does not
    // hold the image) sends its import to another holder at once.
    let selector = format!(
        "{}={},{} in (export,inventory,{},{})",
        jobs::LABEL_MANAGED_BY,
        jobs::MANAGED_BY,
        jobs::LABEL_COMPONENT,
        node_jobs::IMPORT_COMPONENT,
        node_jobs::SERVE_COMPONENT
    );
    let job_changes = watcher(
        jobs,
        watcher::Config::default().labels(&selector).any_semantic(),
    )
    .default_backoff()
    .try_filter_map(|event| std::future::ready(Ok(job_worth_a_look(event))));
    // The Jobs' pods, by the labels their template gives them.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &context_namespace);
    let pod_changes = watcher(
        pods,
        watcher::Config::default().labels(&selector).any_semantic(),
    )
    .default_backoff()
    .try_filter_map(|event| std::future::ready(Ok(pod_worth_a_look(event))));
    Controller::for_stream(restore_changes, store)
        .watches_stream(job_changes, restore_of)
        .watches_stream(pod_changes, restore_of)
        .with_config(kube::runtime::controller::Config::default().concurrency(4))
        .shutdown_on_signal()
        .run(
            |restore, controller| {
                let name = kube::ResourceExt::name_any(restore.as_ref());
                super::isolate_panics(
                    "ImageRestore",
                    name,
                    reconcile::reconcile(restore, controller),
                )
            },
            error_policy,
            controller,
        )
        .for_each(|result| super::log_outcome("ImageRestore", result))
        .await;
}

fn error_policy(
    restore: Arc<ImageRestore>,
    error: &OperatorError,
    controller: Arc<RestoreController>,
) -> Action {
    super::after_error(
        &controller.context,
        "ImageRestore",
        &kube::ResourceExt::name_any(restore.as_ref()),
        error,
        Duration::from_secs(10),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restore(generation: i64, uid: &str) -> ImageRestore {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "lifeboat.dev/v1alpha1", "kind": "ImageRestore",
            "metadata": {"name": "r", "namespace": "shop", "uid": uid, "generation": generation},
            "spec": {"images": ["registry.example/app:1"]},
        }))
        .unwrap()
    }

    #[test]
    fn a_restore_is_worth_a_reconcile_when_it_is_new_its_spec_changes_or_it_is_deleted() {
        let base = restore(1, "u1");
        let mut with_status = base.clone();
        with_status.status = Some(lifeboat_api::ImageRestoreStatus {
            observed_generation: 1,
            ..Default::default()
        });
        with_status.metadata.resource_version = Some("42".into());
        assert_eq!(restore_changed(&base), restore_changed(&with_status));
        assert_ne!(restore_changed(&base), restore_changed(&restore(2, "u1")));
        let mut deleting = base.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_ne!(restore_changed(&base), restore_changed(&deleting));
        // A namesake created after a deletion is new.
        assert_ne!(restore_changed(&base), restore_changed(&restore(1, "u2")));
        // Its own status write and finalizer do not wake it.
        let mut finalized = base.clone();
        finalized.metadata.finalizers = Some(vec!["lifeboat.dev/cleanup".into()]);
        assert_eq!(restore_changed(&base), restore_changed(&finalized));
    }

    fn job(component: &str, condition: Option<&str>) -> Job {
        let conditions: Vec<serde_json::Value> = condition
            .map(|c| serde_json::json!({"type": c, "status": "True"}))
            .into_iter()
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "j",
                "labels": {"app.kubernetes.io/component": component},
                "annotations": {"lifeboat.dev/restore": "shop/r"},
            },
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    #[test]
    fn finished_jobs_and_vanished_export_jobs_wake_their_restore_nothing_else() {
        use watcher::Event;
        let woken = |event: Event<Job>| job_worth_a_look(event).is_some();
        assert!(woken(Event::Apply(job("export", Some("Complete")))));
        assert!(woken(Event::Apply(job("export", Some("Failed")))));
        assert!(woken(Event::InitApply(job("inventory", Some("Complete")))));
        assert!(!woken(Event::Apply(job("export", None))), "running");
        assert!(!woken(Event::Apply(job("export", Some("Suspended")))));
        assert!(woken(Event::Delete(job("export", None))));
        assert!(woken(Event::Apply(job("import", Some("Complete")))));
        assert!(woken(Event::Delete(job("import", None))));
        assert!(!woken(Event::Delete(job("serve", None))));
        assert!(!woken(Event::Delete(job("inventory", Some("Complete")))));
        assert!(!woken(Event::Init) && !woken(Event::InitDone));
        let restore = restore_of(job("inventory", None)).unwrap();
        assert_eq!(
            (restore.name.as_str(), restore.namespace.as_deref()),
            ("r", Some("shop"))
        );
    }

    fn job_pod(state: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "j-x1",
                "labels": {"app.kubernetes.io/component": "export", "job-name": "j"},
                "annotations": {"lifeboat.dev/restore": "shop/r"},
            },
            "status": {"containerStatuses": [{
                "name": "node-exporter", "image": "ne", "imageID": "", "ready": false,
                "restartCount": 0, "state": state,
            }]},
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_that_exited_0_wakes_its_restore_before_its_job_is_complete_nothing_else() {
        use watcher::Event;
        let exited = |code: i32| serde_json::json!({"terminated": {"exitCode": code}});
        let woken = |event: Event<Pod>| pod_worth_a_look(event).is_some();
        assert!(woken(Event::Apply(job_pod(exited(0)))));
        assert!(woken(Event::InitApply(job_pod(exited(0)))));
        assert!(!woken(Event::Apply(job_pod(exited(3)))), "not on the node");
        assert!(!woken(Event::Apply(job_pod(exited(1)))), "failed");
        assert!(!woken(Event::Apply(job_pod(
            serde_json::json!({"running": {}})
        ))));
        assert!(
            !woken(Event::Delete(job_pod(exited(0)))),
            "gone: nothing to read"
        );
        let restore = restore_of(job_pod(exited(0))).unwrap();
        assert_eq!(
            (restore.name.as_str(), restore.namespace.as_deref()),
            ("r", Some("shop"))
        );
    }
}
