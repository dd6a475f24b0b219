//! One reconcile of one ImageRestore, as a pipeline read top to bottom:
//!
//! 1. facts (`facts`): the restore, what it asks for, its backup targets,
//!    one registry engine, the export Jobs its status names;
//! 2. decide (pure, `planning::admit`, `status`): refuse a restore that
//!    cannot run before any node or Job is asked; the deadline; the new
//!    status, its Events and the next look;
//! 3. act: copies from a backup (`backup_source`), inventories and export
//!    Jobs (`node_source`), each checked at the destination (`verify`);
//! 4. the status, written once (`controllers::apply_status`), then the
//!    export Jobs it names (`objects`), then Events and metrics.
//!
//! The status is the restore's memory: images move Pending → InProgress
//! (with the export Job's name, written before the Job is created) →
//! Restored or Failed. A restarted operator reads the status, finds the Jobs
//! by their deterministic names, and never creates a second one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use lifeboat_api::conditions::reasons;
use lifeboat_api::restore::{ImageRestoreState, RestoreSourceKind};
use lifeboat_api::time::from_k8s_time;
use lifeboat_api::{ImageBackupPolicy, ImageRestore, ImageRestoreStatus};
use opentelemetry::KeyValue;
use registry_transfer::Transfer;
use tracing::info;

use super::RestoreController;
use super::backup_source::{BackupOutcome, from_backup};
use super::facts::{self, Facts};
use super::node_import;
use super::node_source;
use super::objects;
use super::planning::{self, BackupCandidate, Refusal};
use super::scope;
use super::status::{
    self, Note, fail, fail_open_images, is_complete, nothing_to_restore, stalled, summarize,
    whole_seconds,
};
use crate::error::OperatorError;
use crate::telemetry::object_labels;

const KIND: &str = "ImageRestore";
/// How often a running restore is looked at when nothing wakes it: export
/// Jobs wake it when they finish or vanish, so this only bounds how late
/// something missed (a watch restarted) is noticed.
const POLL: Duration = Duration::from_secs(30);
/// How soon a restore waiting for node inventories looks again: its own
/// inventory Jobs wake it when they finish; one it shares with another
/// restore, or one found stale and deleted, does not.
const INVENTORY_POLL: Duration = Duration::from_secs(5);
/// How soon a restore stalled on something outside it (a policy, a
/// credential) looks again.
const STALLED_RETRY: Duration = Duration::from_secs(30);
/// How soon a restore refused by the tenancy rules looks again (an admin
/// may widen what its namespace may restore).
const SCOPE_RETRY: Duration = Duration::from_secs(60);
/// Export Jobs' deadline when the restore sets none.
const DEFAULT_JOB_DEADLINE_SECONDS: i64 = 1800;

pub(crate) async fn reconcile(
    restore: Arc<ImageRestore>,
    controller: Arc<RestoreController>,
) -> Result<Action, OperatorError> {
    controller
        .context
        .metrics
        .reconciles
        .add(1, &[KeyValue::new("kind", KIND)]);
    let result = reconcile_with(&restore, &controller).await;
    controller.forget_deleted_restores();
    result
}

/// What the steps before the status write decided.
struct Outcome<'a> {
    status: ImageRestoreStatus,
    /// Events to publish once the status is written.
    notes: Vec<Note>,
    /// The export Jobs the status names, to create once it is written;
    /// `None` when the restore did not get that far.
    jobs: Option<JobsToEnsure<'a>>,
    /// Whether this reconcile may finish the restore (metrics, the
    /// `Restore*` Event, credentials deleted): only a restore that ran.
    may_finish: bool,
    next: Action,
}

struct JobsToEnsure<'a> {
    facts: Facts<'a>,
    /// Jobs that exist already (running or finished).
    existing: BTreeSet<String>,
    deadline_seconds: i64,
    /// A restore into nodes: its import (and serve) Jobs, from these
    /// backup targets.
    into_nodes: Option<Vec<(BackupCandidate, ImageBackupPolicy)>>,
}

/// How soon a restore into nodes looks again while an import waits for
/// its serve pod's address.
const SERVE_ADDRESS_POLL: Duration = Duration::from_secs(1);

impl Outcome<'_> {
    /// A restore that stops before any work: only its status and Events.
    fn stopped(status: ImageRestoreStatus, notes: Vec<Note>, next: Action) -> Self {
        Outcome {
            status,
            notes,
            jobs: None,
            may_finish: false,
            next,
        }
    }
}

async fn reconcile_with(
    restore: &ImageRestore,
    controller: &RestoreController,
) -> Result<Action, OperatorError> {
    let name = restore.name_any();
    let uid = restore.uid().unwrap_or_default();
    if restore.metadata.deletion_timestamp.is_some() {
        objects::cleanup(controller, &name, &uid).await?;
        objects::remove_finalizer(controller, restore).await?;
        controller.forget(&uid);
        return Ok(Action::await_change());
    }
    let previous = controller.latest_status(restore);
    if is_complete(&previous) {
        objects::delete_credentials(controller, &name, &uid).await;
        return Ok(Action::await_change());
    }
    let now = whole_seconds(Utc::now());

    // 1–3: facts, decisions and the work they call for.
    let outcome = advance(controller, restore, &previous, now).await?;

    // 4. The one status write, then the Jobs it names, then Events.
    write_status(controller, restore, &previous, &outcome.status).await?;
    let mut next = outcome.next;
    if let Some(JobsToEnsure {
        facts,
        into_nodes: Some(candidates),
        deadline_seconds,
        ..
    }) = &outcome.jobs
    {
        let waiting = node_import::ensure_jobs(
            controller,
            facts,
            &outcome.status,
            candidates,
            *deadline_seconds,
        )
        .await?;
        if waiting {
            next = Action::requeue(SERVE_ADDRESS_POLL);
        }
    } else if let Some(jobs) = &outcome.jobs {
        objects::ensure_jobs(
            controller,
            &jobs.facts,
            &outcome.status,
            &jobs.existing,
            jobs.deadline_seconds,
        )
        .await?;
    }
    for note in outcome.notes {
        publish(controller, restore, note).await;
    }
    if outcome.may_finish && is_complete(&outcome.status) {
        finished(controller, restore, &outcome.status).await;
        objects::delete_credentials(controller, &name, &uid).await;
        return Ok(Action::await_change());
    }
    Ok(next)
}

/// Everything up to the new status. Each early end is an `Outcome` too, so
/// the status is written at one place.
async fn advance<'a>(
    controller: &RestoreController,
    restore: &'a ImageRestore,
    previous: &ImageRestoreStatus,
    now: DateTime<Utc>,
) -> Result<Outcome<'a>, OperatorError> {
    let generation = restore.metadata.generation.unwrap_or(0);
    let stalled_by = |refusal: Refusal| {
        let status = stalled(
            previous.clone(),
            generation,
            now,
            refusal.reason,
            &refusal.message,
            refusal.terminal,
        );
        (status, refusal)
    };

    // Admission: a restore that cannot (or may not) run is refused before
    // any node or Job is asked. A refusal of the spec is for good (the
    // spec is immutable).
    let valid = match planning::admit(&restore.spec) {
        Ok(valid) => valid,
        Err(refusal) => {
            let (status, refusal) = stalled_by(refusal);
            let note = Note::warning(refusal.reason, refusal.message);
            return Ok(Outcome::stopped(status, vec![note], Action::await_change()));
        }
    };
    objects::ensure_finalizer(controller, restore).await?;
    let facts = Facts::new(restore, valid);

    // What to restore, fixed at the first reconcile.
    let mut status = previous.clone();
    if status.images.is_empty() {
        match facts::requested_images(controller, &facts).await? {
            Ok(images) if images.is_empty() => {
                let status = nothing_to_restore(previous.clone(), generation, now);
                return Ok(Outcome::stopped(status, Vec::new(), Action::await_change()));
            }
            Ok(images) => status.images = images,
            Err(refusal) => {
                let (status, _) = stalled_by(refusal);
                let next = Action::requeue(STALLED_RETRY);
                return Ok(Outcome::stopped(status, Vec::new(), next));
            }
        }
    }

    let remaining = enforce_deadline(controller, &facts, &mut status, now).await;

    // Registries: the backups' and the destinations' credentials.
    let candidates = facts::backup_candidates(controller, &facts).await?;
    let transfer = match facts::registry_engine(controller, &facts, &candidates).await {
        Ok(transfer) => transfer,
        Err(OperatorError::Kube(e)) => return Err(OperatorError::Kube(e)),
        Err(e) => {
            let refusal = Refusal::retry(e.reason(), e.to_string());
            let (status, _) = stalled_by(refusal);
            let next = Action::requeue(STALLED_RETRY);
            return Ok(Outcome::stopped(status, Vec::new(), next));
        }
    };

    // Tenant rules, once, before any node is asked or any Job exists.
    if previous.images.is_empty()
        && let Err(refusal) =
            out_of_scope(controller, &facts, &status, &transfer, &candidates).await?
    {
        let (reason, message) = (refusal.reason, refusal.message);
        let status = stalled(previous.clone(), generation, now, reason, &message, false);
        let notes = if status == *previous {
            Vec::new()
        } else {
            vec![Note::warning(reason, message)]
        };
        return Ok(Outcome::stopped(
            status,
            notes,
            Action::requeue(SCOPE_RETRY),
        ));
    }

    // Export Jobs already running: read and verify what they did.
    // (Restored ones get their referrers from a backup target.)
    let backups: Vec<BackupCandidate> = candidates.iter().map(|(c, _)| c.clone()).collect();
    let existing =
        node_source::follow_jobs(controller, &facts, &transfer, &backups, &mut status).await?;

    // Pending images: backups, then nodes (or as `source.order` says).
    let into_nodes = facts.writes_into_nodes();
    let waiting = if into_nodes {
        node_import::advance(controller, &facts, &transfer, &candidates, &mut status).await?
    } else {
        plan_pending(controller, &facts, &transfer, &candidates, &mut status).await?
    };

    let status = summarize(status, generation, now);
    let notes = status::image_notes(previous, &status);
    let deadline_seconds = remaining
        .unwrap_or(DEFAULT_JOB_DEADLINE_SECONDS)
        .clamp(1, DEFAULT_JOB_DEADLINE_SECONDS);
    Ok(Outcome {
        status,
        notes,
        jobs: Some(JobsToEnsure {
            facts,
            existing,
            deadline_seconds,
            into_nodes: into_nodes.then_some(candidates),
        }),
        may_finish: true,
        next: Action::requeue(status::next_look(waiting, remaining, INVENTORY_POLL, POLL)),
    })
}

/// The deadline: past it, open images fail and running Jobs stop. Returns
/// the seconds left (`None` without a deadline).
async fn enforce_deadline(
    controller: &RestoreController,
    facts: &Facts<'_>,
    status: &mut ImageRestoreStatus,
    now: DateTime<Utc>,
) -> Option<i64> {
    let limit = facts.restore.spec.active_deadline_seconds;
    let started = status.start_time.as_ref().map(from_k8s_time).unwrap_or(now);
    let remaining = status::deadline_remaining(limit, started, now);
    if remaining.is_some_and(|r| r <= 0) {
        fail_open_images(
            status,
            reasons::DEADLINE_EXCEEDED,
            &format!(
                "not restored within activeDeadlineSeconds ({}s)",
                limit.unwrap_or_default()
            ),
        );
        objects::delete_jobs(controller, &facts.uid).await;
    }
    remaining
}

/// The tenancy scope check of the images a restore asks for (see
/// `scope::check`): `Err` with why when the restore may not run.
async fn out_of_scope(
    controller: &RestoreController,
    facts: &Facts<'_>,
    status: &ImageRestoreStatus,
    transfer: &Transfer,
    candidates: &[(BackupCandidate, ImageBackupPolicy)],
) -> Result<Result<(), crate::tenancy::Refusal>, OperatorError> {
    let request = scope::Request {
        namespace: &facts.namespace,
        spec: &facts.restore.spec,
        images: status
            .images
            .iter()
            .filter_map(|i| facts.reference(i).ok())
            .collect(),
        destination_host: facts.valid.destination.as_ref().map(|d| d.host.as_str()),
    };
    scope::check(controller, &request, transfer, candidates).await
}

/// The one status write of a reconcile (none when nothing changed).
async fn write_status(
    controller: &RestoreController,
    restore: &ImageRestore,
    previous: &ImageRestoreStatus,
    status: &ImageRestoreStatus,
) -> Result<(), OperatorError> {
    let namespace = restore.namespace().unwrap_or_default();
    let api: Api<ImageRestore> = Api::namespaced(controller.context.client.clone(), &namespace);
    controller
        .written
        .write(&api, restore, previous, status)
        .await?;
    Ok(())
}

async fn publish(controller: &RestoreController, restore: &ImageRestore, note: Note) {
    let regarding = restore.object_ref(&());
    let type_ = if note.warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    crate::controllers::publish(
        &controller.recorder,
        &regarding,
        type_,
        note.reason,
        "Restore",
        note.text,
    )
    .await;
}

/// A restore's end: counted by result, its duration recorded, one Event.
async fn finished(
    controller: &RestoreController,
    restore: &ImageRestore,
    status: &ImageRestoreStatus,
) {
    let ending = status::ending(status);
    let namespace = restore.namespace().unwrap_or_default();
    let name = restore.name_any();
    let labels = object_labels(KIND, &namespace, &name);
    let mut attributes = labels.to_vec();
    attributes.push(KeyValue::new("result", ending.result));
    let metrics = &controller.context.metrics;
    metrics.restores.add(1, &attributes);
    if let Some(seconds) = ending.seconds {
        metrics.restore_duration.record(seconds, &attributes);
    }
    info!(restore = %name, %namespace, result = ending.result, "restore finished");
    publish(controller, restore, ending.note).await;
}

// --- act: pending images -------------------------------------------------------------

/// Plans and starts what can be started, source by source in the
/// restore's order; returns whether node inventories are still being
/// collected for some images (they stay Pending: look again soon).
async fn plan_pending(
    controller: &RestoreController,
    facts: &Facts<'_>,
    transfer: &Transfer,
    candidates: &[(BackupCandidate, ImageBackupPolicy)],
    status: &mut ImageRestoreStatus,
) -> Result<bool, OperatorError> {
    if !status
        .images
        .iter()
        .any(|i| i.state == ImageRestoreState::Pending)
    {
        return Ok(false);
    }
    let mut unresolved: Vec<usize> = status
        .images
        .iter()
        .enumerate()
        .filter(|(_, i)| i.state == ImageRestoreState::Pending)
        .map(|(n, _)| n)
        .collect();
    let mut why: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for index in unresolved.clone() {
        if let Err(message) = facts.reference(&status.images[index]) {
            fail(
                &mut status.images[index],
                reasons::INVALID_IMAGE_REFERENCE,
                message,
            );
            unresolved.retain(|i| *i != index);
        }
    }
    let only: Vec<BackupCandidate> = candidates.iter().map(|(c, _)| c.clone()).collect();
    let mut bytes = 0u64;
    let mut waiting = false;
    for kind in facts.restore.spec.effective_source().kinds() {
        if unresolved.is_empty() {
            break;
        }
        match kind {
            RestoreSourceKind::BackupRegistry => {
                let mut still = Vec::new();
                for index in unresolved {
                    match from_backup(facts, transfer, &only, &mut status.images[index]).await {
                        BackupOutcome::Done(copied) => bytes = bytes.saturating_add(copied),
                        BackupOutcome::NotThere(message) => {
                            why.entry(index).or_default().push(message);
                            still.push(index);
                        }
                    }
                }
                unresolved = still;
            }
            RestoreSourceKind::NodeCache => {
                let round = node_source::from_nodes(controller, facts, status, &unresolved).await?;
                waiting |= round.waiting;
                let mut still = Vec::new();
                for (index, message) in round.not_found {
                    why.entry(index).or_default().push(message);
                    still.push(index);
                }
                unresolved = still;
            }
        }
    }
    for index in unresolved {
        let message = why.remove(&index).unwrap_or_default().join("; ");
        let reference = status.images[index].reference.clone();
        fail(
            &mut status.images[index],
            reasons::IMAGE_NOT_FOUND,
            format!("{reference} cannot be restored: {message}"),
        );
    }
    status::add_bytes(status, bytes);
    Ok(waiting)
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
