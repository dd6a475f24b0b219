//! Steps 2 and 4 of a policy's reconcile, the decisions: what to do (the
//! [`Plan`]: copy tasks, whether and why a run starts, which copies are
//! due) and what it all comes to (the [`Evaluation`] the status is built
//! from, in `status`). Pure: facts, memory and times come in as arguments.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use kube::ResourceExt as _;
use lifeboat_api::ImageBackupPolicy;
use lifeboat_api::backup_policy::{
    DryRunPlan, ImageBackupPolicyStatus, MAX_PLAN_ENTRIES, REQUESTED_AT_ANNOTATION, RunRecord,
    RunResult, RunTrigger,
};
use lifeboat_api::conditions::bounded_message;
use lifeboat_api::schedule::{Schedule, due_run};
use lifeboat_api::template::TemplateContext;
use lifeboat_api::time::{from_k8s_time, to_k8s_time};
use lifeboat_api::validation::ValidPolicy;

use super::act::Acted;
use super::discovery::{Inventory, Scope};
use super::memory::{FAILURE_BACKOFF, PolicyMemory};
use super::plan::{CopyTask, MappingError, PlanTarget, copy_tasks, referrers_policy};
use super::status::{Evaluation, ImageState};

/// Longest wait before a policy is looked at again.
pub(crate) const MAX_REQUEUE: Duration = Duration::from_secs(300);

/// Whether and why to run now, and the schedule bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct RunDecision {
    /// A full run (every image re-verified at every target).
    pub(crate) full_run: Option<RunTrigger>,
    pub(crate) scheduled_time: Option<DateTime<Utc>>,
    /// The requestedAt value this reconcile handles.
    pub(crate) handled_request: Option<String>,
    pub(crate) last_schedule_time: Option<DateTime<Utc>>,
    /// The next run, for status (none while suspended).
    pub(crate) next_schedule_time: Option<DateTime<Utc>>,
    /// When to look again for the schedule's sake, suspended or not (a
    /// passed time is recorded while suspended, so it is never replayed).
    pub(crate) wake_at: Option<DateTime<Utc>>,
}

/// The inputs of [`decide_run`].
pub(crate) struct RunInputs<'a> {
    pub(crate) schedule: Option<&'a Schedule>,
    pub(crate) time_zone: Tz,
    pub(crate) starting_deadline_seconds: Option<i64>,
    pub(crate) suspend: bool,
    pub(crate) created: DateTime<Utc>,
    pub(crate) last_schedule_time: Option<DateTime<Utc>>,
    pub(crate) requested_at: Option<&'a str>,
    pub(crate) last_handled: Option<&'a str>,
    pub(crate) now: DateTime<Utc>,
}

/// CronJob semantics for the schedule (no run at creation, only the most
/// recent missed time, within the deadline, nothing replayed after
/// suspend), plus on-demand runs through the requestedAt annotation, which
/// run even while suspended (suspend stops the schedule, not a person).
pub(crate) fn decide_run(inputs: &RunInputs<'_>) -> RunDecision {
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
        decision.wake_at = due.next;
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
pub(crate) fn needs_copy(
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
pub(crate) const PULL_FAILURE_RECHECK: TimeDelta = TimeDelta::seconds(10);

/// Shortest time between two checks of an image whose source registry
/// did not answer: an outage should end in status soon after it does.
pub(crate) const OUTAGE_RECHECK: TimeDelta = TimeDelta::seconds(10);

/// Images to look up in their source registries now: digest-pinned images
/// never checked or checked longer than `interval` ago, and at once
/// (within [`PULL_FAILURE_RECHECK`]) every digest of a repository some pod
/// fails to pull, and (within [`OUTAGE_RECHECK`]) those whose source did
/// not answer last time.
/// `checked_by_copy` ([`checked_by_their_copy`]) are left to the copy
/// this reconcile starts.
pub(crate) fn source_checks_due(
    inventory: &Inventory,
    memory: &PolicyMemory,
    now: DateTime<Utc>,
    interval: TimeDelta,
    checked_by_copy: &BTreeSet<String>,
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
            None => !checked_by_copy.contains(*key),
            Some(state) => {
                let age = now - state.checked;
                age >= interval
                    || (failing_names.contains(&image.reference.name())
                        && age >= PULL_FAILURE_RECHECK)
                    || (state.outage.is_some() && age >= OUTAGE_RECHECK)
            }
        })
        .map(|(key, _)| key.clone())
        .collect()
}

/// Where each selected image stands, from the inventory and the memory.
pub(crate) fn image_states(
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
            let referrers = verified_targets
                .iter()
                .filter_map(|t| memory.verified.get(&(t.clone(), key.clone())))
                .map(|v| i32::try_from(v.referrers).unwrap_or(i32::MAX))
                .max();
            ImageState {
                referrers,
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
                outage: memory.source.get(key).and_then(|s| s.outage.clone()),
                nodes: image.nodes.iter().cloned().collect(),
            }
        })
        .collect()
}

/// What a reconcile is to do: decided from the facts before any registry
/// is asked.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) now: DateTime<Utc>,
    pub(crate) generation: i64,
    pub(crate) target_names: Vec<String>,
    /// Every selected image to every target.
    pub(crate) tasks: Vec<CopyTask>,
    /// Images a target's repository template cannot name.
    pub(crate) mapping_errors: Vec<MappingError>,
    pub(crate) run: RunDecision,
    /// Copies start whenever one is due (`continuous`, not suspended).
    pub(crate) continuous: bool,
    pub(crate) suspended: bool,
    pub(crate) dry_run: bool,
    /// How often a source is checked; also how long a by-tag backup and a
    /// dry run's "the target lacks it" are trusted.
    pub(crate) check_interval: TimeDelta,
}

/// Decides what this reconcile does: the copy tasks (every image to every
/// target) and whether the schedule or an on-demand request starts a run.
pub(crate) fn plan(
    policy: &ImageBackupPolicy,
    valid: &ValidPolicy,
    inventory: &Inventory,
    previous: &ImageBackupPolicyStatus,
    now: DateTime<Utc>,
    check_interval: TimeDelta,
) -> Plan {
    let spec = &policy.spec;
    let targets: Vec<PlanTarget> = valid
        .targets
        .iter()
        .zip(&spec.targets)
        .map(|(valid, target)| PlanTarget {
            valid: valid.clone(),
            platforms: target.platforms.clone().unwrap_or_default(),
            referrers: referrers_policy(spec.referrers.as_ref()),
        })
        .collect();
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let template_context = TemplateContext {
        policy_namespace: &namespace,
        policy_name: &name,
    };
    let (tasks, mapping_errors) = copy_tasks(inventory, &targets, template_context);
    let created = policy
        .metadata
        .creation_timestamp
        .as_ref()
        .map(from_k8s_time)
        .unwrap_or(now);
    let run = decide_run(&RunInputs {
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
    Plan {
        now,
        generation: policy.metadata.generation.unwrap_or(0),
        target_names: targets.iter().map(|t| t.valid.name.clone()).collect(),
        tasks,
        mapping_errors,
        run,
        continuous: spec.continuous && !spec.suspend,
        suspended: spec.suspend,
        dry_run: spec.dry_run,
        check_interval,
    }
}

/// The copies due now (decided after the source checks): images still in
/// their source registry that [`needs_copy`] says to copy.
pub(crate) fn due_copies<'a>(plan: &'a Plan, memory: &PolicyMemory) -> Vec<&'a CopyTask> {
    let full_run = plan.run.full_run.is_some();
    plan.tasks
        .iter()
        .filter(|task| !memory.is_missing(&task.image_key))
        .filter(|task| needs_copy(task, memory, full_run, plan.now, plan.check_interval))
        .collect()
}

/// Images whose first source check is the copy this reconcile queues:
/// pinned to a digest, never checked, and due to be copied now (not a dry
/// run, and a run starts or is in flight). A copy reads the source's
/// manifest by that digest, so it answers the check (a gone image fails it
/// with `SourceNotFound`, recorded as missing); checking first would cost
/// a HEAD per new image and hold the first copy until every check has
/// answered (1,000 new images: 1,000 HEADs, two at a time). Pure.
pub(crate) fn checked_by_their_copy(plan: &Plan, memory: &PolicyMemory) -> BTreeSet<String> {
    if plan.dry_run {
        return BTreeSet::new();
    }
    let due = due_copies(plan, memory);
    if memory.run.is_none() && run_trigger(plan, due.len()).is_none() {
        return BTreeSet::new();
    }
    due.into_iter()
        .filter(|task| task.source.digest.is_some())
        .filter(|task| !memory.source.contains_key(&task.image_key))
        .map(|task| task.image_key.clone())
        .collect()
}

/// Why a run starts now, if one does: the schedule or a request (a full
/// run), else `continuous` when some copy is due.
pub(crate) fn run_trigger(plan: &Plan, due: usize) -> Option<RunTrigger> {
    match plan.run.full_run {
        Some(trigger) => Some(trigger),
        None if plan.continuous && due > 0 => Some(RunTrigger::Continuous),
        None => None,
    }
}

/// What the copies of one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RunTally {
    pub(crate) copied: i32,
    pub(crate) up_to_date: i32,
    pub(crate) failed: i32,
    pub(crate) bytes: u64,
    pub(crate) first_error: Option<String>,
}

impl RunTally {
    pub(crate) fn result(&self) -> RunResult {
        if self.failed == 0 {
            RunResult::Succeeded
        } else if self.copied + self.up_to_date > 0 {
            RunResult::PartiallyFailed
        } else {
            RunResult::Failed
        }
    }

    pub(crate) fn summary(&self) -> String {
        let mut text = format!(
            "{} copied, {} already up to date, {} failed, {} bytes",
            self.copied, self.up_to_date, self.failed, self.bytes
        );
        if let Some(error) = &self.first_error {
            text.push_str(&format!("; first failure: {error}"));
        }
        text
    }

    /// The run's entry in `status.history`.
    pub(crate) fn record(
        &self,
        trigger: RunTrigger,
        started: DateTime<Utc>,
        completed: DateTime<Utc>,
        scheduled: Option<DateTime<Utc>>,
    ) -> RunRecord {
        RunRecord {
            trigger,
            result: self.result(),
            start_time: to_k8s_time(started),
            completion_time: Some(to_k8s_time(completed)),
            scheduled_time: scheduled.map(to_k8s_time),
            copied: self.copied,
            up_to_date: self.up_to_date,
            failed: self.failed,
            deleted: 0,
            bytes_copied: i64::try_from(self.bytes).unwrap_or(i64::MAX),
            message: Some(bounded_message(self.summary(), 1024)),
        }
    }
}

/// Adds a retention pass's deletions to this reconcile's record: to the
/// run's, or (no run) to a record of their own, which goes into the history
/// but says nothing about backups (the returned flag, `retention_only`).
pub(crate) fn with_deletions(
    run: Option<RunRecord>,
    deleted: &[String],
    now: DateTime<Utc>,
) -> (Option<RunRecord>, bool) {
    let count = i32::try_from(deleted.len()).unwrap_or(i32::MAX);
    if count == 0 {
        return (run, false);
    }
    let note = format!("retention deleted {count} digests");
    match run {
        Some(mut record) => {
            record.deleted = count;
            let message = format!("{}; {note}", record.message.clone().unwrap_or_default());
            record.message = Some(bounded_message(message, 1024));
            (Some(record), false)
        }
        None => {
            let at = to_k8s_time(now);
            let record = RunRecord {
                trigger: RunTrigger::Continuous,
                result: RunResult::Succeeded,
                start_time: at.clone(),
                completion_time: Some(at),
                scheduled_time: None,
                copied: 0,
                up_to_date: 0,
                failed: 0,
                deleted: count,
                bytes_copied: 0,
                message: Some(bounded_message(
                    format!("{note}: {}", deleted.join(", ")),
                    1024,
                )),
            };
            (Some(record), true)
        }
    }
}

/// A dry run's plan with what retention would delete (sorted, bounded).
pub(crate) fn with_would_delete(mut plan: DryRunPlan, would_delete: &[String]) -> DryRunPlan {
    let mut would_delete = would_delete.to_vec();
    would_delete.sort();
    plan.would_delete_total = i32::try_from(would_delete.len()).unwrap_or(i32::MAX);
    would_delete.truncate(MAX_PLAN_ENTRIES);
    plan.would_delete = would_delete;
    plan
}

/// The ScopeRestricted message of a tenant policy (outside the operator's
/// namespace), `None` for others.
pub(crate) fn scope_restricted(scope: &Scope) -> Option<String> {
    scope.only_namespace.as_ref().map(|own| {
        if scope.selector_reaches_beyond() {
            format!("this policy is outside the operator's namespace: it protects only namespace {own}, whatever its selector names")
        } else {
            format!("this policy is outside the operator's namespace: it protects only namespace {own}")
        }
    })
}

/// Everything the new status is built from (see `status::evaluated_status`).
pub(crate) fn evaluation(
    plan: &Plan,
    scope: &Scope,
    inventory: &Inventory,
    memory: &PolicyMemory,
    acted: &Acted,
    previous: &ImageBackupPolicyStatus,
) -> Evaluation {
    let bytes_before = previous.summary.as_ref().map_or(0, |s| s.bytes_copied);
    let bytes_this_run = acted.finished_run.as_ref().map_or(0, |r| r.bytes_copied);
    Evaluation {
        generation: plan.generation,
        now: plan.now,
        target_count: plan.target_names.len(),
        workloads: i32::try_from(inventory.workloads.len()).unwrap_or(i32::MAX),
        images: image_states(inventory, &plan.target_names, memory),
        finished_run: acted.finished_run.clone(),
        last_schedule_time: plan.run.last_schedule_time,
        next_schedule_time: plan.run.next_schedule_time,
        handled_request: plan.run.handled_request.clone(),
        scope_restricted: scope_restricted(scope),
        plan: acted.dry_run_plan.clone(),
        dry_run: plan.dry_run,
        bytes_copied_total: bytes_before.saturating_add(bytes_this_run),
        referrers_held: memory.referrers_held(),
        retention_only: acted.retention_only,
        running: acted.running.clone(),
    }
}

/// When to look again: the next scheduled time or the next source check
/// (sooner during an outage), whichever is first, at most [`MAX_REQUEUE`].
pub(crate) fn requeue_after(
    next_schedule: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    check_interval: Duration,
    outage: bool,
) -> Duration {
    let mut wait = check_interval.min(MAX_REQUEUE);
    if outage {
        wait = wait.min(OUTAGE_RECHECK.to_std().unwrap_or(wait));
    }
    if let Some(next) = next_schedule {
        let until = (next - now).to_std().unwrap_or(Duration::ZERO) + Duration::from_secs(1);
        wait = wait.min(until);
    }
    wait.max(Duration::from_secs(1))
}

/// A fingerprint of a value (the set of pull secrets a policy's workloads
/// name), to notice a change without keeping the value.
pub(crate) fn fingerprint<T: std::hash::Hash>(value: &T) -> u64 {
    use std::hash::Hasher as _;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use lifeboat_api::ImageReference;

    use super::super::discovery::{ImageUse, image_key};
    use super::super::memory::{Failure, SourceState, Verified};
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn inputs<'a>(schedule: Option<&'a Schedule>) -> RunInputs<'a> {
        RunInputs {
            schedule,
            time_zone: Tz::UTC,
            starting_deadline_seconds: None,
            suspend: false,
            created: at(0),
            last_schedule_time: None,
            requested_at: None,
            last_handled: None,
            now: at(0),
        }
    }

    #[test]
    fn no_run_at_creation_then_the_schedule_fires() {
        let hourly = Schedule::parse("0 * * * *").unwrap();
        // at(0) = 2027-01-15T08:00:00Z is on the hour: created right then.
        let decision = decide_run(&inputs(Some(&hourly)));
        assert_eq!(decision.full_run, None);
        assert!(decision.next_schedule_time.is_some());
        let next = decision.next_schedule_time.unwrap();
        let later = decide_run(&RunInputs {
            now: next + TimeDelta::seconds(5),
            ..inputs(Some(&hourly))
        });
        assert_eq!(later.full_run, Some(RunTrigger::Schedule));
        assert_eq!(later.scheduled_time, Some(next));
        assert_eq!(later.last_schedule_time, Some(next));
    }

    #[test]
    fn suspended_and_late_runs_are_recorded_not_replayed() {
        let hourly = Schedule::parse("0 * * * *").unwrap();
        let first = decide_run(&inputs(Some(&hourly)))
            .next_schedule_time
            .unwrap();
        let suspended = decide_run(&RunInputs {
            suspend: true,
            now: first + TimeDelta::seconds(5),
            ..inputs(Some(&hourly))
        });
        assert_eq!(suspended.full_run, None);
        assert_eq!(suspended.last_schedule_time, Some(first));
        assert_eq!(suspended.next_schedule_time, None);
        assert!(suspended.wake_at.is_some());
        let late = decide_run(&RunInputs {
            starting_deadline_seconds: Some(60),
            now: first + TimeDelta::seconds(600),
            ..inputs(Some(&hourly))
        });
        assert_eq!(late.full_run, None);
        assert_eq!(late.last_schedule_time, Some(first));
    }

    #[test]
    fn requested_at_runs_once_even_while_suspended() {
        let decision = decide_run(&RunInputs {
            requested_at: Some("2027-01-01T00:00:00Z"),
            suspend: true,
            ..inputs(None)
        });
        assert_eq!(decision.full_run, Some(RunTrigger::OnDemand));
        assert_eq!(
            decision.handled_request.as_deref(),
            Some("2027-01-01T00:00:00Z")
        );
        let handled = decide_run(&RunInputs {
            requested_at: Some("2027-01-01T00:00:00Z"),
            last_handled: Some("2027-01-01T00:00:00Z"),
            ..inputs(None)
        });
        assert_eq!(handled.full_run, None);
        assert_eq!(handled.handled_request, None);
    }

    fn task(reference: &str) -> CopyTask {
        let source = ImageReference::parse(reference).unwrap();
        CopyTask {
            image_key: image_key(&source),
            destination: source.clone(),
            source,
            target_name: "backup".into(),
            platforms: vec![],
            referrers: registry_transfer::ReferrersPolicy::All,
        }
    }

    const DIGEST: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    #[test]
    fn only_unverified_tasks_are_copied_and_failures_back_off() {
        let pinned = task(&format!("reg.local/web:1@{DIGEST}"));
        let by_tag = task("reg.local/cron:7");
        let mut memory = PolicyMemory::default();
        let recheck = TimeDelta::seconds(300);
        assert!(needs_copy(&pinned, &memory, false, at(0), recheck));
        for t in [&pinned, &by_tag] {
            memory.verified.insert(
                (t.target_name.clone(), t.image_key.clone()),
                Verified {
                    digest: DIGEST.into(),
                    at: at(0),
                    referrers: 2,
                },
            );
        }
        assert!(!needs_copy(&pinned, &memory, false, at(1000), recheck));
        assert_eq!(memory.referrers_held(), 4, "2 referrers with each image");
        assert!(
            needs_copy(&pinned, &memory, true, at(1), recheck),
            "full run"
        );
        // A tag may move: checked again after the recheck interval.
        assert!(!needs_copy(&by_tag, &memory, false, at(10), recheck));
        assert!(needs_copy(&by_tag, &memory, false, at(300), recheck));

        let failing = task("reg.local/gone:1");
        memory.failures.insert(
            (failing.target_name.clone(), failing.image_key.clone()),
            Failure {
                reason: "SourceNotFound".into(),
                message: "gone".into(),
                at: at(0),
            },
        );
        assert!(!needs_copy(&failing, &memory, false, at(10), recheck));
        assert!(needs_copy(&failing, &memory, false, at(31), recheck));
    }

    fn inventory_with(reference: &str, pull_failure: bool) -> Inventory {
        let reference = ImageReference::parse(reference).unwrap();
        let mut inventory = Inventory::default();
        inventory.images.insert(
            image_key(&reference),
            ImageUse {
                reference,
                workloads: BTreeSet::new(),
                nodes: ["node-2".to_owned()].into(),
                pull_failures: if pull_failure {
                    [("shop".to_owned(), "web-1".to_owned())].into()
                } else {
                    BTreeSet::new()
                },
                pull_secrets: BTreeSet::new(),
            },
        );
        inventory
    }

    #[test]
    fn source_checks_on_an_interval_and_at_once_on_pull_failures() {
        let reference = format!("reg.local/web:1@{DIGEST}");
        let key = format!("reg.local/web@{DIGEST}");
        let interval = TimeDelta::seconds(300);
        let quiet = inventory_with(&reference, false);
        let mut memory = PolicyMemory::default();
        let none = BTreeSet::new();
        // Left to its first copy: not asked now.
        let by_copy = BTreeSet::from([key.clone()]);
        assert!(source_checks_due(&quiet, &memory, at(0), interval, &by_copy).is_empty());
        assert_eq!(
            source_checks_due(&quiet, &memory, at(0), interval, &none),
            vec![key.clone()]
        );
        memory.source.insert(
            key.clone(),
            SourceState {
                checked: at(0),
                missing_since: None,
                outage: None,
            },
        );
        assert!(source_checks_due(&quiet, &memory, at(60), interval, &none).is_empty());
        assert_eq!(
            source_checks_due(&quiet, &memory, at(300), interval, &none).len(),
            1
        );
        let failing = inventory_with(&reference, true);
        assert!(source_checks_due(&failing, &memory, at(5), interval, &none).is_empty());
        assert_eq!(
            source_checks_due(&failing, &memory, at(10), interval, &none).len(),
            1
        );
        // Tag-only images cannot be checked by digest.
        let by_tag = inventory_with("reg.local/web:1", false);
        assert!(
            source_checks_due(&by_tag, &PolicyMemory::default(), at(0), interval, &none).is_empty()
        );
    }

    #[test]
    fn image_states_carry_restore_locations() {
        let reference = format!("reg.local/web:1@{DIGEST}");
        let key = format!("reg.local/web@{DIGEST}");
        let inventory = inventory_with(&reference, false);
        let mut memory = PolicyMemory::default();
        memory.verified.insert(
            ("backup".into(), key.clone()),
            Verified {
                digest: DIGEST.into(),
                at: at(0),
                referrers: 3,
            },
        );
        memory.failures.insert(
            ("offsite".into(), key.clone()),
            Failure {
                reason: "Unauthorized".into(),
                message: "401".into(),
                at: at(0),
            },
        );
        memory.source.insert(
            key,
            SourceState {
                checked: at(5),
                missing_since: Some(at(5)),
                outage: None,
            },
        );
        let states = image_states(
            &inventory,
            &["backup".to_owned(), "offsite".to_owned()],
            &memory,
        );
        assert_eq!(states.len(), 1);
        assert_eq!(states[0].verified_targets, vec!["backup".to_owned()]);
        assert_eq!(
            states[0].referrers,
            Some(3),
            "what the backup holds with it"
        );
        assert_eq!(
            states[0].failure,
            Some(("Unauthorized".to_owned(), "401".to_owned()))
        );
        assert_eq!(states[0].missing_since, Some(at(5)));
        assert_eq!(states[0].nodes, vec!["node-2".to_owned()]);
        assert_eq!(states[0].digest.as_deref(), Some(DIGEST));
    }

    #[test]
    fn requeue_for_the_schedule_or_the_next_source_check() {
        let now = at(0);
        let check = Duration::from_secs(20);
        assert_eq!(requeue_after(None, now, check, false), check);
        assert_eq!(
            requeue_after(Some(now + TimeDelta::seconds(5)), now, check, false),
            Duration::from_secs(6)
        );
        // Never longer than MAX_REQUEUE, never a busy loop.
        assert_eq!(
            requeue_after(None, now, Duration::from_secs(3600), false),
            MAX_REQUEUE
        );
        assert_eq!(
            requeue_after(Some(now - TimeDelta::seconds(5)), now, check, false),
            Duration::from_secs(1)
        );
        // During an outage the source is asked again soon.
        assert_eq!(
            requeue_after(None, now, check, true),
            OUTAGE_RECHECK.to_std().unwrap()
        );
    }

    fn policy(spec: serde_json::Value, annotations: serde_json::Value) -> ImageBackupPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "lifeboat.dev/v1alpha1", "kind": "ImageBackupPolicy",
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "uid-1", "generation": 4,
                "annotations": annotations,
                "creationTimestamp": "2027-01-15T08:00:00Z",
            },
            "spec": spec,
        }))
        .unwrap()
    }

    fn plan_for(policy: &ImageBackupPolicy, inventory: &Inventory) -> Plan {
        let valid = lifeboat_api::validation::validate_policy_spec(&policy.spec).unwrap();
        plan(
            policy,
            &valid,
            inventory,
            &ImageBackupPolicyStatus::default(),
            at(0),
            TimeDelta::seconds(300),
        )
    }

    #[test]
    fn the_plan_maps_every_image_to_every_target_and_reads_the_request() {
        let policy = policy(
            serde_json::json!({"continuous": true, "targets": [
                {"name": "one", "registry": "backup.example", "platforms": ["linux/amd64"]},
                {"name": "two", "registry": "other.example"},
            ]}),
            serde_json::json!({(REQUESTED_AT_ANNOTATION): "2027-01-01T00:00:00Z"}),
        );
        let inventory = inventory_with(&format!("reg.local/web:1@{DIGEST}"), false);
        let plan = plan_for(&policy, &inventory);
        assert_eq!(plan.generation, 4);
        assert_eq!(plan.target_names, vec!["one".to_owned(), "two".to_owned()]);
        assert_eq!(plan.tasks.len(), 2);
        assert_eq!(plan.tasks[0].platforms, vec!["linux/amd64".to_owned()]);
        assert!(plan.tasks[1].platforms.is_empty());
        assert!(plan.mapping_errors.is_empty());
        assert_eq!(plan.run.full_run, Some(RunTrigger::OnDemand));
        assert!(plan.continuous && !plan.dry_run && !plan.suspended);
    }

    #[test]
    fn lost_images_are_not_copied_and_continuous_runs_only_when_something_is_due() {
        let policy = policy(
            serde_json::json!({"continuous": true, "targets": [
                {"name": "backup", "registry": "backup.example"},
            ]}),
            serde_json::json!({}),
        );
        let inventory = inventory_with(&format!("reg.local/web:1@{DIGEST}"), false);
        let plan = plan_for(&policy, &inventory);
        let mut memory = PolicyMemory::default();
        assert_eq!(due_copies(&plan, &memory).len(), 1);
        assert_eq!(run_trigger(&plan, 1), Some(RunTrigger::Continuous));
        assert_eq!(run_trigger(&plan, 0), None);
        memory.source.insert(
            plan.tasks[0].image_key.clone(),
            SourceState {
                checked: at(0),
                missing_since: Some(at(0)),
                outage: None,
            },
        );
        assert!(
            due_copies(&plan, &memory).is_empty(),
            "lost: nothing to copy from"
        );

        let not_continuous = Plan {
            continuous: false,
            ..plan.clone()
        };
        assert_eq!(run_trigger(&not_continuous, 1), None);
        let scheduled = Plan {
            run: RunDecision {
                full_run: Some(RunTrigger::Schedule),
                ..RunDecision::default()
            },
            ..not_continuous
        };
        assert_eq!(run_trigger(&scheduled, 0), Some(RunTrigger::Schedule));
    }

    #[test]
    fn a_new_image_s_first_source_check_is_its_copy() {
        let policy = policy(
            serde_json::json!({"continuous": true, "targets": [
                {"name": "backup", "registry": "backup.example"},
            ]}),
            serde_json::json!({}),
        );
        let inventory = inventory_with(&format!("reg.local/web:1@{DIGEST}"), false);
        let plan = plan_for(&policy, &inventory);
        let key = plan.tasks[0].image_key.clone();
        let mut memory = PolicyMemory::default();
        assert_eq!(
            checked_by_their_copy(&plan, &memory),
            BTreeSet::from([key.clone()])
        );
        // A dry run copies nothing: its images are checked as before.
        let dry = Plan {
            dry_run: true,
            ..plan.clone()
        };
        assert!(checked_by_their_copy(&dry, &memory).is_empty());
        // No run starts (a scheduled policy between runs): checked now.
        let waiting = Plan {
            continuous: false,
            ..plan.clone()
        };
        assert!(checked_by_their_copy(&waiting, &memory).is_empty());
        // By tag alone: the copy does not name a digest to answer for.
        let by_tag = plan_for(&policy, &inventory_with("reg.local/web:1", false));
        assert!(checked_by_their_copy(&by_tag, &memory).is_empty());
        // Checked before: its checks follow the interval, not the copy.
        memory.source.insert(
            key,
            SourceState {
                checked: at(0),
                missing_since: None,
                outage: None,
            },
        );
        assert!(checked_by_their_copy(&plan, &memory).is_empty());
    }

    #[test]
    fn a_run_is_succeeded_partially_failed_or_failed() {
        let mut tally = RunTally {
            copied: 2,
            up_to_date: 1,
            bytes: 300,
            ..RunTally::default()
        };
        assert_eq!(tally.result(), RunResult::Succeeded);
        assert_eq!(
            tally.summary(),
            "2 copied, 1 already up to date, 0 failed, 300 bytes"
        );
        tally.failed = 1;
        tally.first_error = Some("a -> backup: denied".into());
        assert_eq!(tally.result(), RunResult::PartiallyFailed);
        assert!(
            tally
                .summary()
                .ends_with("; first failure: a -> backup: denied")
        );
        let none_done = RunTally {
            failed: 2,
            ..RunTally::default()
        };
        assert_eq!(none_done.result(), RunResult::Failed);

        let record = tally.record(RunTrigger::Schedule, at(0), at(9), Some(at(-1)));
        assert_eq!(record.result, RunResult::PartiallyFailed);
        assert_eq!(record.start_time, to_k8s_time(at(0)));
        assert_eq!(record.completion_time, Some(to_k8s_time(at(9))));
        assert_eq!(record.scheduled_time, Some(to_k8s_time(at(-1))));
        assert_eq!((record.copied, record.up_to_date, record.failed), (2, 1, 1));
        assert_eq!(record.bytes_copied, 300);
        assert_eq!(record.deleted, 0);
    }

    #[test]
    fn deletions_go_into_the_run_or_a_retention_record_of_their_own() {
        let deleted = vec!["b/r@sha256:1 (beyond keepLast)".to_owned()];
        assert_eq!(with_deletions(None, &[], at(0)), (None, false));
        let run = RunTally::default().record(RunTrigger::Continuous, at(0), at(1), None);
        let (record, retention_only) = with_deletions(Some(run), &deleted, at(1));
        let record = record.unwrap();
        assert!(!retention_only);
        assert_eq!(record.deleted, 1);
        assert!(
            record
                .message
                .unwrap()
                .ends_with("; retention deleted 1 digests")
        );

        let (record, retention_only) = with_deletions(None, &deleted, at(5));
        let record = record.unwrap();
        assert!(retention_only);
        assert_eq!(record.result, RunResult::Succeeded);
        assert_eq!((record.copied, record.deleted), (0, 1));
        assert_eq!(
            record.message.as_deref(),
            Some("retention deleted 1 digests: b/r@sha256:1 (beyond keepLast)")
        );
    }

    #[test]
    fn the_dry_run_plan_lists_deletions_sorted_and_bounded() {
        let would_delete: Vec<String> = (0..MAX_PLAN_ENTRIES + 3)
            .rev()
            .map(|i| format!("r@sha256:{i:04}"))
            .collect();
        let plan = with_would_delete(DryRunPlan::default(), &would_delete);
        assert_eq!(
            plan.would_delete_total,
            i32::try_from(MAX_PLAN_ENTRIES + 3).unwrap()
        );
        assert_eq!(plan.would_delete.len(), MAX_PLAN_ENTRIES);
        assert_eq!(plan.would_delete[0], "r@sha256:0000");
    }

    #[test]
    fn only_a_tenant_policy_is_scope_restricted() {
        let selector = lifeboat_api::backup_policy::WorkloadSelector::default();
        let operators = Scope::for_policy("lifeboat-system", "lifeboat-system", selector.clone());
        assert_eq!(scope_restricted(&operators), None);
        let tenant = Scope::for_policy("shop", "lifeboat-system", selector);
        assert_eq!(
            scope_restricted(&tenant).as_deref(),
            Some(
                "this policy is outside the operator's namespace: it protects only namespace shop"
            )
        );
    }

    #[test]
    fn the_evaluation_adds_this_run_to_the_bytes_copied_so_far() {
        let policy = policy(
            serde_json::json!({"targets": [{"name": "backup", "registry": "backup.example"}]}),
            serde_json::json!({}),
        );
        let inventory = inventory_with(&format!("reg.local/web:1@{DIGEST}"), false);
        let plan = plan_for(&policy, &inventory);
        let scope = Scope::for_policy("shop", "shop", Default::default());
        let previous = ImageBackupPolicyStatus {
            summary: Some(lifeboat_api::backup_policy::PolicySummary {
                bytes_copied: 1000,
                ..Default::default()
            }),
            ..ImageBackupPolicyStatus::default()
        };
        let tally = RunTally {
            copied: 1,
            bytes: 24,
            ..RunTally::default()
        };
        let acted = Acted {
            finished_run: Some(tally.record(RunTrigger::OnDemand, at(0), at(1), None)),
            ..Acted::default()
        };
        let mut memory = PolicyMemory::default();
        memory.verified_with_referrers("backup", "k", DIGEST.into(), at(0), 3);
        let evaluation = evaluation(&plan, &scope, &inventory, &memory, &acted, &previous);
        assert_eq!(evaluation.bytes_copied_total, 1024);
        assert_eq!(evaluation.referrers_held, 3);
        assert_eq!(evaluation.generation, 4);
        assert_eq!(evaluation.target_count, 1);
        assert_eq!(evaluation.images.len(), 1);
        assert!(evaluation.finished_run.is_some());
        assert_eq!(evaluation.scope_restricted, None);
        let idle = evaluation_without_run(&plan, &scope, &inventory, &memory, &previous);
        assert_eq!(idle.bytes_copied_total, 1000);
    }

    fn evaluation_without_run(
        plan: &Plan,
        scope: &Scope,
        inventory: &Inventory,
        memory: &PolicyMemory,
        previous: &ImageBackupPolicyStatus,
    ) -> Evaluation {
        evaluation(plan, scope, inventory, memory, &Acted::default(), previous)
    }

    #[test]
    fn a_fingerprint_changes_with_the_value() {
        let one: BTreeSet<(String, String)> = [("shop".into(), "pull".into())].into();
        let two: BTreeSet<(String, String)> = [("shop".into(), "other".into())].into();
        assert_eq!(fingerprint(&one), fingerprint(&one.clone()));
        assert_ne!(fingerprint(&one), fingerprint(&two));
    }
}
