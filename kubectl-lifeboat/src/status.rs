//! `kubectl lifeboat status`: every policy's counts, runs and conditions,
//! and the restores in flight.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt as _;
use lifeboat_api::backup_policy::RunResult;
use lifeboat_api::conditions::types;
use lifeboat_api::{ImageBackupPolicy, ImageRestore};
use serde::Serialize;

use crate::cli::{OutputFormat, StatusArgs};
use crate::client::Connection;
use crate::output::{self, Tone};

/// One condition, for scripts.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct ConditionState {
    pub status: String,
    pub reason: String,
}

/// One policy at a glance.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyState {
    pub namespace: String,
    pub name: String,
    pub selected: i32,
    pub protected: i32,
    pub missing: i32,
    /// Absent when the operator did not report outages.
    pub unreachable: Option<i32>,
    pub pending: i32,
    pub failed: i32,
    pub last_successful_time: Option<Time>,
    pub next_schedule_time: Option<Time>,
    pub last_run: Option<RunResult>,
    pub ready: Option<ConditionState>,
    pub images_available: Option<ConditionState>,
}

/// One restore that has not finished.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreState {
    pub namespace: String,
    pub name: String,
    pub total: i32,
    pub restored: i32,
    pub failed: i32,
    pub ready: Option<ConditionState>,
}

/// What `status` shows.
#[derive(Serialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub policies: Vec<PolicyState>,
    pub restores_in_flight: Vec<RestoreState>,
}

fn condition_state(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<ConditionState> {
    output::condition(conditions, type_).map(|c| ConditionState {
        status: c.status.clone(),
        reason: c.reason.clone(),
    })
}

pub fn policy_state(policy: &ImageBackupPolicy) -> PolicyState {
    let status = policy.status_or_default();
    let summary = status.summary.clone().unwrap_or_default();
    PolicyState {
        namespace: policy.namespace().unwrap_or_default(),
        name: policy.name_any(),
        selected: summary.selected,
        protected: summary.protected,
        missing: summary.missing,
        unreachable: summary.unreachable,
        pending: summary.pending,
        failed: summary.failed,
        last_successful_time: status.last_successful_time.clone(),
        next_schedule_time: status.next_schedule_time.clone(),
        last_run: status.history.first().map(|run| run.result),
        ready: condition_state(&status.conditions, types::READY),
        images_available: condition_state(&status.conditions, types::IMAGES_AVAILABLE),
    }
}

/// The restore's state when it is still in flight (no completion time
/// and Ready not decided), else None.
pub fn restore_in_flight(restore: &ImageRestore) -> Option<RestoreState> {
    let status = restore.status_or_default();
    let ready = condition_state(&status.conditions, types::READY);
    let decided = ready.as_ref().is_some_and(|r| r.status != "Unknown");
    if status.completion_time.is_some() || decided {
        return None;
    }
    let progress = status.progress.clone().unwrap_or_default();
    Some(RestoreState {
        namespace: restore.namespace().unwrap_or_default(),
        name: restore.name_any(),
        total: progress.total,
        restored: progress.restored,
        failed: progress.failed,
        ready,
    })
}

pub fn report(policies: &[ImageBackupPolicy], restores: &[ImageRestore]) -> StatusReport {
    StatusReport {
        policies: policies.iter().map(policy_state).collect(),
        restores_in_flight: restores.iter().filter_map(restore_in_flight).collect(),
    }
}

fn condition_cell(condition: Option<&ConditionState>, good_reason: &[&str]) -> (String, Tone) {
    match condition {
        None => ("-".to_owned(), Tone::Plain),
        Some(c) => {
            let tone = if c.status == "True" || good_reason.contains(&c.reason.as_str()) {
                Tone::Good
            } else if c.status == "False" {
                Tone::Bad
            } else {
                Tone::Plain
            };
            (c.reason.clone(), tone)
        }
    }
}

fn count_cell(value: i32, bad_when_nonzero: bool) -> (String, Tone) {
    let tone = if bad_when_nonzero && value > 0 {
        Tone::Bad
    } else {
        Tone::Plain
    };
    (value.to_string(), tone)
}

/// The table layout (plus a restores table when any are in flight).
pub fn render_table(report: &StatusReport, now: DateTime<Utc>, color: bool) -> String {
    if report.policies.is_empty() && report.restores_in_flight.is_empty() {
        return "No ImageBackupPolicies or ImageRestores in flight.\n".to_owned();
    }
    let rows: Vec<Vec<(String, Tone)>> = report
        .policies
        .iter()
        .map(|p| {
            vec![
                (p.namespace.clone(), Tone::Plain),
                (p.name.clone(), Tone::Plain),
                (p.selected.to_string(), Tone::Plain),
                (
                    p.protected.to_string(),
                    if p.protected == p.selected {
                        Tone::Good
                    } else {
                        Tone::Plain
                    },
                ),
                count_cell(p.missing, true),
                p.unreachable
                    .map_or_else(|| ("-".to_owned(), Tone::Plain), |u| count_cell(u, true)),
                (
                    output::relative(p.last_successful_time.as_ref(), now),
                    Tone::Plain,
                ),
                (
                    output::relative(p.next_schedule_time.as_ref(), now),
                    Tone::Plain,
                ),
                condition_cell(p.ready.as_ref(), &[]),
                condition_cell(p.images_available.as_ref(), &[]),
            ]
        })
        .collect();
    let mut out = output::table(
        &[
            "NAMESPACE",
            "POLICY",
            "SELECTED",
            "PROTECTED",
            "MISSING",
            "UNREACHABLE",
            "LAST SUCCESS",
            "NEXT RUN",
            "READY",
            "IMAGES",
        ],
        &rows,
        color,
    );
    if !report.restores_in_flight.is_empty() {
        let rows: Vec<Vec<(String, Tone)>> = report
            .restores_in_flight
            .iter()
            .map(|r| {
                vec![
                    (r.namespace.clone(), Tone::Plain),
                    (r.name.clone(), Tone::Plain),
                    (format!("{}/{}", r.restored, r.total), Tone::Plain),
                    count_cell(r.failed, true),
                    condition_cell(r.ready.as_ref(), &[]),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&output::table(
            &["NAMESPACE", "RESTORE", "RESTORED", "FAILED", "READY"],
            &rows,
            color,
        ));
    }
    out
}

pub async fn run(connection: &Connection, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let policies: Vec<ImageBackupPolicy> = connection.list(args.all_namespaces).await?;
    let restores: Vec<ImageRestore> = connection.list(args.all_namespaces).await?;
    let report = report(&policies, &restores);
    let text = match args.output {
        OutputFormat::Table => render_table(&report, Utc::now(), output::color_wanted()),
        OutputFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
        OutputFormat::Yaml => serde_yaml::to_string(&report)?,
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_api::backup_policy::{ImageBackupPolicyStatus, PolicySummary};
    use lifeboat_api::restore::{ImageRestoreStatus, RestoreProgress};

    fn condition(
        type_: &str,
        status: &str,
        reason: &str,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        crate::output::tests::condition(type_, status, reason, "")
    }

    fn policy(missing: i32, unreachable: Option<i32>) -> ImageBackupPolicy {
        let mut policy = ImageBackupPolicy::new("prod", Default::default());
        policy.metadata.namespace = Some("shop".into());
        policy.status = Some(ImageBackupPolicyStatus {
            summary: Some(PolicySummary {
                selected: 4,
                protected: 4 - missing,
                missing,
                unreachable,
                ..Default::default()
            }),
            conditions: vec![
                condition("Ready", "True", "Protected"),
                condition("ImagesAvailable", "False", "ImagesMissing"),
            ],
            ..Default::default()
        });
        policy
    }

    fn restore(name: &str, ready: &str) -> ImageRestore {
        let mut restore = ImageRestore::new(name, Default::default());
        restore.metadata.namespace = Some("shop".into());
        restore.status = Some(ImageRestoreStatus {
            conditions: vec![condition("Ready", ready, "Restoring")],
            progress: Some(RestoreProgress {
                total: 3,
                restored: 1,
                failed: 0,
                bytes: 0,
            }),
            ..Default::default()
        });
        restore
    }

    #[test]
    fn the_report_takes_counts_and_conditions_from_status() {
        let report = report(
            &[policy(1, Some(2))],
            &[restore("running", "Unknown"), restore("done", "True")],
        );
        let p = &report.policies[0];
        assert_eq!(
            (p.selected, p.protected, p.missing, p.unreachable),
            (4, 3, 1, Some(2))
        );
        assert_eq!(
            p.ready,
            Some(ConditionState {
                status: "True".into(),
                reason: "Protected".into()
            })
        );
        assert_eq!(
            report.restores_in_flight.len(),
            1,
            "finished restores are not in flight"
        );
        assert_eq!(report.restores_in_flight[0].name, "running");
        let json = serde_json::to_value(&report).unwrap_or_default();
        assert_eq!(json["policies"][0]["unreachable"], 2);
        assert_eq!(json["restoresInFlight"][0]["restored"], 1);
    }

    #[test]
    fn the_table_shows_unknown_unreachable_as_dash_and_colors_only_when_asked() {
        let report = report(&[policy(0, None)], &[restore("running", "Unknown")]);
        let table = render_table(&report, Utc::now(), false);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("NAMESPACE  POLICY  SELECTED  PROTECTED  MISSING  UNREACHABLE")
        );
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells[..6], ["shop", "prod", "4", "4", "0", "-"]);
        assert!(table.contains("running"), "{table}");
        assert!(table.contains("1/3"), "{table}");
        assert!(!table.contains('\x1b'));
        assert!(render_table(&report, Utc::now(), true).contains('\x1b'));
    }

    #[test]
    fn an_empty_cluster_says_so() {
        assert!(
            render_table(&StatusReport::default(), Utc::now(), false)
                .starts_with("No ImageBackupPolicies")
        );
    }
}
