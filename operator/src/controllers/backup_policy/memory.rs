//! What earlier reconciles of a policy learned, kept between reconciles
//! (keyed by the policy's uid). Only an optimisation: the registries are
//! the truth, and a restarted operator relearns all of it without copying
//! bytes again.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, TimeDelta, Utc};

use super::decide::Plan;
use super::discovery::Inventory;

/// A target known to hold an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verified {
    pub(crate) digest: String,
    pub(crate) at: DateTime<Utc>,
}

/// How long credentials read from Secrets are reused before they are read
/// again (the operator gets Secrets by name, it does not watch them).
pub(crate) const CREDENTIALS_TTL: TimeDelta = TimeDelta::seconds(30);

/// A copy that failed, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) reason: String,
    pub(crate) message: String,
    pub(crate) at: DateTime<Utc>,
}

/// How long a failed copy waits before it is tried again outside a full
/// run, so a broken image or registry is not hammered on every change.
pub(crate) const FAILURE_BACKOFF: TimeDelta = TimeDelta::seconds(30);

/// What the source registry said about an image, last time we asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SourceState {
    pub(crate) checked: DateTime<Utc>,
    pub(crate) missing_since: Option<DateTime<Utc>>,
}

/// What earlier reconciles of one policy learned.
#[derive(Default)]
pub(crate) struct PolicyMemory {
    /// The policy's copy engine and the fingerprint of its credentials.
    pub(crate) transfer: Option<(String, registry_transfer::Transfer)>,
    /// When the credentials were last read, and for which generation and
    /// set of pull secrets (re-read after [`CREDENTIALS_TTL`] or a change).
    pub(crate) credentials_read: Option<(DateTime<Utc>, i64, u64)>,
    /// (target name, image key) -> held there.
    pub(crate) verified: HashMap<(String, String), Verified>,
    /// (target name, image key) -> last copy failure.
    pub(crate) failures: HashMap<(String, String), Failure>,
    /// image key -> source registry state.
    pub(crate) source: HashMap<String, SourceState>,
    /// Dry run: (target name, image key) -> when the target was last found
    /// not to hold it (asked again after the source-check interval).
    pub(crate) absent_at_target: HashMap<(String, String), DateTime<Utc>>,
    /// Images a Warning event was emitted for (so it is emitted once).
    pub(crate) announced_missing: BTreeSet<String>,
    /// Pods told (by a Warning event) that the image they fail to pull is
    /// gone: (namespace, pod, image key).
    pub(crate) announced_pods: BTreeSet<(String, String, String)>,
    /// The last Stalled/blocked reason reported by event.
    pub(crate) announced_problem: Option<String>,
    /// The digests each workload's images ran at, as the last discovery
    /// saw them: hints for pods that restart and cannot pull any more.
    pub(crate) digests_seen: super::discovery::DigestsByWorkload,
    /// When retention last looked at the targets, for which generation.
    pub(crate) retention_checked: Option<(DateTime<Utc>, i64)>,
    /// (repository, Lifeboat tag) -> what it points at (content under a
    /// digest never changes, so it is read once).
    pub(crate) retention_cache: HashMap<(String, String), super::retention::Backup>,
    /// Dry run: what retention would delete, as last planned.
    pub(crate) would_delete: Vec<String>,
}

impl PolicyMemory {
    /// The engine of an earlier reconcile, while its credentials are fresh:
    /// read for this generation and this set of pull secrets, less than
    /// [`CREDENTIALS_TTL`] ago.
    pub(crate) fn transfer_if_fresh(
        &self,
        generation: i64,
        pull_secrets: u64,
        now: DateTime<Utc>,
    ) -> Option<registry_transfer::Transfer> {
        let (_, transfer) = self.transfer.as_ref()?;
        let (read, read_generation, read_secrets) = self.credentials_read?;
        (read_generation == generation
            && read_secrets == pull_secrets
            && now - read < CREDENTIALS_TTL)
            .then(|| transfer.clone())
    }

    /// Takes in a new plan: images that cannot be mapped into a target are
    /// failures, and what is no longer selected is forgotten (so memory
    /// stays bounded).
    pub(crate) fn take_in(&mut self, plan: &Plan, inventory: &Inventory) {
        for error in &plan.mapping_errors {
            self.failures.insert(
                (error.target_name.clone(), error.image_key.clone()),
                Failure {
                    reason: "InvalidRepositoryTemplate".to_owned(),
                    message: error.message.clone(),
                    at: plan.now,
                },
            );
        }
        let selected = |key: &String| inventory.images.contains_key(key);
        self.verified.retain(|(_, key), _| selected(key));
        self.failures.retain(|(_, key), _| selected(key));
        self.source.retain(|key, _| selected(key));
    }

    /// Notes that `target` holds the image `key` at `digest`.
    pub(crate) fn verified_at(
        &mut self,
        target: &str,
        key: &str,
        digest: String,
        now: DateTime<Utc>,
    ) {
        self.verified.insert(
            (target.to_owned(), key.to_owned()),
            Verified { digest, at: now },
        );
    }

    /// The targets known to hold the image `key`.
    pub(crate) fn holders(&self, key: &str) -> Vec<String> {
        self.verified
            .keys()
            .filter(|(_, k)| k == key)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Whether the source registry said the image `key` is gone.
    pub(crate) fn is_missing(&self, key: &str) -> bool {
        self.source
            .get(key)
            .is_some_and(|s| s.missing_since.is_some())
    }
}
