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

/// How long credentials read from Secrets are reused before they are read
/// again (the operator gets Secrets by name, it does not watch them).
pub const CREDENTIALS_TTL: TimeDelta = TimeDelta::seconds(30);

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
    /// When the credentials were last read, and for which generation and
    /// set of pull secrets (re-read after [`CREDENTIALS_TTL`] or a change).
    pub credentials_read: Option<(DateTime<Utc>, i64, u64)>,
    /// (target name, image key) -> held there.
    pub verified: HashMap<(String, String), Verified>,
    /// (target name, image key) -> last copy failure.
    pub failures: HashMap<(String, String), Failure>,
    /// image key -> source registry state.
    pub source: HashMap<String, SourceState>,
    /// Dry run: (target name, image key) -> when the target was last found
    /// not to hold it (asked again after the source-check interval).
    pub absent_at_target: HashMap<(String, String), DateTime<Utc>>,
    /// Images a Warning event was emitted for (so it is emitted once).
    pub announced_missing: BTreeSet<String>,
    /// Pods told (by a Warning event) that the image they fail to pull is
    /// gone: (namespace, pod, image key).
    pub announced_pods: BTreeSet<(String, String, String)>,
    /// The last Stalled/blocked reason reported by event.
    pub announced_problem: Option<String>,
    /// The digests each workload's images ran at, as the last discovery
    /// saw them: hints for pods that restart and cannot pull any more.
    pub digests_seen: super::discovery::DigestsByWorkload,
    /// When retention last looked at the targets, for which generation.
    pub retention_checked: Option<(DateTime<Utc>, i64)>,
    /// (repository, Lifeboat tag) -> what it points at (content under a
    /// digest never changes, so it is read once).
    pub retention_cache: HashMap<(String, String), super::retention::Backup>,
    /// Dry run: what retention would delete, as last planned.
    pub would_delete: Vec<String>,
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
    /// The next run, for status (none while suspended).
    pub next_schedule_time: Option<DateTime<Utc>>,
    /// When to look again for the schedule's sake, suspended or not (a
    /// passed time is recorded while suspended, so it is never replayed).
    pub wake_at: Option<DateTime<Utc>>,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use lifeboat_api::ImageReference;

    use super::super::discovery::{ImageUse, image_key};
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
                },
            );
        }
        assert!(!needs_copy(&pinned, &memory, false, at(1000), recheck));
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
        assert_eq!(
            source_checks_due(&quiet, &memory, at(0), interval),
            vec![key.clone()]
        );
        memory.source.insert(
            key.clone(),
            SourceState {
                checked: at(0),
                missing_since: None,
            },
        );
        assert!(source_checks_due(&quiet, &memory, at(60), interval).is_empty());
        assert_eq!(
            source_checks_due(&quiet, &memory, at(300), interval).len(),
            1
        );
        let failing = inventory_with(&reference, true);
        assert!(source_checks_due(&failing, &memory, at(5), interval).is_empty());
        assert_eq!(
            source_checks_due(&failing, &memory, at(10), interval).len(),
            1
        );
        // Tag-only images cannot be checked by digest.
        let by_tag = inventory_with("reg.local/web:1", false);
        assert!(source_checks_due(&by_tag, &PolicyMemory::default(), at(0), interval).is_empty());
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
            states[0].failure,
            Some(("Unauthorized".to_owned(), "401".to_owned()))
        );
        assert_eq!(states[0].missing_since, Some(at(5)));
        assert_eq!(states[0].nodes, vec!["node-2".to_owned()]);
        assert_eq!(states[0].digest.as_deref(), Some(DIGEST));
    }
}
