//! The ImageBackupPolicy controller: discovers the images selected
//! workloads run, copies them into every backup target, watches that they
//! stay available in their source registries, and reports it all in the
//! policy's status, in Events and in metrics.
//!
//! A reconcile is a pipeline (`reconcile` shows it top to bottom): gather
//! the facts (`facts`, reading `caches` through `discovery`, credentials
//! through `registry`) → decide what to do (`decide`, `plan`) → act
//! (`act`: registry checks, copies, `retention`) → decide the new status
//! (`decide`, `status`) → tell (`events`) → write the status once. Deciding
//! is pure and unit-tested; `memory` is what reconciles of a policy learn.

mod act;
pub(crate) mod caches;
mod decide;
pub(crate) mod discovery;
mod events;
mod facts;
pub(crate) mod interner;
mod memory;
mod outage_restore;
mod plan;
pub(crate) mod pod_cache;
mod published;
mod reconcile;
mod registry;
mod restore_link;
mod retention;
mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use lifeboat_api::ImageBackupPolicy;
use tracing::info;

use crate::context::Context;
use crate::controllers::WrittenStatuses;
use crate::copy_queue::{Caps, CopyQueue, Owner};
use crate::error::OperatorError;
use memory::PolicyMemory;

/// Everything the policy reconciler shares across reconciles.
pub(crate) struct BackupController {
    pub(crate) context: Arc<Context>,
    pub(crate) caches: caches::Caches,
    pub(crate) recorder: Recorder,
    /// What each policy's earlier reconciles learned; keyed by the policy's uid.
    /// Only an optimisation: the registries are the truth, and a restarted
    /// operator relearns all of it (without copying bytes again).
    pub(crate) memory: Mutex<HashMap<String, PolicyMemory>>,
    /// The status last written per policy (by uid), and the one writer.
    pub(crate) written: WrittenStatuses<lifeboat_api::ImageBackupPolicyStatus>,
    /// Where copies run, outside the reconciles, with fair shares per
    /// namespace and per route (see `copy_queue`).
    pub(crate) copies: Arc<CopyQueue<registry::CopyResult>>,
    /// The controller's cache of policies, to forget deleted ones.
    pub(crate) policies: std::sync::OnceLock<kube::runtime::reflector::Store<ImageBackupPolicy>>,
}

impl BackupController {
    /// A controller on `client` with empty caches and default settings,
    /// for tests that drive a reconcile against a scripted API server.
    #[cfg(test)]
    pub(crate) fn for_tests(client: kube::Client) -> BackupController {
        let config = crate::config::OperatorConfig::from_lookup(|_| None)
            .unwrap_or_else(|e| panic!("default configuration: {e}"));
        let metrics = crate::telemetry::Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}"));
        let context = Arc::new(Context::new(client.clone(), config, metrics));
        let (copies, _woken) = CopyQueue::new(
            caps(&context.config),
            registry::verdict,
            context.metrics.clone(),
        );
        BackupController {
            recorder: Recorder::new(client, context.reporter.clone()),
            copies,
            context,
            caches: caches::Caches::empty(),
            memory: Mutex::new(HashMap::new()),
            written: WrittenStatuses::default(),
            policies: std::sync::OnceLock::new(),
        }
    }

    /// Drops what was learned about policies that no longer exist.
    pub(crate) fn forget_deleted_policies(&self) {
        let Some(store) = self.policies.get() else {
            return;
        };
        let policies = store.state();
        let live: std::collections::HashSet<String> = policies
            .iter()
            .filter_map(|p| kube::ResourceExt::uid(p.as_ref()))
            .collect();
        let live_names: std::collections::HashSet<(String, String)> = policies
            .iter()
            .map(|p| {
                (
                    kube::ResourceExt::namespace(p.as_ref()).unwrap_or_default(),
                    kube::ResourceExt::name_any(p.as_ref()),
                )
            })
            .collect();
        self.context.metrics.policies.retain(|namespace, name| {
            live_names.contains(&(namespace.to_owned(), name.to_owned()))
        });
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, _| live.contains(key));
        self.written.retain_live(&live);
        self.context.admission.retain(&live);
        self.copies.forget_except(&live);
    }
}

/// The copy queue's caps, from the operator's config.
fn caps(config: &crate::config::OperatorConfig) -> Caps {
    Caps {
        total: config.max_concurrent_copies,
        per_route: config.copies_per_route,
        per_namespace: config.copies_per_namespace,
        route_limits: Default::default(),
    }
}

/// How long after a change the caches wait before triggering again.
const TRIGGER_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the controller until its watch of policies ends.
pub(crate) async fn run(context: Arc<Context>) {
    let client = context.client.clone();
    let (caches, changes) = caches::start(&client, TRIGGER_INTERVAL);
    caches.wait_until_ready().await;
    info!("backup policy caches are ready");
    let (copies, woken) = CopyQueue::new(
        caps(&context.config),
        registry::verdict,
        context.metrics.clone(),
    );
    tokio::spawn(copies.clone().run());
    let controller = Arc::new(BackupController {
        recorder: Recorder::new(client.clone(), context.reporter.clone()),
        copies,
        context,
        caches,
        memory: Mutex::new(HashMap::new()),
        written: WrittenStatuses::default(),
        policies: std::sync::OnceLock::new(),
    });
    // Decoded per object: one undecodable policy is reported on itself
    // instead of stalling the watch of all of them.
    let (store, policies) = super::lenient_watch::watch::<ImageBackupPolicy>(
        controller.context.clone(),
        "ImageBackupPolicy",
        watcher::Config::default().any_semantic(),
    );
    let _ = controller.policies.set(store.clone());
    controller
        .context
        .admission
        .attach(controller.caches.clone(), store.clone());
    let existing = store.clone();
    controller
        .context
        .metrics
        .policies
        .report_only_existing(move |namespace, name| {
            existing
                .get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
                .is_some()
        });
    // Pods an Ensure review holds back wake the policies that wait on them.
    let admission_wakes = controller.context.admission.take_wakes().map_or_else(
        || futures::stream::empty().boxed(),
        futures::StreamExt::boxed,
    );
    Controller::for_stream(policies, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(4))
        .reconcile_all_on(changes)
        .reconcile_on(admission_wakes)
        // A policy whose queued copies have all ended looks at their results.
        .reconcile_on(woken.map(|owner: Owner| {
            ObjectRef::<ImageBackupPolicy>::new(&owner.name).within(&owner.namespace)
        }))
        .shutdown_on_signal()
        .run(
            |policy, controller| {
                let name = kube::ResourceExt::name_any(policy.as_ref());
                super::isolate_panics(
                    "ImageBackupPolicy",
                    name,
                    reconcile::reconcile(policy, controller),
                )
            },
            error_policy,
            controller,
        )
        .for_each(|result| super::log_outcome("ImageBackupPolicy", result))
        .await;
}

fn error_policy(
    policy: Arc<ImageBackupPolicy>,
    error: &OperatorError,
    controller: Arc<BackupController>,
) -> Action {
    super::after_error(
        &controller.context,
        "ImageBackupPolicy",
        &kube::ResourceExt::name_any(policy.as_ref()),
        error,
        Duration::from_secs(30),
    )
}
