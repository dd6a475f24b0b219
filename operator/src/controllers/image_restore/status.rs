//! From the per-image states to the restore's status: progress, conditions,
//! completion. Pure: the same images give the same status, and conditions
//! keep their `lastTransitionTime` while their status does not change.

use chrono::{DateTime, Utc};
use lifeboat_api::ImageRestoreStatus;
use lifeboat_api::conditions::{
    ConditionStatus, new_condition, reasons, remove_condition, set_condition, types,
};
use lifeboat_api::restore::{ImageRestoreState, RestoredImage};
use lifeboat_api::time::{from_k8s_time, to_k8s_time};

pub(crate) use crate::controllers::whole_seconds;

fn set(
    status: &mut ImageRestoreStatus,
    now: DateTime<Utc>,
    type_: &str,
    value: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    generation: i64,
) {
    set_condition(
        &mut status.conditions,
        new_condition(type_, value, reason, message, Some(generation)),
        to_k8s_time(whole_seconds(now)),
    );
}

/// A new, pending entry for an image.
pub(crate) fn pending_image(reference: &str, digest: Option<String>) -> RestoredImage {
    RestoredImage {
        reference: reference.to_owned(),
        requested_digest: digest,
        state: ImageRestoreState::Pending,
        ..RestoredImage::default()
    }
}

/// Marks an image failed.
pub(crate) fn fail(image: &mut RestoredImage, reason: &str, message: impl Into<String>) {
    image.state = ImageRestoreState::Failed;
    image.reason = Some(reason.to_owned());
    image.message = Some(lifeboat_api::conditions::bounded_message(
        message.into(),
        lifeboat_api::conditions::MAX_SHORT_MESSAGE_LENGTH,
    ));
}

/// Whether the restore reached a terminal outcome.
pub(crate) fn is_complete(status: &ImageRestoreStatus) -> bool {
    status.completion_time.is_some()
}

/// Every status the controller writes has seen this generation and, from the
/// first write on, a `startTime`.
fn observed(status: &mut ImageRestoreStatus, generation: i64, now: DateTime<Utc>) {
    status.observed_generation = generation;
    if status.start_time.is_none() {
        status.start_time = Some(to_k8s_time(whole_seconds(now)));
    }
}

/// The status for the current per-image states: progress recounted,
/// `Ready` Unknown while images are open, True when every image is
/// restored, False (and `Stalled` with the first failure's reason) when
/// any failed; `completionTime` once every image is terminal.
pub(crate) fn summarize(
    mut status: ImageRestoreStatus,
    generation: i64,
    now: DateTime<Utc>,
) -> ImageRestoreStatus {
    observed(&mut status, generation, now);
    status.recount();
    let total = status.images.len();
    let restored = status
        .images
        .iter()
        .filter(|i| i.state == ImageRestoreState::Restored)
        .count();
    let failed: Vec<&RestoredImage> = status
        .images
        .iter()
        .filter(|i| i.state == ImageRestoreState::Failed)
        .collect();
    if !status.all_images_terminal() {
        let open = total - restored - failed.len();
        let message = format!("{restored} of {total} images restored, {open} in progress");
        set(
            &mut status,
            now,
            types::READY,
            ConditionStatus::Unknown,
            reasons::RESTORING,
            message.clone(),
            generation,
        );
        set(
            &mut status,
            now,
            types::RECONCILING,
            ConditionStatus::True,
            reasons::RESTORING,
            message,
            generation,
        );
        remove_condition(&mut status.conditions, types::STALLED);
        return status;
    }
    remove_condition(&mut status.conditions, types::RECONCILING);
    if status.completion_time.is_none() {
        status.completion_time = Some(to_k8s_time(whole_seconds(now)));
    }
    match failed.first() {
        None => {
            let message = format!("all {total} images restored");
            set(
                &mut status,
                now,
                types::READY,
                ConditionStatus::True,
                reasons::SUCCEEDED,
                message,
                generation,
            );
            remove_condition(&mut status.conditions, types::STALLED);
        }
        Some(first) => {
            let reason = first
                .reason
                .clone()
                .unwrap_or_else(|| reasons::FAILED.to_owned());
            let mut message = format!(
                "{} of {total} images failed, {restored} restored; {}: {}",
                failed.len(),
                first.reference,
                first.message.as_deref().unwrap_or("failed")
            );
            if failed.len() > 1 {
                message.push_str(" (see status.images for the others)");
            }
            set_stalled(&mut status, now, &reason, &message, generation);
        }
    }
    status
}

/// A spec the operator cannot act on, or a restore that cannot start
/// (its policy is gone): `Stalled` and `Ready=False` with the reason.
pub(crate) fn stalled(
    mut status: ImageRestoreStatus,
    generation: i64,
    now: DateTime<Utc>,
    reason: &str,
    message: &str,
    terminal: bool,
) -> ImageRestoreStatus {
    observed(&mut status, generation, now);
    if terminal && status.completion_time.is_none() {
        status.completion_time = Some(to_k8s_time(whole_seconds(now)));
    }
    remove_condition(&mut status.conditions, types::RECONCILING);
    set_stalled(&mut status, now, reason, message, generation);
    status
}

/// `Ready=False` and `Stalled=True`, both with the same reason and message.
fn set_stalled(
    status: &mut ImageRestoreStatus,
    now: DateTime<Utc>,
    reason: &str,
    message: &str,
    generation: i64,
) {
    for (type_, value) in [
        (types::READY, ConditionStatus::False),
        (types::STALLED, ConditionStatus::True),
    ] {
        set(status, now, type_, value, reason, message, generation);
    }
}

/// A policy restore for a policy that reports nothing missing: done, and
/// nothing to do (`Ready=True NothingToRestore`).
pub(crate) fn nothing_to_restore(
    mut status: ImageRestoreStatus,
    generation: i64,
    now: DateTime<Utc>,
) -> ImageRestoreStatus {
    observed(&mut status, generation, now);
    if status.completion_time.is_none() {
        status.completion_time = Some(to_k8s_time(whole_seconds(now)));
    }
    status.recount();
    remove_condition(&mut status.conditions, types::RECONCILING);
    remove_condition(&mut status.conditions, types::STALLED);
    set(
        &mut status,
        now,
        types::READY,
        ConditionStatus::True,
        reasons::NOTHING_TO_RESTORE,
        "the policy reports no missing images",
        generation,
    );
    status
}

/// Images whose state became terminal between two statuses: what to send
/// an Event about.
pub(crate) fn newly_terminal<'a>(
    before: &ImageRestoreStatus,
    after: &'a ImageRestoreStatus,
) -> Vec<&'a RestoredImage> {
    after
        .images
        .iter()
        .filter(|image| image.state.is_terminal())
        .filter(|image| {
            before
                .images
                .iter()
                .find(|b| b.reference == image.reference)
                .is_none_or(|b| b.state != image.state)
        })
        .collect()
}

/// Fails every image not yet terminal (the deadline passed).
pub(crate) fn fail_open_images(status: &mut ImageRestoreStatus, reason: &str, message: &str) {
    for image in status.images.iter_mut().filter(|i| !i.state.is_terminal()) {
        fail(image, reason, message);
    }
}

/// Adds copied bytes to the restore's progress (saturating: the counts
/// come from registries and node reports).
pub(crate) fn add_bytes(status: &mut ImageRestoreStatus, bytes: u64) {
    if bytes > 0 {
        let progress = status.progress.get_or_insert_with(Default::default);
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        progress.bytes = progress.bytes.saturating_add(bytes);
    }
}

/// Seconds left before `activeDeadlineSeconds` (none without a deadline;
/// zero or less once it passed).
pub(crate) fn deadline_remaining(
    limit_seconds: Option<i64>,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<i64> {
    limit_seconds.map(|limit| limit.saturating_sub((now - started).num_seconds()))
}

/// When a running restore looks again by itself: soon while inventories
/// are collected, else after `poll`, but never after its deadline passed
/// (the deadline fails what is still open).
pub(crate) fn next_look(
    waiting_for_inventories: bool,
    deadline_remaining: Option<i64>,
    inventory_poll: std::time::Duration,
    poll: std::time::Duration,
) -> std::time::Duration {
    let look = if waiting_for_inventories {
        inventory_poll
    } else {
        poll
    };
    match deadline_remaining.and_then(|r| u64::try_from(r).ok()) {
        // One second after the deadline, so the reconcile finds it passed.
        Some(seconds) => look.min(std::time::Duration::from_secs(seconds.saturating_add(1))),
        None => look,
    }
}

/// One Event to publish about a restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Note {
    pub(crate) warning: bool,
    pub(crate) reason: &'static str,
    pub(crate) text: String,
}

impl Note {
    pub(crate) fn normal(reason: &'static str, text: String) -> Note {
        Note {
            warning: false,
            reason,
            text,
        }
    }

    pub(crate) fn warning(reason: &'static str, text: String) -> Note {
        Note {
            warning: true,
            reason,
            text,
        }
    }
}

/// One Event per image that reached Restored or Failed since `previous`.
pub(crate) fn image_notes(previous: &ImageRestoreStatus, status: &ImageRestoreStatus) -> Vec<Note> {
    newly_terminal(previous, status)
        .into_iter()
        .map(|image| {
            if image.state == ImageRestoreState::Restored {
                let from = image
                    .source
                    .as_ref()
                    .map(|s| format!("{:?} {}", s.kind, s.name))
                    .unwrap_or_default();
                Note::normal(
                    "ImageRestored",
                    format!(
                        "{} restored from {from} as {}{}",
                        image.reference,
                        image.restored_reference.as_deref().unwrap_or("?"),
                        if image.digest_preserved == Some(false) {
                            " (digest not preserved)"
                        } else {
                            ""
                        }
                    ),
                )
            } else {
                Note::warning(
                    "ImageRestoreFailed",
                    format!(
                        "{}: {}: {}",
                        image.reference,
                        image.reason.as_deref().unwrap_or("Failed"),
                        image.message.as_deref().unwrap_or("")
                    ),
                )
            }
        })
        .collect()
}

/// How a finished restore is counted and announced.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Ending {
    /// The metric's `result` label.
    pub(crate) result: &'static str,
    /// From `startTime` to `completionTime`, when both are known.
    pub(crate) seconds: Option<f64>,
    pub(crate) note: Note,
}

pub(crate) fn ending(status: &ImageRestoreStatus) -> Ending {
    let progress = status.progress.clone().unwrap_or_default();
    let succeeded = progress.failed == 0;
    let result = if succeeded {
        "Succeeded"
    } else if progress.restored > 0 {
        "PartiallyFailed"
    } else {
        "Failed"
    };
    let seconds = match (&status.start_time, &status.completion_time) {
        (Some(start), Some(end)) => {
            let millis = (from_k8s_time(end) - from_k8s_time(start)).num_milliseconds();
            Some((millis as f64 / 1000.0).max(0.0))
        }
        _ => None,
    };
    let text = format!(
        "{} of {} images restored, {} failed, {} bytes",
        progress.restored, progress.total, progress.failed, progress.bytes
    );
    let note = if succeeded {
        Note::normal("RestoreSucceeded", text)
    } else {
        Note::warning("RestoreFailed", text)
    };
    Ending {
        result,
        seconds,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_api::conditions::find_condition;
    use std::time::Duration;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn with_images(states: &[ImageRestoreState]) -> ImageRestoreStatus {
        ImageRestoreStatus {
            images: states
                .iter()
                .enumerate()
                .map(|(i, s)| RestoredImage {
                    reference: format!("r/img-{i}"),
                    state: *s,
                    ..RestoredImage::default()
                })
                .collect(),
            ..ImageRestoreStatus::default()
        }
    }

    fn condition(status: &ImageRestoreStatus, type_: &str) -> Option<(String, String)> {
        find_condition(&status.conditions, type_).map(|c| (c.status.clone(), c.reason.clone()))
    }

    #[test]
    fn running_restores_are_reconciling_and_not_yet_ready() {
        use ImageRestoreState::*;
        let status = summarize(with_images(&[Restored, InProgress]), 1, at(0));
        assert_eq!(
            condition(&status, types::READY),
            Some(("Unknown".into(), "Restoring".into()))
        );
        assert_eq!(
            condition(&status, types::RECONCILING),
            Some(("True".into(), "Restoring".into()))
        );
        assert_eq!(condition(&status, types::STALLED), None);
        assert!(status.completion_time.is_none());
        assert_eq!(status.progress.as_ref().unwrap().restored, 1);
        assert_eq!(status.progress.as_ref().unwrap().total, 2);
        assert_eq!(status.start_time, Some(to_k8s_time(at(0))));
    }

    #[test]
    fn success_is_ready_and_complete_and_stable() {
        use ImageRestoreState::*;
        let running = summarize(with_images(&[Restored, InProgress]), 1, at(0));
        let mut done = running.clone();
        done.images[1].state = Restored;
        let done = summarize(done, 1, at(10));
        assert_eq!(
            condition(&done, types::READY),
            Some(("True".into(), "Succeeded".into()))
        );
        assert_eq!(condition(&done, types::RECONCILING), None);
        assert_eq!(done.completion_time, Some(to_k8s_time(at(10))));
        // Later reconciles change nothing: same transition and completion times.
        let again = summarize(done.clone(), 1, at(99));
        assert_eq!(again, done);
    }

    #[test]
    fn a_failure_is_stalled_with_its_reason_and_message() {
        use ImageRestoreState::*;
        let mut status = with_images(&[Restored, Pending]);
        fail(
            &mut status.images[1],
            reasons::IMAGE_NOT_FOUND,
            "no node holds r/img-1 (asked: n1, n2)",
        );
        let status = summarize(status, 2, at(5));
        assert_eq!(
            condition(&status, types::READY),
            Some(("False".into(), "ImageNotFound".into()))
        );
        assert_eq!(
            condition(&status, types::STALLED),
            Some(("True".into(), "ImageNotFound".into()))
        );
        let stalled = find_condition(&status.conditions, types::STALLED).unwrap();
        assert!(
            stalled.message.contains("no node holds r/img-1"),
            "{}",
            stalled.message
        );
        assert_eq!(stalled.observed_generation, Some(2));
        assert_eq!(status.progress.as_ref().unwrap().failed, 1);
        assert!(status.completion_time.is_some());
    }

    #[test]
    fn transition_times_survive_unchanged_statuses() {
        use ImageRestoreState::*;
        let first = summarize(with_images(&[InProgress]), 1, at(0));
        let second = summarize(first.clone(), 1, at(30));
        let time = |s: &ImageRestoreStatus| {
            find_condition(&s.conditions, types::READY)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(time(&first), time(&second));
    }

    #[test]
    fn events_only_for_images_that_just_finished() {
        use ImageRestoreState::*;
        let before = with_images(&[Restored, InProgress, Pending]);
        let mut after = before.clone();
        after.images[1].state = Restored;
        after.images[2].state = Failed;
        let names: Vec<&str> = newly_terminal(&before, &after)
            .iter()
            .map(|i| i.reference.as_str())
            .collect();
        assert_eq!(names, ["r/img-1", "r/img-2"]);
        assert!(newly_terminal(&after, &after).is_empty());
    }

    #[test]
    fn the_deadline_fails_only_open_images() {
        use ImageRestoreState::*;
        let mut status = with_images(&[Restored, InProgress, Pending]);
        fail_open_images(&mut status, reasons::DEADLINE_EXCEEDED, "too slow");
        let states: Vec<_> = status.images.iter().map(|i| i.state).collect();
        assert_eq!(states, [Restored, Failed, Failed]);
        assert_eq!(status.images[1].reason.as_deref(), Some("DeadlineExceeded"));
    }

    #[test]
    fn bytes_add_up_and_saturate() {
        let mut status = with_images(&[]);
        add_bytes(&mut status, 0);
        assert!(status.progress.is_none(), "nothing copied, nothing counted");
        add_bytes(&mut status, 10);
        add_bytes(&mut status, 5);
        assert_eq!(status.progress.as_ref().map(|p| p.bytes), Some(15));
        add_bytes(&mut status, u64::MAX);
        assert_eq!(status.progress.map(|p| p.bytes), Some(i64::MAX));
    }

    #[test]
    fn the_deadline_counts_down_from_the_start() {
        assert_eq!(deadline_remaining(None, at(0), at(100)), None);
        assert_eq!(deadline_remaining(Some(60), at(0), at(20)), Some(40));
        assert_eq!(deadline_remaining(Some(60), at(0), at(60)), Some(0));
        assert_eq!(deadline_remaining(Some(60), at(0), at(90)), Some(-30));
    }

    #[test]
    fn image_notes_say_where_from_and_why_failed() {
        use ImageRestoreState::*;
        let before = with_images(&[InProgress, InProgress, Restored]);
        let mut after = before.clone();
        after.images[0].state = Restored;
        after.images[0].source = Some(lifeboat_api::restore::ImageSourceRef {
            kind: lifeboat_api::restore::RestoreSourceKind::NodeCache,
            name: "node-a".into(),
        });
        after.images[0].restored_reference = Some("r/img-0@sha256:aa".into());
        after.images[0].digest_preserved = Some(false);
        fail(
            &mut after.images[1],
            reasons::NODE_EXPORT_FAILED,
            "pod evicted",
        );
        let notes = image_notes(&before, &after);
        assert_eq!(
            notes.len(),
            2,
            "the image restored before gets no second note"
        );
        assert_eq!(
            notes[0],
            Note::normal(
                "ImageRestored",
                "r/img-0 restored from NodeCache node-a as r/img-0@sha256:aa (digest not preserved)"
                    .into()
            )
        );
        assert_eq!(
            notes[1],
            Note::warning(
                "ImageRestoreFailed",
                "r/img-1: NodeExportFailed: pod evicted".into()
            )
        );
    }

    #[test]
    fn a_restore_ends_succeeded_partially_failed_or_failed() {
        use ImageRestoreState::*;
        let done = |states: &[ImageRestoreState]| {
            let mut status = summarize(with_images(states), 1, at(0));
            status.completion_time = Some(to_k8s_time(at(42)));
            ending(&status)
        };
        let all = done(&[Restored, Restored]);
        assert_eq!((all.result, all.seconds), ("Succeeded", Some(42.0)));
        assert_eq!(all.note.reason, "RestoreSucceeded");
        assert!(!all.note.warning);
        assert!(
            all.note
                .text
                .starts_with("2 of 2 images restored, 0 failed")
        );
        let partly = done(&[Restored, Failed]);
        assert_eq!(partly.result, "PartiallyFailed");
        assert!(partly.note.warning);
        assert_eq!(partly.note.reason, "RestoreFailed");
        assert_eq!(done(&[Failed]).result, "Failed");
        let open = ending(&with_images(&[Pending]));
        assert_eq!(open.seconds, None, "no duration without start and end");
    }

    #[test]
    fn a_restore_looks_again_soon_for_inventories_and_never_after_its_deadline() {
        let (soon, later) = (Duration::from_secs(5), Duration::from_secs(30));
        assert_eq!(next_look(true, None, soon, later), soon);
        assert_eq!(next_look(false, None, soon, later), later);
        assert_eq!(
            next_look(false, Some(9), soon, later),
            Duration::from_secs(10)
        );
        assert_eq!(next_look(false, Some(600), soon, later), later);
        assert_eq!(
            next_look(true, Some(0), soon, later),
            Duration::from_secs(1)
        );
        assert_eq!(
            next_look(false, Some(-5), soon, later),
            later,
            "passed: the reconcile fails it now"
        );
    }
}
