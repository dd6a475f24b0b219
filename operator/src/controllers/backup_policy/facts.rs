//! Step 1 of a policy's reconcile: gather the facts. Everything the later
//! steps decide from is read here, once: the spec (validated), the images
//! the selected workloads run (from the watch caches), and the credentials
//! the policy's registries need (Secrets and ConfigMaps, read by name).
//! A fact that stops the policy comes back as a [`Problem`], not an error:
//! it is reported in the status, not retried blindly.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::ResourceExt as _;
use lifeboat_api::validation::{ValidPolicy, validate_policy_spec};
use lifeboat_api::{ImageBackupPolicy, ImageBackupPolicyStatus};
use registry_transfer::Transfer;
use tracing::debug;

use super::BackupController;
use super::decide;
use super::discovery::{ClusterView, DigestHints, Inventory, Scope, discover};
use super::memory::PolicyMemory;
use super::registry::{PolicySettings, policy_settings};
use super::retention::Rules;
use crate::error::OperatorError;
use crate::registry_access::copy_transfer_config;

/// What one reconcile knows about a policy and the cluster.
pub(crate) struct Facts {
    pub(crate) valid: ValidPolicy,
    pub(crate) scope: Scope,
    pub(crate) inventory: Inventory,
    /// The policy's retention rules, if it has any.
    pub(crate) retention: Option<Rules>,
    /// Digests any pod in the cluster runs (only gathered with retention:
    /// retention never deletes them).
    pub(crate) running_anywhere: BTreeSet<String>,
    /// The copy engine, with the policy's credentials.
    pub(crate) transfer: Transfer,
}

/// A fact that stops the policy before anything is copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) kind: ProblemKind,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProblemKind {
    /// The spec cannot work until the user changes it: Stalled, no retry.
    InvalidSpec,
    /// Something outside the spec that may appear (a Secret not created
    /// yet): Ready=False, retried after [`ProblemKind::retry_after`].
    Blocked,
}

impl ProblemKind {
    /// When to look again; `None`: only when the policy changes.
    pub(crate) fn retry_after(self) -> Option<Duration> {
        match self {
            ProblemKind::InvalidSpec => None,
            ProblemKind::Blocked => Some(Duration::from_secs(30)),
        }
    }
}

/// Reads every fact the reconcile needs. Errors are the API server's only
/// (the reconcile is retried); everything about the policy itself is in
/// `Ok`.
pub(crate) async fn gather(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    previous: &ImageBackupPolicyStatus,
    memory: &mut PolicyMemory,
    now: DateTime<Utc>,
) -> Result<Result<Facts, Problem>, OperatorError> {
    let valid = match validate_policy_spec(&policy.spec) {
        Ok(valid) => valid,
        Err(e) => {
            return Ok(Err(Problem {
                kind: ProblemKind::InvalidSpec,
                reason: e.reason(),
                message: e.to_string(),
            }));
        }
    };
    let namespace = policy.namespace().unwrap_or_default();
    let scope = Scope::for_policy(
        &namespace,
        &controller.context.config.namespace,
        policy.spec.effective_selector(),
    );
    let retention = Rules::from_spec(policy.spec.retention.as_ref());
    let (inventory, running_anywhere) = match images(
        controller,
        &scope,
        &valid,
        previous,
        memory,
        retention.is_some(),
    ) {
        Ok(found) => found,
        Err(message) => {
            return Ok(Err(Problem {
                kind: ProblemKind::InvalidSpec,
                reason: lifeboat_api::conditions::reasons::INVALID_SPEC,
                message,
            }));
        }
    };
    let transfer = match credentials(controller, policy, &inventory, memory, now).await {
        Ok(transfer) => transfer,
        Err(OperatorError::Kube(e)) => return Err(OperatorError::Kube(e)),
        Err(e) => {
            return Ok(Err(Problem {
                kind: ProblemKind::Blocked,
                reason: e.reason(),
                message: e.to_string(),
            }));
        }
    };
    Ok(Ok(Facts {
        valid,
        scope,
        inventory,
        retention,
        running_anywhere,
        transfer,
    }))
}

/// Discovery within the policy's scope, from one snapshot of the caches.
/// Returns the inventory and, when `with_running` (retention needs it), the
/// digests every pod runs.
fn images(
    controller: &BackupController,
    scope: &Scope,
    valid: &ValidPolicy,
    previous: &ImageBackupPolicyStatus,
    memory: &mut PolicyMemory,
    with_running: bool,
) -> Result<(Inventory, BTreeSet<String>), String> {
    // Pods an Ensure review holds back (docs/admission.md): discovered as
    // if they existed, so their images are copied while they wait. Rare:
    // only then is a view built for this reconcile alone.
    let pending = controller
        .context
        .admission
        .pending_pods(std::time::Instant::now());
    let view = if pending.is_empty() {
        controller.caches.view()
    } else {
        let mut snapshot = controller.caches.snapshot();
        snapshot.add_pending_pods(pending);
        std::sync::Arc::new(ClusterView::new(snapshot))
    };
    // What earlier discoveries knew, for pods that cannot say now: this
    // process's memory, and the images the status reports missing (which
    // survive a restart of the operator).
    let mut hints = DigestHints {
        by_workload: std::mem::take(&mut memory.digests_seen),
        ..DigestHints::default()
    };
    for missing in &previous.missing_images {
        hints.add_missing(
            &missing.reference,
            missing.digest.as_deref(),
            &missing.nodes,
        );
    }
    let running = if with_running {
        view.running_digests().clone()
    } else {
        BTreeSet::new()
    };
    let inventory = discover(&view, scope, &valid.images, &hints).map_err(|e| e.0)?;
    memory.digests_seen = inventory.digests_seen.clone();
    Ok((inventory, running))
}

/// The policy's copy engine. Credentials are read again after
/// `memory::CREDENTIALS_TTL`, on a new generation or when the workloads'
/// pull secrets change; otherwise the engine of the last reconcile (and its
/// connections) is reused.
async fn credentials(
    controller: &BackupController,
    policy: &ImageBackupPolicy,
    inventory: &Inventory,
    memory: &mut PolicyMemory,
    now: DateTime<Utc>,
) -> Result<Transfer, OperatorError> {
    let generation = policy.metadata.generation.unwrap_or(0);
    let pull_secrets: BTreeSet<_> = inventory
        .images
        .values()
        .flat_map(|i| i.pull_secrets.iter().cloned())
        .collect();
    let secrets_hash = decide::fingerprint(&pull_secrets);
    if let Some(transfer) = memory.transfer_if_fresh(generation, secrets_hash, now) {
        return Ok(transfer);
    }
    let namespace = policy.namespace().unwrap_or_default();
    let context = &controller.context;
    let settings = policy_settings(
        &context.client,
        &namespace,
        &policy.spec,
        &pull_secrets,
        &context.config.plain_http_registries,
        &context.config.trusted_token_realms,
        namespace == context.config.namespace,
    )
    .await?;
    for skipped in &settings.skipped_pull_secrets {
        debug!(policy = %policy.name_any(), %skipped, "pull secret not used");
    }
    memory.announced_problem = None;
    memory.credentials_read = Some((now, generation, secrets_hash));
    Ok(transfer_for(memory, settings, context.config.copy_deadline))
}

/// The engine for these settings: the remembered one while the credentials
/// it was built from are unchanged (same fingerprint), else a new one.
fn transfer_for(
    memory: &mut PolicyMemory,
    settings: PolicySettings,
    deadline: registry_transfer::CopyDeadline,
) -> Transfer {
    match &memory.transfer {
        Some((fingerprint, transfer)) if *fingerprint == settings.fingerprint => transfer.clone(),
        _ => {
            let transfer = Transfer::new(copy_transfer_config(deadline), settings.settings);
            memory.new_engine(settings.fingerprint, transfer.clone());
            transfer
        }
    }
}
