//! Restoring from a backup: find a backup target that holds the exact
//! digest, copy it back to the destination (under its tag when that is
//! free or already right), and verify it there.

use lifeboat_api::ImageReference;
use lifeboat_api::conditions::{MAX_SHORT_MESSAGE_LENGTH, bounded_message, reasons};
use lifeboat_api::restore::{
    ImageRestoreState, ImageSourceRef, RestoreSourceKind, RestoredImage, referrers_reasons,
};
use registry_transfer::{
    CopyRequest, ReferrersPolicy, RepositoryRef, Transfer, TransferError, deterministic_tag,
};

use super::facts::Facts;
use super::planning::{BackupCandidate, backup_references};
use super::status::fail;
use super::verify::verify_into;

pub(super) enum BackupOutcome {
    /// Restored or failed (the image's state says which); bytes copied.
    Done(u64),
    /// No backup holds it: why.
    NotThere(String),
}

pub(super) async fn from_backup(
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
                let digest = reference
                    .digest
                    .as_ref()
                    .map(|d| d.as_str().to_owned())
                    .unwrap_or_default();
                verify_into(facts, transfer, image, &digest, true).await;
                let looked = [(target.clone(), ReferrersLookup::Copied(referrers))];
                note_referrers(image, &referrers_outcome(&digest, &looked));
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
pub(super) async fn copy_back(
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

/// What asking one backup target for a restored image's referrers gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReferrersLookup {
    /// The target does not hold the restored digest.
    NotHeld,
    /// The target could not be asked: why.
    Unreachable(String),
    /// Referrers copied (or found already there) at the destination.
    Copied(usize),
    /// The target holds the image, but its referrers could not be copied.
    CopyFailed(String),
}

/// What a restored image's status says about its referrers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReferrersOutcome {
    pub(crate) count: i32,
    /// Why none came back (`referrers_reasons`), and in words.
    pub(crate) none_because: Option<(&'static str, String)>,
}

/// From what the backup targets (in order) answered to what the status
/// says: the first target that gave referrers counts; otherwise the most
/// telling reason why none came back. Pure.
pub(crate) fn referrers_outcome(
    digest: &str,
    looked: &[(String, ReferrersLookup)],
) -> ReferrersOutcome {
    let none = |reason, message: String| ReferrersOutcome {
        count: 0,
        none_because: Some((reason, message)),
    };
    let named = |wanted: fn(&ReferrersLookup) -> Option<String>| {
        looked
            .iter()
            .filter_map(|(target, lookup)| wanted(lookup).map(|detail| (target, detail)))
            .map(|(target, detail)| format!("backup target {target}{detail}"))
            .collect::<Vec<_>>()
    };
    if let Some(count) = looked.iter().find_map(|(_, l)| match l {
        ReferrersLookup::Copied(n) if *n > 0 => Some(*n),
        _ => None,
    }) {
        return ReferrersOutcome {
            count: i32::try_from(count).unwrap_or(i32::MAX),
            none_because: None,
        };
    }
    let failed = named(|l| match l {
        ReferrersLookup::CopyFailed(e) => Some(format!(": {e}")),
        _ => None,
    });
    if !failed.is_empty() {
        return none(
            referrers_reasons::REFERRERS_COPY_FAILED,
            format!("copying its referrers failed ({})", failed.join("; ")),
        );
    }
    let empty = named(|l| (*l == ReferrersLookup::Copied(0)).then(String::new));
    if !empty.is_empty() {
        return none(
            referrers_reasons::NONE_IN_BACKUP,
            format!(
                "{} holds no signatures, SBOMs or attestations for {digest}",
                empty.join(", ")
            ),
        );
    }
    let unreachable = named(|l| match l {
        ReferrersLookup::Unreachable(e) => Some(format!(": {e}")),
        _ => None,
    });
    if !unreachable.is_empty() {
        return none(
            referrers_reasons::BACKUP_UNREACHABLE,
            format!(
                "its signatures, SBOMs and attestations could not be looked for ({})",
                unreachable.join("; ")
            ),
        );
    }
    if looked.is_empty() {
        return none(
            referrers_reasons::NO_BACKUP_TARGET,
            "a node holds no signatures, SBOMs or attestations, and no backup target was asked for them (no policy with targets among the restore's sources)".to_owned(),
        );
    }
    none(
        referrers_reasons::NOT_IN_BACKUP,
        format!(
            "a node holds no signatures, SBOMs or attestations, and no backup target holds {digest} ({})",
            looked
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

/// Writes a referrers outcome into a restored image's status.
pub(crate) fn note_referrers(image: &mut RestoredImage, outcome: &ReferrersOutcome) {
    if image.state != ImageRestoreState::Restored {
        return;
    }
    image.referrers = Some(outcome.count);
    image.referrers_reason = outcome.none_because.as_ref().map(|(r, _)| (*r).to_owned());
    if let Some((_, why)) = &outcome.none_because {
        let message = match image.message.take() {
            Some(message) => format!("{message}; no referrers restored: {why}"),
            None => format!("no referrers restored: {why}"),
        };
        image.message = Some(bounded_message(message, MAX_SHORT_MESSAGE_LENGTH));
    }
}

/// After a node restore (a node's containerd holds no signatures): the
/// referrers of the restored digest come from the first backup target
/// that holds that digest and has some, copied into the destination
/// next to the image. The image stays restored whatever happens here;
/// the status says how many came back, or why none did.
pub(super) async fn referrers_from_backup(
    facts: &Facts<'_>,
    transfer: &Transfer,
    candidates: &[BackupCandidate],
    image: &mut RestoredImage,
) {
    if image.state != ImageRestoreState::Restored {
        return;
    }
    let Some(digest) = image.restored_digest.clone() else {
        return;
    };
    let (Ok(reference), Ok(parsed)) =
        (facts.reference(image), lifeboat_api::Digest::parse(&digest))
    else {
        return;
    };
    let restored = reference.with_digest(parsed);
    let Ok(destination) = facts.destination(&restored) else {
        return;
    };
    let mut looked = Vec::new();
    for (target, backup) in backup_references(&restored, candidates, &facts.namespace) {
        let Some(pinned) = backup.pinned() else {
            continue;
        };
        let lookup = match transfer.manifest_digest(&pinned).await {
            Ok(None) => ReferrersLookup::NotHeld,
            Err(e) => ReferrersLookup::Unreachable(e.to_string()),
            Ok(Some(_)) => match transfer
                .copy_referrers_of(
                    &pinned,
                    &RepositoryRef::of(&destination),
                    &ReferrersPolicy::All,
                )
                .await
            {
                Ok(referrers) => ReferrersLookup::Copied(referrers.len()),
                Err(e) => ReferrersLookup::CopyFailed(e.to_string()),
            },
        };
        let found = matches!(lookup, ReferrersLookup::Copied(n) if n > 0);
        looked.push((target, lookup));
        if found {
            break;
        }
    }
    note_referrers(image, &referrers_outcome(&digest, &looked));
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:aaaa";

    fn looked(entries: &[(&str, ReferrersLookup)]) -> Vec<(String, ReferrersLookup)> {
        entries
            .iter()
            .map(|(t, l)| ((*t).to_owned(), l.clone()))
            .collect()
    }

    fn reason(outcome: &ReferrersOutcome) -> Option<&'static str> {
        outcome.none_because.as_ref().map(|(r, _)| *r)
    }

    #[test]
    fn the_first_target_with_referrers_counts() {
        let outcome = referrers_outcome(
            DIGEST,
            &looked(&[
                ("a", ReferrersLookup::NotHeld),
                ("b", ReferrersLookup::Copied(0)),
                ("c", ReferrersLookup::Copied(3)),
            ]),
        );
        assert_eq!(
            outcome,
            ReferrersOutcome {
                count: 3,
                none_because: None
            }
        );
    }

    #[test]
    fn none_restored_says_the_most_telling_reason() {
        use ReferrersLookup::{Copied, CopyFailed, NotHeld, Unreachable};
        let cases = [
            (vec![], referrers_reasons::NO_BACKUP_TARGET),
            (vec![("a", NotHeld)], referrers_reasons::NOT_IN_BACKUP),
            (
                vec![("a", NotHeld), ("b", Unreachable("timeout".into()))],
                referrers_reasons::BACKUP_UNREACHABLE,
            ),
            (
                vec![("a", Unreachable("timeout".into())), ("b", Copied(0))],
                referrers_reasons::NONE_IN_BACKUP,
            ),
            (
                vec![
                    ("a", Copied(0)),
                    ("b", CopyFailed("TooManyReferrers".into())),
                ],
                referrers_reasons::REFERRERS_COPY_FAILED,
            ),
        ];
        for (entries, wanted) in cases {
            let outcome = referrers_outcome(DIGEST, &looked(&entries));
            assert_eq!(outcome.count, 0);
            assert_eq!(reason(&outcome), Some(wanted), "{entries:?}");
        }
        let why = referrers_outcome(DIGEST, &looked(&[("a", NotHeld), ("b", NotHeld)]));
        let message = &why.none_because.unwrap().1;
        assert!(
            message.contains(DIGEST) && message.contains("a, b"),
            "{message}"
        );
        let failed = referrers_outcome(DIGEST, &looked(&[("b", CopyFailed("boom".into()))]));
        assert!(
            failed
                .none_because
                .unwrap()
                .1
                .contains("backup target b: boom")
        );
    }

    #[test]
    fn only_a_restored_image_gets_a_referrers_note() {
        let outcome = referrers_outcome(DIGEST, &looked(&[("a", ReferrersLookup::NotHeld)]));
        let mut failed = RestoredImage {
            state: ImageRestoreState::Failed,
            ..RestoredImage::default()
        };
        note_referrers(&mut failed, &outcome);
        assert_eq!((failed.referrers, failed.referrers_reason), (None, None));

        let mut restored = RestoredImage {
            state: ImageRestoreState::Restored,
            message: Some("reg/app@sha256:aaaa is pullable".into()),
            ..RestoredImage::default()
        };
        note_referrers(&mut restored, &outcome);
        assert_eq!(restored.referrers, Some(0));
        assert_eq!(restored.referrers_reason.as_deref(), Some("NotInBackup"));
        let message = restored.message.unwrap();
        assert!(message.starts_with("reg/app@sha256:aaaa is pullable; no referrers restored: "));
        assert!(message.len() <= MAX_SHORT_MESSAGE_LENGTH);

        let mut signed = RestoredImage {
            state: ImageRestoreState::Restored,
            ..RestoredImage::default()
        };
        note_referrers(
            &mut signed,
            &ReferrersOutcome {
                count: 2,
                none_because: None,
            },
        );
        assert_eq!((signed.referrers, signed.referrers_reason), (Some(2), None));
    }
}
