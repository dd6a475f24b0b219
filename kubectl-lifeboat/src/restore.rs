//! `kubectl lifeboat restore`: create the ImageRestore a user would have
//! written and, with `--wait`, follow it and print the restored digests.

use std::process::ExitCode;
use std::time::Duration;

use kube::ResourceExt as _;
use kube::api::{Api, ObjectMeta, PostParams};
use lifeboat_api::backup_policy::LocalObjectRef;
use lifeboat_api::conditions::types;
use lifeboat_api::restore::{
    ImageRestoreState, ImageRestoreStatus, RestoreSource, RestoreSourceType,
};
use lifeboat_api::{ImageRestore, ImageRestoreSpec};

use crate::cli::{EXIT_FAILED, EXIT_TIMEOUT, RestoreArgs, RestoreFrom};
use crate::client::Connection;
use crate::output;

/// The ImageRestore for the arguments: named images, or a policy's missing
/// ones; the operator's defaults (`source.type: Auto`, original
/// repositories) for the rest.
pub fn restore_object(
    images: &[String],
    policy: Option<&str>,
    from: Option<RestoreFrom>,
) -> ImageRestore {
    let spec = ImageRestoreSpec {
        images: (!images.is_empty()).then(|| images.to_vec()),
        policy_ref: policy.map(|name| LocalObjectRef {
            name: name.to_owned(),
        }),
        source: from.map(|from| RestoreSource {
            type_: match from {
                RestoreFrom::Backup => RestoreSourceType::BackupRegistry,
                RestoreFrom::Nodes => RestoreSourceType::NodeCache,
            },
            ..RestoreSource::default()
        }),
        ..ImageRestoreSpec::default()
    };
    let mut restore = ImageRestore::new("", spec);
    restore.metadata = ObjectMeta {
        generate_name: Some("kubectl-lifeboat-".to_owned()),
        labels: Some(
            [(
                "app.kubernetes.io/created-by".to_owned(),
                "kubectl-lifeboat".to_owned(),
            )]
            .into(),
        ),
        ..ObjectMeta::default()
    };
    restore
}

/// Where a restore is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutcome {
    Running {
        restored: i32,
        failed: i32,
        total: i32,
        /// Bytes pushed to destinations so far.
        bytes: i64,
    },
    Succeeded,
    Failed {
        reason: String,
        message: String,
    },
}

pub fn restore_outcome(status: &ImageRestoreStatus) -> RestoreOutcome {
    let ready = output::condition(&status.conditions, types::READY);
    match ready.map(|c| c.status.as_str()) {
        Some("True") => RestoreOutcome::Succeeded,
        Some("False") => RestoreOutcome::Failed {
            reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
            message: ready.map(|c| c.message.clone()).unwrap_or_default(),
        },
        _ => {
            let progress = status.progress.clone().unwrap_or_default();
            RestoreOutcome::Running {
                restored: progress.restored,
                failed: progress.failed,
                total: progress.total,
                bytes: progress.bytes,
            }
        }
    }
}

/// One line per image: what came back (and from where), or why not.
pub fn image_lines(status: &ImageRestoreStatus) -> Vec<String> {
    status
        .images
        .iter()
        .map(|image| match image.state {
            ImageRestoreState::Restored => {
                let digest = image.restored_digest.as_deref().unwrap_or("?");
                let to = image
                    .restored_reference
                    .as_deref()
                    .unwrap_or(&image.reference);
                let from = image
                    .source
                    .as_ref()
                    .map(|s| format!(" from {:?} {}", s.kind, s.name))
                    .unwrap_or_default();
                let changed = if image.digest_preserved == Some(false) {
                    " (digest changed)"
                } else {
                    ""
                };
                format!(
                    "restored {} {digest} -> {to}{from}{changed}",
                    image.reference
                )
            }
            ImageRestoreState::Failed => format!(
                "failed   {}: {} {}",
                image.reference,
                image.reason.as_deref().unwrap_or("-"),
                image.message.as_deref().unwrap_or("")
            ),
            other => format!("{other:?} {}", image.reference),
        })
        .collect()
}

pub async fn run(connection: &Connection, args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let api: Api<ImageRestore> = Api::namespaced(connection.client.clone(), &connection.namespace);
    let images = crate::workloads::expand(connection, &args.images).await?;
    let restore = restore_object(&images, args.policy.as_deref(), args.from);
    let created = api.create(&PostParams::default(), &restore).await?;
    let name = created.name_any();
    println!("imagerestore/{name} created");
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut last_line = String::new();
    loop {
        let status = api.get(&name).await?.status_or_default();
        let outcome = restore_outcome(&status);
        let line = match &outcome {
            RestoreOutcome::Running {
                restored,
                failed,
                total,
                bytes,
            } => {
                let bytes = output::human_bytes(u64::try_from(*bytes).unwrap_or(0));
                format!("restoring: {restored}/{total} restored, {failed} failed, {bytes}")
            }
            RestoreOutcome::Succeeded => "succeeded".to_owned(),
            RestoreOutcome::Failed { reason, message } => format!("failed: {reason}: {message}"),
        };
        if line != last_line {
            println!("{line}");
            last_line = line;
        }
        if !matches!(outcome, RestoreOutcome::Running { .. }) {
            for image in image_lines(&status) {
                println!("{image}");
            }
            let code = if outcome == RestoreOutcome::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            };
            return Ok(code);
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
    use lifeboat_api::restore::{ImageSourceRef, RestoreSourceKind, RestoredImage};

    #[test]
    fn the_object_is_what_a_user_would_write() {
        let named = restore_object(&["r/a@sha256:1".into()], None, None);
        let yaml = serde_json::to_value(&named).unwrap_or_default();
        assert_eq!(
            yaml["spec"],
            serde_json::json!({"images": ["r/a@sha256:1"]})
        );
        assert_eq!(yaml["metadata"]["generateName"], "kubectl-lifeboat-");
        assert_eq!(yaml["kind"], "ImageRestore");
        let missing = restore_object(&[], Some("prod"), None);
        assert_eq!(
            serde_json::to_value(&missing.spec).unwrap_or_default(),
            serde_json::json!({"policyRef": {"name": "prod"}})
        );
        let from_nodes = restore_object(&["r/a@sha256:1".into()], None, Some(RestoreFrom::Nodes));
        assert_eq!(
            serde_json::to_value(&from_nodes.spec).unwrap_or_default()["source"],
            serde_json::json!({"type": "NodeCache"})
        );
        let from_backup = restore_object(&[], Some("prod"), Some(RestoreFrom::Backup));
        assert_eq!(
            serde_json::to_value(&from_backup.spec).unwrap_or_default()["source"],
            serde_json::json!({"type": "BackupRegistry"})
        );
    }

    fn ready(status: &str, reason: &str) -> ImageRestoreStatus {
        ImageRestoreStatus {
            conditions: vec![crate::output::tests::condition(
                "Ready", status, reason, "m",
            )],
            ..Default::default()
        }
    }

    #[test]
    fn outcomes_follow_ready() {
        assert_eq!(
            restore_outcome(&ready("True", "Succeeded")),
            RestoreOutcome::Succeeded
        );
        assert_eq!(
            restore_outcome(&ready("False", "Failed")),
            RestoreOutcome::Failed {
                reason: "Failed".into(),
                message: "m".into()
            }
        );
        assert!(matches!(
            restore_outcome(&ready("Unknown", "Restoring")),
            RestoreOutcome::Running { .. }
        ));
        assert!(matches!(
            restore_outcome(&ImageRestoreStatus::default()),
            RestoreOutcome::Running { .. }
        ));
    }

    #[test]
    fn lines_print_restored_digests_and_failures() {
        let mut status = ready("False", "Failed");
        status.images = vec![
            RestoredImage {
                reference: "r/a:1".into(),
                restored_digest: Some("sha256:aa".into()),
                restored_reference: Some("r/a@sha256:aa".into()),
                source: Some(ImageSourceRef {
                    kind: RestoreSourceKind::BackupRegistry,
                    name: "backup".into(),
                }),
                state: ImageRestoreState::Restored,
                ..Default::default()
            },
            RestoredImage {
                reference: "r/b:1".into(),
                state: ImageRestoreState::Failed,
                reason: Some("ImageNotFound".into()),
                ..Default::default()
            },
        ];
        let lines = image_lines(&status);
        assert_eq!(
            lines[0],
            "restored r/a:1 sha256:aa -> r/a@sha256:aa from BackupRegistry backup"
        );
        assert!(lines[1].starts_with("failed   r/b:1: ImageNotFound"));
    }
}
