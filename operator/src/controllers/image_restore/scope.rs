//! The tenant rules for a restore, checked once, before any Job exists and
//! before any node is asked: the facts are gathered here (the namespace's
//! pods, its policies' `missingImages` and `unreachableImages`, its backup
//! targets), the decisions
//! are `crate::tenancy`'s.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use lifeboat_api::restore::RestoreSourceKind;
use lifeboat_api::{ImageBackupPolicy, ImageReference, ImageRestoreSpec};
use registry_transfer::Transfer;

use super::RestoreController;
use super::planning::{BackupCandidate, backup_references};
use crate::error::OperatorError;
use crate::tenancy::{self, NamespaceImages, Refusal};

/// What a restore outside the operator's namespace asks for, against what
/// its namespace may have. `Ok(Err(refusal))` refuses the whole restore.
pub(super) struct Request<'a> {
    pub namespace: &'a str,
    pub spec: &'a ImageRestoreSpec,
    /// The images to restore, with the digests they are known by.
    pub images: Vec<ImageReference>,
    /// `spec.destination.registry`'s host, when the restore overrides it.
    pub destination_host: Option<&'a str>,
}

pub(super) async fn check(
    controller: &RestoreController,
    request: &Request<'_>,
    transfer: &Transfer,
    candidates: &[(BackupCandidate, ImageBackupPolicy)],
) -> Result<Result<(), Refusal>, OperatorError> {
    let config = &controller.context.config;
    let operator_namespace = request.namespace == config.namespace;
    if operator_namespace {
        return Ok(Ok(()));
    }
    let source = request.spec.effective_source();
    if source.kinds().contains(&RestoreSourceKind::NodeCache) {
        let node_cache = source.node_cache.clone().unwrap_or_default();
        if let Err(refusal) = tenancy::node_access(
            operator_namespace,
            &node_cache.node_selector.unwrap_or_default(),
            &node_cache.tolerations.unwrap_or_default(),
            &config.tenant_node_access,
        ) {
            return Ok(Err(refusal));
        }
    }
    if let Some(nodes) = request
        .spec
        .destination
        .as_ref()
        .and_then(|d| d.nodes.as_ref())
        && let Err(refusal) = tenancy::node_access(
            operator_namespace,
            &tenancy::destination_selector(nodes),
            &[],
            &config.tenant_node_access,
        )
    {
        return Ok(Err(refusal));
    }
    let insecure = request
        .spec
        .destination
        .as_ref()
        .is_some_and(|d| d.is_insecure());
    if let (true, Some(host)) = (insecure, request.destination_host)
        && let Err(refusal) =
            tenancy::plain_http(operator_namespace, host, &config.plain_http_registries)
    {
        return Ok(Err(refusal));
    }
    let known = namespace_images(controller, request, transfer, candidates).await?;
    Ok(tenancy::restore_scope(
        operator_namespace,
        &request.images,
        &known,
    ))
}

/// What the namespace runs (its pods), ran (its policies' `missingImages`)
/// and has backed up (its policies' targets, asked only about digests the
/// first two do not cover).
async fn namespace_images(
    controller: &RestoreController,
    request: &Request<'_>,
    transfer: &Transfer,
    candidates: &[(BackupCandidate, ImageBackupPolicy)],
) -> Result<NamespaceImages, OperatorError> {
    let client = controller.context.client.clone();
    let mut known = NamespaceImages::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), request.namespace);
    for pod in pods.list(&ListParams::default()).await?.items {
        // Only what the kubelet reports as pulled (an imageID): a pod spec
        // is the tenant's to write, so naming another team's digest there
        // must not bring it into scope.
        let statuses = pod.status.iter().flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        });
        for status in statuses.filter(|s| !s.image_id.is_empty()) {
            known.record(&status.image, None);
            known.record_image_id(&status.image_id);
        }
    }
    let policies: Api<ImageBackupPolicy> = Api::namespaced(client, request.namespace);
    for policy in policies.list(&ListParams::default()).await?.items {
        for missing in policy.status.iter().flat_map(|s| &s.missing_images) {
            known.record(&missing.reference, missing.digest.as_deref());
        }
        // What its policies protect and find unreachable: the images a
        // restore into nodes is for (their pods never pulled them).
        for unreachable in policy.status.iter().flat_map(|s| &s.unreachable_images) {
            known.record(&unreachable.reference, unreachable.digest.as_deref());
        }
    }
    let only: Vec<BackupCandidate> = candidates.iter().map(|(c, _)| c.clone()).collect();
    for image in tenancy::unrecorded_digests(&request.images, &known) {
        for (_, backup) in backup_references(image, &only, request.namespace) {
            let Some(pinned) = backup.pinned() else {
                continue;
            };
            // A target that cannot be asked holds nothing as far as scope goes.
            if let Ok(Some(_)) = transfer.manifest_digest(&pinned).await
                && let Some(digest) = &image.digest
            {
                known.backed_up.insert(digest.as_str().to_owned());
                break;
            }
        }
    }
    Ok(known)
}
