//! `restore.automatic`: when a policy reports images missing, it creates an
//! ImageRestore for them (owned by the policy, named after the set of
//! missing digests, so the same loss never gets a second restore) and shows
//! that restore's progress in `status.automaticRestore`.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client, Resource, ResourceExt};
use lifeboat_api::backup_policy::{LocalObjectRef, RestoreLink};
use lifeboat_api::conditions::{find_condition, types};
use lifeboat_api::restore::{BackupSource, RestoreDestination, RestoreSource, RestoreSourceType};
use lifeboat_api::{ImageBackupPolicy, ImageBackupPolicyStatus, ImageRestore, ImageRestoreSpec};
use tracing::{info, warn};

use crate::controllers::object_names::automatic_restore_name;
use crate::error::OperatorError;

/// Label on automatic restores naming their policy.
pub const POLICY_LABEL: &str = "lifeboat.dev/policy";

/// The digests (or references) a status reports missing.
pub fn missing_set(status: &ImageBackupPolicyStatus) -> BTreeSet<String> {
    status
        .missing_images
        .iter()
        .map(|m| m.digest.clone().unwrap_or_else(|| m.reference.clone()))
        .collect()
}

/// The ImageRestore a policy creates for what it reports missing, or `None`
/// when it restores nothing automatically (or nothing is missing). Pure.
pub fn automatic_restore(
    policy: &ImageBackupPolicy,
    status: &ImageBackupPolicyStatus,
) -> Option<ImageRestore> {
    let restore = policy.spec.restore.as_ref()?;
    if !restore.is_automatic() || policy.spec.dry_run {
        return None;
    }
    let missing = missing_set(status);
    if missing.is_empty() {
        return None;
    }
    let policy_name = policy.name_any();
    let spec = ImageRestoreSpec {
        images: None,
        policy_ref: Some(LocalObjectRef {
            name: policy_name.clone(),
        }),
        source: Some(RestoreSource {
            type_: RestoreSourceType::Auto,
            order: Some(restore.effective_source_order()),
            backup: Some(BackupSource {
                policy_name: Some(policy_name.clone()),
                target_names: None,
            }),
            node_cache: restore.node_cache.clone(),
        }),
        destination: restore.secret_ref.clone().map(|secret| RestoreDestination {
            secret_ref: Some(secret),
            ..RestoreDestination::default()
        }),
        active_deadline_seconds: None,
    };
    owned_by_policy(policy, automatic_restore_name(&policy_name, &missing), spec)
}

/// An ImageRestore the policy creates: labelled with the policy and owned
/// by it (deleted with it). None when the policy has no uid yet.
pub(super) fn owned_by_policy(
    policy: &ImageBackupPolicy,
    name: String,
    spec: ImageRestoreSpec,
) -> Option<ImageRestore> {
    // apiVersion, kind, name, uid; controller and blockOwnerDeletion set.
    let owner = policy.controller_owner_ref(&())?;
    Some(ImageRestore {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: policy.namespace(),
            labels: Some([(POLICY_LABEL.to_owned(), policy.name_any())].into()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    })
}

/// Whether an existing automatic restore belongs to an earlier loss of the
/// same images: it finished before the newest of the current losses was
/// seen (restored, then lost again). Such a restore is replaced; one that
/// is running, or finished after the loss was seen, stands. Pure.
pub fn superseded(restore: &ImageRestore, status: &ImageBackupPolicyStatus) -> bool {
    let Some(completed) = restore
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
    else {
        return false;
    };
    status
        .missing_images
        .iter()
        .map(|m| &m.since)
        .max_by_key(|since| since.0)
        .is_some_and(|newest_loss| completed.0 < newest_loss.0)
}

/// What the policy's status says about a restore.
pub fn link_of(restore: &ImageRestore) -> RestoreLink {
    let status = restore.status.as_ref();
    RestoreLink {
        name: restore.name_any(),
        progress: status.and_then(|s| s.progress.clone()),
        ready: status
            .and_then(|s| find_condition(&s.conditions, types::READY))
            .map(|c| c.status.clone()),
    }
}

/// Creates the automatic restore when needed and fills
/// `status.automaticRestore` from the newest one. Returns whether a restore
/// that is wanted was not created yet because the status reporting its
/// images is not on the server (`server_status`): the caller writes that
/// status and looks again soon.
pub async fn link(
    client: &Client,
    policy: &ImageBackupPolicy,
    server_status: &ImageBackupPolicyStatus,
    status: &mut ImageBackupPolicyStatus,
    inventory: &super::discovery::Inventory,
) -> Result<bool, OperatorError> {
    let namespace = policy.namespace().unwrap_or_default();
    let api: Api<ImageRestore> = Api::namespaced(client.clone(), &namespace);
    let mut deferred = false;
    // During an outage: the pods failing to pull get their images imported
    // into their nodes (nothing is missing, so no registry restore).
    let outage = automatic_restore(policy, status)
        .is_none()
        .then(|| super::outage_restore::outage_restore(policy, status, inventory))
        .flatten();
    if let Some(wanted) = outage {
        let name = wanted.name_any();
        if api.get_opt(&name).await?.is_none() {
            match api.create(&PostParams::default(), &wanted).await {
                Ok(_) => info!(
                    policy = %policy.name_any(), restore = %name,
                    "automatic restore into the nodes of pods failing to pull created"
                ),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        status.automatic_restore = Some(RestoreLink {
            name,
            progress: None,
            ready: None,
        });
    }
    let name = match automatic_restore(policy, status) {
        Some(wanted) => {
            let name = wanted.name_any();
            match api.get_opt(&name).await? {
                // The restore reads the policy's missingImages when it
                // starts: created before the status that reports them is
                // written, it found nothing and finished NothingToRestore.
                None if missing_set(server_status) != missing_set(status) => deferred = true,
                None => match api.create(&PostParams::default(), &wanted).await {
                    Ok(_) => {
                        info!(policy = %policy.name_any(), restore = %name, "automatic restore created")
                    }
                    // Exists (or is still being deleted): the next reconcile looks again.
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                },
                Some(existing) if superseded(&existing, status) => {
                    // Background propagation: its Jobs go too.
                    // By uid: a restore someone re-created under the name stays.
                    let params = crate::controllers::delete_exactly(existing.uid());
                    match api.delete(&name, &params).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                    info!(
                        policy = %policy.name_any(), restore = %name,
                        "images lost again after their automatic restore: replacing it"
                    );
                }
                Some(_) => {}
            }
            Some(name)
        }
        None => status.automatic_restore.as_ref().map(|l| l.name.clone()),
    };
    let Some(name) = name.filter(|_| !deferred) else {
        return Ok(deferred);
    };
    match api.get_opt(&name).await {
        Ok(Some(restore)) => status.automatic_restore = Some(link_of(&restore)),
        Ok(None) => {
            status.automatic_restore = Some(RestoreLink {
                name,
                progress: None,
                ready: None,
            })
        }
        Err(e) => warn!(restore = %name, error = %e, "could not read the automatic restore"),
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use lifeboat_api::backup_policy::{MissingImage, RestorePolicy};

    fn policy(automatic: bool) -> ImageBackupPolicy {
        let mut policy: ImageBackupPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "lifeboat.dev/v1alpha1",
            "kind": "ImageBackupPolicy",
            "metadata": {"name": "web", "namespace": "shop", "uid": "uid-1"},
            "spec": {"targets": [{"name": "backup", "registry": "backup.example"}]}
        }))
        .unwrap();
        policy.spec.restore = Some(RestorePolicy {
            automatic: Some(automatic),
            secret_ref: Some(LocalObjectRef {
                name: "push".into(),
            }),
            ..RestorePolicy::default()
        });
        policy
    }

    fn missing(digests: &[&str]) -> ImageBackupPolicyStatus {
        ImageBackupPolicyStatus {
            missing_images: digests
                .iter()
                .map(|d| MissingImage {
                    reference: "reg.example/app:1".into(),
                    digest: Some((*d).into()),
                    since: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                    workloads: 1,
                    backup_targets: vec![],
                    nodes: vec![],
                    referrers: None,
                })
                .collect(),
            ..ImageBackupPolicyStatus::default()
        }
    }

    #[test]
    fn a_restore_finished_before_the_newest_loss_is_superseded() {
        let policy = policy(true);
        let at = |seconds: i64| Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap());
        let mut lost = missing(&["sha256:a"]);
        lost.missing_images[0].since = at(100);
        let mut restore = automatic_restore(&policy, &lost).unwrap();
        // Running: stands.
        assert!(!superseded(&restore, &lost));
        // Finished after this loss was seen: stands (the policy has not looked again yet).
        restore.status = Some(lifeboat_api::ImageRestoreStatus {
            completion_time: Some(at(150)),
            ..lifeboat_api::ImageRestoreStatus::default()
        });
        assert!(!superseded(&restore, &lost));
        // The same image lost again later: replaced.
        lost.missing_images[0].since = at(200);
        assert!(superseded(&restore, &lost));
        // Nothing missing: nothing to replace it for.
        assert!(!superseded(&restore, &missing(&[])));
    }

    #[test]
    fn a_policy_with_automatic_restore_creates_one_owned_restore_per_loss() {
        let policy = policy(true);
        let restore = automatic_restore(&policy, &missing(&["sha256:a"])).unwrap();
        assert_eq!(restore.namespace().as_deref(), Some("shop"));
        assert!(restore.name_any().starts_with("web-restore-"));
        let owner = &restore.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("ImageBackupPolicy", "uid-1")
        );
        assert_eq!(restore.spec.policy_ref.as_ref().unwrap().name, "web");
        assert!(restore.spec.images.is_none());
        let source = restore.spec.source.as_ref().unwrap();
        assert_eq!(source.type_, RestoreSourceType::Auto);
        assert_eq!(
            source.backup.as_ref().unwrap().policy_name.as_deref(),
            Some("web")
        );
        let destination = restore.spec.destination.as_ref().unwrap();
        assert_eq!(destination.secret_ref.as_ref().unwrap().name, "push");
        // The spec passes the same validation the restore controller applies.
        lifeboat_api::validation::validate_restore_spec(&restore.spec).unwrap();

        // Same loss, same name; another loss, another restore.
        let again = automatic_restore(&policy, &missing(&["sha256:a"])).unwrap();
        assert_eq!(again.name_any(), restore.name_any());
        let other = automatic_restore(&policy, &missing(&["sha256:a", "sha256:b"])).unwrap();
        assert_ne!(other.name_any(), restore.name_any());
    }

    #[test]
    fn nothing_without_automatic_restore_or_losses_or_in_dry_runs() {
        assert!(automatic_restore(&policy(false), &missing(&["sha256:a"])).is_none());
        assert!(automatic_restore(&policy(true), &missing(&[])).is_none());
        let mut dry = policy(true);
        dry.spec.dry_run = true;
        assert!(automatic_restore(&dry, &missing(&["sha256:a"])).is_none());
    }
}
