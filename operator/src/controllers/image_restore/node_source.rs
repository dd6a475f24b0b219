//! Restoring from the nodes: ask the usable nodes which images their
//! containerd holds (inventory Jobs, answers cached), choose one node per
//! image, and follow the export Jobs the status names until each image is
//! verified at its destination, retried on another holder, or failed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use lifeboat_api::ImageRestoreStatus;
use lifeboat_api::conditions::reasons;
use lifeboat_api::restore::{ImageRestoreState, ImageSourceRef, RestoreSourceKind, RestoredImage};
use lifeboat_api::time::from_k8s_time;
use lifeboat_node_protocol::{ImageSource, InventoryReport, reasons as node_reasons};
use registry_transfer::Transfer;
use tracing::{debug, info, warn};

use super::RestoreController;
use super::backup_source::referrers_from_backup;
use super::candidates::{NextStep, inventory_batch, next_step};
use super::facts::{Facts, FinishedJob, JobState, job_finished, job_state, termination_message};
use super::jobs::{self, inventory_holdings, inventory_job};
use super::node_evidence::{digest_of, knowledge, scan_nodes};
use super::objects::delete_job;
use super::planning::{
    self, BackupCandidate, Exportable, Holdings, NodeFacts, NodeUse, image_argument,
};
use super::status::fail;
use super::verify::verify_into;
use crate::controllers::object_names;
use crate::error::OperatorError;

/// How long a node's answer about an image is trusted.
pub(crate) const INVENTORY_TTL: Duration = Duration::from_secs(60);

/// Reads the export Jobs the status names and moves their images on:
/// verified at the destination (Restored, then given the referrers a
/// backup target holds for it), back to Pending for another
/// holder when the node lost the image (`candidates` bounds how many), or
/// Failed with the report's reason. Returns the Jobs that exist, so only
/// the others are created. A Job that vanished is left out: it is
/// created again under the same name.
pub(super) async fn follow_jobs(
    controller: &RestoreController,
    facts: &Facts<'_>,
    transfer: &Transfer,
    candidates: &[BackupCandidate],
    status: &mut ImageRestoreStatus,
) -> Result<BTreeSet<String>, OperatorError> {
    let mut existing = BTreeSet::new();
    let names: BTreeSet<String> = status
        .images
        .iter()
        .filter(|i| i.state == ImageRestoreState::InProgress)
        .filter_map(|i| i.job_name.clone())
        .collect();
    let mut bytes = 0u64;
    for job_name in names {
        let job = match job_state(controller, &job_name).await? {
            JobState::Missing => continue,
            JobState::Running => {
                existing.insert(job_name);
                continue;
            }
            JobState::Finished(job) => job,
        };
        existing.insert(job_name);
        for image in status
            .images
            .iter_mut()
            .filter(|i| i.job_name.as_deref() == Some(job.name.as_str()))
            .filter(|i| i.state == ImageRestoreState::InProgress)
        {
            let copied = settle_image(controller, facts, transfer, &job, image).await;
            bytes = bytes.saturating_add(copied);
            referrers_from_backup(facts, transfer, candidates, image).await;
        }
    }
    super::status::add_bytes(status, bytes);
    Ok(existing)
}

/// Moves one image of a finished export Job on, by what the Job's report
/// says about it; returns the bytes node-exporter pushed for it.
async fn settle_image(
    controller: &RestoreController,
    facts: &Facts<'_>,
    transfer: &Transfer,
    job: &FinishedJob,
    image: &mut RestoredImage,
) -> u64 {
    if let Some(error) = &job.rejected {
        fail(
            image,
            reasons::UNSUPPORTED_NODE_REPORT_VERSION,
            format!("export Job {}: {error}", job.name),
        );
        return 0;
    }
    let asked = facts.export_argument(image).ok().map(|a| a.source);
    let result = job
        .report
        .as_ref()
        .zip(asked.as_ref())
        .and_then(|(report, asked)| report.result_for(asked));
    match result {
        Some(result) if result.status.is_pushed() => {
            let digest = result
                .digest
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let whole = result.incomplete_index.is_none();
            verify_into(facts, transfer, image, &digest, whole).await;
            return result.bytes;
        }
        Some(result) if planning::node_lost_image(result.reason.as_deref()) => {
            another_holder(controller, facts, image, result.reason.as_deref());
        }
        Some(result) => {
            let reason = match result.reason.as_deref() {
                Some(node_reasons::PUSH_FAILED) => reasons::PUSH_FAILED,
                _ => reasons::NODE_EXPORT_FAILED,
            };
            let message = format!(
                "export from node {} failed: {}: {}",
                image.source.as_ref().map_or("?", |s| s.name.as_str()),
                result.reason.as_deref().unwrap_or("Failed"),
                result.message.as_deref().unwrap_or("")
            );
            fail(image, reason, message);
        }
        None if job.succeeded => {
            // Not in the (shortened) report: the registry says.
            let digest = image.requested_digest.clone().unwrap_or_default();
            verify_into(facts, transfer, image, &digest, true).await;
        }
        None => {
            let detail = job
                .report
                .as_ref()
                .and_then(|r| r.error.as_ref())
                .map(|e| format!("{}: {}", e.reason, e.message))
                .unwrap_or(job.message.clone());
            fail(
                image,
                reasons::NODE_EXPORT_FAILED,
                format!("export Job {} failed: {detail}", job.name),
            );
        }
    }
    0
}

/// The node no longer holds the image (GC, a stale answer): it is not
/// asked again for a while, and the image goes back to Pending for
/// another holder.
fn another_holder(
    controller: &RestoreController,
    facts: &Facts<'_>,
    image: &mut RestoredImage,
    reason: Option<&str>,
) {
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
        reason.unwrap_or("Failed")
    ));
}

/// What a node round decided for the pending images.
pub(super) struct NodeRound {
    /// Images no usable node holds, with why.
    pub(super) not_found: Vec<(usize, String)>,
    /// Whether some images wait for inventory answers (they stay Pending).
    pub(super) waiting: bool,
}

/// Node exports, one round of Jobs: each image goes to its best candidate
/// (`candidates`: a node whose `status.images` lists it, a fresh answer, a
/// pod running it), whose export Job exports it or reports that the node
/// does not hold it; only images nothing points at wait for a bounded
/// batch of inventory Jobs. Marks the images it places InProgress under
/// their node's export Job.
pub(super) async fn from_nodes(
    controller: &RestoreController,
    facts: &Facts<'_>,
    status: &mut ImageRestoreStatus,
    indices: &[usize],
) -> Result<NodeRound, OperatorError> {
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
    let digests: BTreeSet<&str> = asked.iter().filter_map(|a| digest_of(a)).collect();
    let scan = scan_nodes(controller, facts, &digests).await?;
    let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut not_found = Vec::new();
    let mut open = arguments.clone();
    let mut waiting = false;
    // Each pass places what the evidence allows and asks one batch of
    // nodes about the rest; answers already in (a finished inventory Job)
    // let the next pass go on at once.
    while !open.is_empty() {
        let known = knowledge(controller, facts, status, (&asked, &asked), &scan).await?;
        let mut asks: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (index, argument) in std::mem::take(&mut open) {
            match next_step(&argument, &scan.uses, &known) {
                NextStep::Try { node, evidence } => {
                    debug!(image = %argument, %node, ?evidence, "export planned");
                    controller.record_try(&facts.uid, &argument, &node);
                    by_node.entry(node).or_default().push(index);
                }
                NextStep::Ask(nodes) => {
                    asks.insert(argument.clone(), nodes);
                    open.insert(index, argument);
                }
                NextStep::NotFound(message) => not_found.push((index, message)),
            }
        }
        for (node, images) in inventory_batch(&asks) {
            if !inventory(controller, facts, &node, &images).await? {
                waiting = true;
            }
        }
        if waiting {
            break;
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
    Ok(NodeRound { not_found, waiting })
}

/// The cluster's nodes, and whether each may be used for this restore's
/// Jobs (its node selector and tolerations, the admin's control-plane
/// rule).
pub(super) async fn node_uses(
    controller: &RestoreController,
    facts: &Facts<'_>,
) -> Result<(Vec<NodeFacts>, BTreeMap<String, NodeUse>), OperatorError> {
    let scan = scan_nodes(controller, facts, &BTreeSet::new()).await?;
    Ok((scan.nodes, scan.uses))
}

/// Runs (or reads) an inventory Job for one node; returns whether the
/// answer is in the cache.
pub(super) async fn inventory(
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
        let mut job = inventory_job(
            &controller.settings,
            &name,
            node,
            &sources,
            &facts.node_tolerations(),
        );
        // Its end wakes the restore that asked (others sharing the answer
        // look again on their own).
        job.metadata.annotations = Some(
            [(
                jobs::ANNOTATION_RESTORE.to_owned(),
                format!("{}/{}", facts.namespace, facts.name),
            )]
            .into(),
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

/// How long an inventory answer is kept, as an `Instant` check.
pub(crate) fn fresh(at: Instant, ttl: Duration) -> bool {
    at.elapsed() < ttl
}

/// Cached answers, for the planner.
pub(crate) fn holdings_from(
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
