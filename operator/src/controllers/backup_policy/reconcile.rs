//! One reconcile of one ImageBackupPolicy: the IO around the pure steps.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use lifeboat_api::backup_policy::{
    DryRunPlan, ImageBackupPolicyStatus, MAX_PLAN_ENTRIES, REQUESTED_AT_ANNOTATION, RunRecord,
    RunResult, RunTrigger,
};
use lifeboat_api::conditions::{find_condition, types};
use lifeboat_api::template::TemplateContext;
use lifeboat_api::time::{from_k8s_time, to_k8s_time};
use lifeboat_api::validation::validate_policy_spec;
use lifeboat_api::{ImageBackupPolicy, ImageReference};
use opentelemetry::KeyValue;
use registry_transfer::{ImageRef, RepositoryRef, Transfer, TransferError};
use tracing::{debug, info, warn};

use super::BackupController;
use super::decide::{
    self, Failure, PolicyMemory, RunInputs, SourceState, Verified, image_states, needs_copy,
    source_checks_due,
};
use super::discovery::{DigestHints, Inventory, Scope, discover, running_digests};
use super::plan::{CopyTask, PlanTarget, copy_tasks};
use super::registry::{self, copy_task, holds, policy_settings};
use super::retention::{
    Backup, DeleteReason, InUse, RetentionTiming, Rules, in_use_digests, lifeboat_tag_digest,
    parse_created, plan_deletions, retention_due,
};
use super::status::{
    Evaluation, blocked_status, counts, evaluated_status, reconciling_status, stalled_status,
    whole_seconds,
};
use crate::error::OperatorError;
use crate::registry_access::{image_ref, transfer_config};
use crate::telemetry::object_labels;

const KIND: &str = "ImageBackupPolicy";
/// Copies of one policy running at once (the global bound applies too).
const COPIES_PER_POLICY: usize = 4;
/// Source checks per registry at once.
const CHECKS_PER_REGISTRY: usize = 2;
/// Longest wait before a policy is looked at again.
const MAX_REQUEUE: Duration = Duration::from_secs(300);

pub async fn reconcile(
    policy: Arc<ImageBackupPolicy>,
    controller: Arc<BackupController>,
) -> Result<Action, OperatorError> {
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    // By uid: a policy deleted and created again under the same name is a
    // new policy and must not inherit what the old one verified or saw.
    let key = policy
        .uid()
        .unwrap_or_else(|| format!("{namespace}/{name}"));
    controller
        .context
        .metrics
        .reconciles
        .add(1, &[KeyValue::new("kind", KIND)]);
    let mut memory = {
        let mut all = controller.memory.lock().unwrap_or_else(|p| p.into_inner());
        all.remove(&key).unwrap_or_default()
    };
    let result = reconcile_with(&policy, &controller, &namespace, &name, &mut memory).await;
    controller.forget_deleted_policies();
    controller
        .memory
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, memory);
    result
}

/// The newest status of a policy: the one this process last wrote (same
/// uid), else the watch cache's.
fn newest_status(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
) -> ImageBackupPolicyStatus {
    controller.written.newest(
        policy.metadata.uid.as_deref().unwrap_or_default(),
        policy.status.as_ref(),
    )
}

async fn write_status(
    controller: &BackupController,
    api: &Api<ImageBackupPolicy>,
    policy: &ImageBackupPolicy,
    previous: &ImageBackupPolicyStatus,
    status: &ImageBackupPolicyStatus,
) -> Result<(), OperatorError> {
    controller
        .written
        .write(api, policy, previous, status)
        .await?;
    Ok(())
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

fn pod_reference(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        ..ObjectReference::default()
    }
}

/// Reports a problem once per distinct message (status and Warning event).
async fn report_problem(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    memory: &mut PolicyMemory,
    reason: &str,
    message: &str,
) {
    let announced = format!("{reason}: {message}");
    if memory.announced_problem.as_deref() != Some(announced.as_str()) {
        publish(
            controller,
            &policy.object_ref(&()),
            EventType::Warning,
            reason,
            "Reconcile",
            message.to_owned(),
        )
        .await;
        memory.announced_problem = Some(announced);
    }
}

fn transfer_for(memory: &mut PolicyMemory, settings: registry::PolicySettings) -> Transfer {
    match &memory.transfer {
        Some((fingerprint, transfer)) if *fingerprint == settings.fingerprint => transfer.clone(),
        _ => {
            let transfer = Transfer::new(transfer_config(), settings.settings);
            memory.transfer = Some((settings.fingerprint, transfer.clone()));
            transfer
        }
    }
}

async fn reconcile_with(
    policy: &ImageBackupPolicy,
    controller: &BackupController,
    namespace: &str,
    name: &str,
    memory: &mut PolicyMemory,
) -> Result<Action, OperatorError> {
    let context = &controller.context;
    let api: Api<ImageBackupPolicy> = Api::namespaced(context.client.clone(), namespace);
    let generation = policy.metadata.generation.unwrap_or(0);
    let previous = newest_status(controller, policy);
    let now = whole_seconds(Utc::now());
    let spec = &policy.spec;

    // 1. A spec that cannot work waits for the user: Stalled, no retries.
    let valid = match validate_policy_spec(spec) {
        Ok(valid) => valid,
        Err(e) => {
            let (reason, message) = (e.reason(), e.to_string());
            let status = stalled_status(&previous, generation, now, reason, &message);
            write_status(controller, &api, policy, &previous, &status).await?;
            report_problem(controller, policy, memory, reason, &message).await;
            info!(policy = %name, namespace, reason, %message, "invalid spec: stalled");
            return Ok(Action::await_change());
        }
    };

    // 2. Discovery, within the policy's scope.
    let scope = Scope::for_policy(
        namespace,
        &context.config.namespace,
        spec.effective_selector(),
    );
    let snapshot = controller.caches.snapshot();
    // What earlier discoveries knew, for pods that cannot say now: this
    // process's memory, and the images the status reports missing (which
    // survive a restart of the operator).
    let mut hints = DigestHints {
        by_workload: std::mem::take(&mut memory.digests_seen),
        ..DigestHints::default()
    };
    for missing in &previous.missing_images {
        hints.add_missing(
            &missing.reference,
            missing.digest.as_deref(),
            &missing.nodes,
        );
    }
    let retention_rules = Rules::from_spec(spec.retention.as_ref());
    let running_anywhere = if retention_rules.is_some() {
        running_digests(&snapshot)
    } else {
        BTreeSet::new()
    };
    let inventory = match discover(&snapshot, &scope, &valid.images, &hints) {
        Ok(inventory) => inventory,
        Err(e) => {
            let reason = lifeboat_api::conditions::reasons::INVALID_SPEC;
            let status = stalled_status(&previous, generation, now, reason, &e.0);
            write_status(controller, &api, policy, &previous, &status).await?;
            report_problem(controller, policy, memory, reason, &e.0).await;
            return Ok(Action::await_change());
        }
    };
    drop(snapshot);
    memory.digests_seen = inventory.digests_seen.clone();

    // 3. Credentials: a missing Secret may appear; retry, not Stalled.
    let pull_secrets: BTreeSet<_> = inventory
        .images
        .values()
        .flat_map(|i| i.pull_secrets.iter().cloned())
        .collect();
    let secrets_hash = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        pull_secrets.hash(&mut hasher);
        hasher.finish()
    };
    let fresh = memory
        .transfer
        .as_ref()
        .and(memory.credentials_read)
        .is_some_and(|(read, read_generation, read_secrets)| {
            read_generation == generation
                && read_secrets == secrets_hash
                && now - read < decide::CREDENTIALS_TTL
        });
    let transfer = match (fresh, &memory.transfer) {
        (true, Some((_, transfer))) => transfer.clone(),
        _ => {
            let settings = match policy_settings(
                &context.client,
                namespace,
                spec,
                &pull_secrets,
                &context.config.plain_http_registries,
                namespace == context.config.namespace,
            )
            .await
            {
                Ok(settings) => settings,
                Err(OperatorError::Kube(e)) => return Err(OperatorError::Kube(e)),
                Err(e) => {
                    let (reason, message) = (e.reason(), e.to_string());
                    let status = blocked_status(&previous, generation, now, reason, &message);
                    write_status(controller, &api, policy, &previous, &status).await?;
                    report_problem(controller, policy, memory, reason, &message).await;
                    return Ok(Action::requeue(Duration::from_secs(30)));
                }
            };
            for skipped in &settings.skipped_pull_secrets {
                debug!(policy = %name, %skipped, "pull secret not used");
            }
            memory.announced_problem = None;
            memory.credentials_read = Some((now, generation, secrets_hash));
            transfer_for(memory, settings)
        }
    };

    // 4. Plan: every image to every target.
    let targets: Vec<PlanTarget> = valid
        .targets
        .iter()
        .zip(&spec.targets)
        .map(|(valid, target)| PlanTarget {
            valid: valid.clone(),
            platforms: target.platforms.clone().unwrap_or_default(),
        })
        .collect();
    let target_names: Vec<String> = targets.iter().map(|t| t.valid.name.clone()).collect();
    let template_context = TemplateContext {
        policy_namespace: namespace,
        policy_name: name,
    };
    let (tasks, mapping_errors) = copy_tasks(&inventory, &targets, template_context);
    for error in mapping_errors {
        memory.failures.insert(
            (error.target_name, error.image_key),
            Failure {
                reason: "InvalidRepositoryTemplate".to_owned(),
                message: error.message,
                at: now,
            },
        );
    }
    // Forget what no longer is selected, so memory stays bounded.
    memory
        .verified
        .retain(|(_, key), _| inventory.images.contains_key(key));
    memory
        .failures
        .retain(|(_, key), _| inventory.images.contains_key(key));
    memory
        .source
        .retain(|key, _| inventory.images.contains_key(key));

    // 5. Schedule and on-demand.
    let created = policy
        .metadata
        .creation_timestamp
        .as_ref()
        .map(from_k8s_time)
        .unwrap_or(now);
    let decision = decide::decide_run(&RunInputs {
        schedule: valid.schedule.as_ref(),
        time_zone: valid.time_zone,
        starting_deadline_seconds: spec.starting_deadline_seconds,
        suspend: spec.suspend,
        created,
        last_schedule_time: previous.last_schedule_time.as_ref().map(from_k8s_time),
        requested_at: policy
            .annotations()
            .get(REQUESTED_AT_ANNOTATION)
            .map(String::as_str),
        last_handled: previous.last_handled_reconcile_at.as_deref(),
        now,
    });

    // 6. Watching for loss: the source registries, by digest.
    let interval =
        TimeDelta::from_std(context.config.source_check_interval).unwrap_or(TimeDelta::minutes(5));
    check_sources(&transfer, &inventory, memory, now, interval).await;
    // Where a missing image can come back from: the targets that hold it.
    for task in &tasks {
        let missing = memory
            .source
            .get(&task.image_key)
            .is_some_and(|s| s.missing_since.is_some());
        let known = memory
            .verified
            .contains_key(&(task.target_name.clone(), task.image_key.clone()));
        if missing
            && !known
            && let Ok(true) = holds(&transfer, &task.destination).await
        {
            memory.verified.insert(
                (task.target_name.clone(), task.image_key.clone()),
                Verified {
                    digest: task
                        .destination
                        .digest
                        .as_ref()
                        .map(|d| d.as_str().to_owned())
                        .unwrap_or_default(),
                    at: now,
                },
            );
        }
    }

    // 7. Copy (or, dry run, plan).
    let full_run = decision.full_run;
    let continuous = spec.continuous && !spec.suspend;
    let recheck = interval;
    let due: Vec<&CopyTask> = tasks
        .iter()
        .filter(|task| {
            memory
                .source
                .get(&task.image_key)
                .is_none_or(|s| s.missing_since.is_none())
        })
        .filter(|task| needs_copy(task, memory, full_run.is_some(), now, recheck))
        .collect();
    let trigger = match full_run {
        Some(trigger) => Some(trigger),
        None if continuous && !due.is_empty() => Some(RunTrigger::Continuous),
        None => None,
    };
    let mut finished_run = None;
    let mut plan = None;
    let labels = object_labels(KIND, namespace, name);
    if spec.dry_run {
        plan = Some(dry_run_plan(&transfer, &due, memory, now, recheck).await);
    } else if let Some(trigger) = trigger {
        let run_started = Utc::now();
        let message = format!(
            "{:?} run: copying {} images to {} targets",
            trigger,
            due.len(),
            targets.len()
        );
        let running = reconciling_status(&previous, generation, now, message.clone());
        write_status(controller, &api, policy, &previous, &running).await?;
        let started_status = if previous == running {
            previous.clone()
        } else {
            running
        };
        publish(
            controller,
            &policy.object_ref(&()),
            EventType::Normal,
            "BackupStarted",
            "Backup",
            message,
        )
        .await;
        let run = copy_all(controller, &transfer, &due, memory, &labels).await;
        let result = if run.failed == 0 {
            RunResult::Succeeded
        } else if run.copied + run.up_to_date > 0 {
            RunResult::PartiallyFailed
        } else {
            RunResult::Failed
        };
        let completed = whole_seconds(Utc::now());
        let record = RunRecord {
            trigger,
            result,
            start_time: to_k8s_time(whole_seconds(run_started)),
            completion_time: Some(to_k8s_time(completed)),
            scheduled_time: decision.scheduled_time.map(to_k8s_time),
            copied: run.copied,
            up_to_date: run.up_to_date,
            failed: run.failed,
            deleted: 0,
            bytes_copied: run.bytes as i64,
            message: Some(lifeboat_api::conditions::bounded_message(
                run.summary(),
                1024,
            )),
        };
        context.metrics.backup_runs.add(
            1,
            &[
                labels[0].clone(),
                labels[1].clone(),
                labels[2].clone(),
                KeyValue::new("result", format!("{result:?}")),
            ],
        );
        if result == RunResult::Succeeded {
            context
                .metrics
                .last_success
                .record(completed.timestamp() as f64, &labels);
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
            run.summary(),
        )
        .await;
        info!(policy = %name, namespace, ?trigger, ?result, copied = run.copied, up_to_date = run.up_to_date, failed = run.failed, bytes = run.bytes, "backup run finished");
        finished_run = Some((record, started_status));
    }

    // 8. Retention (see `retention_due`); a dry run only plans.
    let mut retention_only = false;
    if let Some(rules) = &retention_rules
        && retention_due(&RetentionTiming {
            last: memory.retention_checked,
            generation,
            now,
            interval,
            run_finished: finished_run.is_some(),
            suspended: spec.suspend,
        })
    {
        memory.retention_checked = Some((now, generation));
        let copied: Vec<String> = memory.verified.values().map(|v| v.digest.clone()).collect();
        let missing: Vec<String> = previous
            .missing_images
            .iter()
            .filter_map(|m| m.digest.clone())
            .collect();
        let in_use = in_use_digests(&inventory, &copied, &missing, &running_anywhere);
        let outcome =
            retention_pass(&transfer, &tasks, rules, &in_use, memory, now, spec.dry_run).await;
        if spec.dry_run {
            memory.would_delete = outcome.planned.clone();
        } else {
            memory.would_delete.clear();
        }
        report_retention(controller, policy, &outcome, &labels).await;
        let deleted = i32::try_from(outcome.deleted.len()).unwrap_or(i32::MAX);
        if deleted > 0 {
            let note = format!("retention deleted {deleted} digests");
            match &mut finished_run {
                Some((record, _)) => {
                    record.deleted = deleted;
                    let message = format!("{}; {note}", record.message.clone().unwrap_or_default());
                    record.message = Some(lifeboat_api::conditions::bounded_message(message, 1024));
                }
                None => {
                    retention_only = true;
                    let at = to_k8s_time(now);
                    finished_run = Some((
                        RunRecord {
                            trigger: RunTrigger::Continuous,
                            result: RunResult::Succeeded,
                            start_time: at.clone(),
                            completion_time: Some(at),
                            scheduled_time: None,
                            copied: 0,
                            up_to_date: 0,
                            failed: 0,
                            deleted,
                            bytes_copied: 0,
                            message: Some(lifeboat_api::conditions::bounded_message(
                                format!("{note}: {}", outcome.deleted.join(", ")),
                                1024,
                            )),
                        },
                        previous.clone(),
                    ));
                }
            }
        }
    } else if retention_rules.is_none() {
        memory.would_delete.clear();
        memory.retention_cache.clear();
    }
    if let Some(plan) = &mut plan {
        let mut would_delete = memory.would_delete.clone();
        would_delete.sort();
        plan.would_delete_total = i32::try_from(would_delete.len()).unwrap_or(i32::MAX);
        would_delete.truncate(MAX_PLAN_ENTRIES);
        plan.would_delete = would_delete;
    }

    // 9. Status, events for losses, metrics.
    let images = image_states(&inventory, &target_names, memory);
    announce_losses(controller, policy, &inventory, memory).await;
    let bytes_before = previous.summary.as_ref().map_or(0, |s| s.bytes_copied);
    let bytes_copied_total = bytes_before
        + finished_run
            .as_ref()
            .map_or(0, |(record, _)| record.bytes_copied);
    let base = finished_run
        .as_ref()
        .map_or(previous.clone(), |(_, started)| started.clone());
    let scope_restricted = scope.only_namespace.as_ref().map(|own| {
        if scope.selector_reaches_beyond() {
            format!("this policy is outside the operator's namespace: it protects only namespace {own}, whatever its selector names")
        } else {
            format!("this policy is outside the operator's namespace: it protects only namespace {own}")
        }
    });
    let evaluation = Evaluation {
        generation,
        now,
        target_count: targets.len(),
        workloads: inventory.workloads.len() as i32,
        images,
        finished_run: finished_run.as_ref().map(|(record, _)| record.clone()),
        last_schedule_time: decision.last_schedule_time,
        next_schedule_time: decision.next_schedule_time,
        handled_request: decision.handled_request.clone(),
        scope_restricted,
        plan,
        dry_run: spec.dry_run,
        bytes_copied_total,
        retention_only,
    };
    let mut status = evaluated_status(&base, &evaluation);
    if let Err(e) = super::restore_link::link(&context.client, policy, &mut status).await {
        warn!(policy = %name, namespace, error = %e, "automatic restore not linked");
    }
    // The base may already be on the server (the Reconciling write); compare
    // with what the server has, or the Reconciling condition would stay.
    let server = if finished_run.is_some() {
        base_marker()
    } else {
        previous.clone()
    };
    write_status(controller, &api, policy, &server, &status).await?;
    record_image_metrics(controller, &evaluation, &labels);

    let ready = find_condition(&status.conditions, types::READY).map(|c| c.status.clone());
    debug!(policy = %name, namespace, images = inventory.images.len(), ?ready, "reconciled");
    Ok(Action::requeue(requeue_after(
        decision.wake_at,
        now,
        context.config.source_check_interval,
    )))
}

/// A status no real one equals, to force the write after a run.
fn base_marker() -> ImageBackupPolicyStatus {
    ImageBackupPolicyStatus {
        observed_generation: i64::MIN,
        ..ImageBackupPolicyStatus::default()
    }
}

/// When to look again: the next scheduled time or the next source check,
/// whichever is first, at most [`MAX_REQUEUE`].
pub fn requeue_after(
    next_schedule: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    check_interval: Duration,
) -> Duration {
    let mut wait = check_interval.min(MAX_REQUEUE);
    if let Some(next) = next_schedule {
        let until = (next - now).to_std().unwrap_or(Duration::ZERO) + Duration::from_secs(1);
        wait = wait.min(until);
    }
    wait.max(Duration::from_secs(1))
}

/// What one run did.
#[derive(Default)]
struct RunTally {
    copied: i32,
    up_to_date: i32,
    failed: i32,
    bytes: u64,
    first_error: Option<String>,
}

impl RunTally {
    fn summary(&self) -> String {
        let mut text = format!(
            "{} copied, {} already up to date, {} failed, {} bytes",
            self.copied, self.up_to_date, self.failed, self.bytes
        );
        if let Some(error) = &self.first_error {
            text.push_str(&format!("; first failure: {error}"));
        }
        text
    }
}

async fn copy_all(
    controller: &BackupController,
    transfer: &Transfer,
    due: &[&CopyTask],
    memory: &mut PolicyMemory,
    labels: &[KeyValue; 3],
) -> RunTally {
    let metrics = &controller.context.metrics;
    let owned: Vec<CopyTask> = due.iter().map(|t| (*t).clone()).collect();
    let results: Vec<_> = futures::stream::iter(owned)
        .map(|task| {
            let slots = controller.copy_slots.clone();
            let transfer = transfer.clone();
            async move {
                let _slot = slots.acquire_owned().await;
                let started = Instant::now();
                let result = copy_task(&transfer, &task).await;
                (task, result, started.elapsed())
            }
        })
        .buffer_unordered(COPIES_PER_POLICY)
        .collect::<Vec<_>>()
        .await;
    // Concurrent first requests to a registry with basic auth are sometimes
    // refused (401) although the credentials are right; one quiet retry
    // tells a race from a wrong password.
    let mut results = results;
    for (task, result, elapsed) in results.iter_mut() {
        if matches!(result, Err(TransferError::Unauthorized { .. })) {
            let started = Instant::now();
            *result = copy_task(transfer, task).await;
            *elapsed += started.elapsed();
        }
    }
    let mut tally = RunTally::default();
    let now = whole_seconds(Utc::now());
    for (task, result, elapsed) in results {
        let key = (task.target_name.clone(), task.image_key.clone());
        match result {
            Ok(outcome) => {
                metrics.copy_duration.record(elapsed.as_secs_f64(), labels);
                metrics.bytes_copied.add(outcome.bytes, labels);
                tally.bytes += outcome.bytes;
                if outcome.up_to_date {
                    tally.up_to_date += 1;
                } else {
                    tally.copied += 1;
                }
                memory.failures.remove(&key);
                memory.verified.insert(
                    key,
                    Verified {
                        digest: outcome.digest,
                        at: now,
                    },
                );
            }
            Err(e) => {
                tally.failed += 1;
                let message = format!("{} -> {}: {e}", task.source, task.target_name);
                if tally.first_error.is_none() {
                    tally.first_error = Some(message.clone());
                }
                warn!(source = %task.source, target = %task.target_name, reason = e.reason(), error = %e, "copy failed");
                memory.verified.remove(&key);
                memory.failures.insert(
                    key,
                    Failure {
                        reason: e.reason().to_owned(),
                        message,
                        at: now,
                    },
                );
            }
        }
    }
    tally
}

/// What one retention pass did (or, dry run, would do).
#[derive(Default)]
struct RetentionOutcome {
    /// `repository@digest (reason)` deleted.
    deleted: Vec<String>,
    /// Dry run: `repository@digest` that would be deleted.
    planned: Vec<String>,
    /// What could not be listed, read or deleted.
    failures: Vec<String>,
}

fn reason_text(reason: DeleteReason) -> &'static str {
    match reason {
        DeleteReason::OlderThanMaxAge => "older than maxAgeDays",
        DeleteReason::BeyondKeepLast => "beyond keepLast",
    }
}

/// One retention pass over every repository the policy backs up into.
/// A repository is left alone for this pass when anything about it cannot
/// be known (a listing, a manifest, the digest a by-tag image is held
/// at): retention deletes only on complete information.
async fn retention_pass(
    transfer: &Transfer,
    tasks: &[CopyTask],
    rules: &Rules,
    in_use: &InUse,
    memory: &mut PolicyMemory,
    now: DateTime<Utc>,
    dry_run: bool,
) -> RetentionOutcome {
    let mut outcome = RetentionOutcome::default();
    let mut repositories: std::collections::BTreeMap<(String, String), Vec<&CopyTask>> =
        std::collections::BTreeMap::new();
    for task in tasks {
        repositories
            .entry((
                task.destination.registry.clone(),
                task.destination.repository.clone(),
            ))
            .or_default()
            .push(task);
    }
    let mut seen: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
    'repositories: for ((registry, repository), repository_tasks) in repositories {
        let name = format!("{registry}/{repository}");
        let target = RepositoryRef::new(registry.clone(), repository.clone());
        // By-tag images are in use at whatever digest their tag holds here.
        let mut in_use_here = in_use.clone();
        for task in repository_tasks
            .iter()
            .filter(|t| t.source.digest.is_none())
        {
            let known = memory
                .verified
                .get(&(task.target_name.clone(), task.image_key.clone()))
                .map(|v| v.digest.clone())
                .filter(|d| !d.is_empty());
            if let Some(digest) = known {
                in_use_here.insert(digest);
                continue;
            }
            let held = match image_ref(&task.destination) {
                Ok(reference) => transfer.manifest_digest(&reference).await,
                Err(e) => Err(e),
            };
            match held {
                Ok(Some(digest)) => {
                    in_use_here.insert(digest.to_string());
                }
                Ok(None) => {}
                Err(e) => {
                    outcome
                        .failures
                        .push(format!("{}: reading tag: {e}", task.destination));
                    continue 'repositories;
                }
            }
        }
        let tags = match transfer.list_tags(&target).await {
            Ok(tags) => tags,
            Err(e) => {
                outcome.failures.push(format!("{name}: listing tags: {e}"));
                continue;
            }
        };
        let mut backups = Vec::new();
        for tag in tags {
            if lifeboat_tag_digest(&tag).is_none() {
                continue;
            }
            let key = (name.clone(), tag.clone());
            seen.insert(key.clone());
            if let Some(backup) = memory.retention_cache.get(&key) {
                backups.push(backup.clone());
                continue;
            }
            let summary = match ImageRef::parse(&format!("{name}:{tag}")) {
                Ok(reference) => transfer.manifest_summary(&reference).await,
                Err(e) => Err(e),
            };
            match summary {
                Ok(Some(summary)) => {
                    let backup = Backup {
                        tag,
                        digest: summary.digest.to_string(),
                        created: parse_created(summary.created.as_deref()),
                    };
                    memory.retention_cache.insert(key, backup.clone());
                    backups.push(backup);
                }
                // Deleted between listing and reading: nothing to keep.
                Ok(None) => {}
                Err(e) => {
                    outcome.failures.push(format!("{name}:{tag}: reading: {e}"));
                    continue 'repositories;
                }
            }
        }
        for deletion in plan_deletions(rules, &backups, &in_use_here, now) {
            let reference = format!("{name}@{}", deletion.digest);
            if dry_run {
                outcome.planned.push(reference);
                continue;
            }
            let Some(digest) = registry_transfer::Digest::parse(&deletion.digest) else {
                continue;
            };
            match transfer.delete_manifest(&target, &digest).await {
                Ok(_) => {
                    info!(reference = %reference, reason = reason_text(deletion.reason), "retention deleted a backup");
                    for tag in &deletion.tags {
                        memory.retention_cache.remove(&(name.clone(), tag.clone()));
                    }
                    outcome
                        .deleted
                        .push(format!("{reference} ({})", reason_text(deletion.reason)));
                }
                Err(e) => outcome.failures.push(format!("deleting {reference}: {e}")),
            }
        }
    }
    memory.retention_cache.retain(|key, _| seen.contains(key));
    outcome
}

/// Events and metrics for a retention pass.
async fn report_retention(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    outcome: &RetentionOutcome,
    labels: &[KeyValue; 3],
) {
    let metrics = &controller.context.metrics;
    if !outcome.deleted.is_empty() {
        metrics
            .retention_deleted
            .add(outcome.deleted.len() as u64, labels);
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
    if !outcome.failures.is_empty() {
        metrics
            .retention_failures
            .add(outcome.failures.len() as u64, labels);
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
                "{} retention steps failed (those repositories are left alone until the next pass); first: {}",
                outcome.failures.len(),
                outcome.failures[0]
            ),
        )
        .await;
    }
}

/// Looks up due images in their source registries, a few at a time per
/// registry, every registry in parallel.
async fn check_sources(
    transfer: &Transfer,
    inventory: &Inventory,
    memory: &mut PolicyMemory,
    now: DateTime<Utc>,
    interval: TimeDelta,
) {
    let due = source_checks_due(inventory, memory, now, interval);
    if due.is_empty() {
        return;
    }
    let items: Vec<(String, (String, ImageReference))> = due
        .into_iter()
        .filter_map(|key| {
            let image = inventory.images.get(&key)?;
            Some((
                image.reference.registry.clone(),
                (key, image.reference.clone()),
            ))
        })
        .collect();
    let groups = registry::by_registry(items);
    let checks = groups.into_values().map(|group| async move {
        futures::stream::iter(group)
            .map(|(key, reference)| {
                let transfer = transfer.clone();
                async move {
                    let result = holds(&transfer, &reference).await;
                    (key, reference, result)
                }
            })
            .buffer_unordered(CHECKS_PER_REGISTRY)
            .collect::<Vec<_>>()
            .await
    });
    let results: Vec<_> = futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect();
    for (key, reference, result) in results {
        let previous = memory.source.get(&key).and_then(|s| s.missing_since);
        match result {
            Ok(true) => {
                memory.source.insert(
                    key,
                    SourceState {
                        checked: now,
                        missing_since: None,
                    },
                );
            }
            Ok(false) => {
                warn!(image = %reference, "image is gone from its source registry");
                memory.source.insert(
                    key,
                    SourceState {
                        checked: now,
                        missing_since: Some(previous.unwrap_or(now)),
                    },
                );
            }
            Err(e) => {
                // Unknown is not missing: keep what we knew, ask again later.
                debug!(image = %reference, error = %e, "source check failed");
                memory.source.insert(
                    key,
                    SourceState {
                        checked: now,
                        missing_since: previous,
                    },
                );
            }
        }
    }
}

/// The dry-run plan: what a run would copy. Reading targets is allowed;
/// nothing is written.
async fn dry_run_plan(
    transfer: &Transfer,
    due: &[&CopyTask],
    memory: &mut PolicyMemory,
    now: DateTime<Utc>,
    recheck: TimeDelta,
) -> DryRunPlan {
    let mut would_copy = Vec::new();
    for task in due {
        let key = (task.target_name.clone(), task.image_key.clone());
        // Known absent recently: do not ask the target on every change.
        if memory
            .absent_at_target
            .get(&key)
            .is_some_and(|at| now - *at < recheck)
        {
            would_copy.push(format!("{} -> {}", task.source, task.destination));
            continue;
        }
        let held = task.destination.digest.is_some()
            && matches!(holds(transfer, &task.destination).await, Ok(true));
        if !held {
            memory.absent_at_target.insert(key, now);
        }
        if held {
            memory.verified.insert(
                (task.target_name.clone(), task.image_key.clone()),
                Verified {
                    digest: task
                        .destination
                        .digest
                        .as_ref()
                        .map(|d| d.as_str().to_owned())
                        .unwrap_or_default(),
                    at: now,
                },
            );
        } else {
            would_copy.push(format!("{} -> {}", task.source, task.destination));
        }
    }
    would_copy.sort();
    let total = would_copy.len() as i32;
    would_copy.truncate(MAX_PLAN_ENTRIES);
    DryRunPlan {
        would_copy,
        would_copy_total: total,
        ..DryRunPlan::default()
    }
}

/// Warning events for newly missing images (on the policy and the pods
/// that fail to pull them), Normal ones when a lost image is held by a
/// backup target or comes back.
async fn announce_losses(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    inventory: &Inventory,
    memory: &mut PolicyMemory,
) {
    let regarding = policy.object_ref(&());
    let missing: BTreeSet<String> = memory
        .source
        .iter()
        .filter(|(_, s)| s.missing_since.is_some())
        .map(|(k, _)| k.clone())
        .collect();
    for key in missing.difference(&memory.announced_missing.clone()) {
        let Some(image) = inventory.images.get(key) else {
            continue;
        };
        let held_by: Vec<String> = memory
            .verified
            .keys()
            .filter(|(_, k)| k == key)
            .map(|(t, _)| t.clone())
            .collect();
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
        memory.announced_missing.insert(key.clone());
    }
    // Every pod failing to pull a missing image hears it once, also pods
    // that start failing after the image was first reported.
    for key in &missing {
        let Some(image) = inventory.images.get(key) else {
            continue;
        };
        for (pod_namespace, pod_name) in &image.pull_failures {
            let told = (pod_namespace.clone(), pod_name.clone(), key.clone());
            if memory.announced_pods.contains(&told) {
                continue;
            }
            let held_by: Vec<String> = memory
                .verified
                .keys()
                .filter(|(_, k)| k == key)
                .map(|(t, _)| t.clone())
                .collect();
            publish(
                controller,
                &pod_reference(pod_namespace, pod_name),
                EventType::Warning,
                "ImageMissing",
                "CheckSource",
                format!(
                    "{} is gone from its source registry; backup targets holding it: {held_by:?} (policy {}/{})",
                    image.reference,
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
                &regarding,
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

fn record_image_metrics(
    controller: &BackupController,
    evaluation: &Evaluation,
    labels: &[KeyValue; 3],
) {
    let (protected, pending, failed, missing) = counts(&evaluation.images, evaluation.target_count);
    for (state, value) in [
        ("protected", protected),
        ("pending", pending),
        ("failed", failed),
        ("missing", missing),
    ] {
        let mut attributes = labels.to_vec();
        attributes.push(KeyValue::new("state", state));
        controller
            .context
            .metrics
            .images
            .record(u64::try_from(value).unwrap_or(0), &attributes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::controllers::test_api::{expect, expect_event, scripted, status_error};
    use lifeboat_api::conditions::reasons;

    const STATUS_PATH: &str =
        "/apis/lifeboat.dev/v1alpha1/namespaces/shop/imagebackuppolicies/web/status";

    fn policy(spec: serde_json::Value) -> Arc<ImageBackupPolicy> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "lifeboat.dev/v1alpha1", "kind": "ImageBackupPolicy",
                "metadata": {"name": "web", "namespace": "shop", "uid": "uid-1", "generation": 2},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    fn condition<'a>(status: &'a serde_json::Value, type_: &str) -> Option<&'a serde_json::Value> {
        status["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
    }

    /// A target's Secret that does not exist (yet): Ready=False with
    /// CredentialsNotFound, a Warning event, a retry soon; not Stalled (the
    /// Secret may still be created).
    #[tokio::test]
    async fn a_missing_secret_blocks_the_policy_with_its_reason_and_a_retry() {
        let policy = policy(serde_json::json!({"targets": [{
            "name": "backup", "registry": "backup.example", "secretRef": {"name": "push"},
        }]}));
        let (client, server) = scripted(vec![
            expect(
                http::Method::GET,
                "/api/v1/namespaces/shop/secrets/push",
                404,
                status_error(404, "NotFound", "secrets \"push\" not found"),
            ),
            expect(
                http::Method::PATCH,
                STATUS_PATH,
                200,
                serde_json::to_value(&*policy).unwrap(),
            ),
            expect_event("shop"),
        ]);
        let controller = Arc::new(BackupController::for_tests(client));

        let action = reconcile(policy.clone(), controller.clone()).await.unwrap();

        let received = server.finish().await;
        assert_eq!(action, Action::requeue(Duration::from_secs(30)));
        let status = &received[1].body["status"];
        assert_eq!(status["observedGeneration"], 2);
        let ready = condition(status, types::READY).unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "CredentialsNotFound");
        assert!(condition(status, types::STALLED).is_none());
        let event = &received[2].body;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "CredentialsNotFound");
        assert!(
            event["note"].as_str().unwrap().contains("shop/push"),
            "{event}"
        );
    }

    /// A status write the API server refuses (409) fails the reconcile (the
    /// controller retries it) and is not taken as written: the next
    /// reconcile writes the same status again.
    #[tokio::test]
    async fn a_conflicting_status_write_is_retried_by_the_next_reconcile() {
        let policy = policy(serde_json::json!({"targets": [{
            "name": "backup", "registry": "backup.example",
        }]}));
        let (client, server) = scripted(vec![
            expect(
                http::Method::PATCH,
                STATUS_PATH,
                409,
                status_error(409, "Conflict", "the object has been modified"),
            ),
            expect(
                http::Method::PATCH,
                STATUS_PATH,
                200,
                serde_json::to_value(&*policy).unwrap(),
            ),
        ]);
        let controller = Arc::new(BackupController::for_tests(client));

        let refused = reconcile(policy.clone(), controller.clone()).await;
        assert!(
            matches!(&refused, Err(e) if e.reason() == "KubernetesApiError"),
            "{refused:?}"
        );
        let again = reconcile(policy.clone(), controller.clone()).await;
        assert!(again.is_ok(), "{again:?}");

        let received = server.finish().await;
        assert_eq!(
            received[0].body, received[1].body,
            "the same status, written again"
        );
        let status = &received[1].body["status"];
        let ready = condition(status, types::READY).unwrap();
        // Nothing selected yet: every (zero) image protected.
        assert_eq!(ready["reason"], reasons::PROTECTED);
        assert_eq!(
            controller.written.newest("uid-1", None).observed_generation,
            2
        );
    }

    #[test]
    fn requeue_for_the_schedule_or_the_next_source_check() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let check = Duration::from_secs(20);
        assert_eq!(requeue_after(None, now, check), check);
        assert_eq!(
            requeue_after(Some(now + TimeDelta::seconds(5)), now, check),
            Duration::from_secs(6)
        );
        // Never longer than MAX_REQUEUE, never a busy loop.
        assert_eq!(
            requeue_after(None, now, Duration::from_secs(3600)),
            MAX_REQUEUE
        );
        assert_eq!(
            requeue_after(Some(now - TimeDelta::seconds(5)), now, check),
            Duration::from_secs(1)
        );
    }
}
