//! Restoring into nodes (`destination.nodes`), the IO around
//! `node_destination`'s decisions: find the nodes each image goes to (once,
//! at the first reconcile), choose each (node, image) import's source (a
//! backup target that answers with the digest, else a node that holds the
//! image: inventories as for node exports), follow the import Jobs'
//! reports, and, after the status naming them is written, create the Jobs:
//! an import on each destination node, and for node-to-node imports a serve
//! on the holder, both mounting one Secret of the restore (the backup's
//! credentials and CA bundles, the one-time token of the peer session).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use lifeboat_api::conditions::reasons;
use lifeboat_api::restore::{
    ImageRestoreState, MAX_STATUS_NODE_IMPORTS, NodeImport, RestoreSourceKind, RestoredImage,
};
use lifeboat_api::{ImageBackupPolicy, ImageReference, ImageRestoreStatus};
use lifeboat_node_protocol::reasons::{self as node_reasons, is_not_on_node};
use lifeboat_node_protocol::{Exportable, ImageSource, ImportImage};
use registry_transfer::Transfer;
use tracing::info;

use super::RestoreController;
use super::candidates::inventory_batch;
use super::facts::{Facts, JobState, job_state};
use super::node_destination::{
    ContainerPull, ImportSource, choose_import_source, destination_nodes, new_entries,
    retry_from_another_holder, roll_up, source_ref,
};
use super::node_evidence::{bound_container_statuses, digest_of, knowledge, scan_nodes};
use super::node_jobs::{
    ImportFrom, NodeJobMeta, import_arguments, import_job, serve_arguments, serve_job, serve_port,
};
use super::node_source::{inventory, node_uses};
use super::planning::{BackupCandidate, NodeFacts, backup_references, image_argument};
use super::status::{add_bytes, fail};
use super::stuck_pods::stuck_pods;
use crate::controllers::object_names;
use crate::error::OperatorError;

/// One reconcile's progress of a restore into nodes; returns whether it
/// waits for node inventories (look again soon).
pub(super) async fn advance(
    controller: &RestoreController,
    facts: &Facts<'_>,
    transfer: &Transfer,
    candidates: &[(BackupCandidate, ImageBackupPolicy)],
    status: &mut ImageRestoreStatus,
) -> Result<bool, OperatorError> {
    // Named nodes are fixed; a selector's nodes and the nodes of failing
    // pods are looked at again each reconcile while the restore runs (a
    // replica rescheduled elsewhere gets the image too).
    let fixed = facts
        .restore
        .spec
        .destination
        .as_ref()
        .and_then(|d| d.nodes.as_ref())
        .is_some_and(|n| n.names.is_some());
    if status.nodes.is_empty() || !fixed {
        find_destinations(controller, facts, status).await?;
    }
    follow(controller, facts, status).await?;
    let waiting = plan(controller, facts, transfer, candidates, status).await?;
    roll_up(&mut status.images, &mut status.nodes);
    let deletes = facts
        .restore
        .spec
        .destination
        .as_ref()
        .and_then(|d| d.nodes.as_ref())
        .is_some_and(|n| n.deletes_stuck_pods());
    if deletes {
        delete_stuck_pods(controller, facts, status).await?;
    }
    Ok(waiting)
}

/// Event reason on a pod's owner when its stuck pod is deleted.
const STUCK_POD_DELETED: &str = "StuckPodDeleted";

/// Deletes the owned pods stuck pulling an image that is now on their node
/// (`stuck_pods` decides which), with an Event on each one's owner.
async fn delete_stuck_pods(
    controller: &RestoreController,
    facts: &Facts<'_>,
    status: &ImageRestoreStatus,
) -> Result<(), OperatorError> {
    let imported: BTreeSet<(String, ImageReference)> = status
        .nodes
        .iter()
        .filter(|n| n.state == ImageRestoreState::Restored)
        .filter_map(|n| {
            let name = import_name(facts, &status.images, &n.reference)?;
            Some((n.node.clone(), name))
        })
        .collect();
    if imported.is_empty() {
        return Ok(());
    }
    let pods: Api<Pod> = Api::namespaced(controller.context.client.clone(), &facts.namespace);
    let list = pods.list(&ListParams::default()).await?.items;
    for pod in stuck_pods(&list, &imported) {
        match pods
            .delete(
                &pod.name,
                &crate::controllers::delete_exactly(Some(pod.uid.clone())),
            )
            .await
        {
            Ok(_) => {}
            // Gone already, or a namesake: nothing to tell.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
        info!(restore = %facts.name, pod = %pod.name, node = %pod.node, "stuck pod deleted");
        let owner = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(pod.owner.api_version.clone()),
            kind: Some(pod.owner.kind.clone()),
            name: Some(pod.owner.name.clone()),
            namespace: Some(facts.namespace.clone()),
            uid: Some(pod.owner.uid.clone()),
            ..Default::default()
        };
        crate::controllers::publish(
            &controller.recorder,
            &owner,
            kube::runtime::events::EventType::Normal,
            STUCK_POD_DELETED,
            "Restore",
            format!(
                "deleted pod {} (stuck pulling {} on node {}, never started): ImageRestore {} put the image on the node, so its replacement starts now instead of after the kubelet's back-off",
                pod.name, pod.image, pod.node, facts.name
            ),
        )
        .await;
    }
    Ok(())
}

/// The (node, image) entries, from `destination.nodes`: the named nodes,
/// the Ready nodes with the labels, or the nodes of this namespace's pods
/// that fail to pull the image. An image with none at first fails; later
/// looks add the new nodes and keep every entry found before.
async fn find_destinations(
    controller: &RestoreController,
    facts: &Facts<'_>,
    status: &mut ImageRestoreStatus,
) -> Result<(), OperatorError> {
    let Some(destination) = facts
        .restore
        .spec
        .destination
        .as_ref()
        .and_then(|d| d.nodes.as_ref())
    else {
        return Ok(());
    };
    let (nodes, _) = node_uses(controller, facts).await?;
    let pulls = if destination.wants_failing_pods() {
        failing_pulls(controller, &facts.namespace).await?
    } else {
        Vec::new()
    };
    let mut entries = std::mem::take(&mut status.nodes);
    for image in status.images.iter_mut().filter(|i| {
        i.state == ImageRestoreState::Pending || i.state == ImageRestoreState::InProgress
    }) {
        let first = image.state == ImageRestoreState::Pending;
        let reference = match facts.reference(image) {
            Ok(reference) => reference,
            Err(message) => {
                fail(image, reasons::INVALID_IMAGE_REFERENCE, message);
                continue;
            }
        };
        match destination_nodes(destination, &reference, &nodes, &pulls) {
            Ok(chosen) => {
                let added = new_entries(&entries, &image.reference, &chosen);
                if added.is_empty() && !first {
                    continue;
                }
                entries.extend(added);
                image.state = ImageRestoreState::InProgress;
                let names: Vec<&str> = entries
                    .iter()
                    .filter(|n| n.reference == image.reference)
                    .map(|n| n.node.as_str())
                    .collect();
                image.message = Some(format!("importing into {}", names.join(", ")));
            }
            // Later, a destination that is gone changes nothing: the
            // entries found before go on.
            Err(_) if !first => {}
            Err(message) => fail(image, reasons::NO_DESTINATION_NODES, message),
        }
    }
    entries.truncate(MAX_STATUS_NODE_IMPORTS);
    status.nodes = entries;
    Ok(())
}

/// The containers of the namespace's pods that wait on a pull.
async fn failing_pulls(
    controller: &RestoreController,
    namespace: &str,
) -> Result<Vec<ContainerPull>, OperatorError> {
    let statuses = bound_container_statuses(controller.context.client.clone(), namespace).await?;
    Ok(statuses
        .into_iter()
        .map(|(node, container)| ContainerPull {
            node,
            waiting_reason: container
                .state
                .and_then(|s| s.waiting)
                .and_then(|w| w.reason),
            image: container.image,
        })
        .collect())
}

/// The name an image is imported under (the reference pods use, pinned
/// to the requested digest): what node-exporter's report names it by.
fn import_name(
    facts: &Facts<'_>,
    images: &[RestoredImage],
    reference: &str,
) -> Option<ImageReference> {
    let image = images.iter().find(|i| i.reference == reference)?;
    facts.reference(image).ok()
}

/// Reads the finished import Jobs the entries name.
async fn follow(
    controller: &RestoreController,
    facts: &Facts<'_>,
    status: &mut ImageRestoreStatus,
) -> Result<(), OperatorError> {
    let names: BTreeSet<String> = status
        .nodes
        .iter()
        .filter(|n| n.state == ImageRestoreState::InProgress)
        .filter_map(|n| n.job_name.clone())
        .collect();
    let images = status.images.clone();
    let mut bytes = 0u64;
    for name in names {
        let job = match job_state(controller, &name).await? {
            JobState::Finished(job) => job,
            JobState::Running => {
                serve_gave_up(controller, facts, &name, &images, &mut status.nodes).await?;
                continue;
            }
            JobState::Missing => continue,
        };
        for entry in status
            .nodes
            .iter_mut()
            .filter(|n| n.job_name.as_deref() == Some(name.as_str()))
            .filter(|n| n.state == ImageRestoreState::InProgress)
        {
            let asked = import_name(facts, &images, &entry.reference).map(ImageSource::from);
            let result = job
                .report
                .as_ref()
                .zip(asked.as_ref())
                .and_then(|(report, asked)| report.result_for(asked));
            match result {
                Some(result) if result.status.is_done() => {
                    entry.state = ImageRestoreState::Restored;
                    entry.imported_digest = result.digest.as_ref().map(ToString::to_string);
                    entry.bytes = Some(i64::try_from(result.bytes).unwrap_or(i64::MAX));
                    entry.message = result.target.clone().map(|t| format!("recorded as {t}"));
                    bytes = bytes.saturating_add(result.bytes);
                }
                Some(result)
                    if retry_from_another_holder(
                        entry.source.as_ref(),
                        entry.serve_job_name.is_some(),
                        result.reason.as_deref(),
                    ) =>
                {
                    another_holder(controller, facts, &images, entry, result.reason.as_deref());
                }
                Some(result) => {
                    entry.state = ImageRestoreState::Failed;
                    entry.reason = Some(reasons::NODE_IMPORT_FAILED.to_owned());
                    entry.message = Some(format!(
                        "{}: {}",
                        result.reason.as_deref().unwrap_or("Failed"),
                        result.message.as_deref().unwrap_or("")
                    ));
                }
                None => {
                    let detail = job
                        .report
                        .as_ref()
                        .and_then(|r| r.error.as_ref())
                        .map(|e| format!("{}: {}", e.reason, e.message))
                        .or_else(|| job.rejected.as_ref().map(ToString::to_string))
                        .unwrap_or(job.message.clone());
                    entry.state = ImageRestoreState::Failed;
                    entry.reason = Some(reasons::NODE_IMPORT_FAILED.to_owned());
                    entry.message = Some(format!("import Job {} failed: {detail}", job.name));
                }
            }
        }
    }
    add_bytes(status, bytes);
    Ok(())
}

/// Node to node, while the import still waits for its peer: a serve Job
/// that ended because its node does not hold the image (it never listens)
/// sends its entries back to Pending for another holder at once, and the
/// waiting import Job is deleted (it would wait out its patience).
async fn serve_gave_up(
    controller: &RestoreController,
    facts: &Facts<'_>,
    import_job: &str,
    images: &[RestoredImage],
    nodes: &mut [NodeImport],
) -> Result<(), OperatorError> {
    let serves: BTreeSet<String> = nodes
        .iter()
        .filter(|n| n.job_name.as_deref() == Some(import_job))
        .filter(|n| n.state == ImageRestoreState::InProgress)
        .filter_map(|n| n.serve_job_name.clone())
        .collect();
    for serve in serves {
        let JobState::Finished(finished) = job_state(controller, &serve).await? else {
            continue;
        };
        let reason = finished.report.as_ref().and_then(|r| {
            r.error
                .as_ref()
                .map(|e| e.reason.clone())
                .or_else(|| r.results.iter().find_map(|i| i.reason.clone()))
        });
        if finished.succeeded || !reason.as_deref().is_some_and(is_not_on_node) {
            continue;
        }
        for entry in nodes
            .iter_mut()
            .filter(|n| n.serve_job_name.as_deref() == Some(serve.as_str()))
        {
            another_holder(controller, facts, images, entry, reason.as_deref());
        }
        let jobs: Api<Job> = Api::namespaced(
            controller.context.client.clone(),
            &controller.context.config.namespace,
        );
        if let Some(job) = jobs.get_opt(import_job).await? {
            super::objects::delete_job(&jobs, &job).await;
        }
    }
    Ok(())
}

/// An import whose peer could not give the image goes back to Pending;
/// the holder stays in the restore's tried nodes, so another is chosen.
/// When the peer holds it only with its compressed layers discarded, that
/// is remembered as the node's answer (`Exportable::Rebuild`): no import
/// takes it from there, and a "not found" says why.
fn another_holder(
    controller: &RestoreController,
    facts: &Facts<'_>,
    images: &[RestoredImage],
    entry: &mut NodeImport,
    reason: Option<&str>,
) {
    let holder = entry
        .source
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let only_rebuildable = reason.is_some_and(|r| {
        r == node_reasons::LAYER_UNRECOVERABLE || r == node_reasons::REBUILD_DENIED
    });
    if only_rebuildable
        && !holder.is_empty()
        && let Some(name) = import_name(facts, images, &entry.reference)
    {
        controller.remember(
            &holder,
            BTreeMap::from([(image_argument(&name), Exportable::Rebuild)]),
        );
    }
    entry.state = ImageRestoreState::Pending;
    entry.job_name = None;
    entry.serve_job_name = None;
    entry.source = None;
    entry.message = Some(format!(
        "node {holder} could not give it ({}); choosing another holder",
        reason.unwrap_or("Failed")
    ));
}

/// A backup target that holds the image's digest and answers, or why none.
async fn backup_holding(
    facts: &Facts<'_>,
    transfer: &Transfer,
    candidates: &[BackupCandidate],
    image: &ImageReference,
) -> Result<(String, ImageReference), String> {
    if !facts
        .restore
        .spec
        .effective_source()
        .kinds()
        .contains(&RestoreSourceKind::BackupRegistry)
    {
        return Err("source.type excludes backups".to_owned());
    }
    if image.digest.is_none() {
        return Err("no digest is known, so no backup can be matched".to_owned());
    }
    let mut looked = Vec::new();
    for (target, backup) in backup_references(image, candidates, &facts.namespace) {
        let Some(pinned) = backup.pinned() else {
            continue;
        };
        match transfer.manifest_digest(&pinned).await {
            Ok(Some(_)) => return Ok((target, pinned)),
            Ok(None) => looked.push(format!("not in backup target {target}")),
            Err(e) => looked.push(format!("backup target {target} could not be asked: {e}")),
        }
    }
    if looked.is_empty() {
        looked.push("no backup target to look in".to_owned());
    }
    Err(looked.join(", "))
}

/// Chooses the source of every pending entry and names its Jobs; returns
/// whether node inventories are still running.
async fn plan(
    controller: &RestoreController,
    facts: &Facts<'_>,
    transfer: &Transfer,
    candidates: &[(BackupCandidate, ImageBackupPolicy)],
    status: &mut ImageRestoreStatus,
) -> Result<bool, OperatorError> {
    let pending: BTreeSet<String> = status
        .nodes
        .iter()
        .filter(|n| n.state == ImageRestoreState::Pending)
        .map(|n| n.reference.clone())
        .collect();
    if pending.is_empty() {
        return Ok(false);
    }
    let only: Vec<BackupCandidate> = candidates.iter().map(|(c, _)| c.clone()).collect();
    let mut backups = BTreeMap::new();
    let mut arguments = BTreeMap::new();
    for reference in &pending {
        let Some(name) = import_name(facts, &status.images, reference) else {
            continue;
        };
        backups.insert(
            reference.clone(),
            backup_holding(facts, transfer, &only, &name).await,
        );
        arguments.insert(reference.clone(), image_argument(&name));
    }
    // Nodes are looked for only for images no backup can give.
    let from_nodes = facts
        .restore
        .spec
        .effective_source()
        .kinds()
        .contains(&RestoreSourceKind::NodeCache);
    let digests: BTreeSet<&str> = arguments.values().filter_map(|a| digest_of(a)).collect();
    let scan = scan_nodes(controller, facts, &digests).await?;
    let uses = if from_nodes {
        scan.uses.clone()
    } else {
        BTreeMap::new()
    };
    let all: Vec<String> = arguments.values().cloned().collect();
    // Pods and policies are read only for images no backup gives.
    let without_backup: Vec<String> = if from_nodes {
        backups
            .iter()
            .filter(|(_, b)| b.is_err())
            .filter_map(|(r, _)| arguments.get(r).cloned())
            .collect()
    } else {
        Vec::new()
    };
    let known = knowledge(controller, facts, status, (&all, &without_backup), &scan).await?;
    let status_images = status.images.clone();
    let mut asks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in status
        .nodes
        .iter_mut()
        .filter(|n| n.state == ImageRestoreState::Pending)
    {
        let (Some(backup), Some(argument)) = (
            backups.get(&entry.reference),
            arguments.get(&entry.reference),
        ) else {
            entry.state = ImageRestoreState::Failed;
            entry.reason = Some(reasons::INVALID_IMAGE_REFERENCE.to_owned());
            continue;
        };
        let why = backup.as_ref().err().cloned().unwrap_or_default();
        let source = choose_import_source(
            &entry.node,
            argument,
            backup.as_ref().ok(),
            &uses,
            &known,
            &why,
        );
        if let ImportSource::Asking(nodes) = &source {
            asks.insert(argument.clone(), nodes.clone());
            continue;
        }
        if let ImportSource::Peer { holder } = &source {
            controller.record_try(&facts.uid, argument, holder);
        }
        let requested = status_images
            .iter()
            .find(|i| i.reference == entry.reference)
            .and_then(|i| i.requested_digest.clone());
        assign(facts, entry, &source, requested);
    }
    let mut waiting = false;
    for (node, images) in inventory_batch(&asks) {
        if !inventory(controller, facts, &node, &images).await? {
            waiting = true;
        }
    }
    // Answers read just now place their entries at the next look.
    Ok(waiting || !asks.is_empty())
}

/// Records a decided source on its entry, with the Jobs that carry it out.
fn assign(
    facts: &Facts<'_>,
    entry: &mut NodeImport,
    source: &ImportSource,
    requested_digest: Option<String>,
) {
    entry.source = source_ref(source, &entry.node);
    let import = |parts: &[&str]| {
        object_names::node_job_name("import", &facts.name, &facts.uid, &entry.node, parts)
    };
    match source {
        ImportSource::Backup { target, .. } => {
            entry.job_name = Some(import(&["backup", target]));
            entry.state = ImageRestoreState::InProgress;
            entry.message = Some(format!("importing from backup target {target}"));
        }
        ImportSource::Peer { holder } => {
            entry.job_name = Some(import(&["peer", holder]));
            entry.serve_job_name = Some(object_names::node_job_name(
                "serve",
                &facts.name,
                &facts.uid,
                holder,
                &[&entry.node],
            ));
            entry.state = ImageRestoreState::InProgress;
            entry.message = Some(format!("importing from node {holder}"));
        }
        ImportSource::AlreadyThere => {
            entry.state = ImageRestoreState::Restored;
            entry.imported_digest = requested_digest;
            entry.bytes = Some(0);
            entry.message = Some("the node holds it already".to_owned());
        }
        ImportSource::Asking(_) => {}
        ImportSource::NotFound(why) => {
            entry.state = ImageRestoreState::Failed;
            entry.reason = Some(reasons::IMAGE_NOT_FOUND.to_owned());
            entry.message = Some(why.clone());
        }
    }
}

// --- after the status write: the Jobs ------------------------------------------------

/// One import Job to create, from the entries that name it.
struct ImportPlan {
    node: String,
    images: Vec<ImportImage>,
    /// Node to node: the holder and its serve Job, with the images it serves.
    peer: Option<(String, String, Vec<ImageSource>)>,
}

/// Creates the Jobs the written status names and that do not exist yet;
/// returns whether an import waits for its serve's address (look again
/// in a second).
pub(super) async fn ensure_jobs(
    controller: &RestoreController,
    facts: &Facts<'_>,
    status: &ImageRestoreStatus,
    candidates: &[(BackupCandidate, ImageBackupPolicy)],
    deadline: i64,
) -> Result<bool, OperatorError> {
    let plans = import_plans(facts, status, candidates);
    if plans.is_empty() {
        return Ok(false);
    }
    let namespace = &controller.context.config.namespace;
    let jobs: Api<Job> = Api::namespaced(controller.context.client.clone(), namespace);
    let mut missing = BTreeMap::new();
    for (name, plan) in plans {
        if jobs.get_opt(&name).await?.is_none() {
            missing.insert(name, plan);
        }
    }
    if missing.is_empty() {
        return Ok(false);
    }
    let used: BTreeSet<String> = status
        .nodes
        .iter()
        .filter_map(|n| n.source.as_ref())
        .filter(|s| s.kind == RestoreSourceKind::BackupRegistry)
        .map(|s| s.name.clone())
        .collect();
    let (secret, from_registry) =
        super::node_secret::ensure(controller, facts, candidates, &used).await?;
    let meta = |name: &str, node: &str| NodeJobMeta {
        name: name.to_owned(),
        node: node.to_owned(),
        restore_namespace: facts.namespace.clone(),
        restore_name: facts.name.clone(),
        restore_uid: facts.uid.clone(),
        tolerations: facts.node_tolerations(),
        active_deadline_seconds: deadline,
        owner: facts.owner(namespace),
    };
    let settings = &controller.settings;
    let nodes: Api<Node> = Api::all(controller.context.client.clone());
    let mut waiting = false;
    for (name, plan) in missing {
        let from = match &plan.peer {
            None => from_registry.clone(),
            Some((holder, serve_name, held)) => {
                let port = serve_port(serve_name);
                let serve = serve_job(
                    settings,
                    &meta(serve_name, holder),
                    &serve_arguments(held.clone(), port),
                    &secret,
                );
                create(&jobs, &serve).await?;
                // One node, by a field selector: the operator may list
                // nodes, not get them.
                let address = if settings.host_network {
                    let one = ListParams::default().fields(&format!("metadata.name={holder}"));
                    nodes
                        .list(&one)
                        .await?
                        .items
                        .first()
                        .and_then(|n| NodeFacts::from_node(n).internal_ip)
                } else {
                    serve_pod_ip(controller, serve_name).await?
                };
                let Some(address) = address else {
                    waiting = true;
                    continue;
                };
                ImportFrom::Peer(format!("{}:{port}", bracketed(&address)))
            }
        };
        let arguments = import_arguments(settings, plan.images, &from);
        let job = import_job(
            settings,
            &meta(&name, &plan.node),
            &arguments,
            Some(&secret),
        );
        create(&jobs, &job).await?;
        info!(restore = %facts.name, job = %name, node = %plan.node, "import Job created");
    }
    Ok(waiting)
}

/// The import Jobs the status names, each with its images and peer.
fn import_plans(
    facts: &Facts<'_>,
    status: &ImageRestoreStatus,
    candidates: &[(BackupCandidate, ImageBackupPolicy)],
) -> BTreeMap<String, ImportPlan> {
    let only: Vec<BackupCandidate> = candidates.iter().map(|(c, _)| c.clone()).collect();
    let mut plans: BTreeMap<String, ImportPlan> = BTreeMap::new();
    for entry in status
        .nodes
        .iter()
        .filter(|n| n.state == ImageRestoreState::InProgress)
    {
        let (Some(job), Some(source), Some(name)) = (
            &entry.job_name,
            &entry.source,
            import_name(facts, &status.images, &entry.reference),
        ) else {
            continue;
        };
        let from = match source.kind {
            RestoreSourceKind::BackupRegistry => backup_references(&name, &only, &facts.namespace)
                .into_iter()
                .find(|(target, _)| target == &source.name)
                .and_then(|(_, backup)| backup.pinned()),
            RestoreSourceKind::NodeCache => None,
        };
        if source.kind == RestoreSourceKind::BackupRegistry && from.is_none() {
            continue;
        }
        let plan = plans.entry(job.clone()).or_insert_with(|| ImportPlan {
            node: entry.node.clone(),
            images: Vec::new(),
            peer: entry
                .serve_job_name
                .as_ref()
                .map(|serve| (source.name.clone(), serve.clone(), Vec::new())),
        });
        if let Some((_, _, held)) = plan.peer.as_mut() {
            held.push(ImageSource::from(name.clone()));
        }
        plan.images.push(ImportImage { name, from });
    }
    plans
}

/// An IPv6 address in `HOST:PORT` needs brackets.
fn bracketed(address: &str) -> String {
    if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_owned()
    }
}

async fn serve_pod_ip(
    controller: &RestoreController,
    serve_job: &str,
) -> Result<Option<String>, OperatorError> {
    let pods: Api<Pod> = Api::namespaced(
        controller.context.client.clone(),
        &controller.context.config.namespace,
    );
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={serve_job}")))
        .await?;
    Ok(list
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .next())
}

async fn create(jobs: &Api<Job>, job: &Job) -> Result<(), OperatorError> {
    match jobs.create(&PostParams::default(), job).await {
        Ok(_) => Ok(()),
        // Created by an earlier reconcile: the name is deterministic.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
