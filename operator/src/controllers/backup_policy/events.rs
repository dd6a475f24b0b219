//! Step 5 of a policy's reconcile: tell people and dashboards. Events on
//! the policy (and on pods that fail to pull a lost image) and metrics.
//! What was already said is remembered in the policy's memory, so each
//! problem, loss and recovery is announced once. A failed publish is only
//! logged (see `controllers::publish`): the status is the record.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::EventType;
use kube::{Resource as _, ResourceExt as _};
use lifeboat_api::ImageBackupPolicy;
use lifeboat_api::backup_policy::RunResult;
use opentelemetry::KeyValue;
use tracing::warn;

use super::BackupController;
use super::act::RetentionOutcome;
use super::decide::RunTally;
use super::discovery::Inventory;
use super::facts::Problem;
use super::memory::PolicyMemory;
use super::status::{Evaluation, counts};
use crate::telemetry::object_labels;

const KIND: &str = "ImageBackupPolicy";

/// The policy's metric labels (kind, namespace, name).
pub(crate) fn labels(policy: &ImageBackupPolicy) -> [KeyValue; 3] {
    object_labels(
        KIND,
        &policy.namespace().unwrap_or_default(),
        &policy.name_any(),
    )
}

async fn publish(
    controller: &BackupController,
    regarding: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    crate::controllers::publish(&controller.recorder, regarding, type_, reason, action, note).await;
}

/// Counts a reconcile.
pub(crate) fn reconciled(controller: &BackupController) {
    controller
        .context
        .metrics
        .reconciles
        .add(1, &[KeyValue::new("kind", KIND)]);
}

/// A problem that stops the policy: one Warning event per distinct
/// reason and message.
pub(crate) async fn problem(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    memory: &mut PolicyMemory,
    problem: &Problem,
) {
    let announced = format!("{}: {}", problem.reason, problem.message);
    if memory.announced_problem.as_deref() != Some(announced.as_str()) {
        publish(
            controller,
            &policy.object_ref(&()),
            EventType::Warning,
            problem.reason,
            "Reconcile",
            problem.message.clone(),
        )
        .await;
        memory.announced_problem = Some(announced);
    }
}

/// A run starts.
pub(crate) async fn run_started(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    message: String,
) {
    publish(
        controller,
        &policy.object_ref(&()),
        EventType::Normal,
        "BackupStarted",
        "Backup",
        message,
    )
    .await;
}

/// A run finished: its metrics and its event.
pub(crate) async fn run_finished(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    tally: &RunTally,
    completed: DateTime<Utc>,
) {
    let labels = labels(policy);
    let metrics = &controller.context.metrics;
    let result = tally.result();
    let mut attributes = labels.to_vec();
    attributes.push(KeyValue::new("result", format!("{result:?}")));
    metrics.backup_runs.add(1, &attributes);
    if result == RunResult::Succeeded {
        #[allow(clippy::cast_precision_loss)] // seconds since 1970 fit a f64 exactly
        metrics.policies.set_last_success(
            &policy.namespace().unwrap_or_default(),
            &policy.name_any(),
            completed.timestamp() as f64,
        );
    }
    let (type_, reason) = match result {
        RunResult::Succeeded => (EventType::Normal, "BackupSucceeded"),
        _ => (EventType::Warning, "BackupFailed"),
    };
    publish(
        controller,
        &policy.object_ref(&()),
        type_,
        reason,
        "Backup",
        tally.summary(),
    )
    .await;
}

/// Events and metrics for a retention pass.
pub(crate) async fn retention(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    outcome: &RetentionOutcome,
) {
    let labels = labels(policy);
    let metrics = &controller.context.metrics;
    if !outcome.deleted.is_empty() {
        metrics
            .retention_deleted
            .add(outcome.deleted.len() as u64, &labels);
        publish(
            controller,
            &policy.object_ref(&()),
            EventType::Normal,
            "RetentionDeleted",
            "Retention",
            format!(
                "deleted {} digests: {}",
                outcome.deleted.len(),
                outcome.deleted.join(", ")
            ),
        )
        .await;
    }
    if let Some(first) = outcome.failures.first() {
        metrics
            .retention_failures
            .add(outcome.failures.len() as u64, &labels);
        for failure in &outcome.failures {
            warn!(policy = %policy.name_any(), %failure, "retention step failed");
        }
        publish(
            controller,
            &policy.object_ref(&()),
            EventType::Warning,
            "RetentionFailed",
            "Retention",
            format!(
                "{} retention steps failed (those repositories are left alone until the next pass); first: {first}",
                outcome.failures.len(),
            ),
        )
        .await;
    }
}

fn pod_reference(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        ..ObjectReference::default()
    }
}

/// Warning events for newly missing images (on the policy and the pods
/// that fail to pull them), Normal ones when a lost image is held by a
/// backup target or comes back.
pub(crate) async fn losses(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    inventory: &Inventory,
    memory: &mut PolicyMemory,
) {
    let missing: BTreeSet<String> = memory
        .source
        .iter()
        .filter(|(_, s)| s.missing_since.is_some())
        .map(|(k, _)| k.clone())
        .collect();
    newly_lost(controller, policy, inventory, &missing, memory).await;
    pods_failing_to_pull(controller, policy, inventory, &missing, memory).await;
    back_in_source(controller, policy, inventory, &missing, memory).await;
    outages(controller, policy, inventory, memory).await;
}

/// Where a pod can get an image its source cannot serve: the backup
/// targets that hold it and the nodes that run it.
fn where_to_get(image: &super::discovery::ImageUse, memory: &PolicyMemory, key: &str) -> String {
    let targets = memory.holders(key);
    let nodes: Vec<&String> = image.nodes.iter().take(8).collect();
    match (targets.is_empty(), nodes.is_empty()) {
        (true, true) => "no backup target or node is known to hold it".to_owned(),
        _ => format!("backup targets holding it: {targets:?}; nodes holding it: {nodes:?}"),
    }
}

/// Source outages, said apart from losses: SourceUnreachable (Warning) on
/// the policy once per image and outage, and on each pod that fails to
/// pull such an image; SourceReachable when the registry answers again.
async fn outages(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    inventory: &Inventory,
    memory: &mut PolicyMemory,
) {
    let regarding = policy.object_ref(&());
    let unreachable: BTreeSet<String> = inventory
        .images
        .keys()
        .filter(|k| memory.is_unreachable(k))
        .cloned()
        .collect();
    for key in unreachable.difference(&memory.announced_unreachable.clone()) {
        let (Some(image), Some(outage)) = (
            inventory.images.get(key),
            memory.source.get(key).and_then(|s| s.outage.as_ref()),
        ) else {
            continue;
        };
        let note = format!(
            "the source registry of {} cannot be reached ({}: {}); {}",
            image.reference,
            outage.reason,
            outage.message,
            where_to_get(image, memory, key)
        );
        publish(
            controller,
            &regarding,
            EventType::Warning,
            "SourceUnreachable",
            "CheckSource",
            note,
        )
        .await;
        memory.announced_unreachable.insert(key.clone());
    }
    for key in &unreachable {
        let Some(image) = inventory.images.get(key) else {
            continue;
        };
        for (pod_namespace, pod_name) in &image.pull_failures {
            let told = (pod_namespace.clone(), pod_name.clone(), key.clone());
            if memory.announced_outage_pods.contains(&told) {
                continue;
            }
            let note = format!(
                "the source registry of {} cannot be reached; {} (policy {}/{})",
                image.reference,
                where_to_get(image, memory, key),
                policy.namespace().unwrap_or_default(),
                policy.name_any()
            );
            publish(
                controller,
                &pod_reference(pod_namespace, pod_name),
                EventType::Warning,
                "SourceUnreachable",
                "CheckSource",
                note,
            )
            .await;
            memory.announced_outage_pods.insert(told);
        }
    }
    let back: Vec<String> = memory
        .announced_unreachable
        .iter()
        .filter(|k| !unreachable.contains(*k))
        .cloned()
        .collect();
    for key in back {
        // Still selected and answered: the outage is over (a 404 is told
        // as ImageMissing by `newly_lost`).
        if let Some(image) = inventory.images.get(&key)
            && !memory.is_missing(&key)
            && memory.source.contains_key(&key)
        {
            publish(
                controller,
                &regarding,
                EventType::Normal,
                "SourceReachable",
                "CheckSource",
                format!("the source registry of {} answers again", image.reference),
            )
            .await;
        }
        memory.announced_unreachable.remove(&key);
    }
    memory
        .announced_outage_pods
        .retain(|(_, _, key)| unreachable.contains(key));
}

/// Each image lost since the last announcement: ImageMissing, and
/// ImageProtected when a target holds it.
async fn newly_lost(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    inventory: &Inventory,
    missing: &BTreeSet<String>,
    memory: &mut PolicyMemory,
) {
    let regarding = policy.object_ref(&());
    let new: Vec<String> = missing
        .difference(&memory.announced_missing)
        .cloned()
        .collect();
    for key in new {
        let Some(image) = inventory.images.get(&key) else {
            continue;
        };
        let held_by = memory.holders(&key);
        let nodes: Vec<&String> = image.nodes.iter().collect();
        let note = format!(
            "{} is gone from its source registry; used by {} workloads; backup targets holding it: {:?}; nodes running it: {:?}",
            image.reference,
            image.workloads.len(),
            held_by,
            nodes
        );
        publish(
            controller,
            &regarding,
            EventType::Warning,
            "ImageMissing",
            "CheckSource",
            note,
        )
        .await;
        if !held_by.is_empty() {
            publish(
                controller,
                &regarding,
                EventType::Normal,
                "ImageProtected",
                "CheckSource",
                format!(
                    "{} is lost at its source but held by backup targets {held_by:?}",
                    image.reference
                ),
            )
            .await;
        }
        memory.announced_missing.insert(key);
    }
}

/// Every pod failing to pull a missing image hears it once, also pods that
/// start failing after the image was first reported.
async fn pods_failing_to_pull(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    inventory: &Inventory,
    missing: &BTreeSet<String>,
    memory: &mut PolicyMemory,
) {
    for key in missing {
        let Some(image) = inventory.images.get(key) else {
            continue;
        };
        for (pod_namespace, pod_name) in &image.pull_failures {
            let told = (pod_namespace.clone(), pod_name.clone(), key.clone());
            if memory.announced_pods.contains(&told) {
                continue;
            }
            publish(
                controller,
                &pod_reference(pod_namespace, pod_name),
                EventType::Warning,
                "ImageMissing",
                "CheckSource",
                format!(
                    "{} is gone from its source registry; backup targets holding it: {:?} (policy {}/{})",
                    image.reference,
                    memory.holders(key),
                    policy.namespace().unwrap_or_default(),
                    policy.name_any()
                ),
            )
            .await;
            memory.announced_pods.insert(told);
        }
    }
    memory
        .announced_pods
        .retain(|(_, _, key)| missing.contains(key));
}

/// Each announced image that is in its source registry again:
/// ImageAvailable.
async fn back_in_source(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    inventory: &Inventory,
    missing: &BTreeSet<String>,
    memory: &mut PolicyMemory,
) {
    let back: Vec<String> = memory
        .announced_missing
        .iter()
        .filter(|k| !missing.contains(*k))
        .cloned()
        .collect();
    for key in back {
        if let Some(image) = inventory.images.get(&key) {
            publish(
                controller,
                &policy.object_ref(&()),
                EventType::Normal,
                "ImageAvailable",
                "CheckSource",
                format!(
                    "{} is available in its source registry again",
                    image.reference
                ),
            )
            .await;
        }
        memory.announced_missing.remove(&key);
    }
}

/// The policy's images by state (protected, pending, failed, missing,
/// unreachable).
pub(crate) fn image_metrics(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    evaluation: &Evaluation,
) {
    let counts = counts(&evaluation.images, evaluation.target_count);
    controller.context.metrics.policies.set_images(
        &policy.namespace().unwrap_or_default(),
        &policy.name_any(),
        counts
            .labelled()
            .map(|(state, value)| (state, u64::try_from(value).unwrap_or(0)))
            .to_vec(),
    );
}
