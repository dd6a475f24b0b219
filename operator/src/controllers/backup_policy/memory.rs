//! What earlier reconciles of a policy learned, kept between reconciles
//! (keyed by the policy's uid). Only an optimisation: the registries are
//! the truth, and a restarted operator relearns all of it without copying
//! bytes again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, TimeDelta, Utc};

use super::decide::Plan;
use super::discovery::Inventory;

/// A target known to hold an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verified {
    pub(crate) digest: String,
    pub(crate) at: DateTime<Utc>,
    /// Referrers the target held with it at that copy.
    pub(crate) referrers: u32,
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
    /// The registry said the image is gone (a loss), since then.
    pub(crate) missing_since: Option<DateTime<Utc>>,
    /// The registry could not say (an outage), since then and why.
    pub(crate) outage: Option<SourceOutage>,
}

/// A source registry that did not answer whether it holds an image:
/// unreachable, failing, refusing our credentials or rate-limiting us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceOutage {
    pub since: DateTime<Utc>,
    /// The engine's reason (`RegistryUnavailable`, `Tls`, `RateLimited`, ...).
    pub reason: String,
    pub message: String,
}

/// What one source check answered: held (`Ok(true)`), gone (`Ok(false)`),
/// or no answer, with the reason and message of the failure.
pub(crate) type SourceAnswer = Result<bool, (String, String)>;

impl SourceState {
    /// The state after a check at `now`. A loss is only what the registry
    /// said; an outage keeps what was known before it (an image missing
    /// before the outage stays missing, one present is not called
    /// missing), and both keep their first `since` while they last.
    pub(crate) fn after(
        previous: Option<&SourceState>,
        answer: SourceAnswer,
        now: DateTime<Utc>,
    ) -> SourceState {
        let missing_before = previous.and_then(|p| p.missing_since);
        let outage_since = previous.and_then(|p| p.outage.as_ref()).map(|o| o.since);
        match answer {
            Ok(true) => SourceState {
                checked: now,
                missing_since: None,
                outage: None,
            },
            Ok(false) => SourceState {
                checked: now,
                missing_since: Some(missing_before.unwrap_or(now)),
                outage: None,
            },
            Err((reason, message)) => SourceState {
                checked: now,
                missing_since: missing_before,
                outage: Some(SourceOutage {
                    since: outage_since.unwrap_or(now),
                    reason,
                    message,
                }),
            },
        }
    }
}

/// A backup run whose copies are in the copy queue: started by one
/// reconcile, finished by the one that takes back its last result.
#[derive(Clone, Debug)]
pub(crate) struct RunInFlight {
    pub(crate) trigger: lifeboat_api::backup_policy::RunTrigger,
    pub(crate) started: DateTime<Utc>,
    pub(crate) scheduled_time: Option<DateTime<Utc>>,
    /// What the copies taken back so far did.
    pub(crate) tally: super::decide::RunTally,
    /// Queue key -> task: the run's copies not taken back yet.
    pub(crate) tasks: std::collections::HashMap<String, super::plan::CopyTask>,
    /// What the run said when it started ("Continuous run: copying …").
    pub(crate) message: String,
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
    /// Images whose unreachable source a Warning event was emitted for.
    pub(crate) announced_unreachable: BTreeSet<String>,
    /// Pods told that the image they fail to pull has an unreachable
    /// source: (namespace, pod, image key).
    pub(crate) announced_outage_pods: BTreeSet<(String, String, String)>,
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
    /// The run in progress, if any.
    pub(crate) run: Option<RunInFlight>,
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

    /// Takes in the engine for new settings (credentials, CA bundles,
    /// trusted realms). Copies that failed under the old ones are tried
    /// again at once: a user who fixes a credential expects the next
    /// reconcile to use it, not to wait out [`FAILURE_BACKOFF`].
    pub(crate) fn new_engine(
        &mut self,
        fingerprint: String,
        transfer: registry_transfer::Transfer,
    ) {
        if self.transfer.is_some() {
            self.failures.clear();
        }
        self.transfer = Some((fingerprint, transfer));
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
        // A by-tag copy is also recorded under the digest its tag pointed
        // at (`act::take_back_copies`), the key its pods will report: that
        // digest key is kept while a selected record holds the same digest
        // in the same target.
        let held_for_selected: BTreeSet<(String, String)> = self
            .verified
            .iter()
            .filter(|((_, key), _)| selected(key))
            .map(|((target, _), held)| (target.clone(), held.digest.clone()))
            .collect();
        self.verified.retain(|(target, key), held| {
            selected(key)
                || (key.contains('@')
                    && held_for_selected.contains(&(target.clone(), held.digest.clone())))
        });
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
        self.verified_with_referrers(target, key, digest, now, 0);
    }

    /// Like [`Self::verified_at`], with the referrers the copy brought.
    pub(crate) fn verified_with_referrers(
        &mut self,
        target: &str,
        key: &str,
        digest: String,
        now: DateTime<Utc>,
        referrers: u32,
    ) {
        self.verified.insert(
            (target.to_owned(), key.to_owned()),
            Verified {
                digest,
                at: now,
                referrers,
            },
        );
    }

    /// Referrers held in the targets with the images, all targets counted.
    pub(crate) fn referrers_held(&self) -> i32 {
        // One image under two keys (a by-tag copy, see `take_in`) holds
        // its referrers once.
        let held: BTreeMap<(&str, &str, &str), u32> = self
            .verified
            .iter()
            .map(|((target, key), v)| {
                let repository = repository_of(key);
                (
                    (target.as_str(), repository, v.digest.as_str()),
                    v.referrers,
                )
            })
            .collect();
        let total: u64 = held.values().map(|&r| u64::from(r)).sum();
        i32::try_from(total).unwrap_or(i32::MAX)
    }

    /// The targets known to hold the image `key`.
    pub(crate) fn holders(&self, key: &str) -> Vec<String> {
        self.verified
            .keys()
            .filter(|(_, k)| k == key)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Whether the source registry of the image `key` could not be asked
    /// (and it was not known to be gone before).
    pub(crate) fn is_unreachable(&self, key: &str) -> bool {
        self.source
            .get(key)
            .is_some_and(|s| s.outage.is_some() && s.missing_since.is_none())
    }

    /// Whether the source registry said the image `key` is gone.
    pub(crate) fn is_missing(&self, key: &str) -> bool {
        self.source
            .get(key)
            .is_some_and(|s| s.missing_since.is_some())
    }
}

/// The `registry/repository` of an image key (`discovery::image_key`:
/// `name@digest` or `name:tag`).
fn repository_of(key: &str) -> &str {
    if let Some((name, _)) = key.split_once('@') {
        return name;
    }
    match key.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => key,
    }
}

#[cfg(test)]
mod tests {
    use lifeboat_api::ImageReference;
    use registry_transfer::{RegistrySettings, Transfer, TransferConfig};

    use super::super::decide::{Plan, RunDecision};
    use super::super::discovery::{ImageUse, image_key};
    use super::super::plan::MappingError;
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn no_answer() -> SourceAnswer {
        Err(("RegistryUnavailable".into(), "connection refused".into()))
    }

    #[test]
    fn an_outage_is_not_a_loss_and_keeps_its_start_while_it_lasts() {
        let present = SourceState::after(None, Ok(true), at(0));
        let down = SourceState::after(Some(&present), no_answer(), at(10));
        assert_eq!(down.missing_since, None, "no answer is not 'gone'");
        assert_eq!(down.outage.as_ref().map(|o| o.since), Some(at(10)));
        let still_down = SourceState::after(Some(&down), no_answer(), at(20));
        assert_eq!(still_down.outage.as_ref().map(|o| o.since), Some(at(10)));
        assert_eq!(still_down.checked, at(20));
        let back = SourceState::after(Some(&still_down), Ok(true), at(30));
        assert_eq!(back.outage, None, "answers again: the outage is over");
        assert_eq!(back.missing_since, None);
    }

    #[test]
    fn a_loss_known_before_an_outage_stays_and_a_404_ends_the_outage() {
        let gone = SourceState::after(None, Ok(false), at(0));
        let down = SourceState::after(Some(&gone), no_answer(), at(10));
        assert_eq!(down.missing_since, Some(at(0)), "still known gone");
        assert!(down.outage.is_some());
        let answers = SourceState::after(Some(&down), Ok(false), at(20));
        assert_eq!(answers.missing_since, Some(at(0)));
        assert_eq!(answers.outage, None, "the registry answered (404)");

        let mut memory = PolicyMemory::default();
        memory.source.insert("a".into(), down);
        assert!(memory.is_missing("a"));
        assert!(!memory.is_unreachable("a"), "a loss is reported as a loss");
        memory
            .source
            .insert("b".into(), SourceState::after(None, no_answer(), at(10)));
        assert!(memory.is_unreachable("b") && !memory.is_missing("b"));
    }

    #[test]
    fn credentials_are_reused_only_while_fresh_for_the_same_generation_and_secrets() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut memory = PolicyMemory::default();
        assert!(
            memory.transfer_if_fresh(1, 7, at(0)).is_none(),
            "nothing read yet"
        );
        memory.transfer = Some((
            "fingerprint".into(),
            Transfer::new(TransferConfig::default(), RegistrySettings::new()),
        ));
        memory.credentials_read = Some((at(0), 1, 7));
        assert!(memory.transfer_if_fresh(1, 7, at(10)).is_some());
        assert!(
            memory.transfer_if_fresh(2, 7, at(10)).is_none(),
            "new generation"
        );
        assert!(
            memory.transfer_if_fresh(1, 8, at(10)).is_none(),
            "other pull secrets"
        );
        assert!(
            memory
                .transfer_if_fresh(1, 7, at(0) + CREDENTIALS_TTL)
                .is_none(),
            "read too long ago"
        );
    }

    #[test]
    fn new_settings_retry_failed_copies_at_once() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let engine = || Transfer::new(TransferConfig::default(), RegistrySettings::new());
        let failed = Failure {
            reason: "Unauthorized".into(),
            message: "401".into(),
            at: at(0),
        };
        let mut memory = PolicyMemory::default();
        memory
            .failures
            .insert(("backup".into(), "reg.local/a:1".into()), failed.clone());
        memory.new_engine("first".into(), engine());
        assert_eq!(memory.failures.len(), 1, "the first engine changes nothing");
        memory.new_engine("second".into(), engine());
        assert!(memory.failures.is_empty(), "new credentials: no back-off");
        assert_eq!(
            memory.transfer.as_ref().map(|(f, _)| f.as_str()),
            Some("second")
        );
    }

    #[test]
    fn a_plan_records_mapping_failures_and_forgets_what_is_no_longer_selected() {
        let kept = ImageReference::parse("reg.local/web:1").unwrap();
        let kept_key = image_key(&kept);
        let mut inventory = Inventory::default();
        inventory.images.insert(
            kept_key.clone(),
            ImageUse {
                reference: kept,
                workloads: Default::default(),
                nodes: Default::default(),
                pull_failures: Default::default(),
                pull_secrets: Default::default(),
            },
        );
        let mut memory = PolicyMemory::default();
        memory.verified_at("backup", &kept_key, "sha256:1".into(), at(0));
        memory.verified_at("backup", "reg.local/gone:1", "sha256:2".into(), at(0));
        memory.source.insert(
            "reg.local/gone:1".into(),
            SourceState {
                checked: at(0),
                missing_since: Some(at(0)),
                outage: None,
            },
        );
        assert!(memory.is_missing("reg.local/gone:1"));
        let plan = Plan {
            now: at(5),
            generation: 1,
            target_names: vec!["backup".into()],
            tasks: vec![],
            mapping_errors: vec![MappingError {
                image_key: kept_key.clone(),
                target_name: "offsite".into(),
                message: "repository too long".into(),
            }],
            run: RunDecision::default(),
            continuous: false,
            suspended: false,
            dry_run: false,
            check_interval: TimeDelta::seconds(300),
        };
        memory.take_in(&plan, &inventory);
        assert_eq!(memory.holders(&kept_key), vec!["backup".to_owned()]);
        assert!(memory.holders("reg.local/gone:1").is_empty());
        assert!(!memory.is_missing("reg.local/gone:1"), "forgotten");
        let failure = &memory.failures[&("offsite".to_owned(), kept_key)];
        assert_eq!(failure.reason, "InvalidRepositoryTemplate");
        assert_eq!(failure.at, at(5));
    }

    #[test]
    fn a_by_tag_copy_counts_for_its_digest_while_the_tag_is_selected() {
        let by_tag = ImageReference::parse("reg.local/web:1").unwrap();
        let by_digest = by_tag.with_digest(
            lifeboat_api::Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap(),
        );
        let (tag_key, digest_key) = (image_key(&by_tag), image_key(&by_digest));
        let selecting = |reference: &ImageReference| {
            let mut inventory = Inventory::default();
            inventory.images.insert(
                image_key(reference),
                ImageUse {
                    reference: reference.clone(),
                    workloads: Default::default(),
                    nodes: Default::default(),
                    pull_failures: Default::default(),
                    pull_secrets: Default::default(),
                },
            );
            inventory
        };
        let plan = Plan {
            now: at(5),
            generation: 1,
            target_names: vec!["backup".into()],
            tasks: vec![],
            mapping_errors: vec![],
            run: RunDecision::default(),
            continuous: true,
            suspended: false,
            dry_run: false,
            check_interval: TimeDelta::seconds(300),
        };
        let mut memory = PolicyMemory::default();
        // What take_back_copies records for a by-tag copy: both keys, the
        // target's digest in each.
        memory.verified_with_referrers("backup", &tag_key, "sha256:t".into(), at(0), 2);
        memory.verified_with_referrers("backup", &digest_key, "sha256:t".into(), at(0), 2);
        // Another image's record under a key no longer selected goes.
        memory.verified_at("backup", "reg.local/old@sha256:o", "sha256:o".into(), at(0));
        assert_eq!(
            memory.referrers_held(),
            2,
            "one image's referrers count once"
        );
        assert_eq!(repository_of(&tag_key), "reg.local/web");
        assert_eq!(repository_of(&digest_key), "reg.local/web");
        assert_eq!(repository_of("127.0.0.1:5001/web:1"), "127.0.0.1:5001/web");

        memory.take_in(&plan, &selecting(&by_tag));
        assert_eq!(memory.holders(&digest_key), vec!["backup".to_owned()]);
        assert!(memory.holders("reg.local/old@sha256:o").is_empty());

        // The pod runs it: only the digest is selected, and already held.
        memory.take_in(&plan, &selecting(&by_digest));
        assert_eq!(memory.holders(&digest_key), vec!["backup".to_owned()]);
        assert!(
            memory.holders(&tag_key).is_empty(),
            "the tag's record is forgotten"
        );

        // A record under a digest key whose tag record is gone is forgotten
        // once nothing selected holds the same digest.
        let mut memory = PolicyMemory::default();
        memory.verified_at("backup", &digest_key, "sha256:t".into(), at(0));
        memory.verified_at("backup", &tag_key, "sha256:other".into(), at(0));
        memory.take_in(&plan, &selecting(&by_tag));
        assert!(memory.holders(&digest_key).is_empty());
    }
}
