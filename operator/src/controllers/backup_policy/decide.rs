//! The controller's decisions between IO steps: when to run, what to copy,
//! what to check in the source registries, and where each image stands.
//! Pure: times come in as arguments.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use lifeboat_api::backup_policy::{RunTrigger, WorkloadKind};
use lifeboat_api::schedule::{Schedule, due_run};

use super::discovery::Inventory;
use super::plan::CopyTask;
use super::status::ImageState;

/// A target known to hold an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub digest: String,
    pub at: DateTime<Utc>,
}

/// A copy that failed, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// How long a failed copy waits before it is tried again outside a full
/// run, so a broken image or registry is not hammered on every change.
pub const FAILURE_BACKOFF: TimeDelta = TimeDelta::seconds(30);

/// What the source registry said about an image, last time we asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceState {
    pub checked: DateTime<Utc>,
    pub missing_since: Option<DateTime<Utc>>,
}

/// What earlier reconciles of one policy learned.
#[derive(Default)]
pub struct PolicyMemory {
    /// The policy's copy engine and the fingerprint of its credentials.
    pub transfer: Option<(String, registry_transfer::Transfer)>,
    /// (target name, image key) -> held there.
    pub verified: HashMap<(String, String), Verified>,
    /// (target name, image key) -> last copy failure.
    pub failures: HashMap<(String, String), Failure>,
    /// image key -> source registry state.
    pub source: HashMap<String, SourceState>,
    /// Images a Warning event was emitted for (so it is emitted once).
    pub announced_missing: BTreeSet<String>,
    /// The last Stalled/blocked reason reported by event.
    pub announced_problem: Option<String>,
}

/// Whether and why to run now, and the schedule bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RunDecision {
    /// A full run (every image re-verified at every target).
    pub full_run: Option<RunTrigger>,
    pub scheduled_time: Option<DateTime<Utc>>,
    /// The requestedAt value this reconcile handles.
    pub handled_request: Option<String>,
    pub last_schedule_time: Option<DateTime<Utc>>,
    pub next_schedule_time: Option<DateTime<Utc>>,
}

/// The inputs of [`decide_run`].
pub struct RunInputs<'a> {
    pub schedule: Option<&'a Schedule>,
    pub time_zone: Tz,
    pub starting_deadline_seconds: Option<i64>,
    pub suspend: bool,
    pub created: DateTime<Utc>,
    pub last_schedule_time: Option<DateTime<Utc>>,
    pub requested_at: Option<&'a str>,
    pub last_handled: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// CronJob semantics for the schedule (no run at creation, only the most
/// recent missed time, within the deadline, nothing replayed after
/// suspend), plus on-demand runs through the requestedAt annotation, which
/// run even while suspended (suspend stops the schedule, not a person).
pub fn decide_run(inputs: &RunInputs<'_>) -> RunDecision {
    let mut decision = RunDecision {
        last_schedule_time: inputs.last_schedule_time,
        ..RunDecision::default()
    };
    if let Some(schedule) = inputs.schedule {
        let due = due_run(
            schedule,
            inputs.time_zone,
            inputs.last_schedule_time,
            inputs.created,
            inputs.now,
            inputs.starting_deadline_seconds,
            inputs.suspend,
        );
        decision.next_schedule_time = if inputs.suspend { None } else { due.next };
        if let Some(time) = due.run_now {
            decision.full_run = Some(RunTrigger::Schedule);
            decision.scheduled_time = Some(time);
            decision.last_schedule_time = Some(time);
        } else if let Some(skipped) = due.skipped {
            decision.last_schedule_time = Some(skipped.scheduled);
        }
    }
    if let Some(requested) = inputs.requested_at
        && Some(requested) != inputs.last_handled
    {
        decision.handled_request = Some(requested.to_owned());
        if decision.full_run.is_none() {
            decision.full_run = Some(RunTrigger::OnDemand);
        }
    }
    decision
}

/// Whether a task must be copied now. A full run re-verifies everything (the
/// engine only moves what the target lacks); otherwise only what no earlier
/// copy verified, and by-tag images again after `recheck` (their tag may
/// have moved).
pub fn needs_copy(
    task: &CopyTask,
    memory: &PolicyMemory,
    full_run: bool,
    now: DateTime<Utc>,
    recheck: TimeDelta,
) -> bool {
    if full_run {
        return true;
    }
    let key = (task.target_name.clone(), task.image_key.clone());
    if let Some(failure) = memory.failures.get(&key)
        && now - failure.at < FAILURE_BACKOFF
    {
        return false;
    }
    match memory
        .verified
        .get(&(task.target_name.clone(), task.image_key.clone()))
    {
        None => true,
        Some(verified) => task.source.digest.is_none() && now - verified.at >= recheck,
    }
}

/// Shortest time between two checks of one image while a pod fails to
/// pull it (kubelet retries often; the registry need not hear it each time).
pub const PULL_FAILURE_RECHECK: TimeDelta = TimeDelta::seconds(10);

/// Images to look up in their source registries now: digest-pinned images
/// never checked or checked longer than `interval` ago, and at once
/// (within [`PULL_FAILURE_RECHECK`]) every digest of a repository some pod
/// fails to pull.
pub fn source_checks_due(
    inventory: &Inventory,
    memory: &PolicyMemory,
    now: DateTime<Utc>,
    interval: TimeDelta,
) -> Vec<String> {
    let failing_names: BTreeSet<String> = inventory
        .images
        .values()
        .filter(|i| !i.pull_failures.is_empty())
        .map(|i| i.reference.name())
        .collect();
    inventory
        .images
        .iter()
        .filter(|(_, image)| image.reference.digest.is_some())
        .filter(|(key, image)| match memory.source.get(*key) {
            None => true,
            Some(state) => {
                let age = now - state.checked;
                age >= interval
                    || (failing_names.contains(&image.reference.name())
                        && age >= PULL_FAILURE_RECHECK)
            }
        })
        .map(|(key, _)| key.clone())
        .collect()
}

/// Where each selected image stands, from the inventory and the memory.
pub fn image_states(
    inventory: &Inventory,
    target_names: &[String],
    memory: &PolicyMemory,
) -> Vec<ImageState> {
    inventory
        .images
        .iter()
        .map(|(key, image)| {
            let verified_targets: Vec<String> = target_names
                .iter()
                .filter(|t| memory.verified.contains_key(&((*t).clone(), key.clone())))
                .cloned()
                .collect();
            let failure = target_names
                .iter()
                .filter(|t| !verified_targets.contains(t))
                .find_map(|t| memory.failures.get(&(t.clone(), key.clone())))
                .map(|f| (f.reason.clone(), f.message.clone()));
            ImageState {
                reference: image.reference.to_string(),
                digest: image
                    .reference
                    .digest
                    .as_ref()
                    .map(|d| d.as_str().to_owned()),
                workloads: image.workloads.len() as i32,
                verified_targets,
                failure,
                missing_since: memory.source.get(key).and_then(|s| s.missing_since),
                nodes: image.nodes.iter().cloned().collect(),
            }
        })
        .collect()
}

/// Workload counts by kind, for logs.
pub fn workloads_by_kind(inventory: &Inventory) -> HashMap<WorkloadKind, usize> {
    let mut counts = HashMap::new();
    for w in &inventory.workloads {
        *counts.entry(w.kind).or_default() += 1;
    }
    counts
}
