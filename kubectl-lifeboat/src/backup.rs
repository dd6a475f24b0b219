//! `kubectl lifeboat backup`: ask for an on-demand run through the
//! `lifeboat.dev/requestedAt` annotation and, with `--wait`, follow it.
//!
//! The operator runs when the annotation's value differs from
//! `status.lastHandledReconcileAt`, and echoes the value there once it
//! handles it; the run's outcome lands in `status.history[0]`.

use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, SubsecRound as _, Utc};
use kube::api::{Api, Patch, PatchParams};
use lifeboat_api::ImageBackupPolicy;
use lifeboat_api::backup_policy::{ImageBackupPolicyStatus, REQUESTED_AT_ANNOTATION, RunResult};
use lifeboat_api::conditions::{reasons, types};
use lifeboat_api::time::from_k8s_time;

use crate::cli::{BackupArgs, EXIT_FAILED, EXIT_TIMEOUT};
use crate::client::Connection;
use crate::output;
use crate::progress::human_bytes;

/// Where a requested run is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunProgress {
    /// The operator has not handled the request yet.
    Waiting,
    /// Running: images verified present everywhere, of those selected,
    /// and bytes copied since the request (as far as the status says yet).
    Running {
        done: i32,
        total: i32,
        bytes: i64,
    },
    /// Done: the run's own byte count.
    Succeeded {
        done: i32,
        total: i32,
        bytes: i64,
    },
    Failed {
        result: String,
        message: String,
    },
}

/// The requestedAt value: now, to the second (RFC 3339, as a person would
/// write it, and comparable with the run's start time).
pub fn request_value(now: DateTime<Utc>) -> String {
    now.trunc_subsecs(0)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Where the run for `requested` is, from the policy's status;
/// `bytes_before` is the policy's `summary.bytesCopied` when it was asked.
pub fn run_progress(
    status: &ImageBackupPolicyStatus,
    requested: &str,
    bytes_before: i64,
) -> RunProgress {
    if status.last_handled_reconcile_at.as_deref() != Some(requested) {
        return RunProgress::Waiting;
    }
    let summary = status.summary.clone().unwrap_or_default();
    let (done, total) = (summary.protected, summary.selected);
    let bytes = summary.bytes_copied.saturating_sub(bytes_before).max(0);
    let running = output::condition(&status.conditions, types::RECONCILING)
        .is_some_and(|c| c.status == "True" && c.reason == reasons::BACKUP_RUNNING);
    let requested_time = DateTime::parse_from_rfc3339(requested)
        .map(|t| t.with_timezone(&Utc))
        .ok();
    // The run for this request started at or after the request.
    let run = status
        .history
        .first()
        .filter(|run| requested_time.is_none_or(|at| from_k8s_time(&run.start_time) >= at));
    match run {
        Some(run) if !running && run.result != RunResult::Running => match run.result {
            RunResult::Succeeded => RunProgress::Succeeded {
                done,
                total,
                bytes: run.bytes_copied,
            },
            other => RunProgress::Failed {
                result: format!("{other:?}"),
                message: run.message.clone().unwrap_or_default(),
            },
        },
        _ => RunProgress::Running { done, total, bytes },
    }
}

/// The progress line printed when the state changes.
pub fn progress_line(progress: &RunProgress) -> String {
    match progress {
        RunProgress::Waiting => "waiting for the operator to pick up the request".to_owned(),
        RunProgress::Running { done, total, bytes } => format!(
            "running: {done}/{total} images protected, {} copied",
            human_bytes(u64::try_from(*bytes).unwrap_or(0))
        ),
        RunProgress::Succeeded { done, total, bytes } => format!(
            "succeeded: {done}/{total} images protected, {} copied",
            human_bytes(u64::try_from(*bytes).unwrap_or(0))
        ),
        RunProgress::Failed { result, message } => format!("{result}: {message}"),
    }
}

pub async fn run(connection: &Connection, args: &BackupArgs) -> anyhow::Result<ExitCode> {
    let api: Api<ImageBackupPolicy> =
        Api::namespaced(connection.client.clone(), &connection.namespace);
    let requested = request_value(Utc::now());
    let bytes_before = api
        .get(&args.policy)
        .await?
        .status
        .and_then(|s| s.summary)
        .map_or(0, |s| s.bytes_copied);
    let patch =
        serde_json::json!({"metadata": {"annotations": {REQUESTED_AT_ANNOTATION: requested}}});
    api.patch(&args.policy, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    println!(
        "imagebackuppolicy/{} backup requested ({REQUESTED_AT_ANNOTATION}={requested})",
        args.policy
    );
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut last_line = String::new();
    loop {
        let policy = api.get(&args.policy).await?;
        let progress = run_progress(&policy.status_or_default(), &requested, bytes_before);
        let line = progress_line(&progress);
        if line != last_line {
            println!("{line}");
            last_line = line;
        }
        match progress {
            RunProgress::Succeeded { .. } => return Ok(ExitCode::SUCCESS),
            RunProgress::Failed { .. } => return Ok(ExitCode::from(EXIT_FAILED)),
            RunProgress::Waiting | RunProgress::Running { .. } => {}
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("timed out after {}s", args.timeout.as_secs());
            return Ok(ExitCode::from(EXIT_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use lifeboat_api::backup_policy::{PolicySummary, RunRecord, RunTrigger};

    const REQUESTED: &str = "2026-01-01T12:00:00Z";

    fn at(seconds: i64) -> Time {
        lifeboat_api::time::to_k8s_time(
            Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
                .single()
                .unwrap_or_default()
                + chrono::TimeDelta::seconds(seconds),
        )
    }

    fn record(start: i64, result: RunResult) -> RunRecord {
        RunRecord {
            trigger: RunTrigger::OnDemand,
            result,
            start_time: at(start),
            completion_time: None,
            scheduled_time: None,
            copied: 0,
            up_to_date: 0,
            failed: 0,
            deleted: 0,
            bytes_copied: 0,
            message: Some("2 images failed".into()),
        }
    }

    fn status(handled: &str, running: bool, history: Vec<RunRecord>) -> ImageBackupPolicyStatus {
        ImageBackupPolicyStatus {
            last_handled_reconcile_at: Some(handled.into()),
            summary: Some(PolicySummary {
                selected: 5,
                protected: 3,
                ..Default::default()
            }),
            conditions: vec![if running {
                crate::output::tests::condition("Reconciling", "True", "BackupRunning", "")
            } else {
                crate::output::tests::condition("Reconciling", "False", "Succeeded", "")
            }],
            history,
            ..Default::default()
        }
    }

    #[test]
    fn the_request_is_seconds_in_utc() {
        let now = Utc
            .with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
            .single()
            .unwrap_or_default()
            + chrono::TimeDelta::milliseconds(700);
        assert_eq!(request_value(now), REQUESTED);
    }

    #[test]
    fn an_unhandled_request_waits_even_if_an_older_run_finished() {
        let s = status(
            "2025-12-31T00:00:00Z",
            false,
            vec![record(-60, RunResult::Succeeded)],
        );
        assert_eq!(run_progress(&s, REQUESTED, 0), RunProgress::Waiting);
    }

    #[test]
    fn a_handled_request_runs_until_a_run_after_it_finishes() {
        let running = status(REQUESTED, true, vec![record(1, RunResult::Running)]);
        assert_eq!(
            run_progress(&running, REQUESTED, 0),
            RunProgress::Running {
                done: 3,
                total: 5,
                bytes: 0
            }
        );
        let only_older = status(REQUESTED, false, vec![record(-60, RunResult::Succeeded)]);
        assert_eq!(
            run_progress(&only_older, REQUESTED, 0),
            RunProgress::Running {
                done: 3,
                total: 5,
                bytes: 0
            }
        );
        let done = status(REQUESTED, false, vec![record(0, RunResult::Succeeded)]);
        assert_eq!(
            run_progress(&done, REQUESTED, 0),
            RunProgress::Succeeded {
                done: 3,
                total: 5,
                bytes: 0
            }
        );
    }

    #[test]
    fn a_failed_or_partial_run_is_a_failure_with_its_message() {
        for result in [RunResult::Failed, RunResult::PartiallyFailed] {
            let s = status(REQUESTED, false, vec![record(2, result)]);
            let RunProgress::Failed { message, .. } = run_progress(&s, REQUESTED, 0) else {
                panic!("{result:?} is a failure");
            };
            assert_eq!(message, "2 images failed");
        }
        assert_eq!(
            progress_line(&RunProgress::Running {
                done: 1,
                total: 4,
                bytes: 3 * 1024 * 1024 / 2
            }),
            "running: 1/4 images protected, 1.5 MiB copied"
        );
    }

    #[test]
    fn bytes_are_this_runs_while_running_and_the_runs_own_at_the_end() {
        let mut running = status(REQUESTED, true, vec![record(1, RunResult::Running)]);
        if let Some(summary) = running.summary.as_mut() {
            summary.bytes_copied = 5000;
        }
        assert!(matches!(
            run_progress(&running, REQUESTED, 1000),
            RunProgress::Running { bytes: 4000, .. }
        ));
        let mut finished = record(1, RunResult::Succeeded);
        finished.bytes_copied = 4321;
        let done = status(REQUESTED, false, vec![finished]);
        assert!(matches!(
            run_progress(&done, REQUESTED, 1000),
            RunProgress::Succeeded { bytes: 4321, .. }
        ));
    }
}
