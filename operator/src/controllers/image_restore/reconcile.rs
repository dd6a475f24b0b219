//! One reconcile of one ImageRestore: the IO around the pure steps.
//!
//! The status is the restore's memory: images move Pending → InProgress
//! (with the export Job's name, written before the Job is created) →
//! Restored or Failed. A restarted operator reads the status, finds the Jobs
//! by their deterministic names, and never creates a second one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use lifeboat_api::conditions::reasons;
use lifeboat_api::restore::{ImageRestoreState, ImageSourceRef, RestoreSourceKind, RestoredImage};
use lifeboat_api::template::{TargetRegistry, TemplateContext};
use lifeboat_api::time::from_k8s_time;
use lifeboat_api::validation::{ValidRestore, validate_policy_spec, validate_restore_spec};
use lifeboat_api::{ImageBackupPolicy, ImageReference, ImageRestore, ImageRestoreStatus};
use opentelemetry::KeyValue;
use registry_transfer::{
    ContentSource as _, CopyRequest, ReferrersPolicy, RegistrySettings, RepositoryRef, Transfer,
    TransferError, deterministic_tag,
};
use tracing::{debug, info, warn};

use super::RestoreController;
use super::jobs::{
    self, ExportJob, LABEL_RESTORE_UID, export_job, inventory_holdings, inventory_job,
};
use super::planning::{
    self, BackupCandidate, Exportable, Holdings, NodeChoice, NodeFacts, NodeUse,
    UNSCHEDULABLE_TAINT, backup_references, choose_nodes, classify_node, destination_for,
    image_argument, inventory_needed,
};
use super::scope;
use super::status::{
    fail, fail_open_images, is_complete, newly_terminal, nothing_to_restore, pending_image,
    stalled, summarize, whole_seconds,
};
use crate::controllers::object_names;
use crate::error::OperatorError;
use crate::registry_access::{ca_bundle, docker_config, transfer_config};
use crate::telemetry::object_labels;
use crate::tenancy;
use lifeboat_node_protocol::{
    ExportImage, ExportReport, ImageSource, InventoryReport, ReportError, reasons as node_reasons,
};

const KIND: &str = "ImageRestore";
/// Finalizer for restores outside the operator's namespace, whose Jobs
/// and Secrets an owner reference cannot clean up.
pub const FINALIZER: &str = "lifeboat.dev/cleanup";
/// How long a node's answer about an image is trusted.
pub const INVENTORY_TTL: Duration = Duration::from_secs(60);
/// How often a running restore is looked at (Job changes also wake it).
const POLL: Duration = Duration::from_secs(5);
/// Node exports of one image before it is given up.
const MAX_NODE_ATTEMPTS: u32 = 3;
/// Export Jobs' deadline when the restore sets none.
const DEFAULT_JOB_DEADLINE_SECONDS: i64 = 1800;

pub async fn reconcile(
    restore: Arc<ImageRestore>,
    controller: Arc<RestoreController>,
) -> Result<Action, OperatorError> {
    controller
        .context
        .metrics
        .reconciles
        .add(1, &[KeyValue::new("kind", KIND)]);
    let result = reconcile_with(&restore, &controller).await;
    controller.forget_deleted_restores();
    result
}

async fn write_status(
    controller: &RestoreController,
    restore: &ImageRestore,
    previous: &ImageRestoreStatus,
    status: &ImageRestoreStatus,
) -> Result<(), OperatorError> {
    if previous == status {
        return Ok(());
    }
    let name = restore.name_any();
    let namespace = restore.namespace().unwrap_or_default();
    let api: Api<ImageRestore> = Api::namespaced(controller.context.client.clone(), &namespace);
    crate::controllers::apply_status(&api, &name, status).await?;
    controller.wrote(&restore.uid().unwrap_or_default(), Some(status.clone()));
    Ok(())
}

async fn publish(
    controller: &RestoreController,
    restore: &ImageRestore,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let regarding = restore.object_ref(&());
    crate::controllers::publish(
        &controller.recorder,
        &regarding,
        type_,
        reason,
        "Restore",
        note,
    )
    .await;
}

/// Everything a reconcile derives from the restore once.
struct Facts<'a> {
    namespace: String,
    name: String,
    uid: String,
    restore: &'a ImageRestore,
    valid: ValidRestore,
}

impl Facts<'_> {
    fn owner(&self, operator_namespace: &str) -> Option<OwnerReference> {
        (self.namespace == operator_namespace)
            .then(|| self.restore.controller_owner_ref(&()))
            .flatten()
    }

    fn template_context(&self) -> TemplateContext<'_> {
        TemplateContext {
            policy_namespace: &self.namespace,
            policy_name: &self.name,
        }
    }

    fn destination_override(&self) -> Option<(&TargetRegistry, &str)> {
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
    fn reference(&self, image: &RestoredImage) -> Result<ImageReference, String> {
        let parsed = ImageReference::parse(&image.reference).map_err(|e| e.to_string())?;
        Ok(match (&parsed.digest, &image.requested_digest) {
            (None, Some(digest)) => match lifeboat_api::Digest::parse(digest) {
                Ok(d) => parsed.with_digest(d),
                Err(_) => parsed,
            },
            _ => parsed,
        })
    }

    fn destination(&self, image: &ImageReference) -> Result<ImageReference, String> {
        destination_for(image, self.destination_override(), self.template_context())
            .map_err(|e| e.to_string())
    }

    /// What node-exporter is to push where for an image (`SRC` or
    /// `SRC=DEST` on its command line).
    fn export_argument(&self, image: &RestoredImage) -> Result<ExportImage, String> {
        let reference = self.reference(image)?;
        let destination = self.destination(&reference)?;
        Ok(ExportImage::to(reference, &destination))
    }

    fn node_tolerations(&self) -> Vec<Toleration> {
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

    fn plain_http(&self) -> Vec<String> {
        match (&self.restore.spec.destination, &self.valid.destination) {
            (Some(d), Some(registry)) if d.is_insecure() => vec![registry.host.clone()],
            _ => Vec::new(),
        }
    }
}

async fn reconcile_with(
    restore: &ImageRestore,
    controller: &RestoreController,
) -> Result<Action, OperatorError> {
    let context = &controller.context;
    let namespace = restore.namespace().unwrap_or_default();
    let name = restore.name_any();
    let uid = restore.uid().unwrap_or_default();
    let api: Api<ImageRestore> = Api::namespaced(context.client.clone(), &namespace);
    let operator_namespace = context.config.namespace.clone();

    if restore.metadata.deletion_timestamp.is_some() {
        cleanup(controller, &name, &uid).await?;
        remove_finalizer(&api, restore).await?;
        controller.wrote(&uid, None);
        return Ok(Action::await_change());
    }
    let previous = controller.latest_status(restore);
    let generation = restore.metadata.generation.unwrap_or(0);
    let now = whole_seconds(Utc::now());
    if is_complete(&previous) {
        delete_credentials(controller, &name, &uid).await;
        return Ok(Action::await_change());
    }

    // 1. A spec that cannot work: Stalled, for good (the spec is immutable).
    let valid = match validate_restore_spec(&restore.spec) {
        Ok(valid) => valid,
        Err(e) => {
            let (reason, message) = (e.reason(), e.to_string());
            let status = stalled(previous.clone(), generation, now, reason, &message, true);
            write_status(controller, restore, &previous, &status).await?;
            publish(controller, restore, EventType::Warning, reason, message).await;
            return Ok(Action::await_change());
        }
    };
    if namespace != operator_namespace && !restore.finalizers().iter().any(|f| f == FINALIZER) {
        add_finalizer(&api, restore).await?;
    }
    let facts = Facts {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: uid.clone(),
        restore,
        valid,
    };

    // 2. What to restore, fixed at the first reconcile.
    let mut status = previous.clone();
    if status.images.is_empty() {
        match requested_images(controller, &facts).await? {
            Ok(images) if images.is_empty() => {
                let status = nothing_to_restore(previous.clone(), generation, now);
                write_status(controller, restore, &previous, &status).await?;
                return Ok(Action::await_change());
            }
            Ok(images) => status.images = images,
            Err((reason, message)) => {
                let status = stalled(previous.clone(), generation, now, reason, &message, false);
                write_status(controller, restore, &previous, &status).await?;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
        }
    }

    // 3. The deadline.
    let started = status.start_time.as_ref().map(from_k8s_time).unwrap_or(now);
    let remaining = restore
        .spec
        .active_deadline_seconds
        .map(|limit| limit - (now - started).num_seconds());
    if remaining.is_some_and(|r| r <= 0) {
        fail_open_images(
            &mut status,
            reasons::DEADLINE_EXCEEDED,
            &format!(
                "not restored within activeDeadlineSeconds ({}s)",
                restore.spec.active_deadline_seconds.unwrap_or_default()
            ),
        );
        delete_jobs(controller, &uid).await;
    }

    // 4. Registries: the backups' and the destinations' credentials.
    let candidates = backup_candidates(controller, &facts).await?;
    let transfer = match registry_engine(controller, &facts, &candidates).await {
        Ok(transfer) => transfer,
        Err(OperatorError::Kube(e)) => return Err(OperatorError::Kube(e)),
        Err(e) => {
            let (reason, message) = (e.reason(), e.to_string());
            let status = stalled(previous.clone(), generation, now, reason, &message, false);
            write_status(controller, restore, &previous, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    };

    // 4b. Tenant rules, once, before any node is asked or any Job exists.
    if previous.images.is_empty() {
        let request = scope::Request {
            namespace: &namespace,
            spec: &restore.spec,
            images: status
                .images
                .iter()
                .filter_map(|i| facts.reference(i).ok())
                .collect(),
            destination_host: facts.valid.destination.as_ref().map(|d| d.host.as_str()),
        };
        if let Err(refusal) = scope::check(controller, &request, &transfer, &candidates).await? {
            let (reason, message) = (refusal.reason, refusal.message);
            let status = stalled(previous.clone(), generation, now, reason, &message, false);
            if status != previous {
                write_status(controller, restore, &previous, &status).await?;
                publish(controller, restore, EventType::Warning, reason, message).await;
            }
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    }

    // 5. Export Jobs already running: read and verify what they did.
    let mut existing_jobs = BTreeSet::new();
    follow_jobs(
        controller,
        &facts,
        &transfer,
        &mut status,
        &mut existing_jobs,
    )
    .await?;

    // 6. Pending images: backups, then nodes (or as `source.order` says).
    let mut waiting = false;
    if status
        .images
        .iter()
        .any(|i| i.state == ImageRestoreState::Pending)
    {
        waiting = plan_pending(controller, &facts, &transfer, &candidates, &mut status).await?;
    }

    // 7. Status, then the Jobs it names, then events and metrics.
    let status = summarize(status, generation, now);
    write_status(controller, restore, &previous, &status).await?;
    let deadline = remaining
        .unwrap_or(DEFAULT_JOB_DEADLINE_SECONDS)
        .clamp(1, DEFAULT_JOB_DEADLINE_SECONDS);
    ensure_jobs(controller, &facts, &status, &existing_jobs, deadline).await?;

    for image in newly_terminal(&previous, &status) {
        let (type_, reason, note) = if image.state == ImageRestoreState::Restored {
            let from = image
                .source
                .as_ref()
                .map(|s| format!("{:?} {}", s.kind, s.name))
                .unwrap_or_default();
            (
                EventType::Normal,
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
            (
                EventType::Warning,
                "ImageRestoreFailed",
                format!(
                    "{}: {}: {}",
                    image.reference,
                    image.reason.as_deref().unwrap_or("Failed"),
                    image.message.as_deref().unwrap_or("")
                ),
            )
        };
        publish(controller, restore, type_, reason, note).await;
    }
    if is_complete(&status) && !is_complete(&previous) {
        finished(controller, &facts, &status).await;
        delete_credentials(controller, &name, &uid).await;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(if waiting {
        Duration::from_secs(2)
    } else {
        POLL
    }))
}

async fn finished(controller: &RestoreController, facts: &Facts<'_>, status: &ImageRestoreStatus) {
    let progress = status.progress.clone().unwrap_or_default();
    let succeeded = progress.failed == 0;
    let result = if succeeded {
        "Succeeded"
    } else if progress.restored > 0 {
        "PartiallyFailed"
    } else {
        "Failed"
    };
    let labels = object_labels(KIND, &facts.namespace, &facts.name);
    let mut attributes = labels.to_vec();
    attributes.push(KeyValue::new("result", result));
    let metrics = &controller.context.metrics;
    metrics.restores.add(1, &attributes);
    if let (Some(start), Some(end)) = (&status.start_time, &status.completion_time) {
        let seconds =
            (from_k8s_time(end) - from_k8s_time(start)).num_milliseconds() as f64 / 1000.0;
        metrics
            .restore_duration
            .record(seconds.max(0.0), &attributes);
    }
    let note = format!(
        "{} of {} images restored, {} failed, {} bytes",
        progress.restored, progress.total, progress.failed, progress.bytes
    );
    let (type_, reason) = if succeeded {
        (EventType::Normal, "RestoreSucceeded")
    } else {
        (EventType::Warning, "RestoreFailed")
    };
    info!(restore = %facts.name, namespace = %facts.namespace, result, "restore finished");
    publish(controller, facts.restore, type_, reason, note).await;
}

// --- what to restore ---------------------------------------------------------------

type Problem = (&'static str, String);

async fn requested_images(
    controller: &RestoreController,
    facts: &Facts<'_>,
) -> Result<Result<Vec<RestoredImage>, Problem>, OperatorError> {
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
        return Ok(Err((
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

async fn backup_candidates(
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
async fn registry_engine(
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
    Ok(Transfer::new(transfer_config(), settings))
}

// --- following export Jobs ---------------------------------------------------------

/// A Job's state, as far as the restore cares.
enum JobState {
    Missing,
    Running,
    Finished {
        succeeded: bool,
        message: String,
        report: Option<ExportReport>,
        /// A report node-exporter wrote in a version this operator does
        /// not read: its results are not trusted.
        rejected: Option<ReportError>,
    },
}

fn job_finished(job: &Job) -> Option<(bool, String)> {
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

/// The termination message of the Job's most telling pod: a succeeded one,
/// else the newest that left a message.
async fn termination_message(
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
        let terminated = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref());
        if let Some(terminated) = terminated
            && let Some(message) = terminated.message.clone().filter(|m| !m.trim().is_empty())
        {
            return Ok(Some((message, Some(terminated.exit_code))));
        }
    }
    Ok(None)
}

async fn job_state(controller: &RestoreController, name: &str) -> Result<JobState, OperatorError> {
    let namespace = &controller.context.config.namespace;
    let api: Api<Job> = Api::namespaced(controller.context.client.clone(), namespace);
    let Some(job) = api.get_opt(name).await? else {
        return Ok(JobState::Missing);
    };
    let Some((succeeded, job_message)) = job_finished(&job) else {
        return Ok(JobState::Running);
    };
    let pods: Api<Pod> = Api::namespaced(controller.context.client.clone(), namespace);
    let found = termination_message(&pods, name).await?;
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
    Ok(JobState::Finished {
        succeeded,
        message,
        report,
        rejected,
    })
}

async fn follow_jobs(
    controller: &RestoreController,
    facts: &Facts<'_>,
    transfer: &Transfer,
    status: &mut ImageRestoreStatus,
    existing: &mut BTreeSet<String>,
) -> Result<(), OperatorError> {
    let names: BTreeSet<String> = status
        .images
        .iter()
        .filter(|i| i.state == ImageRestoreState::InProgress)
        .filter_map(|i| i.job_name.clone())
        .collect();
    let mut bytes = 0u64;
    for job_name in names {
        let state = job_state(controller, &job_name).await?;
        let (succeeded, job_message, report, rejected) = match state {
            JobState::Missing => continue,
            JobState::Running => {
                existing.insert(job_name);
                continue;
            }
            JobState::Finished {
                succeeded,
                message,
                report,
                rejected,
            } => (succeeded, message, report, rejected),
        };
        existing.insert(job_name.clone());
        for image in status
            .images
            .iter_mut()
            .filter(|i| i.job_name.as_deref() == Some(job_name.as_str()))
            .filter(|i| i.state == ImageRestoreState::InProgress)
        {
            if let Some(error) = &rejected {
                fail(
                    image,
                    reasons::UNSUPPORTED_NODE_REPORT_VERSION,
                    format!("export Job {job_name}: {error}"),
                );
                continue;
            }
            let asked = facts.export_argument(image).ok().map(|a| a.source);
            let result = report
                .as_ref()
                .zip(asked.as_ref())
                .and_then(|(report, asked)| report.result_for(asked));
            match result {
                Some(result) if result.status.is_pushed() => {
                    bytes += result.bytes;
                    let digest = result
                        .digest
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    verify_into(
                        facts,
                        transfer,
                        image,
                        &digest,
                        result.incomplete_index.is_none(),
                    )
                    .await;
                }
                Some(result)
                    if planning::node_lost_image(result.reason.as_deref())
                        && controller.failed_attempt(&facts.uid, &image.reference)
                            < MAX_NODE_ATTEMPTS =>
                {
                    // The node no longer holds it (GC, a stale answer): it
                    // is not asked again for a while; another holder may be.
                    let node = image
                        .source
                        .as_ref()
                        .map(|s| s.name.clone())
                        .unwrap_or_default();
                    if let Ok(reference) = facts.reference(image) {
                        controller.remember(
                            &node,
                            [(image_argument(&reference), Exportable::None)].into(),
                        );
                    }
                    image.state = ImageRestoreState::Pending;
                    image.job_name = None;
                    image.source = None;
                    image.message = Some(format!(
                        "node {node} could not export it ({}); choosing another node",
                        result.reason.as_deref().unwrap_or("Failed")
                    ));
                }
                Some(result) => {
                    let reason = match result.reason.as_deref() {
                        Some(node_reasons::PUSH_FAILED) => reasons::PUSH_FAILED,
                        _ => reasons::NODE_EXPORT_FAILED,
                    };
                    fail(
                        image,
                        reason,
                        format!(
                            "export from node {} failed: {}: {}",
                            image.source.as_ref().map_or("?", |s| s.name.as_str()),
                            result.reason.as_deref().unwrap_or("Failed"),
                            result.message.as_deref().unwrap_or("")
                        ),
                    );
                }
                None if succeeded => {
                    // Not in the (shortened) report: the registry says.
                    let digest = image.requested_digest.clone().unwrap_or_default();
                    verify_into(facts, transfer, image, &digest, true).await;
                }
                None => {
                    let detail = report
                        .as_ref()
                        .and_then(|r| r.error.as_ref())
                        .map(|e| format!("{}: {}", e.reason, e.message))
                        .unwrap_or(job_message.clone());
                    fail(
                        image,
                        reasons::NODE_EXPORT_FAILED,
                        format!("export Job {job_name} failed: {detail}"),
                    );
                }
            }
        }
    }
    if bytes > 0 {
        let progress = status.progress.get_or_insert_with(Default::default);
        progress.bytes += i64::try_from(bytes).unwrap_or(i64::MAX);
    }
    Ok(())
}

/// Counts an image as restored only once its destination serves the digest
/// (a manifest GET, digest checked).
async fn verify_into(
    facts: &Facts<'_>,
    transfer: &Transfer,
    image: &mut RestoredImage,
    digest: &str,
    whole: bool,
) {
    let destination = match facts.reference(image).and_then(|r| facts.destination(&r)) {
        Ok(d) => d,
        Err(message) => {
            fail(image, reasons::VERIFICATION_FAILED, message);
            return;
        }
    };
    let pinned = format!("{}@{digest}", destination.name());
    match verify(transfer, &pinned).await {
        Ok(()) => {
            image.state = ImageRestoreState::Restored;
            image.restored_digest = Some(digest.to_owned());
            image.restored_reference = Some(pinned.clone());
            image.digest_preserved = Some(
                whole
                    && image
                        .requested_digest
                        .as_deref()
                        .is_none_or(|d| d == digest),
            );
            image.reason = None;
            image.message = Some(format!("{pinned} is pullable"));
        }
        Err(e) => fail(
            image,
            reasons::VERIFICATION_FAILED,
            format!("{pinned} was reported pushed but cannot be pulled: {e}"),
        ),
    }
}

async fn verify(transfer: &Transfer, pinned: &str) -> Result<(), TransferError> {
    let reference = registry_transfer::reference::parse_image(pinned)?;
    transfer.registry_source(&reference)?.resolve().await?;
    Ok(())
}

// --- planning pending images -------------------------------------------------------

/// Plans and starts what can be started; returns whether node inventories
/// are still being collected (look again soon).
async fn plan_pending(
    controller: &RestoreController,
    facts: &Facts<'_>,
    transfer: &Transfer,
    candidates: &[(BackupCandidate, ImageBackupPolicy)],
    status: &mut ImageRestoreStatus,
) -> Result<bool, OperatorError> {
    let mut unresolved: Vec<usize> = status
        .images
        .iter()
        .enumerate()
        .filter(|(_, i)| i.state == ImageRestoreState::Pending)
        .map(|(n, _)| n)
        .collect();
    let mut why: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for index in unresolved.clone() {
        if let Err(message) = facts.reference(&status.images[index]) {
            fail(
                &mut status.images[index],
                reasons::INVALID_IMAGE_REFERENCE,
                message,
            );
            unresolved.retain(|i| *i != index);
        }
    }
    let only: Vec<BackupCandidate> = candidates.iter().map(|(c, _)| c.clone()).collect();
    let mut bytes = 0u64;
    for kind in facts.restore.spec.effective_source().kinds() {
        if unresolved.is_empty() {
            break;
        }
        match kind {
            RestoreSourceKind::BackupRegistry => {
                let mut still = Vec::new();
                for index in unresolved {
                    match from_backup(facts, transfer, &only, &mut status.images[index]).await {
                        BackupOutcome::Done(copied) => bytes += copied,
                        BackupOutcome::NotThere(message) => {
                            why.entry(index).or_default().push(message);
                            still.push(index);
                        }
                    }
                }
                unresolved = still;
            }
            RestoreSourceKind::NodeCache => {
                match from_nodes(controller, facts, status, &unresolved).await? {
                    None => {
                        add_bytes(status, bytes);
                        return Ok(true);
                    }
                    Some(not_found) => {
                        let mut still = Vec::new();
                        for (index, message) in not_found {
                            why.entry(index).or_default().push(message);
                            still.push(index);
                        }
                        unresolved = still;
                    }
                }
            }
        }
    }
    for index in unresolved {
        let message = why.remove(&index).unwrap_or_default().join("; ");
        let reference = status.images[index].reference.clone();
        fail(
            &mut status.images[index],
            reasons::IMAGE_NOT_FOUND,
            format!("{reference} cannot be restored: {message}"),
        );
    }
    add_bytes(status, bytes);
    Ok(false)
}

fn add_bytes(status: &mut ImageRestoreStatus, bytes: u64) {
    if bytes > 0 {
        let progress = status.progress.get_or_insert_with(Default::default);
        progress.bytes += i64::try_from(bytes).unwrap_or(i64::MAX);
    }
}

enum BackupOutcome {
    /// Restored or failed (the image's state says which); bytes copied.
    Done(u64),
    /// No backup holds it: why.
    NotThere(String),
}

async fn from_backup(
    facts: &Facts<'_>,
    transfer: &Transfer,
    candidates: &[BackupCandidate],
    image: &mut RestoredImage,
) -> BackupOutcome {
    let Ok(reference) = facts.reference(image) else {
        return BackupOutcome::NotThere("invalid reference".to_owned());
    };
    if reference.digest.is_none() {
        return BackupOutcome::NotThere(
            "no digest is known, so no backup can be matched exactly".to_owned(),
        );
    }
    if candidates.is_empty() {
        return BackupOutcome::NotThere("no backup policy with targets to look in".to_owned());
    }
    let mut looked = Vec::new();
    for (target, backup) in backup_references(&reference, candidates, &facts.namespace) {
        let Some(pinned) = backup.pinned() else {
            continue;
        };
        let held = transfer.manifest_digest(&pinned).await;
        match held {
            Ok(Some(_)) => {}
            Ok(None) => {
                looked.push(format!("not in backup target {target}"));
                continue;
            }
            Err(e) => {
                looked.push(format!("backup target {target} could not be asked: {e}"));
                continue;
            }
        }
        image.source = Some(ImageSourceRef {
            kind: RestoreSourceKind::BackupRegistry,
            name: target.clone(),
        });
        let destination = match facts.destination(&reference) {
            Ok(d) => d,
            Err(message) => {
                fail(image, reasons::INVALID_REPOSITORY_TEMPLATE, message);
                return BackupOutcome::Done(0);
            }
        };
        return match copy_back(transfer, &pinned, &destination).await {
            Ok((copied, referrers)) => {
                image.referrers = Some(i32::try_from(referrers).unwrap_or(i32::MAX));
                let digest = reference
                    .digest
                    .as_ref()
                    .map(|d| d.as_str().to_owned())
                    .unwrap_or_default();
                verify_into(facts, transfer, image, &digest, true).await;
                BackupOutcome::Done(copied)
            }
            Err(e) => {
                fail(
                    image,
                    reasons::PUSH_FAILED,
                    format!("copy from backup target {target} to {destination} failed: {e}"),
                );
                BackupOutcome::Done(0)
            }
        };
    }
    BackupOutcome::NotThere(looked.join(", "))
}

/// Copies a backup back: digest-exact, under the original tag when that
/// tag is free or already right, else under Lifeboat's deterministic tag
/// (a tag someone moved since is left alone). Every signature, SBOM and
/// attestation the backup holds for it comes along (the policy chose
/// which at backup time). Returns the bytes and referrers copied.
async fn copy_back(
    transfer: &Transfer,
    backup: &ImageReference,
    destination: &ImageReference,
) -> Result<(u64, usize), TransferError> {
    let source = backup;
    let target = RepositoryRef::of(destination);
    let digest_tag = source
        .digest
        .as_ref()
        .map(deterministic_tag)
        .unwrap_or_default();
    let tag = destination.tag.clone().unwrap_or(digest_tag.clone());
    let request = CopyRequest::new(target.clone())
        .with_tag(tag)
        .with_referrers(ReferrersPolicy::All);
    match transfer.copy_image(source, &request).await {
        Ok(report) => Ok((report.bytes_copied, report.referrers.len())),
        Err(TransferError::TagConflict { .. }) => {
            let request = CopyRequest::new(target)
                .with_tag(digest_tag)
                .with_referrers(ReferrersPolicy::All);
            let report = transfer.copy_image(source, &request).await?;
            Ok((report.bytes_copied, report.referrers.len()))
        }
        Err(e) => Err(e),
    }
}

/// Node exports: ask the usable nodes which images they hold (inventory
/// Jobs, answers cached), choose one node per image, and mark the images
/// InProgress under their node's export Job. `None` while inventories run;
/// otherwise the images no node holds, with why.
async fn from_nodes(
    controller: &RestoreController,
    facts: &Facts<'_>,
    status: &mut ImageRestoreStatus,
    indices: &[usize],
) -> Result<Option<Vec<(usize, String)>>, OperatorError> {
    let client = controller.context.client.clone();
    let nodes: Api<Node> = Api::all(client);
    let source = facts.restore.spec.effective_source();
    let node_cache = source.node_cache.unwrap_or_default();
    let selector = node_cache.node_selector.unwrap_or_default();
    let mut tolerations = controller.settings.tolerations.clone();
    tolerations.extend(node_cache.tolerations.unwrap_or_default());
    let allow_control_plane = controller.context.config.allow_control_plane_nodes;
    let uses: BTreeMap<String, NodeUse> = nodes
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(NodeFacts::from_node)
        .map(|n| {
            let usable = if !allow_control_plane && tenancy::is_control_plane(&n.labels) {
                NodeUse::Excluded("a control-plane node (the admin allows none)".to_owned())
            } else {
                classify_node(&n, &selector, &tolerations)
            };
            (n.name.clone(), usable)
        })
        .collect();

    let arguments: BTreeMap<usize, String> = indices
        .iter()
        .filter_map(|i| {
            facts
                .reference(&status.images[*i])
                .ok()
                .map(|r| (*i, image_argument(&r)))
        })
        .collect();
    let asked: Vec<String> = arguments.values().cloned().collect();
    let known = controller.known_holdings(INVENTORY_TTL);
    let needed = inventory_needed(&asked, &uses, &known);
    let mut waiting = false;
    for (node, images) in &needed {
        if !inventory(controller, facts, node, images).await? {
            waiting = true;
        }
    }
    if waiting {
        return Ok(None);
    }
    let known = controller.known_holdings(INVENTORY_TTL);
    let choices = choose_nodes(&asked, &uses, &known);

    let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut not_found = Vec::new();
    for (index, argument) in &arguments {
        match choices.get(argument) {
            Some(NodeChoice::Node { node, exportable }) => {
                debug!(image = %argument, %node, ?exportable, "export planned");
                by_node.entry(node.clone()).or_default().push(*index);
            }
            Some(NodeChoice::NotFound(message)) => not_found.push((*index, message.clone())),
            None => not_found.push((*index, "no node was asked".to_owned())),
        }
    }
    for (node, indices) in by_node {
        let arguments: Vec<String> = indices
            .iter()
            .filter_map(|i| facts.export_argument(&status.images[*i]).ok())
            .map(|argument| argument.to_string())
            .collect();
        let job_name = object_names::export_job_name(&facts.name, &facts.uid, &node, &arguments);
        for index in indices {
            let image = &mut status.images[index];
            image.state = ImageRestoreState::InProgress;
            image.job_name = Some(job_name.clone());
            image.source = Some(ImageSourceRef {
                kind: RestoreSourceKind::NodeCache,
                name: node.clone(),
            });
            image.message = Some(format!("exporting from node {node} (Job {job_name})"));
        }
    }
    Ok(Some(not_found))
}

/// Runs (or reads) an inventory Job for one node; returns whether the
/// answer is in the cache.
async fn inventory(
    controller: &RestoreController,
    facts: &Facts<'_>,
    node: &str,
    images: &[String],
) -> Result<bool, OperatorError> {
    let namespace = &controller.context.config.namespace;
    let api: Api<Job> = Api::namespaced(controller.context.client.clone(), namespace);
    let name = object_names::inventory_job_name(node, images);
    let Some(job) = api.get_opt(&name).await? else {
        // The keys are `image_argument`s, printed from parsed references:
        // they parse back.
        let sources: Vec<ImageSource> = images
            .iter()
            .filter_map(|image| ImageSource::parse(image).ok())
            .collect();
        let job = inventory_job(
            &controller.settings,
            &name,
            node,
            &sources,
            &facts.node_tolerations(),
        );
        match api.create(&PostParams::default(), &job).await {
            Ok(_) => info!(%node, job = %name, images = images.len(), "inventory Job created"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(false);
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(false);
    }
    let Some((succeeded, message)) = job_finished(&job) else {
        return Ok(false);
    };
    let finished_at = job
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref().or(s.start_time.as_ref()))
        .map(from_k8s_time);
    let stale = finished_at
        .is_none_or(|at| (Utc::now() - at).to_std().unwrap_or(Duration::ZERO) > INVENTORY_TTL);
    if !stale {
        let pods: Api<Pod> = Api::namespaced(controller.context.client.clone(), namespace);
        let found = termination_message(&pods, &name).await?;
        let holdings = match found
            .as_ref()
            .and_then(|(text, _)| match InventoryReport::read(text) {
                Ok(report) => Some(report),
                Err(error) => {
                    warn!(%node, job = %name, reason = error.reason(), %error, "inventory report rejected");
                    None
                }
            })
        {
            Some(report) => {
                if let Some(error) = &report.error {
                    warn!(%node, reason = %error.reason, message = %error.message, "inventory failed");
                }
                let mut held = inventory_holdings(&report, images);
                // Whatever the node did not answer about, it cannot give.
                for image in images {
                    held.entry(image.clone()).or_insert(Exportable::None);
                }
                held
            }
            None => {
                warn!(%node, job = %name, succeeded, %message, "inventory gave no answer");
                images
                    .iter()
                    .map(|i| (i.clone(), Exportable::None))
                    .collect()
            }
        };
        controller.remember(node, holdings);
    }
    delete_job(&api, &job).await;
    Ok(!stale)
}

// --- creating and deleting Jobs ----------------------------------------------------

async fn ensure_jobs(
    controller: &RestoreController,
    facts: &Facts<'_>,
    status: &ImageRestoreStatus,
    existing: &BTreeSet<String>,
    deadline: i64,
) -> Result<(), OperatorError> {
    let mut wanted: BTreeMap<String, (String, Vec<ExportImage>)> = BTreeMap::new();
    for image in status
        .images
        .iter()
        .filter(|i| i.state == ImageRestoreState::InProgress)
    {
        let (Some(job), Some(source)) = (&image.job_name, &image.source) else {
            continue;
        };
        if existing.contains(job) {
            continue;
        }
        let Ok(argument) = facts.export_argument(image) else {
            continue;
        };
        wanted
            .entry(job.clone())
            .or_insert_with(|| (source.name.clone(), Vec::new()))
            .1
            .push(argument);
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let namespace = &controller.context.config.namespace;
    let credentials = ensure_credentials(controller, facts).await?;
    let api: Api<Job> = Api::namespaced(controller.context.client.clone(), namespace);
    for (name, (node, images)) in wanted {
        let job = export_job(
            &controller.settings,
            &ExportJob {
                name: name.clone(),
                node: node.clone(),
                restore_namespace: facts.namespace.clone(),
                restore_name: facts.name.clone(),
                restore_uid: facts.uid.clone(),
                images,
                credentials_secret: credentials.clone(),
                tolerations: facts.node_tolerations(),
                plain_http: facts.plain_http(),
                active_deadline_seconds: deadline,
                owner: facts.owner(namespace),
            },
        );
        match api.create(&PostParams::default(), &job).await {
            Ok(_) => info!(restore = %facts.name, job = %name, %node, "export Job created"),
            // Created by an earlier reconcile: the name is deterministic.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(secret) = &credentials {
        owned_by_jobs(controller, facts, secret).await?;
    }
    Ok(())
}

/// Makes the credentials copy a dependent of the restore's Jobs that mount
/// it, so the garbage collector deletes it with the last of them (their
/// TTL) even if the operator is gone by then.
async fn owned_by_jobs(
    controller: &RestoreController,
    facts: &Facts<'_>,
    secret: &str,
) -> Result<(), OperatorError> {
    let namespace = &controller.context.config.namespace;
    let jobs: Api<Job> = Api::namespaced(controller.context.client.clone(), namespace);
    let jobs = jobs
        .list(&ListParams::default().labels(&format!("{LABEL_RESTORE_UID}={}", facts.uid)))
        .await?
        .items;
    if jobs.is_empty() {
        return Ok(());
    }
    let api: Api<Secret> = Api::namespaced(controller.context.client.clone(), namespace);
    let Some(existing) = api.get_opt(secret).await? else {
        return Ok(());
    };
    let mut owners = existing.metadata.owner_references.unwrap_or_default();
    owners.extend(facts.owner(namespace));
    for job in &jobs {
        if let Some(uid) = job.metadata.uid.clone() {
            owners.push(OwnerReference {
                api_version: "batch/v1".to_owned(),
                kind: "Job".to_owned(),
                name: job.name_any(),
                uid,
                ..OwnerReference::default()
            });
        }
    }
    owners.sort_by(|a, b| a.uid.cmp(&b.uid));
    owners.dedup_by(|a, b| a.uid == b.uid);
    let patch = serde_json::json!({
        "metadata": {"ownerReferences": owners, "resourceVersion": existing.metadata.resource_version}
    });
    api.patch(secret, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Copies the destination's push credentials into the operator's namespace
/// for the export Jobs to mount.
async fn ensure_credentials(
    controller: &RestoreController,
    facts: &Facts<'_>,
) -> Result<Option<String>, OperatorError> {
    let Some(secret_ref) = facts
        .restore
        .spec
        .destination
        .as_ref()
        .and_then(|d| d.secret_ref.as_ref())
    else {
        return Ok(None);
    };
    let client = &controller.context.client;
    let source: Api<Secret> = Api::namespaced(client.clone(), &facts.namespace);
    let not_found = || OperatorError::CredentialsNotFound {
        namespace: facts.namespace.clone(),
        name: secret_ref.name.clone(),
    };
    let secret = crate::registry_access::get_secret(&source, &facts.namespace, &secret_ref.name)
        .await?
        .ok_or_else(not_found)?;
    let data = secret
        .data
        .and_then(|mut d| d.remove(".dockerconfigjson"))
        .ok_or_else(|| OperatorError::CredentialsInvalid {
            namespace: facts.namespace.clone(),
            name: secret_ref.name.clone(),
            message: "it has no .dockerconfigjson key (use type kubernetes.io/dockerconfigjson)"
                .to_owned(),
        })?;
    let namespace = &controller.context.config.namespace;
    let name = object_names::credentials_secret_name(&facts.name, &facts.uid);
    let copy = jobs::credentials_secret(
        namespace,
        &name,
        &facts.uid,
        &facts.namespace,
        data.0,
        facts.owner(namespace),
    );
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.create(&PostParams::default(), &copy).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            api.replace(&name, &PostParams::default(), &copy).await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Some(name))
}

/// Deletes a Job the operator created, by name and uid.
async fn delete_job(api: &Api<Job>, job: &Job) {
    let name = job.name_any();
    match api
        .delete(&name, &crate::controllers::delete_exactly(job.uid()))
        .await
    {
        Ok(_) => {}
        // Gone, or a namesake (409: the uid precondition failed).
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => warn!(job = %name, error = %e, "could not delete Job"),
    }
}

async fn delete_jobs(controller: &RestoreController, uid: &str) {
    let api: Api<Job> = Api::namespaced(
        controller.context.client.clone(),
        &controller.context.config.namespace,
    );
    match api
        .list(&ListParams::default().labels(&format!("{LABEL_RESTORE_UID}={uid}")))
        .await
    {
        Ok(list) => {
            for job in list.items {
                let running = job_finished(&job).is_none();
                if running {
                    delete_job(&api, &job).await;
                }
            }
        }
        Err(e) => warn!(error = %e, "could not list export Jobs"),
    }
}

async fn delete_credentials(controller: &RestoreController, name: &str, uid: &str) {
    if uid.is_empty() {
        return;
    }
    let api: Api<Secret> = Api::namespaced(
        controller.context.client.clone(),
        &controller.context.config.namespace,
    );
    let secret = object_names::credentials_secret_name(name, uid);
    // By uid: the name is the restore's, and only the copy it made goes.
    let existing = match api.get_opt(&secret).await {
        Ok(Some(existing)) => existing,
        Ok(None) => return,
        Err(e) => {
            warn!(%secret, error = %e, "could not read restore credentials");
            return;
        }
    };
    match api
        .delete(&secret, &crate::controllers::delete_exactly(existing.uid()))
        .await
    {
        Ok(_) => debug!(%secret, "restore credentials deleted"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => warn!(%secret, error = %e, "could not delete restore credentials"),
    }
}

/// Everything a restore created in the operator's namespace.
async fn cleanup(
    controller: &RestoreController,
    name: &str,
    uid: &str,
) -> Result<(), OperatorError> {
    let api: Api<Job> = Api::namespaced(
        controller.context.client.clone(),
        &controller.context.config.namespace,
    );
    let list = api
        .list(&ListParams::default().labels(&format!("{LABEL_RESTORE_UID}={uid}")))
        .await?;
    for job in list.items {
        delete_job(&api, &job).await;
    }
    delete_credentials(controller, name, uid).await;
    Ok(())
}

async fn add_finalizer(
    api: &Api<ImageRestore>,
    restore: &ImageRestore,
) -> Result<(), OperatorError> {
    let mut finalizers = restore.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": restore.resource_version()}
    });
    api.patch(
        &restore.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

async fn remove_finalizer(
    api: &Api<ImageRestore>,
    restore: &ImageRestore,
) -> Result<(), OperatorError> {
    if !restore.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let finalizers: Vec<&String> = restore
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .collect();
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": restore.resource_version()}
    });
    match api
        .patch(
            &restore.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// How long an inventory answer is kept, as an `Instant` check.
pub fn fresh(at: Instant, ttl: Duration) -> bool {
    at.elapsed() < ttl
}

/// Cached answers, for the planner.
pub fn holdings_from(
    cache: &std::collections::HashMap<(String, String), (Exportable, Instant)>,
    ttl: Duration,
) -> Holdings {
    let mut holdings = Holdings::new();
    for ((node, image), (exportable, at)) in cache {
        if fresh(*at, ttl) {
            holdings
                .entry(node.clone())
                .or_default()
                .insert(image.clone(), *exportable);
        }
    }
    holdings
}
