//! The objects a restore owns outside its status: export Jobs (created
//! only after the status naming them is written), the copy of its push
//! credentials the Jobs mount, and the finalizer that cleans both up for
//! restores outside the operator's namespace.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use lifeboat_api::restore::ImageRestoreState;
use lifeboat_api::{ImageRestore, ImageRestoreStatus};
use lifeboat_node_protocol::ExportImage;
use tracing::{debug, info, warn};

use super::RestoreController;
use super::facts::{Facts, job_finished};
use super::jobs::{self, ExportJob, LABEL_RESTORE_UID, export_job};
use crate::controllers::object_names;
use crate::error::OperatorError;

/// Finalizer for restores outside the operator's namespace, whose Jobs
/// and Secrets an owner reference cannot clean up.
pub(crate) const FINALIZER: &str = "lifeboat.dev/cleanup";

// --- creating and deleting Jobs ----------------------------------------------------

pub(super) async fn ensure_jobs(
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
pub(super) async fn ensure_credentials(
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
pub(super) async fn delete_job(api: &Api<Job>, job: &Job) {
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

pub(super) async fn delete_jobs(controller: &RestoreController, uid: &str) {
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

pub(super) async fn delete_credentials(controller: &RestoreController, name: &str, uid: &str) {
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
pub(super) async fn cleanup(
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

/// Restores outside the operator's namespace get the cleanup finalizer
/// (before any Job or Secret exists).
pub(super) async fn ensure_finalizer(
    controller: &RestoreController,
    restore: &ImageRestore,
) -> Result<(), OperatorError> {
    let namespace = restore.namespace().unwrap_or_default();
    if namespace == controller.context.config.namespace
        || restore.finalizers().iter().any(|f| f == FINALIZER)
    {
        return Ok(());
    }
    let api: Api<ImageRestore> = Api::namespaced(controller.context.client.clone(), &namespace);
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

pub(super) async fn remove_finalizer(
    controller: &RestoreController,
    restore: &ImageRestore,
) -> Result<(), OperatorError> {
    if !restore.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let namespace = restore.namespace().unwrap_or_default();
    let api: Api<ImageRestore> = Api::namespaced(controller.context.client.clone(), &namespace);
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
