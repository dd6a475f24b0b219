//! Gathering the facts of one restore: what it asks for (its spec, or a
//! policy's missing images), the backup targets it may copy from, one
//! registry engine with every credential it needs, and the state of the
//! export Jobs its status names. Reads only: nothing here changes the
//! cluster or a registry.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod, Secret, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ListParams;
use kube::{Api, Resource, ResourceExt};
use lifeboat_api::conditions::reasons;
use lifeboat_api::restore::{RestoreSourceKind, RestoredImage};
use lifeboat_api::template::{TargetRegistry, TemplateContext};
use lifeboat_api::time::from_k8s_time;
use lifeboat_api::validation::{ValidRestore, validate_policy_spec};
use lifeboat_api::{ImageBackupPolicy, ImageReference, ImageRestore};
use lifeboat_node_protocol::{ExportImage, ExportReport, ReportError};
use registry_transfer::{RegistrySettings, Transfer};
use tracing::debug;

use super::RestoreController;
use super::planning::{BackupCandidate, Refusal, UNSCHEDULABLE_TAINT, destination_for};
use super::status::pending_image;
use crate::error::OperatorError;
use crate::registry_access::{ca_bundle, copy_transfer_config, docker_config};

/// Everything a reconcile derives from the restore once.
pub(super) struct Facts<'a> {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) uid: String,
    pub(super) restore: &'a ImageRestore,
    pub(super) valid: ValidRestore,
}

impl<'a> Facts<'a> {
    pub(super) fn new(restore: &'a ImageRestore, valid: ValidRestore) -> Self {
        Facts {
            namespace: restore.namespace().unwrap_or_default(),
            name: restore.name_any(),
            uid: restore.uid().unwrap_or_default(),
            restore,
            valid,
        }
    }

    /// Whether the restore writes into nodes (`destination.nodes`).
    pub(super) fn writes_into_nodes(&self) -> bool {
        self.restore
            .spec
            .destination
            .as_ref()
            .is_some_and(|d| d.nodes.is_some())
    }

    pub(super) fn owner(&self, operator_namespace: &str) -> Option<OwnerReference> {
        (self.namespace == operator_namespace)
            .then(|| self.restore.controller_owner_ref(&()))
            .flatten()
    }

    pub(super) fn template_context(&self) -> TemplateContext<'_> {
        TemplateContext {
            policy_namespace: &self.namespace,
            policy_name: &self.name,
        }
    }

    pub(super) fn destination_override(&self) -> Option<(&TargetRegistry, &str)> {
        let template = self
            .restore
            .spec
            .destination
            .as_ref()
            .map_or(lifeboat_api::restore::DEFAULT_DESTINATION_TEMPLATE, |d| {
                d.effective_repository_template()
            });
        self.valid.destination.as_ref().map(|r| (r, template))
    }

    /// The image of a status entry, with its digest.
    pub(super) fn reference(&self, image: &RestoredImage) -> Result<ImageReference, String> {
        let parsed = ImageReference::parse(&image.reference).map_err(|e| e.to_string())?;
        Ok(match (&parsed.digest, &image.requested_digest) {
            (None, Some(digest)) => match lifeboat_api::Digest::parse(digest) {
                Ok(d) => parsed.with_digest(d),
                Err(_) => parsed,
            },
            _ => parsed,
        })
    }

    pub(super) fn destination(&self, image: &ImageReference) -> Result<ImageReference, String> {
        destination_for(image, self.destination_override(), self.template_context())
            .map_err(|e| e.to_string())
    }

    /// What node-exporter is to push where for an image (`SRC` or
    /// `SRC=DEST` on its command line).
    pub(super) fn export_argument(&self, image: &RestoredImage) -> Result<ExportImage, String> {
        let reference = self.reference(image)?;
        let destination = self.destination(&reference)?;
        Ok(ExportImage::to(reference, &destination))
    }

    pub(super) fn node_tolerations(&self) -> Vec<Toleration> {
        let mut tolerations = self
            .restore
            .spec
            .effective_source()
            .node_cache
            .and_then(|n| n.tolerations)
            .unwrap_or_default();
        // A node chosen as the last holder may be cordoned.
        tolerations.push(Toleration {
            key: Some(UNSCHEDULABLE_TAINT.to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some("NoSchedule".to_owned()),
            ..Toleration::default()
        });
        tolerations
    }

    pub(super) fn plain_http(&self) -> Vec<String> {
        match (&self.restore.spec.destination, &self.valid.destination) {
            (Some(d), Some(registry)) if d.is_insecure() => vec![registry.host.clone()],
            _ => Vec::new(),
        }
    }
}

// --- what to restore ---------------------------------------------------------------

/// The images the restore names, or a policy's missing images; a refusal
/// when the policy it names does not exist (yet).
pub(super) async fn requested_images(
    controller: &RestoreController,
    facts: &Facts<'_>,
) -> Result<Result<Vec<RestoredImage>, Refusal>, OperatorError> {
    let spec = &facts.restore.spec;
    if let Some(images) = &spec.images {
        return Ok(Ok(images
            .iter()
            .zip(&facts.valid.images)
            .map(|(text, parsed)| {
                pending_image(text, parsed.digest.as_ref().map(|d| d.as_str().to_owned()))
            })
            .collect()));
    }
    let Some(policy_ref) = &spec.policy_ref else {
        return Ok(Ok(Vec::new()));
    };
    let policies: Api<ImageBackupPolicy> =
        Api::namespaced(controller.context.client.clone(), &facts.namespace);
    let Some(policy) = policies.get_opt(&policy_ref.name).await? else {
        return Ok(Err(Refusal::retry(
            reasons::POLICY_NOT_FOUND,
            format!(
                "ImageBackupPolicy {}/{} does not exist",
                facts.namespace, policy_ref.name
            ),
        )));
    };
    let missing = policy.status.map(|s| s.missing_images).unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut images = Vec::new();
    for image in missing.into_iter().take(256) {
        let reference = match (&image.digest, image.reference.contains('@')) {
            (Some(digest), false) => format!("{}@{digest}", image.reference),
            _ => image.reference.clone(),
        };
        if seen.insert(reference.clone()) {
            images.push(pending_image(&reference, image.digest.clone()));
        }
    }
    Ok(Ok(images))
}

pub(super) async fn backup_candidates(
    controller: &RestoreController,
    facts: &Facts<'_>,
) -> Result<Vec<(BackupCandidate, ImageBackupPolicy)>, OperatorError> {
    let source = facts.restore.spec.effective_source();
    if !source.kinds().contains(&RestoreSourceKind::BackupRegistry) {
        return Ok(Vec::new());
    }
    let backup = source.backup.unwrap_or_default();
    let api: Api<ImageBackupPolicy> =
        Api::namespaced(controller.context.client.clone(), &facts.namespace);
    let named = backup.policy_name.clone().or_else(|| {
        facts
            .restore
            .spec
            .policy_ref
            .as_ref()
            .map(|p| p.name.clone())
    });
    let policies = match named {
        Some(name) => api.get_opt(&name).await?.into_iter().collect(),
        None => api.list(&ListParams::default()).await?.items,
    };
    let mut candidates = Vec::new();
    for policy in policies {
        let Ok(valid) = validate_policy_spec(&policy.spec) else {
            continue;
        };
        for target in valid.targets {
            if backup
                .target_names
                .as_ref()
                .is_some_and(|names| !names.contains(&target.name))
            {
                continue;
            }
            candidates.push((
                BackupCandidate {
                    policy: policy.name_any(),
                    target: target.name.clone(),
                    registry: target.registry.clone(),
                    template: target.repository_template.clone(),
                },
                policy.clone(),
            ));
        }
    }
    Ok(candidates)
}

/// One engine for the backup targets (read) and the destinations (write).
pub(super) async fn registry_engine(
    controller: &RestoreController,
    facts: &Facts<'_>,
    candidates: &[(BackupCandidate, ImageBackupPolicy)],
) -> Result<Transfer, OperatorError> {
    let client = &controller.context.client;
    let namespace = &facts.namespace;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut fingerprint = String::new();
    let mut settings = RegistrySettings::new();
    for registry in &controller.context.config.plain_http_registries {
        settings = settings.allow_plain_http(registry);
    }
    for (candidate, policy) in candidates {
        let Some(target) = policy
            .spec
            .targets
            .iter()
            .find(|t| t.name == candidate.target)
        else {
            continue;
        };
        if let Some(secret) = &target.secret_ref {
            match docker_config(&secrets, namespace, &secret.name, &mut fingerprint).await {
                Ok(config) => settings = settings.with_docker_config(config),
                Err(OperatorError::Kube(e)) => return Err(OperatorError::Kube(e)),
                // A backup that cannot be read is only one source less.
                Err(e) => debug!(error = %e, "backup target credentials not usable"),
            }
        }
        if let Some(bundle) = &target.ca_bundle
            && let Ok(pem) = ca_bundle(client, namespace, bundle, &mut fingerprint).await
        {
            settings = settings.with_ca_bundle(&candidate.registry.host, pem);
        }
        // A tenant's `insecure: true` counts only for hosts the admin listed.
        let plain_http_allowed = crate::tenancy::plain_http(
            facts.namespace == controller.context.config.namespace,
            &candidate.registry.host,
            &controller.context.config.plain_http_registries,
        )
        .is_ok();
        if target.is_insecure() && plain_http_allowed {
            settings = settings.allow_plain_http(&candidate.registry.host);
        }
    }
    if let Some(destination) = &facts.restore.spec.destination {
        if let Some(secret) = &destination.secret_ref {
            let config = docker_config(&secrets, namespace, &secret.name, &mut fingerprint).await?;
            settings = settings.with_docker_config(config);
        }
        if let Some(registry) = &facts.valid.destination {
            if let Some(bundle) = &destination.ca_bundle {
                let pem = ca_bundle(client, namespace, bundle, &mut fingerprint).await?;
                settings = settings.with_ca_bundle(&registry.host, pem);
            }
            if destination.is_insecure() {
                settings = settings.allow_plain_http(&registry.host);
            }
        }
    }
    // Set by the admin only, as for backups (a tenant cannot widen where
    // credentials go).
    let config = &controller.context.config;
    for (registry, realm) in &config.trusted_token_realms {
        settings = settings.trust_token_realm(registry, realm);
    }
    // A copy back from a slow or trickling registry ends at its deadline
    // instead of holding one of the controller's reconciles for hours.
    let mut transfer_config = copy_transfer_config(config.copy_deadline);
    if facts.writes_into_nodes() {
        transfer_config.retry = NODE_RESTORE_PROBE_RETRY;
    }
    Ok(Transfer::new(transfer_config, settings))
}

/// A restore into nodes only asks backups whether they hold a digest (the
/// import Jobs pull): one quick retry, not the copy engine's five attempts
/// (3 s against a backup that does not answer, paid again by every
/// reconcile while node inventories run; measured in node-import.sh).
const NODE_RESTORE_PROBE_RETRY: registry_transfer::RetryPolicy = registry_transfer::RetryPolicy {
    max_attempts: 2,
    base_delay: Duration::from_millis(200),
    max_delay: Duration::from_secs(1),
    max_retry_after: Duration::from_secs(2),
};

// --- following export Jobs ---------------------------------------------------------

/// A Job's state, as far as the restore cares.
pub(super) enum JobState {
    Missing,
    Running,
    Finished(FinishedJob),
}

/// What a finished export Job left behind.
pub(super) struct FinishedJob {
    pub(super) name: String,
    pub(super) succeeded: bool,
    /// The Job's condition, with the exit code when a pod left one.
    pub(super) message: String,
    pub(super) report: Option<ExportReport>,
    /// A report node-exporter wrote in a version this operator does
    /// not read: its results are not trusted.
    pub(super) rejected: Option<ReportError>,
}

pub(super) fn job_finished(job: &Job) -> Option<(bool, String)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .filter(|c| c.status == "True")
        .find_map(|c| match c.type_.as_str() {
            "Complete" => Some((true, String::new())),
            "Failed" => Some((
                false,
                format!(
                    "{}: {}",
                    c.reason.as_deref().unwrap_or("Failed"),
                    c.message.as_deref().unwrap_or("")
                ),
            )),
            _ => None,
        })
}

/// How a Job pod's container (node-exporter, its only one) ended, once it has.
pub(super) fn node_exporter_exit(pod: &Pod) -> Option<&ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

/// The termination message of the Job's most telling pod: a succeeded one,
/// else the newest that left a message.
pub(super) async fn termination_message(
    pods: &Api<Pod>,
    job: &str,
) -> Result<Option<(String, Option<i32>)>, OperatorError> {
    let mut list = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await?
        .items;
    list.sort_by_key(|p| {
        (
            p.status.as_ref().and_then(|s| s.phase.clone()) != Some("Succeeded".to_owned()),
            std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(from_k8s_time)),
        )
    });
    for pod in list {
        if let Some(terminated) = node_exporter_exit(&pod)
            && let Some(message) = terminated.message.clone().filter(|m| !m.trim().is_empty())
        {
            return Ok(Some((message, Some(terminated.exit_code))));
        }
    }
    Ok(None)
}

/// Whether a pod's exit (its termination message and exit code) says its
/// node-exporter finished the work.
pub(super) fn exited_with_success(exited: &(String, Option<i32>)) -> bool {
    exited.1 == Some(lifeboat_node_protocol::exit::OK)
}

pub(super) async fn job_state(
    controller: &RestoreController,
    name: &str,
) -> Result<JobState, OperatorError> {
    let namespace = &controller.context.config.namespace;
    let api: Api<Job> = Api::namespaced(controller.context.client.clone(), namespace);
    let Some(job) = api.get_opt(name).await? else {
        return Ok(JobState::Missing);
    };
    let pods: Api<Pod> = Api::namespaced(controller.context.client.clone(), namespace);
    let finished = job_finished(&job);
    let found = match &finished {
        Some(_) => termination_message(&pods, name).await?,
        // Not finished yet: its pod may have, about a second before the
        // Job controller marks the Job Complete (measured in
        // docs/benchmarks.md, "Restore").
        None => match termination_message(&pods, name).await? {
            Some(exited) if exited_with_success(&exited) => Some(exited),
            _ => return Ok(JobState::Running),
        },
    };
    // A pod that exited 0 with its report is a Job that succeeded: one
    // completion, `restartPolicy: Never`, nothing can undo the exit.
    let (succeeded, job_message) = finished.unwrap_or((true, String::new()));
    let (read, message) = match found {
        Some((text, code)) => (
            Some(ExportReport::read(&text)),
            format!("{job_message} (exit code {})", code.unwrap_or(-1)),
        ),
        None => (None, job_message),
    };
    // An unreadable message (a crash, an OOM kill) is no report; a report
    // of another version is rejected, with its own reason.
    let (report, rejected) = match read {
        Some(Ok(report)) => (Some(report), None),
        Some(Err(error @ ReportError::UnsupportedVersion { .. })) => (None, Some(error)),
        Some(Err(ReportError::Unreadable(_))) | None => (None, None),
    };
    Ok(JobState::Finished(FinishedJob {
        name: name.to_owned(),
        succeeded,
        message,
        report,
        rejected,
    }))
}
