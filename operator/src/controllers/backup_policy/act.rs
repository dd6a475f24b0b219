//! Step 3 of a policy's reconcile: act on the plan against the registries.
//! Source checks (is each image still in its source registry?), the
//! targets that hold a lost image, the copies of a run (or, dry run, the
//! plan of what a run would copy), and retention. What each step learns
//! goes into the policy's memory; what the status needs comes back in
//! [`Acted`].

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt as _;
use kube::{Api, ResourceExt as _};
use lifeboat_api::backup_policy::{DryRunPlan, MAX_PLAN_ENTRIES, RunRecord};
use lifeboat_api::{ImageBackupPolicy, ImageBackupPolicyStatus, ImageReference};
use registry_transfer::{RepositoryRef, Transfer, TransferError};
use tracing::{debug, info, warn};

use super::BackupController;
use super::decide::{self, Plan, RunTally, source_checks_due};
use super::events;
use super::facts::Facts;
use super::memory::{Failure, PolicyMemory, RunInFlight, SourceState};
use super::plan::CopyTask;
use super::registry::{self, copy_task, holds};
use super::retention::{
    Backup, DeleteReason, InUse, RetentionTiming, Rules, in_use_digests, kept_subjects,
    lifeboat_tag_digest, parse_created, plan_deletions, retention_due,
};
use super::status::{reconciling_status, whole_seconds};
use crate::copy_queue::{Finished, Job, Owner};
use crate::error::OperatorError;

/// Source checks per registry at once.
const CHECKS_PER_REGISTRY: usize = 2;

/// What acting did, for the status.
#[derive(Clone, Debug, Default)]
pub(crate) struct Acted {
    /// A run (or a retention pass that deleted something) that finished in
    /// this reconcile.
    pub(crate) finished_run: Option<RunRecord>,
    /// `finished_run` is a retention pass outside a backup run.
    pub(crate) retention_only: bool,
    /// Dry run: what a run would copy and retention would delete.
    pub(crate) dry_run_plan: Option<DryRunPlan>,
    /// A run still copying: its progress message (with why copies wait).
    pub(crate) running: Option<String>,
    /// The status the server holds, as far as this process knows: the
    /// progress status written when a run started, else the one the
    /// reconcile began from. The new status is built on it.
    pub(crate) known_status: ImageBackupPolicyStatus,
}

/// Acts on the plan: source checks, then copies (or the dry-run plan),
/// then retention. Fails only when the progress status cannot be written.
pub(crate) async fn act(
    controller: &BackupController,
    api: &Api<ImageBackupPolicy>,
    policy: &ImageBackupPolicy,
    facts: &Facts,
    plan: &Plan,
    previous: &ImageBackupPolicyStatus,
    memory: &mut PolicyMemory,
) -> Result<Acted, OperatorError> {
    let transfer = &facts.transfer;
    take_back_copies(controller, policy, memory);
    let checked_by_copy = decide::checked_by_their_copy(plan, memory);
    check_sources(
        transfer,
        &facts.inventory,
        memory,
        (plan.now, plan.check_interval),
        &checked_by_copy,
    )
    .await;
    find_holders_of_lost_images(transfer, &plan.tasks, memory, plan.now).await;
    let uid = policy.uid().unwrap_or_default();
    let queued = controller.copies.pending(&uid);
    // Copies already queued or running are not due again.
    let due: Vec<&CopyTask> = decide::due_copies(plan, memory)
        .into_iter()
        .filter(|task| !queued.contains(&queue_key(task)))
        .collect();
    let mut acted = Acted {
        known_status: previous.clone(),
        ..Acted::default()
    };
    if plan.dry_run {
        acted.dry_run_plan = Some(dry_run_plan(transfer, &due, memory, plan).await);
    } else {
        run_copies(
            controller, api, policy, transfer, &due, memory, plan, &mut acted,
        )
        .await?;
    }
    if let Some(rules) = &facts.retention {
        retention(
            controller, policy, facts, rules, plan, previous, memory, &mut acted,
        )
        .await;
    } else {
        memory.would_delete.clear();
        memory.retention_cache.clear();
    }
    if let Some(dry_run_plan) = acted.dry_run_plan.take() {
        acted.dry_run_plan = Some(decide::with_would_delete(
            dry_run_plan,
            &memory.would_delete,
        ));
    }
    Ok(acted)
}

/// The key of a task in the copy queue (unique within its policy).
fn queue_key(task: &CopyTask) -> String {
    format!("{}/{}", task.target_name, task.image_key)
}

/// A run's copies: starts a run when one is due (its progress status
/// written first), queues the due copies into the run in progress, and
/// finishes the run once the queue holds none of its copies. Copies run in
/// the copy queue, not in this reconcile; the queue wakes the policy when
/// they have ended.
#[allow(clippy::too_many_arguments)] // the step's inputs, each a different fact; a struct would only rename them
async fn run_copies(
    controller: &BackupController,
    api: &Api<ImageBackupPolicy>,
    policy: &ImageBackupPolicy,
    transfer: &Transfer,
    due: &[&CopyTask],
    memory: &mut PolicyMemory,
    plan: &Plan,
    acted: &mut Acted,
) -> Result<(), OperatorError> {
    if memory.run.is_none()
        && let Some(trigger) = decide::run_trigger(plan, due.len())
    {
        // A run can copy for minutes, and while it does the status says
        // so (Reconciling=True BackupRunning, which kstatus, Argo CD and
        // the gitops-health e2e suite read as "in progress"). Written now,
        // through the same writer, so the final write compares with it.
        let message = format!(
            "{trigger:?} run: copying {} images to {} targets",
            due.len(),
            plan.target_names.len()
        );
        let running = reconciling_status(
            &acted.known_status,
            plan.generation,
            plan.now,
            message.clone(),
        );
        controller
            .written
            .write(api, policy, &acted.known_status, &running)
            .await?;
        acted.known_status = running;
        events::run_started(controller, policy, message.clone()).await;
        memory.run = Some(RunInFlight {
            trigger,
            started: whole_seconds(Utc::now()),
            scheduled_time: plan.run.scheduled_time,
            tally: RunTally::default(),
            tasks: Default::default(),
            message,
        });
    }
    let Some(run) = memory.run.as_mut() else {
        return Ok(());
    };
    let owner = Owner {
        namespace: policy.namespace().unwrap_or_default(),
        name: policy.name_any(),
        uid: policy.uid().unwrap_or_default(),
    };
    for task in due {
        let key = queue_key(task);
        let job = Job {
            owner: owner.clone(),
            key: key.clone(),
            source_registry: task.source.registry.clone(),
            target_registry: task.destination.registry.clone(),
            work: Box::pin(copy_with_retry(transfer.clone(), (*task).clone())),
        };
        if controller.copies.enqueue(job) {
            run.tasks.insert(key, (*task).clone());
        }
    }
    // A task leaves `tasks` when its result is taken back; results that
    // arrived during this reconcile are taken by the next one (the queue
    // wakes the policy when its last copy ends).
    if !run.tasks.is_empty() {
        let waiting = controller
            .copies
            .waiting(&owner.uid)
            .map(|w| format!("; {w}"))
            .unwrap_or_default();
        acted.running = Some(format!("{}{waiting}", run.message));
        return Ok(());
    }
    let Some(run) = memory.run.take() else {
        return Ok(());
    };
    acted.finished_run = Some(finish_run(controller, policy, run, plan).await);
    Ok(())
}

/// One copy as the queue runs it. Concurrent first requests to a registry
/// with basic auth are sometimes refused (401) although the credentials
/// are right; one quiet retry tells a race from a wrong password.
async fn copy_with_retry(transfer: Transfer, task: CopyTask) -> registry::CopyResult {
    match copy_task(&transfer, &task).await {
        Err(TransferError::Unauthorized { .. }) => copy_task(&transfer, &task).await,
        other => other,
    }
}

/// Takes back the policy's ended copies from the queue: each outcome goes
/// into memory, the copy metrics and the run in progress.
fn take_back_copies(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    memory: &mut PolicyMemory,
) {
    let finished = controller
        .copies
        .take_finished(&policy.uid().unwrap_or_default());
    if finished.is_empty() {
        return;
    }
    let labels = events::labels(policy);
    let metrics = &controller.context.metrics;
    let now = whole_seconds(Utc::now());
    for Finished {
        key: queue_key,
        output,
        waited,
        ran,
    } in finished
    {
        debug!(
            policy = %policy.name_any(), copy = %queue_key, ok = output.is_ok(),
            waited_ms = waited.as_millis() as u64, ran_ms = ran.as_millis() as u64, "copy taken back"
        );
        let Some(run) = memory.run.as_mut() else {
            continue;
        };
        let Some(task) = run.tasks.remove(&queue_key) else {
            continue;
        };
        let key = (task.target_name.clone(), task.image_key.clone());
        let tally = &mut run.tally;
        // A copy that read the source by digest answered its source check
        // (see decide::checked_by_their_copy): written, so it read it; a
        // 404 for that digest is the registry saying the image is gone.
        let pinned = task.source.digest.is_some();
        match &output {
            Ok(outcome) if pinned && !outcome.up_to_date => {
                let state = SourceState::after(memory.source.get(&task.image_key), Ok(true), now);
                memory.source.insert(task.image_key.clone(), state);
            }
            Err(TransferError::SourceNotFound { .. }) if pinned => {
                warn!(image = %task.source, "image is gone from its source registry");
                let state = SourceState::after(memory.source.get(&task.image_key), Ok(false), now);
                memory.source.insert(task.image_key.clone(), state);
                // Lost, not a failed copy: reported missing like a loss the
                // source check finds, and not retried while it stays gone.
                continue;
            }
            _ => {}
        }
        match output {
            Ok(outcome) => {
                metrics.copy_duration.record(ran.as_secs_f64(), &labels);
                metrics.bytes_copied.add(outcome.bytes, &labels);
                tally.bytes = tally.bytes.saturating_add(outcome.bytes);
                if outcome.up_to_date {
                    tally.up_to_date += 1;
                } else {
                    tally.copied += 1;
                }
                memory.failures.remove(&key);
                // A by-tag copy holds the digest the tag pointed at: it
                // counts for the key the pods report once they run it,
                // else the image reads unprotected (the policy NoBackupYet)
                // until a second copy of the same bytes.
                if let Some(resolved) = &outcome.resolved {
                    memory.verified_with_referrers(
                        &task.target_name,
                        &super::discovery::image_key(resolved),
                        outcome.digest.clone(),
                        now,
                        outcome.referrers,
                    );
                }
                memory.verified_with_referrers(
                    &task.target_name,
                    &task.image_key,
                    outcome.digest,
                    now,
                    outcome.referrers,
                );
            }
            Err(e) => {
                if matches!(e, TransferError::CopyDeadlineExceeded { .. }) {
                    controller
                        .copies
                        .count_deadline_cancel(&task.source.registry, &task.destination.registry);
                }
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
}

/// A run whose copies have all ended: its record, events and log line.
async fn finish_run(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    run: RunInFlight,
    plan: &Plan,
) -> RunRecord {
    let completed = whole_seconds(Utc::now());
    let tally = run.tally;
    let record = tally.record(run.trigger, run.started, completed, run.scheduled_time);
    events::run_finished(controller, policy, &tally, completed).await;
    info!(
        policy = %policy.name_any(), namespace = policy.namespace().unwrap_or_default(),
        trigger = ?run.trigger, result = ?record.result, copied = tally.copied, up_to_date = tally.up_to_date,
        failed = tally.failed, bytes = tally.bytes, generation = plan.generation, "backup run finished"
    );
    record
}

/// Looks up due images in their source registries, a few at a time per
/// registry, every registry in parallel.
async fn check_sources(
    transfer: &Transfer,
    inventory: &super::discovery::Inventory,
    memory: &mut PolicyMemory,
    (now, interval): (DateTime<Utc>, TimeDelta),
    checked_by_copy: &std::collections::BTreeSet<String>,
) {
    let due = source_checks_due(inventory, memory, now, interval, checked_by_copy);
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
        let answer = match result {
            Ok(held) => {
                if !held {
                    warn!(image = %reference, "image is gone from its source registry");
                }
                Ok(held)
            }
            Err(e) => {
                // No answer is an outage, not a loss (see SourceState::after).
                if memory.is_unreachable(&key) {
                    debug!(image = %reference, reason = e.reason(), error = %e, "source registry still does not answer");
                } else {
                    warn!(image = %reference, reason = e.reason(), error = %e, "source registry does not answer");
                }
                Err((e.reason().to_owned(), e.to_string()))
            }
        };
        let state = SourceState::after(memory.source.get(&key), answer, now);
        memory.source.insert(key, state);
    }
}

/// Where a lost image can come back from: asks each target not yet known
/// to hold a lost image whether it does (one HEAD by digest).
async fn find_holders_of_lost_images(
    transfer: &Transfer,
    tasks: &[CopyTask],
    memory: &mut PolicyMemory,
    now: DateTime<Utc>,
) {
    for task in tasks {
        let known = memory
            .verified
            .contains_key(&(task.target_name.clone(), task.image_key.clone()));
        if memory.is_missing(&task.image_key)
            && !known
            && let Ok(true) = holds(transfer, &task.destination).await
        {
            memory.verified_at(&task.target_name, &task.image_key, digest_of(task), now);
        }
    }
}

/// The digest a task's destination is pinned to ("" for a by-tag image).
fn digest_of(task: &CopyTask) -> String {
    task.destination
        .digest
        .as_ref()
        .map(|d| d.as_str().to_owned())
        .unwrap_or_default()
}

/// The dry-run plan: what a run would copy. Reading targets is allowed;
/// nothing is written.
async fn dry_run_plan(
    transfer: &Transfer,
    due: &[&CopyTask],
    memory: &mut PolicyMemory,
    plan: &Plan,
) -> DryRunPlan {
    let now = plan.now;
    let mut would_copy = Vec::new();
    for task in due {
        let key = (task.target_name.clone(), task.image_key.clone());
        // Known absent recently: do not ask the target on every change.
        if memory
            .absent_at_target
            .get(&key)
            .is_some_and(|at| now - *at < plan.check_interval)
        {
            let referrers = transfer.list_referrers(&task.source, &task.referrers).await;
            would_copy.push(registry::describe_copy(task, &referrers));
            continue;
        }
        // As a copy would leave it (its tags), not merely there by digest:
        // a manifest copied by tag before its digest was known has no
        // Lifeboat tag yet, and marking it verified here would mean the
        // run after the dry run never writes one.
        let held = matches!(registry::holds_as_copied(transfer, task).await, Ok(true));
        if held {
            memory.verified_at(&task.target_name, &task.image_key, digest_of(task), now);
        } else {
            memory.absent_at_target.insert(key, now);
            let referrers = transfer.list_referrers(&task.source, &task.referrers).await;
            would_copy.push(registry::describe_copy(task, &referrers));
        }
    }
    would_copy.sort();
    let total = i32::try_from(would_copy.len()).unwrap_or(i32::MAX);
    would_copy.truncate(MAX_PLAN_ENTRIES);
    DryRunPlan {
        would_copy,
        would_copy_total: total,
        ..DryRunPlan::default()
    }
}

/// Retention, when due (see `retention_due`): one pass over the targets'
/// repositories; a dry run only plans. Its deletions go into this
/// reconcile's run record.
#[allow(clippy::too_many_arguments)] // the step's inputs, each a different fact; a struct would only rename them
async fn retention(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    facts: &Facts,
    rules: &Rules,
    plan: &Plan,
    previous: &ImageBackupPolicyStatus,
    memory: &mut PolicyMemory,
    acted: &mut Acted,
) {
    let due = retention_due(&RetentionTiming {
        last: memory.retention_checked,
        generation: plan.generation,
        now: plan.now,
        interval: plan.check_interval,
        run_finished: acted.finished_run.is_some(),
        suspended: plan.suspended,
    });
    if !due {
        return;
    }
    memory.retention_checked = Some((plan.now, plan.generation));
    let copied: Vec<String> = memory.verified.values().map(|v| v.digest.clone()).collect();
    let missing: Vec<String> = previous
        .missing_images
        .iter()
        .filter_map(|m| m.digest.clone())
        .collect();
    let in_use = in_use_digests(&facts.inventory, &copied, &missing, &facts.running_anywhere);
    let outcome = retention_pass(&facts.transfer, &plan.tasks, rules, &in_use, memory, plan).await;
    if plan.dry_run {
        memory.would_delete = outcome.planned.clone();
    } else {
        memory.would_delete.clear();
    }
    events::retention(controller, policy, &outcome).await;
    let (finished_run, retention_only) =
        decide::with_deletions(acted.finished_run.take(), &outcome.deleted, plan.now);
    acted.finished_run = finished_run;
    acted.retention_only = retention_only;
}

/// What one retention pass did (or, dry run, would do).
#[derive(Default)]
pub(crate) struct RetentionOutcome {
    /// `repository@digest (reason)` deleted.
    pub(crate) deleted: Vec<String>,
    /// Dry run: `repository@digest` that would be deleted.
    pub(crate) planned: Vec<String>,
    /// What could not be listed, read or deleted.
    pub(crate) failures: Vec<String>,
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
    plan: &Plan,
) -> RetentionOutcome {
    let mut outcome = RetentionOutcome::default();
    let mut repositories: BTreeMap<(String, String), Vec<&CopyTask>> = BTreeMap::new();
    for task in tasks {
        repositories
            .entry((
                task.destination.registry.clone(),
                task.destination.repository.clone(),
            ))
            .or_default()
            .push(task);
    }
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for ((registry, repository), repository_tasks) in repositories {
        let name = format!("{registry}/{repository}");
        let target = RepositoryRef::new(registry, repository);
        let in_use_here = match in_use_in(transfer, &repository_tasks, in_use, memory).await {
            Ok(in_use_here) => in_use_here,
            Err(failure) => {
                outcome.failures.push(failure);
                continue;
            }
        };
        let backups = match backups_in(transfer, &name, &target, memory, &mut seen).await {
            Ok(backups) => backups,
            Err(failure) => {
                outcome.failures.push(failure);
                continue;
            }
        };
        let deletions = plan_deletions(rules, &backups, &in_use_here, plan.now);
        // Referrers of what stays are never deleted with what goes.
        let kept: HashSet<registry_transfer::Digest> =
            kept_subjects(&backups, &deletions, &in_use_here)
                .iter()
                .filter_map(|d| registry_transfer::Digest::parse(d).ok())
                .collect();
        for deletion in deletions {
            let reference = format!("{name}@{}", deletion.digest);
            if plan.dry_run {
                outcome.planned.push(reference);
                continue;
            }
            let Ok(digest) = registry_transfer::Digest::parse(&deletion.digest) else {
                continue;
            };
            match transfer
                .delete_with_referrers(&target, &digest, &kept)
                .await
            {
                Ok(deleted) => {
                    let referrers = deleted.map_or(0, |d| d.referrers.len());
                    info!(reference = %reference, reason = reason_text(deletion.reason), referrers, "retention deleted a backup and its referrers");
                    for tag in &deletion.tags {
                        memory.retention_cache.remove(&(name.clone(), tag.clone()));
                    }
                    let with = match referrers {
                        0 => String::new(),
                        n => format!(", with {n} referrer(s)"),
                    };
                    outcome.deleted.push(format!(
                        "{reference} ({}{with})",
                        reason_text(deletion.reason)
                    ));
                }
                Err(e) => outcome.failures.push(format!("deleting {reference}: {e}")),
            }
        }
    }
    memory.retention_cache.retain(|key, _| seen.contains(key));
    outcome
}

/// The digests in use in one repository: `in_use`, plus whatever digest
/// the repository's by-tag images are held at here. An error (the failure
/// to report) when a tag cannot be read.
async fn in_use_in(
    transfer: &Transfer,
    repository_tasks: &[&CopyTask],
    in_use: &InUse,
    memory: &PolicyMemory,
) -> Result<InUse, String> {
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
        let held = transfer.manifest_digest(&task.destination).await;
        match held {
            Ok(Some(digest)) => {
                in_use_here.insert(digest.to_string());
            }
            Ok(None) => {}
            Err(e) => return Err(format!("{}: reading tag: {e}", task.destination)),
        }
    }
    Ok(in_use_here)
}

/// Lifeboat's backups in one repository (its `lifeboat-sha256-…` tags),
/// each read once and then remembered (content under a digest never
/// changes). Notes every tag listed in `seen`. An error (the failure to
/// report) when the listing or a manifest cannot be read.
async fn backups_in(
    transfer: &Transfer,
    name: &str,
    target: &RepositoryRef,
    memory: &mut PolicyMemory,
    seen: &mut HashSet<(String, String)>,
) -> Result<Vec<Backup>, String> {
    let tags = transfer
        .list_tags(target)
        .await
        .map_err(|e| format!("{name}: listing tags: {e}"))?;
    let mut backups = Vec::new();
    for tag in tags {
        if lifeboat_tag_digest(&tag).is_none() {
            continue;
        }
        let key = (name.to_owned(), tag.clone());
        seen.insert(key.clone());
        if let Some(backup) = memory.retention_cache.get(&key) {
            backups.push(backup.clone());
            continue;
        }
        let summary = match registry_transfer::reference::parse_image(&format!("{name}:{tag}")) {
            Ok(reference) => transfer.manifest_summary(&reference).await,
            Err(e) => Err(e),
        };
        match summary {
            Ok(Some(summary)) => {
                let backup = Backup {
                    tag,
                    digest: summary.digest.to_string(),
                    created: parse_created(summary.created.as_deref()),
                    children: summary.children.iter().map(ToString::to_string).collect(),
                };
                memory.retention_cache.insert(key, backup.clone());
                backups.push(backup);
            }
            // Deleted between listing and reading: nothing to keep.
            Ok(None) => {}
            Err(e) => return Err(format!("{name}:{tag}: reading: {e}")),
        }
    }
    Ok(backups)
}
