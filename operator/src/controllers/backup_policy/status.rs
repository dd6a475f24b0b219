//! From what a reconcile found and did to the policy's status. Pure: the
//! same facts give the same status, so an unchanged cluster writes nothing.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use lifeboat_api::backup_policy::{
    DryRunPlan, ImageBackupPolicyStatus, MAX_HISTORY, MAX_MISSING_IMAGES, MAX_RESTORE_LOCATIONS,
    MissingImage, PolicySummary, RunRecord, UnreachableImage,
};
use lifeboat_api::conditions::{
    ConditionStatus, new_condition, reasons, remove_condition, set_condition, types,
};
use lifeboat_api::time::to_k8s_time;

pub(crate) use super::memory::SourceOutage;

/// Where one selected image stands.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageState {
    pub reference: String,
    pub digest: Option<String>,
    pub workloads: i32,
    /// Targets known to hold it.
    pub verified_targets: Vec<String>,
    /// The last copy failure to any target: (reason, message).
    pub failure: Option<(String, String)>,
    /// Gone from its source registry since then.
    pub missing_since: Option<DateTime<Utc>>,
    /// Its source registry could not say whether it holds it (an outage).
    pub outage: Option<SourceOutage>,
    /// Nodes that run it (restore candidates).
    pub nodes: Vec<String>,
    /// Referrers held with it, the most any verified target holds.
    pub referrers: Option<i32>,
}

/// Everything one reconcile learned.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub generation: i64,
    pub now: DateTime<Utc>,
    pub target_count: usize,
    pub workloads: i32,
    pub images: Vec<ImageState>,
    /// A run that finished in this reconcile.
    pub finished_run: Option<RunRecord>,
    pub last_schedule_time: Option<DateTime<Utc>>,
    pub next_schedule_time: Option<DateTime<Utc>>,
    pub handled_request: Option<String>,
    /// Message for ScopeRestricted when a tenant policy is limited.
    pub scope_restricted: Option<String>,
    pub plan: Option<DryRunPlan>,
    pub dry_run: bool,
    pub bytes_copied_total: i64,
    /// Referrers held with the images in the targets (`summary.referrers`).
    pub referrers_held: i32,
    /// `finished_run` is a retention pass outside a backup run: it goes
    /// into the history but says nothing about backups.
    pub retention_only: bool,
    /// A run still copying: its progress message (Reconciling=True).
    pub running: Option<String>,
}

pub(crate) use crate::controllers::whole_seconds;

fn time(t: DateTime<Utc>) -> Time {
    to_k8s_time(whole_seconds(t))
}

fn set(
    status: &mut ImageBackupPolicyStatus,
    now: &Time,
    type_: &str,
    value: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    generation: i64,
) {
    set_condition(
        &mut status.conditions,
        new_condition(type_, value, reason, message, Some(generation)),
        now.clone(),
    );
}

/// How many images are in each state. `missing` and `unreachable` say
/// what the source registry said; the others what the targets hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub protected: i32,
    pub pending: i32,
    pub failed: i32,
    pub missing: i32,
    pub unreachable: i32,
}

impl Counts {
    /// Each state with its metric label.
    pub fn labelled(self) -> [(&'static str, i32); 5] {
        [
            ("protected", self.protected),
            ("pending", self.pending),
            ("failed", self.failed),
            ("missing", self.missing),
            ("unreachable", self.unreachable),
        ]
    }
}

/// Counts per state.
pub fn counts(images: &[ImageState], target_count: usize) -> Counts {
    let mut counts = Counts::default();
    for image in images {
        if image.missing_since.is_some() {
            counts.missing += 1;
        } else if image.outage.is_some() {
            counts.unreachable += 1;
        }
        if image.verified_targets.len() >= target_count {
            counts.protected += 1;
        } else if image.failure.is_some() {
            counts.failed += 1;
        } else {
            counts.pending += 1;
        }
    }
    counts
}

/// The status after a normal reconcile.
pub fn evaluated_status(
    previous: &ImageBackupPolicyStatus,
    evaluation: &Evaluation,
) -> ImageBackupPolicyStatus {
    let mut status = previous.clone();
    let now = time(evaluation.now);
    let generation = evaluation.generation;
    status.observed_generation = generation;
    remove_condition(&mut status.conditions, types::STALLED);
    match &evaluation.running {
        // Kept while the run copies (its transition time with it).
        Some(message) => set(
            &mut status,
            &now,
            types::RECONCILING,
            ConditionStatus::True,
            reasons::BACKUP_RUNNING,
            message.clone(),
            generation,
        ),
        None => {
            remove_condition(&mut status.conditions, types::RECONCILING);
        }
    }
    let counts = set_images(&mut status, evaluation);
    set_runs_and_schedule(&mut status, evaluation);
    match &evaluation.scope_restricted {
        Some(message) => set(
            &mut status,
            &now,
            types::SCOPE_RESTRICTED,
            ConditionStatus::True,
            reasons::OWN_NAMESPACE_ONLY,
            message.clone(),
            generation,
        ),
        None => {
            remove_condition(&mut status.conditions, types::SCOPE_RESTRICTED);
        }
    }
    set_ready(&mut status, &now, evaluation, counts);
    set_last_backup(&mut status, &now, evaluation);
    set_images_available(&mut status, &now, evaluation, counts);
    status
}

/// The summary, the missing and the unreachable images (sorted, bounded);
/// returns the counts per state.
fn set_images(status: &mut ImageBackupPolicyStatus, evaluation: &Evaluation) -> Counts {
    let counts = counts(&evaluation.images, evaluation.target_count);
    let selected = i32::try_from(evaluation.images.len()).unwrap_or(i32::MAX);
    status.summary = Some(PolicySummary {
        workloads: evaluation.workloads,
        selected,
        protected: counts.protected,
        pending: counts.pending,
        failed: counts.failed,
        missing: counts.missing,
        unreachable: Some(counts.unreachable),
        bytes_copied: evaluation.bytes_copied_total,
        referrers: Some(evaluation.referrers_held),
    });
    let (missing_images, total) = bounded(evaluation.images.iter().filter_map(|image| {
        let since = image.missing_since?;
        Some(MissingImage {
            reference: image.reference.clone(),
            digest: image.digest.clone(),
            since: time(since),
            workloads: image.workloads,
            backup_targets: backup_targets(image),
            nodes: nodes(image),
            referrers: image.referrers,
        })
    }));
    status.missing_images = missing_images;
    status.missing_images_total = total;
    let (unreachable_images, total) = bounded(evaluation.images.iter().filter_map(|image| {
        let outage = image
            .outage
            .as_ref()
            .filter(|_| image.missing_since.is_none())?;
        Some(UnreachableImage {
            reference: image.reference.clone(),
            digest: image.digest.clone(),
            since: time(outage.since),
            reason: outage.reason.clone(),
            message: shortened(&outage.message, UNREACHABLE_MESSAGE_LENGTH),
            workloads: image.workloads,
            backup_targets: backup_targets(image),
            nodes: nodes(image),
            referrers: image.referrers,
        })
    }));
    status.unreachable_images = unreachable_images;
    status.unreachable_images_total = total;
    counts
}

/// Longest `message` of an unreachable image (the CRD's bound).
const UNREACHABLE_MESSAGE_LENGTH: usize = 512;

/// Status entries sorted by reference and cut to [`MAX_MISSING_IMAGES`],
/// with the total when there are any.
fn bounded<T: HasReference>(entries: impl Iterator<Item = T>) -> (Vec<T>, Option<i32>) {
    let mut entries: Vec<T> = entries.collect();
    entries.sort_by(|a, b| a.reference().cmp(b.reference()));
    let total = entries.len();
    entries.truncate(MAX_MISSING_IMAGES);
    let total = (total > 0).then(|| i32::try_from(total).unwrap_or(i32::MAX));
    (entries, total)
}

trait HasReference {
    fn reference(&self) -> &str;
}
impl HasReference for MissingImage {
    fn reference(&self) -> &str {
        &self.reference
    }
}
impl HasReference for UnreachableImage {
    fn reference(&self) -> &str {
        &self.reference
    }
}

fn backup_targets(image: &ImageState) -> Vec<String> {
    image.verified_targets.iter().take(4).cloned().collect()
}

fn nodes(image: &ImageState) -> Vec<String> {
    image
        .nodes
        .iter()
        .take(MAX_RESTORE_LOCATIONS)
        .cloned()
        .collect()
}

/// `message` cut to at most `max` bytes, on a character boundary.
fn shortened(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

/// The history (a finished run first, bounded), the last success, the
/// schedule's times, the handled request and the dry-run plan.
fn set_runs_and_schedule(status: &mut ImageBackupPolicyStatus, evaluation: &Evaluation) {
    if let Some(run) = &evaluation.finished_run {
        status.history.insert(0, run.clone());
        status.history.truncate(MAX_HISTORY);
        if !evaluation.retention_only
            && matches!(
                run.result,
                lifeboat_api::backup_policy::RunResult::Succeeded
            )
        {
            status.last_successful_time = run.completion_time.clone();
        }
    }
    status.last_schedule_time = evaluation.last_schedule_time.map(time);
    status.next_schedule_time = evaluation.next_schedule_time.map(time);
    if evaluation.handled_request.is_some() {
        status.last_handled_reconcile_at = evaluation.handled_request.clone();
    }
    status.plan = evaluation.plan.clone();
}

/// Ready: every selected image is held by every target (a dry run is
/// Ready with what it would do).
fn set_ready(
    status: &mut ImageBackupPolicyStatus,
    now: &Time,
    evaluation: &Evaluation,
    Counts {
        protected,
        pending,
        failed,
        ..
    }: Counts,
) {
    let generation = evaluation.generation;
    let selected = evaluation.images.len();
    let first_failure = evaluation
        .images
        .iter()
        .find_map(|i| i.failure.as_ref().map(|f| (i, f)));
    let (value, reason, message) = if evaluation.dry_run {
        (
            ConditionStatus::True,
            reasons::DRY_RUN,
            format!(
                "dry run: {selected} images selected, {} would be copied, {} deleted by retention; nothing is written",
                evaluation.plan.as_ref().map_or(0, |p| p.would_copy_total),
                evaluation.plan.as_ref().map_or(0, |p| p.would_delete_total)
            ),
        )
    } else if let Some((image, (reason, message))) = first_failure {
        (
            ConditionStatus::False,
            if protected > 0 {
                reasons::BACKUP_PARTIALLY_FAILED
            } else {
                reasons::BACKUP_FAILED
            },
            format!(
                "{failed} of {selected} images could not be backed up; {}: {reason}: {message}",
                image.reference
            ),
        )
    } else if pending > 0 {
        (
            ConditionStatus::False,
            reasons::NO_BACKUP_YET,
            format!("{pending} of {selected} images are not backed up yet"),
        )
    } else {
        (
            ConditionStatus::True,
            reasons::PROTECTED,
            format!(
                "{protected} images backed up to {} targets",
                evaluation.target_count
            ),
        )
    };
    set(
        status,
        now,
        types::READY,
        value,
        reason,
        message,
        generation,
    );
}

/// LastBackupSucceeded: from a run that finished now; Unknown until the
/// first; else kept, for this generation.
fn set_last_backup(status: &mut ImageBackupPolicyStatus, now: &Time, evaluation: &Evaluation) {
    use lifeboat_api::backup_policy::RunResult;
    let generation = evaluation.generation;
    if let Some(run) = evaluation
        .finished_run
        .as_ref()
        .filter(|_| !evaluation.retention_only)
    {
        let (value, reason) = match run.result {
            RunResult::Succeeded => (ConditionStatus::True, reasons::BACKUP_SUCCEEDED),
            RunResult::PartiallyFailed => {
                (ConditionStatus::False, reasons::BACKUP_PARTIALLY_FAILED)
            }
            RunResult::Failed | RunResult::Running => {
                (ConditionStatus::False, reasons::BACKUP_FAILED)
            }
        };
        set(
            status,
            now,
            types::LAST_BACKUP_SUCCEEDED,
            value,
            reason,
            run.message.clone().unwrap_or_default(),
            generation,
        );
    } else if lifeboat_api::conditions::find_condition(
        &status.conditions,
        types::LAST_BACKUP_SUCCEEDED,
    )
    .is_none()
    {
        set(
            status,
            now,
            types::LAST_BACKUP_SUCCEEDED,
            ConditionStatus::Unknown,
            if evaluation.dry_run {
                reasons::DRY_RUN
            } else {
                reasons::NO_BACKUP_YET
            },
            "no backup run has finished yet",
            generation,
        );
    } else if let Some(c) = status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == types::LAST_BACKUP_SUCCEEDED)
    {
        c.observed_generation = Some(generation);
    }
}

/// ImagesAvailable: False while any selected image is gone from its
/// source registry (ImagesMissing), or its source cannot be reached
/// (SourceUnreachable: an outage, said apart from a loss).
fn set_images_available(
    status: &mut ImageBackupPolicyStatus,
    now: &Time,
    evaluation: &Evaluation,
    counts: Counts,
) {
    let (value, reason, message) = if counts.missing > 0 {
        let first = status
            .missing_images
            .first()
            .map(|m| m.reference.clone())
            .unwrap_or_default();
        (
            ConditionStatus::False,
            reasons::IMAGES_MISSING,
            format!(
                "{} images are gone from their source registry, e.g. {first}",
                counts.missing
            ),
        )
    } else if counts.unreachable > 0 {
        let first = status
            .unreachable_images
            .first()
            .map_or_else(String::new, |u| {
                format!("{} ({}: {})", u.reference, u.reason, u.message)
            });
        (
            ConditionStatus::False,
            reasons::SOURCE_UNREACHABLE,
            format!(
                "the source registry of {} images cannot be reached, e.g. {first}",
                counts.unreachable
            ),
        )
    } else {
        (
            ConditionStatus::True,
            reasons::ALL_IMAGES_AVAILABLE,
            format!(
                "all {} images are available in their source registries",
                evaluation.images.len()
            ),
        )
    };
    set(
        status,
        now,
        types::IMAGES_AVAILABLE,
        value,
        reason,
        message,
        evaluation.generation,
    );
}

/// The status while a run is copying (kstatus: Reconciling=True).
pub fn reconciling_status(
    previous: &ImageBackupPolicyStatus,
    generation: i64,
    now: DateTime<Utc>,
    message: String,
) -> ImageBackupPolicyStatus {
    let mut status = previous.clone();
    let now = time(now);
    set(
        &mut status,
        &now,
        types::RECONCILING,
        ConditionStatus::True,
        reasons::BACKUP_RUNNING,
        message,
        generation,
    );
    status
}

/// A spec that cannot work until the user changes it: Stalled, not Ready.
pub fn stalled_status(
    previous: &ImageBackupPolicyStatus,
    generation: i64,
    now: DateTime<Utc>,
    reason: &str,
    message: &str,
) -> ImageBackupPolicyStatus {
    let mut status = previous.clone();
    let now = time(now);
    status.observed_generation = generation;
    remove_condition(&mut status.conditions, types::RECONCILING);
    set(
        &mut status,
        &now,
        types::STALLED,
        ConditionStatus::True,
        reason,
        message,
        generation,
    );
    set(
        &mut status,
        &now,
        types::READY,
        ConditionStatus::False,
        reason,
        message,
        generation,
    );
    status.next_schedule_time = None;
    status
}

/// A problem outside the spec that may fix itself (a Secret not created
/// yet): Ready=False, retried, not Stalled.
pub fn blocked_status(
    previous: &ImageBackupPolicyStatus,
    generation: i64,
    now: DateTime<Utc>,
    reason: &str,
    message: &str,
) -> ImageBackupPolicyStatus {
    let mut status = previous.clone();
    let now = time(now);
    status.observed_generation = generation;
    remove_condition(&mut status.conditions, types::RECONCILING);
    remove_condition(&mut status.conditions, types::STALLED);
    set(
        &mut status,
        &now,
        types::READY,
        ConditionStatus::False,
        reason,
        message,
        generation,
    );
    status
}

#[cfg(test)]
mod tests {
    use lifeboat_api::backup_policy::{RunResult, RunTrigger};
    use lifeboat_api::conditions::find_condition;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn image(reference: &str, verified: &[&str]) -> ImageState {
        ImageState {
            reference: reference.into(),
            digest: None,
            workloads: 1,
            verified_targets: verified.iter().map(|s| s.to_string()).collect(),
            failure: None,
            missing_since: None,
            outage: None,
            nodes: vec![],
            referrers: None,
        }
    }

    fn outage(since: i64) -> Option<SourceOutage> {
        Some(SourceOutage {
            since: at(since),
            reason: "RegistryUnavailable".into(),
            message: "connection refused ".repeat(60),
        })
    }

    fn evaluation(images: Vec<ImageState>) -> Evaluation {
        Evaluation {
            generation: 3,
            now: at(0),
            target_count: 1,
            workloads: 2,
            images,
            finished_run: None,
            last_schedule_time: None,
            next_schedule_time: None,
            handled_request: None,
            scope_restricted: None,
            plan: None,
            dry_run: false,
            bytes_copied_total: 0,
            referrers_held: 0,
            retention_only: false,
            running: None,
        }
    }

    fn reason(status: &ImageBackupPolicyStatus, type_: &str) -> (String, String) {
        let c = find_condition(&status.conditions, type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn a_retention_pass_goes_into_history_without_claiming_a_backup() {
        let record = RunRecord {
            trigger: RunTrigger::Continuous,
            result: RunResult::Succeeded,
            start_time: time(at(0)),
            completion_time: Some(time(at(0))),
            scheduled_time: None,
            copied: 0,
            up_to_date: 0,
            failed: 0,
            deleted: 2,
            bytes_copied: 0,
            message: Some("retention deleted 2 digests".into()),
        };
        let mut failed_before = ImageBackupPolicyStatus::default();
        set(
            &mut failed_before,
            &time(at(-60)),
            types::LAST_BACKUP_SUCCEEDED,
            ConditionStatus::False,
            reasons::BACKUP_FAILED,
            "1 failed",
            3,
        );
        let status = evaluated_status(
            &failed_before,
            &Evaluation {
                finished_run: Some(record),
                retention_only: true,
                ..evaluation(vec![image("a", &["backup"])])
            },
        );
        assert_eq!(status.history.len(), 1);
        assert_eq!(status.history[0].deleted, 2);
        assert_eq!(
            reason(&status, types::LAST_BACKUP_SUCCEEDED),
            ("False".into(), "BackupFailed".into())
        );
        assert_eq!(status.last_successful_time, None);
    }

    #[test]
    fn all_images_at_every_target_is_ready() {
        let status = evaluated_status(
            &ImageBackupPolicyStatus::default(),
            &evaluation(vec![image("a", &["backup"]), image("b", &["backup"])]),
        );
        assert_eq!(status.observed_generation, 3);
        assert_eq!(
            reason(&status, types::READY),
            ("True".into(), "Protected".into())
        );
        assert_eq!(
            reason(&status, types::IMAGES_AVAILABLE),
            ("True".into(), "AllImagesAvailable".into())
        );
        assert_eq!(
            reason(&status, types::LAST_BACKUP_SUCCEEDED),
            ("Unknown".into(), "NoBackupYet".into())
        );
        assert!(find_condition(&status.conditions, types::STALLED).is_none());
        assert!(find_condition(&status.conditions, types::RECONCILING).is_none());
        let summary = status.summary.unwrap();
        assert_eq!(
            (summary.selected, summary.protected, summary.pending),
            (2, 2, 0)
        );
    }

    #[test]
    fn failures_pending_and_missing_images_are_reported() {
        let mut failed = image("a", &[]);
        failed.failure = Some(("Unauthorized".into(), "401".into()));
        let mut lost = image("b", &["backup"]);
        lost.missing_since = Some(at(-60));
        lost.digest = Some("sha256:x".into());
        lost.nodes = vec!["node-2".into()];
        lost.referrers = Some(2);
        let status = evaluated_status(
            &ImageBackupPolicyStatus::default(),
            &evaluation(vec![failed, lost, image("c", &[])]),
        );
        assert_eq!(
            reason(&status, types::READY),
            ("False".into(), "BackupPartiallyFailed".into())
        );
        assert_eq!(
            reason(&status, types::IMAGES_AVAILABLE),
            ("False".into(), "ImagesMissing".into())
        );
        let summary = status.summary.clone().unwrap();
        assert_eq!(
            (
                summary.protected,
                summary.failed,
                summary.pending,
                summary.missing
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(status.missing_images.len(), 1);
        assert_eq!(
            status.missing_images[0].backup_targets,
            vec!["backup".to_owned()]
        );
        assert_eq!(status.missing_images[0].nodes, vec!["node-2".to_owned()]);
        assert_eq!(status.missing_images[0].referrers, Some(2));
        assert_eq!(status.missing_images_total, Some(1));
    }

    #[test]
    fn an_outage_is_reported_apart_from_a_loss_and_ends_by_itself() {
        let mut down = image("a", &["backup"]);
        down.outage = outage(-30);
        down.digest = Some("sha256:a".into());
        down.nodes = vec!["node-1".into()];
        let status = evaluated_status(
            &ImageBackupPolicyStatus::default(),
            &evaluation(vec![down.clone(), image("c", &["backup"])]),
        );
        assert_eq!(
            reason(&status, types::IMAGES_AVAILABLE),
            ("False".into(), "SourceUnreachable".into())
        );
        assert_eq!(
            reason(&status, types::READY),
            ("True".into(), "Protected".into()),
            "an outage at the source does not make the backup unhealthy"
        );
        let summary = status.summary.clone().unwrap();
        assert_eq!((summary.missing, summary.unreachable), (0, Some(1)));
        assert!(
            status.missing_images.is_empty(),
            "never reported as missing"
        );
        let entry = &status.unreachable_images[0];
        assert_eq!(entry.reference, "a");
        assert_eq!(entry.reason, "RegistryUnavailable");
        assert_eq!(entry.since, time(at(-30)));
        assert_eq!(entry.backup_targets, vec!["backup".to_owned()]);
        assert_eq!(entry.nodes, vec!["node-1".to_owned()]);
        assert!(entry.message.len() <= UNREACHABLE_MESSAGE_LENGTH);
        assert_eq!(status.unreachable_images_total, Some(1));

        // The registry answers again: the entry and the reason go.
        let back = evaluated_status(
            &status,
            &evaluation(vec![image("a", &["backup"]), image("c", &["backup"])]),
        );
        assert_eq!(
            reason(&back, types::IMAGES_AVAILABLE),
            ("True".into(), "AllImagesAvailable".into())
        );
        assert!(back.unreachable_images.is_empty());
        assert_eq!(back.unreachable_images_total, None);

        // Gone and unreachable at once: reported as missing only.
        let mut lost = down;
        lost.missing_since = Some(at(-60));
        let both = evaluated_status(&status, &evaluation(vec![lost]));
        assert_eq!(
            reason(&both, types::IMAGES_AVAILABLE),
            ("False".into(), "ImagesMissing".into())
        );
        assert!(both.unreachable_images.is_empty());
        assert_eq!(both.summary.unwrap().unreachable, Some(0));
    }

    #[test]
    fn shortened_messages_end_on_a_character_boundary() {
        assert_eq!(shortened("short", 10), "short");
        let cut = shortened(&"é".repeat(20), 10);
        assert!(cut.len() <= 10 && cut.ends_with("..."), "{cut}");
    }

    #[test]
    fn unchanged_facts_give_an_identical_status() {
        let facts = evaluation(vec![image("a", &["backup"])]);
        let first = evaluated_status(&ImageBackupPolicyStatus::default(), &facts);
        let later = Evaluation {
            now: at(3600),
            ..facts
        };
        // Transition times are kept: nothing to write an hour later.
        assert_eq!(evaluated_status(&first, &later), first);
    }

    #[test]
    fn runs_go_into_history_newest_first_and_bounded() {
        let mut status = ImageBackupPolicyStatus::default();
        for i in 0..(MAX_HISTORY as i64 + 3) {
            let run = RunRecord {
                trigger: RunTrigger::Continuous,
                result: RunResult::Succeeded,
                start_time: to_k8s_time(at(i)),
                completion_time: Some(to_k8s_time(at(i))),
                scheduled_time: None,
                copied: i as i32,
                up_to_date: 0,
                failed: 0,
                deleted: 0,
                bytes_copied: 0,
                message: None,
            };
            status = evaluated_status(
                &status,
                &Evaluation {
                    finished_run: Some(run),
                    ..evaluation(vec![image("a", &["backup"])])
                },
            );
        }
        assert_eq!(status.history.len(), MAX_HISTORY);
        assert_eq!(status.history[0].copied, MAX_HISTORY as i32 + 2);
        assert_eq!(status.last_successful_time, Some(to_k8s_time(at(12))));
        assert_eq!(
            reason(&status, types::LAST_BACKUP_SUCCEEDED),
            ("True".into(), "BackupSucceeded".into())
        );
    }

    #[test]
    fn stalled_and_blocked() {
        let ready = evaluated_status(
            &ImageBackupPolicyStatus::default(),
            &evaluation(vec![image("a", &["backup"])]),
        );
        let stalled = stalled_status(&ready, 4, at(10), "InvalidSchedule", "spec.schedule: bad");
        assert_eq!(stalled.observed_generation, 4);
        assert_eq!(
            reason(&stalled, types::STALLED),
            ("True".into(), "InvalidSchedule".into())
        );
        assert_eq!(
            reason(&stalled, types::READY),
            ("False".into(), "InvalidSchedule".into())
        );
        let blocked = blocked_status(&stalled, 5, at(20), "CredentialsNotFound", "secret x");
        assert!(find_condition(&blocked.conditions, types::STALLED).is_none());
        assert_eq!(
            reason(&blocked, types::READY),
            ("False".into(), "CredentialsNotFound".into())
        );
        let running = reconciling_status(&ready, 3, at(30), "copying".into());
        assert_eq!(
            reason(&running, types::RECONCILING),
            ("True".into(), "BackupRunning".into())
        );
        // The next evaluation clears it.
        let done = evaluated_status(&running, &evaluation(vec![image("a", &["backup"])]));
        assert!(find_condition(&done.conditions, types::RECONCILING).is_none());
    }

    #[test]
    fn tenant_scope_and_dry_run_conditions() {
        let status = evaluated_status(
            &ImageBackupPolicyStatus::default(),
            &Evaluation {
                scope_restricted: Some("own namespace only".into()),
                dry_run: true,
                plan: Some(DryRunPlan {
                    would_copy: vec!["a -> b".into()],
                    would_copy_total: 1,
                    ..DryRunPlan::default()
                }),
                ..evaluation(vec![image("a", &[])])
            },
        );
        assert_eq!(
            reason(&status, types::SCOPE_RESTRICTED),
            ("True".into(), "OwnNamespaceOnly".into())
        );
        assert_eq!(
            reason(&status, types::READY),
            ("True".into(), "DryRun".into())
        );
        assert_eq!(status.plan.as_ref().map(|p| p.would_copy_total), Some(1));
    }
}
